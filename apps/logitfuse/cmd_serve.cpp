// `logitfuse serve CONFIG.yaml [overrides]`: an OpenAI-compatible server for plain and Dynamic Logit
// Fusion decoding with continuous batching (docs/serving.md).
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <csignal>
#include <exception>
#include <iostream>
#include <thread>

#include "commands.h"
#include "core/error.h"
#include "decode/config.h"
#include "decode/session.h"
#include "serve/http_server.h"
#include "core/signals.h"

namespace lf::app {

namespace {

const char* kServeHelp = R"(OpenAI-compatible server: /v1/chat/completions, /v1/completions (batched prompts,
echo with logprobs, vLLM's prompt_logprobs for teachers), /v1/models, vLLM's /tokenize, /detokenize and
/tokenizer_info, /health, /metrics. Plain or Dynamic Logit Fusion decoding, continuous batching.

Config keys: generate's (model or models, fusion, sampling, generation; see docs/decoding.md), plus
  serve: {host: 127.0.0.1, port: 8000 (0 = any free port), model_name, max_batch: 16, max_queue: 64, prefill_tokens: 512,
          max_context: 0 (= the model's), threads: 0, max_body_bytes: 16777216, request_timeout: 5.0,
          max_connections: 1024}
Request fields left out take the config's sampling and generation values. SIGTERM or SIGINT: stop
taking requests, finish what runs, exit 0. See docs/serving.md.)";

}  // namespace

void add_serve(CLI::App& root) {
  struct Options {
    std::string config;
    std::vector<std::string> overrides;
    bool print_config = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = root.add_subcommand("serve", kServeHelp);
  cmd->add_option("config", opt->config, "config YAML file")->required();
  cmd->add_option("overrides", opt->overrides, "key.path=value overrides");
  cmd->add_flag("--print-config", opt->print_config, "print the resolved config and exit");
  cmd->callback([opt] {
    ServeConfig config = load_serve_config(opt->config, opt->overrides);
    if (opt->print_config) {
      std::cout << serve_config_to_yaml(config);
      return;
    }
    if (!config.generation.kv_cache) throw InputError("serve: generation.kv_cache must be true (continuous batching runs on the cache)");
    auto session = open_session(config);
    const ServeSettings& s = config.serve;
    serve::ServeContext context;
    context.session = session.get();
    const ModelSpec& main_model = config.model ? *config.model : config.models->large;
    context.model_name = !s.model_name.empty() ? s.model_name : main_model.path;  // as vLLM names a model by its path
    int64_t model_context = std::numeric_limits<int64_t>::max();
    for (auto* m : session->set.run()) model_context = std::min(model_context, m->model->config().max_position_embeddings);
    context.max_context = s.max_context > 0 ? std::min(s.max_context, model_context) : model_context;
    serve::EngineLimits limits{s.max_batch, s.max_queue, s.prefill_tokens};
    serve::Metrics metrics;
    serve::Engine engine(session->set, *session->set.tokenizer, session->options.eos_ids, session->options.pad_id, limits,
                         metrics);
    std::signal(SIGPIPE, SIG_IGN);  // a client gone mid-write is a failed write, not the end of the server
    install_stop_handlers();
    serve::HttpOptions http{s.host, static_cast<int>(s.port), static_cast<int>(s.threads), s.max_body_bytes,
                            s.request_timeout, static_cast<int>(s.max_connections)};
    // The engine runs on this thread, the one that loaded the models (serve/engine.h says why); the
    // HTTP server on another, which stops the engine once it has drained (or failed to start).
    std::exception_ptr http_failure;
    std::thread front([&] {
      try {
        serve::run_http_server(context, engine, metrics, http, limits, [] { return stop_requested() != 0; });
      } catch (...) {
        http_failure = std::current_exception();
      }
      engine.stop();
    });
    engine.run();
    front.join();
    if (http_failure) std::rethrow_exception(http_failure);
  });
}

}  // namespace lf::app
