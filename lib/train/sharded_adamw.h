// Data-parallel AdamW over one flat parameter space, with ZeRO-style sharding of its state.
//
// The student's parameters and their gradients become views into two flat float32 buffers (padded
// to a multiple of the world size), so autograd accumulates every micro-batch's gradient straight
// into the buffer that the collectives reduce, in buckets, with no copies. Rank r owns the slice
// [r*S, (r+1)*S) of the flat space (S = padded / world size):
//   zero 0: gradients all-reduced; every rank keeps all AdamW state and updates all parameters (DDP).
//   zero 1: gradients all-reduced; each rank keeps AdamW state for its slice only, updates its slice
//           of the parameters, and the slices are all-gathered.
//   zero 2: as 1, but gradients are reduce-scattered (each rank receives only its slice's sum: half
//           the traffic of an all-reduce).
// Every rank checkpoints the state of its owned slice with the slice's flat offsets, so a checkpoint
// can be reassembled at any world size and stage.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "dist/communicator.h"
#include "train/optimizer.h"

namespace lf {

struct ShardingConfig {
  int64_t zero_stage = 0;              // 0, 1 or 2
  int64_t bucket_numel = 25 << 18;     // elements per collective call (25 MiB of float32)
};

// The AdamW state of one contiguous range [begin, end) of the flat space of `total` elements.
struct OptimizerShard {
  int64_t begin = 0, end = 0, total = 0;
  at::Tensor exp_avg, exp_avg_sq;  // float32, end - begin elements
};

// What the trainer and the checkpoints need of an optimizer over a (possibly sharded) flat parameter
// space: ShardedAdamW (ZeRO 0-2) and Zero3AdamW (train/zero3.h).
class DistributedOptimizer {
 public:
  virtual ~DistributedOptimizer() = default;
  virtual void arm_overlap() {}
  virtual int64_t buckets_overlapped() const { return 0; }
  virtual void reduce_gradients() = 0;
  virtual double grad_norm() = 0;
  // One AdamW update with the gradients multiplied by `grad_scale` inside it (gradient clipping
  // without a pass of its own over the gradients).
  virtual void step(double lr, double grad_scale = 1.0) = 0;
  virtual void zero_grad() = 0;
  virtual int64_t steps() const = 0;
  // The AdamW state this rank owns, as ranges of the unpadded flat space (parameters in checkpoint
  // order), for its checkpoint file.
  virtual std::vector<OptimizerShard> owned_states() const = 0;
  // Restores from the shards of a checkpoint written at any world size and stage; InputError when
  // they do not cover what this rank needs or were written for another parameter layout.
  virtual void load_state(const std::vector<OptimizerShard>& shards, int64_t steps) = 0;
  virtual void reset_state() = 0;  // back to a fresh optimizer (after a checkpoint that failed to load)
  virtual std::vector<std::string> param_names() const = 0;
};

class ShardedAdamW final : public DistributedOptimizer {
 public:
  // `params` (name, tensor) in a fixed order, all float32 on one device; they are re-pointed into the
  // flat buffer here and their .grad set to views of the flat gradient.
  ShardedAdamW(std::vector<std::pair<std::string, at::Tensor>> params, AdamWConfig config, ShardingConfig sharding,
               Communicator& comm);

  // Overlap of the gradient reduction with the last backward pass of a step (zero 0/1, several ranks;
  // elsewhere a no-op). Once enabled, gradient hooks watch the parameters; arm_overlap(), called
  // right before the step's last backward, makes every bucket start its all-reduce as soon as autograd
  // has accumulated all of its parameters, while the backward goes on. Buckets start in descending
  // order on every rank (the order gradients arrive in), whatever the timing. `complete_before` names
  // parameters whose gradient is already final when that backward starts (an untied LM head, fed by
  // the chunked loss before the body's backward).
  void enable_overlap(const std::vector<std::string>& complete_before);
  void arm_overlap() override;
  // Called by the gradient hooks: parameter `index` has its gradient of this backward pass.
  void parameter_ready(size_t index);
  // Buckets of the last step whose reduction started during the backward pass.
  int64_t buckets_overlapped() const override { return overlapped_; }

  // After the backward passes of a step: sums the gradients over ranks (all of them at zero 0/1, this
  // rank's slice at zero 2); with an armed overlap, starts what is left and waits for all of it.
  void reduce_gradients() override;
  // L2 norm of the summed gradient (every rank gets the same number).
  double grad_norm() override;
  // AdamW on this rank's slice (all of it at zero 0), then the updated slices are all-gathered.
  void step(double lr, double grad_scale = 1.0) override;
  void zero_grad() override;

  int64_t steps() const override { return step_; }
  int64_t numel() const { return total_; }
  // The state of the slice this rank owns, for its checkpoint file.
  OptimizerShard owned_state() const;
  std::vector<OptimizerShard> owned_states() const override { return {owned_state()}; }
  // Restores from the shards of a checkpoint written at any world size; InputError when they do not
  // cover what this rank needs or were written for another parameter layout.
  void load_state(const std::vector<OptimizerShard>& shards, int64_t steps) override;
  void reset_state() override;  // back to a fresh optimizer (after a checkpoint that failed to load)
  std::vector<std::string> param_names() const override;
  const std::vector<std::pair<std::string, at::Tensor>>& params() const { return params_; }

 private:
  at::Tensor owned(const at::Tensor& flat) const { return flat.narrow(0, comm_.rank() * shard_, shard_); }

  std::vector<std::pair<std::string, at::Tensor>> params_;
  std::vector<int64_t> offsets_;
  AdamWConfig config_;
  ShardingConfig sharding_;
  Communicator& comm_;
  int64_t total_ = 0, shard_ = 0, padded_ = 0;
  int64_t state_begin_ = 0;  // the flat offset of exp_avg_[0]: 0 at zero 0, rank * shard at 1 and 2
  at::Tensor flat_params_, flat_grads_, exp_avg_, exp_avg_sq_;
  int64_t step_ = 0;

  // Overlap state: per bucket the parameters still expected, per parameter its buckets.
  void launch_ready_buckets();
  bool overlap_ = false, armed_ = false;
  std::vector<int64_t> bucket_params_, bucket_pending_;
  std::vector<std::vector<int64_t>> param_buckets_;
  std::vector<bool> complete_before_, seen_;
  // Buckets start in descending order: bucket b has started once b > next_bucket_.
  int64_t next_bucket_ = -1, overlapped_ = 0;
  std::vector<std::unique_ptr<PendingCollective>> in_flight_;
  std::mutex mutex_;  // hooks run on autograd's device thread on GPUs
};

}  // namespace lf
