// `logitfuse bench kernels`: the logit kernels of issue 7 against the device's copy bandwidth and
// against the LibTorch implementation, measured in the same run. Each row: the fused time, the
// bytes it must move at least, the effective GB/s and its share of the copy bandwidth, the LibTorch
// time and the speed-up. One JSON line per kernel, then a table.
#include <CLI/CLI.hpp>
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <iostream>

#include "commands.h"
#include "core/error.h"
#include "kernels/dlf.h"
#include "kernels/logit_stats.h"
#include "loss/gld.h"
#include "model/checkpoint.h"

namespace lf::app {

namespace {

using kernels::Backend;

struct Row {
  std::string name;
  double bytes = 0, fused_ms = 0, aten_ms = 0;
};

}  // namespace

void add_bench_kernels(CLI::App& bench) {
  struct Options {
    std::string device = "cuda", dtype = "bf16", dlf_dtype = "fp32";
    int64_t rows = 4096, vocab = 151936, k = 10, iters = 20, warmup = 3;
    int64_t dlf_batch = 256, dlf_vocab = 32000, experts = 4;
    double alpha_min = 0.0, alpha_max = 2.0, alpha_step = 0.1;
    bool skip_aten = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = bench.add_subcommand("kernels", "The fused logit kernels vs copy bandwidth and vs LibTorch");
  cmd->add_option("--device", opt->device)->capture_default_str();
  cmd->add_option("--rows", opt->rows, "logit rows T of the top-k / GLD kernels")->capture_default_str();
  cmd->add_option("--vocab", opt->vocab)->capture_default_str();
  cmd->add_option("--k", opt->k)->capture_default_str();
  cmd->add_option("--dtype", opt->dtype, "logits dtype of the top-k / GLD kernels")->capture_default_str();
  cmd->add_option("--dlf-batch", opt->dlf_batch)->capture_default_str();
  cmd->add_option("--dlf-vocab", opt->dlf_vocab)->capture_default_str();
  cmd->add_option("--experts", opt->experts)->capture_default_str();
  cmd->add_option("--alpha-min", opt->alpha_min)->capture_default_str();
  cmd->add_option("--alpha-max", opt->alpha_max)->capture_default_str();
  cmd->add_option("--alpha-step", opt->alpha_step)->capture_default_str();
  cmd->add_option("--dlf-dtype", opt->dlf_dtype)->capture_default_str();
  cmd->add_option("--iters", opt->iters)->capture_default_str();
  cmd->add_option("--warmup", opt->warmup)->capture_default_str();
  cmd->add_flag("--skip-aten", opt->skip_aten, "time only the fused kernels");
  cmd->callback([opt] {
    if (opt->rows < 1 || opt->vocab < 2 || opt->k < 1 || opt->iters < 1 || opt->dlf_batch < 1 || opt->experts < 1)
      throw InputError("bench kernels: sizes and --iters must be positive");
    const auto device = parse_device(opt->device);
    const auto dtype = parse_dtype(opt->dtype, "--dtype");
    const auto dlf_dtype = parse_dtype(opt->dlf_dtype, "--dlf-dtype");
    auto time = [&](auto&& f) {
      for (int64_t i = 0; i < opt->warmup; ++i) f();
      synchronize(device);
      const auto start = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < opt->iters; ++i) f();
      synchronize(device);
      return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / opt->iters;
    };
    const double element = static_cast<double>(at::elementSize(dtype));
    const double logits_bytes = static_cast<double>(opt->rows) * opt->vocab * element;
    at::Tensor logits = (at::randn({opt->rows, opt->vocab}, at::TensorOptions().device(device)) * 3).to(dtype);
    at::Tensor labels = at::randint(opt->vocab, {opt->rows}, at::TensorOptions().dtype(at::kLong).device(device));
    std::printf("device %s; top-k/GLD logits [%lld, %lld] %s, k=%lld; DLF [%lld, %lld] %s; %lld iterations\n",
                device.str().c_str(), static_cast<long long>(opt->rows), static_cast<long long>(opt->vocab),
                opt->dtype.c_str(), static_cast<long long>(opt->k), static_cast<long long>(opt->dlf_batch),
                static_cast<long long>(opt->dlf_vocab), opt->dlf_dtype.c_str(), static_cast<long long>(opt->iters));
    std::printf("%-24s %10s %10s %9s %8s %11s %9s\n", "kernel", "fused ms", "min MB", "GB/s", "of copy", "LibTorch ms",
                "speed-up");
    std::fflush(stdout);
    double copy_gbs = 0;
    auto report = [&](const Row& r) {
      const double gbs = r.bytes / (r.fused_ms * 1e6);
      if (copy_gbs == 0) copy_gbs = gbs;
      std::printf("%-24s %10.4f %10.1f %9.1f %7.0f%% %11s %9s\n", r.name.c_str(), r.fused_ms, r.bytes / 1e6, gbs,
                  100 * gbs / copy_gbs, r.aten_ms > 0 ? fmt::format("{:.4f}", r.aten_ms).c_str() : "-",
                  r.aten_ms > 0 ? fmt::format("{:.1f}x", r.aten_ms / r.fused_ms).c_str() : "-");
      std::fflush(stdout);
      nlohmann::json line = {{"bench", "kernels"}, {"kernel", r.name}, {"ms", r.fused_ms}, {"bytes", r.bytes},
                             {"gb_per_s", gbs}, {"of_copy", gbs / copy_gbs}, {"device", device.str()}};
      if (r.aten_ms > 0) {
        line["libtorch_ms"] = r.aten_ms;
        line["speedup"] = r.aten_ms / r.fused_ms;
      }
      std::cerr << line.dump() << std::endl;
    };

    // The device's copy bandwidth on the same tensor (read + write).
    {
      at::Tensor dst = at::empty_like(logits);
      const double ms = time([&] { dst.copy_(logits); });
      report({"copy (read+write)", 2 * logits_bytes, ms, 0});
    }

    // Forward statistics: top-k, log-sum-exp, tail (a logits cache's pass).
    {
      at::NoGradGuard no_grad;
      Row row{"top-k stats forward", logits_bytes};
      row.fused_ms = time([&] { kernels::softmax_topk_stats(logits, opt->k, 1.0); });
      if (!opt->skip_aten) row.aten_ms = time([&] { kernels::softmax_topk_stats(logits, opt->k, 1.0, Backend::aten); });
      report(row);
    }

    // GLD forward + backward: top-k probabilities -> rank-node features -> sorted distance to a
    // teacher's, backward into the logits (read, re-read, write the gradient).
    const at::Tensor teacher_features = [&] {
      at::NoGradGuard no_grad;
      at::Tensor t = kernels::softmax_topk((at::randn_like(logits, at::kFloat) * 3), opt->k, 1.0, Backend::aten).probs;
      return loss::rank_node_features(t, loss::GldOptions{});
    }();
    auto gld_step = [&](Backend backend, bool with_ce) {
      at::Tensor x = logits.detach().requires_grad_(true);
      at::Tensor loss;
      if (with_ce) {
        auto both = kernels::ce_and_softmax_topk(x, labels, opt->k, 1.0, backend);
        loss = both.ce.mean() +
               loss::sorted_feature_distance(loss::rank_node_features(both.probs, loss::GldOptions{}), teacher_features, 1);
      } else {
        at::Tensor probs = kernels::softmax_topk(x, opt->k, 1.0, backend).probs;
        loss = loss::sorted_feature_distance(loss::rank_node_features(probs, loss::GldOptions{}), teacher_features, 1);
      }
      loss.backward();
    };
    for (bool with_ce : {false, true}) {
      Row row{with_ce ? "CE + GLD fwd+bwd" : "GLD fwd+bwd", 3 * logits_bytes};
      row.fused_ms = time([&] { gld_step(Backend::automatic, with_ce); });
      if (!opt->skip_aten) row.aten_ms = time([&] { gld_step(Backend::aten, with_ce); });
      report(row);
    }
    logits = at::Tensor();
    labels = at::Tensor();

    // The DLF solve of one decoding step, fused logits included.
    {
      at::NoGradGuard no_grad;
      const auto grid = kernels::alpha_grid(opt->alpha_min, opt->alpha_max, opt->alpha_step);
      auto randn = [&] { return at::randn({opt->dlf_batch, opt->dlf_vocab}, at::TensorOptions().device(device)) * 3; };
      const at::Tensor zl = randn().to(dlf_dtype), zs_f = randn();
      std::vector<at::Tensor> experts;
      for (int64_t i = 0; i < opt->experts; ++i) experts.push_back((zs_f + randn() * 0.5).to(dlf_dtype));
      const at::Tensor zs = zs_f.to(dlf_dtype);
      const double in = static_cast<double>(opt->dlf_batch) * opt->dlf_vocab * at::elementSize(dlf_dtype);
      Row row{"DLF solve " + std::to_string(opt->experts) + "x" + std::to_string(grid.size()) + " alpha", (opt->experts + 2) * in +
                                                                   static_cast<double>(opt->dlf_batch) * opt->dlf_vocab * 4};
      row.fused_ms = time([&] { kernels::dlf_solve(zl, zs, experts, grid); });
      kernels::DlfOptions aten;
      aten.backend = Backend::aten;
      if (!opt->skip_aten) row.aten_ms = time([&] { kernels::dlf_solve(zl, zs, experts, grid, aten); });
      report(row);
      // The chained-exponential kernel (DlfOptions::cuda_chained), and how far its J is from the
      // default kernel's, so one run shows whether it is both faster and correct.
      kernels::DlfOptions chained;
      chained.cuda_chained = true;
      Row chain_row{"DLF solve chained", row.bytes};
      chain_row.fused_ms = time([&] { kernels::dlf_solve(zl, zs, experts, grid, chained); });
      chain_row.aten_ms = row.aten_ms;
      report(chain_row);
      const auto base = kernels::dlf_solve(zl, zs, experts, grid);
      const auto other = kernels::dlf_solve(zl, zs, experts, grid, chained);
      const double j_scale = std::max(1.0, base.all_objectives.abs().max().item<double>());
      std::printf("  chained vs default: max |J diff| / max(1, |J|) = %.3g, same choice on %.1f%% of rows\n",
                  (other.all_objectives - base.all_objectives).abs().max().item<double>() / j_scale,
                  100.0 * ((other.expert == base.expert) & ((other.alpha - base.alpha).abs() < 1e-6))
                              .to(at::kFloat).mean().item<double>());
    }

  });
}

}  // namespace lf::app
