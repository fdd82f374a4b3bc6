// Token-level distillation terms at aligned positions (method.md §3): ULD on sorted probabilities,
// and the KL family through a teacher→student vocabulary map.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "align/vocab_map.h"

namespace lf::loss {

// The token-level distillation term (loss.token.type): ULD, the KL family (forward, reverse, JSD),
// or none.
enum class TokenLoss { kNone, kUld, kKl, kRkl, kJsd };
// The recipe's word ("none", "uld", "kl", "rkl", "jsd") as the enum; std::invalid_argument otherwise
// (the recipe is validated before it gets here).
TokenLoss parse_token_loss(const std::string& name);
const char* token_loss_name(TokenLoss type);
inline bool is_kl_family(TokenLoss type) { return type == TokenLoss::kKl || type == TokenLoss::kRkl || type == TokenLoss::kJsd; }

struct TokenLossOptions {
  TokenLoss type = TokenLoss::kUld;
  std::optional<int64_t> top_k;   // ULD: top-k plus a tail bucket (default: full); KL family: teacher top-k (default: full)
  double temperature = 1.0;
  double beta = 0.5;              // jsd mixing weight
};

// Per-row losses [P] between student logits [P, Vs] (differentiable) and teacher logits [P, Vt] at
// the same aligned positions. The KL family needs `map` (teacher id -> student id); rows whose
// teacher mass maps nowhere contribute 0. ULD needs no map.
at::Tensor token_loss_rows(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                           const TokenLossOptions& options, const VocabMap* map);

// The same against a teacher known only by its top-k probabilities and ids [P, k] (a logits cache):
// ULD compares top-k plus a tail bucket; the KL family maps the top-k ids.
at::Tensor token_loss_rows_topk(const at::Tensor& student_logits, const at::Tensor& teacher_probs,
                                const at::Tensor& teacher_ids, const TokenLossOptions& options, const VocabMap* map);

// The KL family against a teacher given as mass on student ids ([P, n] each, no grad), as span
// alignment produces it: each row is normalised to a distribution here; a row without mass
// contributes 0. Padding entries carry mass 0.
at::Tensor kl_family_on_student_ids(const at::Tensor& student_logits, const at::Tensor& student_ids, const at::Tensor& mass,
                                    const TokenLossOptions& options);

// ULD from sorted probabilities directly (used by the cached-teacher path too): rows of student
// probabilities sorted descending [P, a] and teacher ones [P, b]; the shorter is zero-padded.
at::Tensor uld_sorted_rows(const at::Tensor& student_sorted, const at::Tensor& teacher_sorted);

}  // namespace lf::loss
