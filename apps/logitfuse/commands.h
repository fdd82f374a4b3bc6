// One function per subcommand file: each adds its subcommand to the CLI and sets the callback that
// turns the parsed options into library calls. Errors are thrown as lf::Error and mapped in main.
#pragma once

namespace CLI {
class App;
}

namespace lf::app {

void add_train(CLI::App& root);
void add_cache_logits(CLI::App& root);
void add_generate(CLI::App& root);
void add_eval(CLI::App& root);
void add_init_model(CLI::App& root);
void add_logits(CLI::App& root);
void add_tokenize(CLI::App& root);
void add_align(CLI::App& root);
void add_merge(CLI::App& root);
void add_version(CLI::App& root);
void add_bench(CLI::App& root);
void add_loss_eval(CLI::App& root);
void add_sweep(CLI::App& root);
void add_serve(CLI::App& root);
// `bench tokenize`, added to the `bench` subcommand by add_bench.
void add_bench_tokenize(CLI::App& bench);
// `bench dlf`, added to the `bench` subcommand by add_bench.
void add_bench_dlf(CLI::App& bench);
// `bench loss`, likewise.
void add_bench_loss(CLI::App& bench);
// `bench kernels`: the fused logit kernels vs copy bandwidth and LibTorch.
void add_bench_kernels(CLI::App& bench);

}  // namespace lf::app
