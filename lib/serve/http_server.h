// serve's HTTP layer on cpp-httplib (Debian's libcpp-httplib-dev; see docs/architecture.md): routes,
// streaming as server-sent events, status codes, and the graceful stop. Nothing here parses HTTP.
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
  int threads = 0;  // connections served at once; 0: batch + queue limits + 8
};

// Serves until `stop_requested()` turns true (polled every 50 ms), then refuses new requests (503),
// lets what is running or queued finish, answers it, and returns. InputError if the address is taken.
void run_http_server(ServeContext& context, Engine& engine, Metrics& metrics, const HttpOptions& options,
                     const EngineLimits& limits, const std::function<bool()>& stop_requested);

}  // namespace lf::serve
