#include "sweep/expand.h"

#include <map>

#include "core/error.h"
#include "core/strings.h"

namespace lf {

namespace {

bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
         c == '=' || c == '+' || c == '-';
}

std::vector<std::string> keys_of(const std::vector<SweepAxis>& axes, const std::vector<std::vector<SweepSetting>>& listed) {
  std::vector<std::string> keys;
  auto add = [&](const std::string& key) {
    for (const auto& k : keys)
      if (k == key) return;
    keys.push_back(key);
  };
  for (const auto& axis : axes) add(axis.key);
  for (const auto& run : listed)
    for (const auto& s : run) add(s.key);
  return keys;
}

}  // namespace

std::string sanitize_run_name(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (name_char(c)) out += c;
    else if (out.empty() || out.back() != '-') out += '-';
  }
  size_t begin = out.find_first_not_of("-.");
  if (begin == std::string::npos) return "run";
  size_t end = out.find_last_not_of("-.");
  return out.substr(begin, end - begin + 1);
}

std::string short_key(const std::string& key, const std::vector<std::string>& keys) {
  const std::vector<std::string> parts = split(key, '.');
  for (size_t take = 1; take < parts.size(); ++take) {
    const std::string suffix = join({parts.end() - static_cast<long>(take), parts.end()}, ".");
    bool shared = false;
    for (const auto& other : keys)
      if (other != key && (other == suffix || ends_with(other, "." + suffix))) shared = true;
    if (!shared) return suffix;
  }
  return key;
}

std::map<std::string, std::string> short_keys_of(const std::vector<std::string>& all_keys) {
  std::map<std::string, std::string> out;
  for (const auto& key : all_keys) out[key] = short_key(key, all_keys);
  return out;
}

std::string default_run_name(const std::vector<SweepSetting>& settings,
                             const std::map<std::string, std::string>& short_keys) {
  std::vector<std::string> parts;
  for (const auto& s : settings) parts.push_back(short_keys.at(s.key) + "=" + s.label);
  return parts.empty() ? "base" : join(parts, "_");
}

std::string render_run_name(const std::string& name_template, const std::vector<SweepSetting>& settings, size_t index) {
  std::string out;
  size_t pos = 0;
  while (pos < name_template.size()) {
    const size_t open = name_template.find('{', pos);
    if (open == std::string::npos) {
      out += name_template.substr(pos);
      break;
    }
    out += name_template.substr(pos, open - pos);
    const size_t close = name_template.find('}', open);
    if (close == std::string::npos)
      throw InputError("name template '" + name_template + "': unclosed '{'", "placeholders look like {train.lr} or {index}");
    const std::string key = name_template.substr(open + 1, close - open - 1);
    bool found = false;
    if (key == "index") {
      out += std::to_string(index);
      found = true;
    }
    for (const auto& s : settings)
      if (!found && s.key == key) {
        out += s.label;
        found = true;
      }
    if (!found) {
      std::vector<std::string> known{"index"};
      for (const auto& s : settings) known.push_back(s.key);
      throw InputError("name template '" + name_template + "': run " + std::to_string(index) + " sets no key '" + key + "'",
                       "placeholders here: {" + join(known, "}, {") + "}");
    }
    pos = close + 1;
  }
  return out;
}

size_t grid_runs(const std::vector<SweepAxis>& axes) {
  size_t total = axes.empty() ? 0 : 1;
  for (const auto& axis : axes)
    total = axis.values.empty() ? 0 : total > kMaxSweepRuns / axis.values.size() ? kMaxSweepRuns + 1 : total * axis.values.size();
  return total;
}

std::vector<SweepRun> expand_sweep(const std::vector<SweepAxis>& axes,
                                   const std::vector<std::vector<SweepSetting>>& listed,
                                   const std::string& name_template) {
  // A grid multiplies: a few lines can ask for billions of runs, which would exhaust memory before
  // anything is said. Refused up front (found by fuzz_sweep).
  const size_t total = grid_runs(axes);
  if (total > kMaxSweepRuns || total + listed.size() > kMaxSweepRuns)
    throw InputError("the sweep has more than " + std::to_string(kMaxSweepRuns) + " runs", "split it into several sweeps");
  // Each run is named as it is made, so a duplicate name stops the expansion there (not after
  // building every one of up to 100,000 runs).
  const std::vector<std::string> keys = keys_of(axes, listed);
  const auto short_keys = short_keys_of(keys);  // once, not once per run
  std::vector<SweepRun> runs;
  std::map<std::string, size_t> seen;
  auto add = [&](std::vector<SweepSetting> settings) {
    const size_t i = runs.size();
    SweepRun run;
    run.settings = std::move(settings);
    run.name = sanitize_run_name(name_template.empty() ? default_run_name(run.settings, short_keys)
                                                       : render_run_name(name_template, run.settings, i));
    if (auto it = seen.find(run.name); it != seen.end())
      throw InputError("runs " + std::to_string(it->second) + " and " + std::to_string(i) + " are both named '" + run.name + "'",
                       name_template.empty() ? "two runs set the same values; remove the duplicate"
                                             : "put every varying key into the name template, or add {index}");
    seen[run.name] = i;
    runs.push_back(std::move(run));
  };
  if (!axes.empty()) {
    // An odometer over the axes: the last axis turns fastest. An empty axis yields no runs.
    std::vector<size_t> at(axes.size(), 0);
    bool empty = false;
    for (const auto& axis : axes) empty = empty || axis.values.empty();
    while (!empty) {
      std::vector<SweepSetting> combo;
      for (size_t a = 0; a < axes.size(); ++a) combo.push_back(axes[a].values[at[a]]);
      add(std::move(combo));
      size_t a = axes.size();
      while (a > 0) {
        --a;
        if (++at[a] < axes[a].values.size()) break;
        at[a] = 0;
        if (a == 0) empty = true;  // every digit wrapped: done
      }
    }
  }
  for (const auto& settings : listed) add(settings);
  return runs;
}

}  // namespace lf
