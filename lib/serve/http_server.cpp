#include "serve/http_server.h"

#include <httplib.h>
#include <sys/socket.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <thread>

#include "core/error.h"
#include "serve/peer_watch.h"

namespace lf::serve {

using nlohmann::json;

namespace {

constexpr auto kPoll = std::chrono::milliseconds(50);

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

// A response whose body is written through a provider: the releaser (holding `keep`) runs only once
// the body is on the wire, so the graceful stop waits for it.
void send_json_held(httplib::Response& res, int status, const json& body, std::shared_ptr<void> keep) {
  auto text = std::make_shared<std::string>(body.dump(-1, ' ', false, json::error_handler_t::replace));
  res.status = status;
  res.set_content_provider(
      text->size(), "application/json",
      [text](size_t offset, size_t length, httplib::DataSink& sink) { return sink.write(text->data() + offset, length); },
      [keep](bool) {});
}

std::string sse(const json& body) {
  return "data: " + body.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

class Routes {
 public:
  Routes(ServeContext& context, Engine& engine, Metrics& metrics) : context_(context), engine_(engine), metrics_(metrics) {}

  void install(httplib::Server& server) {
    server.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      const bool up = !closing_;
      send_json(res, up ? 200 : 503, {{"status", up ? "ok" : "shutting down"}});
    });
    server.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      send_json(res, 200, models_response(context_));
      metrics_.request_done("/v1/models", 200);
    });
    server.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics_.text(), "text/plain; version=0.0.4");
    });
    server.Post("/v1/completions",
                [this](const httplib::Request& req, httplib::Response& res) { generate(req, res, false, "/v1/completions"); });
    server.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
      generate(req, res, true, "/v1/chat/completions");
    });
    server.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (res.status == 404 && !res.has_header("Content-Type"))  // not one of ours
        send_json(res, 404, ApiError(404, "no route " + req.method + " " + req.path).body());
    });
    server.set_exception_handler([this](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "internal error";
      try {
        if (ep) std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      spdlog::error("serve: {} {}: {}", req.method, req.path, what);
      send_json(res, 500, ApiError(500, what).body());
      metrics_.request_done(req.path, 500);
    });
  }

  void close() { closing_ = true; }
  int in_flight() const { return in_flight_; }
  void listening_on(int port) { local_port_ = port; }

 private:
  // Counts a request from its handler's start until its response (streamed or not) is written.
  struct InFlight {
    explicit InFlight(std::atomic<int>& n) : n_(n) { ++n_; }
    ~InFlight() { --n_; }
    std::atomic<int>& n_;
  };

  std::string next_id(bool chat) { return std::string(chat ? "chatcmpl-" : "cmpl-") + std::to_string(++ids_); }

  void refuse(httplib::Response& res, const char* endpoint, const ApiError& e, std::shared_ptr<void> keep = {}) {
    send_json_held(res, e.status, e.body(), std::move(keep));
    metrics_.request_done(endpoint, e.status);
  }

  void generate(const httplib::Request& req, httplib::Response& res, bool chat, const char* endpoint) {
    auto in_flight = std::make_shared<InFlight>(in_flight_);
    ApiRequest request;
    try {
      if (closing_) throw ApiError(503, "the server is shutting down", {}, "ServiceUnavailableError");
      request = parse_request(context_, req.body, chat);
    } catch (const ApiError& e) {
      return refuse(res, endpoint, e, in_flight);
    } catch (const Error& e) {  // a template or tokenizer refusing this prompt
      return refuse(res, endpoint, ApiError(400, e.what()), in_flight);
    }
    const std::string id = next_id(chat);
    std::optional<PromptLogprobs> prompt;
    if (request.prompt_logprobs >= 0) {
      std::future<PromptLogprobs> result;
      if (auto refused = admission_error(engine_.score(request.generation.prompt, request.prompt_logprobs,
                                                       request.generation.fusion, result)))
        return refuse(res, endpoint, *refused, in_flight);
      try {
        prompt = result.get();
      } catch (const std::exception& e) {
        return refuse(res, endpoint, ApiError(500, e.what()), in_flight);
      }
    }
    if (request.generation.max_tokens == 0) {
      send_json_held(res, 200, completion_response(context_, request, id, Generated{{}, "", {}, "length"}, prompt ? &*prompt : nullptr),
                     in_flight);
      metrics_.request_done(endpoint, 200);
      return;
    }
    auto job = std::make_shared<Request>(request.generation);
    if (auto refused = admission_error(engine_.submit(job))) return refuse(res, endpoint, *refused, in_flight);
    if (request.stream) return stream(res, endpoint, request, id, job, in_flight);

    // Nothing is written before the end: the client's socket is watched so that a client that goes
    // away frees its row at the next step, as a streaming one does (status 499, nginx's "client
    // closed request", in the metrics).
    const int client = find_peer_socket(req.remote_addr, req.remote_port, local_port_);
    auto checked = std::chrono::steady_clock::now();
    Generated out;
    while (true) {
      std::optional<Event> e = job->next(kPoll);
      if (const auto now = std::chrono::steady_clock::now(); now - checked >= kPoll) {
        checked = now;
        if (peer_closed(client)) {
          job->cancel();
          res.status = 499;
          metrics_.request_done(endpoint, 499);
          return;
        }
      }
      if (!e) continue;
      if (e->kind == Event::Kind::kError) return refuse(res, endpoint, ApiError(500, e->text), in_flight);
      out.text += e->text;
      if (e->kind == Event::Kind::kFinish) {
        out.finish_reason = e->finish_reason;
        break;
      }
      out.ids.push_back(e->token);
      if (e->logprobs) out.logprobs.push_back(*e->logprobs);
    }
    send_json_held(res, 200, completion_response(context_, request, id, out, prompt ? &*prompt : nullptr), in_flight);
    metrics_.request_done(endpoint, 200);
  }

  std::optional<ApiError> admission_error(Engine::Admission a) {
    if (a == Engine::Admission::kQueueFull)
      return ApiError(429, "the server's queue is full; retry later", {}, "RateLimitError");
    if (a == Engine::Admission::kClosed) return ApiError(503, "the server is shutting down", {}, "ServiceUnavailableError");
    return std::nullopt;
  }

  // Server-sent events: a chunk per token, the last chunk with finish_reason, the usage chunk when
  // asked, then [DONE]. A failed write means the client went away: the row is cancelled.
  void stream(httplib::Response& res, const char* endpoint, const ApiRequest& request, const std::string& id,
              const std::shared_ptr<Request>& job, const std::shared_ptr<InFlight>& in_flight) {
    struct State {
      bool first = true;
      int64_t tokens = 0;
    };
    auto state = std::make_shared<State>();
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, request, id, job, state, endpoint](size_t, httplib::DataSink& sink) {
          std::optional<Event> e = job->next(kPoll);
          if (!e) return true;  // nothing yet: called again
          auto write = [&](const std::string& data) {
            if (sink.write(data.data(), data.size())) return true;
            job->cancel();
            return false;
          };
          if (e->kind == Event::Kind::kError) {
            write(sse(ApiError(500, e->text).body()));
            write("data: [DONE]\n\n");
            sink.done();
            metrics_.request_done(endpoint, 500);
            return true;
          }
          if (e->kind == Event::Kind::kToken) {
            ++state->tokens;
            std::vector<TokenLogprobs> lp;
            if (e->logprobs) lp.push_back(*e->logprobs);
            if (e->text.empty() && lp.empty() && !state->first && !request.return_token_ids) return true;
            const bool ok = write(sse(stream_chunk(context_, request, id, e->text, {e->token}, lp, "", state->first)));
            state->first = false;
            return ok;
          }
          if (!write(sse(stream_chunk(context_, request, id, e->text, {}, {}, e->finish_reason, state->first)))) return false;
          if (request.include_usage && !write(sse(usage_chunk(context_, request, id, e->completion_tokens)))) return false;
          if (!write("data: [DONE]\n\n")) return false;
          sink.done();
          metrics_.request_done(endpoint, 200);
          return true;
        },
        [job, in_flight](bool success) {
          if (!success) job->cancel();  // the connection closed before the end
        });
  }

  ServeContext& context_;
  Engine& engine_;
  Metrics& metrics_;
  std::atomic<bool> closing_{false};
  std::atomic<int> in_flight_{0};
  std::atomic<int> local_port_{-1};
  std::atomic<int64_t> ids_{0};
};

}  // namespace

void run_http_server(ServeContext& context, Engine& engine, Metrics& metrics, const HttpOptions& options,
                     const EngineLimits& limits, const std::function<bool()>& stop_requested) {
  httplib::Server server;
  const int threads = options.threads > 0 ? options.threads : static_cast<int>(limits.max_batch + limits.max_queue + 8);
  server.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  server.set_payload_max_length(64ull << 20);
  server.set_read_timeout(30, 0);
  // httplib (Debian's is a compiled library, so CPPHTTPLIB_LISTEN_BACKLOG cannot change it) listens
  // with a backlog of 5. A burst of more clients than that (16 streams starting at once) overflows
  // the accept queue, and the kernel makes each one past it resend its SYN a second later: a second
  // added to its time to first token. Listening again on the bound socket raises the backlog (the
  // kernel caps it at net.core.somaxconn).
  int listen_fd = -1;
  server.set_socket_options([&listen_fd](socket_t sock) {
    httplib::default_socket_options(sock);
    listen_fd = sock;  // the last candidate is the one that binds
  });
  Routes routes(context, engine, metrics);
  routes.install(server);
  int port = options.port;
  if (port == 0) {
    port = server.bind_to_any_port(options.host);
    if (port < 0) throw InputError("serve: cannot bind an address on " + options.host);
  } else if (!server.bind_to_port(options.host, port)) {
    throw InputError("serve: cannot listen on " + options.host + ":" + std::to_string(port),
                     "is another server using the port? set serve.port (0 picks a free one)");
  }
  if (listen_fd >= 0 && ::listen(listen_fd, 1024) != 0)
    spdlog::warn("serve: could not raise the listen backlog; a burst of clients may wait a second to connect");
  routes.listening_on(port);
  spdlog::info("serve: listening on http://{}:{} (model '{}', batch limit {}, queue limit {}, context {})", options.host,
               port, context.model_name, limits.max_batch, limits.max_queue, context.max_context);
  std::thread listener([&] { server.listen_after_bind(); });
  while (!stop_requested()) std::this_thread::sleep_for(kPoll);
  spdlog::info("serve: stopping: no new requests; finishing {} running or queued", engine.running());
  routes.close();
  engine.close();
  engine.wait_idle();
  // The last responses are still being written by their connection threads.
  while (routes.in_flight() > 0) std::this_thread::sleep_for(kPoll);
  server.stop();
  listener.join();
  spdlog::info("serve: stopped");
}

}  // namespace lf::serve
