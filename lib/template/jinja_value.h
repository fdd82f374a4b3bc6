// Values of the Jinja engine (lib/template/jinja.h): Python's data model as far as chat templates
// use it — undefined, none, bool, int, float, str, list, dict (insertion-ordered), namespace and
// callables — with Python's truthiness, equality, ordering, str() and repr(). Pure C++ plus
// nlohmann-json (for conversion at the edges); no LibTorch.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace lf::jinja {

class Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;  // few keys: a vector keeps insertion order cheaply

// Arguments of a call: positional, then keyword ones in the order written.
struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};
using Function = std::function<Value(CallArgs&)>;

class Value {
 public:
  enum class Kind { Undefined, None, Bool, Int, Float, String, List, Dict, Namespace, Function };

  Value() = default;  // undefined
  static Value undefined(std::string name = {});
  static Value none();
  Value(bool b);
  Value(int64_t i);
  Value(int i) : Value(static_cast<int64_t>(i)) {}
  Value(double f);
  Value(std::string s);
  Value(const char* s) : Value(std::string(s)) {}
  static Value list(List items = {});
  static Value dict(Dict items = {});
  static Value ns(Dict items = {});  // jinja's namespace(): a dict whose attributes can be set
  static Value function(std::string name, Function f);
  static Value from_json(const nlohmann::json& j);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::Undefined; }
  bool is_none() const { return kind_ == Kind::None; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_int() const { return kind_ == Kind::Int; }
  bool is_float() const { return kind_ == Kind::Float; }
  bool is_number() const { return kind_ == Kind::Int || kind_ == Kind::Float || kind_ == Kind::Bool; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_list() const { return kind_ == Kind::List; }
  bool is_dict() const { return kind_ == Kind::Dict; }
  bool is_namespace() const { return kind_ == Kind::Namespace; }
  bool is_mapping_like() const { return kind_ == Kind::Dict || kind_ == Kind::Namespace; }
  bool is_function() const { return kind_ == Kind::Function; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return kind_ == Kind::Bool ? (b_ ? 1 : 0) : i_; }
  double as_float() const { return kind_ == Kind::Float ? f_ : static_cast<double>(as_int()); }
  const std::string& as_string() const { return *s_; }
  List& as_list() const { return *list_; }
  Dict& as_dict() const { return *dict_; }
  const Function& as_function() const { return *fn_; }
  // The name an undefined value was looked up under, or a function's name; for error messages.
  const std::string& name() const { return name_; }

  // Dict / namespace access; nullptr when the key is absent.
  Value* find(const std::string& key) const;
  void set(const std::string& key, Value v) const;

  bool truthy() const;
  std::string type_name() const;  // Python's: str, int, list, dict, NoneType, ...
  std::string str() const;        // Python's str(); undefined is ""
  std::string repr() const;       // Python's repr()
  nlohmann::json to_json() const;

 private:
  Kind kind_ = Kind::Undefined;
  bool b_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::shared_ptr<const std::string> s_;
  std::shared_ptr<List> list_;  // shared: Python lists and dicts are references
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<const Function> fn_;
  std::string name_;
};

// Python's ==, and <, for the types chat templates compare; `ok` is false where Python raises.
bool values_equal(const Value& a, const Value& b);
bool value_less(const Value& a, const Value& b, bool& ok);

// Python's float repr: shortest round-trip digits, "1.0", "1e+16", "inf", "nan".
std::string float_repr(double f);

// json.dumps(value, ensure_ascii=..., indent=indent, separators=..., sort_keys=...) as transformers'
// tojson does; indent < 0 is None, empty separators are Python's defaults for the indent. Throws
// std::invalid_argument for what JSON cannot hold (undefined, functions, namespaces).
struct JsonOptions {
  int indent = -1;
  bool sort_keys = false, ensure_ascii = false;
  std::string item_sep, key_sep;
};
std::string to_json_text(const Value& v, const JsonOptions& options = {});

// Code points of UTF-8 text (invalid bytes become U+FFFD) and back: Python indexes strings by code point.
std::u32string utf8_decode(const std::string& s);
std::string utf8_encode(const std::u32string& s);
bool is_py_space(char32_t c);  // str.isspace() / str.strip()'s whitespace

}  // namespace lf::jinja
