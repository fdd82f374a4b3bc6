// The Jinja engine's built-ins (internal to lib/template/jinja*.cpp): attribute and item access with
// jinja2's sandboxed semantics, the filters, the tests, and the str/dict methods chat templates call.
// Anything outside the subset is an InputError naming it and the template line.
#pragma once

#include <string>

#include "template/jinja_value.h"

namespace lf::jinja {

[[noreturn]] void fail(int line, const std::string& what);
[[noreturn]] void fail_undefined(const Value& v, int line);  // "'name' is undefined"

Value get_attr(const Value& obj, const std::string& name, int line);  // obj.name
Value get_item(const Value& obj, const Value& key, int line);         // obj[key]
Value get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step, int line);
List iterate(const Value& v, int line);  // what `for x in v` walks
int64_t length(const Value& v, int line);
bool contains(const Value& container, const Value& item, int line);  // `item in container`

// Whether a filter / test name is in the subset (the parser rejects others up front, as jinja2 does).
bool is_supported_filter(const std::string& name);
bool is_supported_test(const std::string& name);

Value apply_filter(const std::string& name, const Value& input, CallArgs& args, int line);
bool apply_test(const std::string& name, const Value& v, CallArgs& args, int line);

// An argument by position or keyword, or `fallback` (undefined: required).
Value arg(CallArgs& args, size_t position, const char* keyword, const Value& fallback = Value());

}  // namespace lf::jinja
