#include <catch2/catch.hpp>

#include "core/error.h"
#include "sweep/expand.h"
#include "sweep/slurm_array.h"
#include "test_helpers.h"

using Catch::Matchers::Contains;
using lf::SweepAxis;
using lf::SweepRun;
using lf::SweepSetting;

namespace {

SweepSetting set(const std::string& key, const std::string& value) { return {key, value, value}; }

SweepAxis axis(const std::string& key, const std::vector<std::string>& values) {
  SweepAxis a{key, {}};
  for (const auto& v : values) a.values.push_back(set(key, v));
  return a;
}

std::vector<std::string> names(const std::vector<SweepRun>& runs) {
  std::vector<std::string> out;
  for (const auto& r : runs) out.push_back(r.name);
  return out;
}

}  // namespace

TEST_CASE("sweep: the grid is a cartesian product with the last key fastest", "[sweep]") {
  const auto runs = lf::expand_sweep({axis("train.lr", {"1e-5", "3e-5"}), axis("loss.distill_weight", {"0.0", "0.5", "1.0"})}, {});
  REQUIRE(runs.size() == 6);
  CHECK(names(runs) == std::vector<std::string>{"lr=1e-5_distill_weight=0.0", "lr=1e-5_distill_weight=0.5",
                                                "lr=1e-5_distill_weight=1.0", "lr=3e-5_distill_weight=0.0",
                                                "lr=3e-5_distill_weight=0.5", "lr=3e-5_distill_weight=1.0"});
  CHECK(runs[4].settings[0].text() == "train.lr=3e-5");
  CHECK(runs[4].settings[1].text() == "loss.distill_weight=0.5");
  // The same inputs give the same runs: names are a function of the values only.
  CHECK(names(lf::expand_sweep({axis("train.lr", {"1e-5", "3e-5"}), axis("loss.distill_weight", {"0.0", "0.5", "1.0"})}, {})) ==
        names(runs));
}

TEST_CASE("sweep: listed runs follow the grid and name themselves by their own keys", "[sweep]") {
  const auto runs = lf::expand_sweep({axis("train.lr", {"1e-5"})}, {{set("train.lr", "1e-4"), set("loss.token.type", "kl")}});
  CHECK(names(runs) == std::vector<std::string>{"lr=1e-5", "lr=1e-4_type=kl"});
  CHECK(lf::expand_sweep({}, {{set("train.lr", "2e-5")}}).size() == 1);
  CHECK(lf::expand_sweep({axis("train.lr", {})}, {}).empty());
}

TEST_CASE("sweep: short keys stay unique when last components collide", "[sweep]") {
  const std::vector<std::string> keys{"loss.token.temperature", "loss.graph.temperature", "train.lr"};
  CHECK(lf::short_key("loss.token.temperature", keys) == "token.temperature");
  CHECK(lf::short_key("train.lr", keys) == "lr");
  CHECK(lf::short_key("teachers.0.path", {"teachers.0.path", "teachers.1.path"}) == "0.path");
  CHECK(lf::short_key("a.b", {"a.b", "b"}) == "a.b");  // a whole key that is another's suffix
}

TEST_CASE("sweep: names are safe folder names", "[sweep]") {
  CHECK(lf::sanitize_run_name("lr=1e-5_distill_weight=0.5") == "lr=1e-5_distill_weight=0.5");
  CHECK(lf::sanitize_run_name("path=/models/a b") == "path=-models-a-b");
  CHECK(lf::sanitize_run_name("../../etc") == "etc");
  CHECK(lf::sanitize_run_name("x:[1, 2]") == "x-1-2");
  CHECK(lf::sanitize_run_name("///") == "run");
  CHECK(lf::sanitize_run_name(".hidden") == "hidden");
}

TEST_CASE("sweep: name templates substitute keys and the index", "[sweep]") {
  const auto runs = lf::expand_sweep({axis("train.lr", {"1e-5", "3e-5"})}, {}, "lr{train.lr}-{index}");
  CHECK(names(runs) == std::vector<std::string>{"lr1e-5-0", "lr3e-5-1"});
  CHECK_THAT(lf::test::error_text([] { lf::expand_sweep({axis("train.lr", {"1"})}, {}, "x{train.lrr}"); }),
             Contains("sets no key 'train.lrr'"));
  CHECK_THAT(lf::test::error_text([] { lf::expand_sweep({axis("train.lr", {"1"})}, {}, "x{train.lr"); }),
             Contains("unclosed"));
}

TEST_CASE("sweep: two runs with one name are refused", "[sweep]") {
  // A template that leaves out a varying key collapses runs onto one folder.
  CHECK_THAT(lf::test::error_text([] { lf::expand_sweep({axis("train.lr", {"1", "2"})}, {}, "fixed"); }),
             Contains("runs 0 and 1 are both named 'fixed'"));
  // Values that differ only in characters a folder name cannot hold, too.
  CHECK_THROWS_AS(lf::expand_sweep({axis("data.train", {"a/b", "a:b"})}, {}), lf::InputError);
}

TEST_CASE("sweep: SLURM array lists and shell quoting", "[sweep]") {
  CHECK(lf::array_ranges({0, 1, 2, 3}) == "0-3");
  CHECK(lf::array_ranges({1, 3, 4, 5, 8}) == "1,3-5,8");
  CHECK(lf::array_ranges({7}) == "7");
  CHECK(lf::shell_quote("a b") == "'a b'");
  CHECK(lf::shell_quote("--resume") == "--resume");
  CHECK(lf::shell_quote("train.lr=1e-5") == "train.lr=1e-5");
  CHECK(lf::shell_quote("") == "''");
  CHECK(lf::shell_quote("$HOME") == "'$HOME'");
  CHECK(lf::shell_quote("it's") == "'it'\\''s'");
}
