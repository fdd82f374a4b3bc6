// ZeRO-3: a model's parameters sharded over the ranks, unit by unit (the embedding, each decoder
// layer, the final norm, the untied LM head: CausalLM::parameter_units).
//
// Rank r keeps elements [r*S, (r+1)*S) of each unit's flat parameters (S = the unit's size divided
// by the world size, rounded up; the padding is zero). A unit is all-gathered right before its
// computation and freed right after; under autograd (the student) the backward gathers it again,
// recomputes the unit from its saved input (activation checkpointing is implied) and reduce-scatters
// the unit's parameter gradient into the owner's gradient shard, so at no time does a rank hold more
// than its shards plus one or two units whole. A teacher (no gradients) is sharded the same way.
//
// Every rank must gather the same units in the same order: the model's forward and backward do, and
// the trainer gathers the LM head once for a whole loss (gather_for_gradients, then
// reduce_gradients_and_release), so that the loss's chunked passes, whose number differs per rank,
// need no collective.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dist/communicator.h"
#include "model/checkpoint.h"
#include "model/transformer.h"
#include "train/optimizer.h"
#include "train/sharded_adamw.h"

namespace lf {

class ShardedModel final : public ParameterUnits {
 public:
  // Takes over `model`'s parameters (whatever they hold is dropped: load() fills the shards). The
  // shards are in the parameters' dtype on the model's compute device; `trainable` adds float32
  // gradient shards.
  ShardedModel(CausalLM& model, Communicator& comm, bool trainable);
  ~ShardedModel() override;

  // This rank's shards from a Hugging Face directory (model.safetensors or shards): each rank reads
  // only its slices of the memory-mapped files. InputError naming a missing or misshapen tensor.
  void load(const std::string& dir);
  // Writes a Hugging Face directory, like save_model, gathering one unit at a time. Collective: every
  // rank calls it; `writer` ranks (rank 0) write, the others only take part in the gathers.
  void save(const std::string& dir, const SaveOptions& options, bool writer);

  void gather(int64_t unit) override;
  void release(int64_t unit) override;
  bool is_gathered(int64_t unit) const override;
  void prefetch(int64_t unit) override;
  at::Tensor run(int64_t unit, const at::Tensor& x, const std::vector<at::Tensor>& extras, int64_t flags) override;

  // The LM head (or any unit) whole for a loss whose chunks accumulate the parameters' gradients
  // into a full-size float32 buffer; reduce_gradients_and_release() reduce-scatters that into the
  // gradient shards and frees both. Collective.
  void gather_for_gradients(int64_t unit);
  void reduce_gradients_and_release(int64_t unit);

  // Called by the recomputing backward: the unit's gradient, whole on every rank, reduce-scattered.
  at::Tensor reduce_scatter_gradient(int64_t unit, const std::vector<at::Tensor>& grads);

  struct Unit {
    std::vector<std::string> names;
    std::vector<at::Tensor> params;  // the model's parameter tensors (empty while released)
    std::vector<std::vector<int64_t>> shapes;
    std::vector<int64_t> offsets;  // of each parameter in the unit's flat space
    int64_t numel = 0;             // unpadded
    int64_t shard = 0;             // elements per rank
    int64_t local = 0;             // offset of this rank's shard in the local buffers
    int64_t global = 0;            // offset of the unit in the unpadded flat space of the whole model
    at::Tensor leaf;               // the shard as a leaf that requires grad (trainable), its .grad the gradient shard
    at::Tensor full, full_grad;
    int refs = 0;
    std::unique_ptr<PendingCollective> prefetched;  // an all-gather into `full` in flight
  };
  const std::vector<Unit>& units() const { return units_; }
  CausalLM& model() { return model_; }
  Communicator& comm() { return comm_; }
  at::Tensor& local_params() { return local_params_; }
  at::Tensor& local_grads() { return local_grads_; }
  int64_t total_numel() const { return total_; }
  // Bytes of this rank's shards (parameters and, when trainable, gradients).
  int64_t shard_bytes() const;

 private:
  at::Tensor owned(const Unit& unit, const at::Tensor& local) const { return local.narrow(0, unit.local, unit.shard); }
  void start_gather(Unit& unit);  // the unit's all-gather into unit.full, in flight

  CausalLM& model_;
  Communicator& comm_;
  bool trainable_;
  std::vector<Unit> units_;
  int64_t total_ = 0;
  at::Tensor local_params_, local_grads_, released_;
};

// AdamW over the shards of a ShardedModel: every rank updates its own shards, nothing is gathered
// after the step (the next forward gathers). Gradients arrive already reduce-scattered.
class Zero3AdamW final : public DistributedOptimizer {
 public:
  Zero3AdamW(ShardedModel& model, AdamWConfig config);

  void reduce_gradients() override {}
  double grad_norm() override;
  void step(double lr, double grad_scale = 1.0) override;
  void zero_grad() override;
  int64_t steps() const override { return step_; }
  std::vector<OptimizerShard> owned_states() const override;
  void load_state(const std::vector<OptimizerShard>& shards, int64_t steps) override;
  void reset_state() override;
  std::vector<std::string> param_names() const override;

 private:
  // A parameter's part of this rank's shards: local offset, unpadded global offset, length, decay.
  struct Piece {
    int64_t local, global, length;
    bool decay;
  };
  ShardedModel& model_;
  AdamWConfig config_;
  std::vector<Piece> pieces_;
  at::Tensor exp_avg_, exp_avg_sq_;
  int64_t step_ = 0;
};

}  // namespace lf
