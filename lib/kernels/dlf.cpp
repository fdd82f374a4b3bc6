#include "kernels/dlf.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>  // at::get_num_threads

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "kernels/dlf_rows.h"

#ifdef LOGITFUSE_HAVE_CUDA
#include "kernels/cuda/kernels_cuda.h"
#endif

namespace lf::kernels {

namespace {

// Statistics in float32, or in double when the logits are double (the reference tests run in double).
at::Tensor widen(const at::Tensor& logits, c10::ScalarType type) { return logits.to(type).contiguous(); }

c10::ScalarType compute_type(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_inputs(const at::Tensor& z_large, const at::Tensor& z_small, const std::vector<at::Tensor>& experts,
                  const std::vector<double>& grid) {
  if (z_large.dim() != 2) throw RuntimeFailure("dlf_solve: logits must be [rows, vocab]");
  if (experts.empty()) throw RuntimeFailure("dlf_solve: needs at least one expert");
  if (grid.empty()) throw RuntimeFailure("dlf_solve: the α grid is empty");
  if (!z_small.sizes().equals(z_large.sizes())) throw RuntimeFailure("dlf_solve: small and large logits differ in shape");
  for (const auto& e : experts)
    if (!e.sizes().equals(z_large.sizes())) throw RuntimeFailure("dlf_solve: expert and large logits differ in shape");
}

// Σ_v a[r, v]·b[r, v] for every row, as a batched dot product (no [rows, V] temporary).
at::Tensor row_dot(const at::Tensor& a, const at::Tensor& b) {
  return at::bmm(a.unsqueeze(1), b.unsqueeze(2)).view({a.size(0)});
}

// A masked vocabulary (entries that are −inf in a model, the same ones in all of them) is left out
// of every distribution, as the CUDA kernel does: −inf in all the models, and Δ = 0 there instead of
// −inf − (−inf). Returns the inputs unchanged when nothing is masked.
struct Masked {
  at::Tensor zl, zs;
  std::vector<at::Tensor> experts;
  at::Tensor keep;  // [rows, V] bool, undefined when nothing is masked
};
Masked mask_vocabulary(const at::Tensor& zl, const at::Tensor& zs, const std::vector<at::Tensor>& experts) {
  at::Tensor keep = zl.isfinite() & zs.isfinite();
  for (const auto& z : experts) keep = keep & z.isfinite();
  if (keep.all().item<bool>()) return {zl, zs, experts, at::Tensor()};
  const at::Tensor minus_inf = at::full({}, -std::numeric_limits<double>::infinity(), zl.options());
  Masked out{at::where(keep, zl, minus_inf), at::where(keep, zs, minus_inf), {}, keep};
  for (const auto& z : experts) out.experts.push_back(at::where(keep, z, minus_inf));
  return out;
}

// z_t − z_S, 0 at masked entries.
at::Tensor expert_delta(const at::Tensor& z, const at::Tensor& zs, const at::Tensor& keep) {
  at::Tensor d = z - zs;
  return keep.defined() ? at::where(keep, d, at::zeros({}, d.options())) : d;
}

// KL(Q_u‖Q) and KL(Q‖Q_u) of the small models, [rows, m] each: the shifts the large model should match.
std::pair<at::Tensor, at::Tensor> small_model_targets(const at::Tensor& log_q, const std::vector<at::Tensor>& experts_blk,
                                                      const at::Tensor& keep) {
  const at::Tensor q = log_q.exp();
  std::vector<at::Tensor> fwd, rev;
  for (const auto& z : experts_blk) {
    at::Tensor log_qu = at::log_softmax(z, -1);
    at::Tensor diff = log_qu - log_q;
    if (keep.defined()) diff = at::where(keep, diff, at::zeros({}, diff.options()));
    fwd.push_back(row_dot(log_qu.exp(), diff));
    rev.push_back(-row_dot(q, diff));
  }
  return {at::stack(fwd, 1), at::stack(rev, 1)};
}

// J[r, t, g] = Σ_u (kf[r,t,g] − K1[r,u])² + (kr[r,t,g] − K2[r,u])², and the argmin over (t, g) per row.
struct Choice {
  at::Tensor objectives, expert, alpha, objective;
};
Choice choose(const at::Tensor& kf, const at::Tensor& kr, const at::Tensor& k1, const at::Tensor& k2,
              const at::Tensor& grid) {
  const int64_t rows = kf.size(0), m = kf.size(1), g = kf.size(2);
  at::Tensor j = (kf.unsqueeze(-1) - k1.view({rows, 1, 1, -1})).square().sum(-1) +
                 (kr.unsqueeze(-1) - k2.view({rows, 1, 1, -1})).square().sum(-1);
  // argmin returns the first minimum: ties go to the first expert, then the smallest α index.
  at::Tensor flat = at::argmin(j.reshape({rows, m * g}), 1);
  Choice c;
  c.objectives = j;
  c.expert = at::div(flat, g, "floor");
  c.alpha = grid.index_select(0, at::remainder(flat, g));
  c.objective = j.reshape({rows, m * g}).gather(1, flat.unsqueeze(1)).squeeze(1);
  return c;
}

// z_L + α·(z_t − z_S) with t the chosen expert of each row; rows whose expert is not t add exactly 0.
at::Tensor fuse(const at::Tensor& zl, const at::Tensor& zs, const std::vector<at::Tensor>& experts_blk,
                const at::Tensor& expert, const at::Tensor& alpha, const at::Tensor& keep) {
  at::Tensor fused = zl.clone();
  for (size_t t = 0; t < experts_blk.size(); ++t) {
    at::Tensor w = at::where(expert == static_cast<int64_t>(t), alpha, at::zeros_like(alpha));
    fused.add_(expert_delta(experts_blk[t], zs, keep) * w.unsqueeze(1));
  }
  return fused;
}

at::Tensor grid_tensor(const std::vector<double>& grid, const at::Tensor& like) {
  return at::tensor(grid, at::TensorOptions().dtype(at::kDouble)).to(like.options());
}

// The CPU path: every row solved by the vectorised row kernel of dlf_rows.h (chained exponentials
// over a uniform grid), rows spread over LibTorch's intra-op threads; no [rows, V] temporaries
// besides the fused logits.
template <class T>
DlfSolve solve_rows(const at::Tensor& z_large, const at::Tensor& z_small, const std::vector<at::Tensor>& experts_in,
                    const std::vector<double>& grid, bool want_fused) {
  const auto type = c10::CppTypeToScalarType<T>::value;
  const at::Tensor zl = widen(z_large, type), zs = widen(z_small, type);
  std::vector<at::Tensor> experts;
  std::vector<const T*> expert_data;
  for (const auto& e : experts_in) {
    experts.push_back(widen(e, type));
    expert_data.push_back(experts.back().template data_ptr<T>());
  }
  const int64_t N = zl.size(0), V = zl.size(1), m = static_cast<int64_t>(experts.size()), G = static_cast<int64_t>(grid.size());
  DlfSolve out = allocate_dlf_solve(N, m, G, V, zl.options(), want_fused);
  const rows::DlfRowsOutput<T> into{out.kl_forward.data_ptr<T>(), out.kl_reverse.data_ptr<T>(),
                                    out.small_kl_forward.data_ptr<T>(), out.small_kl_reverse.data_ptr<T>(),
                                    out.all_objectives.data_ptr<T>(), out.expert.data_ptr<int64_t>(),
                                    out.alpha.data_ptr<T>(), out.objective.data_ptr<T>(),
                                    want_fused ? out.fused.data_ptr<T>() : nullptr};
  rows::dlf_solve_rows(zl.data_ptr<T>(), zs.data_ptr<T>(), expert_data.data(), N, m, V,
                       rows::describe_grid(grid.data(), G), into, at::get_num_threads());
  return out;
}

}  // namespace

DlfSolve allocate_dlf_solve(int64_t N, int64_t m, int64_t G, int64_t V, const at::TensorOptions& options, bool fused) {
  DlfSolve out;
  out.kl_forward = at::empty({N, m, G}, options);
  out.kl_reverse = at::empty({N, m, G}, options);
  out.small_kl_forward = at::empty({N, m}, options);
  out.small_kl_reverse = at::empty({N, m}, options);
  out.all_objectives = at::empty({N, m, G}, options);
  out.expert = at::empty({N}, options.dtype(at::kLong));
  out.alpha = at::empty({N}, options);
  out.objective = at::empty({N}, options);
  if (fused) out.fused = at::empty({N, V}, options);
  return out;
}

std::vector<double> alpha_grid(double min, double max, double step) {
  if (!(step > 0) || !(max >= min)) throw InputError("alpha grid: needs step > 0 and max >= min");
  const auto n = static_cast<int64_t>(std::floor((max - min) / step + 1e-9)) + 1;
  std::vector<double> grid;
  for (int64_t i = 0; i < n; ++i) grid.push_back(std::min(max, min + static_cast<double>(i) * step));
  return grid;
}

DlfKls dlf_closed_form_kls(const at::Tensor& z_large, const at::Tensor& delta, const std::vector<double>& grid) {
  at::NoGradGuard no_grad;
  if (grid.empty()) throw RuntimeFailure("dlf_closed_form_kls: the α grid is empty");
  const auto type = compute_type(z_large);
  const at::Tensor zl = widen(z_large, type), d = widen(delta, type);
  const int64_t rows = zl.size(0), g = static_cast<int64_t>(grid.size());
  const at::Tensor a0 = at::logsumexp(zl, -1);
  const at::Tensor e_p = row_dot(at::softmax(zl, -1), d);
  at::Tensor a = at::empty({rows, g}, zl.options()), e = at::empty({rows, g}, zl.options());
  // One [rows, V] scratch buffer, reused for every α: x = z_L + αΔ, then exp(x − max) in place.
  at::Tensor x = at::empty_like(zl);
  for (int64_t i = 0; i < g; ++i) {
    at::add_out(x, zl, d, grid[i]);
    const at::Tensor mx = x.amax(-1, true);
    x.sub_(mx).exp_();
    const at::Tensor s = x.sum(-1);
    a.select(1, i).copy_(s.log() + mx.squeeze(-1));
    e.select(1, i).copy_(row_dot(x, d) / s);
  }
  const at::Tensor alphas = grid_tensor(grid, zl).unsqueeze(0);
  DlfKls out;
  out.forward = alphas * e - a + a0.unsqueeze(1);
  out.reverse = -alphas * e_p.unsqueeze(1) + a - a0.unsqueeze(1);
  return out;
}

DlfSolve dlf_solve(const at::Tensor& z_large, const at::Tensor& z_small, const std::vector<at::Tensor>& experts,
                   const std::vector<double>& grid, const DlfOptions& options) {
  check_inputs(z_large, z_small, experts, grid);
  at::NoGradGuard no_grad;
#ifdef LOGITFUSE_HAVE_CUDA
  if (options.backend == Backend::automatic && cuda::dlf_supports(z_large, experts.size(), grid.size())) {
    return cuda::dlf_solve(z_large, z_small, experts, grid, options.fused, options.cuda_chained);
  }
#endif
  const auto type = compute_type(z_large);
  if (options.backend == Backend::automatic && z_large.device().is_cpu() && z_large.size(0) > 0 && z_large.size(1) > 0)
    return type == at::kDouble ? solve_rows<double>(z_large, z_small, experts, grid, options.fused)
                               : solve_rows<float>(z_large, z_small, experts, grid, options.fused);
  const int64_t rows = z_large.size(0), vocab = z_large.size(1);
  const int64_t block = options.row_block > 0 ? options.row_block : std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(vocab, 1));
  std::vector<at::Tensor> expert_parts, alpha_parts, objective_parts, fused_parts, all_parts, kf_parts, kr_parts, k1_parts,
      k2_parts;
  for (int64_t start = 0; start < rows; start += block) {
    const int64_t n = std::min(block, rows - start);
    std::vector<at::Tensor> ze_in;
    for (const auto& e : experts) ze_in.push_back(widen(e.narrow(0, start, n), type));
    const Masked masked = mask_vocabulary(widen(z_large.narrow(0, start, n), type), widen(z_small.narrow(0, start, n), type), ze_in);
    const at::Tensor &zl = masked.zl, &zs = masked.zs;
    const std::vector<at::Tensor>& ze = masked.experts;
    auto [k1, k2] = small_model_targets(at::log_softmax(zs, -1), ze, masked.keep);
    std::vector<at::Tensor> kf, kr;
    for (const auto& z : ze) {
      DlfKls kls = dlf_closed_form_kls(zl, expert_delta(z, zs, masked.keep), grid);
      kf.push_back(kls.forward);
      kr.push_back(kls.reverse);
    }
    kf_parts.push_back(at::stack(kf, 1));
    kr_parts.push_back(at::stack(kr, 1));
    k1_parts.push_back(k1);
    k2_parts.push_back(k2);
    Choice c = choose(kf_parts.back(), kr_parts.back(), k1, k2, grid_tensor(grid, zl));
    expert_parts.push_back(c.expert);
    alpha_parts.push_back(c.alpha);
    objective_parts.push_back(c.objective);
    all_parts.push_back(c.objectives);
    if (options.fused) fused_parts.push_back(fuse(zl, zs, ze, c.expert, c.alpha, masked.keep));
  }
  DlfSolve out;
  out.expert = at::cat(expert_parts);
  out.alpha = at::cat(alpha_parts);
  out.objective = at::cat(objective_parts);
  out.all_objectives = at::cat(all_parts);
  if (options.fused) out.fused = at::cat(fused_parts);
  out.kl_forward = at::cat(kf_parts);
  out.kl_reverse = at::cat(kr_parts);
  out.small_kl_forward = at::cat(k1_parts);
  out.small_kl_reverse = at::cat(k2_parts);
  return out;
}

DlfSolve dlf_solve_reference(const at::Tensor& z_large, const at::Tensor& z_small, const std::vector<at::Tensor>& experts,
                             const std::vector<double>& grid) {
  check_inputs(z_large, z_small, experts, grid);
  at::NoGradGuard no_grad;
  const auto type = compute_type(z_large);
  std::vector<at::Tensor> ze_in;
  for (const auto& e : experts) ze_in.push_back(widen(e, type));
  const Masked masked = mask_vocabulary(widen(z_large, type), widen(z_small, type), ze_in);
  const at::Tensor &zl = masked.zl, &zs = masked.zs;
  const std::vector<at::Tensor>& ze = masked.experts;
  // Σ p·(log p − log p') over the kept entries only (0·(−inf − −inf) would be NaN).
  auto kl = [&](const at::Tensor& log_a, const at::Tensor& log_b) {
    at::Tensor terms = log_a.exp() * (log_a - log_b);
    if (masked.keep.defined()) terms = at::where(masked.keep, terms, at::zeros({}, terms.options()));
    return terms.sum(-1);
  };
  const at::Tensor log_p = at::log_softmax(zl, -1);
  const at::Tensor log_q = at::log_softmax(zs, -1);
  std::vector<at::Tensor> k1, k2, kf, kr;
  for (const auto& z : ze) {
    const at::Tensor log_qu = at::log_softmax(z, -1);
    k1.push_back(kl(log_qu, log_q));
    k2.push_back(kl(log_q, log_qu));
    std::vector<at::Tensor> f, r;
    for (double alpha : grid) {
      const at::Tensor log_pt = at::log_softmax(zl + alpha * expert_delta(z, zs, masked.keep), -1);
      f.push_back(kl(log_pt, log_p));
      r.push_back(kl(log_p, log_pt));
    }
    kf.push_back(at::stack(f, 1));
    kr.push_back(at::stack(r, 1));
  }
  Choice c = choose(at::stack(kf, 1), at::stack(kr, 1), at::stack(k1, 1), at::stack(k2, 1), grid_tensor(grid, zl));
  DlfSolve out;
  out.expert = c.expert;
  out.alpha = c.alpha;
  out.objective = c.objective;
  out.all_objectives = c.objectives;
  out.fused = fuse(zl, zs, ze, c.expert, c.alpha, masked.keep);
  return out;
}

void apply_multi_expert_criterion(DlfSolve& solve, const std::string& criterion, const at::Tensor& z_large,
                                  const at::Tensor& z_small, const std::vector<at::Tensor>& experts,
                                  const std::vector<double>& grid, at::Tensor* route) {
  if (criterion == "sum") return;
  if (criterion != "active" && criterion != "closest" && criterion != "route")
    throw InputError("fusion.multi_expert: unknown criterion '" + criterion + "'", "use sum, active, closest or route");
  if (criterion == "route" && !route) throw std::logic_error("multi_expert route needs the rows' route state");
  const int64_t rows = solve.kl_forward.size(0), m = solve.kl_forward.size(1), G = solve.kl_forward.size(2);
  at::Tensor own = (solve.kl_forward - solve.small_kl_forward.unsqueeze(2)).square() +
                   (solve.kl_reverse - solve.small_kl_reverse.unsqueeze(2)).square();  // [rows, m, G]
  at::Tensor score = own;
  const Masked masked = mask_vocabulary(z_large, z_small, experts);
  // The expert closest to the large model, per row (argmin: the first expert among equals).
  auto closest_expert = [&] {
    const at::Tensor log_p = at::log_softmax(masked.zl, -1), p = log_p.exp();
    std::vector<at::Tensor> distance;
    for (const auto& z : masked.experts) {
      at::Tensor diff = log_p - at::log_softmax(z, -1);
      if (masked.keep.defined()) diff = at::where(masked.keep, diff, at::zeros({}, diff.options()));
      distance.push_back(row_dot(p, diff));
    }
    return at::argmin(at::stack(distance, 1), 1).to(own.device());  // [rows]
  };
  // The expert surest of the large model's likeliest token, per row: route's choice at a first
  // token. An expert fine-tuned on a task has learned how that task's answers begin; the KL of the
  // whole distributions there is dominated by the near-zero tail and picked one expert for nearly
  // every prompt of both skills with one of the demo's large models (docs/decoding.md).
  auto surest_expert = [&] {
    const at::Tensor token = at::argmax(masked.zl, -1, /*keepdim=*/true);  // [rows, 1]
    std::vector<at::Tensor> log_prob;
    for (const auto& z : masked.experts) log_prob.push_back(at::log_softmax(z, -1).gather(1, token).squeeze(1));
    return at::argmax(at::stack(log_prob, 1), 1).to(own.device());  // [rows]; ties: the first expert
  };
  if (criterion == "closest" || criterion == "route") {
    at::Tensor chosen;
    if (criterion == "route") {
      if (!route->defined()) *route = surest_expert();
      if (route->size(0) != rows) throw std::logic_error("multi_expert route: state rows differ from the batch");
      chosen = route->to(own.device());
    } else {
      chosen = closest_expert();
    }
    const at::Tensor other = at::arange(m, chosen.options()).unsqueeze(0) != chosen.unsqueeze(1);  // [rows, m]
    score = own.masked_fill(other.unsqueeze(2), std::numeric_limits<double>::infinity());
  }
  const at::Tensor flat = at::argmin(score.reshape({rows, m * G}), 1);
  solve.expert = at::div(flat, G, "floor");
  solve.alpha = grid_tensor(grid, solve.kl_forward).index_select(0, at::remainder(flat, G));
  solve.objective = own.reshape({rows, m * G}).gather(1, flat.unsqueeze(1)).squeeze(1);
  solve.fused = fuse(masked.zl, masked.zs, masked.experts, solve.expert, solve.alpha.to(z_large.scalar_type()),
                     masked.keep);
}

}  // namespace lf::kernels
