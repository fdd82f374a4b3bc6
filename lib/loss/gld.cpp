#include "loss/gld.h"

#include <ATen/ATen.h>

#include "core/error.h"

namespace lf::loss {

namespace {

at::Tensor finish_features(at::Tensor f, bool normalize) {
  if (normalize) f = f / f.sum().clamp_min(1e-12);
  return f;
}

}  // namespace

at::Tensor rank_node_features(const at::Tensor& X, const GldOptions& options) {
  at::Tensor x = X.scalar_type() == at::kDouble ? X : X.to(at::kFloat);
  at::Tensor f;
  if (options.feature == "strength") {
    f = at::matmul(x.t(), x.sum(1));  // Xᵀ(X·1): row sums of C without forming it
  } else if (options.feature == "self") {
    f = x.pow(2).sum(0);  // C_ii
  } else if (options.feature == "norm") {
    f = at::matmul(x.t(), x).norm(2, 1);  // ‖C_i·‖₂; C is only k×k
  } else {
    throw InputError("loss.graph.feature: unknown feature '" + options.feature + "'");
  }
  return finish_features(f, options.normalize_features);
}

at::Tensor vocab_node_features(const at::Tensor& X, const at::Tensor& ids, const GldOptions& options) {
  if (options.feature != "strength")
    throw InputError("loss.graph.nodes=vocab supports feature=strength only (got '" + options.feature + "')");
  at::Tensor x = X.scalar_type() == at::kDouble ? X : X.to(at::kFloat);
  auto [unique_ids, inverse] = at::_unique(ids.flatten(), /*sorted=*/true, /*return_inverse=*/true);
  at::Tensor weights = (x * x.sum(1, true)).flatten();  // x_t[v] Σ_j x_t[j] for each entry
  at::Tensor f = at::zeros({unique_ids.size(0)}, x.options()).index_add(0, inverse, weights);
  return finish_features(f, options.normalize_features);
}

at::Tensor sorted_feature_distance(const at::Tensor& f_student, const at::Tensor& f_teacher, int64_t p) {
  const int64_t n = std::max(f_student.size(0), f_teacher.size(0));
  auto pad = [n](const at::Tensor& f) {
    at::Tensor sorted = std::get<0>(f.sort(0, /*descending=*/true));
    return sorted.size(0) == n ? sorted : at::cat({sorted, at::zeros({n - sorted.size(0)}, sorted.options())});
  };
  at::Tensor diff = (pad(f_student) - pad(f_teacher.to(f_student.scalar_type()))).abs();
  return p == 1 ? diff.sum() : diff.pow(static_cast<double>(p)).sum();
}

at::Tensor graph_features(const at::Tensor& C, const std::string& feature) {
  if (feature == "strength") return C.sum(1);
  if (feature == "self") return C.diagonal();
  if (feature == "norm") return C.norm(2, 1);
  throw InputError("unknown graph feature '" + feature + "'");
}

namespace {

// POT's sinkhorn_knopp, in double precision.
at::Tensor sinkhorn(const at::Tensor& a, const at::Tensor& b, const at::Tensor& M, double reg, int64_t iters, double tol) {
  at::Tensor u = at::full_like(a, 1.0 / a.size(0)), v = at::full_like(b, 1.0 / b.size(0));
  at::Tensor K = at::exp(M / -reg);
  at::Tensor Kp = K / a.unsqueeze(1);
  for (int64_t it = 0; it < iters; ++it) {
    at::Tensor u_prev = u, v_prev = v;
    at::Tensor Ktu = at::matmul(K.t(), u);
    v = b / Ktu;
    u = 1.0 / at::matmul(Kp, v);
    if ((Ktu == 0).any().item<bool>() || !at::isfinite(u).all().item<bool>() || !at::isfinite(v).all().item<bool>()) {
      u = u_prev;  // numerical trouble: keep the last good scaling, as POT does
      v = v_prev;
      break;
    }
    if (it % 10 == 0) {
      at::Tensor marginal = v * at::matmul(K.t(), u);
      if ((marginal - b).norm().item<double>() < tol) break;
    }
  }
  return u.unsqueeze(1) * K * v.unsqueeze(0);
}

}  // namespace

at::Tensor entropic_gw(const at::Tensor& C_in, const at::Tensor& D_in, const EntropicGwOptions& options) {
  const int64_t n = std::max(C_in.size(0), D_in.size(0));
  auto pad = [n](const at::Tensor& G) {
    return G.size(0) == n ? G : at::constant_pad_nd(G, {0, n - G.size(1), 0, n - G.size(0)}, 0.0);
  };
  at::Tensor C = pad(C_in), D = pad(D_in);
  at::Tensor coupling;
  {
    at::NoGradGuard no_grad;
    at::Tensor c = C.detach().to(at::kDouble).cpu(), d = D.detach().to(at::kDouble).cpu();
    at::Tensor p = at::full({n}, 1.0 / n, c.options()), q = p.clone();
    // init_matrix for the square loss: constC = (C² p) 1ᵀ + 1 (qᵀ (D²)ᵀ), hC1 = C, hC2 = 2D.
    at::Tensor constC = at::matmul(c.pow(2), p).unsqueeze(1) + at::matmul(d.pow(2), q).unsqueeze(0);
    at::Tensor T = at::outer(p, q);
    double err = 1.0;
    for (int64_t it = 0; err > options.tol && it < options.max_iter; ++it) {
      at::Tensor previous = T;
      at::Tensor grad = 2 * (constC - at::matmul(at::matmul(c, T), (2 * d).t()));
      T = sinkhorn(p, q, grad, options.epsilon, options.sinkhorn_iter, options.sinkhorn_tol);
      if (it % 10 == 0) err = (T - previous).norm().item<double>();
    }
    coupling = T;
  }
  // gwloss = Σ (constC − C T (2D)ᵀ) ⊙ T, differentiable in C and D with T fixed.
  at::Tensor T = coupling.to(C.scalar_type()).to(C.device());
  at::Tensor p = at::full({n}, 1.0 / n, C.options());
  at::Tensor constC = at::matmul(C.pow(2), p).unsqueeze(1) + at::matmul(D.pow(2), p).unsqueeze(0);
  return ((constC - at::matmul(at::matmul(C, T), (2 * D).t())) * T).sum();
}

}  // namespace lf::loss
