#include "train/trainer.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <optional>

#include "align/span.h"
#include "align/vocab_map.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/strings.h"
#include "decode/session.h"
#include "io/file.h"
#include "io/tensorboard.h"
#include "loss/objective.h"
#include "model/checkpoint.h"
#include "model/model_config.h"
#include "train/cache_logits.h"
#include "train/checkpoint.h"
#include "train/fusion_data.h"
#include "train/on_policy.h"
#include "train/optimizer.h"
#include "train/sharded_adamw.h"
#include "train/memory_plan.h"
#include "train/run_support.h"
#include "train/zero3.h"

namespace fs = std::filesystem;

namespace lf {

namespace {

loss::ObjectiveConfig objective_config(const Recipe& r) {
  loss::ObjectiveConfig c;
  c.distill_weight = r.loss.distill_weight;
  c.teacher_mix = r.loss.teacher_mix;
  c.token = {r.loss.token.type, r.loss.token.top_k, r.loss.token.temperature, r.loss.token.beta};
  c.graph = r.loss.graph.type == "gld";
  c.graph_weight = r.loss.graph.weight;
  c.graph_top_k = r.loss.graph.top_k;
  c.graph_temperature = r.loss.graph.temperature;
  c.graph_nodes = r.loss.graph.nodes;
  c.graph_solver = r.loss.graph.solver;
  c.gld = {r.loss.graph.feature, r.loss.graph.normalize_features, r.loss.graph.p};
  c.entropic.epsilon = r.loss.graph.epsilon;
  c.chunk_rows = r.train.logit_chunk_size;
  return c;
}

// Token-mean cross entropy of the student on an evaluation set; each rank takes every world_size-th
// example and the sums are reduced. `lockstep` (a sharded student, whose forward is collective): every
// rank runs as many batches as rank 0, one with no examples left repeating the first and counting nothing.
double evaluate(const Participant& student, const std::vector<TokenizedSequence>& eval, int64_t batch_size, bool bf16,
                Communicator& comm, bool lockstep) {
  at::NoGradGuard no_grad;
  student.model->eval();
  std::vector<const TokenizedSequence*> mine;
  for (size_t i = static_cast<size_t>(comm.rank()); i < eval.size(); i += static_cast<size_t>(comm.world_size()))
    mine.push_back(&eval[i]);
  const size_t most = (eval.size() + comm.world_size() - 1) / comm.world_size();
  const size_t batches = ((lockstep ? most : mine.size()) + batch_size - 1) / batch_size;
  double loss_sum = 0, tokens = 0;
  for (size_t i = 0; i < batches; ++i) {
    const size_t start = std::min(mine.size(), i * batch_size);
    std::vector<const TokenizedSequence*> rows(mine.begin() + start, mine.begin() + std::min(mine.size(), start + batch_size));
    const bool idle = rows.empty();
    if (idle) rows.push_back(&eval.front());
    ModelBatch batch = collate(rows, student.pad_id());
    AutocastGuard autocast(student.device.type(), bf16);
    at::Tensor hidden = student.model->hidden_states(batch.input_ids.to(student.device));
    at::Tensor labels = batch.labels.to(student.device);
    at::Tensor where = (labels != kIgnoreIndex).nonzero();
    at::Tensor logits = student.logits(hidden.index({where.select(1, 0), where.select(1, 1)}));
    if (idle) continue;
    loss_sum += at::cross_entropy_loss(logits.to(at::kFloat), labels.index({where.select(1, 0), where.select(1, 1)}),
                                       {}, at::Reduction::Sum).item<double>();
    tokens += static_cast<double>(where.size(0));
  }
  student.model->train();
  return comm.all_reduce_sum(loss_sum) / std::max(1.0, comm.all_reduce_sum(tokens));
}

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

std::string resolve_resume(const Recipe& recipe, const TrainOptions& options) {
  const bool has_checkpoints = !complete_checkpoints(recipe.run.output_dir).empty();
  const bool finished = fs::exists(fs::path(recipe.run.output_dir) / "final" / "config.json");
  if (options.resume.empty() && (has_checkpoints || finished))
    throw InputError(recipe.run.output_dir + ": already holds " + (finished ? "a finished run" : "checkpoints of a run"),
                     "continue it with --resume auto, or choose another run.output_dir");
  return options.resume;
}

}  // namespace

int run_training(const Recipe& recipe, const TrainOptions& options, Communicator& comm) {
  const auto& tc = recipe.train;
  const std::string resume = resolve_resume(recipe, options);
  if (resume == "auto" && fs::exists(fs::path(recipe.run.output_dir) / "final" / "config.json")) {
    spdlog::info("{}: the run has finished (final/ exists); nothing to do", recipe.run.output_dir);
    return 0;
  }
  // The memory plan first: nothing is loaded or written for a run that cannot fit. It also places
  // the teachers.
  // (It is logged once the data has been read: a bad data line stays a one-line error.)
  const MemoryPlan plan = plan_memory(recipe, comm.world_size(), options.local_world_size);
  check_plan_fits(plan);
  const std::string recipe_text = recipe_to_yaml(recipe);
  fs::create_directories(recipe.run.output_dir);
  // A run killed while writing a checkpoint or final/ leaves its staging directory behind; so may one
  // whose killed process was still writing when this one began (hence again at the end).
  auto remove_unfinished_writes = [&] {
    if (!comm.is_main()) return;
    const int stale = remove_stale_staging(recipe.run.output_dir) +
                      remove_stale_staging((fs::path(recipe.run.output_dir) / "checkpoints").string());
    if (stale > 0) spdlog::warn("removed {} unfinished write(s) of a killed run from {}", stale, recipe.run.output_dir);
  };
  remove_unfinished_writes();
  if (comm.is_main()) write_file_atomic((fs::path(recipe.run.output_dir) / "recipe.resolved.yaml").string(), recipe_text);
  at::manual_seed(static_cast<uint64_t>(recipe.run.seed));
  install_stop_handlers();

  // 1. The models: the student in float32 (master weights; bf16 precision autocasts the compute),
  //    each teacher in its own dtype on its own device, without gradients. At dist.zero 3 the student,
  //    and every teacher placed `shard`, keeps only its shards (train/zero3.h); the rest is replicated.
  const std::string device = recipe.run.device;
  const bool zero3 = recipe.dist.zero == 3;
  const std::vector<std::string>& placements = plan.placements;
  if (effective_on_policy_weight(recipe) > 0 && (zero3 || std::count(placements.begin(), placements.end(), "shard")))
    throw NotAvailable("on-policy distillation with a sharded student or teacher (dist.zero=3, teachers.N.placement=shard): "
                       "each rank generates a different number of tokens, which sharded forwards cannot follow");
  Participant student = load_participant("student", recipe.student.path, recipe.student.tokenizer,
                                         recipe.student.chat_template, "fp32", device, recipe.chat_templates,
                                         /*load_weights=*/!zero3, recipe.student.chat_template_kwargs);
  std::unique_ptr<ShardedModel> sharded_student;
  if (zero3) {
    sharded_student = load_sharded(student, recipe.student.path, at::kFloat, comm, /*trainable=*/true);
    spdlog::info("student sharded over {} rank(s) (ZeRO-3): {} of parameters and gradients on this rank", comm.world_size(),
                 format_bytes(sharded_student->shard_bytes()));
  }
  // data.train's bytes, hashed once: the key of its logits caches and of a checkpoint's resume.
  const std::string data_hash = hex64(hash_file(recipe.data.train));
  std::vector<Participant> teachers;
  std::vector<std::shared_ptr<LogitsCache>> caches;  // per teacher; null for an online one
  std::vector<std::unique_ptr<ShardedModel>> sharded_teachers(recipe.teachers.size());
  for (size_t s = 0; s < recipe.teachers.size(); ++s) {
    const auto& t = recipe.teachers[s];
    const std::string teacher_device = t.device == "auto" ? student.device.str() : t.device;
    teachers.push_back(load_participant(t.name, t.path, t.tokenizer, t.chat_template, t.dtype, teacher_device,
                                        recipe.chat_templates, /*load_weights=*/placements[s] == "replicate",
                                        t.chat_template_kwargs));
    if (placements[s] == "cache") {
      caches.push_back(LogitsCache::open(*t.logits_cache, expected_cache_spec(recipe, s, teachers.back(), data_hash)));
      spdlog::info("teacher {}: reading cached logits from {}", t.name, *t.logits_cache);
      continue;
    }
    caches.push_back(nullptr);
    if (placements[s] == "shard") {
      if (teachers.back().device != student.device)
        throw InputError("teachers." + std::to_string(s) + ".placement: 'shard' gathers over the student's communicator",
                         "leave teachers." + std::to_string(s) + ".device at auto (the student's device)");
      sharded_teachers[s] = load_sharded(teachers.back(), t.path, parse_dtype(t.dtype, "teachers.N.dtype"), comm, false);
      spdlog::info("teacher {}: sharded over {} rank(s), {} on this rank", t.name, comm.world_size(),
                   format_bytes(sharded_teachers[s]->shard_bytes()));
    }
    teachers.back().model->eval();
    for (auto& p : teachers.back().model->parameters()) p.set_requires_grad(false);
  }
  student.model->set_activation_checkpointing(tc.activation_checkpointing);
  const bool bf16 = tc.precision == "bf16";
  student.model->train();

  // 2. The data: every example tokenized by every model, teachers aligned to the student.
  std::vector<const Participant*> teacher_ptrs;
  for (const auto& t : teachers) teacher_ptrs.push_back(&t);
  const Truncation truncation{recipe.data.max_length, recipe.data.max_prompt_length};
  const ExampleSet train_set = read_examples(recipe.data.train, recipe.data.skip_invalid);
  FusionData data(train_set, student, teacher_ptrs, truncation, recipe.alignment.positions, recipe.data.skip_invalid);
  std::vector<TokenizedSequence> eval_set;
  if (recipe.data.eval)
    for (const auto& ex : read_examples(*recipe.data.eval, recipe.data.skip_invalid).examples)
      eval_set.push_back(tokenize_example(ex, *student.tokenizer, student.chat_template, truncation));
  for (const auto& line : split(format_plan(plan), '\n'))
    if (!line.empty()) spdlog::debug("{}", line);
  const MemoryItem& biggest = plan.biggest();
  spdlog::info("memory plan per rank ({} rank(s), dist.zero {}): {}{}; biggest item: {} ({}); teachers: {}", plan.world_size,
               plan.zero, format_bytes(plan.total()),
               plan.limit > 0 ? " of " + format_bytes(plan.limit) + " (" + plan.limit_source + ")" : std::string(),
               biggest.name, format_bytes(biggest.bytes), join(plan.placements, ", "));
  for (size_t s = 0; s < teachers.size(); ++s) {
    const auto c = data.coverage(s);
    spdlog::info("alignment ({}): teacher {} pairs {} of the student's {} response positions ({:.1f}%)",
                 recipe.alignment.positions, teachers[s].name, c.paired, c.positions,
                 c.positions ? 100.0 * static_cast<double>(c.paired) / static_cast<double>(c.positions) : 0.0);
  }

  // 3. Vocabulary maps for the KL family of token losses.
  //    Span alignment projects through the student's tokenizer, with the exact map for whole tokens.
  std::vector<VocabMap> vocab_maps(teachers.size());
  std::vector<std::unique_ptr<SpanProjector>> projectors(teachers.size());
  const bool kl_family = recipe.loss.token.type == "kl" || recipe.loss.token.type == "rkl" || recipe.loss.token.type == "jsd";
  const bool span = kl_family && recipe.alignment.positions == "span";
  if (kl_family)
    for (size_t s = 0; s < teachers.size(); ++s) {
      vocab_maps[s] = load_or_build_vocab_map(*teachers[s].tokenizer, *student.tokenizer, span ? "exact" : recipe.alignment.vocab,
                                              recipe.alignment.cache_dir.value_or(options.vocab_cache_dir));
      spdlog::info("vocabulary map {} -> student: {} exact, {} mined of {}{}", teachers[s].name, vocab_maps[s].exact,
                   vocab_maps[s].mined, vocab_maps[s].to_student.size(),
                   span ? " (span alignment: the rest through the student's tokenizer; alignment.vocab unused)" : "");
      if (span) projectors[s] = std::make_unique<SpanProjector>(*student.tokenizer, *teachers[s].tokenizer, vocab_maps[s]);
      if (span && !recipe.loss.token.top_k && teachers[s].tokenizer->vocab_size() > 32768)
        spdlog::warn("alignment.positions=span without loss.token.top_k projects all {} entries of teacher {}'s "
                     "distribution per position on the CPU; set loss.token.top_k (e.g. 20)",
                     teachers[s].tokenizer->vocab_size(), teachers[s].name);
    }

  // 4. Optimizer, schedule, sampler, and the state to resume from.
  //    Each rank sees micro_batch_size examples of every global micro-batch; the optimizer reduces the
  //    gradients over ranks and shards its state (sharded_adamw.h).
  const AdamWConfig adamw{tc.adam_beta1, tc.adam_beta2, tc.adam_eps, tc.weight_decay};
  std::unique_ptr<DistributedOptimizer> optimizer_owner;
  if (zero3) {
    optimizer_owner = std::make_unique<Zero3AdamW>(*sharded_student, adamw);
  } else {
    std::vector<std::pair<std::string, at::Tensor>> params;
    for (auto& item : student.model->named_parameters()) params.emplace_back(item.key(), item.value());
    const ShardingConfig sharding{recipe.dist.zero, static_cast<int64_t>(recipe.dist.bucket_mb * (1 << 20) / 4)};
    auto flat = std::make_unique<ShardedAdamW>(params, adamw, sharding, comm);
    // An untied LM head has its final gradient before the transformer's backward starts.
    if (recipe.dist.overlap) flat->enable_overlap({"lm_head.weight"});
    optimizer_owner = std::move(flat);
  }
  DistributedOptimizer& optimizer = *optimizer_owner;
  const StudentWeights weights =
      zero3 ? StudentWeights{[&](const std::string& dir, const SaveOptions& save) { sharded_student->save(dir, save, comm.is_main()); },
                             [&](const std::string& dir) { sharded_student->load(dir); }}
            : whole_student(*student.model, comm);
  SamplerConfig sampler_config{tc.micro_batch_size, recipe.run.seed, comm.rank(), comm.world_size()};
  const int64_t batches_per_epoch = Sampler(data.lengths(), sampler_config).batches_per_epoch();
  const int64_t steps_per_epoch = std::max<int64_t>(1, batches_per_epoch / tc.grad_accum);
  const int64_t total_steps = tc.max_steps ? *tc.max_steps : tc.epochs * steps_per_epoch;
  const ScheduleConfig schedule{tc.schedule, tc.lr, static_cast<int64_t>(std::ceil(tc.warmup_ratio * total_steps)), total_steps};

  const int64_t global_micro_batch = tc.micro_batch_size * comm.world_size();
  TrainerState fresh{0, {}, comm.world_size(), global_micro_batch, hex64(fnv1a64(recipe_text)), 0, ""};
  fresh.data_hash = data_hash;
  TrainerState state = fresh;
  if (resume == "auto") {
    // Every rank must take the same checkpoint: one that fails to load on any rank is skipped by all.
    for (const auto& dir : complete_checkpoints(recipe.run.output_dir)) {
      std::string failure;
      try {
        state = read_checkpoint(dir, weights, optimizer);
      } catch (const Error& e) {
        failure = e.one_line();
      }
      if (comm.all_reduce_sum(failure.empty() ? 0.0 : 1.0) == 0) {
        spdlog::info("resuming from {} (step {})", dir, state.step);
        break;
      }
      spdlog::warn("skipping checkpoint {}: {}", dir, failure.empty() ? "it failed to load on another rank" : failure);
      weights.load(recipe.student.path);  // undo a partial load
      optimizer.reset_state();
      state = fresh;
    }
  } else if (!resume.empty()) {
    state = read_checkpoint(resume, weights, optimizer);
    spdlog::info("resuming from {} (step {})", resume, state.step);
  }
  // The data cursor counts global micro-batches: it means the same thing only for the same global
  // micro-batch. The optimizer state itself reshards to any world size.
  const int64_t saved_global = state.global_micro_batch > 0 ? state.global_micro_batch : global_micro_batch;
  if (saved_global != global_micro_batch)
    throw InputError("the checkpoint was written with a global micro-batch of " + std::to_string(saved_global) +
                         " (micro_batch_size x ranks), this run has " + std::to_string(tc.micro_batch_size) + " x " +
                         std::to_string(comm.world_size()),
                     "set train.micro_batch_size so that micro_batch_size x ranks = " + std::to_string(saved_global));
  // The data cursor indexes the examples of the file as it was: an edited file would resume on other
  // examples in another order, silently.
  if (!state.data_hash.empty() && state.data_hash != fresh.data_hash)
    throw InputError(recipe.data.train + ": data.train changed since the checkpoint of step " +
                         std::to_string(state.step) + " was written (its resume position would point at other examples)",
                     "restore the file as it was, or start a new run in another run.output_dir");
  state.data_hash = fresh.data_hash;
  state.world_size = comm.world_size();
  state.global_micro_batch = global_micro_batch;
  Sampler sampler(data.lengths(), sampler_config, state.cursor);
  loss::ObjectiveConfig objective = objective_config(recipe);
  // On-policy distillation splits the distillation weight λ: λ·(1 − ρ) on the data's responses (whose
  // SFT weight stays 1 − λ), λ·ρ on the student's own completions (no SFT term there).
  const double on_policy = effective_on_policy_weight(recipe);
  loss::ObjectiveConfig on_policy_objective = objective;
  if (on_policy > 0) {
    objective.sft_weight = 1.0 - recipe.loss.distill_weight;
    objective.distill_weight = recipe.loss.distill_weight * (1.0 - on_policy);
    on_policy_objective.sft_weight = 0.0;
    on_policy_objective.distill_weight = recipe.loss.distill_weight * on_policy;
  }
  const OnPolicyOptions on_policy_options{recipe.loss.on_policy.max_new_tokens, truncation, recipe.alignment.positions,
                                          stop_token_ids(*student.tokenizer, student.chat_template)};
  // Teacher mixing weights (uniform or normalised `weights`; min_ce re-weights per sequence later).
  std::vector<double> mix_weights(teachers.size(), 1.0 / std::max<size_t>(1, teachers.size()));
  if (recipe.loss.teacher_mix == "weights") {
    double total = 0;
    for (const auto& t : recipe.teachers) total += t.weight;
    for (size_t s = 0; s < teachers.size(); ++s) mix_weights[s] = recipe.teachers[s].weight / total;
  }

  spdlog::info("training {} for {} steps ({} micro-batches of {} x {} rank(s) per epoch, grad_accum {}, {} teacher(s), "
               "{}, {}, zero {})",
               recipe.student.path, total_steps, batches_per_epoch, tc.micro_batch_size, comm.world_size(), tc.grad_accum,
               teachers.size(), tc.precision, student.device.str(), recipe.dist.zero);
  if (on_policy > 0)
    spdlog::info("on-policy distillation: {:.0f}% of the distillation weight on the student's own greedy completions "
                 "(up to {} tokens each)", 100 * on_policy, recipe.loss.on_policy.max_new_tokens);
  // Rank 0 alone writes the logs.
  std::optional<MetricsLog> metrics;
  if (comm.is_main()) metrics.emplace((fs::path(recipe.run.output_dir) / "metrics.jsonl").string(), total_steps, state.step);
  std::optional<TensorBoardWriter> tensorboard;
  if (comm.is_main() && recipe.log.tensorboard) {
    tensorboard.emplace((fs::path(recipe.run.output_dir) / "tensorboard").string());
    spdlog::info("TensorBoard events: {}", tensorboard->path());
  }
  auto log_line = [&](const nlohmann::json& line) {
    if (metrics) metrics->write(line.dump());
    if (!tensorboard) return;
    // Every number of the line as a scalar: train/<key>, or eval/<key> for an evaluation line.
    const std::string prefix = line.contains("eval_loss") ? "eval/" : "train/";
    std::vector<std::pair<std::string, double>> values;
    for (auto it = line.begin(); it != line.end(); ++it)
      if (it.key() != "step" && (it->is_number() || it->is_boolean()))
        values.emplace_back(prefix + it.key(), it->is_boolean() ? (it->get<bool>() ? 1.0 : 0.0) : it->get<double>());
    tensorboard->scalars(line.at("step").get<int64_t>(), values);
  };

  // 5. The loop: one optimizer step per iteration, each over grad_accum micro-batches.
  auto checkpoint = [&] {
    write_checkpoint(recipe.run.output_dir, weights, optimizer, state, comm, student.tokenizer_dir,
                     recipe.checkpoint.keep_last);
  };
  while (state.step < total_steps) {
    const auto step_start = std::chrono::steady_clock::now();
    std::vector<MicroBatch> micro;
    std::vector<std::unique_ptr<OnPolicyBatch>> completions;  // per micro-batch; null: none
    double local_tokens = 0, local_sequences = 0, input_tokens = 0, policy_tokens = 0, policy_sequences = 0;
    for (int64_t a = 0; a < tc.grad_accum; ++a) {
      const std::vector<int64_t> indices = sampler.next();
      micro.push_back(data.batch(indices));
      local_tokens += static_cast<double>(micro.back().student.label_tokens);
      local_sequences += static_cast<double>(micro.back().sequences());
      for (const auto* row : micro.back().student.rows) input_tokens += static_cast<double>(row->length());
      if (on_policy > 0) {
        completions.push_back(make_on_policy_batch(data, indices, student, teacher_ptrs, on_policy_options));
        if (completions.back()) {
          policy_tokens += static_cast<double>(completions.back()->micro.student.label_tokens);
          policy_sequences += static_cast<double>(completions.back()->micro.sequences());
        }
      }
    }
    loss::GlobalCounts counts{comm.all_reduce_sum(local_tokens), comm.all_reduce_sum(local_sequences)};
    if (options.inject_fault == "local_token_mean") counts.tokens = local_tokens * comm.world_size();
    loss::GlobalCounts policy_counts;
    if (on_policy > 0) policy_counts = {comm.all_reduce_sum(policy_tokens), comm.all_reduce_sum(policy_sequences)};

    // One micro-batch's objective: the student's hidden states, each teacher's (or its cached rows).
    auto backward = [&](MicroBatch& mb, const loss::ObjectiveConfig& config, const loss::GlobalCounts& global,
                        bool arm_overlap) {
      AutocastGuard autocast(student.device.type(), bf16);
      loss::StudentSide side{student.model->hidden_states(mb.student.input_ids.to(student.device)),
                             [&](const at::Tensor& h) { return student.logits(h); }, &mb.student, nullptr};
      // Sharded models: every LM head is gathered once for the whole loss, whose chunk count differs
      // per rank, and the student's is reduce-scattered before the body's (collective) backward.
      const int64_t head = student.model->head_unit();
      if (sharded_student) sharded_student->gather_for_gradients(head);
      side.always_body_backward = sharded_student != nullptr;
      side.before_body_backward = [&, arm_overlap] {
        if (sharded_student) sharded_student->reduce_gradients_and_release(head);
        if (arm_overlap) optimizer.arm_overlap();
      };
      std::vector<loss::TeacherSide> sides;
      for (size_t s = 0; s < teachers.size(); ++s) {
        at::NoGradGuard no_grad;
        const auto& t = teachers[s];
        const double weight = mix_weights[s];
        if (caches[s]) {
          sides.push_back({at::Tensor(), nullptr, &mb.teachers[s], mb.pairs[s], kl_family ? &vocab_maps[s] : nullptr,
                           projectors[s].get(), weight, cached_rows(*caches[s], mb, recipe)});
          continue;
        }
        sides.push_back({t.model->hidden_states(mb.teachers[s].input_ids.to(t.device)),
                         [&t](const at::Tensor& h) { return t.logits(h); }, &mb.teachers[s], mb.pairs[s],
                         kl_family ? &vocab_maps[s] : nullptr, projectors[s].get(), weight, nullptr});
        if (sharded_teachers[s]) sharded_teachers[s]->gather(t.model->head_unit());
      }
      const loss::LossParts parts = loss::backward_fusion_loss(side, sides, config, global);
      for (auto& sharded : sharded_teachers)
        if (sharded) sharded->release(sharded->model().head_unit());
      return parts;
    };
    loss::LossParts parts, policy_parts;
    for (size_t a = 0; a < micro.size(); ++a) {
      // The completions first: the data's last micro-batch, which every rank has, arms the
      // overlapped gradient reduction.
      if (on_policy > 0 && completions[a] && policy_counts.tokens > 0)
        policy_parts += backward(completions[a]->micro, on_policy_objective, policy_counts, false);
      parts += backward(micro[a], objective, counts, a + 1 == micro.size());
    }
    for (double* term : {&parts.total, &parts.sft, &parts.token, &parts.graph}) *term = comm.all_reduce_sum(*term);
    if (on_policy > 0) {
      for (double* term : {&policy_parts.total, &policy_parts.token, &policy_parts.graph}) *term = comm.all_reduce_sum(*term);
      parts.total += policy_parts.total;  // its SFT weight is 0
    }
    optimizer.reduce_gradients();
    const double norm = optimizer.grad_norm();

    // A non-finite loss or gradient never reaches the weights.
    std::string bad;
    if (!std::isfinite(parts.sft)) bad = "SFT loss";
    else if (!std::isfinite(parts.token)) bad = "token distillation loss (" + recipe.loss.token.type + ")";
    else if (!std::isfinite(parts.graph)) bad = "graph (GLD) loss";
    else if (!std::isfinite(policy_parts.token + policy_parts.graph)) bad = "on-policy distillation loss";
    else if (!std::isfinite(norm)) bad = "gradient norm";
    // Which teachers gave non-finite probabilities, on any rank: the error names them.
    const uint64_t local_bad = parts.nonfinite_teachers | policy_parts.nonfinite_teachers;
    std::vector<std::string> bad_teachers;
    for (size_t s = 0; !bad.empty() && s < teachers.size() && s < 64; ++s)  // `bad` is the same on every rank
      if (comm.all_reduce_sum((local_bad >> s) & 1 ? 1.0 : 0.0) > 0) bad_teachers.push_back(teachers[s].name);
    if (!bad.empty() && !bad_teachers.empty()) bad += " (non-finite logits of teacher " + join(bad_teachers, ", ") + ")";
    const double lr = learning_rate(schedule, state.step);
    bool skipped = false;
    if (!bad.empty()) {
      if (!tc.skip_nonfinite)
        throw RuntimeFailure("step " + std::to_string(state.step + 1) + ": non-finite " + bad + "; no weights were written",
                             "lower train.lr, check the data, or set train.skip_nonfinite: true");
      spdlog::warn("step {}: non-finite {}; step skipped (train.skip_nonfinite)", state.step + 1, bad);
      skipped = true;
    } else {
      optimizer.step(lr, tc.clip_grad > 0 && norm > tc.clip_grad ? tc.clip_grad / (norm + 1e-6) : 1.0);
    }
    optimizer.zero_grad();
    state.step += 1;
    state.cursor = sampler.cursor();
    state.tokens_seen += counts.tokens;

    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
    if (state.step % recipe.log.every_steps == 0 || state.step == total_steps || state.step == 1) {
      const double all_input_tokens = comm.all_reduce_sum(input_tokens);  // collective: every rank calls it
      nlohmann::json line = {{"step", state.step}, {"epoch", state.cursor.epoch}, {"lr", lr}, {"loss", parts.total},
                             {"sft", parts.sft}, {"token", parts.token}, {"graph", parts.graph}, {"grad_norm", norm},
                             {"tokens_per_s", all_input_tokens / seconds},
                             {"buckets_overlapped", optimizer.buckets_overlapped()},
                             {"peak_memory_bytes", peak_memory_bytes(student.device)}, {"skipped", skipped}};
      if (on_policy > 0) {
        line["on_policy_token"] = policy_parts.token;
        line["on_policy_graph"] = policy_parts.graph;
        line["on_policy_tokens"] = policy_counts.tokens;  // response tokens the student wrote this step
      }
      log_line(line);
      if (metrics) metrics->progress(state.step, parts.total, lr);
      spdlog::debug("{}", line.dump());
    }
    if (!eval_set.empty() && tc.eval_every_steps > 0 && state.step % tc.eval_every_steps == 0 && state.step < total_steps) {
      const double eval_loss = evaluate(student, eval_set, tc.micro_batch_size, bf16, comm, zero3);
      log_line({{"step", state.step}, {"eval_loss", eval_loss}, {"eval_ppl", std::exp(eval_loss)}});
    }
    if (recipe.checkpoint.every_steps > 0 && state.step % recipe.checkpoint.every_steps == 0 && state.step < total_steps)
      checkpoint();
    // Ranks stop together: a signal that reached any rank stops all of them after this step.
    if (comm.all_reduce_sum(stop_requested() ? 1.0 : 0.0) > 0) {
      const int signal = stop_requested();  // 0 on a rank that the signal did not reach
      if (metrics) metrics->finish_progress();
      checkpoint();
      spdlog::warn("stopped by signal {} after step {}; checkpoint written, continue with --resume auto", signal, state.step);
      return kExitPreempted;
    }
  }
  if (metrics) metrics->finish_progress();

  // 6. Evaluation and the final model, in the student's dtype and Hugging Face layout.
  if (!eval_set.empty()) {
    const double eval_loss = evaluate(student, eval_set, tc.micro_batch_size, bf16, comm, zero3);
    log_line({{"step", state.step}, {"eval_loss", eval_loss}, {"eval_ppl", std::exp(eval_loss)}});
    spdlog::info("eval loss {:.4f} (perplexity {:.3f})", eval_loss, std::exp(eval_loss));
  }
  const fs::path final_dir = fs::path(recipe.run.output_dir) / "final";
  if (comm.is_main() && fs::exists(final_dir)) fs::remove_all(final_dir);
  SaveOptions save;
  save.dtype = recipe.student.dtype;
  save.tokenizer_from = student.tokenizer_dir;
  weights.save(final_dir.string(), save);  // at ZeRO-3 gathered unit by unit, written by rank 0
  spdlog::info("wrote {}", final_dir.string());
  remove_unfinished_writes();
  return 0;
}

}  // namespace lf
