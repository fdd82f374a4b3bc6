// The parts a training run is assembled from (train/trainer.h), each built by one function from the
// recipe, in the order the Trainer builds them, so that each can be built and checked alone.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "align/span.h"
#include "align/vocab_map.h"
#include "config/recipe.h"
#include "core/device_runtime.h"
#include "core/signals.h"
#include "data/sampler.h"
#include "dist/communicator.h"
#include "io/tensorboard.h"
#include "loss/objective.h"
#include "teacher/logits_cache.h"
#include "train/checkpoint.h"
#include "train/fusion_data.h"
#include "train/memory_plan.h"
#include "train/on_policy.h"
#include "train/optimizer.h"
#include "train/participants.h"
#include "train/remote_teacher.h"
#include "train/evaluation.h"
#include "train/run_log.h"
#include "train/sharded_adamw.h"
#include "train/trainer.h"
#include "train/zero3.h"

namespace lf {

// The models: the student in float32 (master weights; bf16 precision autocasts the compute), each
// teacher in its own dtype on its own device without gradients, placed as the memory plan says
// (replicate: whole; shard: only this rank's shards, at dist.zero 3 the student too; cache: its
// config, tokenizer and template, its logits read from teachers.N.logits_cache; server: the same,
// its logits asked of teachers.N.server at every step).
struct Participants {
  Participant student;
  std::unique_ptr<ShardedModel> sharded_student;               // dist.zero 3
  std::vector<Participant> teachers;
  std::vector<std::shared_ptr<LogitsCache>> caches;            // per teacher; null: run online
  std::vector<std::unique_ptr<ShardedModel>> sharded_teachers;  // per teacher; null: whole or cached
  std::vector<std::optional<RemoteTeacher>> remote;            // per teacher: set where asked of a server
  std::vector<const Participant*> teacher_pointers() const;
};
// `data_hash`: hex64(hash_file(data.train)), the key of the logits caches.
Participants load_participants(const Recipe& recipe, const MemoryPlan& plan, const std::string& data_hash,
                               Communicator& comm);

// The data: every training example tokenized by every model and each teacher aligned to the student
// (alignment.positions), and the evaluation set tokenized by the student.
struct TrainingData {
  FusionData train;
  std::vector<TokenizedSequence> eval;
};
TrainingData load_training_data(const Recipe& recipe, const Participants& participants);
// The memory plan and each teacher's share of the student's response positions, logged once the
// data has been read (so that a bad data line stays a one-line error).
void log_plan_and_coverage(const Recipe& recipe, const MemoryPlan& plan, const Participants& participants,
                           const FusionData& data);

// Vocabulary maps for the KL family of token losses; span alignment projects through the student's
// tokenizer, with the exact map for whole tokens.
struct TokenAlignment {
  bool kl_family = false;
  std::vector<VocabMap> vocab_maps;                        // per teacher (empty maps without kl_family)
  std::vector<std::unique_ptr<SpanProjector>> projectors;  // per teacher; null without span
};
TokenAlignment build_token_alignment(const Recipe& recipe, const TrainOptions& options, const Participants& participants);

// The optimizer: each rank sees micro_batch_size examples of every global micro-batch; it reduces the
// gradients over ranks and shards its state (sharded_adamw.h; zero3.h at dist.zero 3).
std::unique_ptr<DistributedOptimizer> make_optimizer(const Recipe& recipe, Participants& participants, Communicator& comm);
// How checkpoints and final/ save and load the student: whole, gathered unit by unit at ZeRO-3, or
// its LoRA adapters alone. It refers to `participants`, which must outlive it.
StudentWeights student_weights(const Recipe& recipe, Participants& participants, Communicator& comm);

// Steps, the schedule and how the sampler cuts the data.
struct StepPlan {
  SamplerConfig sampler;
  int64_t batches_per_epoch = 0, total_steps = 0, global_micro_batch = 0;
  ScheduleConfig schedule;
};
StepPlan plan_steps(const Recipe& recipe, const FusionData& data, const Communicator& comm);

// The state to start from: fresh, or a checkpoint's (`resume`: "" fresh, "auto" the newest complete
// checkpoint that loads on every rank, else a checkpoint directory), loaded into `weights` and
// `optimizer`. InputError when the checkpoint was written for another global micro-batch or data file.
TrainerState resume_state(const Recipe& recipe, const std::string& resume, const TrainerState& fresh,
                          const StudentWeights& weights, DistributedOptimizer& optimizer, Communicator& comm);

// What a step minimises. On-policy distillation splits the distillation weight λ: λ·(1 − ρ) on the
// data's responses (whose SFT weight stays 1 − λ), λ·ρ on the student's own completions (no SFT term).
struct Objectives {
  loss::ObjectiveConfig data, completions;
  double on_policy = 0;  // ρ where the run distils (effective_on_policy_weight), else 0
  // Whether steps also distil on the student's own completions (ρ > 0).
  bool with_completions() const { return on_policy > 0; }
  OnPolicyOptions on_policy_options;
  std::vector<double> mix_weights;  // per teacher: uniform or normalised `weights` (min_ce re-weights later)
};
Objectives make_objectives(const Recipe& recipe, const Participant& student);

// One teacher as a step reads it, built once from the parts above: where its rows come from, how it is
// aligned to the student, and its mixing weight.
struct TeacherRecord {
  enum class Rows {
    kOnline,   // its forward pass here, whole
    kSharded,  // its forward pass here, its weights sharded over the ranks (its LM head gathered for the loss)
    kCached,   // its top-k rows read from its logits cache
    kServed,   // its top-k rows asked of a server
  };
  Rows rows = Rows::kOnline;
  const Participant* model = nullptr;        // tokenizer and template always; weights when online or sharded
  ShardedModel* sharded = nullptr;           // kSharded
  const LogitsCache* cache = nullptr;        // kCached
  const RemoteTeacher* server = nullptr;     // kServed
  const VocabMap* vocab_map = nullptr;       // the KL family's vocabulary map; null otherwise
  const SpanProjector* projector = nullptr;  // span alignment; null otherwise
  double weight = 1.0;                       // normalised mixing weight (min_ce re-weights per sequence)
};
std::vector<TeacherRecord> teacher_records(const Participants& participants, const TokenAlignment& alignment,
                                           const Objectives& objectives);

}  // namespace lf
