// The server's counters, gauges and latency histograms, read by GET /metrics in Prometheus' text
// exposition format (version 0.0.4). Thread-safe: HTTP threads and the engine update them.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "serve/http_front.h"

namespace lf::serve {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double value);
  // Prometheus lines for metric `name` (_bucket with le, _sum, _count); caller holds the lock.
  std::string text(const std::string& name) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bound, not cumulative; the last is +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();
  void request_done(const std::string& endpoint, int status);
  void tokens(int64_t prompt, int64_t generated);
  void time_to_first_token(double seconds);
  void inter_token(double seconds);
  void request_latency(double seconds);
  // One engine step: rows in the batch, the batch limit, requests waiting, the step's duration.
  void step(int64_t rows, int64_t max_batch, int64_t queued, double seconds);
  // Token positions a model ran (prefill, padding included, and decoding).
  void model_tokens(const std::string& model, int64_t positions);
  // Engine seconds spent in one phase of its steps (prefill, decode_layers, decode_head, sample, emit).
  void phase_seconds(const std::string& phase, double seconds);
  void queue_length(int64_t queued);
  void running(int64_t rows);
  // Where the HTTP transport's counters are read (open connections, time-outs, ...); empty: none.
  void connections(std::function<HttpFrontCounters()> source);
  std::string text() const;

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::map<std::string, uint64_t> model_tokens_;
  std::map<std::string, double> phase_seconds_;
  uint64_t prompt_tokens_ = 0, generated_tokens_ = 0, steps_ = 0, step_rows_ = 0;
  int64_t running_ = 0, max_batch_ = 0, queued_ = 0;
  Histogram ttft_, inter_token_, latency_, step_;
  std::function<HttpFrontCounters()> connections_;
};

}  // namespace lf::serve
