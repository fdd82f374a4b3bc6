// Graph-on-Logits Distillation (method.md §2): co-activation graphs of top-k probabilities,
// node features, the sorted closed form of Gromov-Wasserstein, and the entropic GW reference.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace lf::loss {

struct GldOptions {
  std::string feature = "strength";  // strength | self | norm
  bool normalize_features = true;
  int64_t p = 1;                     // 1 or 2
};

// Node features of the rank-node graph C = XᵀX from X [T, k] (top-k probabilities of one sequence),
// without forming C for `strength` (f = Xᵀ(X·1)). Differentiable in X.
at::Tensor rank_node_features(const at::Tensor& X, const GldOptions& options);

// Vocabulary-node features: nodes are the distinct ids in `ids` [T, k]; f_v = Σ_t x_t[v] Σ_j x_t[j].
at::Tensor vocab_node_features(const at::Tensor& X, const at::Tensor& ids, const GldOptions& options);

// Σ_i |f_S↓(i) − f_T↓(i)|^p after sorting both descending (shorter one zero-padded).
at::Tensor sorted_feature_distance(const at::Tensor& f_student, const at::Tensor& f_teacher, int64_t p);

// Features of an explicit graph C [n, n] (for the guarantee tests and ablations).
at::Tensor graph_features(const at::Tensor& C, const std::string& feature);

struct EntropicGwOptions {
  double epsilon = 0.005;
  int64_t max_iter = 1000;
  double tol = 1e-9;
  int64_t sinkhorn_iter = 1000;
  double sinkhorn_tol = 1e-9;
};

// Entropic GW with the square loss and uniform node weights (Peyré, Cuturi & Solomon 2016: projected
// gradient with Sinkhorn inner loops), the algorithm of POT's entropic_gromov_wasserstein2. Graphs of
// different sizes are padded with isolated nodes. Returns the GW value; gradients flow into C and D
// with the coupling held fixed (envelope theorem).
at::Tensor entropic_gw(const at::Tensor& C, const at::Tensor& D, const EntropicGwOptions& options);

}  // namespace lf::loss
