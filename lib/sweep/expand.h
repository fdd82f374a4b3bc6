// Sweep expansion, the pure part: a grid of `key.path: [values]` axes (cartesian product, last axis
// varying fastest, like itertools.product) plus an explicit list of runs, each turned into a named
// set of `key.path=value` overrides. No YAML and no files here, so the naming rules are unit-tested.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace lf {

// One override: `key` (a recipe key path) and `value`, the YAML text of the value as the override
// parser takes it (`key=value`), and `label`, the value's text for run names.
struct SweepSetting {
  std::string key;
  std::string value;
  std::string label;
  std::string text() const { return key + "=" + value; }
};

struct SweepAxis {
  std::string key;
  std::vector<SweepSetting> values;  // each with key == this key
};

struct SweepRun {
  std::string name;                    // unique, safe as a folder name
  std::vector<SweepSetting> settings;  // what varies for this run, in axis order
};

// Most runs one sweep may expand to (InputError beyond).
constexpr size_t kMaxSweepRuns = 100000;

// How many runs the grid `axes` expands to, saturating at kMaxSweepRuns + 1 (a grid multiplies:
// a few lines can ask for billions of runs).
size_t grid_runs(const std::vector<SweepAxis>& axes);

// The grid's runs (cartesian product of `axes`, in order), then the `listed` runs. Each run is named
// by `name_template` when it is not empty, else by default_run_name(). Throws InputError when a
// template placeholder names a key a run does not set, or when two runs end up with the same name.
std::vector<SweepRun> expand_sweep(const std::vector<SweepAxis>& axes,
                                   const std::vector<std::vector<SweepSetting>>& listed,
                                   const std::string& name_template = {});

// "lr=1e-5_distill_weight=0.5": each setting as SHORTKEY=label, joined by '_', where SHORTKEY is the
// shortest dotted suffix of the key that no other key of the sweep shares (train.lr -> lr, but
// loss.token.temperature and loss.graph.temperature stay token.temperature / graph.temperature).
// `short_keys` maps every key of the sweep to its SHORTKEY (short_keys_of(), once per sweep).
std::string default_run_name(const std::vector<SweepSetting>& settings,
                             const std::map<std::string, std::string>& short_keys);
std::map<std::string, std::string> short_keys_of(const std::vector<std::string>& all_keys);

// `{key.path}` replaced by that setting's label and `{index}` by the run's position; an unknown
// placeholder is an InputError naming it.
std::string render_run_name(const std::string& name_template, const std::vector<SweepSetting>& settings, size_t index);

// A folder name from arbitrary text: runs of characters outside [A-Za-z0-9._=+-] become one '-',
// leading/trailing '-' and '.' are dropped (no hidden folders, no "..", no '/'); "run" if nothing is left.
std::string sanitize_run_name(const std::string& text);

// The shortest dotted suffix of `key` shared by no other key in `keys` (the whole key at worst).
std::string short_key(const std::string& key, const std::vector<std::string>& keys);

}  // namespace lf
