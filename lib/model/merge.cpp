#include "model/merge.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <set>

#include "core/error.h"
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

}  // namespace

int64_t merge_task_arithmetic(const MergeOptions& o) {
  if (o.experts.empty()) throw InputError("merge: give at least one --expert");
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

  // Everything is checked before anything is written.
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

  int64_t merged = 0;
  write_directory_atomic(o.out, [&](const std::string& staging_dir) {
    const fs::path staging(staging_dir);
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
        const at::Tensor b_math = b.to(math);
        at::Tensor out = b_math.clone();
        for (size_t t = 0; t < experts.size(); ++t) {
          const at::Tensor delta = experts[t].tensor(e.name).to(math) - b_math;
          out = out + delta * o.weights[t];
        }
        writer.write(out.to(b.scalar_type()));
        ++merged;
      }
      writer.finish();
    }
    // config.json, the tokenizer, the index and the rest come from the base.
    for (const auto& entry : fs::directory_iterator(o.base)) {
      const std::string name = entry.path().filename().string();
      if (!entry.is_regular_file() || (name.size() > 12 && name.substr(name.size() - 12) == ".safetensors")) continue;
      fs::copy_file(entry.path(), staging / name);
    }
  }, "--out");
  spdlog::info("merged {} tensors of {} expert(s) into {} (task arithmetic, weights {})", merged, experts.size(), o.out,
               [&] {
                 std::string w;
                 for (double x : o.weights) w += (w.empty() ? "" : ",") + std::to_string(x);
                 return w;
               }());
  return merged;
}

}  // namespace lf
