#include "model/merge.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "core/error.h"
#include "io/file.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;

namespace lf {

namespace {

const char* kIndex = "model.safetensors.index.json";

// The safetensors files of a directory, in the order of its index (or the single file).
std::vector<std::string> shard_files(const std::string& dir) {
  const fs::path index_path = fs::path(dir) / kIndex;
  if (!fs::exists(index_path)) {
    if (!fs::exists(fs::path(dir) / "model.safetensors"))
      throw InputError(dir + ": no model.safetensors or " + kIndex, "give a Hugging Face model directory");
    return {"model.safetensors"};
  }
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(read_text_file(index_path.string()));
  } catch (const nlohmann::json::exception& e) {
    throw InputError(index_path.string() + ": not valid JSON: " + e.what());
  }
  std::set<std::string> seen;
  std::vector<std::string> files;
  for (auto it = index.at("weight_map").begin(); it != index.at("weight_map").end(); ++it)
    if (seen.insert(it->get<std::string>()).second) files.push_back(it->get<std::string>());
  std::sort(files.begin(), files.end());
  return files;
}

std::string model_type(const std::string& dir) {
  const fs::path path = fs::path(dir) / "config.json";
  if (!fs::exists(path)) throw InputError(dir + ": no config.json", "give a Hugging Face model directory");
  try {
    return nlohmann::json::parse(read_text_file(path.string())).value("model_type", "");
  } catch (const nlohmann::json::exception& e) {
    throw InputError(path.string() + ": not valid JSON: " + e.what());
  }
}

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
  const std::string type = model_type(o.base);
  std::vector<SafetensorsCheckpoint> experts;
  for (const auto& dir : o.experts) {
    if (model_type(dir) != type)
      throw InputError(dir + "/config.json: model_type '" + model_type(dir) + "' differs from the base's '" + type + "'",
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
    for (const auto& file : shard_files(o.base)) {
      const SafetensorsFile shard = SafetensorsFile::open((fs::path(o.base) / file).string());
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
