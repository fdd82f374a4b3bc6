#include "loss/objective.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/logit_stats.h"
#include "kernels/row_losses.h"

namespace lf::loss {

namespace {

// The response (label) positions of a batch, flattened: row r is (batch[r], time[r]).
struct ResponseRows {
  at::Tensor batch, time, labels;     // [L] int64 each
  std::vector<int64_t> per_sequence;  // rows of each sequence (they are contiguous, in batch order)
  std::vector<int64_t> first;         // each sequence's first row (prefix sums of per_sequence)
};

ResponseRows response_rows(const ModelBatch& batch, const at::Device& device) {
  ResponseRows out;
  at::Tensor labels = batch.labels;
  at::Tensor where = (labels != kIgnoreIndex).nonzero();  // row-major: sequence by sequence
  out.batch = where.select(1, 0).contiguous();
  out.time = where.select(1, 1).contiguous();
  out.labels = labels.index({out.batch, out.time});
  out.per_sequence.assign(labels.size(0), 0);
  auto b = out.batch.accessor<int64_t, 1>();
  for (int64_t i = 0; i < b.size(0); ++i) ++out.per_sequence[b[i]];
  out.first.assign(labels.size(0), 0);
  for (size_t i = 1; i < out.first.size(); ++i) out.first[i] = out.first[i - 1] + out.per_sequence[i - 1];
  out.batch = out.batch.to(device);
  out.time = out.time.to(device);
  out.labels = out.labels.to(device);
  return out;
}

// Teacher s gave NaN or infinity in `values` (an undefined tensor gives nothing): set its bit so the
// error can name it (bits 0..63).
void mark_nonfinite(LossParts& parts, int64_t s, const at::Tensor& values) {
  if (s < 64 && values.defined() && !at::isfinite(values).all().item<bool>()) parts.nonfinite_teachers |= uint64_t{1} << s;
}

// Top-k probabilities (and ids) plus per-row CE of a model at its response rows, chunk by chunk, no grad.
struct RowSummary {
  at::Tensor probs, ids, ce;  // [L, k], [L, k], [L]
};

RowSummary summarise(const at::Tensor& hidden, const LogitsFn& logits_fn, const ResponseRows& rows, int64_t k,
                     double temperature, int64_t chunk) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> probs, ids, ce;
  const int64_t L = rows.batch.size(0);
  for (int64_t start = 0; start < L; start += chunk) {
    const int64_t n = std::min(chunk, L - start);
    at::Tensor h = hidden.index({rows.batch.narrow(0, start, n), rows.time.narrow(0, start, n)});
    at::Tensor logits = logits_fn(h);
    auto top = kernels::ce_and_softmax_topk(logits, rows.labels.narrow(0, start, n), k, temperature);
    probs.push_back(top.probs);
    ids.push_back(top.ids);
    ce.push_back(top.ce);
  }
  return {at::cat(probs), at::cat(ids), at::cat(ce)};
}

// A teacher's token-level distributions at its response rows for span alignment, on the CPU: top-k
// probabilities and ids at the token temperature ([L, k] double, int64), or the full distribution
// ([L, V] double; ids undefined).
struct TokenRows {
  at::Tensor probs, ids;
};

TokenRows teacher_token_rows(const at::Tensor& hidden, const LogitsFn& logits_fn, const ResponseRows& rows,
                             const TokenLossOptions& o, int64_t chunk) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> probs, ids;
  const int64_t L = rows.batch.size(0);
  for (int64_t start = 0; start < L; start += chunk) {
    const int64_t n = std::min(chunk, L - start);
    at::Tensor logits = logits_fn(hidden.index({rows.batch.narrow(0, start, n), rows.time.narrow(0, start, n)}));
    if (o.top_k) {
      auto top = kernels::softmax_topk(logits, *o.top_k, o.temperature);
      probs.push_back(top.probs.to(at::kDouble).cpu());
      ids.push_back(top.ids.to(at::kLong).cpu());
    } else {
      probs.push_back(kernels::log_softmax(logits, o.temperature).exp().to(at::kDouble).cpu());
    }
  }
  if (probs.empty()) return {};
  return {at::cat(probs).contiguous(), ids.empty() ? at::Tensor() : at::cat(ids).contiguous()};
}

at::Tensor graph_distance(const at::Tensor& xs, const at::Tensor& ids_s, const at::Tensor& xt, const at::Tensor& ids_t,
                          const ObjectiveConfig& c) {
  if (c.graph_solver == GraphSolver::kEntropic) {
    at::Tensor cs = at::matmul(xs.t(), xs), ct = at::matmul(xt.t(), xt);
    return entropic_gw(cs, ct.to(cs.scalar_type()), c.entropic);
  }
  at::Tensor fs = c.graph_nodes == GraphNodes::kVocab ? vocab_node_features(xs, ids_s, c.gld) : rank_node_features(xs, c.gld);
  at::Tensor ft = c.graph_nodes == GraphNodes::kVocab ? vocab_node_features(xt, ids_t, c.gld) : rank_node_features(xt, c.gld);
  return sorted_feature_distance(fs, ft, c.gld.p);
}

// What is known of the objective's shape before any logits are read.
struct Plan {
  int64_t B = 0, S = 0;
  double lambda = 0, sft_weight = 1;
  bool use_graph = false, use_token = false;
};

Plan plan_objective(const StudentSide& student, const std::vector<TeacherSide>& teachers, const ObjectiveConfig& c) {
  Plan p;
  p.B = student.batch->input_ids.size(0);
  p.S = static_cast<int64_t>(teachers.size());
  p.lambda = p.S > 0 ? c.distill_weight : 0.0;
  p.sft_weight = c.sft_weight ? *c.sft_weight : 1.0 - p.lambda;
  p.use_graph = p.S > 0 && c.graph && c.graph_weight > 0 && p.lambda > 0;
  p.use_token = p.S > 0 && c.token.type != TokenLoss::kNone && p.lambda > 0;
  return p;
}

// ---- Phase 1: teacher summaries and mixing (no grad) ----

// Per teacher: its response rows; its top-k at the graph temperature over them ([L_s, k]; GLD needs
// no alignment), undefined where nothing reads it; and the weight w[s][b] of each sequence.
struct TeacherSummaries {
  std::vector<ResponseRows> rows;
  std::vector<RowSummary> top;
  std::vector<std::vector<double>> weight;  // [S][B]
};

// A precomputed teacher's summary (from a cache or a server): graph top-k and token-mean CE per sequence.
void read_precomputed_summary(const TeacherSide& t, int64_t s, const ObjectiveConfig& c, const at::Device& device,
                         const ResponseRows& rows, RowSummary& top, std::vector<double>& ce) {
  std::vector<at::Tensor> probs, ids;
  for (size_t b = 0; b < ce.size(); ++b) {
    if (t.precomputed->graph_probs[b].size(0) != rows.per_sequence[b])
      throw InputError("stale logits cache: teacher " + std::to_string(s) + " has " +
                           std::to_string(t.precomputed->graph_probs[b].size(0)) + " cached rows for a sequence with " +
                           std::to_string(rows.per_sequence[b]) + " response positions",
                       "re-run logitfuse cache-logits");
    probs.push_back(t.precomputed->graph_probs[b].narrow(1, 0, c.graph_top_k).to(device));
    ids.push_back(t.precomputed->graph_ids[b].narrow(1, 0, c.graph_top_k).to(device));
    ce[b] = t.precomputed->ce[b];
  }
  top = {at::cat(probs), at::cat(ids), at::Tensor()};
}

// min_ce mixing: on each sequence, the teacher with the lowest token-mean CE takes all the weight.
void mix_by_min_ce(const std::vector<std::vector<double>>& teacher_ce, std::vector<std::vector<double>>& weight) {
  const size_t S = teacher_ce.size(), B = S > 0 ? teacher_ce[0].size() : 0;
  for (size_t b = 0; b < B; ++b) {
    size_t best = 0;
    for (size_t s = 1; s < S; ++s)
      if (teacher_ce[s][b] < teacher_ce[best][b]) best = s;
    for (size_t s = 0; s < S; ++s) weight[s][b] = s == best ? 1.0 : 0.0;
  }
}

TeacherSummaries summarise_teachers(const std::vector<TeacherSide>& teachers, const ObjectiveConfig& c, const Plan& p,
                                    const at::Device& device) {
  TeacherSummaries out;
  out.rows.resize(p.S);
  out.top.resize(p.S);
  out.weight.assign(p.S, std::vector<double>(p.B, 0.0));
  std::vector<std::vector<double>> teacher_ce(p.S, std::vector<double>(p.B, 0.0));  // token-mean CE, [S][B]
  for (int64_t s = 0; s < p.S; ++s) {
    const auto& t = teachers[s];
    for (int64_t b = 0; b < p.B; ++b) out.weight[s][b] = t.weight;
    if (t.precomputed) {
      out.rows[s] = response_rows(*t.batch, device);
      read_precomputed_summary(t, s, c, device, out.rows[s], out.top[s], teacher_ce[s]);
      continue;
    }
    out.rows[s] = response_rows(*t.batch, t.hidden.device());
    // Nothing reads the teacher's top-k or CE: no second pass over its logits (the token term reads
    // them in the main pass, which checks them for non-finite values).
    if (!p.use_graph && c.teacher_mix != TeacherMix::kMinCe) continue;
    out.top[s] = summarise(t.hidden, t.logits, out.rows[s], c.graph_top_k, c.graph_temperature, c.chunk_rows);
    const at::Tensor ce = out.top[s].ce.cpu();
    for (int64_t b = 0; b < p.B; ++b) {
      const int64_t n = out.rows[s].per_sequence[b];
      teacher_ce[s][b] = n > 0 ? ce.narrow(0, out.rows[s].first[b], n).mean().item<double>() : 1e30;
    }
  }
  if (c.teacher_mix == TeacherMix::kMinCe) mix_by_min_ce(teacher_ce, out.weight);
  return out;
}

// ---- Phase 2: the graph term and its gradient ----

// GLD on the student's top-k probabilities ([L, k]) as a leaf, summed over sequences and teachers
// (weighted) and divided by the global sequence count: its value, and its gradient with respect to
// the leaf ([L, k]; undefined when nothing depends on it), which the main pass injects chunk by chunk.
struct GraphTerm {
  double value = 0;
  at::Tensor grad;
};

GraphTerm graph_term(const at::Tensor& hidden, const StudentSide& student, const ResponseRows& rows,
                     const TeacherSummaries& teachers, const ObjectiveConfig& c, const Plan& p, const GlobalCounts& counts) {
  const at::Device device = hidden.device();
  RowSummary mine = summarise(hidden, student.logits, rows, c.graph_top_k, c.graph_temperature, c.chunk_rows);
  at::Tensor leaf = mine.probs.detach().requires_grad_(true);
  at::Tensor total = at::zeros({}, leaf.options());
  for (int64_t b = 0; b < p.B; ++b) {
    const int64_t n = rows.per_sequence[b], offset = rows.first[b];
    for (int64_t s = 0; s < p.S; ++s) {
      const int64_t m = teachers.rows[s].per_sequence[b], t_offset = teachers.rows[s].first[b];
      if (n <= 0 || m <= 0 || teachers.weight[s][b] <= 0) continue;
      at::Tensor xt = teachers.top[s].probs.narrow(0, t_offset, m).to(device);
      at::Tensor it = teachers.top[s].ids.narrow(0, t_offset, m).to(device);
      total = total + teachers.weight[s][b] * graph_distance(leaf.narrow(0, offset, n), mine.ids.narrow(0, offset, n), xt, it, c);
    }
  }
  total = total / std::max(1.0, counts.sequences);
  GraphTerm out;
  out.value = total.item<double>();
  if (total.requires_grad()) {
    total.backward();
    out.grad = leaf.grad();
  }
  return out;
}

// ---- Phase 3: row alignment ----

// One teacher's aligned pairs, sorted by student row: (student response row, teacher batch row,
// teacher position), and with span alignment the teacher's mass on student ids for each pair.
struct Aligned {
  std::vector<int64_t> student_row, teacher_b, teacher_t;
  std::vector<SpanTarget> targets;
};

// Teacher s's rows as span alignment reads them for sequence b (a view into the cache's rows, or
// into `live`, rows first..first+count of it); `cached_probs`/`cached_ids` keep the converted copies.
TeacherRows span_rows_of(const TeacherSide& t, int64_t b, const TokenRows& live, int64_t first, int64_t count,
                         at::Tensor& cached_probs, at::Tensor& cached_ids) {
  if (t.precomputed) {
    cached_probs = t.precomputed->token_probs[b].to(at::kDouble).contiguous();
    cached_ids = t.precomputed->token_ids[b].to(at::kLong).contiguous();
    return {cached_probs.data_ptr<double>(), cached_ids.data_ptr<int64_t>(), cached_probs.size(0), cached_probs.size(1)};
  }
  if (!live.probs.defined()) return {};
  const int64_t width = live.probs.size(1);
  return {live.probs.data_ptr<double>() + first * width, live.ids.defined() ? live.ids.data_ptr<int64_t>() + first * width : nullptr,
          count, width};
}

Aligned align_teacher(const StudentSide& student, const TeacherSide& t, int64_t s, const ResponseRows& rows,
                      const std::vector<int64_t>& first_time, const TeacherSummaries& teachers, const ObjectiveConfig& c,
                      LossParts& parts) {
  Aligned out;
  // Span alignment reads the teacher's rows on the CPU: the cache's, or computed here.
  TokenRows live;
  if (t.span && !t.precomputed) {
    live = teacher_token_rows(t.hidden, t.logits, teachers.rows[s], c.token, c.chunk_rows);
    if (!teachers.top[s].probs.defined()) mark_nonfinite(parts, s, live.probs);
  }
  const int64_t B = static_cast<int64_t>(rows.per_sequence.size());
  std::vector<at::Tensor> cached_probs(B), cached_ids(B);
  for (int64_t b = 0; b < B; ++b) {
    if (teachers.weight[s][b] <= 0) continue;
    TeacherRows span_rows;
    if (t.span)
      span_rows = span_rows_of(t, b, live, teachers.rows[s].first[b], teachers.rows[s].per_sequence[b], cached_probs[b],
                               cached_ids[b]);
    for (const auto& [ps, pt] : t.pairs[b]) {
      // Response positions of a sequence are contiguous, so the row is an offset from the first.
      if (ps < first_time[b] || ps - first_time[b] >= rows.per_sequence[b]) continue;
      if (t.span) {
        SpanTarget target = t.span->project(*student.batch->rows[b], *t.batch->rows[b], ps, pt, span_rows);
        if (target.ids.empty()) continue;
        out.targets.push_back(std::move(target));
      }
      out.student_row.push_back(rows.first[b] + (ps - first_time[b]));
      out.teacher_b.push_back(b);
      out.teacher_t.push_back(pt);
    }
  }
  return out;
}

std::vector<Aligned> align_rows(const StudentSide& student, const std::vector<TeacherSide>& teachers,
                                const ResponseRows& rows, const TeacherSummaries& summaries, const ObjectiveConfig& c,
                                LossParts& parts) {
  const int64_t B = static_cast<int64_t>(rows.per_sequence.size());
  std::vector<int64_t> first_time(B, 0);  // each sequence's first response position
  const at::Tensor times = rows.time.cpu();
  const auto acc = times.accessor<int64_t, 1>();
  for (int64_t b = 0; b < B; ++b) first_time[b] = rows.per_sequence[b] > 0 ? acc[rows.first[b]] : 0;
  std::vector<Aligned> aligned;
  for (size_t s = 0; s < teachers.size(); ++s)
    aligned.push_back(align_teacher(student, teachers[s], static_cast<int64_t>(s), rows, first_time, summaries, c, parts));
  return aligned;
}

// ---- Phase 4: the chunked pass ----

// Pairs [begin, end) of teacher s that fall in a chunk: the token term's per-row loss ([end − begin]),
// the student's logits of those rows from the chunk's `logits` ([n, V], rows start.. of the batch).
struct ChunkPairs {
  size_t begin = 0, end = 0;
  int64_t start = 0, n = 0;
};

// A vector's entries [begin, end) less `offset`, as an int64 tensor on `device`.
at::Tensor index_slice(const std::vector<int64_t>& v, const ChunkPairs& k, int64_t offset, const at::Device& device) {
  std::vector<int64_t> part(v.begin() + k.begin, v.begin() + k.end);
  for (auto& x : part) x -= offset;
  return at::tensor(part, at::TensorOptions().dtype(at::kLong)).to(device);
}

// Span targets of the pairs, padded to the widest with mass 0: ids [m, width] int64, mass [m, width] double.
std::pair<at::Tensor, at::Tensor> padded_span_targets(const Aligned& a, const ChunkPairs& k) {
  size_t width = 1;
  for (size_t i = k.begin; i < k.end; ++i) width = std::max(width, a.targets[i].ids.size());
  const int64_t m = static_cast<int64_t>(k.end - k.begin);
  at::Tensor ids = at::zeros({m, static_cast<int64_t>(width)}, at::TensorOptions().dtype(at::kLong));
  at::Tensor mass = at::zeros({m, static_cast<int64_t>(width)}, at::TensorOptions().dtype(at::kDouble));
  auto ia = ids.accessor<int64_t, 2>();
  auto ma = mass.accessor<double, 2>();
  for (size_t i = k.begin; i < k.end; ++i)
    for (size_t j = 0; j < a.targets[i].ids.size(); ++j) {
      ia[i - k.begin][j] = a.targets[i].ids[j];
      ma[i - k.begin][j] = a.targets[i].mass[j];
    }
  return {ids, mass};
}

// The token term's loss of each pair in the chunk, before weighting ([m]); `teacher_logits` gets the
// live teacher's logits of those pairs ([m, V_t]) when they were computed.
at::Tensor token_rows_loss(const at::Tensor& logits, const TeacherSide& t, const Aligned& a, const ChunkPairs& k,
                           const ObjectiveConfig& c, at::Tensor& teacher_logits) {
  const at::Device device = logits.device();
  // Every row of the chunk paired, in order (one teacher, same tokenizer): the logits as they are,
  // not a gathered copy whose backward scatters into another [n, V] buffer.
  bool all_rows = static_cast<int64_t>(k.end - k.begin) == k.n;
  for (size_t i = k.begin; all_rows && i < k.end; ++i) all_rows = a.student_row[i] == k.start + static_cast<int64_t>(i - k.begin);
  const at::Tensor student_logits = all_rows ? logits : logits.index_select(0, index_slice(a.student_row, k, k.start, device));
  if (t.span) {
    auto [ids, mass] = padded_span_targets(a, k);
    return kl_family_on_student_ids(student_logits, ids.to(device), mass.to(device), c.token);
  }
  if (t.precomputed) {
    // Cached rows are the teacher's response rows in order: row = position − first response position.
    std::vector<at::Tensor> probs, ids;
    for (size_t i = k.begin; i < k.end; ++i) {
      const int64_t b = a.teacher_b[i];
      const int64_t row = a.teacher_t[i] - (*t.batch).rows[b]->first_label_position();
      probs.push_back(t.precomputed->token_probs[b][row]);
      ids.push_back(t.precomputed->token_ids[b][row]);
    }
    return token_loss_rows_topk(student_logits, at::stack(probs).to(device), at::stack(ids).to(device), c.token, t.vocab_map);
  }
  {
    at::NoGradGuard no_grad;
    const at::Device tdev = t.hidden.device();
    teacher_logits = t.logits(t.hidden.index({index_slice(a.teacher_b, k, 0, tdev), index_slice(a.teacher_t, k, 0, tdev)})).to(device);
  }
  return token_loss_rows(student_logits, teacher_logits, c.token, t.vocab_map);
}

// Running sums of the main pass (unnormalised) and each teacher's next pair.
struct PassState {
  double sft_sum = 0, token_sum = 0;
  std::vector<size_t> cursor;  // per teacher
};

// One chunk of student logits: CE, the graph term's injected gradient, every teacher's token term;
// their weighted sum is backpropagated and the chunk's logits freed. `logits` [n, V].
void chunk_backward(const at::Tensor& logits, const ResponseRows& rows, int64_t start, int64_t n,
                    const std::vector<TeacherSide>& teachers, const std::vector<Aligned>& aligned,
                    const TeacherSummaries& summaries, const GraphTerm& graph, const ObjectiveConfig& c, const Plan& p,
                    double inv_tokens, PassState& state, LossParts& parts) {
  const at::Device device = logits.device();
  // CE and the graph term's top-k come from one read of the logits (one fused kernel on CUDA).
  at::Tensor ce, graph_probs;
  if (graph.grad.defined()) {
    auto both = kernels::ce_and_softmax_topk(logits, rows.labels.narrow(0, start, n), c.graph_top_k, c.graph_temperature);
    ce = both.ce;
    graph_probs = both.probs;
  } else {
    ce = kernels::cross_entropy_rows_fused(logits, rows.labels.narrow(0, start, n));
  }
  state.sft_sum += ce.detach().sum().item<double>();
  at::Tensor chunk_loss = ce.sum() * (p.sft_weight * inv_tokens);
  if (graph_probs.defined())
    chunk_loss = chunk_loss + (graph_probs * graph.grad.narrow(0, start, n)).sum() * (p.lambda * c.graph_weight);
  for (int64_t s = 0; p.use_token && s < p.S; ++s) {
    const Aligned& a = aligned[s];
    ChunkPairs k{state.cursor[s], state.cursor[s], start, n};
    while (k.end < a.student_row.size() && a.student_row[k.end] < start + n) ++k.end;
    state.cursor[s] = k.end;
    if (k.end == k.begin) continue;
    at::Tensor teacher_logits;
    const at::Tensor row_loss = token_rows_loss(logits, teachers[s], a, k, c, teacher_logits);
    std::vector<double> w;
    for (size_t i = k.begin; i < k.end; ++i) w.push_back(summaries.weight[s][a.teacher_b[i]]);
    at::Tensor rows_loss = row_loss * at::tensor(w, at::TensorOptions().dtype(at::kDouble)).to(device).to(row_loss.scalar_type());
    const double rows_sum = rows_loss.detach().sum().item<double>();
    // A non-finite term: name the teacher if its logits are the cause (read only on this path).
    if (!std::isfinite(rows_sum)) mark_nonfinite(parts, s, teacher_logits);
    state.token_sum += rows_sum;
    chunk_loss = chunk_loss + rows_loss.sum() * (p.lambda * inv_tokens);
  }
  chunk_loss.backward();
}

}  // namespace

TeacherMix parse_teacher_mix(const std::string& name) {
  if (name == "uniform") return TeacherMix::kUniform;
  if (name == "weights") return TeacherMix::kWeights;
  if (name == "min_ce") return TeacherMix::kMinCe;
  throw std::invalid_argument("unknown teacher mix '" + name + "'");
}

GraphNodes parse_graph_nodes(const std::string& name) {
  if (name == "rank") return GraphNodes::kRank;
  if (name == "vocab") return GraphNodes::kVocab;
  throw std::invalid_argument("unknown graph nodes '" + name + "'");
}

GraphSolver parse_graph_solver(const std::string& name) {
  if (name == "sorted") return GraphSolver::kSorted;
  if (name == "entropic") return GraphSolver::kEntropic;
  throw std::invalid_argument("unknown graph solver '" + name + "'");
}

LossParts backward_fusion_loss(const StudentSide& student, const std::vector<TeacherSide>& teachers,
                               const ObjectiveConfig& c, const GlobalCounts& counts) {
  const at::Device device = student.hidden.device();
  const Plan p = plan_objective(student, teachers, c);
  const ResponseRows rows = response_rows(*student.batch, device);
  const int64_t L = rows.batch.size(0);
  if (counts.tokens <= 0) throw RuntimeFailure("no response tokens in the global batch");

  const TeacherSummaries summaries = summarise_teachers(teachers, c, p, device);  // phase 1
  at::Tensor hidden = student.hidden.detach().requires_grad_(true);  // [B, T, d], the chunks' leaf
  LossParts parts;
  for (int64_t s = 0; s < p.S; ++s) mark_nonfinite(parts, s, summaries.top[s].probs);
  const GraphTerm graph = p.use_graph ? graph_term(hidden, student, rows, summaries, c, p, counts) : GraphTerm{};  // phase 2
  parts.graph = graph.value;
  const std::vector<Aligned> aligned =
      p.use_token ? align_rows(student, teachers, rows, summaries, c, parts) : std::vector<Aligned>(p.S);  // phase 3

  // Phase 4: one chunk of student logits at a time, every term, backward, freed.
  const double inv_tokens = 1.0 / counts.tokens;
  PassState state;
  state.cursor.assign(p.S, 0);
  for (int64_t start = 0; start < L; start += c.chunk_rows) {
    const int64_t n = std::min(c.chunk_rows, L - start);
    const at::Tensor logits = student.logits(hidden.index({rows.batch.narrow(0, start, n), rows.time.narrow(0, start, n)}));
    chunk_backward(logits, rows, start, n, teachers, aligned, summaries, graph, c, p, inv_tokens, state, parts);
  }
  parts.sft = state.sft_sum * inv_tokens;
  parts.token = state.token_sum * inv_tokens;
  parts.total = p.sft_weight * parts.sft + p.lambda * (parts.token + c.graph_weight * parts.graph);
  if (hidden.grad().defined() || student.always_body_backward) {
    if (student.before_body_backward) student.before_body_backward();
    student.hidden.backward(hidden.grad().defined() ? hidden.grad() : at::zeros_like(student.hidden));
  }
  return parts;
}

}  // namespace lf::loss
