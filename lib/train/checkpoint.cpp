#include "train/checkpoint.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "io/file.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"

namespace fs = std::filesystem;

namespace lf {

std::string checkpoint_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "step_%06lld", static_cast<long long>(step));
  return name;
}

namespace {

std::string optimizer_file(int64_t rank) {
  char name[64];
  std::snprintf(name, sizeof name, "optimizer.rank%05lld.safetensors", static_cast<long long>(rank));
  return name;
}

std::string to_hex(const at::Tensor& bytes) {
  static const char* digits = "0123456789abcdef";
  at::Tensor b = bytes.contiguous();
  const uint8_t* p = b.data_ptr<uint8_t>();
  std::string out;
  for (int64_t i = 0; i < b.numel(); ++i) {
    out.push_back(digits[p[i] >> 4]);
    out.push_back(digits[p[i] & 15]);
  }
  return out;
}

at::Tensor from_hex(const std::string& hex) {
  at::Tensor out = at::empty({static_cast<int64_t>(hex.size() / 2)}, at::TensorOptions().dtype(at::kByte));
  uint8_t* p = out.data_ptr<uint8_t>();
  for (size_t i = 0; i + 1 < hex.size(); i += 2) p[i / 2] = static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

int64_t step_of(const fs::path& dir) {
  const std::string name = dir.filename().string();
  if (name.rfind("step_", 0) != 0 || name.find('.') != std::string::npos) return -1;
  try {
    return std::stoll(name.substr(5));
  } catch (const std::exception&) {
    return -1;
  }
}

}  // namespace

std::vector<std::string> complete_checkpoints(const std::string& output_dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  const fs::path root = fs::path(output_dir) / "checkpoints";
  if (!fs::exists(root)) return {};
  for (const auto& entry : fs::directory_iterator(root)) {
    const int64_t step = step_of(entry.path());
    if (step >= 0 && entry.is_directory() && fs::exists(entry.path() / "DONE")) found.emplace_back(step, entry.path().string());
  }
  std::sort(found.rbegin(), found.rend());
  std::vector<std::string> out;
  for (auto& [step, path] : found) out.push_back(path);
  return out;
}

void write_checkpoint(const std::string& output_dir, CausalLM& model, const AdamW& optimizer, const TrainerState& state,
                      int64_t rank, const std::string& tokenizer_dir, int64_t keep_last) {
  const fs::path root = fs::path(output_dir) / "checkpoints";
  fs::create_directories(root);
  const fs::path final_dir = root / checkpoint_name(state.step);
  const fs::path staging = root / (checkpoint_name(state.step) + ".tmp-" + std::to_string(::getpid()));
  fs::remove_all(staging);
  if (fs::exists(final_dir)) fs::remove_all(final_dir);  // an older, incomplete attempt at this step
  SaveOptions save;
  save.dtype = "fp32";  // master weights, so a resume continues bit for bit
  save.tokenizer_from = tokenizer_dir;
  save_model(model, staging.string(), save);
  write_safetensors((staging / optimizer_file(rank)).string(), optimizer.state());
  nlohmann::json j = {{"step", state.step},
                      {"epoch", state.cursor.epoch},
                      {"epoch_step", state.cursor.step},
                      {"world_size", state.world_size},
                      {"optimizer_steps", optimizer.steps()},
                      {"recipe_hash", state.recipe_hash},
                      {"tokens_seen", state.tokens_seen},
                      {"rng_state", to_hex(at::detail::getDefaultCPUGenerator().get_state())}};
  write_file_atomic((staging / "trainer_state.json").string(), j.dump(2) + "\n");
  fsync_directory(staging.string());
  fs::rename(staging, final_dir);
  fsync_directory(root.string());
  write_file_atomic((final_dir / "DONE").string(), "step " + std::to_string(state.step) + "\n");

  auto complete = complete_checkpoints(output_dir);
  for (size_t i = static_cast<size_t>(std::max<int64_t>(keep_last, 1)); i < complete.size(); ++i) {
    std::error_code ignored;
    fs::remove(fs::path(complete[i]) / "DONE", ignored);  // first, so a half-removed one is never taken
    fs::remove_all(complete[i], ignored);
  }
}

TrainerState read_checkpoint(const std::string& dir, CausalLM& model, AdamW& optimizer, int64_t rank) {
  const fs::path root(dir);
  const fs::path state_path = root / "trainer_state.json";
  if (!fs::exists(root / "DONE")) throw InputError(dir + ": incomplete checkpoint (no DONE marker)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(state_path.string()));
  } catch (const nlohmann::json::exception& e) {
    throw InputError(state_path.string() + ": not valid JSON: " + e.what());
  }
  TrainerState state;
  try {
    state.step = j.at("step").get<int64_t>();
    state.cursor.epoch = j.at("epoch").get<int64_t>();
    state.cursor.step = j.at("epoch_step").get<int64_t>();
    state.world_size = j.at("world_size").get<int64_t>();
    state.recipe_hash = j.at("recipe_hash").get<std::string>();
    state.tokens_seen = j.at("tokens_seen").get<double>();
    state.rng_state = j.at("rng_state").get<std::string>();
    load_weights_into(model, dir);
    auto file = SafetensorsFile::open((root / optimizer_file(rank)).string());
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (const auto& e : file.entries()) tensors.emplace_back(e.name, file.tensor(e.name));
    optimizer.load_state(tensors, j.at("optimizer_steps").get<int64_t>());
  } catch (const nlohmann::json::exception& e) {
    throw InputError(state_path.string() + ": " + e.what());
  }
  if (!state.rng_state.empty()) {
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    generator.set_state(from_hex(state.rng_state));
  }
  return state;
}

}  // namespace lf
