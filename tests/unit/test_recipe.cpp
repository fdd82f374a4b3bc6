#include <catch2/catch.hpp>

#include "config/recipe.h"
#include "core/error.h"
#include "test_helpers.h"

using lf::InputError;
using lf::load_recipe;
using Catch::Matchers::Contains;

namespace {

const char* kMinimal = R"(run: {name: t, output_dir: runs/t, seed: 7}
student: {path: models/student}
teachers:
  - {name: a, path: models/a}
  - {name: b, path: models/b, weight: 2.0}
data:
  train: data/train.jsonl
loss:
  graph: {top_k: 12}
)";

std::string error_of(const std::string& path, const std::vector<std::string>& overrides = {}) {
  try {
    load_recipe(path, overrides);
  } catch (const InputError& e) {
    return e.one_line();
  }
  FAIL("expected an InputError");
  return {};
}

}  // namespace

TEST_CASE("recipe: defaults fill keys the file leaves out", "[recipe]") {
  lf::test::TempDir dir;
  auto r = load_recipe(dir.file("r.yaml", kMinimal));
  CHECK(r.run.seed == 7);
  CHECK(r.student.path == "models/student");
  CHECK(r.student.dtype == "bf16");
  REQUIRE(r.teachers.size() == 2);
  CHECK(r.teachers[1].weight == 2.0);
  CHECK_FALSE(r.teachers[0].logits_cache.has_value());
  CHECK(r.loss.graph.top_k == 12);
  CHECK(r.loss.graph.temperature == 1.0);
  CHECK(r.loss.distill_weight == 0.5);
  CHECK(r.train.schedule == "cosine");
  CHECK_FALSE(r.train.max_steps.has_value());
  CHECK(r.data.max_length == 2048);
}

TEST_CASE("recipe: key.path=value overrides and list items by index", "[recipe]") {
  lf::test::TempDir dir;
  auto path = dir.file("r.yaml", kMinimal);
  auto r = load_recipe(path, {"train.lr=2e-5", "teachers.0.path=/x/y", "loss.token.type=kl", "train.max_steps=40",
                              "data.eval=null", "teachers.2.path=models/c"});
  CHECK(r.train.lr == Approx(2e-5));
  CHECK(r.teachers[0].path == "/x/y");
  CHECK(r.loss.token.type == "kl");
  REQUIRE(r.train.max_steps.has_value());
  CHECK(*r.train.max_steps == 40);
  REQUIRE(r.teachers.size() == 3);  // index == size appends
  CHECK(r.teachers[2].path == "models/c");
  CHECK(r.teachers[2].name == "teacher2");
}

TEST_CASE("recipe: chat_template_kwargs keep YAML's types and need a model's own template", "[recipe]") {
  lf::test::TempDir dir;
  auto path = dir.file("r.yaml", kMinimal);
  auto r = load_recipe(path, {"student.chat_template_kwargs.enable_thinking=false", "teachers.0.chat_template_kwargs.n=3",
                              "teachers.0.chat_template_kwargs.tag='007'"});
  CHECK(r.student.chat_template_kwargs == nlohmann::json({{"enable_thinking", false}}));
  CHECK(r.teachers[0].chat_template_kwargs == nlohmann::json({{"n", 3}, {"tag", "007"}}));
  CHECK(r.teachers[1].chat_template_kwargs.empty());
  CHECK_THAT(error_of(path, {"student.chat_template=chatml", "student.chat_template_kwargs.enable_thinking=false"}),
             Contains("student.chat_template_kwargs") && Contains("has no variables"));
}

TEST_CASE("recipe: unknown keys are errors with the line and a suggestion", "[recipe]") {
  lf::test::TempDir dir;
  std::string text = kMinimal;
  text += "train:\n  lr: 1.0e-4\n  grad_acum: 4\n";
  auto msg = error_of(dir.file("r.yaml", text));
  CHECK_THAT(msg, Contains("r.yaml:12"));
  CHECK_THAT(msg, Contains("unknown key 'train.grad_acum'"));
  CHECK_THAT(msg, Contains("did you mean 'train.grad_accum'"));
  auto msg2 = error_of(dir.file("r2.yaml", kMinimal), {"loss.grpah.top_k=3"});
  CHECK_THAT(msg2, Contains("override 'loss.grpah.top_k=3'"));
  CHECK_THAT(msg2, Contains("did you mean 'loss.graph'"));
}

TEST_CASE("recipe: wrong types name the key path and line", "[recipe]") {
  lf::test::TempDir dir;
  std::string text = kMinimal;
  text += "train: {epochs: many}\n";
  auto msg = error_of(dir.file("r.yaml", text));
  CHECK_THAT(msg, Contains("r.yaml:10"));
  CHECK_THAT(msg, Contains("train.epochs: expected an integer, got 'many'"));
  CHECK_THAT(error_of(dir.file("r2.yaml", kMinimal), {"train.epochs=1.5"}), Contains("expected an integer, got '1.5'"));
  CHECK_THAT(error_of(dir.file("r3.yaml", kMinimal), {"loss.graph=5"}), Contains("loss.graph: expected a mapping"));
  CHECK_THAT(error_of(dir.file("r4.yaml", kMinimal), {"teachers=5"}), Contains("teachers: expected a list"));
  CHECK_THAT(error_of(dir.file("r5.yaml", kMinimal), {"data.skip_invalid=maybe"}), Contains("expected true or false"));
}

TEST_CASE("recipe: out-of-range values and bad choices", "[recipe]") {
  lf::test::TempDir dir;
  auto path = dir.file("r.yaml", kMinimal);
  CHECK_THAT(error_of(path, {"loss.graph.top_k=0"}), Contains("loss.graph.top_k: must be >= 1 (got 0)"));
  CHECK_THAT(error_of(path, {"loss.distill_weight=1.5"}), Contains("must be in [0, 1]"));
  CHECK_THAT(error_of(path, {"train.lr=0"}), Contains("train.lr: must be > 0"));
  CHECK_THAT(error_of(path, {"train.schedule=cosin"}), Contains("did you mean 'cosine'"));
  CHECK_THAT(error_of(path, {"loss.graph.p=3"}), Contains("loss.graph.p"));
  CHECK_THAT(error_of(path, {"train.max_steps=0"}), Contains("train.max_steps: must be >= 1 or null"));
  CHECK_THAT(error_of(path, {"data.max_prompt_length=4096"}), Contains("data.max_prompt_length: must be smaller"));
  CHECK_THAT(error_of(path, {"teachers.1.name=a"}), Contains("teachers.1.name: duplicate teacher name 'a'"));
}

TEST_CASE("recipe: a default that depends on another key follows it", "[recipe]") {
  lf::test::TempDir dir;
  auto path = dir.file("r.yaml", kMinimal);
  // max_length alone: max_prompt_length follows it (at most half), instead of a refused recipe.
  CHECK(lf::load_recipe(path, {"data.max_length=96"}).data.max_prompt_length == 48);
  CHECK(lf::load_recipe(path, {}).data.max_prompt_length == 1024);
  CHECK(lf::load_recipe(path, {"data.max_length=96", "data.max_prompt_length=80"}).data.max_prompt_length == 80);
  CHECK_THAT(error_of(path, {"data.max_length=96", "data.max_prompt_length=96"}), Contains("must be smaller"));
  // New keys: teacher placement and the memory per rank.
  CHECK_THAT(error_of(path, {"teachers.0.placement=cache"}), Contains("teachers.0.placement: 'cache' reads"));
  CHECK_THAT(error_of(path, {"teachers.0.placement=spread"}), Contains("teachers.0.placement"));
  CHECK(*lf::load_recipe(path, {"run.memory_gb=80"}).run.memory_gb == 80.0);
}

TEST_CASE("recipe: missing required keys and malformed files", "[recipe]") {
  lf::test::TempDir dir;
  CHECK_THAT(error_of(dir.file("r.yaml", "student: {path: s}\n")), Contains("missing required key 'data'"));
  CHECK_THAT(error_of(dir.file("r2.yaml", "student: {dtype: bf16}\ndata: {train: x}\n")),
             Contains("missing required key 'student.path'"));
  CHECK_THAT(error_of(dir.file("r3.yaml", "student: [1, 2\n")), Contains("YAML syntax error"));
  CHECK_THAT(error_of(dir.file("r4.yaml", "- a\n- b\n")), Contains("top level must be a mapping"));
  CHECK_THAT(error_of(dir / "absent.yaml"), Contains("no such file"));
  CHECK_THAT(error_of(dir.file("r5.yaml", kMinimal), {"train.lr"}), Contains("expected key.path=value"));
  CHECK_THAT(error_of(dir.file("r6.yaml", kMinimal), {"teachers.7.path=x"}), Contains("past the end"));
  // Found by fuzz_recipe: an index past 64 bits threw std::out_of_range from std::stoul (exit 1).
  CHECK_THAT(error_of(dir.file("r6b.yaml", kMinimal), {"teachers.99999999999999999999999.path=x"}),
             Contains("'teachers.99999999999999999999999' is past the end of a list of 2"));
  CHECK_THAT(error_of(dir.file("r7.yaml", kMinimal), {"teachers.x.path=x"}), Contains("use a number"));
}

TEST_CASE("recipe: the printed config loads back to the same recipe", "[recipe]") {
  lf::test::TempDir dir;
  auto r = load_recipe(dir.file("r.yaml", kMinimal), {"train.lr=3e-5", "loss.token.top_k=5",
                                                      "student.chat_template_kwargs.enable_thinking=false",
                                                      "teachers.0.chat_template_kwargs.tag='007'"});
  const std::string printed = lf::recipe_to_yaml(r);
  auto again = load_recipe(dir.file("printed.yaml", printed));
  CHECK(lf::recipe_to_yaml(again) == printed);
  CHECK(again.train.lr == r.train.lr);
  CHECK(again.loss.token.top_k == r.loss.token.top_k);
  CHECK(again.teachers.size() == 2);
  CHECK(again.student.chat_template_kwargs == r.student.chat_template_kwargs);
  CHECK(again.teachers[0].chat_template_kwargs == nlohmann::json({{"tag", "007"}}));
  // Found by fuzz_recipe: carriage returns inside a plain scalar are kept on reading; written plain
  // they read back without them. Strings with control characters are written double-quoted.
  auto cr = load_recipe(dir.file("cr.yaml", std::string(kMinimal) + "\n"), {"data.train=data/x.jsonl\r\r"});
  REQUIRE(cr.data.train == "data/x.jsonl\r\r");
  const std::string cr_printed = lf::recipe_to_yaml(cr);
  CHECK(load_recipe(dir.file("cr-printed.yaml", cr_printed)).data.train == cr.data.train);
}

TEST_CASE("recipe: rules about distillation bind only a run that distils", "[recipe]") {
  lf::test::TempDir dir;
  auto path = dir.file("r.yaml", kMinimal);
  const std::vector<std::string> span_uld = {"alignment.positions=span", "loss.token.type=uld"};
  // With teachers and λ > 0, span with ULD is refused, naming the key ...
  CHECK_THAT(error_of(path, span_uld), Contains("alignment.positions: 'span' projects"));
  // ... but a sweep that switches the teachers off, or sets λ to 0, keeps the keys it does not use.
  auto no_teachers = span_uld;
  no_teachers.push_back("teachers=[]");
  no_teachers.push_back("loss.distill_weight=0");
  const lf::Recipe off = load_recipe(path, no_teachers);
  CHECK_FALSE(lf::distils(off));
  auto lambda_zero = span_uld;
  lambda_zero.push_back("loss.distill_weight=0");
  CHECK_FALSE(lf::distils(load_recipe(path, lambda_zero)));
  auto entropic = std::vector<std::string>{"loss.graph.nodes=vocab", "loss.graph.solver=entropic"};
  CHECK_THAT(error_of(path, entropic), Contains("loss.graph.solver"));
  entropic.push_back("loss.distill_weight=0");
  CHECK_NOTHROW(load_recipe(path, entropic));
  // On-policy distillation without teachers is not used (no completions are generated for nothing).
  auto on_policy = std::vector<std::string>{"teachers=[]", "loss.on_policy.weight=0.5"};
  const lf::Recipe sft_only = load_recipe(path, on_policy);
  CHECK(lf::effective_on_policy_weight(sft_only) == 0.0);
  CHECK(lf::effective_on_policy_weight(load_recipe(path, {"loss.on_policy.weight=0.5"})) == 0.5);
}
