#include "template/jinja_strings.h"

#include <algorithm>
#include <set>
#include <stdexcept>

#include "template/jinja_builtins.h"

namespace lf::jinja {

namespace {

bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

}  // namespace

std::string ascii_upper(std::string s) {
  for (char& c : s)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
  return s;
}
std::string ascii_lower(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  return s;
}

std::string py_strip(const std::string& s, const Value& chars, bool left, bool right) {
  const std::u32string text = utf8_decode(s);
  const std::u32string set = chars.is_string() ? utf8_decode(chars.as_string()) : std::u32string();
  auto strip_it = [&](char32_t c) { return chars.is_string() ? set.find(c) != std::u32string::npos : is_py_space(c); };
  size_t b = 0, e = text.size();
  if (left)
    while (b < e && strip_it(text[b])) ++b;
  if (right)
    while (e > b && strip_it(text[e - 1])) --e;
  return utf8_encode(text.substr(b, e - b));
}

Value py_split(const std::string& s, const Value& sep, int64_t maxsplit, bool from_right) {
  List parts;
  if (sep.is_string()) {
    const std::string& d = sep.as_string();
    if (d.empty()) throw std::invalid_argument("empty separator");
    std::vector<std::string> out;
    if (!from_right) {
      size_t pos = 0, hit;
      while ((maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) && (hit = s.find(d, pos)) != std::string::npos) {
        out.push_back(s.substr(pos, hit - pos));
        pos = hit + d.size();
      }
      out.push_back(s.substr(pos));
    } else {
      size_t end = s.size();
      std::vector<std::string> rev;
      while (maxsplit < 0 || static_cast<int64_t>(rev.size()) < maxsplit) {
        if (end < d.size()) break;
        const size_t hit = s.rfind(d, end - d.size());
        if (hit == std::string::npos) break;
        rev.push_back(s.substr(hit + d.size(), end - hit - d.size()));
        end = hit;
      }
      out.push_back(s.substr(0, end));
      out.insert(out.end(), rev.rbegin(), rev.rend());
    }
    for (auto& p : out) parts.emplace_back(p);
    return Value::list(std::move(parts));
  }
  // No separator: runs of whitespace split, leading/trailing whitespace ignored.
  const std::u32string text = utf8_decode(s);
  std::vector<std::u32string> out;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && is_py_space(text[i])) ++i;
    if (i == text.size()) break;
    if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
      size_t e = text.size();
      while (e > i && is_py_space(text[e - 1])) --e;
      out.push_back(text.substr(i, e - i));
      break;
    }
    size_t j = i;
    while (j < text.size() && !is_py_space(text[j])) ++j;
    out.push_back(text.substr(i, j - i));
    i = j;
  }
  if (from_right && maxsplit >= 0) throw std::invalid_argument("rsplit() without a separator and with maxsplit");
  for (auto& p : out) parts.emplace_back(utf8_encode(p));
  return Value::list(std::move(parts));
}

static bool affix_match(const std::string& s, const Value& affix, bool prefix, int line) {
  auto one = [&](const Value& a) {
    if (!a.is_string()) fail(line, "startswith/endswith takes a string or a tuple of strings");
    const std::string& x = a.as_string();
    return x.size() <= s.size() && (prefix ? s.compare(0, x.size(), x) == 0 : s.compare(s.size() - x.size(), x.size(), x) == 0);
  };
  if (affix.is_list()) return std::any_of(affix.as_list().begin(), affix.as_list().end(), one);
  return one(affix);
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
  std::string out;
  if (from.empty()) {  // Python inserts `to` around every character
    const std::u32string text = utf8_decode(s);
    int64_t done = 0;
    for (char32_t c : text) {
      if (count < 0 || done < count) out += to, ++done;
      out += utf8_encode(std::u32string(1, c));
    }
    if (count < 0 || done < count) out += to;
    return out;
  }
  size_t pos = 0, hit;
  int64_t done = 0;
  while ((count < 0 || done < count) && (hit = s.find(from, pos)) != std::string::npos) {
    out += s.substr(pos, hit - pos) + to;
    pos = hit + from.size();
    ++done;
  }
  return out + s.substr(pos);
}

static std::string py_title(const std::string& s) {  // str.title(): a letter after a non-letter starts a word
  std::string out = s;
  bool prev_cased = false;
  for (char& c : out) {
    if (is_alpha(c)) {
      c = prev_cased ? ascii_lower(std::string(1, c))[0] : ascii_upper(std::string(1, c))[0];
      prev_cased = true;
    } else {
      prev_cased = false;
    }
  }
  return out;
}

std::string capitalize(const std::string& s) {
  if (s.empty()) return s;
  return ascii_upper(s.substr(0, 1)) + ascii_lower(s.substr(1));
}

static Value bound(const std::string& name, Function f) { return Value::function(name, std::move(f)); }

static const std::set<std::string>& unsupported_str_methods() {
  static const std::set<std::string> names = {"center", "casefold", "encode", "expandtabs", "format", "format_map",
                                              "index", "rindex", "isascii", "isdecimal", "isidentifier", "isnumeric",
                                              "isprintable", "istitle", "ljust", "rjust", "maketrans", "partition",
                                              "rpartition", "swapcase", "translate", "zfill"};
  return names;
}

Value string_method(const Value& self, const std::string& name, int line) {
  const std::string s = self.as_string();
  auto method = [&](Function f) { return bound(name, std::move(f)); };
  if (name == "strip" || name == "lstrip" || name == "rstrip")
    return method([s, name](CallArgs& a) {
      return Value(py_strip(s, arg(a, 0, "chars"), name != "rstrip", name != "lstrip"));
    });
  if (name == "split" || name == "rsplit")
    return method([s, name, line](CallArgs& a) {
      const Value maxsplit = arg(a, 1, "maxsplit", Value(int64_t{-1}));
      try {
        return py_split(s, arg(a, 0, "sep"), maxsplit.as_int(), name == "rsplit");
      } catch (const std::invalid_argument& e) {
        fail(line, std::string(name) + "(): " + e.what());
      }
    });
  if (name == "startswith" || name == "endswith")
    return method([s, name, line](CallArgs& a) { return Value(affix_match(s, arg(a, 0, "prefix"), name == "startswith", line)); });
  if (name == "upper") return method([s](CallArgs&) { return Value(ascii_upper(s)); });
  if (name == "lower") return method([s](CallArgs&) { return Value(ascii_lower(s)); });
  if (name == "title") return method([s](CallArgs&) { return Value(py_title(s)); });
  if (name == "capitalize") return method([s](CallArgs&) { return Value(capitalize(s)); });
  if (name == "replace")
    return method([s, line](CallArgs& a) {
      const Value from = arg(a, 0, "old"), to = arg(a, 1, "new");
      if (!from.is_string() || !to.is_string()) fail(line, "replace() takes strings");
      return Value(replace_all(s, from.as_string(), to.as_string(), arg(a, 2, "count", Value(int64_t{-1})).as_int()));
    });
  if (name == "find" || name == "rfind" || name == "count")
    return method([s, name, line](CallArgs& a) {
      const Value sub = arg(a, 0, "sub");
      if (!sub.is_string()) fail(line, name + "() takes a string");
      const std::string& x = sub.as_string();
      if (name == "count") {
        if (x.empty()) return Value(static_cast<int64_t>(utf8_decode(s).size() + 1));
        int64_t n = 0;
        for (size_t p = s.find(x); p != std::string::npos; p = s.find(x, p + x.size())) ++n;
        return Value(n);
      }
      const size_t byte = name == "find" ? s.find(x) : s.rfind(x);
      if (byte == std::string::npos) return Value(int64_t{-1});
      return Value(static_cast<int64_t>(utf8_decode(s.substr(0, byte)).size()));
    });
  if (name == "join")
    return method([s, line](CallArgs& a) {
      std::string out;
      bool first = true;
      for (const Value& v : iterate(arg(a, 0, "iterable"), line)) {
        if (!v.is_string()) fail(line, "join() takes strings, found " + v.type_name());
        if (!first) out += s;
        out += v.as_string();
        first = false;
      }
      return Value(out);
    });
  if (name == "splitlines")
    return method([s](CallArgs&) {
      List out;
      size_t pos = 0;
      while (pos < s.size()) {
        size_t e = s.find_first_of("\r\n", pos);
        if (e == std::string::npos) {
          out.emplace_back(s.substr(pos));
          break;
        }
        out.emplace_back(s.substr(pos, e - pos));
        pos = e + (s.compare(e, 2, "\r\n") == 0 ? 2 : 1);
      }
      return Value::list(std::move(out));
    });
  if (name == "removeprefix" || name == "removesuffix")
    return method([s, name, line](CallArgs& a) {
      const Value x = arg(a, 0, "affix");
      if (!x.is_string()) fail(line, name + "() takes a string");
      const bool prefix = name == "removeprefix";
      return Value(affix_match(s, x, prefix, line) ? (prefix ? s.substr(x.as_string().size()) : s.substr(0, s.size() - x.as_string().size())) : s);
    });
  if (name == "isdigit" || name == "isalpha" || name == "isalnum" || name == "isspace" || name == "isupper" || name == "islower")
    return method([s, name](CallArgs&) {
      const std::u32string t = utf8_decode(s);
      if (t.empty()) return Value(false);
      bool any_cased = false, ok = true;
      for (char32_t c : t) {
        const bool digit = c >= '0' && c <= '9', alpha = c < 128 && is_alpha(static_cast<char>(c));
        if (name == "isdigit") ok = ok && digit;
        else if (name == "isalpha") ok = ok && alpha;
        else if (name == "isalnum") ok = ok && (digit || alpha);
        else if (name == "isspace") ok = ok && is_py_space(c);
        else if (alpha) {
          any_cased = true;
          ok = ok && (name == "isupper" ? (c >= 'A' && c <= 'Z') : (c >= 'a' && c <= 'z'));
        }
      }
      return Value(ok && (name == "isdigit" || name == "isalpha" || name == "isalnum" || name == "isspace" || any_cased));
    });
  if (unsupported_str_methods().count(name)) fail(line, "string method '" + name + "' is not supported");
  return Value::undefined("str object has no attribute '" + name + "'");
}

}  // namespace lf::jinja
