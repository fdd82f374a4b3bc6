#include "serve/http_server.h"

#include <spdlog/spdlog.h>

#include <atomic>
#include <thread>

#include "core/error.h"
#include "serve/http_front.h"

namespace lf::serve {

using nlohmann::json;

namespace {

constexpr auto kPoll = std::chrono::milliseconds(50);

std::string dump(const json& body) { return body.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string sse(const json& body) { return "data: " + dump(body) + "\n\n"; }

// One generated choice being collected from its engine events.
struct Collecting {
  std::shared_ptr<Request> job;  // null: nothing to generate (max_tokens 0)
  Generated out;
  bool finished = false;
  bool first = true;  // streaming: no chunk sent yet
};

// The client is gone or the request failed: every row still generating is freed at the next step.
void cancel_all(std::vector<Collecting>& choices) {
  for (auto& c : choices)
    if (c.job) c.job->cancel();
}

ApiError shutting_down() { return ApiError(503, "the server is shutting down", {}, "ServiceUnavailableError"); }

class Routes {
 public:
  Routes(ServeContext& context, Engine& engine, Metrics& metrics) : context_(context), engine_(engine), metrics_(metrics) {}

  void handle(const HttpRequest& req, HttpResponder& res) {
    InFlight counted(in_flight_);
    const std::string& path = req.path;
    const bool get = req.method == "GET", post = req.method == "POST";
    try {
      if (path == "/health" && get) {
        const bool up = !closing_;
        res.send(up ? 200 : 503, "application/json", dump({{"status", up ? "ok" : "shutting down"}}));
      } else if (path == "/metrics" && get) {
        res.send(200, "text/plain; version=0.0.4", metrics_.text());
      } else if (path == "/v1/models" && get) {
        answer(res, path, 200, models_response(context_));
      } else if (path == "/tokenizer_info" && get) {
        answer(res, path, 200, tokenizer_info_response(context_));
      } else if (path == "/tokenize" && post) {
        answer(res, path, 200, tokenize_response(context_, req.body));
      } else if (path == "/detokenize" && post) {
        answer(res, path, 200, detokenize_response(context_, req.body));
      } else if (path == "/v1/completions" && post) {
        generate(req, res, false, "/v1/completions");
      } else if (path == "/v1/chat/completions" && post) {
        generate(req, res, true, "/v1/chat/completions");
      } else if (known(path)) {
        refuse(res, path, ApiError(405, "method " + req.method + " is not allowed on " + path, {}, "MethodNotAllowedError"));
      } else {
        refuse(res, "other", ApiError(404, "no route " + req.method + " " + path));
      }
    } catch (const ApiError& e) {
      refuse(res, endpoint_name(path), e);
    } catch (const Error& e) {  // a template or tokenizer refusing this input
      refuse(res, endpoint_name(path), ApiError(400, e.what()));
    } catch (const std::exception& e) {
      spdlog::error("serve: {} {}: {}", req.method, path, e.what());
      if (!res.responded()) refuse(res, endpoint_name(path), ApiError(500, e.what()));
    }
  }

  void close() { closing_ = true; }
  int in_flight() const { return in_flight_; }

 private:
  // Counts a request from its handler's start until its response is written.
  struct InFlight {
    explicit InFlight(std::atomic<int>& n) : n_(n) { ++n_; }
    ~InFlight() { --n_; }
    std::atomic<int>& n_;
  };

  static bool known(const std::string& path) {
    for (const char* p : {"/health", "/metrics", "/v1/models", "/tokenizer_info", "/tokenize", "/detokenize",
                          "/v1/completions", "/v1/chat/completions"})
      if (path == p) return true;
    return false;
  }
  // The metrics' endpoint label: the route, or "other" (a label per unknown path would grow without bound).
  static std::string endpoint_name(const std::string& path) { return known(path) ? path : "other"; }

  std::string next_id(bool chat) { return std::string(chat ? "chatcmpl-" : "cmpl-") + std::to_string(++ids_); }

  void answer(HttpResponder& res, const std::string& endpoint, int status, const json& body) {
    res.send(status, "application/json", dump(body));
    metrics_.request_done(endpoint, status);
  }

  void refuse(HttpResponder& res, const std::string& endpoint, const ApiError& e) {
    if (res.responded()) return;
    answer(res, endpoint, e.status, e.body());
  }

  static void check_admission(Engine::Admission a) {
    if (a == Engine::Admission::kQueueFull)
      throw ApiError(429, "the server's queue is full; retry later", {}, "RateLimitError");
    if (a == Engine::Admission::kClosed) throw shutting_down();
  }

  void generate(const HttpRequest& req, HttpResponder& res, bool chat, const char* endpoint) {
    if (closing_) throw shutting_down();
    const ApiRequest request = parse_request(context_, req.body, chat);
    const std::string id = next_id(chat);
    const size_t n = request.prompts.size();

    // Every prompt of the request is queued at once: its rows join the continuous batch together,
    // and its prompts to score are scored together.
    std::vector<Collecting> choices(n);
    std::vector<std::shared_ptr<Request>> jobs;
    for (size_t i = 0; i < n; ++i)
      if (request.prompts[i].max_tokens > 0) jobs.push_back(choices[i].job = std::make_shared<Request>(request.params_for(i)));
    std::vector<Engine::ScoreSpec> scores;
    if (const int64_t k = request.score_k(); k >= 0)
      for (const auto& p : request.prompts) scores.push_back({p.ids, k, request.generation.fusion});
    std::vector<std::future<PromptLogprobs>> futures;
    check_admission(engine_.submit(jobs, scores, futures));
    std::vector<PromptLogprobs> scored;
    try {
      for (auto& f : futures) scored.push_back(f.get());
    } catch (const std::exception& e) {
      cancel_all(choices);
      throw ApiError(500, e.what());
    }
    std::vector<const PromptLogprobs*> prompt(n, nullptr);
    for (size_t i = 0; i < scored.size(); ++i) prompt[i] = &scored[i];
    for (auto& c : choices) c.finished = !c.job;

    if (request.stream) return stream(res, endpoint, request, id, choices, prompt);

    // Nothing is written before the end: the client's socket is watched so that a client that goes
    // away frees its rows at the next step, as a streaming one does (status 499, nginx's "client
    // closed request", in the metrics).
    auto checked = std::chrono::steady_clock::now();
    for (auto& c : choices) {
      while (!c.finished) {
        std::optional<Event> e = c.job->next(kPoll);
        if (const auto now = std::chrono::steady_clock::now(); now - checked >= kPoll) {
          checked = now;
          if (res.peer_closed()) {
            cancel_all(choices);
            metrics_.request_done(endpoint, 499);
            return;
          }
        }
        if (!e) continue;
        if (e->kind == Event::Kind::kError) {
          cancel_all(choices);
          throw ApiError(500, e->text);
        }
        take(c, *e);
      }
    }
    std::vector<Generated> outs;
    for (auto& c : choices) outs.push_back(std::move(c.out));
    answer(res, endpoint, 200, completion_response(context_, request, id, outs, prompt));
  }

  static void take(Collecting& c, const Event& e) {
    if (e.stop_token) {  // in the logprobs of a completion only
      c.out.stop_token = e.token;
      if (e.logprobs) c.out.logprobs.push_back(*e.logprobs);
      return;
    }
    c.out.text += e.text;
    if (e.kind == Event::Kind::kFinish) {
      c.out.finish_reason = e.finish_reason;
      c.finished = true;
      return;
    }
    c.out.ids.push_back(e.token);
    if (e.logprobs) c.out.logprobs.push_back(*e.logprobs);
  }

  // Server-sent events: a chunk per token (with `index` naming the prompt of a batch), each choice's
  // last chunk with its finish_reason, the usage chunk when asked, then [DONE]. A failed write means
  // the client went away: its rows are cancelled.
  void stream(HttpResponder& res, const char* endpoint, const ApiRequest& request, const std::string& id,
              std::vector<Collecting>& choices, const std::vector<const PromptLogprobs*>& prompt) {
    if (!res.begin_stream(200, "text/event-stream", {{"Cache-Control", "no-cache"}})) return cancel_all(choices);
    int64_t completion_tokens = 0;
    const auto wait = choices.size() == 1 ? kPoll : std::chrono::milliseconds(2);
    for (size_t left = choices.size(); left > 0;) {
      for (size_t i = 0; i < choices.size(); ++i) {
        Collecting& c = choices[i];
        if (c.finished) continue;
        std::optional<Event> e = c.job->next(wait);
        if (!e) continue;
        if (e->kind == Event::Kind::kError) {
          cancel_all(choices);
          res.write_chunk(sse(ApiError(500, e->text).body()));
          res.write_chunk("data: [DONE]\n\n");
          res.end_stream();
          metrics_.request_done(endpoint, 500);
          return;
        }
        std::string chunk;
        if (e->stop_token) {
          // The end-of-sequence token's logprobs, in a chunk of its own with no text (completions).
          if (request.chat || !e->logprobs) continue;
          json body = stream_chunk(context_, request, id, i, "", {e->token}, {*e->logprobs}, "", c.first, prompt[i]);
          body["choices"][0].erase("token_ids");
          chunk = sse(body);
        } else if (e->kind == Event::Kind::kToken) {
          ++completion_tokens;
          std::vector<TokenLogprobs> lp;
          if (e->logprobs) lp.push_back(*e->logprobs);
          if (e->text.empty() && lp.empty() && !c.first && !request.return_token_ids) continue;
          chunk = sse(stream_chunk(context_, request, id, i, e->text, {e->token}, lp, "", c.first, prompt[i]));
        } else {
          chunk = sse(stream_chunk(context_, request, id, i, e->text, {}, {}, e->finish_reason, c.first, prompt[i]));
          c.finished = true;
          --left;
        }
        c.first = false;
        if (!res.write_chunk(chunk)) return cancel_all(choices);
      }
    }
    if (request.include_usage && !res.write_chunk(sse(usage_chunk(context_, request, id, completion_tokens))))
      return cancel_all(choices);
    if (!res.write_chunk("data: [DONE]\n\n") || !res.end_stream()) return;
    metrics_.request_done(endpoint, 200);
  }

  ServeContext& context_;
  Engine& engine_;
  Metrics& metrics_;
  std::atomic<bool> closing_{false};
  std::atomic<int> in_flight_{0};
  std::atomic<int64_t> ids_{0};
};

}  // namespace

void run_http_server(ServeContext& context, Engine& engine, Metrics& metrics, const HttpOptions& options,
                     const EngineLimits& limits, const std::function<bool()>& stop_requested) {
  Routes routes(context, engine, metrics);
  HttpFrontOptions front_options;
  front_options.host = options.host;
  front_options.port = options.port;
  front_options.workers = options.threads > 0 ? options.threads : static_cast<int>(limits.max_batch + limits.max_queue + 8);
  front_options.max_body_bytes = options.max_body_bytes;
  front_options.request_timeout = options.request_timeout;
  front_options.max_connections = options.max_connections;
  HttpFront front(front_options, [&routes](const HttpRequest& req, HttpResponder& res) { routes.handle(req, res); });
  metrics.connections([&front] { return front.counters(); });
  spdlog::info("serve: listening on http://{}:{} (model '{}', batch limit {}, queue limit {}, context {})", options.host,
               front.port(), context.model_name, limits.max_batch, limits.max_queue, context.max_context);
  front.start();
  while (!stop_requested()) std::this_thread::sleep_for(kPoll);
  spdlog::info("serve: stopping: no new requests; finishing {} running or queued", engine.running());
  routes.close();
  engine.close();
  engine.wait_idle();
  // The last responses are still being written by their workers.
  while (routes.in_flight() > 0) std::this_thread::sleep_for(kPoll);
  front.stop();
  metrics.connections({});
  spdlog::info("serve: stopped");
}

}  // namespace lf::serve
