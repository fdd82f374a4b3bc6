#include "template/jinja_builtins.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <stdexcept>

#include "core/error.h"
#include "template/jinja_strings.h"

namespace lf::jinja {

void fail(int line, const std::string& what) {
  throw InputError("chat template line " + std::to_string(line) + ": " + what);
}

void fail_undefined(const Value& v, int line) {
  fail(line, "'" + (v.name().empty() ? std::string("value") : v.name()) + "' is undefined");
}

Value arg(CallArgs& args, size_t position, const char* keyword, const Value& fallback) {
  for (auto& [k, v] : args.keyword)
    if (k == keyword) return v;
  if (position < args.positional.size()) return args.positional[position];
  return fallback;
}

namespace {

std::u32string chars_of(const Value& v) { return utf8_decode(v.as_string()); }

Value dict_method(const Value& self, const std::string& name, int line) {
  if (name == "items" || name == "keys" || name == "values")
    return Value::function(name, [self, name](CallArgs&) {
      List out;
      for (const auto& [k, v] : self.as_dict()) {
        if (name == "items") out.push_back(Value::list({Value(k), v}));
        else out.push_back(name == "keys" ? Value(k) : v);
      }
      return Value::list(std::move(out));
    });
  if (name == "get")
    return Value::function(name, [self](CallArgs& a) {
      const Value key = arg(a, 0, "key");
      const Value* v = key.is_string() ? self.find(key.as_string()) : nullptr;
      return v ? *v : arg(a, 1, "default", Value::none());
    });
  static const std::set<std::string> other = {"update", "pop", "popitem", "setdefault", "clear", "copy", "fromkeys"};
  if (other.count(name)) fail(line, "dict method '" + name + "' is not supported (the sandbox forbids changing a dict)");
  return Value();
}

// Python's index normalisation; false when out of range.
bool normalise_index(int64_t& i, int64_t n) {
  if (i < 0) i += n;
  return i >= 0 && i < n;
}

}  // namespace

Value get_attr(const Value& obj, const std::string& name, int line) {
  switch (obj.kind()) {
    case Value::Kind::Undefined: fail_undefined(obj, line);
    case Value::Kind::String: return string_method(obj, name, line);
    case Value::Kind::Dict: {
      Value m = dict_method(obj, name, line);
      if (!m.is_undefined()) return m;
      const Value* v = obj.find(name);
      return v ? *v : Value::undefined(name);
    }
    case Value::Kind::Namespace: {
      const Value* v = obj.find(name);
      return v ? *v : Value::undefined(name);
    }
    case Value::Kind::List: {
      static const std::set<std::string> mutating = {"append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse"};
      if (mutating.count(name)) fail(line, "list method '" + name + "' is not supported (the sandbox forbids changing a list)");
      return Value::undefined(name);
    }
    default: return Value::undefined(name);
  }
}

Value get_item(const Value& obj, const Value& key, int line) {
  switch (obj.kind()) {
    case Value::Kind::Undefined: fail_undefined(obj, line);
    case Value::Kind::Dict:
    case Value::Kind::Namespace: {
      if (!key.is_string()) return Value::undefined();
      const Value* v = obj.find(key.as_string());
      if (v) return *v;
      return get_attr(obj, key.as_string(), line);
    }
    case Value::Kind::List:
    case Value::Kind::String: {
      if (key.is_string()) return get_attr(obj, key.as_string(), line);
      if (!key.is_int() && !key.is_bool()) return Value::undefined();
      int64_t i = key.as_int();
      if (obj.is_list()) return normalise_index(i, static_cast<int64_t>(obj.as_list().size())) ? obj.as_list()[i] : Value::undefined();
      const std::u32string t = chars_of(obj);
      return normalise_index(i, static_cast<int64_t>(t.size())) ? Value(utf8_encode(t.substr(i, 1))) : Value::undefined();
    }
    default: return Value::undefined();
  }
}

Value get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step_v, int line) {
  if (obj.is_undefined()) fail_undefined(obj, line);
  if (!obj.is_list() && !obj.is_string()) fail(line, "cannot slice a " + obj.type_name());
  auto as_index = [&](const Value& v) {
    if (!v.is_int() && !v.is_bool()) fail(line, "slice indices must be integers");
    return v.as_int();
  };
  const std::u32string text = obj.is_string() ? chars_of(obj) : std::u32string();
  const int64_t n = obj.is_list() ? static_cast<int64_t>(obj.as_list().size()) : static_cast<int64_t>(text.size());
  const int64_t step = step_v.is_undefined() || step_v.is_none() ? 1 : as_index(step_v);
  if (step == 0) fail(line, "slice step cannot be zero");
  auto clamp = [&](const Value& v, int64_t dflt) {
    if (v.is_undefined() || v.is_none()) return dflt;
    int64_t i = as_index(v);
    if (i < 0) i += n;
    if (step > 0) return std::clamp<int64_t>(i, 0, n);
    return std::clamp<int64_t>(i, -1, n - 1);
  };
  const int64_t b = clamp(start, step > 0 ? 0 : n - 1), e = clamp(stop, step > 0 ? n : -1);
  std::vector<int64_t> picks;
  for (int64_t i = b; step > 0 ? i < e : i > e; i += step) picks.push_back(i);
  if (obj.is_list()) {
    List out;
    for (int64_t i : picks) out.push_back(obj.as_list()[i]);
    return Value::list(std::move(out));
  }
  std::u32string out;
  for (int64_t i : picks) out += text[i];
  return Value(utf8_encode(out));
}

List iterate(const Value& v, int line) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return {};
    case Value::Kind::List: return v.as_list();
    case Value::Kind::Dict: {
      List keys;
      for (const auto& [k, _] : v.as_dict()) keys.emplace_back(k);
      return keys;
    }
    case Value::Kind::String: {
      List chars;
      for (char32_t c : chars_of(v)) chars.emplace_back(utf8_encode(std::u32string(1, c)));
      return chars;
    }
    default: fail(line, "'" + v.type_name() + "' object is not iterable");
  }
}

int64_t length(const Value& v, int line) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return 0;
    case Value::Kind::String: return static_cast<int64_t>(chars_of(v).size());
    case Value::Kind::List: return static_cast<int64_t>(v.as_list().size());
    case Value::Kind::Dict: return static_cast<int64_t>(v.as_dict().size());
    default: fail(line, "object of type '" + v.type_name() + "' has no len()");
  }
}

bool contains(const Value& container, const Value& item, int line) {
  switch (container.kind()) {
    case Value::Kind::Undefined: return false;
    case Value::Kind::String:
      if (!item.is_string()) fail(line, "'in <string>' requires a string on the left, not " + item.type_name());
      return container.as_string().find(item.as_string()) != std::string::npos;
    case Value::Kind::List:
      return std::any_of(container.as_list().begin(), container.as_list().end(), [&](const Value& x) { return values_equal(x, item); });
    case Value::Kind::Dict:
    case Value::Kind::Namespace: return item.is_string() && container.find(item.as_string()) != nullptr;
    default: fail(line, "argument of type '" + container.type_name() + "' is not iterable");
  }
}

bool is_supported_filter(const std::string& name) {
  static const std::set<std::string> names = {
      "trim", "length", "count", "upper", "lower", "capitalize", "title", "replace", "tojson", "string", "safe", "e",
      "escape", "forceescape", "int", "float", "abs", "join", "first", "last", "default", "d", "list", "items",
      "dictsort", "selectattr", "rejectattr", "select", "reject", "map", "unique", "reverse", "sort", "sum", "min",
      "max", "indent", "wordcount"};
  return names.count(name) > 0;
}

bool is_supported_test(const std::string& name) {
  static const std::set<std::string> names = {
      "defined", "undefined", "none", "string", "mapping", "iterable", "sequence", "number", "integer", "float",
      "boolean", "true", "false", "callable", "odd", "even", "divisibleby", "eq", "equalto", "==", "ne", "!=", "sameas",
      "lt", "lessthan", "<", "gt", "greaterthan", ">", "le", "<=", "ge", ">=", "in", "lower", "upper"};
  return names.count(name) > 0;
}

bool apply_test(const std::string& name, const Value& v, CallArgs& args, int line) {
  auto other = [&] { return arg(args, 0, "other"); };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict();
  if (name == "iterable") return v.is_list() || v.is_dict() || v.is_string() || v.is_undefined();
  if (name == "sequence") return v.is_list() || v.is_dict() || v.is_string();
  if (name == "number") return v.is_number();
  if (name == "integer") return v.is_int();
  if (name == "float") return v.is_float();
  if (name == "boolean") return v.is_bool();
  if (name == "true") return v.is_bool() && v.as_bool();
  if (name == "false") return v.is_bool() && !v.as_bool();
  if (name == "callable") return v.is_function();
  if (name == "odd" || name == "even" || name == "divisibleby") {
    if (!v.is_int() && !v.is_bool()) fail(line, "test '" + name + "' needs an integer, found " + v.type_name());
    if (name == "divisibleby") {
      const Value d = arg(args, 0, "num");
      if (!d.is_int() || d.as_int() == 0) fail(line, "divisibleby needs a non-zero integer");
      return v.as_int() % d.as_int() == 0;
    }
    return (v.as_int() % 2 != 0) == (name == "odd");
  }
  if (name == "eq" || name == "equalto" || name == "==") return values_equal(v, other());
  if (name == "ne" || name == "!=") return !values_equal(v, other());
  if (name == "sameas") {
    const Value o = other();
    if (v.is_none() || o.is_none() || v.is_bool() || o.is_bool()) return v.kind() == o.kind() && values_equal(v, o);
    return values_equal(v, o) && v.kind() == o.kind();
  }
  if (name == "lt" || name == "lessthan" || name == "<" || name == "gt" || name == "greaterthan" || name == ">" ||
      name == "le" || name == "<=" || name == "ge" || name == ">=") {
    bool ok = true;
    const Value o = other();
    const bool less = value_less(v, o, ok), greater = ok && value_less(o, v, ok);
    if (!ok) fail(line, "cannot compare " + v.type_name() + " with " + o.type_name());
    if (name == "lt" || name == "lessthan" || name == "<") return less;
    if (name == "gt" || name == "greaterthan" || name == ">") return greater;
    if (name == "le" || name == "<=") return !greater;
    return !less;
  }
  if (name == "in") return contains(arg(args, 0, "seq"), v, line);
  if (name == "lower" || name == "upper") {
    if (!v.is_string()) return false;
    const std::string& s = v.as_string();
    return name == "lower" ? s == ascii_lower(s) : s == ascii_upper(s);
  }
  fail(line, "test '" + name + "' is not supported");
}

namespace {

Value attribute_of(const Value& item, const std::string& path, int line) {
  Value v = item;
  size_t pos = 0;
  while (true) {
    const size_t dot = path.find('.', pos);
    const std::string part = path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    // An index that does not fit in 64 bits is looked up as a name (and is undefined).
    const bool digits = !part.empty() && part.size() <= 18 && part.find_first_not_of("0123456789") == std::string::npos;
    v = digits ? get_item(v, Value(static_cast<int64_t>(std::stoll(part))), line) : get_item(v, Value(part), line);
    if (dot == std::string::npos) return v;
    pos = dot + 1;
  }
}

// select / reject / selectattr / rejectattr.
Value select(const Value& input, CallArgs& args, bool by_attr, bool keep, int line) {
  size_t next = 0;
  std::string attr;
  if (by_attr) {
    const Value a = arg(args, next++, "attribute");
    if (!a.is_string()) fail(line, "selectattr/rejectattr need an attribute name");
    attr = a.as_string();
  }
  std::string test;
  CallArgs test_args;
  if (next < args.positional.size()) {
    const Value t = args.positional[next++];
    if (!t.is_string()) fail(line, "the test of select/reject must be a name");
    test = t.as_string();
    test_args.positional.assign(args.positional.begin() + static_cast<long>(next), args.positional.end());
  }
  List out;
  for (const Value& item : iterate(input, line)) {
    const Value probe = by_attr ? attribute_of(item, attr, line) : item;
    CallArgs a = test_args;
    const bool pass = test.empty() ? probe.truthy() : apply_test(test, probe, a, line);
    if (pass == keep) out.push_back(item);
  }
  return Value::list(std::move(out));
}

std::string indent_text(const std::string& s, const Value& width, bool first, bool blank) {
  const std::string pad = width.is_string() ? width.as_string() : std::string(static_cast<size_t>(width.as_int()), ' ');
  std::vector<std::string> lines;
  const std::string text = s + "\n";
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t e = text.find('\n', pos);
    lines.push_back(text.substr(pos, e - pos));
    pos = e + 1;
  }
  std::string rv;
  if (blank) {
    for (size_t i = 0; i < lines.size(); ++i) rv += (i ? "\n" + pad : "") + lines[i];
  } else {
    rv = lines[0];
    for (size_t i = 1; i < lines.size(); ++i) rv += "\n" + (lines[i].empty() ? "" : pad) + lines[i];
  }
  return first ? pad + rv : rv;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

}  // namespace

Value apply_filter(const std::string& name, const Value& input, CallArgs& args, int line) {
  auto need_string = [&](const Value& v) -> std::string {
    if (v.is_undefined()) return "";
    return v.str();
  };
  if (name == "trim") return Value(py_strip(need_string(input), arg(args, 0, "chars"), true, true));
  if (name == "length" || name == "count") return Value(length(input, line));
  if (name == "upper") return Value(ascii_upper(need_string(input)));
  if (name == "lower") return Value(ascii_lower(need_string(input)));
  if (name == "capitalize") return Value(capitalize(need_string(input)));
  if (name == "title") {  // jinja's own: words begin after whitespace or -([{<
    std::string s = need_string(input), out;
    bool start = true;
    for (char c : s) {
      const bool sep = c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
      out += sep ? c : start ? ascii_upper(std::string(1, c))[0] : ascii_lower(std::string(1, c))[0];
      start = sep;
    }
    return Value(out);
  }
  if (name == "replace") {
    const Value from = arg(args, 0, "old"), to = arg(args, 1, "new");
    const Value count = arg(args, 2, "count", Value::none());
    return Value(replace_all(need_string(input), from.str(), to.str(), count.is_none() ? -1 : count.as_int()));
  }
  if (name == "tojson") {
    JsonOptions o;
    o.ensure_ascii = arg(args, 0, "ensure_ascii", Value(false)).truthy();
    const Value indent = arg(args, 1, "indent", Value::none());
    if (indent.is_int()) o.indent = static_cast<int>(indent.as_int());
    else if (!indent.is_none()) fail(line, "tojson: indent must be an integer");
    const Value seps = arg(args, 2, "separators", Value::none());
    if (seps.is_list() && seps.as_list().size() == 2) {
      o.item_sep = seps.as_list()[0].str();
      o.key_sep = seps.as_list()[1].str();
    }
    o.sort_keys = arg(args, 3, "sort_keys", Value(false)).truthy();
    try {
      return Value(to_json_text(input, o));
    } catch (const std::invalid_argument& e) {
      fail(line, std::string("tojson: ") + e.what());
    }
  }
  if (name == "string") return Value(need_string(input));
  if (name == "safe" || name == "e" || name == "escape" || name == "forceescape")
    return name == "safe" ? (input.is_string() ? input : Value(need_string(input))) : Value(html_escape(need_string(input)));
  if (name == "int") {
    const Value dflt = arg(args, 0, "default", Value(int64_t{0}));
    // A float outside int64 (Python would make a big int) takes the default instead of undefined behaviour.
    auto to_int = [&](double f) { return std::isfinite(f) && std::fabs(f) < 9.2e18 ? Value(static_cast<int64_t>(f)) : dflt; };
    if (input.is_number()) return input.is_float() ? to_int(input.as_float()) : Value(input.as_int());
    if (input.is_string()) {
      try {
        size_t used = 0;
        const std::string t = py_strip(input.as_string(), Value(), true, true);
        const int64_t v = std::stoll(t, &used);
        if (used == t.size()) return Value(v);
        const double f = std::stod(t, &used);
        if (used == t.size()) return to_int(f);
      } catch (const std::exception&) {
      }
    }
    return dflt;
  }
  if (name == "float") {
    if (input.is_number()) return Value(input.as_float());
    try {
      if (input.is_string()) return Value(std::stod(input.as_string()));
    } catch (const std::exception&) {
    }
    return arg(args, 0, "default", Value(0.0));
  }
  if (name == "abs") {
    if (input.is_float()) return Value(std::fabs(input.as_float()));
    if (input.is_number()) return Value(input.as_int() < 0 ? -input.as_int() : input.as_int());
    fail(line, "abs needs a number");
  }
  if (name == "join") {
    const Value sep = arg(args, 0, "d", Value(""));
    const Value attribute = arg(args, 1, "attribute", Value::none());
    std::string out;
    bool first = true;
    for (const Value& v : iterate(input, line)) {
      if (!first) out += sep.str();
      out += (attribute.is_none() ? v : attribute_of(v, attribute.str(), line)).str();
      first = false;
    }
    return Value(out);
  }
  if (name == "first" || name == "last") {
    const List items = iterate(input, line);
    if (items.empty()) return Value::undefined(name + " of an empty sequence");
    return name == "first" ? items.front() : items.back();
  }
  if (name == "default" || name == "d") {
    const bool boolean = arg(args, 1, "boolean", Value(false)).truthy();
    if (input.is_undefined() || (boolean && !input.truthy())) return arg(args, 0, "default_value", Value(""));
    return input;
  }
  if (name == "list") return Value::list(iterate(input, line));
  if (name == "items") {
    if (input.is_undefined()) return Value::list();
    if (!input.is_dict()) fail(line, "items needs a mapping, found " + input.type_name());
    List out;
    for (const auto& [k, v] : input.as_dict()) out.push_back(Value::list({Value(k), v}));
    return Value::list(std::move(out));
  }
  if (name == "dictsort") {
    if (!input.is_dict()) fail(line, "dictsort needs a mapping");
    Dict d = input.as_dict();
    std::stable_sort(d.begin(), d.end(), [](const auto& a, const auto& b) { return ascii_lower(a.first) < ascii_lower(b.first); });
    List out;
    for (const auto& [k, v] : d) out.push_back(Value::list({Value(k), v}));
    return Value::list(std::move(out));
  }
  if (name == "selectattr" || name == "rejectattr") return select(input, args, true, name == "selectattr", line);
  if (name == "select" || name == "reject") return select(input, args, false, name == "select", line);
  if (name == "map") {
    List out;
    const Value attribute = arg(args, 99, "attribute");
    if (!attribute.is_undefined()) {
      const Value dflt = arg(args, 99, "default");
      for (const Value& v : iterate(input, line)) {
        Value a = attribute_of(v, attribute.str(), line);
        out.push_back(a.is_undefined() && !dflt.is_undefined() ? dflt : a);
      }
      return Value::list(std::move(out));
    }
    if (args.positional.empty() || !args.positional[0].is_string()) fail(line, "map needs a filter name or attribute=");
    const std::string filter = args.positional[0].as_string();
    CallArgs rest;
    rest.positional.assign(args.positional.begin() + 1, args.positional.end());
    rest.keyword = args.keyword;
    for (const Value& v : iterate(input, line)) {
      CallArgs a = rest;
      out.push_back(apply_filter(filter, v, a, line));
    }
    return Value::list(std::move(out));
  }
  if (name == "unique") {
    List out;
    for (const Value& v : iterate(input, line))
      if (std::none_of(out.begin(), out.end(), [&](const Value& x) { return values_equal(x, v); })) out.push_back(v);
    return Value::list(std::move(out));
  }
  if (name == "reverse") {
    if (input.is_string()) {
      std::u32string t = chars_of(input);
      std::reverse(t.begin(), t.end());
      return Value(utf8_encode(t));
    }
    List items = iterate(input, line);
    std::reverse(items.begin(), items.end());
    return Value::list(std::move(items));
  }
  if (name == "sort") {
    List items = iterate(input, line);
    const bool reverse = arg(args, 0, "reverse", Value(false)).truthy();
    const Value attribute = arg(args, 2, "attribute", Value::none());
    bool ok = true;
    std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
      const Value x = attribute.is_none() ? a : attribute_of(a, attribute.str(), line);
      const Value y = attribute.is_none() ? b : attribute_of(b, attribute.str(), line);
      bool k = true;
      const bool r = reverse ? value_less(y, x, k) : value_less(x, y, k);
      ok = ok && k;
      return r;
    });
    if (!ok) fail(line, "sort: values cannot be compared");
    return Value::list(std::move(items));
  }
  if (name == "sum") {
    Value total(int64_t{0});
    for (const Value& v : iterate(input, line)) {
      if (!v.is_number()) fail(line, "sum needs numbers");
      total = total.is_float() || v.is_float() ? Value(total.as_float() + v.as_float()) : Value(total.as_int() + v.as_int());
    }
    return total;
  }
  if (name == "min" || name == "max") {
    const List items = iterate(input, line);
    if (items.empty()) return Value::undefined(name + " of an empty sequence");
    Value best = items[0];
    for (const Value& v : items) {
      bool ok = true;
      if (name == "min" ? value_less(v, best, ok) : value_less(best, v, ok)) best = v;
      if (!ok) fail(line, name + ": values cannot be compared");
    }
    return best;
  }
  if (name == "indent")
    return Value(indent_text(need_string(input), arg(args, 0, "width", Value(int64_t{4})), arg(args, 1, "first", Value(false)).truthy(),
                             arg(args, 2, "blank", Value(false)).truthy()));
  if (name == "wordcount") return py_split(need_string(input), Value(), -1, false).as_list().size() == 0 ? Value(int64_t{0})
                                       : Value(static_cast<int64_t>(py_split(need_string(input), Value(), -1, false).as_list().size()));
  fail(line, "filter '" + name + "' is not supported");
}

}  // namespace lf::jinja
