// The serving engine: the continuous batch (decode/continuous.h), run by one thread that calls run()
// (`serve` gives it the main thread, which loaded the models: with every parallel region of the
// process started from one thread, libgomp keeps one team whose threads spin between the many small
// operations of a decoding step; a second team makes it throttle their spinning and wake them through
// futexes, ~1.8x slower per token on 2 cores). Requests join at step boundaries (up to a batch limit,
// behind a bounded queue) and leave when they finish or their client goes away; each row keeps its
// own sampling, stop rules and fusion. HTTP threads talk to it through a Request (a queue of events)
// and never touch a model.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "decode/config.h"
#include "decode/continuous.h"
#include "decode/model_set.h"
#include "serve/metrics.h"
#include "serve/request_fusion.h"

namespace lf {
class Tokenizer;
}

namespace lf::serve {

struct GenerationParams {
  std::vector<int64_t> prompt;
  int64_t max_tokens = 16;  // >= 1
  SamplingConfig sampling;  // per request; randomness keyed by (seed, 0, step) as generate's first prompt
  std::vector<std::string> stop;
  int64_t top_logprobs = -1;  // -1: no logprobs; else that many alternatives per generated token
  bool ignore_eos = false;    // vLLM's extension: generate max_tokens whatever the model says (load tests)
  RequestFusion fusion;
};

struct TokenLogprobs {
  double logprob = 0;
  std::vector<std::pair<int64_t, double>> top;
};

struct Event {
  enum class Kind { kToken, kFinish, kError };
  Kind kind = Kind::kToken;
  int64_t token = -1;
  std::string text;  // kToken: text this token made final (may be empty: held back for a stop string)
  std::optional<TokenLogprobs> logprobs;
  std::string finish_reason;  // kFinish: stop | length; kError: the message in `text`
  int64_t completion_tokens = 0;
  // kToken: the end-of-sequence token that ends the row, sent (before kFinish) only when logprobs
  // are asked: its logprob belongs in a completion's logprobs (lm-eval reads the last entry as the
  // generated token's), though it is neither text nor a completion token.
  bool stop_token = false;
  // An error that ends the request (`message` in text).
  static Event error(std::string message);
};

// One generation request, shared by its HTTP thread (consumer) and the engine (producer).
class Request {
 public:
  explicit Request(GenerationParams params);
  const GenerationParams& params() const { return params_; }
  // The next event, waiting at most `wait`; nullopt on time-out.
  std::optional<Event> next(std::chrono::milliseconds wait);
  // The client went away: the engine frees the row at its next step boundary.
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }
  void push(Event event);
  const std::chrono::steady_clock::time_point arrival = std::chrono::steady_clock::now();

 private:
  GenerationParams params_;
  std::atomic<bool> cancelled_{false};
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Event> events_;
};

struct EngineLimits {
  int64_t max_batch = 16;  // rows decoded together
  int64_t max_queue = 64;  // requests waiting for a row; beyond it submit() refuses
  // Prompt tokens prefilled per step and model (padding counted) while the running rows go on
  // decoding between chunks; 0: a joining group's prompts whole in one step.
  int64_t prefill_tokens = 512;
};

class Engine {
 public:
  Engine(ModelSet& set, const Tokenizer& tokenizer, std::vector<int64_t> eos_ids, int64_t pad_id, EngineLimits limits,
         Metrics& metrics);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  enum class Admission { kAccepted, kQueueFull, kClosed };
  // A prompt to score: the top `k` logprobs at each position, under `fusion`.
  struct ScoreSpec {
    std::vector<int64_t> ids;
    int64_t k = 0;
    RequestFusion fusion;
  };
  // Queues `requests` (rows to generate) and `scores` (prompt logprobs, computed on the engine's
  // thread between steps, the call's prompts scored together as one batch), all or none: each counts as one place of the queue, and a batch larger than the queue is taken only
  // when the queue is empty. `results` gets one future per score.
  Admission submit(const std::vector<std::shared_ptr<Request>>& requests, const std::vector<ScoreSpec>& scores,
                   std::vector<std::future<PromptLogprobs>>& results);
  Admission submit(const std::shared_ptr<Request>& request);
  // Runs the batch on the calling thread until stop(); what still runs or waits then gets an error.
  void run();
  // Makes run() return at its next step boundary (any thread).
  void stop();
  // Stops admissions; what is running or queued still finishes.
  void close();
  // Blocks until nothing runs or waits (after close(): the engine is done).
  void wait_idle();
  int64_t running() const { return running_count_; }

 private:
  struct Row;
  struct ScoreJob;
  void take_score_jobs(std::vector<std::shared_ptr<ScoreJob>>& jobs);
  void score_step(std::vector<std::shared_ptr<ScoreJob>>& jobs, std::unique_ptr<PromptScorer>& scorer);
  void prefill();
  // Tells the metrics what the batch ran since the last call: token positions per model, forward seconds.
  void report_batch_counters();
  void step();
  void sample_and_emit(const BatchLogits& logits, size_t first_row, bool first_step);
  // One group of rows (`members`, rows first_row + j) that share a fusion: fused, sampled, emitted.
  // Returns emit()'s share of the seconds spent.
  double sample_group(const BatchLogits& logits, size_t first_row, const std::vector<int64_t>& members, bool first_step,
                      std::map<size_t, std::vector<int64_t>>& leaves);
  // Row `row`'s next token from its fused logits `z` ([1, V]; `greedy`: the group's greedy tokens,
  // found once a member needs them), with its logprobs when asked.
  std::pair<int64_t, std::optional<TokenLogprobs>> pick_token(Row& row, const at::Tensor& fused, int64_t m, at::Tensor& greedy);
  void drop_finished();
  void fail_all(const std::string& message);
  void emit(Row& row, int64_t token, std::optional<TokenLogprobs> logprobs);
  void finish(Row& row, const std::string& reason);

  ModelSet& set_;
  const Tokenizer& tokenizer_;
  std::vector<int64_t> eos_ids_;
  int64_t pad_id_;
  EngineLimits limits_;
  Metrics& metrics_;

  std::mutex mutex_;
  std::condition_variable wake_, idle_;
  std::deque<std::shared_ptr<Request>> waiting_;
  std::deque<std::shared_ptr<ScoreJob>> scoring_;
  uint64_t score_groups_ = 0;  // submit() calls that brought prompts to score
  bool closed_ = false, stopping_ = false;
  std::atomic<int64_t> running_count_{0};

  // Engine thread only.
  std::unique_ptr<ContinuousBatch> batch_;
  std::vector<Row> rows_;
  std::vector<std::shared_ptr<Request>> joining_;  // being prefilled (the batch's joining group)
  std::vector<int64_t> tokens_run_;                // per model: what the metrics have been told
  ContinuousBatch::ForwardSeconds forward_told_;   // the batch's forward seconds the metrics have been told
};

}  // namespace lf::serve
