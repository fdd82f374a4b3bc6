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

namespace {

// One range: `exp_avg`, `exp_avg_sq` and `range` (begin, end, total). Several (ZeRO-3: a slice of
// every unit): `ranges` [K, 3] and the K ranges' state concatenated.
void write_optimizer_shard(const fs::path& dir, const DistributedOptimizer& optimizer, int64_t rank) {
  const std::vector<OptimizerShard> states = optimizer.owned_states();
  const std::string path = (dir / optimizer_file(rank)).string();
  if (states.size() == 1) {
    const OptimizerShard& shard = states.front();
    at::Tensor range = at::tensor(std::vector<int64_t>{shard.begin, shard.end, shard.total}, at::kLong);
    write_safetensors(path, {{"exp_avg", shard.exp_avg.to(at::kCPU)}, {"exp_avg_sq", shard.exp_avg_sq.to(at::kCPU)},
                             {"range", range}});
    return;
  }
  std::vector<int64_t> ranges;
  std::vector<at::Tensor> avg, avg_sq;
  for (const auto& shard : states) {
    ranges.insert(ranges.end(), {shard.begin, shard.end, shard.total});
    avg.push_back(shard.exp_avg.to(at::kCPU));
    avg_sq.push_back(shard.exp_avg_sq.to(at::kCPU));
  }
  const int64_t k = static_cast<int64_t>(states.size());
  write_safetensors(path, {{"exp_avg", k ? at::cat(avg) : at::empty({0}, at::kFloat)},
                           {"exp_avg_sq", k ? at::cat(avg_sq) : at::empty({0}, at::kFloat)},
                           {"ranges", at::tensor(ranges, at::kLong).view({k, 3})}});
}

// Every optimizer.rankNNNNN file of a checkpoint as shards of the flat space. A file without `range`
// is the per-parameter layout of single-process checkpoints from before the flat optimizer.
std::vector<OptimizerShard> read_optimizer_shards(const fs::path& dir, const DistributedOptimizer& optimizer) {
  std::vector<OptimizerShard> shards;
  for (int64_t rank = 0; fs::exists(dir / optimizer_file(rank)); ++rank) {
    const std::string path = (dir / optimizer_file(rank)).string();
    auto file = SafetensorsFile::open(path);
    if (file.contains("ranges")) {
      at::Tensor ranges = file.tensor("ranges");
      if (ranges.dim() != 2 || ranges.size(1) != 3 || ranges.scalar_type() != at::kLong)
        throw InputError(path + ": 'ranges' is not [K, 3] int64 values");
      at::Tensor avg = file.tensor("exp_avg"), avg_sq = file.tensor("exp_avg_sq");
      int64_t offset = 0;
      for (int64_t i = 0; i < ranges.size(0); ++i) {
        OptimizerShard shard;
        shard.begin = ranges[i][0].item<int64_t>();
        shard.end = ranges[i][1].item<int64_t>();
        shard.total = ranges[i][2].item<int64_t>();
        const int64_t n = shard.end - shard.begin;
        if (n < 0 || offset + n > avg.numel() || offset + n > avg_sq.numel())
          throw InputError(path + ": optimizer state sizes do not match its ranges");
        shard.exp_avg = avg.narrow(0, offset, n);
        shard.exp_avg_sq = avg_sq.narrow(0, offset, n);
        offset += n;
        shards.push_back(std::move(shard));
      }
      if (offset != avg.numel() || offset != avg_sq.numel())
        throw InputError(path + ": optimizer state sizes do not match its ranges");
      continue;
    }
    OptimizerShard shard;
    if (file.contains("range")) {
      at::Tensor range = file.tensor("range");
      if (range.numel() != 3 || range.scalar_type() != at::kLong) throw InputError(path + ": 'range' is not 3 int64 values");
      shard.begin = range[0].item<int64_t>();
      shard.end = range[1].item<int64_t>();
      shard.total = range[2].item<int64_t>();
      shard.exp_avg = file.tensor("exp_avg");
      shard.exp_avg_sq = file.tensor("exp_avg_sq");
    } else {
      std::vector<at::Tensor> avg, avg_sq;
      for (const auto& name : optimizer.param_names()) {
        for (auto [prefix, out] : {std::make_pair("exp_avg.", &avg), std::make_pair("exp_avg_sq.", &avg_sq)}) {
          if (!file.contains(prefix + name)) throw InputError(path + ": optimizer state has no '" + prefix + name + "'");
          out->push_back(file.tensor(prefix + name).reshape({-1}));
        }
      }
      shard.exp_avg = at::cat(avg);
      shard.exp_avg_sq = at::cat(avg_sq);
      shard.end = shard.total = shard.exp_avg.numel();
    }
    if (shard.exp_avg.numel() != shard.end - shard.begin || shard.exp_avg_sq.numel() != shard.end - shard.begin)
      throw InputError(path + ": optimizer state sizes do not match its range");
    shards.push_back(std::move(shard));
  }
  if (shards.empty()) throw InputError((dir / optimizer_file(0)).string() + ": missing");
  return shards;
}

// Everything of a checkpoint into its staging directory: the model (every rank at ZeRO-3), the
// trainer state (rank 0), each rank's optimizer shard.
void write_checkpoint_files(const fs::path& staging, const StudentWeights& weights, const DistributedOptimizer& optimizer,
                            const TrainerState& state, Communicator& comm, const SaveOptions& save) {
  weights.save(staging.string(), save);  // collective at ZeRO-3 (rank 0 writes)
  if (comm.is_main()) {
    nlohmann::json j = {{"step", state.step},
                        {"epoch", state.cursor.epoch},
                        {"epoch_step", state.cursor.step},
                        {"world_size", state.world_size},
                        {"global_micro_batch", state.global_micro_batch},
                        {"optimizer_steps", optimizer.steps()},
                        {"recipe_hash", state.recipe_hash},
                        {"tokens_seen", state.tokens_seen},
                        {"data_hash", state.data_hash},
                        {"rng_state", to_hex(at::detail::getDefaultCPUGenerator().get_state())}};
    write_file_atomic((staging / "trainer_state.json").string(), j.dump(2) + "\n");
  }
  comm.barrier();  // the staging directory exists
  write_optimizer_shard(staging, optimizer, comm.rank());
  comm.barrier();  // every shard is written
}

}  // namespace

StudentWeights whole_student(CausalLM& model, Communicator& comm) {
  return {[&model, &comm](const std::string& dir, const SaveOptions& options) {
            if (comm.is_main()) save_model(model, dir, options);
          },
          [&model](const std::string& dir) { load_weights_into(model, dir); }};
}

void write_checkpoint(const std::string& output_dir, const StudentWeights& weights, const DistributedOptimizer& optimizer,
                      const TrainerState& state, Communicator& comm, const std::string& tokenizer_dir, int64_t keep_last) {
  const fs::path root = fs::path(output_dir) / "checkpoints";
  const fs::path final_dir = root / checkpoint_name(state.step);
  // Rank 0's pid names the staging directory on every rank.
  const int64_t pid = static_cast<int64_t>(comm.all_reduce_sum(comm.is_main() ? static_cast<double>(::getpid()) : 0.0));
  const fs::path staging = root / (checkpoint_name(state.step) + ".tmp-" + std::to_string(pid));
  if (comm.is_main()) {
    fs::create_directories(root);
    fs::remove_all(staging);
    if (fs::exists(final_dir)) fs::remove_all(final_dir);  // an older, incomplete attempt at this step
  }
  SaveOptions save;
  save.dtype = "fp32";  // master weights, so a resume continues bit for bit
  save.tokenizer_from = tokenizer_dir;
  try {
    write_checkpoint_files(staging, weights, optimizer, state, comm, save);
  } catch (...) {
    // A failed write (a full disk) leaves the complete checkpoints as they were and frees its space.
    std::error_code ignored;
    if (comm.is_main()) fs::remove_all(staging, ignored);
    throw;
  }
  if (comm.is_main()) {
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
  comm.barrier();  // no rank goes on before the checkpoint is complete
}

TrainerState read_checkpoint(const std::string& dir, const StudentWeights& weights, DistributedOptimizer& optimizer) {
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
    state.global_micro_batch = j.value("global_micro_batch", int64_t{0});
    state.recipe_hash = j.at("recipe_hash").get<std::string>();
    state.tokens_seen = j.at("tokens_seen").get<double>();
    state.rng_state = j.at("rng_state").get<std::string>();
    state.data_hash = j.value("data_hash", std::string());  // absent in checkpoints written before it
    weights.load(dir);
    optimizer.load_state(read_optimizer_shards(root, optimizer), j.at("optimizer_steps").get<int64_t>());
  } catch (const nlohmann::json::exception& e) {
    throw InputError(state_path.string() + ": " + e.what());
  }
  if (!state.rng_state.empty()) {
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    generator.set_state(from_hex(state.rng_state));
  }
  return state;
}

CheckpointManager::CheckpointManager(const Recipe& recipe, std::string tokenizer_dir, int64_t total_steps)
    : output_dir_(recipe.run.output_dir),
      tokenizer_dir_(std::move(tokenizer_dir)),
      dtype_(recipe.student.dtype),
      every_steps_(recipe.checkpoint.every_steps),
      keep_last_(recipe.checkpoint.keep_last),
      total_steps_(total_steps) {}

bool CheckpointManager::due(int64_t step) const { return every_steps_ > 0 && step % every_steps_ == 0 && step < total_steps_; }

void CheckpointManager::save(const StudentWeights& weights, const DistributedOptimizer& optimizer, const TrainerState& state,
                             Communicator& comm) const {
  write_checkpoint(output_dir_, weights, optimizer, state, comm, tokenizer_dir_, keep_last_);
}

void CheckpointManager::save_final(const StudentWeights& weights, Communicator& comm) const {
  const std::filesystem::path final_dir = std::filesystem::path(output_dir_) / "final";
  if (comm.is_main() && std::filesystem::exists(final_dir)) std::filesystem::remove_all(final_dir);
  SaveOptions save;
  save.dtype = dtype_;
  save.tokenizer_from = tokenizer_dir_;
  weights.save(final_dir.string(), save);  // at ZeRO-3 gathered unit by unit, written by rank 0
  spdlog::info("wrote {}", final_dir.string());
  remove_unfinished_writes(output_dir_, comm);
}

void remove_unfinished_writes(const std::string& output_dir, const Communicator& comm) {
  if (!comm.is_main()) return;
  const int stale = remove_stale_staging(output_dir) + remove_stale_staging((std::filesystem::path(output_dir) / "checkpoints").string());
  if (stale > 0) spdlog::warn("removed {} unfinished write(s) of a killed run from {}", stale, output_dir);
}

RunStart check_run_start(const std::string& output_dir, const std::string& resume) {
  const bool finished = std::filesystem::exists(std::filesystem::path(output_dir) / "final" / "config.json");
  if (resume.empty() && (finished || !complete_checkpoints(output_dir).empty()))
    throw InputError(output_dir + ": already holds " + (finished ? "a finished run" : "checkpoints of a run"),
                     "continue it with --resume auto, or choose another run.output_dir");
  return resume == "auto" && finished ? RunStart::kAlreadyFinished : RunStart::kTrain;
}

}  // namespace lf
