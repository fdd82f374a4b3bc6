#include "train/cache_logits.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "core/error.h"
#include "core/hash.h"
#include "data/batch.h"
#include "data/examples.h"
#include "kernels/logit_stats.h"
#include "loss/token.h"
#include "train/remote_teacher.h"

namespace lf {

int64_t teacher_rows_k(const Recipe& r, const std::string& key) {
  const bool token = loss::parse_token_loss(r.loss.token.type) != loss::TokenLoss::kNone, graph = r.loss.graph.type == "gld";
  if (token && !r.loss.token.top_k)
    throw InputError(key + ": loss.token.top_k must be set",
                     "a teacher read as rows (a cache or a server) gives top-k probabilities; full-vocabulary token "
                     "losses need a teacher run here");
  return std::max<int64_t>(graph ? r.loss.graph.top_k : 1, token ? *r.loss.token.top_k : 1);
}

CacheSpec expected_cache_spec(const Recipe& r, size_t index, const Participant& teacher, const std::string& data_hash) {
  const int64_t k = teacher_rows_k(r, "teachers." + std::to_string(index) + ".logits_cache");
  CacheSpec spec;
  spec.teacher = teacher.name;
  spec.data_hash = data_hash;
  spec.tokenizer_hash = hex64(hash_file(teacher.tokenizer->source()));
  // A served teacher is known by its served name (its URL may change from run to run).
  const auto& server = r.teachers.at(index).server;
  spec.model_fingerprint = server ? "server model '" + server->model + "'" : model_fingerprint(teacher.dir);
  // An adapter changes the teacher (added only with one, so caches of plain teachers stay valid).
  if (!server && !teacher.adapter.empty())
    spec.model_fingerprint += " + adapter " + hex64(hash_file(teacher.adapter + "/adapter_model.safetensors"));
  // `plain` puts the tokenizer's BOS first where its post-processing does (caches written before
  // it did so hold another tokenization, and are refused by this name).
  spec.chat_template = teacher.chat_template.name;
  if (adds_tokenizer_bos(teacher.chat_template, *teacher.tokenizer)) spec.chat_template += "+bos";
  spec.max_length = r.data.max_length;
  spec.max_prompt_length = r.data.max_prompt_length;
  spec.k = k;
  spec.temperatures = {r.loss.graph.temperature};
  if (r.loss.token.temperature != r.loss.graph.temperature) spec.temperatures.push_back(r.loss.token.temperature);
  return spec;
}

size_t temperature_index(const CacheSpec& spec, double temperature) {
  auto it = std::find(spec.temperatures.begin(), spec.temperatures.end(), temperature);
  if (it == spec.temperatures.end()) throw InputError("logits cache has no rows at temperature " + std::to_string(temperature));
  return static_cast<size_t>(it - spec.temperatures.begin());
}

namespace {

// Each writes its teacher's rows of every sequence, in order, and returns how many rows it wrote.
int64_t write_local_teacher(const Participant& teacher, const CacheSpec& spec, const std::vector<TokenizedSequence>& sequences,
                            const std::vector<int64_t>& lines, int64_t batch_size, LogitsCacheWriter& writer) {
  int64_t rows = 0;
  for (size_t start = 0; start < sequences.size(); start += batch_size) {
    std::vector<const TokenizedSequence*> batch_rows;
    for (size_t i = start; i < std::min(sequences.size(), start + batch_size); ++i) batch_rows.push_back(&sequences[i]);
    ModelBatch batch = collate(batch_rows, teacher.pad_id());
    at::Tensor hidden = teacher.model->hidden_states(batch.input_ids.to(teacher.device));
    for (size_t b = 0; b < batch_rows.size(); ++b) {
      const auto& seq = *batch_rows[b];
      const int64_t first = seq.first_label_position(), n = seq.label_count();
      at::Tensor logits = teacher.logits(hidden[b].narrow(0, first, n));
      at::Tensor labels = batch.labels[b].narrow(0, first, n).to(teacher.device);
      std::vector<at::Tensor> probs, ids;
      for (double t : spec.temperatures) {
        auto stats = kernels::softmax_topk_stats(logits, spec.k, t);
        probs.push_back(stats.probs);
        ids.push_back(stats.ids);
      }
      writer.add(lines[start + b], probs, ids, kernels::cross_entropy_rows(logits, labels).mean().item<double>());
      rows += n;
    }
  }
  return rows;
}

int64_t write_served_teacher(const RemoteTeacher& teacher, const CacheSpec& spec, const std::vector<TokenizedSequence>& sequences,
                             const std::vector<int64_t>& lines, LogitsCacheWriter& writer) {
  for (double t : spec.temperatures)  // load_recipe refuses these where the run distils
    if (t != 1.0) throw InputError(teacher.key + ": a server gives logprobs at temperature 1 only");
  std::vector<const TokenizedSequence*> all;
  for (const auto& seq : sequences) all.push_back(&seq);
  const auto answered = remote_label_rows(teacher, all);
  int64_t rows = 0;
  for (size_t i = 0; i < answered.size(); ++i) {
    writer.add(lines[i], {answered[i].probs}, {answered[i].ids}, answered[i].ce);
    rows += answered[i].probs.size(0);
  }
  return rows;
}

}  // namespace

void write_logits_caches(const Recipe& r) {
  bool any = false;
  const Truncation truncation = recipe_truncation(r);
  const ExampleSet examples = read_examples(r.data.train, r.data.skip_invalid);
  const std::string data_hash = hex64(hash_file(r.data.train));
  for (size_t s = 0; s < r.teachers.size(); ++s) {
    const TeacherConfig& tc = r.teachers[s];
    if (!tc.logits_cache) continue;
    any = true;
    const bool remote = tc.server.has_value();
    Participant teacher = load_participant(tc.name, tc.path, tc.tokenizer, tc.chat_template, tc.dtype,
                                           tc.device == "auto" ? r.run.device : tc.device, r.chat_templates,
                                           /*load_weights=*/!remote, tc.chat_template_kwargs, tc.adapter.value_or(""));
    if (!remote) teacher.model->eval();
    const CacheSpec spec = expected_cache_spec(r, s, teacher, data_hash);
    LogitsCacheWriter writer(*tc.logits_cache, spec);
    at::NoGradGuard no_grad;
    int64_t skipped = 0;
    const int64_t batch_size = std::max<int64_t>(1, r.train.micro_batch_size);
    std::vector<TokenizedSequence> sequences;
    std::vector<int64_t> lines;
    for (const auto& ex : examples.examples) {
      try {
        sequences.push_back(tokenize_example(ex, *teacher.tokenizer, teacher.chat_template, truncation));
        lines.push_back(ex.line);
      } catch (const InputError& e) {
        if (!r.data.skip_invalid) throw InputError(examples.path + ":" + std::to_string(ex.line) + ": " + e.what());
        ++skipped;
      }
    }
    const int64_t rows = remote ? write_served_teacher(resolve_remote_teacher(r, s, spec.k), spec, sequences, lines, writer)
                                : write_local_teacher(teacher, spec, sequences, lines, batch_size, writer);
    writer.finish();
    spdlog::info("{}: cached top-{} logits of teacher {}{} for {} examples ({} rows, {} temperature(s)){}", *tc.logits_cache,
                 spec.k, tc.name, remote ? " (server " + tc.server->url + ")" : "", sequences.size(), rows, spec.temperatures.size(),
                 skipped ? ", " + std::to_string(skipped) + " skipped" : "");
  }
  if (!any) throw InputError("cache-logits: no teacher has teachers.N.logits_cache set", "set it to a directory for each teacher to cache");
}

void append_teacher_rows(loss::PrecomputedTeacherRows& out, const Recipe& r, int64_t k, at::Tensor graph_probs, at::Tensor graph_ids,
                         const at::Tensor& token_probs, const at::Tensor& token_ids, double ce) {
  // The graph reads all k; the token loss its own top_k of them.
  const int64_t token_k = std::min(r.loss.token.top_k.value_or(k), k);
  out.graph_probs.push_back(std::move(graph_probs));
  out.graph_ids.push_back(std::move(graph_ids));
  out.token_probs.push_back(token_probs.narrow(1, 0, token_k));
  out.token_ids.push_back(token_ids.narrow(1, 0, token_k));
  out.ce.push_back(ce);
}

std::shared_ptr<loss::PrecomputedTeacherRows> cached_rows(const LogitsCache& cache, const MicroBatch& batch, const Recipe& r) {
  auto out = std::make_shared<loss::PrecomputedTeacherRows>();
  const size_t graph_t = temperature_index(cache.spec(), r.loss.graph.temperature);
  const size_t token_t = temperature_index(cache.spec(), r.loss.token.temperature);
  for (int64_t line : batch.lines) {
    CachedExample ex = cache.example(line);
    append_teacher_rows(*out, r, cache.spec().k, ex.probs[graph_t], ex.ids[graph_t], ex.probs[token_t], ex.ids[token_t], ex.ce);
  }
  return out;
}

}  // namespace lf
