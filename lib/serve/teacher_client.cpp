#include "serve/teacher_client.h"

#include <ATen/ATen.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>

#include "core/error.h"

namespace lf::serve {

using nlohmann::json;

namespace {

// A response that is not the vLLM shape asked for: not worth retrying.
struct BadAnswer : std::runtime_error {
  using std::runtime_error::runtime_error;
};

RemoteLogprobs parse(const json& body, const std::vector<int64_t>& ids, int64_t k) {
  const json& choice = body.at("choices").at(0);
  if (choice.contains("prompt_token_ids") && !choice["prompt_token_ids"].is_null() &&
      choice["prompt_token_ids"].get<std::vector<int64_t>>() != ids)
    throw BadAnswer("its prompt_token_ids differ from the ids sent (another tokenizer or a BOS added?)");
  const json& lp = choice.at("prompt_logprobs");
  const int64_t T = static_cast<int64_t>(ids.size());
  if (!lp.is_array() || static_cast<int64_t>(lp.size()) != T)
    throw BadAnswer("prompt_logprobs has " + std::to_string(lp.is_array() ? lp.size() : 0) + " entries for " +
                    std::to_string(T) + " prompt tokens");
  RemoteLogprobs out;
  out.top_ids = at::empty({T - 1, k}, at::kLong);
  out.top_logprobs = at::empty({T - 1, k}, at::kFloat);
  out.token_logprob = at::empty({T - 1}, at::kFloat);
  auto top_ids = out.top_ids.accessor<int64_t, 2>();
  auto top_logprobs = out.top_logprobs.accessor<float, 2>();
  auto token_logprob = out.token_logprob.accessor<float, 1>();
  for (int64_t pos = 1; pos < T; ++pos) {
    std::vector<std::tuple<int64_t, double, int64_t>> entries;  // rank, logprob, id
    bool own = false;
    for (const auto& [key, v] : lp[pos].items()) {
      const int64_t id = std::stoll(key);
      const double logprob = v.at("logprob").get<double>();
      const int64_t rank = v.contains("rank") && v["rank"].is_number() ? v["rank"].get<int64_t>() : 0;
      if (id == ids[pos]) {
        token_logprob[pos - 1] = static_cast<float>(logprob);
        own = true;
      }
      entries.emplace_back(rank, logprob, id);
    }
    if (!own) throw BadAnswer("position " + std::to_string(pos) + " lacks the prompt token's logprob");
    // Descending logprob; the prompt's own token may be an extra entry beyond the top k.
    std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return std::get<1>(a) > std::get<1>(b); });
    if (static_cast<int64_t>(entries.size()) < k)
      throw BadAnswer("position " + std::to_string(pos) + " has " + std::to_string(entries.size()) + " logprobs, " +
                      std::to_string(k) + " asked for");
    for (int64_t j = 0; j < k; ++j) {
      top_ids[pos - 1][j] = std::get<2>(entries[j]);
      top_logprobs[pos - 1][j] = static_cast<float>(std::get<1>(entries[j]));
    }
  }
  return out;
}

std::string where(const TeacherServerConfig& server) { return "teacher server " + server.url + " (model '" + server.model + "')"; }

// `send` on a fresh client, retried with backoff (0.5 s, 1 s, 2 s, ...) on no answer, 429 or 5xx;
// `read` turns any other answer into the result (BadAnswer or a parse error: not retried).
template <class Send, class Read>
auto with_retries(const TeacherServerConfig& server, Send send, Read read) -> decltype(read(std::declval<const httplib::Response&>())) {
  std::string last_error;
  for (int64_t attempt = 0; attempt <= server.retries; ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int64_t>(500.0 * (1 << std::min<int64_t>(attempt - 1, 6)))));
    httplib::Client client(server.url);
    const auto seconds = static_cast<time_t>(server.timeout_s);
    client.set_connection_timeout(std::min<time_t>(seconds, 10), 0);
    client.set_read_timeout(seconds, 0);
    client.set_write_timeout(seconds, 0);
    auto res = send(client);
    if (!res) {
      last_error = "no answer (" + httplib::to_string(res.error()) + ")";
      continue;
    }
    if (res->status == 429 || res->status >= 500) {
      last_error = "HTTP " + std::to_string(res->status);
      continue;
    }
    try {
      if (res->status != 200) throw BadAnswer("HTTP " + std::to_string(res->status) + ": " + res->body.substr(0, 300));
      return read(*res);
    } catch (const std::exception& e) {
      throw RuntimeFailure(where(server) + ": " + e.what());
    }
  }
  throw RuntimeFailure(where(server) + ": " + last_error + " after " + std::to_string(server.retries + 1) + " attempt(s)",
                       "is the server up? (logitfuse serve or vLLM's OpenAI server, with this model name)");
}

RemoteLogprobs score_one(const TeacherServerConfig& server, const std::vector<int64_t>& ids) {
  const json request = {{"model", server.model}, {"prompt", ids},       {"max_tokens", 0},
                        {"echo", true},          {"prompt_logprobs", server.top_k}, {"return_token_ids", true},
                        {"temperature", 0}};
  const std::string body = request.dump();
  return with_retries(
      server, [&](httplib::Client& client) { return client.Post("/v1/completions", body, "application/json"); },
      [&](const httplib::Response& res) { return parse(json::parse(res.body), ids, server.top_k); });
}

}  // namespace

void check_served_model(const TeacherServerConfig& server) {
  with_retries(
      server, [](httplib::Client& client) { return client.Get("/v1/models"); },
      [&](const httplib::Response& res) {
        std::vector<std::string> served;
        const json body = json::parse(res.body);  // kept: a range-for over a temporary's member dangles
        for (const auto& m : body.at("data")) served.push_back(m.at("id").get<std::string>());
        if (std::find(served.begin(), served.end(), server.model) == served.end()) {
          std::string list;
          for (const auto& name : served) list += (list.empty() ? "'" : ", '") + name + "'";
          throw BadAnswer("not served here (it serves " + (list.empty() ? std::string("nothing") : list) + ")");
        }
        return true;
      });
}

std::vector<RemoteLogprobs> score_remote(const TeacherServerConfig& server, const std::vector<std::vector<int64_t>>& sequences) {
  std::vector<RemoteLogprobs> out(sequences.size());
  std::atomic<size_t> next{0};
  std::exception_ptr failure;
  std::mutex failure_mutex;
  auto worker = [&] {
    for (size_t i = next++; i < sequences.size(); i = next++) {
      {
        std::lock_guard<std::mutex> lock(failure_mutex);
        if (failure) return;
      }
      try {
        out[i] = score_one(server, sequences[i]);
      } catch (...) {
        std::lock_guard<std::mutex> lock(failure_mutex);
        if (!failure) failure = std::current_exception();
        return;
      }
    }
  };
  std::vector<std::thread> threads;
  for (int64_t t = 0; t < std::max<int64_t>(1, server.concurrency); ++t) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  if (failure) std::rethrow_exception(failure);
  return out;
}

}  // namespace lf::serve
