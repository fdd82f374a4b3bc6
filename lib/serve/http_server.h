// serve's routes on its HTTP transport (serve/http_front.h): OpenAI's and vLLM's endpoints, streaming
// as server-sent events, status codes, and the graceful stop. Nothing here parses HTTP.
#pragma once

#include <functional>
#include <string>

#include "serve/engine.h"
#include "serve/metrics.h"
#include "serve/openai.h"

namespace lf::serve {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port (the log line says which)
  int threads = 0;  // requests handled at once; 0: batch + queue limits + 8
  int64_t max_body_bytes = 16ll << 20;  // 413 past it
  double request_timeout = 5.0;         // seconds for a request's head and body to arrive; 408 past it
  int max_connections = 1024;           // open connections; past it the longest-waiting idle or slow one is closed
};

// Serves until `stop_requested()` turns true (polled every 50 ms), then refuses new requests (503),
// lets what is running or queued finish, answers it, and returns. InputError if the address is taken.
void run_http_server(ServeContext& context, Engine& engine, Metrics& metrics, const HttpOptions& options,
                     const EngineLimits& limits, const std::function<bool()>& stop_requested);

}  // namespace lf::serve
