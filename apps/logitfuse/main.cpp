// logitfuse: fuse language models through their logits. Builds the CLI, runs the chosen
// subcommand, and maps every error to the exit codes of the contract (0 ok, 1 runtime, 2 input).
#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>
#include <spdlog/spdlog.h>

#include <iostream>

#include "commands.h"
#include "memory/cpu_allocator.h"
#include "core/error.h"
#include "core/logging.h"

int main(int argc, char** argv) {
  CLI::App app{"logitfuse: fuse language models through their logits (InfiGFusion training, Dynamic Logit Fusion decoding)"};
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error|off")->capture_default_str();
  std::string cpu_allocator = "caching";
  app.add_option("--cpu-allocator", cpu_allocator,
                 "caching: reuse freed CPU blocks of 1 MiB and more (large tensors are not re-faulted every step); "
                 "system: LibTorch's default")
      ->check(CLI::IsMember({"caching", "system"}))
      ->capture_default_str();
  app.parse_complete_callback([&] {
    lf::setup_logging(log_level);
    if (cpu_allocator == "caching") lf::install_caching_cpu_allocator();
  });

  lf::app::add_train(app);
  lf::app::add_cache_logits(app);
  lf::app::add_generate(app);
  lf::app::add_eval(app);
  lf::app::add_init_model(app);
  lf::app::add_logits(app);
  lf::app::add_tokenize(app);
  lf::app::add_align(app);
  lf::app::add_merge(app);
  lf::app::add_version(app);
  lf::app::add_bench(app);
  lf::app::add_loss_eval(app);
  lf::app::add_sweep(app);
  lf::app::add_serve(app);

  try {
    app.parse(argc, argv);
    return lf::kExitOk;
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help();
    return lf::kExitOk;
  } catch (const CLI::CallForAllHelp&) {
    std::cout << app.help("", CLI::AppFormatMode::All);
    return lf::kExitOk;
  } catch (const CLI::ParseError& e) {
    // Help for a subcommand is also signalled this way; anything else is a usage error.
    if (e.get_exit_code() == 0) return app.exit(e);
    std::cerr << "error: " << e.what() << " (run with --help for usage)\n";
    return lf::kExitInput;
  } catch (const lf::Error& e) {
    std::cerr << "error: " << e.one_line() << "\n";
    return e.exit_code();
  } catch (const c10::Error& e) {
    std::cerr << "error: " << e.what_without_backtrace() << "\n";
    return lf::kExitRuntime;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return lf::kExitRuntime;
  }
}
