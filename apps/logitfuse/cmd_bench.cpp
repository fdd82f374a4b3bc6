// `logitfuse bench forward`: tokens/s of the model's forward pass, printed as one JSON line so a
// benchmark script can put it beside a reference measured in the same run.
#include <CLI/CLI.hpp>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <iostream>

#include "commands.h"
#include "core/error.h"
#include "model/checkpoint.h"

namespace lf::app {

void add_bench(CLI::App& root) {
  struct Options {
    std::string model, dtype = "fp32", device = "cpu", mode = "prefill";
    int64_t batch = 4, seq = 128, iters = 10, warmup = 2, threads = 0, seed = 0;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* bench = root.add_subcommand("bench", "Micro-benchmarks (print JSON lines)");
  bench->require_subcommand(1);
  add_bench_tokenize(*bench);
  add_bench_dlf(*bench);
  add_bench_loss(*bench);
  add_bench_kernels(*bench);
  CLI::App* cmd = bench->add_subcommand("forward", "Forward-pass throughput of a model on random token ids");
  cmd->add_option("--model", opt->model, "model directory")->required();
  cmd->add_option("--batch", opt->batch)->capture_default_str();
  cmd->add_option("--seq", opt->seq)->capture_default_str();
  cmd->add_option("--iters", opt->iters)->capture_default_str();
  cmd->add_option("--warmup", opt->warmup)->capture_default_str();
  cmd->add_option("--threads", opt->threads, "intra-op threads (0 = LibTorch default)")->capture_default_str();
  cmd->add_option("--dtype", opt->dtype)->capture_default_str();
  cmd->add_option("--device", opt->device)->capture_default_str();
  cmd->add_option("--seed", opt->seed)->capture_default_str();
  cmd->add_option("--mode", opt->mode,
                  "prefill: whole sequences at once; decode: a prompt of --seq tokens, then --iters single-token "
                  "steps through the KV cache")
      ->check(CLI::IsMember({"prefill", "decode"}))
      ->capture_default_str();
  cmd->callback([opt] {
    if (opt->batch < 1 || opt->seq < 1 || opt->iters < 1 || opt->warmup < 0)
      throw InputError("bench forward: --batch, --seq and --iters must be >= 1");
    if (opt->threads > 0) at::set_num_threads(static_cast<int>(opt->threads));
    auto model = load_model(opt->model, {opt->dtype, opt->device});
    model->eval();
    const auto device = parse_device(opt->device);
    auto generator = at::detail::createCPUGenerator(opt->seed);
    at::Tensor ids = at::randint(model->config().vocab_size, {opt->batch, opt->seq}, generator,
                                 at::TensorOptions().dtype(at::kLong)).to(device);
    c10::InferenceMode inference;
    double seconds = 0;
    int64_t tokens = 0;
    if (opt->mode == "prefill") {
      for (int64_t i = 0; i < opt->warmup; ++i) model->forward(ids);
      synchronize(device);
      const auto start = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < opt->iters; ++i) model->forward(ids);
      synchronize(device);
      seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      tokens = opt->batch * opt->seq * opt->iters;
    } else {
      for (int64_t round = 0; round <= opt->warmup; ++round) {  // the last round is the timed one
        KVCache cache;
        ForwardOptions forward;
        forward.cache = &cache;
        at::Tensor next = model->forward(ids, forward).select(1, -1).argmax(-1, true);
        synchronize(device);
        const auto start = std::chrono::steady_clock::now();
        for (int64_t i = 0; i < opt->iters; ++i) next = model->forward(next, forward).select(1, -1).argmax(-1, true);
        synchronize(device);
        seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      }
      tokens = opt->batch * opt->iters;
    }
    int64_t params = 0;
    for (auto& [name, t] : model->checkpoint_tensors()) params += t.numel();
    nlohmann::json out = {{"bench", "forward"}, {"mode", opt->mode}, {"impl", "logitfuse"}, {"params", params}, {"batch", opt->batch},
                          {"seq", opt->seq}, {"iters", opt->iters}, {"threads", at::get_num_threads()},
                          {"ms_per_iter", 1000.0 * seconds / opt->iters},
                          {"tokens_per_s", tokens / seconds}};
    std::cout << out.dump() << std::endl;
  });
}

}  // namespace lf::app
