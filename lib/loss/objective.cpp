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

// Label positions of a batch, flattened: row r is (batch[r], time[r]).
struct LabelRows {
  at::Tensor batch, time, labels;  // [L] int64 each
  std::vector<int64_t> per_sequence;  // rows of each sequence (they are contiguous, in batch order)
};

LabelRows label_rows(const ModelBatch& batch, const at::Device& device) {
  LabelRows out;
  at::Tensor labels = batch.labels;
  at::Tensor where = (labels != kIgnoreIndex).nonzero();  // row-major: sequence by sequence
  out.batch = where.select(1, 0).contiguous();
  out.time = where.select(1, 1).contiguous();
  out.labels = labels.index({out.batch, out.time});
  out.per_sequence.assign(labels.size(0), 0);
  auto b = out.batch.accessor<int64_t, 1>();
  for (int64_t i = 0; i < b.size(0); ++i) ++out.per_sequence[b[i]];
  out.batch = out.batch.to(device);
  out.time = out.time.to(device);
  out.labels = out.labels.to(device);
  return out;
}

// Top-k probabilities (and ids) plus per-row CE of a model at its label rows, chunk by chunk, no grad.
struct RowSummary {
  at::Tensor probs, ids, ce;  // [L, k], [L, k], [L]
};

RowSummary summarise(const at::Tensor& hidden, const LogitsFn& logits_fn, const LabelRows& rows, int64_t k,
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

// A teacher's token-level distributions at its label rows for span alignment, on the CPU: top-k
// probabilities and ids at the token temperature, or the full distribution (ids undefined).
struct TokenRows {
  at::Tensor probs, ids;
};

TokenRows teacher_token_rows(const at::Tensor& hidden, const LogitsFn& logits_fn, const LabelRows& rows,
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
  if (c.graph_solver == "entropic") {
    at::Tensor cs = at::matmul(xs.t(), xs), ct = at::matmul(xt.t(), xt);
    return entropic_gw(cs, ct.to(cs.scalar_type()), c.entropic);
  }
  at::Tensor fs = c.graph_nodes == "vocab" ? vocab_node_features(xs, ids_s, c.gld) : rank_node_features(xs, c.gld);
  at::Tensor ft = c.graph_nodes == "vocab" ? vocab_node_features(xt, ids_t, c.gld) : rank_node_features(xt, c.gld);
  return sorted_feature_distance(fs, ft, c.gld.p);
}

}  // namespace

LossParts backward_fusion_loss(const StudentSide& student, const std::vector<TeacherSide>& teachers,
                               const ObjectiveConfig& c, const GlobalCounts& counts) {
  const at::Device device = student.hidden.device();
  const LabelRows rows = label_rows(*student.batch, device);
  const int64_t L = rows.batch.size(0);
  const int64_t B = student.batch->input_ids.size(0);
  const int64_t S = static_cast<int64_t>(teachers.size());
  const double lambda = S > 0 ? c.distill_weight : 0.0;
  const double sft_weight = c.sft_weight ? *c.sft_weight : 1.0 - lambda;
  const bool use_graph = S > 0 && c.graph && c.graph_weight > 0 && lambda > 0;
  const bool use_token = S > 0 && c.token.type != "none" && lambda > 0;
  if (counts.tokens <= 0) throw RuntimeFailure("no response tokens in the global batch");

  // Teachers, no grad: top-k probabilities over their own response positions (GLD needs no
  // alignment) and their token-mean CE per sequence (min_ce mixing).
  std::vector<RowSummary> teacher_rows(S);
  std::vector<LabelRows> teacher_labels(S);
  std::vector<std::vector<double>> weight(S, std::vector<double>(B, 0.0));  // w[s][b]
  std::vector<std::vector<double>> teacher_ce(S, std::vector<double>(B, 0.0));
  for (int64_t s = 0; s < S; ++s) {
    const auto& t = teachers[s];
    if (t.cached) {
      teacher_labels[s] = label_rows(*t.batch, device);
      std::vector<at::Tensor> probs, ids;
      for (int64_t b = 0; b < B; ++b) {
        if (t.cached->graph_probs[b].size(0) != teacher_labels[s].per_sequence[b])
          throw InputError("stale logits cache: teacher " + std::to_string(s) + " has " +
                               std::to_string(t.cached->graph_probs[b].size(0)) + " cached rows for a sequence with " +
                               std::to_string(teacher_labels[s].per_sequence[b]) + " response positions",
                           "re-run logitfuse cache-logits");
        probs.push_back(t.cached->graph_probs[b].narrow(1, 0, c.graph_top_k).to(device));
        ids.push_back(t.cached->graph_ids[b].narrow(1, 0, c.graph_top_k).to(device));
        teacher_ce[s][b] = t.cached->ce[b];
        weight[s][b] = t.weight;
      }
      teacher_rows[s] = {at::cat(probs), at::cat(ids), at::Tensor()};
      continue;
    }
    teacher_labels[s] = label_rows(*t.batch, t.hidden.device());
    if (!use_graph && c.teacher_mix != "min_ce") {
      // Nothing reads the teacher's top-k or CE: no second pass over its logits (the token term
      // reads them in the main pass, which checks them for non-finite values).
      for (int64_t b = 0; b < B; ++b) weight[s][b] = t.weight;
      continue;
    }
    teacher_rows[s] = summarise(t.hidden, t.logits, teacher_labels[s], c.graph_top_k, c.graph_temperature, c.chunk_rows);
    at::Tensor ce = teacher_rows[s].ce.cpu();
    int64_t offset = 0;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t n = teacher_labels[s].per_sequence[b];
      teacher_ce[s][b] = n > 0 ? ce.narrow(0, offset, n).mean().item<double>() : 1e30;
      offset += n;
      weight[s][b] = t.weight;
    }
  }
  if (c.teacher_mix == "min_ce")
    for (int64_t b = 0; b < B; ++b) {
      int64_t best = 0;
      for (int64_t s = 1; s < S; ++s)
        if (teacher_ce[s][b] < teacher_ce[best][b]) best = s;
      for (int64_t s = 0; s < S; ++s) weight[s][b] = s == best ? 1.0 : 0.0;
    }

  at::Tensor hidden = student.hidden.detach().requires_grad_(true);
  LossParts parts;
  for (int64_t s = 0; s < S && s < 64; ++s)
    if (teacher_rows[s].probs.defined() && !at::isfinite(teacher_rows[s].probs).all().item<bool>())
      parts.nonfinite_teachers |= uint64_t{1} << s;

  // GLD on the student's top-k probabilities as a leaf: its gradient is injected chunk by chunk below.
  at::Tensor graph_grad;
  if (use_graph) {
    RowSummary mine = summarise(hidden, student.logits, rows, c.graph_top_k, c.graph_temperature, c.chunk_rows);
    at::Tensor leaf = mine.probs.detach().requires_grad_(true);
    at::Tensor total = at::zeros({}, leaf.options());
    int64_t offset = 0;
    std::vector<int64_t> t_offset(S, 0);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t n = rows.per_sequence[b];
      for (int64_t s = 0; s < S; ++s) {
        const int64_t m = teacher_labels[s].per_sequence[b];
        if (n > 0 && m > 0 && weight[s][b] > 0) {
          at::Tensor xt = teacher_rows[s].probs.narrow(0, t_offset[s], m).to(device);
          at::Tensor it = teacher_rows[s].ids.narrow(0, t_offset[s], m).to(device);
          total = total + weight[s][b] * graph_distance(leaf.narrow(0, offset, n), mine.ids.narrow(0, offset, n), xt, it, c);
        }
        t_offset[s] += m;
      }
      offset += n;
    }
    total = total / std::max(1.0, counts.sequences);
    parts.graph = total.item<double>();
    if (total.requires_grad()) {
      total.backward();
      graph_grad = leaf.grad();
    }
  }

  // Aligned pairs as (student label row, teacher batch row, teacher position), sorted by student row.
  struct Aligned {
    std::vector<int64_t> student_row, teacher_b, teacher_t;
    std::vector<SpanTarget> targets;  // span alignment: the teacher's mass on student ids, per pair
  };
  std::vector<Aligned> aligned(S);
  if (use_token) {
    std::vector<int64_t> first_row(B, 0);
    std::vector<int64_t> first_time(B, 0);
    {
      auto tb = rows.time.cpu();
      auto acc = tb.accessor<int64_t, 1>();
      int64_t offset = 0;
      for (int64_t b = 0; b < B; ++b) {
        first_row[b] = offset;
        first_time[b] = rows.per_sequence[b] > 0 ? acc[offset] : 0;
        offset += rows.per_sequence[b];
      }
    }
    for (int64_t s = 0; s < S; ++s) {
      const auto& t = teachers[s];
      // Span alignment reads the teacher's rows on the CPU: the cache's, or computed here.
      TokenRows live;
      if (t.span && !t.cached) {
        live = teacher_token_rows(t.hidden, t.logits, teacher_labels[s], c.token, c.chunk_rows);
        if (!teacher_rows[s].probs.defined() && s < 64 && live.probs.defined() && !at::isfinite(live.probs).all().item<bool>())
          parts.nonfinite_teachers |= uint64_t{1} << s;
      }
      std::vector<at::Tensor> cached_probs(B), cached_ids(B);
      int64_t teacher_offset = 0;
      for (int64_t b = 0; b < B; ++b) {
        const int64_t teacher_count = teacher_labels[s].per_sequence[b];
        const int64_t row_offset = teacher_offset;
        teacher_offset += teacher_count;
        if (weight[s][b] <= 0) continue;
        TeacherRows teacher_rows_b;
        if (t.span) {
          if (t.cached) {
            cached_probs[b] = t.cached->token_probs[b].to(at::kDouble).contiguous();
            cached_ids[b] = t.cached->token_ids[b].to(at::kLong).contiguous();
            teacher_rows_b = {cached_probs[b].data_ptr<double>(), cached_ids[b].data_ptr<int64_t>(), cached_probs[b].size(0),
                              cached_probs[b].size(1)};
          } else if (live.probs.defined()) {
            const int64_t width = live.probs.size(1);
            teacher_rows_b = {live.probs.data_ptr<double>() + row_offset * width,
                              live.ids.defined() ? live.ids.data_ptr<int64_t>() + row_offset * width : nullptr,
                              teacher_count, width};
          }
        }
        for (const auto& [ps, pt] : t.pairs[b]) {
          // Label positions of a sequence are contiguous, so the row is an offset from the first.
          const int64_t r = first_row[b] + (ps - first_time[b]);
          if (ps < first_time[b] || ps - first_time[b] >= rows.per_sequence[b]) continue;
          if (t.span) {
            SpanTarget target = t.span->project(*student.batch->rows[b], *t.batch->rows[b], ps, pt, teacher_rows_b);
            if (target.ids.empty()) continue;
            aligned[s].targets.push_back(std::move(target));
          }
          aligned[s].student_row.push_back(r);
          aligned[s].teacher_b.push_back(b);
          aligned[s].teacher_t.push_back(pt);
        }
      }
    }
  }

  // The main pass: one chunk of student logits at a time, every term, backward, freed.
  const double inv_tokens = 1.0 / counts.tokens;
  std::vector<size_t> cursor(S, 0);
  double sft_sum = 0, token_sum = 0;
  for (int64_t start = 0; start < L; start += c.chunk_rows) {
    const int64_t n = std::min(c.chunk_rows, L - start);
    at::Tensor h = hidden.index({rows.batch.narrow(0, start, n), rows.time.narrow(0, start, n)});
    at::Tensor logits = student.logits(h);
    // CE and the graph term's top-k come from one read of the logits (one fused kernel on CUDA).
    at::Tensor ce, graph_probs;
    if (graph_grad.defined()) {
      auto both = kernels::ce_and_softmax_topk(logits, rows.labels.narrow(0, start, n), c.graph_top_k, c.graph_temperature);
      ce = both.ce;
      graph_probs = both.probs;
    } else {
      ce = kernels::cross_entropy_rows_fused(logits, rows.labels.narrow(0, start, n));
    }
    sft_sum += ce.detach().sum().item<double>();
    at::Tensor chunk_loss = ce.sum() * (sft_weight * inv_tokens);
    if (graph_probs.defined())
      chunk_loss = chunk_loss + (graph_probs * graph_grad.narrow(0, start, n)).sum() * (lambda * c.graph_weight);
    for (int64_t s = 0; use_token && s < S; ++s) {
      const auto& a = aligned[s];
      const size_t begin = cursor[s];
      size_t end = begin;
      while (end < a.student_row.size() && a.student_row[end] < start + n) ++end;
      cursor[s] = end;
      if (end == begin) continue;
      const auto& t = teachers[s];
      auto slice = [&](const std::vector<int64_t>& v, int64_t offset, at::Device dev) {
        std::vector<int64_t> part(v.begin() + begin, v.begin() + end);
        for (auto& x : part) x -= offset;
        return at::tensor(part, at::TensorOptions().dtype(at::kLong)).to(dev);
      };
      // Every row of the chunk paired, in order (one teacher, same tokenizer): the logits as they
      // are, not a gathered copy whose backward scatters into another [n, V] buffer.
      bool all_rows = static_cast<int64_t>(end - begin) == n;
      for (size_t i = begin; all_rows && i < end; ++i) all_rows = a.student_row[i] == start + static_cast<int64_t>(i - begin);
      at::Tensor student_logits = all_rows ? logits : logits.index_select(0, slice(a.student_row, start, device));
      std::vector<double> w;
      for (size_t i = begin; i < end; ++i) w.push_back(weight[s][a.teacher_b[i]]);
      at::Tensor row_loss, teacher_logits;
      if (t.span) {
        // Span targets, padded to the widest row with mass 0.
        size_t width = 1;
        for (size_t i = begin; i < end; ++i) width = std::max(width, a.targets[i].ids.size());
        const int64_t m = static_cast<int64_t>(end - begin);
        at::Tensor ids = at::zeros({m, static_cast<int64_t>(width)}, at::TensorOptions().dtype(at::kLong));
        at::Tensor mass = at::zeros({m, static_cast<int64_t>(width)}, at::TensorOptions().dtype(at::kDouble));
        auto ia = ids.accessor<int64_t, 2>();
        auto ma = mass.accessor<double, 2>();
        for (size_t i = begin; i < end; ++i)
          for (size_t j = 0; j < a.targets[i].ids.size(); ++j) {
            ia[i - begin][j] = a.targets[i].ids[j];
            ma[i - begin][j] = a.targets[i].mass[j];
          }
        row_loss = kl_family_on_student_ids(student_logits, ids.to(device), mass.to(device), c.token);
      } else if (t.cached) {
        // Cached rows are the teacher's label rows in order: row = position − first label position.
        std::vector<at::Tensor> probs, ids;
        for (size_t i = begin; i < end; ++i) {
          const int64_t b = a.teacher_b[i];
          const int64_t row = a.teacher_t[i] - (*t.batch).rows[b]->first_label_position();
          probs.push_back(t.cached->token_probs[b][row]);
          ids.push_back(t.cached->token_ids[b][row]);
        }
        row_loss = token_loss_rows_topk(student_logits, at::stack(probs).to(device), at::stack(ids).to(device), c.token,
                                        t.vocab_map);
      } else {
        {
          at::NoGradGuard no_grad;
          const at::Device tdev = t.hidden.device();
          teacher_logits = t.logits(t.hidden.index({slice(a.teacher_b, 0, tdev), slice(a.teacher_t, 0, tdev)})).to(device);
        }
        row_loss = token_loss_rows(student_logits, teacher_logits, c.token, t.vocab_map);
      }
      at::Tensor rows_loss = row_loss * at::tensor(w, at::TensorOptions().dtype(at::kDouble)).to(device).to(row_loss.scalar_type());
      const double rows_sum = rows_loss.detach().sum().item<double>();
      // A non-finite term: name the teacher if its logits are the cause (read only on this path).
      if (!std::isfinite(rows_sum) && s < 64 && teacher_logits.defined() && !at::isfinite(teacher_logits).all().item<bool>())
        parts.nonfinite_teachers |= uint64_t{1} << s;
      token_sum += rows_sum;
      chunk_loss = chunk_loss + rows_loss.sum() * (lambda * inv_tokens);
    }
    chunk_loss.backward();
  }
  parts.sft = sft_sum * inv_tokens;
  parts.token = token_sum * inv_tokens;
  parts.total = sft_weight * parts.sft + lambda * (parts.token + c.graph_weight * parts.graph);
  if (hidden.grad().defined() || student.always_body_backward) {
    if (student.before_body_backward) student.before_body_backward();
    student.hidden.backward(hidden.grad().defined() ? hidden.grad() : at::zeros_like(student.hidden));
  }
  return parts;
}

}  // namespace lf::loss
