#include "loss/token.h"

#include <ATen/ATen.h>

#include "core/error.h"
#include "kernels/logit_stats.h"

namespace lf::loss {

at::Tensor uld_sorted_rows(const at::Tensor& a, const at::Tensor& b) {
  const int64_t n = std::max(a.size(1), b.size(1));
  auto pad = [n](const at::Tensor& x) { return x.size(1) == n ? x : at::constant_pad_nd(x, {0, n - x.size(1)}, 0.0); };
  return (pad(a) - pad(b.to(a.scalar_type()))).abs().sum(1);
}

namespace {

at::Tensor uld_rows(const at::Tensor& s, const at::Tensor& t, const TokenLossOptions& o) {
  if (o.top_k) {
    // Top-k entries plus one bucket for the rest of the mass.
    auto add_tail = [](const at::Tensor& probs) { return at::cat({probs, (1.0 - probs.sum(1, true)).clamp_min(0.0)}, 1); };
    at::Tensor sp = add_tail(kernels::softmax_topk(s, *o.top_k, o.temperature).probs);
    at::Tensor tp;
    {
      at::NoGradGuard no_grad;
      tp = add_tail(kernels::softmax_topk(t, *o.top_k, o.temperature).probs);
    }
    return uld_sorted_rows(sp, tp);
  }
  at::Tensor sp = std::get<0>(kernels::log_softmax(s, o.temperature).exp().sort(1, /*descending=*/true));
  at::Tensor tp;
  {
    at::NoGradGuard no_grad;
    tp = std::get<0>(kernels::log_softmax(t, o.temperature).exp().sort(1, true));
  }
  return uld_sorted_rows(sp, tp);
}

// KL(p ‖ q) per row over the support of p, with 0 log 0 = 0.
at::Tensor kl_rows(const at::Tensor& p, const at::Tensor& log_p, const at::Tensor& log_q) {
  return (p * (log_p - log_q)).masked_fill(p <= 0, 0.0).sum(1);
}

at::Tensor kl_family_rows(const at::Tensor& s, const at::Tensor& t, const TokenLossOptions& o, const VocabMap& map) {
  const int64_t vs = s.size(1);
  at::Tensor teacher;  // the teacher distribution moved onto student ids [P, Vs]
  {
    at::NoGradGuard no_grad;
    at::Tensor probs, ids;
    if (o.top_k) {
      auto top = kernels::softmax_topk(t, *o.top_k, o.temperature);
      probs = top.probs;
      ids = top.ids;
    } else {
      probs = kernels::log_softmax(t, o.temperature).exp();
      ids = at::arange(t.size(1), at::TensorOptions().dtype(at::kLong).device(t.device())).expand_as(probs);
    }
    at::Tensor table = at::tensor(map.to_student, at::TensorOptions().dtype(at::kLong)).to(t.device());
    at::Tensor mapped = table.index_select(0, ids.flatten()).view_as(ids);
    at::Tensor keep = (mapped >= 0).logical_and(mapped < vs);
    probs = probs.masked_fill(keep.logical_not(), 0.0);
    teacher = at::zeros({t.size(0), vs}, probs.options()).scatter_add(1, mapped.clamp(0, vs - 1), probs);
    teacher = teacher / teacher.sum(1, true).clamp_min(1e-30);
  }
  at::Tensor log_teacher = teacher.clamp_min(1e-30).log();
  at::Tensor log_student = kernels::log_softmax(s, o.temperature);
  at::Tensor rows;
  if (o.type == "kl") {
    rows = kl_rows(teacher, log_teacher, log_student);
  } else {
    // rkl and jsd compare on the teacher's support, with the student renormalised there: outside
    // it the (top-k) teacher has no probability and KL(p_S ‖ p_T) would be infinite.
    at::Tensor support = teacher > 0;
    at::Tensor log_s = log_student.masked_fill(support.logical_not(), -1e30);
    log_s = log_s - at::logsumexp(log_s, 1, true);
    at::Tensor student = log_s.exp().masked_fill(support.logical_not(), 0.0);
    if (o.type == "rkl") {
      rows = kl_rows(student, log_s, log_teacher);
    } else {
      at::Tensor mix = o.beta * teacher + (1.0 - o.beta) * student;
      at::Tensor log_mix = mix.clamp_min(1e-30).log();
      rows = o.beta * kl_rows(teacher, log_teacher, log_mix) + (1.0 - o.beta) * kl_rows(student, log_s, log_mix);
    }
  }
  // A row whose teacher mass mapped nowhere has an all-zero teacher and contributes nothing.
  rows = rows.masked_fill(teacher.sum(1) <= 0, 0.0);
  return rows * (o.temperature * o.temperature);
}

}  // namespace

at::Tensor token_loss_rows(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                           const TokenLossOptions& options, const VocabMap* map) {
  if (options.type == "uld") return uld_rows(student_logits, teacher_logits, options);
  if (options.type == "kl" || options.type == "rkl" || options.type == "jsd") {
    if (!map) throw InputError("loss.token.type=" + options.type + " needs a vocabulary map (alignment.vocab)");
    return kl_family_rows(student_logits, teacher_logits, options, *map);
  }
  throw InputError("loss.token.type: unknown type '" + options.type + "'");
}

}  // namespace lf::loss
