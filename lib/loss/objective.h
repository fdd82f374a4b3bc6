// The training objective of method.md §1 for one micro-batch, computed over streamed logits:
//   L = (1 − λ)·L_SFT + λ·Σ_s w_s·(L_tok(S, T_s) + β·L_GLD(S, T_s))
// Logits exist one chunk of positions at a time: the student's LM head runs on a slice of hidden
// states, the slice is reduced to the statistics the terms need and backpropagated, then freed.
// GLD, a sequence-level term, is solved on the T×k top-k probabilities first (a cheap no-grad
// pass), and its gradient with respect to them is then injected chunk by chunk.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "align/positions.h"
#include "align/span.h"
#include "align/vocab_map.h"
#include "data/batch.h"
#include "loss/gld.h"
#include "loss/token.h"

namespace lf::loss {

// Maps hidden-state rows [n, d] to logits [n, V] over the model's real vocabulary (padding rows
// beyond the tokenizer's vocabulary already dropped).
using LogitsFn = std::function<at::Tensor(const at::Tensor&)>;

struct StudentSide {
  at::Tensor hidden;  // [B, T, d], part of the autograd graph
  LogitsFn logits;    // differentiable
  const ModelBatch* batch = nullptr;
  // Called once the chunked loss is done, right before the backward through the transformer (the
  // optimizer arms its overlapped gradient reduction there).
  std::function<void()> before_body_backward;
  // Run the backward through the transformer even when this batch gives the hidden states no
  // gradient (no label rows): a sharded (ZeRO-3) student's backward is collective.
  bool always_body_backward = false;
};

// A teacher's rows computed elsewhere (read from a logits cache, or answered by a server) instead of
// its hidden states here: per batch row, the top-k probabilities and ids of its label rows at the
// graph temperature and at the token temperature, and its CE.
struct PrecomputedTeacherRows {
  std::vector<at::Tensor> graph_probs, graph_ids, token_probs, token_ids;
  std::vector<double> ce;
};

struct TeacherSide {
  at::Tensor hidden;  // [B, Tt, d], no grad (undefined for a teacher with precomputed rows)
  LogitsFn logits;    // evaluated under no-grad
  const ModelBatch* batch = nullptr;
  std::vector<PositionPairs> pairs;  // per row: (student position, teacher position)
  const VocabMap* vocab_map = nullptr;
  // Span alignment (pairs from span_pairs): the KL family compares the student with the teacher's
  // distribution over the student's next token, projected from the teacher's rows; vocab_map unused.
  const SpanProjector* span = nullptr;
  double weight = 1.0;  // normalised mixing weight (uniform / weights)
  std::shared_ptr<PrecomputedTeacherRows> precomputed;  // set for a teacher read from a cache or a server
};

// How teachers are mixed (loss.teacher_mix): uniformly, by teachers.N.weight, or per sequence to the
// teacher with the lowest token-mean CE.
enum class TeacherMix { kUniform, kWeights, kMinCe };
// GLD's graph nodes (loss.graph.nodes): top-k ranks, or vocabulary ids; and its solver (loss.graph.solver).
enum class GraphNodes { kRank, kVocab };
enum class GraphSolver { kSorted, kEntropic };
// The recipe's words as the enums; std::invalid_argument otherwise (the recipe is validated first).
TeacherMix parse_teacher_mix(const std::string& name);
GraphNodes parse_graph_nodes(const std::string& name);
GraphSolver parse_graph_solver(const std::string& name);

struct ObjectiveConfig {
  double distill_weight = 0.5;  // λ
  TeacherMix teacher_mix = TeacherMix::kUniform;
  TokenLossOptions token;
  bool graph = true;
  double graph_weight = 1.0;  // β
  int64_t graph_top_k = 10;
  double graph_temperature = 1.0;
  GraphNodes graph_nodes = GraphNodes::kRank;
  GraphSolver graph_solver = GraphSolver::kSorted;
  GldOptions gld;
  EntropicGwOptions entropic;
  int64_t chunk_rows = 1024;  // logit rows alive at once
  // The SFT coefficient; unset: 1 − λ. On-policy distillation sets it apart from λ: its batch of
  // the student's own completions has no SFT term (0), the data's batch keeps 1 − λ.
  std::optional<double> sft_weight;
};

// Global normalisers: response tokens and sequences of the whole step (all micro-batches, all ranks).
struct GlobalCounts {
  double tokens = 0;
  double sequences = 0;
};

// What this micro-batch contributed to each term (already divided by the global counts).
struct LossParts {
  double total = 0, sft = 0, token = 0, graph = 0;
  // Bit s set: teacher s gave non-finite probabilities on this batch (so the error can name it).
  uint64_t nonfinite_teachers = 0;
  LossParts& operator+=(const LossParts& o) {
    total += o.total; sft += o.sft; token += o.token; graph += o.graph;
    nonfinite_teachers |= o.nonfinite_teachers;
    return *this;
  }
};

// Computes the objective and runs backward into the student (gradients accumulate in its
// parameters). With no teachers it is plain SFT.
LossParts backward_fusion_loss(const StudentSide& student, const std::vector<TeacherSide>& teachers,
                               const ObjectiveConfig& config, const GlobalCounts& counts);

}  // namespace lf::loss
