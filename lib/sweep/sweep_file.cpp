#include "sweep/sweep_file.h"

#include <filesystem>
#include <set>

#include "config/recipe.h"
#include "config/schema.h"
#include "core/error.h"
#include "core/strings.h"

namespace fs = std::filesystem;

namespace lf {

template <class V>
void visit(V& v, SweepSlurmOptions& c) {
  v("job_name", c.job_name, schema::non_empty());
  v("partition", c.partition);
  v("account", c.account);
  v("time", c.time);
  v("max_parallel", c.max_parallel, schema::at_least<int64_t>(1));
  v("nodes", c.nodes, schema::at_least<int64_t>(1));
  v("ntasks_per_node", c.ntasks_per_node, schema::at_least<int64_t>(1));
  v("gpus_per_node", c.gpus_per_node, schema::at_least<int64_t>(0));
  v("cpus_per_task", c.cpus_per_task, schema::at_least<int64_t>(1));
  v("signal_seconds", c.signal_seconds, schema::at_least<int64_t>(1));
  v("sbatch", c.sbatch);
}

namespace {

const std::vector<std::string> kTopKeys = {"base", "output_root", "name", "grid", "list", "overrides", "slurm"};

// YAML single quotes keep a value a string when the override parser reads it back.
std::string yaml_quote(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

class SweepReader {
 public:
  explicit SweepReader(std::string file) : file_(std::move(file)) {}

  std::string at(const YAML::Node& node) const {
    if (node.IsDefined() && !node.Mark().is_null()) return file_ + ":" + std::to_string(node.Mark().line + 1) + ": ";
    return file_ + ": ";
  }

  std::string scalar(const YAML::Node& node, const std::string& key) const {
    if (!node.IsScalar()) throw InputError(at(node) + key + ": expected a string");
    return node.Scalar();
  }

  // A value as override text (what `key=value` must say to mean the same YAML) and as a name label.
  SweepSetting setting(const std::string& key, const YAML::Node& value) const {
    SweepSetting s{key, "null", "null"};
    if (value.IsNull()) return s;
    if (value.IsScalar()) {
      s.label = value.Scalar();
      s.value = value.Tag() == "!" ? yaml_quote(value.Scalar()) : value.Scalar();  // "!": it was quoted
      return s;
    }
    YAML::Emitter out;
    out.SetMapFormat(YAML::Flow);
    out.SetSeqFormat(YAML::Flow);
    out << value;
    s.value = s.label = out.c_str();
    return s;
  }

  // A mapping of `key.path: value` overrides, in file order.
  std::vector<SweepSetting> settings(const YAML::Node& node, const std::string& what, std::map<std::string, int>& lines) const {
    if (!node.IsMap()) throw InputError(at(node) + what + ": expected a mapping of key.path: value");
    std::vector<SweepSetting> out;
    for (auto it = node.begin(); it != node.end(); ++it) {
      const std::string key = scalar(it->first, what);
      check_key(key, it->first, what);
      lines.emplace(key, it->first.Mark().line + 1);
      out.push_back(setting(key, it->second));
    }
    return out;
  }

  void check_key(const std::string& key, const YAML::Node& mark, const std::string& what) const {
    if (key.empty() || key.front() == '.' || key.back() == '.' || key.find("..") != std::string::npos ||
        key.find('=') != std::string::npos)
      throw InputError(at(mark) + what + ": '" + key + "' is not a key path", "e.g. train.lr or teachers.0.path");
    if (key == "run.output_dir" || starts_with(key, "run.output_dir."))
      throw InputError(at(mark) + what + ": run.output_dir is set by the sweep (output_root/RUN_NAME)",
                       "set output_root in the sweep file instead");
  }

 private:
  std::string file_;
};

}  // namespace

SweepSpec load_sweep_file(const std::string& path) {
  const YAML::Node root = schema::load_yaml_file(path);
  const SweepReader r(path);
  SweepSpec spec;
  spec.file = path;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string key = it->first.Scalar();
    bool known = false;
    for (const auto& k : kTopKeys) known = known || k == key;
    if (known) continue;
    const std::string guess = closest_match(key, kTopKeys);
    throw InputError(r.at(it->first) + "unknown key '" + key + "'",
                     guess.empty() ? "known keys: " + join(kTopKeys, ", ") : "did you mean '" + guess + "'?");
  }

  if (!root["base"]) throw InputError(path + ": missing required key 'base' (the base recipe)");
  const std::string base = r.scalar(root["base"], "base");
  const fs::path base_path = fs::path(base).is_absolute() ? fs::path(base) : fs::path(path).parent_path() / base;
  // The error_code form: a name the file system refuses (too long) is a missing base, not an
  // uncaught filesystem_error (found by fuzz_sweep).
  std::error_code base_error;
  if (!fs::is_regular_file(base_path, base_error))
    throw InputError(r.at(root["base"]) + "base: recipe '" + base_path.string() + "' does not exist",
                     "a relative base is read from the sweep file's folder");
  spec.base = base_path.lexically_normal().string();
  const std::string stem = fs::path(path).stem().string();
  spec.output_root = root["output_root"] ? r.scalar(root["output_root"], "output_root") : "runs/" + stem;
  if (spec.output_root.empty()) throw InputError(r.at(root["output_root"]) + "output_root: must not be empty");
  if (root["name"]) spec.name_template = r.scalar(root["name"], "name");

  std::set<std::string> fixed_keys;
  if (root["overrides"] && !root["overrides"].IsNull()) {
    spec.fixed = r.settings(root["overrides"], "overrides", spec.key_lines);
    for (const auto& s : spec.fixed) fixed_keys.insert(s.key);
  }
  auto not_fixed = [&](const std::string& key, const YAML::Node& mark, const std::string& what) {
    if (fixed_keys.count(key))
      throw InputError(r.at(mark) + what + ": '" + key + "' is also set under overrides", "set each key in one place");
  };

  if (const YAML::Node grid = root["grid"]; grid && !grid.IsNull()) {
    if (!grid.IsMap()) throw InputError(r.at(grid) + "grid: expected a mapping of key.path: [values]");
    for (auto it = grid.begin(); it != grid.end(); ++it) {
      SweepAxis axis;
      axis.key = r.scalar(it->first, "grid");
      r.check_key(axis.key, it->first, "grid");
      not_fixed(axis.key, it->first, "grid");
      spec.key_lines.emplace(axis.key, it->first.Mark().line + 1);
      if (!it->second.IsSequence() || it->second.size() == 0)
        throw InputError(r.at(it->second) + "grid." + axis.key + ": expected a non-empty list of values",
                         "a value that is the same for every run goes under overrides:");
      for (size_t i = 0; i < it->second.size(); ++i) axis.values.push_back(r.setting(axis.key, it->second[i]));
      spec.grid.push_back(std::move(axis));
    }
  }
  if (const YAML::Node list = root["list"]; list && !list.IsNull()) {
    if (!list.IsSequence()) throw InputError(r.at(list) + "list: expected a list of {key.path: value} mappings");
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string what = "list." + std::to_string(i);
      auto run = r.settings(list[i], what, spec.key_lines);
      for (auto it = list[i].begin(); it != list[i].end(); ++it) not_fixed(it->first.Scalar(), it->first, what);
      spec.list.push_back(std::move(run));
    }
  }
  if (spec.grid.empty() && spec.list.empty())
    throw InputError(path + ": no runs: the sweep needs a grid: or a list:", "e.g. grid: {train.lr: [1.0e-5, 3.0e-5]}");

  spec.slurm.job_name = stem;
  if (const YAML::Node slurm = root["slurm"]; slurm && !slurm.IsNull()) {
    const schema::Source source{path, {}};
    schema::Reader reader(slurm, "slurm", source);
    if (!slurm.IsMap()) throw InputError(r.at(slurm) + "slurm: expected a mapping of keys");
    visit(reader, spec.slurm);
    reader.finish();
  }
  return spec;
}

SweepPlan plan_sweep(const SweepSpec& spec) {
  SweepPlan plan;
  plan.spec = spec;
  plan.root = fs::absolute(spec.output_root).lexically_normal().string();
  bool names_itself = false;  // a sweep that sets run.name keeps it; otherwise each run is named after itself
  for (const auto& [key, line] : spec.key_lines) names_itself = names_itself || key == "run.name";

  for (SweepRun& run : expand_sweep(spec.grid, spec.list, spec.name_template)) {
    PlannedRun planned;
    planned.output_dir = (fs::path(plan.root) / run.name).string();
    for (const auto& s : spec.fixed) planned.overrides.push_back(s.text());
    for (const auto& s : run.settings) planned.overrides.push_back(s.text());
    if (!names_itself) planned.overrides.push_back("run.name=" + yaml_quote(run.name));
    planned.overrides.push_back("run.output_dir=" + yaml_quote(planned.output_dir));
    try {
      load_recipe(spec.base, planned.overrides);
    } catch (const InputError& e) {
      // Point at the sweep file's line for the override the recipe refused, when it was one of ours.
      std::string where = spec.file + ": ";
      const std::string message = e.what();
      for (const auto& [key, line] : spec.key_lines)
        if (message.find("override '" + key + "=") != std::string::npos) where = spec.file + ":" + std::to_string(line) + ": ";
      throw InputError(where + "run '" + run.name + "': " + message, e.hint());
    }
    planned.run = std::move(run);
    plan.runs.push_back(std::move(planned));
  }
  return plan;
}

}  // namespace lf
