#include "train/trainer_parts.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "align/positions.h"
#include "core/error.h"
#include "core/strings.h"
#include "decode/session.h"
#include "loss/token.h"
#include "model/checkpoint.h"
#include "model/model_config.h"
#include "train/cache_logits.h"
#include "train/lora_student.h"

namespace fs = std::filesystem;

namespace lf {

namespace {

// A model whose parameters are never whole on one rank: built with its parameters in untouched host
// memory, then sharded and filled slice by slice from `dir`.
std::unique_ptr<ShardedModel> load_sharded(Participant& p, const std::string& dir, c10::ScalarType dtype,
                                           Communicator& comm, bool trainable) {
  p.model = std::make_shared<CausalLM>(load_model_config(dir), at::TensorOptions().dtype(dtype).device(p.device),
                                       at::TensorOptions().dtype(dtype));
  auto sharded = std::make_unique<ShardedModel>(*p.model, comm, trainable);
  sharded->load(dir);
  return sharded;
}

// teachers.s as the plan places it: replicate (whole), shard, or cache (no weights).
void load_teacher(const Recipe& recipe, size_t s, Placement placement, const std::string& data_hash,
                  Communicator& comm, Participants& parts) {
  const auto& t = recipe.teachers[s];
  const std::string teacher_device = t.device == "auto" ? parts.student.device.str() : t.device;
  parts.teachers.push_back(load_participant(t.name, t.path, t.tokenizer, t.chat_template, t.dtype, teacher_device,
                                            recipe.chat_templates, /*load_weights=*/placement == Placement::kReplicate,
                                            t.chat_template_kwargs, t.adapter.value_or("")));
  Participant& teacher = parts.teachers.back();
  if (placement == Placement::kShard && t.adapter)
    throw NotAvailable("teachers." + std::to_string(s) + ": a sharded teacher (the memory plan's placement) with an adapter");
  if (placement == Placement::kCache) {
    parts.caches.push_back(LogitsCache::open(*t.logits_cache, expected_cache_spec(recipe, s, teacher, data_hash)));
    spdlog::info("teacher {}: reading cached logits from {}", t.name, *t.logits_cache);
    return;
  }
  parts.caches.push_back(nullptr);
  if (placement == Placement::kServer) {
    parts.remote[s] = connect_remote_teacher(recipe, s);
    spdlog::info("teacher {}: reading top-k logprobs at every step from {} (model '{}')", t.name, t.server->url, t.server->model);
    return;
  }
  if (placement == Placement::kShard) {
    if (teacher.device != parts.student.device)
      throw InputError("teachers." + std::to_string(s) + ".placement: 'shard' gathers over the student's communicator",
                       "leave teachers." + std::to_string(s) + ".device at auto (the student's device)");
    parts.sharded_teachers[s] = load_sharded(teacher, t.path, parse_dtype(t.dtype, "teachers.N.dtype"), comm, false);
    spdlog::info("teacher {}: sharded over {} rank(s), {} on this rank", t.name, comm.world_size(),
                 format_bytes(parts.sharded_teachers[s]->shard_bytes()));
  }
  teacher.model->eval();
  for (auto& p : teacher.model->parameters()) p.set_requires_grad(false);
}

// The plan's placements as words, for the log.
std::string placement_list(const MemoryPlan& plan) {
  std::vector<std::string> words;
  for (Placement p : plan.placements) words.push_back(placement_name(p));
  return join(words, ", ");
}

}  // namespace

std::vector<const Participant*> Participants::teacher_pointers() const {
  std::vector<const Participant*> out;
  for (const auto& t : teachers) out.push_back(&t);
  return out;
}

Participants load_participants(const Recipe& recipe, const MemoryPlan& plan, const std::string& data_hash,
                               Communicator& comm) {
  const bool zero3 = recipe.dist.zero == 3;
  const std::vector<Placement>& placements = plan.placements;
  if (effective_on_policy_weight(recipe) > 0 && (zero3 || std::count(placements.begin(), placements.end(), Placement::kShard)))
    throw NotAvailable("on-policy distillation with a sharded student or teacher (dist.zero=3, teachers.N.placement=shard): "
                       "each rank generates a different number of tokens, which sharded forwards cannot follow");
  Participants parts;
  // Full training keeps float32 master weights; a LoRA student's base is frozen in student.dtype.
  const bool lora = trains_adapters(recipe);
  parts.student = load_participant("student", recipe.student.path, recipe.student.tokenizer, recipe.student.chat_template,
                                   lora ? recipe.student.dtype : "fp32", recipe.run.device, recipe.chat_templates,
                                   /*load_weights=*/!zero3, recipe.student.chat_template_kwargs);
  if (lora) attach_student_adapters(parts.student, recipe);
  if (zero3) {
    parts.sharded_student = load_sharded(parts.student, recipe.student.path, at::kFloat, comm, /*trainable=*/true);
    spdlog::info("student sharded over {} rank(s) (ZeRO-3): {} of parameters and gradients on this rank",
                 comm.world_size(), format_bytes(parts.sharded_student->shard_bytes()));
  }
  parts.sharded_teachers.resize(recipe.teachers.size());
  parts.remote.resize(recipe.teachers.size());
  for (size_t s = 0; s < recipe.teachers.size(); ++s) load_teacher(recipe, s, placements[s], data_hash, comm, parts);
  parts.student.model->set_activation_checkpointing(recipe.train.activation_checkpointing);
  parts.student.model->train();
  return parts;
}

TrainingData load_training_data(const Recipe& recipe, const Participants& participants) {
  const Truncation truncation = recipe_truncation(recipe);
  const ExampleSet train_set = read_examples(recipe.data.train, recipe.data.skip_invalid);
  TrainingData data{FusionData(train_set, participants.student, participants.teacher_pointers(), truncation,
                               parse_position_method(recipe.alignment.positions), recipe.data.skip_invalid),
                    {}};
  if (recipe.data.eval)
    for (const auto& ex : read_examples(*recipe.data.eval, recipe.data.skip_invalid).examples)
      data.eval.push_back(tokenize_example(ex, *participants.student.tokenizer, participants.student.chat_template,
                                           truncation));
  return data;
}

void log_plan_and_coverage(const Recipe& recipe, const MemoryPlan& plan, const Participants& participants,
                           const FusionData& data) {
  for (const auto& line : split(format_plan(plan), '\n'))
    if (!line.empty()) spdlog::debug("{}", line);
  const MemoryItem& biggest = plan.biggest();
  spdlog::info("memory plan per rank ({} rank(s), dist.zero {}): {}{}; biggest item: {} ({}); teachers: {}", plan.world_size,
               plan.zero, format_bytes(plan.total()),
               plan.limit > 0 ? " of " + format_bytes(plan.limit) + " (" + plan.limit_source + ")" : std::string(),
               biggest.name, format_bytes(biggest.bytes), placement_list(plan));
  for (size_t s = 0; s < participants.teachers.size(); ++s) {
    const auto c = data.coverage(s);
    spdlog::info("alignment ({}): teacher {} pairs {} of the student's {} response positions ({:.1f}%)",
                 recipe.alignment.positions, participants.teachers[s].name, c.paired, c.positions,
                 c.positions ? 100.0 * static_cast<double>(c.paired) / static_cast<double>(c.positions) : 0.0);
  }
}

TokenAlignment build_token_alignment(const Recipe& recipe, const TrainOptions& options, const Participants& participants) {
  const auto& teachers = participants.teachers;
  const Tokenizer& student = *participants.student.tokenizer;
  TokenAlignment out;
  out.vocab_maps.resize(teachers.size());
  out.projectors.resize(teachers.size());
  out.kl_family = loss::is_kl_family(loss::parse_token_loss(recipe.loss.token.type));
  if (!out.kl_family) return out;
  const bool span = parse_position_method(recipe.alignment.positions) == PositionMethod::kSpan;
  for (size_t s = 0; s < teachers.size(); ++s) {
    const Tokenizer& teacher = *teachers[s].tokenizer;
    VocabMap& map = out.vocab_maps[s];
    map = load_or_build_vocab_map(teacher, student, span ? "exact" : recipe.alignment.vocab,
                                  recipe.alignment.cache_dir.value_or(options.vocab_cache_dir));
    spdlog::info("vocabulary map {} -> student: {} exact, {} mined of {}{}", teachers[s].name, map.exact, map.mined,
                 map.to_student.size(),
                 span ? " (span alignment: the rest through the student's tokenizer; alignment.vocab unused)" : "");
    if (!span) continue;
    out.projectors[s] = std::make_unique<SpanProjector>(student, teacher, map);
    if (!recipe.loss.token.top_k && teacher.vocab_size() > 32768)
      spdlog::warn("alignment.positions=span without loss.token.top_k projects all {} entries of teacher {}'s "
                   "distribution per position on the CPU; set loss.token.top_k (e.g. 20)",
                   teacher.vocab_size(), teachers[s].name);
  }
  return out;
}

std::unique_ptr<DistributedOptimizer> make_optimizer(const Recipe& recipe, Participants& participants, Communicator& comm) {
  const auto& tc = recipe.train;
  const AdamWConfig adamw{tc.adam_beta1, tc.adam_beta2, tc.adam_eps, tc.weight_decay};
  if (participants.sharded_student) return std::make_unique<Zero3AdamW>(*participants.sharded_student, adamw);
  // A LoRA student trains its adapters alone: only they have gradients to reduce and optimizer state.
  const bool lora = has_lora(*participants.student.model);
  std::vector<std::pair<std::string, at::Tensor>> params;
  if (lora) params = lora_tensors(*participants.student.model);
  else
    for (auto& item : participants.student.model->named_parameters()) params.emplace_back(item.key(), item.value());
  const ShardingConfig sharding{recipe.dist.zero, static_cast<int64_t>(recipe.dist.bucket_mb * (1 << 20) / 4)};
  auto flat = std::make_unique<ShardedAdamW>(params, adamw, sharding, comm);
  // An untied LM head has its final gradient before the transformer's backward starts.
  if (recipe.dist.overlap && !lora) flat->enable_overlap({"lm_head.weight"});
  return flat;
}

StudentWeights student_weights(const Recipe& recipe, Participants& participants, Communicator& comm) {
  if (trains_adapters(recipe)) return lora_student_weights(participants.student, recipe, comm);
  ShardedModel* sharded = participants.sharded_student.get();
  if (!sharded) return whole_student(*participants.student.model, comm);
  return {[sharded, &comm](const std::string& dir, const SaveOptions& save) { sharded->save(dir, save, comm.is_main()); },
          [sharded](const std::string& dir) { sharded->load(dir); }};
}

StepPlan plan_steps(const Recipe& recipe, const FusionData& data, const Communicator& comm) {
  const auto& tc = recipe.train;
  StepPlan plan;
  plan.sampler = SamplerConfig{tc.micro_batch_size, recipe.run.seed, comm.rank(), comm.world_size()};
  plan.batches_per_epoch = Sampler(data.lengths(), plan.sampler).batches_per_epoch();
  const int64_t steps_per_epoch = std::max<int64_t>(1, plan.batches_per_epoch / tc.grad_accum);
  plan.total_steps = tc.max_steps ? *tc.max_steps : tc.epochs * steps_per_epoch;
  plan.schedule = {tc.schedule, tc.lr, static_cast<int64_t>(std::ceil(tc.warmup_ratio * plan.total_steps)), plan.total_steps};
  plan.global_micro_batch = tc.micro_batch_size * comm.world_size();
  return plan;
}

namespace {

// The newest complete checkpoint that loads on every rank (one that fails on any rank is skipped by
// all, and what it half-loaded undone); `fresh` when none does.
TrainerState newest_loadable_checkpoint(const Recipe& recipe, const TrainerState& fresh, const StudentWeights& weights,
                                        DistributedOptimizer& optimizer, Communicator& comm) {
  for (const auto& dir : complete_checkpoints(recipe.run.output_dir)) {
    std::string failure;
    TrainerState state = fresh;
    try {
      state = read_checkpoint(dir, weights, optimizer);
    } catch (const Error& e) {
      failure = e.one_line();
    }
    if (comm.all_reduce_sum(failure.empty() ? 0.0 : 1.0) == 0) {
      spdlog::info("resuming from {} (step {})", dir, state.step);
      return state;
    }
    spdlog::warn("skipping checkpoint {}: {}", dir, failure.empty() ? "it failed to load on another rank" : failure);
    weights.load(recipe.student.path);  // undo a partial load
    optimizer.reset_state();
  }
  return fresh;
}

}  // namespace

TrainerState resume_state(const Recipe& recipe, const std::string& resume, const TrainerState& fresh,
                          const StudentWeights& weights, DistributedOptimizer& optimizer, Communicator& comm) {
  TrainerState state = fresh;
  if (resume == "auto") {
    state = newest_loadable_checkpoint(recipe, fresh, weights, optimizer, comm);
  } else if (!resume.empty()) {
    state = read_checkpoint(resume, weights, optimizer);
    spdlog::info("resuming from {} (step {})", resume, state.step);
  }
  // The data cursor counts global micro-batches: it means the same thing only for the same global
  // micro-batch. The optimizer state itself reshards to any world size.
  const int64_t global = fresh.global_micro_batch;
  const int64_t saved_global = state.global_micro_batch > 0 ? state.global_micro_batch : global;
  if (saved_global != global)
    throw InputError("the checkpoint was written with a global micro-batch of " + std::to_string(saved_global) +
                         " (micro_batch_size x ranks), this run has " + std::to_string(recipe.train.micro_batch_size) +
                         " x " + std::to_string(comm.world_size()),
                     "set train.micro_batch_size so that micro_batch_size x ranks = " + std::to_string(saved_global));
  // The data cursor indexes the examples of the file as it was: an edited file would resume on other
  // examples in another order, silently.
  if (!state.data_hash.empty() && state.data_hash != fresh.data_hash)
    throw InputError(recipe.data.train + ": data.train changed since the checkpoint of step " +
                         std::to_string(state.step) + " was written (its resume position would point at other examples)",
                     "restore the file as it was, or start a new run in another run.output_dir");
  state.data_hash = fresh.data_hash;
  state.world_size = comm.world_size();
  state.global_micro_batch = global;
  return state;
}

namespace {

loss::ObjectiveConfig objective_config(const Recipe& r) {
  loss::ObjectiveConfig c;
  c.distill_weight = r.loss.distill_weight;
  // The recipe's words become the loss's enums here, once (the recipe validated them).
  c.teacher_mix = loss::parse_teacher_mix(r.loss.teacher_mix);
  c.token = {loss::parse_token_loss(r.loss.token.type), r.loss.token.top_k, r.loss.token.temperature, r.loss.token.beta};
  c.graph = r.loss.graph.type == "gld";
  c.graph_weight = r.loss.graph.weight;
  c.graph_top_k = r.loss.graph.top_k;
  c.graph_temperature = r.loss.graph.temperature;
  c.graph_nodes = loss::parse_graph_nodes(r.loss.graph.nodes);
  c.graph_solver = loss::parse_graph_solver(r.loss.graph.solver);
  c.gld = {r.loss.graph.feature, r.loss.graph.normalize_features, r.loss.graph.p};
  c.entropic.epsilon = r.loss.graph.epsilon;
  c.chunk_rows = r.train.logit_chunk_size;
  return c;
}

}  // namespace

Objectives make_objectives(const Recipe& recipe, const Participant& student) {
  Objectives out;
  out.data = objective_config(recipe);
  out.on_policy = effective_on_policy_weight(recipe);
  out.completions = out.data;
  const double lambda = recipe.loss.distill_weight;
  if (out.on_policy > 0) {
    out.data.sft_weight = 1.0 - lambda;
    out.data.distill_weight = lambda * (1.0 - out.on_policy);
    out.completions.sft_weight = 0.0;
    out.completions.distill_weight = lambda * out.on_policy;
  }
  out.on_policy_options = {recipe.loss.on_policy.max_new_tokens, recipe_truncation(recipe),
                           parse_position_method(recipe.alignment.positions),
                           stop_token_ids(*student.tokenizer, student.chat_template)};
  const size_t n = recipe.teachers.size();
  out.mix_weights.assign(n, 1.0 / std::max<size_t>(1, n));
  if (recipe.loss.teacher_mix == "weights") {
    double total = 0;
    for (const auto& t : recipe.teachers) total += t.weight;
    for (size_t s = 0; s < n; ++s) out.mix_weights[s] = recipe.teachers[s].weight / total;
  }
  return out;
}

std::vector<TeacherRecord> teacher_records(const Participants& participants, const TokenAlignment& alignment,
                                           const Objectives& objectives) {
  std::vector<TeacherRecord> out(participants.teachers.size());
  for (size_t s = 0; s < out.size(); ++s) {
    TeacherRecord& t = out[s];
    t.model = &participants.teachers[s];
    t.sharded = participants.sharded_teachers[s].get();
    t.cache = participants.caches[s].get();
    t.server = participants.remote[s] ? &*participants.remote[s] : nullptr;
    t.rows = t.cache    ? TeacherRecord::Rows::kCached
             : t.server ? TeacherRecord::Rows::kServed
             : t.sharded ? TeacherRecord::Rows::kSharded
                         : TeacherRecord::Rows::kOnline;
    t.vocab_map = alignment.kl_family ? &alignment.vocab_maps[s] : nullptr;
    t.projector = alignment.projectors[s].get();
    t.weight = objectives.mix_weights[s];
  }
  return out;
}

}  // namespace lf
