#include "decode/config.h"

#include <regex>

#include "config/schema.h"

namespace lf {

using schema::at_least;
using schema::greater_than;
using schema::in_range;
using schema::non_empty;
using schema::one_of;

namespace {
const std::vector<std::string> kDtypes = {"auto", "fp32", "bf16", "fp16"};
}

template <class V>
void visit(V& v, ModelSpec& c) {
  v("name", c.name);
  v.required("path", c.path, non_empty());
  v("adapter", c.adapter);
  v("dtype", c.dtype, one_of(kDtypes));
  v("device", c.device, non_empty());
}

template <class V>
void visit(V& v, ModelsConfig& c) {
  v.required("large", c.large);
  v("base", c.base);
  v("experts", c.experts);
}

template <class V>
void visit(V& v, AlphaConfig& c) {
  v("min", c.min);
  v("max", c.max);
  v("step", c.step, greater_than(0.0));
}

template <class V>
void visit(V& v, FusionConfig& c) {
  v("strategy", c.strategy, one_of({"dynamic", "static", "large_only", "expert_only"}));
  v("alpha", c.alpha);
  v("static_alpha", c.static_alpha);
  v("expert", c.expert);
  v("multi_expert", c.multi_expert, one_of({"sum", "active", "closest", "route"}));
}

template <class V>
void visit(V& v, SamplingConfig& c) {
  v("temperature", c.temperature, at_least(0.0));
  v("top_p", c.top_p, schema::Check<double>([](const double& p) {
      return (p > 0 && p <= 1) ? std::string() : "must be in (0, 1] (got " + schema::to_text(p) + ")";
    }));
  v("top_k", c.top_k, at_least<int64_t>(0));
  v("seed", c.seed);
}

template <class V>
void visit(V& v, GenerationConfig& c) {
  v("max_new_tokens", c.max_new_tokens, at_least<int64_t>(1));
  v("stop", c.stop);
  v("batch_size", c.batch_size, at_least<int64_t>(1));
  v("chat_template", c.chat_template, non_empty());
  v("chat_template_kwargs", c.chat_template_kwargs);
  v("kv_cache", c.kv_cache);
  v("packed_head", c.packed_head);
  v("shots", c.shots, at_least<int64_t>(0));
  v("shots_file", c.shots_file);
}

template <class V>
void visit(V& v, TaskConfig& c) {
  v("name", c.name);
  v.required("type", c.type, one_of({"exact_match", "multiple_choice", "perplexity"}));
  v.required("data", c.data, non_empty());
  v("extract", c.extract, one_of({"last_number", "regex"}));
  v("regex", c.regex);
  v("score", c.score, one_of({"sum", "mean"}));
  v("limit", c.limit, schema::null_or_at_least<int64_t>(1));
  v("shots", c.shots, schema::null_or_at_least<int64_t>(0));
  v("shots_file", c.shots_file);
}

template <class V>
void visit_decoding(V& v, DecodingConfig& c) {
  v("model", c.model);
  v("models", c.models);
  v("fusion", c.fusion);
  v("sampling", c.sampling);
  v("generation", c.generation);
}

template <class V>
void visit(V& v, GenerateConfig& c) {
  visit_decoding(v, c);
  v.required("input", c.input, non_empty());
  v.required("output", c.output, non_empty());
  v("trace", c.trace);
}

template <class V>
void visit(V& v, EvalConfig& c) {
  visit_decoding(v, c);
  v.required("tasks", c.tasks);
  v("output_dir", c.output_dir, non_empty());
}

template <class V>
void visit(V& v, ServeSettings& c) {
  v("host", c.host, non_empty());
  v("port", c.port, in_range<int64_t>(0, 65535));
  v("model_name", c.model_name);
  v("max_batch", c.max_batch, at_least<int64_t>(1));
  v("max_queue", c.max_queue, at_least<int64_t>(0));
  v("prefill_tokens", c.prefill_tokens, at_least<int64_t>(0));
  v("max_context", c.max_context, at_least<int64_t>(0));
  v("threads", c.threads, at_least<int64_t>(0));
  v("max_body_bytes", c.max_body_bytes, at_least<int64_t>(1024));
  v("request_timeout", c.request_timeout, in_range<double>(0.1, 3600.0));
  v("max_connections", c.max_connections, in_range<int64_t>(1, 1 << 20));
}

template <class V>
void visit(V& v, ServeConfig& c) {
  visit_decoding(v, c);
  v("serve", c.serve);
  v("input", c.input);
  v("output", c.output);
  v("trace", c.trace);
}

namespace {

// Throws an InputError for `path`, located at its YAML line (or the override that set it).
[[noreturn]] void fail(const schema::Reader& reader, const YAML::Node& root, const std::string& path,
                       const std::string& what, const std::string& hint = {}) {
  throw InputError(reader.where(path, schema::node_at_path(root, path)) + path + ": " + what, hint);
}

// Rules that involve more than one key, shared by both commands.
void check_decoding(DecodingConfig& c, const schema::Reader& reader, const YAML::Node& root) {
  if (c.model && c.models) fail(reader, root, "model", "give either 'model' (a plain model) or 'models' (fusion), not both");
  if (!c.model && !c.models)
    fail(reader, root, "models", "missing: give 'model: {path: DIR}' or 'models: {large, base, experts}'");
  const auto& grid = c.fusion.alpha;
  if (grid.max < grid.min) fail(reader, root, "fusion.alpha.max", "must be >= fusion.alpha.min");
  if ((grid.max - grid.min) / grid.step > 10000) fail(reader, root, "fusion.alpha.step", "the α grid would exceed 10001 points");
  if (!c.generation.chat_template_kwargs.is_object())
    fail(reader, root, "generation.chat_template_kwargs", "expected a mapping of template variables");
  if (!c.generation.chat_template_kwargs.empty() && c.generation.chat_template != "auto")
    fail(reader, root, "generation.chat_template_kwargs",
         "chat template '" + c.generation.chat_template + "' has no variables (use chat_template: auto, the model's own Jinja template)");
  if (c.generation.shots > 0 && c.generation.shots_file.empty())
    fail(reader, root, "generation.shots_file", "generation.shots needs a file of worked examples");
  if (c.model) {
    if (root["fusion"]) fail(reader, root, "fusion", "fusion needs 'models' (large, base, experts); 'model' decodes one model");
    if (c.model->name.empty()) c.model->name = "model";
    return;
  }
  ModelsConfig& m = *c.models;
  if (m.large.name.empty()) m.large.name = "large";
  if (m.base && m.base->name.empty()) m.base->name = "base";
  std::vector<std::string> names = {m.large.name};
  if (m.base) names.push_back(m.base->name);
  for (size_t i = 0; i < m.experts.size(); ++i) {
    auto& e = m.experts[i];
    if (e.name.empty()) e.name = "expert" + std::to_string(i);
    for (const auto& other : names)
      if (other == e.name) fail(reader, root, "models.experts." + std::to_string(i) + ".name", "duplicate model name '" + e.name + "'");
    names.push_back(e.name);
  }
  const std::string& s = c.fusion.strategy;
  if ((s == "dynamic" || s == "static") && !m.base)
    fail(reader, root, "models.base", "strategy '" + s + "' needs the small base model the experts were tuned from");
  if (s != "large_only" && m.experts.empty())
    fail(reader, root, "models.experts", "strategy '" + s + "' needs at least one expert");
  if (!c.fusion.expert.empty()) {
    bool found = false;
    for (const auto& e : m.experts) found = found || e.name == c.fusion.expert;
    if (!found) fail(reader, root, "fusion.expert", "no expert named '" + c.fusion.expert + "'");
  }
}

void check_tasks(EvalConfig& c, const schema::Reader& reader, const YAML::Node& root) {
  if (c.tasks.empty()) fail(reader, root, "tasks", "needs at least one task");
  std::vector<std::string> names;
  for (size_t i = 0; i < c.tasks.size(); ++i) {
    auto& t = c.tasks[i];
    const std::string path = "tasks." + std::to_string(i);
    if (t.name.empty()) t.name = t.type + std::to_string(i);
    for (const auto& other : names)
      if (other == t.name) fail(reader, root, path + ".name", "duplicate task name '" + t.name + "'");
    names.push_back(t.name);
    if (t.shots.value_or(0) > 0 && !t.shots_file && c.generation.shots_file.empty())
      fail(reader, root, path + ".shots_file", "shots need a file of worked examples (here or generation.shots_file)");
    if (t.type == "exact_match" && t.extract == "regex") {
      if (t.regex.empty()) fail(reader, root, path + ".regex", "extract=regex needs a regex");
      try {
        std::regex check(t.regex);
      } catch (const std::regex_error& e) {
        fail(reader, root, path + ".regex", std::string("not a valid regular expression: ") + e.what());
      }
    }
  }
}

template <class Config>
Config load(const std::string& path, const std::vector<std::string>& overrides,
            void (*extra)(Config&, const schema::Reader&, const YAML::Node&)) {
  schema::Source source{path, {}};
  YAML::Node root = schema::load_yaml_file(path);
  schema::apply_overrides(root, overrides, source);
  Config config;
  schema::Reader reader(root, "", source);
  visit(reader, config);
  reader.finish();
  check_decoding(config, reader, root);
  if (extra) extra(config, reader, root);
  return config;
}

template <class Config>
std::string to_yaml(const Config& config) {
  YAML::Emitter out;
  out.SetDoublePrecision(17);
  schema::Writer writer(out);
  writer.write(config);
  return std::string(out.c_str()) + "\n";
}

}  // namespace

GenerateConfig load_generate_config(const std::string& path, const std::vector<std::string>& overrides) {
  return load<GenerateConfig>(path, overrides, nullptr);
}

EvalConfig load_eval_config(const std::string& path, const std::vector<std::string>& overrides) {
  return load<EvalConfig>(path, overrides, &check_tasks);
}

ServeConfig load_serve_config(const std::string& path, const std::vector<std::string>& overrides) {
  return load<ServeConfig>(path, overrides, nullptr);
}

std::string generate_config_to_yaml(const GenerateConfig& config) { return to_yaml(config); }
std::string serve_config_to_yaml(const ServeConfig& config) { return to_yaml(config); }
std::string eval_config_to_yaml(const EvalConfig& config) { return to_yaml(config); }

}  // namespace lf
