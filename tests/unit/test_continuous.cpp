// Continuous batching (decode/continuous.h, model/kv_cache_rows.h): rows that join a running batch,
// leave it, and join again get, at every step, the logits they get when decoded alone; serve's
// per-request fusion equals the whole-set fusion it narrows.
#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <algorithm>
#include <map>
#include <optional>

#include "decode/continuous.h"
#include "decode/generate.h"
#include "decode_fixtures.h"
#include "model/kv_cache_rows.h"
#include "serve/request_fusion.h"

using lf::test::fused_set;
using lf::test::prompts;
using lf::test::tiny;

namespace {

// Greedy decoding of one prompt alone (BatchDecoder, batch of one): each step's logits of every model.
struct Solo {
  std::vector<int64_t> tokens;                 // the token fed after step s
  std::vector<std::vector<at::Tensor>> steps;  // [step][model] logits [V]
};

Solo decode_alone(lf::ModelSet& set, const std::vector<int64_t>& prompt, int steps) {
  Solo solo;
  lf::ContinuousBatch one(set);
  std::vector<at::Tensor> logits = one.admit({prompt}, 0);
  for (int s = 0; s < steps; ++s) {
    std::vector<at::Tensor> row;
    for (const auto& l : logits) row.push_back(l[0].clone());
    solo.steps.push_back(row);
    solo.tokens.push_back(row[0].argmax().item<int64_t>());
    logits = one.step({solo.tokens.back()}).logits;
  }
  return solo;
}

// Float32 products of a 2-layer model of width ≤ 48 over ≤ 20 positions: each logit is a sum of a few
// hundred products of O(1) terms, so batching (other shapes, other summation orders) moves it by a
// few float32 ulps of O(1) values, well under 1e-4 absolute.
constexpr double kTolerance = 1e-4;

lf::ModelSet sliding_set() {
  auto window = [](lf::ModelConfig& c) {
    c.sliding_window = 3;  // shorter than every prompt here: the window matters at every step
    c.layer_types = {"sliding_attention", "full_attention"};
  };
  std::vector<lf::DecodingModel> models = {tiny("gemma", 7, 32, "gemma3_text", window)};
  return lf::make_model_set(models, lf::FusionSpec{"large_only", {}, 1.0}, lf::test::kVocab);
}

}  // namespace

TEST_CASE("continuous batch: rows joining and leaving get the logits they get alone", "[decode][serve]") {
  for (const char* kind : {"large_only", "dynamic", "sliding"}) {
    INFO(kind);
    lf::ModelSet set = std::string(kind) == "sliding" ? sliding_set() : fused_set(kind);
    const auto ps = prompts();
    constexpr int kSteps = 8;
    std::vector<Solo> solo;
    for (const auto& p : ps) solo.push_back(decode_alone(set, p, kSteps));

    // Schedule: rows 0, 1 join; two steps; row 2 (longer than both) joins; a step; row 1 leaves;
    // rows 3, 4 join; steps until done. `step_of[r]` is the next solo step row r is at.
    lf::ContinuousBatch batch(set);
    std::vector<int> order;  // prompt index of each batch row
    std::map<int, int> step_of;
    auto check_rows = [&](const std::vector<at::Tensor>& logits, size_t first) {
      for (size_t b = first; b < order.size(); ++b) {
        const int r = order[b];
        for (size_t m = 0; m < logits.size(); ++m)
          CHECK((logits[m][b - first] - solo[r].steps[step_of[r]][m]).abs().max().item<double>() < kTolerance);
      }
    };
    auto admit = [&](std::vector<int> rows) {
      std::vector<std::vector<int64_t>> prompts_in;
      for (int r : rows) prompts_in.push_back(ps[r]);
      const size_t first = order.size();
      order.insert(order.end(), rows.begin(), rows.end());
      for (int r : rows) step_of[r] = 0;
      check_rows(batch.admit(prompts_in, 0), first);
    };
    auto step = [&] {
      std::vector<int64_t> tokens;
      for (int r : order) tokens.push_back(solo[r].tokens[step_of[r]++]);
      check_rows(batch.step(tokens).logits, 0);
    };
    admit({0, 1});
    step();
    step();
    admit({2});
    step();
    // Row 1 leaves: keep rows 0 and 2 (batch rows 0 and 2).
    batch.keep({0, 2});
    order = {0, 2};
    step();
    admit({3, 4});
    step();
    step();
    CHECK(batch.rows() == 4);
    // Everyone but row 4 leaves; the cache shrinks to what row 4 attends to.
    batch.keep({3});
    order = {4};
    step();
    CHECK(batch.columns() == static_cast<int64_t>(ps[4].size()) + step_of[4]);  // its prompt and the tokens fed
  }
}

TEST_CASE("continuous batch: prefill in chunks, between the running rows' steps, and rows that run only some models",
          "[decode][serve]") {
  for (const char* kind : {"dynamic", "sliding"}) {
    INFO(kind);
    lf::ModelSet set = std::string(kind) == "sliding" ? sliding_set() : fused_set(kind);
    const size_t models = set.run().size();
    const auto ps = prompts();
    constexpr int kSteps = 10;  // the row that stays longest takes 4 + chunks steps here
    std::vector<Solo> solo;
    for (const auto& p : ps) solo.push_back(decode_alone(set, p, kSteps));
    // What each prompt runs: all models, the large model alone, or the large model and the last one.
    std::vector<std::vector<size_t>> uses(ps.size());
    for (size_t r = 0; r < ps.size(); ++r) {
      if (r % 3 == 0 || models == 1) {
        for (size_t i = 0; i < models; ++i) uses[r].push_back(i);
      } else {
        uses[r] = r % 3 == 1 ? std::vector<size_t>{0} : std::vector<size_t>{0, models - 1};
      }
    }
    lf::ContinuousBatch batch(set);
    std::vector<int> order;
    std::map<int, int> step_of;
    auto check = [&](const lf::BatchLogits& logits, size_t first) {
      REQUIRE(logits.rows == static_cast<int64_t>(order.size() - first));
      for (size_t b = first; b < order.size(); ++b) {
        const int r = order[b];
        for (size_t m = 0; m < models; ++m) {
          const bool runs = std::find(uses[r].begin(), uses[r].end(), m) != uses[r].end();
          CHECK((logits.slot[m][b - first] >= 0) == runs);
          if (!runs) continue;
          const at::Tensor got = logits.of(m, {static_cast<int64_t>(b - first)})[0];
          CHECK((got - solo[r].steps[step_of[r]][m]).abs().max().item<double>() < kTolerance);
        }
      }
    };
    auto step = [&] {
      std::vector<int64_t> tokens;
      for (int r : order) tokens.push_back(solo[r].tokens[step_of[r]++]);
      check(batch.step(tokens), 0);
    };
    // Rows 0 and 1 join whole; rows 2, 3 and 4 join two tokens per model and step, the running rows
    // decoding between the chunks.
    auto begin = [&](std::vector<int> rows) {
      std::vector<std::vector<int64_t>> in;
      std::vector<std::vector<size_t>> use;
      for (int r : rows) in.push_back(ps[r]), use.push_back(uses[r]);
      batch.begin_admit(in, 0, use);
    };
    auto joined = [&](std::vector<int> rows, const lf::BatchLogits& logits) {
      const size_t first = order.size();
      order.insert(order.end(), rows.begin(), rows.end());
      for (int r : rows) step_of[r] = 0;
      check(logits, first);
    };
    begin({0, 1});
    joined({0, 1}, *batch.prefill(0));
    step();
    begin({2, 3, 4});
    int chunks = 0;
    std::optional<lf::BatchLogits> done;
    while (!(done = batch.prefill(6))) {
      ++chunks;
      CHECK(batch.rows() == 2);
      step();
    }
    CHECK(chunks >= 2);  // the prompts are longer than two columns of three rows
    joined({2, 3, 4}, *done);
    step();
    // Row 3 (it runs every model) stops running the last one, as a routed row leaves the experts it
    // was not routed to: its other models' logits stay those it gets alone, and of_or gives it the
    // fallback model's row there while row 0 keeps its own.
    if (models > 2) {
      const int64_t at3 = std::find(order.begin(), order.end(), 3) - order.begin();
      const int64_t at0 = std::find(order.begin(), order.end(), 0) - order.begin();
      batch.leave(models - 1, {at3});
      uses[3].pop_back();  // every model in order: the last is models - 1
      std::vector<int64_t> tokens;
      for (int r : order) tokens.push_back(solo[r].tokens[step_of[r]++]);
      const lf::BatchLogits logits = batch.step(tokens);
      check(logits, 0);
      CHECK(at::equal(logits.of_or(models - 1, {at3, at0}, 1)[0], logits.of(1, {at3})[0]));
      CHECK(at::equal(logits.of_or(models - 1, {at3, at0}, 1)[1], logits.of(models - 1, {at0})[0]));
    }
    batch.keep({1, 2, 4});
    order = {1, 2, 4};
    step();
    // Rows 1 and 4 run the large model alone and row 2 the large and the last: nothing runs the
    // others now.
    if (models > 1) {
      std::vector<int64_t> tokens;
      for (int r : order) tokens.push_back(solo[r].tokens[step_of[r]]);
      const auto logits = batch.step(tokens);
      CHECK(logits.logits[0].size(0) == 3);
      CHECK(logits.logits[models - 1].size(0) == 1);
      for (size_t m = 1; m + 1 < models; ++m) CHECK_FALSE(logits.logits[m].defined());
    }
  }
  // Positions run: a row that needs only the large model costs the others nothing.
  lf::ModelSet set = fused_set("dynamic");
  lf::ContinuousBatch batch(set);
  const std::vector<int64_t> prompt = prompts()[0];
  batch.begin_admit({prompt, prompt}, 0, {{0}, {0}});
  REQUIRE(batch.prefill(0));
  batch.step({1, 2});
  CHECK(batch.tokens_run()[0] == 2 * static_cast<int64_t>(prompt.size()) + 2);
  for (size_t m = 1; m < set.run().size(); ++m) CHECK(batch.tokens_run()[m] == 0);
}

TEST_CASE("continuous batch: cache rows keep their keys, masks and length", "[decode][serve]") {
  lf::KVCache a, b;
  auto layer = [](int64_t rows, int64_t length, double value) {
    return at::full({rows, 1, length + 4, 2}, value, at::TensorOptions().dtype(at::kFloat));
  };
  a.keys = {layer(2, 3, 1.0)};
  a.values = {layer(2, 3, 2.0)};
  a.length = 3;
  b.keys = {layer(1, 5, 3.0)};
  b.values = {layer(1, 5, 4.0)};
  b.length = 5;
  lf::append_cache_rows(a, b);
  REQUIRE(a.length == 5);
  REQUIRE(lf::cache_rows(a) == 3);
  // a's rows are right-aligned behind two masked columns.
  CHECK(a.key_mask.to(at::kLong).sum(1).equal(at::tensor({3, 3, 5}, at::kLong)));
  CHECK(a.keys[0][0][0][2][0].item<float>() == 1.0f);
  CHECK(a.keys[0][0][0][1][0].item<float>() == 0.0f);
  CHECK(a.values[0][2][0][0][0].item<float>() == 4.0f);
  // Keeping a's two rows drops the two columns none of them attends to.
  lf::keep_cache_rows(a, {1, 0});
  CHECK(a.length == 3);
  CHECK(a.key_mask.all().item<bool>());
  CHECK(a.keys[0].narrow(2, 0, 3).eq(1.0).all().item<bool>());
  lf::keep_cache_rows(a, {});
  CHECK(lf::cache_rows(a) == 0);
}

TEST_CASE("serve: a request's fusion narrows the set's and fuses like the set it names", "[decode][serve]") {
  lf::ModelSet set = fused_set("dynamic");
  lf::ContinuousBatch batch(set);
  const auto logits = batch.admit(prompts(), 0);
  // The default fusion is the set's own.
  const auto all = lf::serve::fuse_view(lf::serve::fusion_view(set, lf::serve::default_fusion(set)), logits);
  CHECK(at::equal(all.logits, lf::fuse_rows(set, logits).logits));
  // Off: the large model's logits.
  lf::serve::RequestFusion off = lf::serve::default_fusion(set);
  off.spec.strategy = "large_only";
  off.experts.clear();
  CHECK(at::equal(lf::serve::fuse_view(lf::serve::fusion_view(set, off), logits).logits, logits[0].to(at::kFloat)));
  // One expert of two: the same as a set loaded with that expert alone.
  lf::serve::RequestFusion second = lf::serve::default_fusion(set);
  second.experts = {1};
  lf::ModelSet alone = fused_set("dynamic");
  alone.experts.erase(alone.experts.begin());
  const auto want = lf::fuse_rows(alone, {logits[0], logits[1], logits[3]});
  CHECK(at::equal(lf::serve::fuse_view(lf::serve::fusion_view(set, second), logits).logits, want.logits));
}
