#include "config/recipe.h"

#include <algorithm>
#include <functional>

#include "config/schema.h"

namespace lf {

using schema::at_least;
using schema::greater_than;
using schema::in_range;
using schema::non_empty;
using schema::one_of;

namespace {
const std::vector<std::string> kDtypes = {"fp32", "bf16", "fp16"};
}

template <class V>
void visit(V& v, RunConfig& c) {
  v("name", c.name, non_empty());
  v("output_dir", c.output_dir, non_empty());
  v("seed", c.seed);
  v("device", c.device, non_empty());
  v("memory_gb", c.memory_gb, schema::null_or_at_least<double>(0.0));
}

template <class V>
void visit(V& v, LoraRecipe& c) {
  v("r", c.r, greater_than<int64_t>(0));
  v("alpha", c.alpha, greater_than(0.0));
  v("dropout", c.dropout, schema::Check<double>([](const double& p) {
      return p >= 0 && p < 1 ? std::string() : "must be in [0, 1) (got " + schema::to_text(p) + ")";
    }));
  v("target_modules", c.target_modules, schema::Check<std::vector<std::string>>([](const std::vector<std::string>& t) {
      return t.empty() ? std::string("must name at least one module") : std::string();
    }));
  v("use_rslora", c.use_rslora);
  v("init", c.init, one_of({"kaiming", "gaussian"}));
}

template <class V>
void visit(V& v, StudentConfig& c) {
  v.required("path", c.path, non_empty());
  v("adapter", c.adapter);
  v("lora", c.lora);
  v("dtype", c.dtype, one_of(kDtypes));
  v("chat_template", c.chat_template, non_empty());
  v("chat_template_kwargs", c.chat_template_kwargs);
  v("tokenizer", c.tokenizer);
}

template <class V>
void visit(V& v, TeacherServerConfig& c) {
  v.required("url", c.url, non_empty());
  v.required("model", c.model, non_empty());
  v("top_k", c.top_k, at_least<int64_t>(0));
  v("timeout_s", c.timeout_s, greater_than(0.0));
  v("retries", c.retries, at_least<int64_t>(0));
  v("concurrency", c.concurrency, at_least<int64_t>(1));
}

template <class V>
void visit(V& v, TeacherConfig& c) {
  v("name", c.name);
  v.required("path", c.path, non_empty());
  v("adapter", c.adapter);
  v("dtype", c.dtype, one_of(kDtypes));
  v("chat_template", c.chat_template, non_empty());
  v("chat_template_kwargs", c.chat_template_kwargs);
  v("weight", c.weight, at_least(0.0));
  v("logits_cache", c.logits_cache);
  v("device", c.device, non_empty());
  v("tokenizer", c.tokenizer);
  v("placement", c.placement, one_of({"auto", "replicate", "shard", "cache", "server"}));
  v("server", c.server);
}

template <class V>
void visit(V& v, DataConfig& c) {
  v.required("train", c.train, non_empty());
  v("eval", c.eval);
  v("max_length", c.max_length, at_least<int64_t>(2));
  v("max_prompt_length", c.max_prompt_length, at_least<int64_t>(0));
  v("skip_invalid", c.skip_invalid);
}

template <class V>
void visit(V& v, TokenLossConfig& c) {
  v("type", c.type, one_of({"uld", "kl", "rkl", "jsd", "none"}));
  v("top_k", c.top_k, schema::null_or_at_least<int64_t>(1));
  v("temperature", c.temperature, greater_than(0.0));
  v("beta", c.beta, in_range(0.0, 1.0));
}

template <class V>
void visit(V& v, GraphLossConfig& c) {
  v("type", c.type, one_of({"gld", "none"}));
  v("weight", c.weight, at_least(0.0));
  v("top_k", c.top_k, at_least<int64_t>(1));
  v("temperature", c.temperature, greater_than(0.0));
  v("nodes", c.nodes, one_of({"rank", "vocab"}));
  v("feature", c.feature, one_of({"strength", "self", "norm"}));
  v("normalize_features", c.normalize_features);
  v("p", c.p, in_range<int64_t>(1, 2));
  v("solver", c.solver, one_of({"sorted", "entropic"}));
  v("epsilon", c.epsilon, greater_than(0.0));
}

template <class V>
void visit(V& v, OnPolicyConfig& c) {
  v("weight", c.weight, in_range(0.0, 1.0));
  v("max_new_tokens", c.max_new_tokens, at_least<int64_t>(1));
}

template <class V>
void visit(V& v, LossConfig& c) {
  v("distill_weight", c.distill_weight, in_range(0.0, 1.0));
  v("teacher_mix", c.teacher_mix, one_of({"uniform", "weights", "min_ce"}));
  v("token", c.token);
  v("graph", c.graph);
  v("on_policy", c.on_policy);
}

template <class V>
void visit(V& v, AlignmentConfig& c) {
  v("positions", c.positions, one_of({"offsets", "exact", "dtw", "index", "span"}));
  v("vocab", c.vocab, one_of({"exact", "mined"}));
  v("cache_dir", c.cache_dir);
}

template <class V>
void visit(V& v, TrainConfig& c) {
  v("epochs", c.epochs, at_least<int64_t>(1));
  v("max_steps", c.max_steps, schema::null_or_at_least<int64_t>(1));
  v("micro_batch_size", c.micro_batch_size, at_least<int64_t>(1));
  v("grad_accum", c.grad_accum, at_least<int64_t>(1));
  v("lr", c.lr, greater_than(0.0));
  v("weight_decay", c.weight_decay, at_least(0.0));
  v("schedule", c.schedule, one_of({"constant", "linear", "cosine"}));
  v("warmup_ratio", c.warmup_ratio, in_range(0.0, 1.0));
  v("clip_grad", c.clip_grad, at_least(0.0));
  v("precision", c.precision, one_of({"fp32", "bf16"}));
  v("activation_checkpointing", c.activation_checkpointing);
  v("logit_chunk_size", c.logit_chunk_size, at_least<int64_t>(1));
  v("eval_every_steps", c.eval_every_steps, at_least<int64_t>(0));
  v("adam_beta1", c.adam_beta1, in_range(0.0, 0.999999));
  v("adam_beta2", c.adam_beta2, in_range(0.0, 0.999999));
  v("adam_eps", c.adam_eps, greater_than(0.0));
  v("skip_nonfinite", c.skip_nonfinite);
}

template <class V>
void visit(V& v, ChatTemplate& c) {
  v("system_prefix", c.system_prefix);
  v("system_suffix", c.system_suffix);
  v("user_prefix", c.user_prefix);
  v("user_suffix", c.user_suffix);
  v("assistant_prefix", c.assistant_prefix);
  v("assistant_suffix", c.assistant_suffix);
  v("add_bos", c.add_bos);
  v("add_eos", c.add_eos);
  v("system_in_first_user", c.system_in_first_user);
  v("system_in_user_format", c.system_in_user_format);
}

template <class V>
void visit(V& v, CheckpointConfig& c) {
  v("every_steps", c.every_steps, at_least<int64_t>(0));
  v("keep_last", c.keep_last, at_least<int64_t>(1));
}

template <class V>
void visit(V& v, LogConfig& c) {
  v("every_steps", c.every_steps, at_least<int64_t>(1));
  v("tensorboard", c.tensorboard);
}

template <class V>
void visit(V& v, DistConfig& c) {
  v("backend", c.backend, one_of({"auto", "nccl", "cpu"}));
  v("zero", c.zero, in_range<int64_t>(0, 3));
  v("bucket_mb", c.bucket_mb, in_range(0.001, 4096.0));
  v("timeout_s", c.timeout_s, greater_than(0.0));
  v("overlap", c.overlap);
}

template <class V>
void visit(V& v, Recipe& c) {
  v("run", c.run);
  v.required("student", c.student);
  v("teachers", c.teachers);
  v.required("data", c.data);
  v("loss", c.loss);
  v("alignment", c.alignment);
  v("train", c.train);
  v("checkpoint", c.checkpoint);
  v("log", c.log);
  v("dist", c.dist);
  v("chat_templates", c.chat_templates);
}

namespace {

// Throws an InputError for `path` (key.path), located at its YAML line.
using Fail = std::function<void(const std::string& path, const std::string& what, const std::string& hint)>;

// What LoRA training cannot be combined with (docs/lora.md), and adapters on teachers that run here.
void check_adapter_keys(const Recipe& recipe, const Fail& fail) {
  if (trains_adapters(recipe) && recipe.dist.zero == 3)
    fail(recipe.student.lora ? "student.lora" : "student.adapter",
         "LoRA with dist.zero=3 (a sharded frozen base) is not yet available",
         "use dist.zero 0, 1 or 2: only the adapters' gradients and optimizer state are reduced and sharded");
  for (size_t i = 0; i < recipe.teachers.size(); ++i) {
    const auto& t = recipe.teachers[i];
    if (t.adapter && t.placement == "shard")
      fail("teachers." + std::to_string(i) + ".adapter", "a sharded teacher with an adapter is not yet available",
           "use placement replicate, or merge the adapter first (logitfuse merge --lora)");
  }
}

// Teachers' names are unique; each placement agrees with its logits_cache and server keys.
void check_teacher_keys(Recipe& recipe, const Fail& fail) {
  std::vector<std::string> names;
  for (size_t i = 0; i < recipe.teachers.size(); ++i) {
    auto& teacher = recipe.teachers[i];
    if (teacher.name.empty()) teacher.name = "teacher" + std::to_string(i);
    for (const auto& other : names)
      if (other == teacher.name)
        fail("teachers." + std::to_string(i) + ".name", "duplicate teacher name '" + teacher.name + "'", {});
    names.push_back(teacher.name);
  }
  for (size_t i = 0; i < recipe.teachers.size(); ++i) {
    const auto& t = recipe.teachers[i];
    const std::string n = std::to_string(i), key = "teachers." + n + ".placement";
    if (t.placement == "cache" && !t.logits_cache)
      fail(key, "'cache' reads the teacher's logits from teachers." + n + ".logits_cache, which is not set",
           "run logitfuse cache-logits and set logits_cache, or use replicate or shard");
    if (t.placement == "server" && !t.server)
      fail(key, "'server' queries teachers." + n + ".server, which is not set", "set server: {url, model}, or use replicate or shard");
    if (t.placement == "server" && t.logits_cache)
      fail(key, "'server' queries the teacher at every step, but teachers." + n + ".logits_cache is set",
           "drop logits_cache, or set placement: cache (or auto)");
    if (t.server && (t.placement == "replicate" || t.placement == "shard"))
      fail(key, "'" + t.placement + "' runs the teacher here, but teachers." + n + ".server is set",
           "drop server, or set placement: server (or auto)");
    if (t.server && t.server->url.rfind("http://", 0) != 0)
      fail("teachers." + n + ".server.url", "expected http://host:port (got '" + t.server->url + "')", {});
    if (t.logits_cache && (t.placement == "replicate" || t.placement == "shard"))
      fail(key, "'" + t.placement + "' runs the teacher, but teachers." + n + ".logits_cache is set",
           "drop logits_cache, or set placement: cache (or auto)");
  }
  if (recipe.loss.teacher_mix == "weights" && !recipe.teachers.empty()) {
    double total = 0;
    for (const auto& t : recipe.teachers) total += t.weight;
    if (total <= 0) fail("loss.teacher_mix", "'weights' needs a positive teachers.N.weight on some teacher", {});
  }
}

// Rules about the distillation terms bind only a run that distils (distils()): a recipe whose
// teachers a sweep switched off, or whose λ is 0, keeps them without being refused.
void check_distillation_keys(const Recipe& recipe, const Fail& fail) {
  if (!distils(recipe)) return;
  if (recipe.loss.on_policy.weight > 0) {
    for (size_t i = 0; i < recipe.teachers.size(); ++i)
      if (recipe.teachers[i].logits_cache)
        fail("loss.on_policy.weight", "teachers." + std::to_string(i) + " reads a logits cache, which holds only the data's responses",
             "run the teachers online (drop logits_cache) or set loss.on_policy.weight: 0");
      else if (recipe.teachers[i].server)
        fail("loss.on_policy.weight", "teachers." + std::to_string(i) + " is on a server, which scores only the data's responses here",
             "run the teacher locally (drop server) or set loss.on_policy.weight: 0");
  }
  for (size_t i = 0; i < recipe.teachers.size(); ++i)
    for (double t : {recipe.loss.token.temperature, recipe.loss.graph.temperature})
      if (recipe.teachers[i].server && t != 1.0)
        fail("teachers." + std::to_string(i) + ".server",
             "a server gives logprobs at temperature 1 only, and the recipe's losses use " + std::to_string(t),
             "set loss.token.temperature and loss.graph.temperature to 1, or run the teacher locally");
  if (recipe.alignment.positions == "span" && recipe.loss.token.type == "uld")
    fail("alignment.positions", "'span' projects the teacher onto the student's token ids, which ULD does not use",
         "use span with loss.token.type kl, rkl or jsd, or offsets/exact/dtw/index with uld");
}

// Template variables exist only in a model's own (Jinja) template.
void check_template_keys(Recipe& recipe, const Fail& fail) {
  for (auto& [name, t] : recipe.chat_templates) t.name = name;
  auto kwargs_need_auto = [&](const std::string& key, const std::string& chat_template, const nlohmann::json& kwargs) {
    if (!kwargs.is_object()) fail(key + ".chat_template_kwargs", "expected a mapping of template variables", {});
    if (!kwargs.empty() && chat_template != "auto")
      fail(key + ".chat_template_kwargs", "chat template '" + chat_template + "' has no variables",
           "use chat_template: auto (the model's own Jinja template) or drop chat_template_kwargs");
  };
  kwargs_need_auto("student", recipe.student.chat_template, recipe.student.chat_template_kwargs);
  for (size_t i = 0; i < recipe.teachers.size(); ++i)
    kwargs_need_auto("teachers." + std::to_string(i), recipe.teachers[i].chat_template, recipe.teachers[i].chat_template_kwargs);
}

// Rules that involve more than one key.
void check_cross_keys(Recipe& recipe, const schema::Reader& reader, const YAML::Node& root) {
  const Fail fail = [&](const std::string& path, const std::string& what, const std::string& hint) {
    throw InputError(reader.where(path, schema::node_at_path(root, path)) + path + ": " + what, hint);
  };
  // A default that depends on another key follows it: unset, max_prompt_length is at most half of
  // max_length, so setting max_length alone never makes the recipe invalid.
  const YAML::Node data = root["data"];
  const bool prompt_length_set = data && data.IsMap() && data["max_prompt_length"];
  if (!prompt_length_set) recipe.data.max_prompt_length = std::min<int64_t>(1024, recipe.data.max_length / 2);
  if (recipe.data.max_prompt_length >= recipe.data.max_length)
    fail("data.max_prompt_length", "must be smaller than data.max_length (" + std::to_string(recipe.data.max_length) + ")", {});
  check_teacher_keys(recipe, fail);
  check_adapter_keys(recipe, fail);
  check_distillation_keys(recipe, fail);
  check_template_keys(recipe, fail);
  if (distils(recipe) && recipe.loss.graph.type == "gld" && recipe.loss.graph.nodes == "vocab" &&
      recipe.loss.graph.solver == "entropic")
    fail("loss.graph.solver", "'entropic' is defined on rank nodes", "use loss.graph.nodes=rank with the entropic solver");
}

}  // namespace

bool distils(const Recipe& recipe) { return !recipe.teachers.empty() && recipe.loss.distill_weight > 0; }

bool trains_adapters(const Recipe& recipe) { return recipe.student.lora || recipe.student.adapter; }

double effective_on_policy_weight(const Recipe& recipe) {
  return distils(recipe) ? recipe.loss.on_policy.weight : 0.0;
}

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  schema::Source source{path, {}};
  YAML::Node root = schema::load_yaml_file(path);
  schema::apply_overrides(root, overrides, source);
  Recipe recipe;
  schema::Reader reader(root, "", source);
  visit(reader, recipe);
  reader.finish();
  check_cross_keys(recipe, reader, root);
  return recipe;
}

std::string recipe_to_yaml(const Recipe& recipe) {
  YAML::Emitter out;
  out.SetDoublePrecision(17);
  schema::Writer writer(out);
  writer.write(recipe);
  return std::string(out.c_str()) + "\n";
}

}  // namespace lf
