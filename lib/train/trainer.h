// `logitfuse train`: the fusion training run. A Trainer is built from the recipe out of the parts in
// train/trainer_parts.h (participants, data, token alignment, optimizer, resume state, objectives,
// logs); step() is one optimizer step, run() the loop around it with logging, evaluation,
// checkpoints and stop signals.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "config/recipe.h"
#include "dist/communicator.h"
#include "loss/objective.h"

namespace lf {

struct TrainOptions {
  std::string resume;           // "" (fresh run), "auto" (newest complete checkpoint) or a checkpoint directory
  std::string vocab_cache_dir;  // where vocabulary maps are cached when the recipe names no cache_dir
  int64_t local_world_size = 1; // ranks on this node, for the memory plan
  // A test seam, set only by the tests (LOGITFUSE_INJECT_FAULT, read once by `train`): a known-wrong
  // behaviour that a test must catch. "local_token_mean": each rank normalises its gradient by its
  // own response tokens (times the world size) instead of the global count, so the step averages the
  // ranks' means, the classic data-parallel error. Empty: none.
  std::string inject_fault;
};

// What one optimizer step did: the loss parts (summed over ranks), the token counts that normalised
// them, the gradient norm before clipping, the learning rate, and whether a non-finite loss or
// gradient made it skip the update (train.skip_nonfinite).
struct StepResult {
  loss::LossParts parts, policy_parts;
  loss::GlobalCounts counts, policy_counts;
  double grad_norm = 0, lr = 0;
  double input_tokens = 0;  // this rank's input tokens (the log reduces them)
  bool skipped = false;
};

struct Participant;
struct Participants;
struct TrainingData;
struct TokenAlignment;
struct StepPlan;
struct Objectives;
struct TeacherRecord;
class CheckpointManager;
struct StudentWeights;
class RemoteRowsPrefetch;
struct TrainerState;
struct MicroBatch;
class DistributedOptimizer;
class Sampler;
class RunLog;

class Trainer {
 public:
  // Builds every part (resuming from options.resume, checked by check_run_start). Writes
  // recipe.resolved.yaml.
  Trainer(const Recipe& recipe, const TrainOptions& options, Communicator& comm);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // The loop to the last step, then the final evaluation and final/. Returns 0, or kExitPreempted
  // when a signal stopped it after a checkpoint.
  int run();
  // One optimizer step over grad_accum micro-batches (with their on-policy completions).
  StepResult step();

 private:
  struct StepBatch;
  StepBatch next_step_batch();
  // One micro-batch's forward and backward: the student's hidden states, each teacher's (or its
  // cached rows), the objective.
  // `prefetch` (per teacher, null where not served): the step's served rows asked ahead, of which
  // this is micro-batch `micro`; without it (on-policy completions) they are asked now.
  loss::LossParts micro_batch_forward_backward(MicroBatch& mb, const loss::ObjectiveConfig& objective,
                                       const loss::GlobalCounts& counts, bool arm_overlap,
                                       const std::vector<std::unique_ptr<RemoteRowsPrefetch>>* prefetch = nullptr,
                                       size_t micro = 0);
  // Why the step must not reach the weights (a non-finite loss term or gradient, naming the teachers
  // whose logits were non-finite on any rank), or "". Collective.
  std::string nonfinite_reason(const StepResult& result);
  void log_step(const StepResult& result, double seconds);
  // The student's loss on data.eval, logged as an evaluation line of the current step.
  double evaluate_and_log();
  void write_final_model();

  const Recipe& recipe_;
  TrainOptions options_;
  Communicator& comm_;
  bool bf16_ = false;
  std::unique_ptr<Participants> participants_;
  std::vector<const Participant*> teachers_;  // participants_->teachers, as the data and on-policy code take them
  std::vector<TeacherRecord> teacher_records_;  // per teacher: its rows' source, alignment and weight
  std::unique_ptr<CheckpointManager> checkpoints_;
  std::unique_ptr<TrainingData> data_;
  std::unique_ptr<TokenAlignment> alignment_;
  std::unique_ptr<DistributedOptimizer> optimizer_;
  std::unique_ptr<StudentWeights> weights_;
  std::unique_ptr<StepPlan> steps_;
  std::unique_ptr<TrainerState> state_;
  std::unique_ptr<Sampler> sampler_;
  std::unique_ptr<Objectives> objectives_;
  std::unique_ptr<RunLog> log_;
};

// Runs the recipe. Returns 0 when finished (final/ written) or kExitPreempted when a signal stopped
// it after a checkpoint. Errors are thrown as lf::Error.
int run_training(const Recipe& recipe, const TrainOptions& options, Communicator& comm);

}  // namespace lf
