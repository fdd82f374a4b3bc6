#include "train/zero3.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <set>

#include "core/error.h"
#include "io/safetensors.h"

namespace lf {

namespace {

// The communicators sum float32, but move the bytes of any dtype (a bfloat16 teacher's shards).
std::unique_ptr<PendingCollective> all_gather_any(Communicator& comm, const at::Tensor& input, at::Tensor& output) {
  if (input.scalar_type() == at::kFloat) return comm.all_gather_async(input.contiguous(), output);
  at::Tensor bytes = output.view(at::kByte);
  return comm.all_gather_async(input.contiguous().view(at::kByte), bytes);
}

// One unit of a sharded student under autograd: the forward gathers the unit, computes without a
// graph and frees it, saving only the unit's input; the backward gathers again, recomputes with a
// graph (under the forward's autocast state), and returns the unit's reduce-scattered parameter
// gradient as the gradient of its shard leaf, which autograd accumulates into the gradient shard.
struct GatheredUnit : public torch::autograd::Function<GatheredUnit> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& leaf,
                            const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& mask, int64_t owner,
                            int64_t unit, int64_t flags) {
    (void)leaf;  // an input only so that the output requires grad and the shard receives one
    ctx->save_for_backward({x, cos, sin, mask});
    ctx->saved_data["owner"] = owner;
    ctx->saved_data["unit"] = unit;
    ctx->saved_data["flags"] = flags;
    ctx->saved_data["autocast"] = at::autocast::is_autocast_enabled(x.device().type());
    auto* self = reinterpret_cast<ShardedModel*>(owner);
    self->gather(unit);
    at::Tensor out = self->model().compute_unit(unit, x, {cos, sin, mask}, flags);
    self->release(unit);
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    auto* self = reinterpret_cast<ShardedModel*>(ctx->saved_data["owner"].toInt());
    const int64_t unit = ctx->saved_data["unit"].toInt();
    const bool differentiable_x = saved[0].is_floating_point();
    at::Tensor x = differentiable_x ? saved[0].detach().requires_grad_(true) : saved[0];
    const auto device_type = x.device().type();
    const bool previous = at::autocast::is_autocast_enabled(device_type);
    at::autocast::set_autocast_enabled(device_type, ctx->saved_data["autocast"].toBool());
    // Autocast would keep the low-precision copy of every unit's weights until the micro-batch ends.
    const bool previous_cache = at::autocast::is_autocast_cache_enabled();
    at::autocast::set_autocast_cache_enabled(false);
    self->prefetch(unit - 1);  // the unit whose backward comes next, gathered while this one recomputes
    self->gather(unit);
    std::vector<at::Tensor> grads;
    {
      at::AutoGradMode enable_grad(true);
      at::Tensor out = self->model().compute_unit(unit, x, {saved[1], saved[2], saved[3]}, ctx->saved_data["flags"].toInt());
      std::vector<at::Tensor> inputs = self->units()[unit].params;
      if (differentiable_x) inputs.push_back(x);
      grads = torch::autograd::grad({out}, inputs, {grad_outputs[0]}, /*retain_graph=*/false, /*create_graph=*/false,
                                    /*allow_unused=*/true);
    }
    at::autocast::set_autocast_cache_enabled(previous_cache);
    at::autocast::set_autocast_enabled(device_type, previous);
    at::Tensor grad_x;
    if (differentiable_x) {
      grad_x = grads.back();
      grads.pop_back();
    }
    at::Tensor shard_grad = self->reduce_scatter_gradient(unit, grads);
    self->release(unit);
    return {grad_x, shard_grad, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

ShardedModel::ShardedModel(CausalLM& model, Communicator& comm, bool trainable)
    : model_(model), comm_(comm), trainable_(trainable) {
  const int64_t world = comm_.world_size();
  const auto options = model_.options();
  int64_t local = 0;
  for (auto& group : model_.parameter_units()) {
    Unit u;
    for (auto& [name, p] : group) {
      u.names.push_back(name);
      u.params.push_back(p);
      u.shapes.push_back(p.sizes().vec());
      u.offsets.push_back(u.numel);
      u.numel += p.numel();
    }
    u.shard = (u.numel + world - 1) / world;
    u.local = local;
    u.global = total_;
    local += u.shard;
    total_ += u.numel;
    units_.push_back(std::move(u));
  }
  at::NoGradGuard no_grad;
  local_params_ = at::zeros({local}, options);
  released_ = at::empty({0}, options);
  if (trainable_) local_grads_ = at::zeros({local}, options.dtype(at::kFloat));
  for (auto& u : units_) {
    for (auto& p : u.params) {
      p.set_data(released_);  // whatever the model allocated is dropped here
      if (!trainable_) p.set_requires_grad(false);
    }
    if (trainable_) {
      if (local_params_.scalar_type() != at::kFloat) throw RuntimeFailure("ZeRO-3: a trained model keeps float32 parameters");
      u.leaf = at::empty({0}, options).set_requires_grad(true);
      u.leaf.set_data(owned(u, local_params_));
      u.leaf.mutable_grad() = owned(u, local_grads_);
    }
  }
  model_.set_parameter_units(this);
}

ShardedModel::~ShardedModel() { model_.set_parameter_units(nullptr); }

int64_t ShardedModel::shard_bytes() const {
  int64_t bytes = local_params_.numel() * local_params_.element_size();
  if (local_grads_.defined()) bytes += local_grads_.numel() * 4;
  return bytes;
}

void ShardedModel::load(const std::string& dir) {
  auto checkpoint = SafetensorsCheckpoint::open_dir(dir);
  const auto has = [&](const std::string& n) { return checkpoint.contains(n); };
  at::NoGradGuard no_grad;
  local_params_.zero_();
  const int64_t rank = comm_.rank();
  std::set<std::string> used;
  for (auto& u : units_) {
    const int64_t begin = rank * u.shard, end = std::min(u.numel, begin + u.shard);
    for (size_t i = 0; i < u.names.size(); ++i) {
      const std::string name = checkpoint_tensor_name(model_.config(), u.names[i], has);
      if (!checkpoint.contains(name))
        throw InputError(dir + ": checkpoint has no tensor '" + name + "'", "is config.json the one these weights were saved with?");
      const auto& entry = checkpoint.entry(name);
      if (at::IntArrayRef(entry.shape) != at::IntArrayRef(u.shapes[i]))
        throw InputError(dir + ": tensor '" + name + "' has shape " + c10::str(at::IntArrayRef(entry.shape)) +
                         ", config.json implies " + c10::str(at::IntArrayRef(u.shapes[i])));
      used.insert(name);
      const int64_t numel = c10::multiply_integers(u.shapes[i]);
      const int64_t a = std::max(begin, u.offsets[i]), b = std::min(end, u.offsets[i] + numel);
      if (a >= b) continue;
      // Only this rank's slice of the (memory-mapped) tensor is read.
      local_params_.narrow(0, u.local + a - begin, b - a)
          .copy_(checkpoint.tensor(name).reshape({-1}).narrow(0, a - u.offsets[i], b - a));
    }
  }
  for (const auto& name : checkpoint.names()) {
    if (used.count(name) || checkpoint_tensor_skippable(model_.config(), name)) continue;
    throw InputError(dir + ": unexpected tensor '" + name + "' in the checkpoint",
                     "the weights do not match config.json's architecture");
  }
}

void ShardedModel::save(const std::string& dir, const SaveOptions& options, bool writer) {
  std::vector<SafetensorsStreamWriter::Spec> specs;
  for (const auto& u : units_)
    for (size_t i = 0; i < u.names.size(); ++i) specs.push_back({u.names[i], local_params_.scalar_type(), u.shapes[i]});
  const TensorProducer produce = [&](const std::function<void(const at::Tensor&)>& write) {
    at::NoGradGuard no_grad;
    for (size_t unit = 0; unit < units_.size(); ++unit) {
      gather(static_cast<int64_t>(unit));
      for (const auto& p : units_[unit].params) write(p);
      release(static_cast<int64_t>(unit));
    }
  };
  if (writer) save_model_streamed(model_.config(), local_params_.scalar_type(), dir, specs, produce, options);
  else produce([](const at::Tensor&) {});
}

void ShardedModel::start_gather(Unit& u) {
  at::NoGradGuard no_grad;
  u.full = at::empty({u.shard * comm_.world_size()}, local_params_.options());
  u.prefetched = all_gather_any(comm_, owned(u, local_params_), u.full);
}

void ShardedModel::prefetch(int64_t unit) {
  if (unit < 0 || unit >= static_cast<int64_t>(units_.size()) || comm_.world_size() == 1) return;
  Unit& u = units_[unit];
  if (u.refs == 0 && !u.prefetched) start_gather(u);
}

void ShardedModel::gather(int64_t unit) {
  Unit& u = units_.at(unit);
  if (u.refs++ > 0) return;
  at::NoGradGuard no_grad;
  if (comm_.world_size() == 1) {
    u.full = owned(u, local_params_);  // the shard is the whole unit: no copy
  } else {
    if (!u.prefetched) start_gather(u);
    u.prefetched->wait();
    u.prefetched.reset();
  }
  for (size_t i = 0; i < u.params.size(); ++i)
    u.params[i].set_data(u.full.narrow(0, u.offsets[i], c10::multiply_integers(u.shapes[i])).view(u.shapes[i]));
}

void ShardedModel::release(int64_t unit) {
  Unit& u = units_.at(unit);
  if (u.refs <= 0) throw RuntimeFailure("ZeRO-3: unit " + std::to_string(unit) + " released but not gathered");
  if (--u.refs > 0) return;
  for (auto& p : u.params) {
    p.mutable_grad() = at::Tensor();
    p.set_data(released_);
  }
  u.full = at::Tensor();
  u.full_grad = at::Tensor();
}

bool ShardedModel::is_gathered(int64_t unit) const { return units_.at(unit).refs > 0; }

at::Tensor ShardedModel::run(int64_t unit, const at::Tensor& x, const std::vector<at::Tensor>& extras, int64_t flags) {
  if (!trainable_) throw RuntimeFailure("ZeRO-3: a differentiable forward through a model without gradients");
  const at::Tensor none = at::empty({0}, x.options().dtype(at::kFloat));
  auto extra = [&](size_t i) { return i < extras.size() ? extras[i] : none; };
  return GatheredUnit::apply(x, units_.at(unit).leaf, extra(0), extra(1), extra(2), reinterpret_cast<int64_t>(this), unit,
                             flags);
}

void ShardedModel::gather_for_gradients(int64_t unit) {
  gather(unit);
  Unit& u = units_.at(unit);
  if (u.full_grad.defined()) return;
  u.full_grad = at::zeros({u.shard * comm_.world_size()}, local_grads_.options());
  for (size_t i = 0; i < u.params.size(); ++i)
    u.params[i].mutable_grad() = u.full_grad.narrow(0, u.offsets[i], c10::multiply_integers(u.shapes[i])).view(u.shapes[i]);
}

void ShardedModel::reduce_gradients_and_release(int64_t unit) {
  Unit& u = units_.at(unit);
  if (!u.full_grad.defined()) throw RuntimeFailure("ZeRO-3: unit " + std::to_string(unit) + " was not gathered for gradients");
  at::NoGradGuard no_grad;
  if (comm_.world_size() == 1) {
    owned(u, local_grads_).add_(u.full_grad);
  } else {
    at::Tensor mine = at::empty({u.shard}, local_grads_.options());
    comm_.reduce_scatter_sum(u.full_grad, mine);
    owned(u, local_grads_).add_(mine);
  }
  for (auto& p : u.params) p.mutable_grad() = at::Tensor();
  u.full_grad = at::Tensor();
  release(unit);
}

at::Tensor ShardedModel::reduce_scatter_gradient(int64_t unit, const std::vector<at::Tensor>& grads) {
  const Unit& u = units_.at(unit);
  at::NoGradGuard no_grad;
  const int64_t world = comm_.world_size();
  at::Tensor flat = at::zeros({u.shard * world}, local_grads_.options());
  for (size_t i = 0; i < grads.size(); ++i)
    if (grads[i].defined()) flat.narrow(0, u.offsets[i], grads[i].numel()).copy_(grads[i].reshape({-1}));
  if (world == 1) return flat;
  at::Tensor mine = at::empty({u.shard}, flat.options());
  comm_.reduce_scatter_sum(flat, mine);
  return mine;
}

Zero3AdamW::Zero3AdamW(ShardedModel& model, AdamWConfig config) : model_(model), config_(config) {
  const int64_t rank = model_.comm().rank();
  for (const auto& u : model_.units()) {
    const int64_t begin = rank * u.shard, end = std::min(u.numel, begin + u.shard);
    for (size_t i = 0; i < u.names.size(); ++i) {
      const int64_t a = std::max(begin, u.offsets[i]), b = std::min(end, u.offsets[i] + c10::multiply_integers(u.shapes[i]));
      if (a < b) pieces_.push_back({u.local + a - begin, u.global + a, b - a, u.shapes[i].size() >= 2});
    }
  }
  exp_avg_ = at::zeros_like(model_.local_grads());
  exp_avg_sq_ = at::zeros_like(model_.local_grads());
}

double Zero3AdamW::grad_norm() {
  at::NoGradGuard no_grad;
  const double norm = at::linalg_vector_norm(model_.local_grads(), 2).item<double>();
  return std::sqrt(model_.comm().all_reduce_sum(norm * norm));
}

void Zero3AdamW::step(double lr, double grad_scale) {
  at::NoGradGuard no_grad;
  ++step_;
  for (const auto& piece : pieces_) {
    at::Tensor p = model_.local_params().narrow(0, piece.local, piece.length);
    at::Tensor g = model_.local_grads().narrow(0, piece.local, piece.length);
    at::Tensor m = exp_avg_.narrow(0, piece.local, piece.length);
    at::Tensor v = exp_avg_sq_.narrow(0, piece.local, piece.length);
    adamw_update(p, g, m, v, lr, step_, config_, piece.decay, grad_scale);
  }
}

void Zero3AdamW::zero_grad() { model_.local_grads().zero_(); }

void Zero3AdamW::reset_state() {
  exp_avg_.zero_();
  exp_avg_sq_.zero_();
  step_ = 0;
}

std::vector<OptimizerShard> Zero3AdamW::owned_states() const {
  // Pieces that continue each other both locally and globally share one range.
  std::vector<OptimizerShard> out;
  int64_t local_begin = 0;
  for (const auto& piece : pieces_) {
    if (!out.empty() && out.back().end == piece.global && local_begin + (out.back().end - out.back().begin) == piece.local) {
      out.back().end += piece.length;
    } else {
      out.push_back({piece.global, piece.global + piece.length, model_.total_numel(), at::Tensor(), at::Tensor()});
      local_begin = piece.local;
    }
    out.back().exp_avg = exp_avg_.narrow(0, local_begin, out.back().end - out.back().begin);
    out.back().exp_avg_sq = exp_avg_sq_.narrow(0, local_begin, out.back().end - out.back().begin);
  }
  return out;
}

void Zero3AdamW::load_state(const std::vector<OptimizerShard>& shards, int64_t steps) {
  at::NoGradGuard no_grad;
  exp_avg_.zero_();
  exp_avg_sq_.zero_();
  int64_t needed = 0, covered = 0;
  for (const auto& s : shards)
    if (s.total != model_.total_numel())
      throw InputError("optimizer state covers " + std::to_string(s.total) + " parameters, the student has " +
                           std::to_string(model_.total_numel()),
                       "was the checkpoint written for another student?");
  for (const auto& piece : pieces_) {
    needed += piece.length;
    for (const auto& s : shards) {
      const int64_t a = std::max(s.begin, piece.global), b = std::min(s.end, piece.global + piece.length);
      if (a >= b) continue;
      const int64_t to = piece.local + a - piece.global;
      exp_avg_.narrow(0, to, b - a).copy_(s.exp_avg.narrow(0, a - s.begin, b - a));
      exp_avg_sq_.narrow(0, to, b - a).copy_(s.exp_avg_sq.narrow(0, a - s.begin, b - a));
      covered += b - a;
    }
  }
  if (covered != needed)
    throw InputError("optimizer shards cover " + std::to_string(covered) + " of the " + std::to_string(needed) +
                         " elements this rank needs",
                     "is an optimizer.rankNNNNN.safetensors file missing?");
  step_ = steps;
}

std::vector<std::string> Zero3AdamW::param_names() const {
  std::vector<std::string> names;
  for (const auto& u : model_.units())
    for (const auto& name : u.names) names.push_back(name);
  return names;
}

}  // namespace lf
