// A config schema written once and used both ways: each config struct has one
//   template <class V> void visit(V& v, MyConfig& c) { v("key", c.field, check); ... }
// function, and the YAML reader (validating, with key paths and line numbers) and the YAML writer
// (--print-config, recipe.resolved.yaml) both walk it. Internal to the config module: yaml-cpp is
// not included by the public config headers.
#pragma once

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/strings.h"

namespace lf::schema {

// A check returns an empty string when the value is fine, else what is wrong with it.
template <class T>
using Check = std::function<std::string(const T&)>;

inline Check<std::string> one_of(std::vector<std::string> choices) {
  return [choices](const std::string& value) -> std::string {
    for (const auto& c : choices)
      if (c == value) return {};
    std::string msg = "must be one of " + join(choices, "|") + " (got '" + value + "')";
    std::string guess = closest_match(value, choices);
    if (!guess.empty()) msg += "; did you mean '" + guess + "'?";
    return msg;
  };
}

template <class T>
std::string to_text(const T& value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

template <class T>
Check<T> at_least(T low) {
  return [low](const T& v) { return v >= low ? std::string() : "must be >= " + to_text(low) + " (got " + to_text(v) + ")"; };
}
template <class T>
Check<T> greater_than(T low) {
  return [low](const T& v) { return v > low ? std::string() : "must be > " + to_text(low) + " (got " + to_text(v) + ")"; };
}
template <class T>
Check<T> in_range(T low, T high) {
  return [low, high](const T& v) {
    return (v >= low && v <= high) ? std::string()
                                   : "must be in [" + to_text(low) + ", " + to_text(high) + "] (got " + to_text(v) + ")";
  };
}
// For keys that may be null: null, or a value >= low.
template <class T>
Check<std::optional<T>> null_or_at_least(T low) {
  return [low](const std::optional<T>& v) {
    return (!v || *v >= low) ? std::string() : "must be >= " + to_text(low) + " or null (got " + to_text(*v) + ")";
  };
}

inline Check<std::string> non_empty() {
  return [](const std::string& v) { return v.empty() ? std::string("must not be empty") : std::string(); };
}

// Where the document came from, for error messages: the file, and which key paths an override set.
struct Source {
  std::string file;
  std::map<std::string, std::string> overrides;  // key path -> the override text that set it
};

template <class V, class T, class = void>
struct is_struct : std::false_type {};
template <class V, class T>
struct is_struct<V, T, std::void_t<decltype(visit(std::declval<V&>(), std::declval<T&>()))>> : std::true_type {};

template <class T>
struct is_vector : std::false_type {};
template <class T>
struct is_vector<std::vector<T>> : std::true_type {};

// Reads a YAML mapping into a struct, field by field; every problem is an InputError that names the
// file, line and key path. Keys that no field consumed are reported by finish().
class Reader {
 public:
  Reader(const YAML::Node& node, std::string path, const Source& source)
      : node_(node), path_(std::move(path)), source_(source) {}

  template <class T>
  void operator()(const char* key, T& value, Check<T> check = {}) {
    field(key, value, check, false);
  }
  template <class T>
  void required(const char* key, T& value, Check<T> check = {}) {
    field(key, value, check, true);
  }

  // Fails when any key of this mapping was not consumed by a field, suggesting the closest one.
  void finish() const {
    if (!node_.IsMap()) return;
    for (auto it = node_.begin(); it != node_.end(); ++it) {
      const std::string key = it->first.Scalar();
      if (known_.count(key)) continue;
      std::string message = "unknown key '" + child_path(key) + "'";
      std::string guess = closest_match(key, std::vector<std::string>(known_.begin(), known_.end()));
      std::string hint = guess.empty() ? "known keys here: " + join({known_.begin(), known_.end()}, ", ")
                                       : "did you mean '" + child_path(guess) + "'?";
      throw InputError(where(child_path(key), it->first) + message, hint);
    }
  }

  const Source& source() const { return source_; }

  // "file:line: " or "override 'a.b=1': " for error messages about `path` at `node`.
  std::string where(const std::string& path, const YAML::Node& node) const {
    for (const auto& [key, text] : source_.overrides)
      if (path == key || starts_with(path, key + ".") || starts_with(key, path + "."))
        return "override '" + text + "': ";
    std::string out = source_.file;
    if (node.IsDefined() && !node.Mark().is_null()) out += ":" + std::to_string(node.Mark().line + 1);
    return out + ": ";
  }

 private:
  std::string child_path(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

  template <class T>
  void field(const char* key, T& value, const Check<T>& check, bool required) {
    known_.insert(key);
    const std::string path = child_path(key);
    if (!node_.IsMap()) return;
    YAML::Node child = node_[key];
    if (!child.IsDefined() || (child.IsNull() && !is_optional<T>::value)) {
      if (required) throw InputError(where(path, node_) + "missing required key '" + path + "'");
      return;  // keep the default
    }
    read(path, child, value);
    if (check) {
      std::string problem = check(value);
      if (!problem.empty()) throw InputError(where(path, child) + path + ": " + problem);
    }
  }

  template <class T>
  struct is_optional : std::false_type {};
  template <class T>
  struct is_optional<std::optional<T>> : std::true_type {};

  template <class T>
  void read(const std::string& path, const YAML::Node& node, std::optional<T>& value) {
    if (node.IsNull()) {
      value.reset();
      return;
    }
    T inner{};
    if (value) inner = *value;
    read(path, node, inner);
    value = std::move(inner);
  }

  template <class T>
  void read(const std::string& path, const YAML::Node& node, std::vector<T>& value) {
    if (!node.IsSequence()) throw InputError(where(path, node) + path + ": expected a list");
    std::vector<T> out;
    for (size_t i = 0; i < node.size(); ++i) {
      T item{};
      read(path + "." + std::to_string(i), node[i], item);
      out.push_back(std::move(item));
    }
    value = std::move(out);
  }

  template <class T>
  void read(const std::string& path, const YAML::Node& node, std::map<std::string, T>& value) {
    if (!node.IsMap()) throw InputError(where(path, node) + path + ": expected a mapping of names");
    std::map<std::string, T> out;
    for (auto it = node.begin(); it != node.end(); ++it) {
      T item{};
      read(path + "." + it->first.Scalar(), it->second, item);
      out[it->first.Scalar()] = std::move(item);
    }
    value = std::move(out);
  }

  // Free-form values (template variables): YAML scalars become JSON booleans, integers, numbers,
  // null or strings by YAML's core schema; lists and mappings recursively.
  void read(const std::string& path, const YAML::Node& node, nlohmann::json& value) {
    if (node.IsMap()) {
      value = nlohmann::json::object();
      for (auto it = node.begin(); it != node.end(); ++it) read(path + "." + it->first.Scalar(), it->second, value[it->first.Scalar()]);
    } else if (node.IsSequence()) {
      value = nlohmann::json::array();
      for (size_t i = 0; i < node.size(); ++i) {
        nlohmann::json item;
        read(path + "." + std::to_string(i), node[i], item);
        value.push_back(std::move(item));
      }
    } else if (node.IsNull()) {
      value = nullptr;
    } else {
      const std::string& text = node.Scalar();
      bool b = false;
      long long i = 0;
      double d = 0;
      if (node.Tag() == "!") value = text;  // quoted: a string whatever it looks like
      else if (YAML::convert<bool>::decode(node, b)) value = b;
      else if (plausible<long long>(text) && YAML::convert<long long>::decode(node, i)) value = i;
      else if (YAML::convert<double>::decode(node, d)) value = d;
      else value = text;
    }
  }

  template <class T>
  void read(const std::string& path, const YAML::Node& node, T& value) {
    if constexpr (is_struct<Reader, T>::value) {
      if (!node.IsMap()) throw InputError(where(path, node) + path + ": expected a mapping of keys");
      Reader nested(node, path, source_);
      visit(nested, value);
      nested.finish();
    } else {
      read_scalar(path, node, value);
    }
  }

  template <class T>
  void read_scalar(const std::string& path, const YAML::Node& node, T& value) {
    if (!node.IsScalar()) throw InputError(where(path, node) + path + ": expected " + type_name<T>() + ", got a " +
                                           (node.IsMap() ? "mapping" : node.IsSequence() ? "list" : "null"));
    const std::string& text = node.Scalar();
    if constexpr (std::is_same_v<T, std::string>) {
      value = text;
    } else {
      T parsed{};
      if (!YAML::convert<T>::decode(node, parsed) || !plausible<T>(text))
        throw InputError(where(path, node) + path + ": expected " + type_name<T>() + ", got '" + text + "'");
      value = parsed;
    }
  }

  // yaml-cpp happily decodes "1.5" as an integer 1 through a stream; refuse that.
  template <class T>
  static bool plausible(const std::string& text) {
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>)
      return text.find_first_of(".eE") == std::string::npos || starts_with(text, "0x");
    return true;
  }

  template <class T>
  static std::string type_name() {
    if constexpr (std::is_same_v<T, bool>) return "true or false";
    else if constexpr (std::is_integral_v<T>) return "an integer";
    else if constexpr (std::is_floating_point_v<T>) return "a number";
    else return "a string";
  }

  YAML::Node node_;
  std::string path_;
  const Source& source_;
  std::set<std::string> known_;
};

// Emits a struct as YAML, in schema order.
class Writer {
 public:
  explicit Writer(YAML::Emitter& out) : out_(out) {}

  template <class T>
  void operator()(const char* key, const T& value, Check<T> = {}) {
    out_ << YAML::Key << key << YAML::Value;
    write(value);
  }
  template <class T>
  void required(const char* key, const T& value, Check<T> = {}) {
    (*this)(key, value);
  }

  template <class T>
  void write(const T& value) {
    if constexpr (is_struct<Writer, T>::value) {
      out_ << YAML::BeginMap;
      visit(*this, const_cast<T&>(value));
      out_ << YAML::EndMap;
    } else {
      out_ << value;
    }
  }
  // A string with control characters (a CR inside a plain scalar reads back without it) is written
  // double-quoted, with escapes, so that what is written reads back the same (found by fuzz_recipe).
  void write(const std::string& value) {
    const bool control = std::any_of(value.begin(), value.end(), [](char c) {
      return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
    });
    if (control) out_ << YAML::DoubleQuoted;
    out_ << value;
  }
  // Template variables back as YAML that reads to the same JSON (strings quoted, so "007" stays one).
  void write(const nlohmann::json& value) {
    if (value.is_object()) {
      out_ << YAML::BeginMap;
      for (const auto& [key, item] : value.items()) {
        out_ << YAML::Key << key << YAML::Value;
        write(item);
      }
      out_ << YAML::EndMap;
    } else if (value.is_array()) {
      out_ << YAML::BeginSeq;
      for (const auto& item : value) write(item);
      out_ << YAML::EndSeq;
    } else if (value.is_string()) {
      out_ << YAML::DoubleQuoted << value.get<std::string>();
    } else if (value.is_null()) {
      out_ << YAML::Null;
    } else {
      out_ << value.dump();  // booleans and numbers: their JSON spelling is plain YAML
    }
  }
  template <class T>
  void write(const std::optional<T>& value) {
    if (value) write(*value);
    else out_ << YAML::Null;
  }
  template <class T>
  void write(const std::map<std::string, T>& value) {
    out_ << YAML::BeginMap;
    for (const auto& [key, item] : value) {
      out_ << YAML::Key << key << YAML::Value;
      write(item);
    }
    out_ << YAML::EndMap;
  }
  template <class T>
  void write(const std::vector<T>& value) {
    out_ << YAML::BeginSeq;
    for (const auto& item : value) write(item);
    out_ << YAML::EndSeq;
  }

 private:
  YAML::Emitter& out_;
};

// Loads a YAML file as a mapping; a syntax error names the file and line.
YAML::Node load_yaml_file(const std::string& path);

// Applies `key.path=value` overrides (list items by index) to `root`, recording them in `source`.
void apply_overrides(YAML::Node& root, const std::vector<std::string>& overrides, Source& source);

// The node at key path `path` ("teachers.0.placement") under `root`, or the deepest one that exists on
// the way (an error about a key that is absent points at its parent's line).
YAML::Node node_at_path(const YAML::Node& root, const std::string& path);

}  // namespace lf::schema
