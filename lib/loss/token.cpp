#include "loss/token.h"

#include <ATen/ATen.h>

#include "core/error.h"
#include "kernels/logit_stats.h"
#include "kernels/row_losses.h"

namespace lf::loss {

at::Tensor uld_sorted_rows(const at::Tensor& a, const at::Tensor& b) {
  const int64_t n = std::max(a.size(1), b.size(1));
  auto pad = [n](const at::Tensor& x) { return x.size(1) == n ? x : at::constant_pad_nd(x, {0, n - x.size(1)}, 0.0); };
  return (pad(a) - pad(b.to(a.scalar_type()))).abs().sum(1);
}

namespace {

at::Tensor with_tail(const at::Tensor& probs) { return at::cat({probs, (1.0 - probs.sum(1, true)).clamp_min(0.0)}, 1); }

// ULD against a teacher given by its top-k probabilities: the student's top-k plus a tail bucket.
at::Tensor uld_topk_rows(const at::Tensor& s, const at::Tensor& teacher_probs, const TokenLossOptions& o) {
  at::Tensor sp = with_tail(kernels::softmax_topk(s, teacher_probs.size(1), o.temperature).probs);
  return uld_sorted_rows(sp, with_tail(teacher_probs));
}

at::Tensor uld_rows(const at::Tensor& s, const at::Tensor& t, const TokenLossOptions& o) {
  if (o.top_k) {
    at::Tensor tp;
    {
      at::NoGradGuard no_grad;
      tp = kernels::softmax_topk(t, *o.top_k, o.temperature).probs;
    }
    return uld_topk_rows(s, tp, o);
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

// The KL family against a teacher given as probabilities over its ids ([P, n] each, no grad),
// moved onto student ids through the vocabulary map.
at::Tensor kl_family_rows(const at::Tensor& s, at::Tensor probs, const at::Tensor& ids, const TokenLossOptions& o,
                          const VocabMap& map) {
  at::Tensor mapped;
  {
    at::NoGradGuard no_grad;
    at::Tensor table = at::tensor(map.to_student, at::TensorOptions().dtype(at::kLong)).to(ids.device());
    mapped = table.index_select(0, ids.flatten().to(at::kLong).clamp(0, table.size(0) - 1)).view(ids.sizes());
    at::Tensor keep = (mapped >= 0).logical_and(mapped < s.size(1)).logical_and(ids < table.size(0));
    probs = probs.to(s.device()).masked_fill(keep.logical_not().to(s.device()), 0.0);
  }
  return kl_family_on_student_ids(s, mapped.to(s.device()), probs, o);
}

}  // namespace

namespace {

// The KL family between the student's logits [P, Vs] and a teacher distribution on student ids
// (`teacher` [P, Vs], rows summing to 1 or all 0, and its log), no grad through the teacher.
at::Tensor kl_family_against(const at::Tensor& s, const at::Tensor& teacher, const at::Tensor& log_teacher,
                             const TokenLossOptions& o) {
  at::Tensor log_student = kernels::log_softmax(s, o.temperature);
  at::Tensor rows;
  if (o.type == TokenLoss::kKl) {
    rows = kl_rows(teacher, log_teacher, log_student);
  } else if (o.type == TokenLoss::kRkl || o.type == TokenLoss::kJsd) {
    // rkl and jsd compare on the teacher's support, with the student renormalised there: outside
    // it the (top-k) teacher has no probability and KL(p_S ‖ p_T) would be infinite.
    at::Tensor support = teacher > 0;
    at::Tensor log_s = log_student.masked_fill(support.logical_not(), -1e30);
    log_s = log_s - at::logsumexp(log_s, 1, true);
    at::Tensor student = log_s.exp().masked_fill(support.logical_not(), 0.0);
    if (o.type == TokenLoss::kRkl) {
      rows = kl_rows(student, log_s, log_teacher);
    } else {
      at::Tensor mix = o.beta * teacher + (1.0 - o.beta) * student;
      at::Tensor log_mix = mix.clamp_min(1e-30).log();
      rows = o.beta * kl_rows(teacher, log_teacher, log_mix) + (1.0 - o.beta) * kl_rows(student, log_s, log_mix);
    }
  } else {
    throw InputError(std::string("loss.token.type=") + token_loss_name(o.type) + " does not compare token identities (use kl, rkl or jsd)");
  }
  // A row whose teacher mass mapped nowhere has an all-zero teacher and contributes nothing.
  rows = rows.masked_fill(teacher.sum(1) <= 0, 0.0);
  return rows * (o.temperature * o.temperature);
}

// True when the map sends every teacher id to the same student id and the vocabularies have one size:
// the teacher's full distribution is then already on student ids (same-tokenizer teachers).
bool is_identity(const VocabMap& map, int64_t student_vocab, int64_t teacher_vocab) {
  if (teacher_vocab != student_vocab || static_cast<int64_t>(map.to_student.size()) < teacher_vocab) return false;
  for (int64_t i = 0; i < teacher_vocab; ++i)
    if (map.to_student[i] != i) return false;
  return true;
}

}  // namespace

at::Tensor kl_family_on_student_ids(const at::Tensor& s, const at::Tensor& student_ids, const at::Tensor& mass,
                                    const TokenLossOptions& o) {
  const int64_t vs = s.size(1);
  at::Tensor teacher;  // the teacher distribution on student ids [P, Vs]
  {
    at::NoGradGuard no_grad;
    at::Tensor probs = mass.to(s.device()).to(s.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
    teacher = at::zeros({s.size(0), vs}, probs.options()).scatter_add(1, student_ids.to(s.device()).clamp(0, vs - 1), probs);
    teacher = teacher / teacher.sum(1, true).clamp_min(1e-30);
  }
  return kl_family_against(s, teacher, teacher.clamp_min(1e-30).log(), o);
}

at::Tensor token_loss_rows(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                           const TokenLossOptions& options, const VocabMap* map) {
  if (options.type == TokenLoss::kUld) return uld_rows(student_logits, teacher_logits, options);
  if (is_kl_family(options.type)) {
    if (!map) throw InputError(std::string("loss.token.type=") + token_loss_name(options.type) + " needs a vocabulary map (alignment.vocab)");
    if (!options.top_k && is_identity(*map, student_logits.size(1), teacher_logits.size(1))) {
      if (options.type == TokenLoss::kKl)
        return kernels::full_kl_rows(student_logits, teacher_logits.to(student_logits.device()), options.temperature);
      // Same vocabulary, full distributions: no mapping, no scatter into a second [P, V] buffer.
      at::Tensor log_teacher;
      {
        at::NoGradGuard no_grad;
        log_teacher = kernels::log_softmax(teacher_logits.to(student_logits.device()), options.temperature)
                          .to(student_logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
      }
      return kl_family_against(student_logits, log_teacher.exp(), log_teacher, options);
    }
    at::Tensor probs, ids;
    {
      at::NoGradGuard no_grad;
      if (options.top_k) {
        auto top = kernels::softmax_topk(teacher_logits, *options.top_k, options.temperature);
        probs = top.probs;
        ids = top.ids;
      } else {
        probs = kernels::log_softmax(teacher_logits, options.temperature).exp();
        ids = at::arange(teacher_logits.size(1), at::TensorOptions().dtype(at::kLong).device(teacher_logits.device()))
                  .expand_as(probs);
      }
    }
    return kl_family_rows(student_logits, probs, ids, options, *map);
  }
  throw InputError(std::string("loss.token.type: ") + token_loss_name(options.type) + " has no per-row loss");
}

at::Tensor token_loss_rows_topk(const at::Tensor& student_logits, const at::Tensor& teacher_probs,
                                const at::Tensor& teacher_ids, const TokenLossOptions& options, const VocabMap* map) {
  if (options.type == TokenLoss::kUld) return uld_topk_rows(student_logits, teacher_probs.to(student_logits.device()), options);
  if (is_kl_family(options.type)) {
    if (!map) throw InputError(std::string("loss.token.type=") + token_loss_name(options.type) + " needs a vocabulary map (alignment.vocab)");
    return kl_family_rows(student_logits, teacher_probs, teacher_ids, options, *map);
  }
  throw InputError(std::string("loss.token.type: ") + token_loss_name(options.type) + " has no per-row loss");
}

TokenLoss parse_token_loss(const std::string& name) {
  if (name == "none") return TokenLoss::kNone;
  if (name == "uld") return TokenLoss::kUld;
  if (name == "kl") return TokenLoss::kKl;
  if (name == "rkl") return TokenLoss::kRkl;
  if (name == "jsd") return TokenLoss::kJsd;
  throw std::invalid_argument("unknown token loss '" + name + "'");
}

const char* token_loss_name(TokenLoss type) {
  switch (type) {
    case TokenLoss::kNone: return "none";
    case TokenLoss::kUld: return "uld";
    case TokenLoss::kKl: return "kl";
    case TokenLoss::kRkl: return "rkl";
    case TokenLoss::kJsd: return "jsd";
  }
  return "?";
}

}  // namespace lf::loss
