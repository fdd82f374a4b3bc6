#include "model/merge.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "core/error.h"
#include "core/hash.h"
#include "io/file.h"
#include "io/safetensors.h"
#include "model/model_config.h"

namespace fs = std::filesystem;

namespace lf {

namespace {

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

double default_density(const std::string& method) { return method == "ties" ? 0.2 : 0.1; }

// δ with all but its k = ⌊density · n⌋ largest magnitudes zeroed (TIES' trim; PEFT's
// magnitude_based_pruning, up to ties at the threshold, which keep every equal entry).
at::Tensor trim_by_magnitude(const at::Tensor& delta, double density) {
  const int64_t n = delta.numel(), k = static_cast<int64_t>(density * static_cast<double>(n));
  if (k >= n) return delta;
  if (k <= 0) return at::zeros_like(delta);
  const at::Tensor magnitude = delta.abs();
  const at::Tensor threshold = std::get<0>(magnitude.flatten().kthvalue(n - k + 1));
  return delta * (magnitude >= threshold).to(delta.scalar_type());
}

// δ with each entry kept with probability `density` and rescaled by 1/density (DARE).
at::Tensor drop_and_rescale(const at::Tensor& delta, double density, uint64_t seed) {
  auto generator = at::detail::createCPUGenerator(seed);
  const at::Tensor keep = at::bernoulli(at::full_like(delta, density), generator);
  return delta * keep / density;
}

// TIES' sign election and disjoint mean over the (trimmed) task vectors stacked as [T, ...].
at::Tensor elect_and_merge(const at::Tensor& deltas, const at::Tensor& weights) {
  const at::Tensor majority = at::where(deltas.sum(0) >= 0, 1.0, -1.0).to(deltas.scalar_type());
  const at::Tensor agrees = (deltas.sign() == majority).to(deltas.scalar_type());
  std::vector<int64_t> shape(deltas.dim(), 1);  // [T, 1, 1, ...]: λ_t broadcast over its task vector
  shape[0] = deltas.size(0);
  const at::Tensor weighted = deltas * weights.view(shape);
  return (weighted * agrees).sum(0) / agrees.sum(0).clamp_min(1.0);
}

// Every expert has the base's model type, tensors, shapes and dtypes: checked before anything is written.
void check_experts(const MergeOptions& o, const SafetensorsCheckpoint& base, const std::vector<SafetensorsCheckpoint>& experts) {
  const auto names = base.names();
  const std::set<std::string> base_names(names.begin(), names.end());
  for (size_t t = 0; t < experts.size(); ++t) {
    for (const auto& name : experts[t].names())
      if (!base_names.count(name)) throw InputError(o.experts[t] + ": tensor '" + name + "' is not in the base " + o.base);
    for (const auto& name : names) {
      if (!experts[t].contains(name)) throw InputError(o.experts[t] + ": tensor '" + name + "' of the base is missing");
      const auto &b = base.entry(name), &e = experts[t].entry(name);
      if (b.shape != e.shape)
        throw InputError(o.experts[t] + ": tensor '" + name + "' has shape " + shape_text(e.shape) + ", the base " +
                         shape_text(b.shape));
      if (b.dtype != e.dtype)
        throw InputError(o.experts[t] + ": tensor '" + name + "' is " + e.dtype + ", the base " + b.dtype,
                         "convert the expert to the base's dtype first");
    }
  }
}

// One floating tensor merged: the base `b_math` (in the math dtype) plus the experts' task vectors
// combined by `o.method`.
at::Tensor merge_tensor(const MergeOptions& o, const std::vector<SafetensorsCheckpoint>& experts, const std::string& name,
                        const at::Tensor& b_math, double density) {
  at::Tensor out = b_math.clone();
  const c10::ScalarType math = b_math.scalar_type();
  if (o.method == "task_arithmetic") {
    for (size_t t = 0; t < experts.size(); ++t) {
      const at::Tensor delta = experts[t].tensor(name).to(math) - b_math;
      out = out + delta * o.weights[t];
    }
    return out;
  }
  std::vector<at::Tensor> deltas;
  for (size_t t = 0; t < experts.size(); ++t) {
    at::Tensor delta = experts[t].tensor(name).to(math) - b_math;
    if (o.method == "ties") {
      delta = trim_by_magnitude(delta, density);
    } else {
      const uint64_t seed = fnv1a64(name) + 1000003ull * t + o.seed;
      delta = drop_and_rescale(delta, density, seed & 0x7fffffffffffffffull);
    }
    deltas.push_back(delta);
  }
  if (o.method == "dare") {
    for (size_t t = 0; t < deltas.size(); ++t) out = out + deltas[t] * o.weights[t];
    return out;
  }
  return out + elect_and_merge(at::stack(deltas), at::tensor(o.weights, b_math.options()));
}

// The base's shards rewritten tensor by tensor into `staging`, in its layout; returns the tensors merged.
int64_t write_merged_shards(const MergeOptions& o, const SafetensorsCheckpoint& base,
                            const std::vector<SafetensorsCheckpoint>& experts, double density, const fs::path& staging) {
  int64_t merged = 0;
  for (const SafetensorsFile& shard : base.files()) {
    const std::string file = fs::path(shard.path()).filename().string();
    std::vector<SafetensorsStreamWriter::Spec> specs;
    for (const auto& e : shard.entries()) specs.push_back({e.name, safetensors_dtype(e.dtype), e.shape});
    SafetensorsStreamWriter writer((staging / file).string(), specs, shard.metadata());
    for (const auto& e : shard.entries()) {
      const at::Tensor b = shard.tensor(e.name);
      if (!at::isFloatingType(b.scalar_type())) {
        writer.write(b);
        continue;
      }
      const c10::ScalarType math = b.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
      writer.write(merge_tensor(o, experts, e.name, b.to(math), density).to(b.scalar_type()));
      ++merged;
    }
    writer.finish();
  }
  return merged;
}

}  // namespace

const std::vector<std::string>& merge_methods() {
  static const std::vector<std::string> methods{"task_arithmetic", "ties", "dare", "dare_ties"};
  return methods;
}

int64_t merge_task_arithmetic(const MergeOptions& o) {
  if (o.experts.empty()) throw InputError("merge: give at least one --expert");
  const auto& methods = merge_methods();
  if (std::find(methods.begin(), methods.end(), o.method) == methods.end())
    throw InputError("merge: unknown --method '" + o.method + "'", "one of task_arithmetic, ties, dare, dare_ties");
  const double density = o.density > 0 ? o.density : default_density(o.method);
  if (o.method != "task_arithmetic" && !(density > 0 && density <= 1))
    throw InputError("merge: --density " + std::to_string(o.density) + " is not in (0, 1]");
  if (o.weights.size() != o.experts.size())
    throw InputError("merge: " + std::to_string(o.weights.size()) + " weight(s) for " + std::to_string(o.experts.size()) +
                     " expert(s)", "give one --weight per --expert, or none for 1.0 each");
  const std::string type = load_model_config(o.base).model_type;
  std::vector<SafetensorsCheckpoint> experts;
  for (const auto& dir : o.experts) {
    const std::string expert_type = load_model_config(dir).model_type;
    if (expert_type != type)
      throw InputError(dir + "/config.json: model_type '" + expert_type + "' differs from the base's '" + type + "'",
                       "task arithmetic needs experts fine-tuned from the base");
    experts.push_back(SafetensorsCheckpoint::open_dir(dir));
  }
  const SafetensorsCheckpoint base = SafetensorsCheckpoint::open_dir(o.base);
  check_experts(o, base, experts);

  int64_t merged = 0;
  write_directory_atomic(o.out, [&](const std::string& staging_dir) {
    const fs::path staging(staging_dir);
    merged = write_merged_shards(o, base, experts, density, staging);
    // config.json, the tokenizer, the index and the rest come from the base.
    for (const auto& entry : fs::directory_iterator(o.base)) {
      const std::string name = entry.path().filename().string();
      if (!entry.is_regular_file() || (name.size() > 12 && name.substr(name.size() - 12) == ".safetensors")) continue;
      fs::copy_file(entry.path(), staging / name);
    }
  }, "--out");
  std::string weights;
  for (double x : o.weights) weights += (weights.empty() ? "" : ",") + std::to_string(x);
  spdlog::info("merged {} tensors of {} expert(s) into {} ({}{}, weights {})", merged, experts.size(), o.out, o.method,
               o.method == "task_arithmetic" ? std::string() : ", density " + std::to_string(density), weights);
  return merged;
}

}  // namespace lf
