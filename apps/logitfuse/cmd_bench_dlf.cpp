// `logitfuse bench dlf`: cost of the Dynamic Logit Fusion α solve per decoding step, against one
// decoding step of a large model (random weights of a given shape, or --model DIR), against the
// LibTorch implementation of the same closed form (Backend::aten, the kernels' oracle) and against
// the naive approach that materialises a softmax per α. Prints one JSON line.
#include <CLI/CLI.hpp>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <iostream>

#include "commands.h"
#include "core/error.h"
#include "kernels/dlf.h"
#include "model/checkpoint.h"
#include "model/model_config.h"

namespace lf::app {

void add_bench_dlf(CLI::App& bench) {
  struct Options {
    int64_t batch = 256, vocab = 32000, experts = 4, row_block = 0, iters = 3, threads = 0, context = 32, seed = 0;
    double alpha_min = 0.0, alpha_max = 2.0, alpha_step = 0.1;
    int64_t hidden = 1024, layers = 8, heads = 16, kv_heads = 16, intermediate = 2816;
    std::string model, dtype = "fp32", device = "cpu";
    bool skip_naive = false, skip_model = false, skip_aten = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = bench.add_subcommand("dlf", "Time of the DLF alpha solve vs one large-model decoding step and vs the naive per-alpha softmax");
  cmd->add_option("--batch", opt->batch)->capture_default_str();
  cmd->add_option("--vocab", opt->vocab)->capture_default_str();
  cmd->add_option("--experts", opt->experts)->capture_default_str();
  cmd->add_option("--alpha-min", opt->alpha_min)->capture_default_str();
  cmd->add_option("--alpha-max", opt->alpha_max)->capture_default_str();
  cmd->add_option("--alpha-step", opt->alpha_step)->capture_default_str();
  cmd->add_option("--row-block", opt->row_block, "rows the LibTorch path processes together (0 = automatic)")->capture_default_str();
  cmd->add_option("--iters", opt->iters, "timed repetitions; the fastest is reported")->capture_default_str();
  cmd->add_option("--threads", opt->threads, "intra-op threads (0 = LibTorch default)")->capture_default_str();
  cmd->add_option("--device", opt->device)->capture_default_str();
  cmd->add_option("--seed", opt->seed)->capture_default_str();
  cmd->add_option("--model", opt->model, "large model directory (default: random llama weights of the shape below)");
  cmd->add_option("--dtype", opt->dtype, "large model dtype")->capture_default_str();
  cmd->add_option("--context", opt->context, "tokens in the KV cache before the timed step")->capture_default_str();
  cmd->add_option("--hidden", opt->hidden)->capture_default_str();
  cmd->add_option("--layers", opt->layers)->capture_default_str();
  cmd->add_option("--heads", opt->heads)->capture_default_str();
  cmd->add_option("--kv-heads", opt->kv_heads)->capture_default_str();
  cmd->add_option("--intermediate", opt->intermediate)->capture_default_str();
  cmd->add_flag("--skip-naive", opt->skip_naive, "do not time the naive per-alpha softmax");
  cmd->add_flag("--skip-aten", opt->skip_aten, "do not time the LibTorch implementation of the closed form");
  cmd->add_flag("--skip-model", opt->skip_model, "do not time the large model's decoding step");
  cmd->callback([opt] {
    if (opt->batch < 1 || opt->vocab < 2 || opt->experts < 1 || opt->iters < 1 || opt->context < 1)
      throw InputError("bench dlf: --batch, --experts, --iters, --context must be >= 1 and --vocab >= 2");
    if (opt->threads > 0) at::set_num_threads(static_cast<int>(opt->threads));
    const auto device = parse_device(opt->device);
    const auto grid = kernels::alpha_grid(opt->alpha_min, opt->alpha_max, opt->alpha_step);
    c10::InferenceMode inference;
    auto generator = at::detail::createCPUGenerator(opt->seed);
    auto randn = [&] { return (at::randn({opt->batch, opt->vocab}, generator, at::TensorOptions()) * 3.0).to(device); };
    const at::Tensor zl = randn(), zs = randn();
    std::vector<at::Tensor> experts;
    for (int64_t i = 0; i < opt->experts; ++i) experts.push_back(zs + randn() * 0.5);

    nlohmann::json out = {{"bench", "dlf"}, {"batch", opt->batch}, {"vocab", opt->vocab}, {"experts", opt->experts},
                          {"alphas", grid.size()}, {"device", device.str()}, {"threads", at::get_num_threads()}};
    kernels::DlfSolve solve;
    auto time = [&](auto&& f) {
      f();  // warm-up
      synchronize(device);
      double best = 1e300;
      for (int64_t i = 0; i < opt->iters; ++i) {
        const auto start = std::chrono::steady_clock::now();
        f();
        synchronize(device);
        best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
      }
      return best;
    };
    const double solve_ms = time([&] { solve = kernels::dlf_solve(zl, zs, experts, grid); });
    out["solve_ms"] = solve_ms;
    if (!opt->skip_aten) {
      kernels::DlfOptions aten_options;
      aten_options.backend = kernels::Backend::aten;
      aten_options.row_block = opt->row_block;
      kernels::DlfSolve aten;
      const double aten_ms = time([&] { aten = kernels::dlf_solve(zl, zs, experts, grid, aten_options); });
      const int64_t block = opt->row_block > 0 ? opt->row_block : std::max<int64_t>(1, (int64_t{1} << 20) / opt->vocab);
      out["aten_ms"] = aten_ms;
      out["aten_over_solve"] = aten_ms / solve_ms;
      out["aten_row_block"] = block;
      out["aten_scratch_mib"] = (opt->experts + 6.0) * std::min(block, opt->batch) * opt->vocab * 4 / 1048576.0;
      out["aten_same_choice"] = at::equal(aten.expert, solve.expert) && at::allclose(aten.alpha, solve.alpha);
      out["aten_max_kl_diff"] = std::max((aten.kl_forward - solve.kl_forward).abs().max().item<double>(),
                                         (aten.kl_reverse - solve.kl_reverse).abs().max().item<double>());
    }
    if (!opt->skip_naive) {
      kernels::DlfSolve naive;
      const double naive_ms = time([&] { naive = kernels::dlf_solve_reference(zl, zs, experts, grid); });
      out["naive_ms"] = naive_ms;
      out["naive_over_solve"] = naive_ms / solve_ms;
      out["same_choice"] = at::equal(naive.expert, solve.expert) && at::allclose(naive.alpha, solve.alpha);
    }
    if (!opt->skip_model) {
      std::shared_ptr<CausalLM> model;
      if (!opt->model.empty()) {
        model = load_model(opt->model, {opt->dtype, opt->device});
      } else {
        ModelConfig c = default_model_config("llama");
        c.vocab_size = opt->vocab;
        c.hidden_size = opt->hidden;
        c.num_layers = opt->layers;
        c.num_heads = opt->heads;
        c.num_kv_heads = opt->kv_heads;
        c.head_dim = opt->hidden / opt->heads;
        c.intermediate_size = opt->intermediate;
        model = std::make_shared<CausalLM>(c, at::TensorOptions().dtype(parse_dtype(opt->dtype, "--dtype")).device(device));
        model->init_weights(static_cast<uint64_t>(opt->seed));
      }
      model->eval();
      int64_t params = 0;
      for (auto& [name, t] : model->checkpoint_tensors()) params += t.numel();
      const at::Tensor prompt = at::randint(opt->vocab, {opt->batch, opt->context}, generator, at::TensorOptions().dtype(at::kLong)).to(device);
      const at::Tensor next = at::randint(opt->vocab, {opt->batch, 1}, generator, at::TensorOptions().dtype(at::kLong)).to(device);
      // Each timed call: one token through a cache holding `context` tokens (the cache is rebuilt
      // untimed before every repetition so the context length stays fixed).
      double best = 1e300;
      for (int64_t i = 0; i <= opt->iters; ++i) {
        KVCache cache;
        ForwardOptions forward;
        forward.cache = &cache;
        model->forward(prompt, forward);
        synchronize(device);
        const auto start = std::chrono::steady_clock::now();
        model->forward(next, forward);
        synchronize(device);
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
        if (i > 0) best = std::min(best, ms);  // the first is warm-up
      }
      out["model_params"] = params;
      out["model_step_ms"] = best;
      out["solve_over_model_step"] = solve_ms / best;
    }
    std::cout << out.dump() << std::endl;
  });
}

}  // namespace lf::app
