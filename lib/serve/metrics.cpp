#include "serve/metrics.h"

#include <fmt/format.h>

#include <algorithm>

namespace lf::serve {

namespace {

const std::vector<double> kLatencyBounds = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};

std::string number(double v) { return fmt::format("{:.9g}", v); }

// A label value as the exposition format quotes it: backslash, double quote and newline escaped.
std::string label_value(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    out += c == '\n' ? std::string("\\n") : std::string(1, c);
  }
  return out;
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  ++counts_[i];
  sum_ += value;
  ++count_;
}

std::string Histogram::text(const std::string& name) const {
  std::string out;
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, number(bounds_[i]), cumulative);
  }
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, count_, name, number(sum_), name, count_);
  return out;
}

Metrics::Metrics() : ttft_(kLatencyBounds), inter_token_(kLatencyBounds), latency_(kLatencyBounds), step_(kLatencyBounds) {}

void Metrics::request_done(const std::string& endpoint, int status) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++requests_[{endpoint, status}];
}

void Metrics::tokens(int64_t prompt, int64_t generated) {
  std::lock_guard<std::mutex> lock(mutex_);
  prompt_tokens_ += prompt;
  generated_tokens_ += generated;
}

void Metrics::time_to_first_token(double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  ttft_.observe(seconds);
}

void Metrics::inter_token(double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  inter_token_.observe(seconds);
}

void Metrics::request_latency(double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  latency_.observe(seconds);
}

void Metrics::step(int64_t rows, int64_t max_batch, int64_t queued, double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++steps_;
  step_rows_ += rows;
  running_ = rows;
  max_batch_ = max_batch;
  queued_ = queued;
  step_.observe(seconds);
}

void Metrics::model_tokens(const std::string& model, int64_t positions) {
  std::lock_guard<std::mutex> lock(mutex_);
  model_tokens_[model] += static_cast<uint64_t>(positions);
}

void Metrics::phase_seconds(const std::string& phase, double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  phase_seconds_[phase] += seconds;
}

void Metrics::queue_length(int64_t queued) {
  std::lock_guard<std::mutex> lock(mutex_);
  queued_ = queued;
}

void Metrics::running(int64_t rows) {
  std::lock_guard<std::mutex> lock(mutex_);
  running_ = rows;
}

void Metrics::connections(std::function<HttpFrontCounters()> source) {
  std::lock_guard<std::mutex> lock(mutex_);
  connections_ = std::move(source);
}

std::string Metrics::text() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string out;
  if (connections_) {
    const HttpFrontCounters c = connections_();
    out += fmt::format(
        "# HELP logitfuse_open_connections HTTP connections open.\n# TYPE logitfuse_open_connections gauge\n"
        "logitfuse_open_connections {}\n"
        "# HELP logitfuse_request_timeouts_total Connections closed (408) for a request that did not arrive within "
        "serve.request_timeout.\n# TYPE logitfuse_request_timeouts_total counter\nlogitfuse_request_timeouts_total {}\n"
        "# HELP logitfuse_requests_too_large_total Requests refused for their body (413) or head (431) size.\n"
        "# TYPE logitfuse_requests_too_large_total counter\nlogitfuse_requests_too_large_total {}\n"
        "# HELP logitfuse_connections_evicted_total Idle or slow connections closed to stay under serve.max_connections.\n"
        "# TYPE logitfuse_connections_evicted_total counter\nlogitfuse_connections_evicted_total {}\n",
        c.open_connections, c.timed_out, c.refused_large, c.evicted);
  }
  out += "# HELP logitfuse_requests_total HTTP requests answered, by endpoint and status code.\n"
         "# TYPE logitfuse_requests_total counter\n";
  for (const auto& [key, n] : requests_)
    out += fmt::format("logitfuse_requests_total{{endpoint=\"{}\",code=\"{}\"}} {}\n", key.first, key.second, n);
  out += fmt::format(
      "# HELP logitfuse_prompt_tokens_total Prompt tokens read.\n# TYPE logitfuse_prompt_tokens_total counter\n"
      "logitfuse_prompt_tokens_total {}\n"
      "# HELP logitfuse_generation_tokens_total Tokens generated.\n# TYPE logitfuse_generation_tokens_total counter\n"
      "logitfuse_generation_tokens_total {}\n"
      "# HELP logitfuse_running_requests Rows in the running batch.\n# TYPE logitfuse_running_requests gauge\n"
      "logitfuse_running_requests {}\n"
      "# HELP logitfuse_batch_limit The running batch's limit (serve.max_batch).\n# TYPE logitfuse_batch_limit gauge\n"
      "logitfuse_batch_limit {}\n"
      "# HELP logitfuse_batch_occupancy Running rows over the batch limit, now.\n# TYPE logitfuse_batch_occupancy gauge\n"
      "logitfuse_batch_occupancy {}\n"
      "# HELP logitfuse_queued_requests Requests waiting for a batch slot.\n# TYPE logitfuse_queued_requests gauge\n"
      "logitfuse_queued_requests {}\n"
      "# HELP logitfuse_steps_total Decoding steps run.\n# TYPE logitfuse_steps_total counter\n"
      "logitfuse_steps_total {}\n"
      "# HELP logitfuse_step_rows_total Rows summed over steps (mean batch = this / steps).\n"
      "# TYPE logitfuse_step_rows_total counter\nlogitfuse_step_rows_total {}\n",
      prompt_tokens_, generated_tokens_, running_, max_batch_, max_batch_ > 0 ? number(double(running_) / max_batch_) : "0",
      queued_, steps_, step_rows_);
  out += "# HELP logitfuse_model_tokens_total Token positions each model ran (prefill with padding, and decoding).\n"
         "# TYPE logitfuse_model_tokens_total counter\n";
  for (const auto& [model, n] : model_tokens_)
    out += fmt::format("logitfuse_model_tokens_total{{model=\"{}\"}} {}\n", label_value(model), n);
  out += "# HELP logitfuse_step_phase_seconds_total Engine seconds by phase of its steps: prefill (joiners' forward "
         "passes), decode_layers and decode_head (the running rows' forward pass), sample (fusion and the token "
         "choice), emit (detokenising and handing tokens to their connections).\n"
         "# TYPE logitfuse_step_phase_seconds_total counter\n";
  for (const auto& [phase, seconds] : phase_seconds_)
    out += fmt::format("logitfuse_step_phase_seconds_total{{phase=\"{}\"}} {}\n", phase, number(seconds));
  auto histogram = [&](const char* name, const char* help, const Histogram& h) {
    out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
    out += h.text(name);
  };
  histogram("logitfuse_time_to_first_token_seconds", "From arrival to the first generated token.", ttft_);
  histogram("logitfuse_inter_token_latency_seconds", "Between consecutive tokens of one request.", inter_token_);
  histogram("logitfuse_request_duration_seconds", "From arrival to the last token.", latency_);
  histogram("logitfuse_step_duration_seconds", "One engine step (prefill of joiners and one token per row).", step_);
  return out;
}

}  // namespace lf::serve
