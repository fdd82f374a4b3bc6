// `logitfuse merge --lora` (model/lora.h: merge_lora_adapters): adapters folded into a base
// directory's weights, streamed shard by shard in the base's layout.
#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <map>

#include "core/error.h"
#include "io/file.h"
#include "io/safetensors.h"
#include "model/lora.h"

namespace fs = std::filesystem;

namespace lf {

namespace {

// One adapter of one module: B A and its scale (× the adapter's --weight).
struct ModuleDelta {
  at::Tensor A, B;  // float32
  double scale = 1.0;
};

// Every adapter's modules, keyed by the weight they change ("<module>.weight"), in --lora order.
std::map<std::string, std::vector<ModuleDelta>> read_deltas(const std::vector<std::string>& adapters,
                                                           const std::vector<double>& weights) {
  std::map<std::string, std::vector<ModuleDelta>> out;
  for (size_t i = 0; i < adapters.size(); ++i) {
    const LoraAdapterFile adapter = read_lora_adapter(adapters[i]);
    for (const auto& m : adapter.modules)
      out[m.module + ".weight"].push_back({m.A, m.B, adapter.config.scale() * weights[i]});
  }
  return out;
}

// Every adapted weight is in the base with the shape B A has: checked before anything is written.
void check_against_base(const std::map<std::string, std::vector<ModuleDelta>>& deltas, const SafetensorsCheckpoint& base,
                        const std::string& base_dir) {
  for (const auto& [name, list] : deltas) {
    if (!base.contains(name))
      throw InputError(base_dir + ": the adapter changes '" + name + "', which the base does not have",
                       "was the adapter trained on another base? (a tied LM head is not in the checkpoint)");
    const auto& shape = base.entry(name).shape;
    for (const auto& d : list)
      if (shape.size() != 2 || shape[0] != d.B.size(0) || shape[1] != d.A.size(1))
        throw InputError(base_dir + ": '" + name + "' has shape " + c10::str(at::IntArrayRef(shape)) + ", the adapter's B A is [" +
                         std::to_string(d.B.size(0)) + ", " + std::to_string(d.A.size(1)) + "]",
                         "was the adapter trained on another base?");
  }
}

}  // namespace

int64_t merge_lora_adapters(const std::string& base_dir, const std::vector<std::string>& adapters,
                            const std::vector<double>& weights, const std::string& out) {
  if (adapters.empty()) throw InputError("merge: give at least one --lora");
  if (weights.size() != adapters.size())
    throw InputError("merge: " + std::to_string(weights.size()) + " weight(s) for " + std::to_string(adapters.size()) +
                     " adapter(s)", "give one --weight per --lora, or none for 1.0 each");
  const auto deltas = read_deltas(adapters, weights);
  const SafetensorsCheckpoint base = SafetensorsCheckpoint::open_dir(base_dir);
  check_against_base(deltas, base, base_dir);
  int64_t merged = 0;
  write_directory_atomic(out, [&](const std::string& staging_dir) {
    const fs::path staging(staging_dir);
    for (const SafetensorsFile& shard : base.files()) {
      std::vector<SafetensorsStreamWriter::Spec> specs;
      for (const auto& e : shard.entries()) specs.push_back({e.name, safetensors_dtype(e.dtype), e.shape});
      SafetensorsStreamWriter writer((staging / fs::path(shard.path()).filename()).string(), specs, shard.metadata());
      for (const auto& e : shard.entries()) {
        at::Tensor w = shard.tensor(e.name);
        const auto it = deltas.find(e.name);
        if (it != deltas.end()) {
          // PEFT's merge: each adapter's B A · s in float32, cast to the weight's dtype, then added in it.
          for (const auto& d : it->second) w = w + (at::matmul(d.B, d.A) * d.scale).to(w.scalar_type());
          ++merged;
        }
        writer.write(w);
      }
      writer.finish();
    }
    for (const auto& entry : fs::directory_iterator(base_dir)) {
      const std::string name = entry.path().filename().string();
      if (!entry.is_regular_file() || entry.path().extension() == ".safetensors") continue;
      fs::copy_file(entry.path(), staging / name);
    }
  }, "--out");
  spdlog::info("merged {} adapter(s) into {} weights of {}: {}", adapters.size(), merged, base_dir, out);
  return merged;
}

}  // namespace lf
