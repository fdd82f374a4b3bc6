#include "train/trainer.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "core/hash.h"
#include "core/strings.h"
#include "io/file.h"
#include "train/cache_logits.h"
#include "train/trainer_parts.h"

namespace fs = std::filesystem;

namespace lf {


// The micro-batches of one step, with their on-policy completions, and the global counts that
// normalise their losses.
struct Trainer::StepBatch {
  std::vector<MicroBatch> micro;
  std::vector<std::unique_ptr<OnPolicyBatch>> completions;  // per micro-batch; null: none
  loss::GlobalCounts counts, policy_counts;
  double input_tokens = 0;
};

Trainer::Trainer(const Recipe& recipe, const TrainOptions& options, Communicator& comm)
    : recipe_(recipe), options_(options), comm_(comm), bf16_(recipe.train.precision == "bf16") {
  // The memory plan first: nothing is loaded or written for a run that cannot fit. It also places
  // the teachers. (It is logged once the data has been read: a bad data line stays a one-line error.)
  const MemoryPlan memory = plan_memory(recipe, comm.world_size(), options.local_world_size);
  check_plan_fits(memory);
  const std::string recipe_text = recipe_to_yaml(recipe);
  fs::create_directories(recipe.run.output_dir);
  remove_unfinished_writes(recipe.run.output_dir, comm);
  if (comm.is_main()) write_file_atomic((fs::path(recipe.run.output_dir) / "recipe.resolved.yaml").string(), recipe_text);
  at::manual_seed(static_cast<uint64_t>(recipe.run.seed));
  install_stop_handlers();

  // data.train's bytes, hashed once: the key of its logits caches and of a checkpoint's resume.
  const std::string data_hash = hex64(hash_file(recipe.data.train));
  participants_ = std::make_unique<Participants>(load_participants(recipe, memory, data_hash, comm));
  teachers_ = participants_->teacher_pointers();
  data_ = std::make_unique<TrainingData>(load_training_data(recipe, *participants_));
  log_plan_and_coverage(recipe, memory, *participants_, data_->train);
  alignment_ = std::make_unique<TokenAlignment>(build_token_alignment(recipe, options, *participants_));
  optimizer_ = make_optimizer(recipe, *participants_, comm);
  weights_ = std::make_unique<StudentWeights>(student_weights(recipe_, *participants_, comm));
  steps_ = std::make_unique<StepPlan>(plan_steps(recipe, data_->train, comm));

  TrainerState fresh;
  fresh.world_size = comm.world_size();
  fresh.global_micro_batch = steps_->global_micro_batch;
  fresh.recipe_hash = hex64(fnv1a64(recipe_text));
  fresh.data_hash = data_hash;
  state_ = std::make_unique<TrainerState>(resume_state(recipe, options.resume, fresh, *weights_, *optimizer_, comm));
  sampler_ = std::make_unique<Sampler>(data_->train.lengths(), steps_->sampler, state_->cursor);
  objectives_ = std::make_unique<Objectives>(make_objectives(recipe, participants_->student));
  teacher_records_ = teacher_records(*participants_, *alignment_, *objectives_);
  checkpoints_ = std::make_unique<CheckpointManager>(recipe, participants_->student.tokenizer_dir, steps_->total_steps);

  const auto& tc = recipe.train;
  spdlog::info("training {} for {} steps ({} micro-batches of {} x {} rank(s) per epoch, grad_accum {}, {} teacher(s), "
               "{}, {}, zero {})",
               recipe.student.path, steps_->total_steps, steps_->batches_per_epoch, tc.micro_batch_size, comm.world_size(),
               tc.grad_accum, participants_->teachers.size(), tc.precision, participants_->student.device.str(),
               recipe.dist.zero);
  if (objectives_->with_completions())
    spdlog::info("on-policy distillation: {:.0f}% of the distillation weight on the student's own greedy completions "
                 "(up to {} tokens each)", 100 * objectives_->on_policy, recipe.loss.on_policy.max_new_tokens);
  log_ = std::make_unique<RunLog>(recipe, comm, steps_->total_steps, state_->step);
}

Trainer::~Trainer() = default;

Trainer::StepBatch Trainer::next_step_batch() {
  StepBatch batch;
  const bool on_policy = objectives_->with_completions();
  double local_tokens = 0, local_sequences = 0, policy_tokens = 0, policy_sequences = 0;
  for (int64_t a = 0; a < recipe_.train.grad_accum; ++a) {
    const std::vector<int64_t> indices = sampler_->next();
    batch.micro.push_back(data_->train.batch(indices));
    const MicroBatch& mb = batch.micro.back();
    local_tokens += static_cast<double>(mb.student.label_tokens);
    local_sequences += static_cast<double>(mb.sequences());
    for (const auto* row : mb.student.rows) batch.input_tokens += static_cast<double>(row->length());
    if (!on_policy) continue;
    batch.completions.push_back(
        make_on_policy_batch(data_->train, indices, participants_->student, teachers_, objectives_->on_policy_options));
    if (const auto& completion = batch.completions.back()) {
      policy_tokens += static_cast<double>(completion->micro.student.label_tokens);
      policy_sequences += static_cast<double>(completion->micro.sequences());
    }
  }
  batch.counts = {comm_.all_reduce_sum(local_tokens), comm_.all_reduce_sum(local_sequences)};
  if (options_.inject_fault == "local_token_mean") batch.counts.tokens = local_tokens * comm_.world_size();
  if (on_policy) batch.policy_counts = {comm_.all_reduce_sum(policy_tokens), comm_.all_reduce_sum(policy_sequences)};
  return batch;
}

loss::LossParts Trainer::micro_batch_forward_backward(MicroBatch& mb, const loss::ObjectiveConfig& objective,
                                              const loss::GlobalCounts& counts, bool arm_overlap,
                                              const std::vector<std::unique_ptr<RemoteRowsPrefetch>>* prefetch,
                                              size_t micro) {
  const Participant& student = participants_->student;
  ShardedModel* sharded_student = participants_->sharded_student.get();
  AutocastGuard autocast(student.device.type(), bf16_);
  loss::StudentSide side{student.model->hidden_states(mb.student.input_ids.to(student.device)),
                         [&student](const at::Tensor& h) { return student.logits(h); }, &mb.student, nullptr};
  // Sharded models: every LM head is gathered once for the whole loss, whose chunk count differs
  // per rank, and the student's is reduce-scattered before the body's (collective) backward.
  const int64_t head = student.model->head_unit();
  if (sharded_student) sharded_student->gather_for_gradients(head);
  side.always_body_backward = sharded_student != nullptr;
  side.before_body_backward = [this, sharded_student, head, arm_overlap] {
    if (sharded_student) sharded_student->reduce_gradients_and_release(head);
    if (arm_overlap) optimizer_->arm_overlap();
  };
  std::vector<loss::TeacherSide> sides;
  for (size_t s = 0; s < teacher_records_.size(); ++s) {
    at::NoGradGuard no_grad;
    const TeacherRecord& t = teacher_records_[s];
    loss::TeacherSide teacher{at::Tensor(), nullptr, &mb.teachers[s], mb.pairs[s], t.vocab_map, t.projector, t.weight, nullptr};
    switch (t.rows) {
      case TeacherRecord::Rows::kCached:
        teacher.precomputed = cached_rows(*t.cache, mb, recipe_);
        break;
      case TeacherRecord::Rows::kServed:
        teacher.precomputed = prefetch && prefetch->at(s) ? prefetch->at(s)->get(micro) : remote_rows(*t.server, recipe_, mb.teachers[s]);
        break;
      case TeacherRecord::Rows::kOnline:
      case TeacherRecord::Rows::kSharded: {
        const Participant& m = *t.model;
        teacher.hidden = m.model->hidden_states(mb.teachers[s].input_ids.to(m.device));
        teacher.logits = [&m](const at::Tensor& h) { return m.logits(h); };
        if (t.sharded) t.sharded->gather(m.model->head_unit());
        break;
      }
    }
    sides.push_back(std::move(teacher));
  }
  const loss::LossParts parts = loss::backward_fusion_loss(side, sides, objective, counts);
  for (const TeacherRecord& t : teacher_records_)
    if (t.sharded) t.sharded->release(t.sharded->model().head_unit());
  return parts;
}

std::string Trainer::nonfinite_reason(const StepResult& r) {
  std::string bad;
  if (!std::isfinite(r.parts.sft)) bad = "SFT loss";
  else if (!std::isfinite(r.parts.token)) bad = "token distillation loss (" + recipe_.loss.token.type + ")";
  else if (!std::isfinite(r.parts.graph)) bad = "graph (GLD) loss";
  else if (!std::isfinite(r.policy_parts.token + r.policy_parts.graph)) bad = "on-policy distillation loss";
  else if (!std::isfinite(r.grad_norm)) bad = "gradient norm";
  if (bad.empty()) return bad;
  // Which teachers gave non-finite probabilities, on any rank (`bad` is the same on every rank).
  const uint64_t local_bad = r.parts.nonfinite_teachers | r.policy_parts.nonfinite_teachers;
  const auto& teachers = participants_->teachers;
  std::vector<std::string> named;
  for (size_t s = 0; s < teachers.size() && s < 64; ++s)
    if (comm_.all_reduce_sum((local_bad >> s) & 1 ? 1.0 : 0.0) > 0) named.push_back(teachers[s].name);
  if (!named.empty()) bad += " (non-finite logits of teacher " + join(named, ", ") + ")";
  return bad;
}

StepResult Trainer::step() {
  StepBatch batch = next_step_batch();
  const bool on_policy = objectives_->with_completions();
  StepResult r;
  r.counts = batch.counts;
  r.policy_counts = batch.policy_counts;
  r.input_tokens = batch.input_tokens;
  // Served teachers' rows for the whole step are asked now, in the background (declared after
  // `batch`, whose sequences they read, so that they stop first when a step throws).
  std::vector<std::unique_ptr<RemoteRowsPrefetch>> prefetch(teacher_records_.size());
  for (size_t s = 0; s < teacher_records_.size(); ++s) {
    if (teacher_records_[s].rows != TeacherRecord::Rows::kServed) continue;
    std::vector<const ModelBatch*> batches;
    for (const auto& mb : batch.micro) batches.push_back(&mb.teachers[s]);
    prefetch[s] = std::make_unique<RemoteRowsPrefetch>(*teacher_records_[s].server, recipe_, std::move(batches));
  }
  for (size_t a = 0; a < batch.micro.size(); ++a) {
    // The completions first: the data's last micro-batch, which every rank has, arms the
    // overlapped gradient reduction.
    if (on_policy && batch.completions[a] && r.policy_counts.tokens > 0)
      r.policy_parts += micro_batch_forward_backward(batch.completions[a]->micro, objectives_->completions, r.policy_counts, false);
    r.parts += micro_batch_forward_backward(batch.micro[a], objectives_->data, r.counts, a + 1 == batch.micro.size(), &prefetch, a);
  }
  prefetch.clear();
  for (double* term : {&r.parts.total, &r.parts.sft, &r.parts.token, &r.parts.graph}) *term = comm_.all_reduce_sum(*term);
  if (on_policy) {
    for (double* term : {&r.policy_parts.total, &r.policy_parts.token, &r.policy_parts.graph})
      *term = comm_.all_reduce_sum(*term);
    r.parts.total += r.policy_parts.total;  // its SFT weight is 0
  }
  optimizer_->reduce_gradients();
  r.grad_norm = optimizer_->grad_norm();

  // A non-finite loss or gradient never reaches the weights.
  const std::string bad = nonfinite_reason(r);
  const auto& tc = recipe_.train;
  r.lr = learning_rate(steps_->schedule, state_->step);
  if (!bad.empty()) {
    if (!tc.skip_nonfinite)
      throw RuntimeFailure("step " + std::to_string(state_->step + 1) + ": non-finite " + bad + "; no weights were written",
                           "lower train.lr, check the data, or set train.skip_nonfinite: true");
    spdlog::warn("step {}: non-finite {}; step skipped (train.skip_nonfinite)", state_->step + 1, bad);
    r.skipped = true;
  } else {
    optimizer_->step(r.lr, tc.clip_grad > 0 && r.grad_norm > tc.clip_grad ? tc.clip_grad / (r.grad_norm + 1e-6) : 1.0);
  }
  optimizer_->zero_grad();
  state_->step += 1;
  state_->cursor = sampler_->cursor();
  state_->tokens_seen += r.counts.tokens;
  return r;
}

void Trainer::log_step(const StepResult& r, double seconds) {
  const int64_t step = state_->step;
  if (step % recipe_.log.every_steps != 0 && step != steps_->total_steps && step != 1) return;
  const double all_input_tokens = comm_.all_reduce_sum(r.input_tokens);  // collective: every rank calls it
  nlohmann::json line = {{"step", step}, {"epoch", state_->cursor.epoch}, {"lr", r.lr}, {"loss", r.parts.total},
                         {"sft", r.parts.sft}, {"token", r.parts.token}, {"graph", r.parts.graph},
                         {"grad_norm", r.grad_norm}, {"tokens_per_s", all_input_tokens / seconds},
                         {"buckets_overlapped", optimizer_->buckets_overlapped()},
                         {"peak_memory_bytes", peak_memory_bytes(participants_->student.device)}, {"skipped", r.skipped}};
  if (objectives_->with_completions()) {
    line["on_policy_token"] = r.policy_parts.token;
    line["on_policy_graph"] = r.policy_parts.graph;
    line["on_policy_tokens"] = r.policy_counts.tokens;  // response tokens the student wrote this step
  }
  log_->write(line);
  log_->progress(step, r.parts.total, r.lr);
  spdlog::debug("{}", line.dump());
}

double Trainer::evaluate_and_log() {
  const double eval_loss = evaluate_student(participants_->student, data_->eval, recipe_.train.micro_batch_size, bf16_,
                                            comm_, participants_->sharded_student != nullptr);
  log_->write({{"step", state_->step}, {"eval_loss", eval_loss}, {"eval_ppl", std::exp(eval_loss)}});
  return eval_loss;
}

int Trainer::run() {
  const auto& tc = recipe_.train;
  const int64_t total = steps_->total_steps;
  while (state_->step < total) {
    const auto started = std::chrono::steady_clock::now();
    const StepResult result = step();
    log_step(result, std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    const int64_t step = state_->step;
    if (!data_->eval.empty() && tc.eval_every_steps > 0 && step % tc.eval_every_steps == 0 && step < total)
      evaluate_and_log();
    if (checkpoints_->due(step)) checkpoints_->save(*weights_, *optimizer_, *state_, comm_);
    // Ranks stop together: a signal that reached any rank stops all of them after this step.
    if (comm_.all_reduce_sum(stop_requested() ? 1.0 : 0.0) > 0) {
      const int signal = stop_requested();  // 0 on a rank that the signal did not reach
      log_->finish_progress();
      checkpoints_->save(*weights_, *optimizer_, *state_, comm_);
      spdlog::warn("stopped by signal {} after step {}; checkpoint written, continue with --resume auto", signal, step);
      return kExitPreempted;
    }
  }
  log_->finish_progress();
  write_final_model();
  return 0;
}

void Trainer::write_final_model() {
  // The evaluation, then the final model in the student's dtype and Hugging Face layout.
  if (!data_->eval.empty()) {
    const double eval_loss = evaluate_and_log();
    spdlog::info("eval loss {:.4f} (perplexity {:.3f})", eval_loss, std::exp(eval_loss));
  }
  checkpoints_->save_final(*weights_, comm_);
}

int run_training(const Recipe& recipe, const TrainOptions& options, Communicator& comm) {
  if (check_run_start(recipe.run.output_dir, options.resume) == RunStart::kAlreadyFinished) {
    spdlog::info("{}: the run has finished (final/ exists); nothing to do", recipe.run.output_dir);
    return 0;
  }
  Trainer trainer(recipe, options, comm);
  return trainer.run();
}

}  // namespace lf
