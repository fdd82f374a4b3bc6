// Training checkpoints (interface.md): OUTPUT_DIR/checkpoints/step_NNNNNN/ holds the model in
// Hugging Face layout (float32 master weights), the optimizer state of each rank (the slice of the
// flat parameter space it owns, with its offsets), the trainer state (step, data cursor, RNG), and a
// DONE marker written last. A checkpoint is written to a temporary directory, fsynced and renamed,
// so a crash never leaves a directory that looks complete. With several ranks the directory is on a
// file system they share.
#pragma once

#include "config/recipe.h"

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "data/sampler.h"
#include "model/checkpoint.h"
#include "model/transformer.h"
#include "dist/communicator.h"
#include "train/sharded_adamw.h"

namespace lf {

struct TrainerState {
  int64_t step = 0;  // optimizer steps completed
  DataCursor cursor;
  int64_t world_size = 1;
  int64_t global_micro_batch = 0;  // micro_batch_size × world size: the data cursor counts these (0: unknown)
  std::string recipe_hash;
  double tokens_seen = 0;
  std::string rng_state;  // the CPU generator's state, hex
  std::string data_hash;  // of data.train's bytes: a resume on an edited file would read other examples
};

std::string checkpoint_name(int64_t step);  // "step_000200"

// How checkpoints write and read the student's weights: whole (rank 0 writes the model) or, at
// ZeRO-3, sharded (every rank takes part in the gathers of a save and reads its own slices).
struct StudentWeights {
  std::function<void(const std::string& dir, const SaveOptions& options)> save;  // called on every rank
  std::function<void(const std::string& dir)> load;                             // called on every rank
};
StudentWeights whole_student(CausalLM& model, Communicator& comm);

// Writes the checkpoint of `step` under output_dir/checkpoints and prunes complete checkpoints
// beyond keep_last. Collective: rank 0 writes the model and trainer state, every rank its optimizer
// shard, and rank 0 marks it DONE once all shards are in.
void write_checkpoint(const std::string& output_dir, const StudentWeights& weights, const DistributedOptimizer& optimizer,
                      const TrainerState& state, Communicator& comm, const std::string& tokenizer_dir, int64_t keep_last);

// Restores model weights, optimizer state and trainer state from a checkpoint directory, whatever
// world size and ZeRO stage wrote it (every rank reads the ranges that overlap what it owns);
// InputError (naming the file) when anything is missing or malformed.
TrainerState read_checkpoint(const std::string& dir, const StudentWeights& weights, DistributedOptimizer& optimizer);

// Complete checkpoints (DONE present) under output_dir/checkpoints, newest first.
std::vector<std::string> complete_checkpoints(const std::string& output_dir);

// When a run saves and what a save holds (torchtitan's checkpoint manager), in one place for the
// trainer's loop: a checkpoint (weights, optimizer state, TrainerState) every `checkpoint.every_steps`
// steps before the last, and on a stop signal; final/ (the student alone, in its dtype and Hugging
// Face layout) at the end; and the staging folders of a killed write removed at start and end.
class CheckpointManager {
 public:
  CheckpointManager(const Recipe& recipe, std::string tokenizer_dir, int64_t total_steps);
  // A periodic checkpoint is due after `step` (never after the last: final/ follows it).
  bool due(int64_t step) const;
  void save(const StudentWeights& weights, const DistributedOptimizer& optimizer, const TrainerState& state,
            Communicator& comm) const;
  // The evaluation comes before it; what a killed write left is removed after it.
  void save_final(const StudentWeights& weights, Communicator& comm) const;

 private:
  std::string output_dir_, tokenizer_dir_, dtype_;
  int64_t every_steps_ = 0, keep_last_ = 0, total_steps_ = 0;
};

// Rank 0 removes the staging folders that a killed run (or a killed process still writing when this
// one began) left under output_dir and its checkpoints.
void remove_unfinished_writes(const std::string& output_dir, const Communicator& comm);

// What a `train` start does with run.output_dir given --resume ("", "auto" or a checkpoint): a fresh
// run refuses a directory that holds checkpoints or final/ (InputError with the fix), `auto` on a
// finished run has nothing to do, and otherwise training starts (from the checkpoint, if any).
enum class RunStart { kTrain, kAlreadyFinished };
RunStart check_run_start(const std::string& output_dir, const std::string& resume);

}  // namespace lf
