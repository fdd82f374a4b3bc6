// Python's str methods as chat templates call them (internal to lib/template/jinja*.cpp): strip with
// Python's Unicode whitespace, split/rsplit, replace, title, ... Case mapping is ASCII only.
#pragma once

#include <cstdint>
#include <string>

#include "template/jinja_value.h"

namespace lf::jinja {

std::string ascii_upper(std::string s);
std::string ascii_lower(std::string s);
std::string capitalize(const std::string& s);  // str.capitalize()
std::string py_strip(const std::string& s, const Value& chars, bool left, bool right);  // chars undefined/none: whitespace
Value py_split(const std::string& s, const Value& sep, int64_t maxsplit, bool from_right);  // std::invalid_argument as Python raises
std::string replace_all(const std::string& s, const std::string& from, const std::string& to, int64_t count);

// `self.name` for a str: a bound method, an InputError for a str method outside the subset, else undefined.
Value string_method(const Value& self, const std::string& name, int line);

}  // namespace lf::jinja
