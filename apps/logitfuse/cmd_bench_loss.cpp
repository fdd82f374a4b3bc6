// `logitfuse bench loss`: forward + backward time of one loss term on random logits [T, V], as one
// JSON line. bench/loss_terms.py runs each term in its own process (for its peak memory) and
// prints the ratios against plain cross entropy on the same logits.
#include <CLI/CLI.hpp>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <iostream>

#include "commands.h"
#include "core/error.h"
#include "kernels/logit_stats.h"
#include "loss/gld.h"
#include "loss/token.h"
#include "model/checkpoint.h"

namespace lf::app {

void add_bench_loss(CLI::App& bench) {
  struct Options {
    std::string term = "ce", device = "cpu", dtype = "fp32";
    int64_t rows = 1024, vocab = 32000, k = 10, iters = 5, warmup = 1, threads = 0;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = bench.add_subcommand("loss", "Forward+backward time of a loss term on random logits");
  cmd->add_option("--term", opt->term, "none|ce|gld|uld|uld_topk|ce_gld_uld_topk")
      ->check(CLI::IsMember({"none", "ce", "gld", "uld", "uld_topk", "ce_gld_uld_topk"}))
      ->capture_default_str();
  cmd->add_option("--rows", opt->rows, "logit rows T")->capture_default_str();
  cmd->add_option("--vocab", opt->vocab, "vocabulary V")->capture_default_str();
  cmd->add_option("--k", opt->k, "top-k")->capture_default_str();
  cmd->add_option("--iters", opt->iters)->capture_default_str();
  cmd->add_option("--warmup", opt->warmup)->capture_default_str();
  cmd->add_option("--threads", opt->threads)->capture_default_str();
  cmd->add_option("--device", opt->device)->capture_default_str();
  cmd->add_option("--dtype", opt->dtype, "logits dtype fp32|bf16")->capture_default_str();
  cmd->callback([opt] {
    if (opt->threads > 0) at::set_num_threads(static_cast<int>(opt->threads));
    const auto device = parse_device(opt->device);
    auto options = at::TensorOptions().device(device).dtype(parse_dtype(opt->dtype, "--dtype"));
    auto generator = at::detail::createCPUGenerator(0);
    at::Tensor logits = (at::randn({opt->rows, opt->vocab}, generator) * 3).to(options).requires_grad_(true);
    at::Tensor teacher = (at::randn({opt->rows, opt->vocab}, generator) * 3).to(options);
    at::Tensor labels = at::randint(opt->vocab, {opt->rows}, generator, at::kLong).to(device);
    at::Tensor xt = kernels::softmax_topk(teacher, opt->k, 1.0).probs;
    loss::GldOptions gld;
    loss::TokenLossOptions uld_topk{loss::TokenLoss::kUld, opt->k, 1.0, 0.5}, uld_full{loss::TokenLoss::kUld, {}, 1.0, 0.5};
    auto step = [&] {
      logits.mutable_grad() = at::Tensor();
      at::Tensor loss = at::zeros({}, at::TensorOptions().device(device));
      const std::string& t = opt->term;
      if (t == "none") return;
      if (t == "ce" || t == "ce_gld_uld_topk") loss = loss + kernels::cross_entropy_rows(logits, labels).mean();
      if (t == "gld" || t == "ce_gld_uld_topk") {
        at::Tensor xs = kernels::softmax_topk(logits, opt->k, 1.0).probs;
        loss = loss + loss::sorted_feature_distance(loss::rank_node_features(xs, gld), loss::rank_node_features(xt, gld), 1);
      }
      if (t == "uld_topk" || t == "ce_gld_uld_topk") loss = loss + loss::token_loss_rows(logits, teacher, uld_topk, nullptr).mean();
      if (t == "uld") loss = loss + loss::token_loss_rows(logits, teacher, uld_full, nullptr).mean();
      loss.backward();
    };
    for (int64_t i = 0; i < opt->warmup; ++i) step();
    synchronize(device);
    const auto start = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < opt->iters; ++i) step();
    synchronize(device);
    const double ms = 1000.0 * std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / opt->iters;
    nlohmann::json out = {{"bench", "loss"}, {"term", opt->term}, {"rows", opt->rows}, {"vocab", opt->vocab},
                          {"k", opt->k}, {"ms", ms}, {"device", device.str()}, {"threads", at::get_num_threads()}};
    std::cout << out.dump() << std::endl;
  });
}

}  // namespace lf::app
