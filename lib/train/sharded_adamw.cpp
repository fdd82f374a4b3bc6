#include "train/sharded_adamw.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>

#include "core/error.h"

namespace lf {

ShardedAdamW::ShardedAdamW(std::vector<std::pair<std::string, at::Tensor>> params, AdamWConfig config,
                           ShardingConfig sharding, Communicator& comm)
    : params_(std::move(params)), config_(config), sharding_(sharding), comm_(comm) {
  if (params_.empty()) throw RuntimeFailure("optimizer: no parameters");
  if (sharding_.zero_stage < 0 || sharding_.zero_stage > 2)
    throw NotAvailable("dist.zero=" + std::to_string(sharding_.zero_stage) + " (parameter sharding, ZeRO-3)");
  const at::Device device = params_.front().second.device();
  for (const auto& [name, p] : params_) {
    if (p.device() != device || p.scalar_type() != at::kFloat)
      throw RuntimeFailure("optimizer: parameter " + name + " is not float32 on " + device.str());
    offsets_.push_back(total_);
    total_ += p.numel();
  }
  const int64_t world = comm_.world_size();
  shard_ = (total_ + world - 1) / world;
  padded_ = shard_ * world;
  sharding_.bucket_numel = std::max<int64_t>(world, sharding_.bucket_numel);

  // Parameters and gradients become views of the flat buffers; the padding stays zero.
  at::NoGradGuard no_grad;
  const auto options = at::TensorOptions().dtype(at::kFloat).device(device);
  flat_params_ = at::zeros({padded_}, options);
  flat_grads_ = at::zeros({padded_}, options);
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i].second;
    at::Tensor view = flat_params_.narrow(0, offsets_[i], p.numel()).view(p.sizes());
    view.copy_(p);
    p.set_data(view);
    p.mutable_grad() = flat_grads_.narrow(0, offsets_[i], p.numel()).view(p.sizes());
  }
  state_begin_ = sharding_.zero_stage == 0 ? 0 : comm_.rank() * shard_;
  const int64_t state_size = sharding_.zero_stage == 0 ? padded_ : shard_;
  exp_avg_ = at::zeros({state_size}, options);
  exp_avg_sq_ = at::zeros({state_size}, options);
}

namespace {
struct ReadyHook final : torch::autograd::PostAccumulateGradHook {
  ReadyHook(ShardedAdamW* owner, size_t index) : owner(owner), index(index) {}
  void operator()(const torch::autograd::Variable&) override { owner->parameter_ready(index); }
  ShardedAdamW* owner;
  size_t index;
};
}  // namespace

void ShardedAdamW::enable_overlap(const std::vector<std::string>& complete_before) {
  if (comm_.world_size() == 1 || sharding_.zero_stage == 2) {
    if (comm_.world_size() > 1) spdlog::info("gradient reduction not overlapped with backward at dist.zero=2");
    return;
  }
  const int64_t buckets = (padded_ + sharding_.bucket_numel - 1) / sharding_.bucket_numel;
  bucket_params_.assign(buckets, 0);
  param_buckets_.assign(params_.size(), {});
  complete_before_.assign(params_.size(), false);
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t numel = params_[i].second.numel();
    if (numel == 0) continue;
    for (int64_t b = offsets_[i] / sharding_.bucket_numel; b <= (offsets_[i] + numel - 1) / sharding_.bucket_numel; ++b) {
      param_buckets_[i].push_back(b);
      ++bucket_params_[b];
    }
    complete_before_[i] =
        std::find(complete_before.begin(), complete_before.end(), params_[i].first) != complete_before.end();
    torch::autograd::impl::set_post_acc_grad_hooks(params_[i].second, std::make_unique<ReadyHook>(this, i));
  }
  overlap_ = true;
}

void ShardedAdamW::arm_overlap() {
  if (!overlap_) return;
  std::lock_guard<std::mutex> lock(mutex_);
  bucket_pending_ = bucket_params_;
  seen_.assign(params_.size(), false);
  next_bucket_ = static_cast<int64_t>(bucket_params_.size()) - 1;
  overlapped_ = 0;
  in_flight_.clear();
  armed_ = true;
  for (size_t i = 0; i < params_.size(); ++i)
    if (complete_before_[i]) {
      seen_[i] = true;
      for (int64_t b : param_buckets_[i]) --bucket_pending_[b];
    }
  const int64_t before = next_bucket_;
  launch_ready_buckets();
  overlapped_ += before - next_bucket_;
}

void ShardedAdamW::parameter_ready(size_t index) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!armed_) return;
  if (seen_[index]) {
    // A second gradient for a parameter whose bucket is already being summed would be lost.
    for (int64_t b : param_buckets_[index])
      if (b > next_bucket_)
        throw RuntimeFailure("optimizer: gradient of " + params_[index].first +
                             " arrived after its bucket was reduced (overlapped reduction)",
                             "set dist.overlap=false and report this");
    return;
  }
  seen_[index] = true;
  for (int64_t b : param_buckets_[index]) --bucket_pending_[b];
  const int64_t before = next_bucket_;
  launch_ready_buckets();
  overlapped_ += before - next_bucket_;
}

void ShardedAdamW::launch_ready_buckets() {
  at::NoGradGuard no_grad;
  while (next_bucket_ >= 0 && bucket_pending_[next_bucket_] <= 0) {
    const int64_t start = next_bucket_ * sharding_.bucket_numel;
    at::Tensor bucket = flat_grads_.narrow(0, start, std::min(sharding_.bucket_numel, padded_ - start));
    in_flight_.push_back(comm_.all_reduce_sum_async(bucket));
    --next_bucket_;
  }
}

void ShardedAdamW::reduce_gradients() {
  if (comm_.world_size() == 1) return;
  at::NoGradGuard no_grad;
  if (armed_) {
    std::lock_guard<std::mutex> lock(mutex_);
    // What the backward did not complete (parameters without a gradient this step), in the same order.
    for (auto& pending : bucket_pending_) pending = 0;
    launch_ready_buckets();
    for (auto& collective : in_flight_) collective->wait();
    in_flight_.clear();
    armed_ = false;
    return;
  }
  const int64_t world = comm_.world_size();
  if (sharding_.zero_stage < 2) {
    for (int64_t start = 0; start < padded_; start += sharding_.bucket_numel) {
      at::Tensor bucket = flat_grads_.narrow(0, start, std::min(sharding_.bucket_numel, padded_ - start));
      comm_.all_reduce_sum(bucket);
    }
    return;
  }
  // Reduce-scatter bucket by bucket: bucket j takes columns [a, a+len) of every rank's slice.
  const at::Tensor by_rank = flat_grads_.view({world, shard_});
  const int64_t columns = std::max<int64_t>(1, sharding_.bucket_numel / world);
  for (int64_t a = 0; a < shard_; a += columns) {
    const int64_t len = std::min(columns, shard_ - a);
    at::Tensor staging = by_rank.narrow(1, a, len).contiguous().view({-1});
    at::Tensor mine = flat_grads_.narrow(0, comm_.rank() * shard_ + a, len);
    comm_.reduce_scatter_sum(staging, mine);
  }
}

double ShardedAdamW::grad_norm() {
  at::NoGradGuard no_grad;
  // The reduction kernel reads the gradient in place: no float64 copy and no squared copy of the
  // whole flat gradient every step (16 bytes per parameter of fresh pages).
  const double norm = at::linalg_vector_norm(owned(flat_grads_), 2).item<double>();
  const double local = norm * norm;
  return std::sqrt(comm_.all_reduce_sum(local));
}

void ShardedAdamW::step(double lr, double grad_scale) {
  at::NoGradGuard no_grad;
  ++step_;
  const int64_t state_end = state_begin_ + exp_avg_.numel();
  // One update per parameter piece inside this rank's state range: weight decay depends on the
  // parameter's rank (matrices only), so a piece never spans two parameters.
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t begin = std::max(offsets_[i], state_begin_);
    const int64_t end = std::min(offsets_[i] + params_[i].second.numel(), state_end);
    if (begin >= end) continue;
    at::Tensor p = flat_params_.narrow(0, begin, end - begin);
    at::Tensor g = flat_grads_.narrow(0, begin, end - begin);
    at::Tensor m = exp_avg_.narrow(0, begin - state_begin_, end - begin);
    at::Tensor v = exp_avg_sq_.narrow(0, begin - state_begin_, end - begin);
    adamw_update(p, g, m, v, lr, step_, config_, params_[i].second.dim() >= 2, grad_scale);
  }
  if (sharding_.zero_stage == 0 || comm_.world_size() == 1) return;
  const int64_t world = comm_.world_size();
  at::Tensor by_rank = flat_params_.view({world, shard_});
  const int64_t columns = std::max<int64_t>(1, sharding_.bucket_numel / world);
  for (int64_t a = 0; a < shard_; a += columns) {
    const int64_t len = std::min(columns, shard_ - a);
    at::Tensor mine = flat_params_.narrow(0, comm_.rank() * shard_ + a, len).contiguous();
    at::Tensor gathered = at::empty({world * len}, flat_params_.options());
    comm_.all_gather(mine, gathered);
    by_rank.narrow(1, a, len).copy_(gathered.view({world, len}));
  }
}

void ShardedAdamW::zero_grad() { flat_grads_.zero_(); }

std::vector<std::string> ShardedAdamW::param_names() const {
  std::vector<std::string> names;
  for (const auto& [name, p] : params_) names.push_back(name);
  return names;
}

void ShardedAdamW::reset_state() {
  exp_avg_.zero_();
  exp_avg_sq_.zero_();
  step_ = 0;
}

OptimizerShard ShardedAdamW::owned_state() const {
  OptimizerShard out;
  out.total = total_;
  out.begin = std::min(total_, comm_.rank() * shard_);
  out.end = std::min(total_, out.begin + shard_);
  const int64_t from = out.begin - state_begin_;
  out.exp_avg = exp_avg_.narrow(0, from, out.end - out.begin);
  out.exp_avg_sq = exp_avg_sq_.narrow(0, from, out.end - out.begin);
  return out;
}

void ShardedAdamW::load_state(const std::vector<OptimizerShard>& shards, int64_t steps) {
  at::NoGradGuard no_grad;
  const int64_t need_begin = std::min(total_, state_begin_);
  const int64_t need_end = std::min(total_, state_begin_ + exp_avg_.numel());
  int64_t covered = 0;
  exp_avg_.zero_();
  exp_avg_sq_.zero_();
  for (const auto& s : shards) {
    if (s.total != total_)
      throw InputError("optimizer state covers " + std::to_string(s.total) + " parameters, the student has " +
                       std::to_string(total_), "was the checkpoint written for another student?");
    const int64_t begin = std::max(s.begin, need_begin), end = std::min(s.end, need_end);
    if (begin >= end) continue;
    exp_avg_.narrow(0, begin - state_begin_, end - begin).copy_(s.exp_avg.narrow(0, begin - s.begin, end - begin));
    exp_avg_sq_.narrow(0, begin - state_begin_, end - begin).copy_(s.exp_avg_sq.narrow(0, begin - s.begin, end - begin));
    covered += end - begin;
  }
  if (covered != need_end - need_begin)
    throw InputError("optimizer shards cover " + std::to_string(covered) + " of the " + std::to_string(need_end - need_begin) +
                     " elements this rank needs", "is an optimizer.rankNNNNN.safetensors file missing?");
  step_ = steps;
}

}  // namespace lf
