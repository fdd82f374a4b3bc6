// The Jinja engine's evaluator: walks the syntax tree of lib/template/jinja_ast.h with jinja2's
// scoping (a for-loop iteration and a macro call are scopes of their own, `if` is not; a `set` in
// a loop does not outlive it, which is why templates carry state in a namespace()).
#include <cmath>
#include <ctime>
#include <map>

#include "core/error.h"
#include "template/jinja.h"
#include "template/jinja_ast.h"
#include "template/jinja_builtins.h"

namespace lf::jinja {

struct Program {
  Body body;
};

namespace {

enum class Flow { Normal, Break, Continue };

class Renderer {
 public:
  explicit Renderer(const nlohmann::json& context) {
    auto globals = std::make_shared<std::map<std::string, Value>>();
    add_globals(*globals);
    if (context.is_object())
      for (const auto& [k, v] : context.items()) (*globals)[k] = Value::from_json(v);
    scopes_.push_back(std::move(globals));
  }

  Flow exec(const Body& body, std::string& out) {
    for (const auto& node : body) {
      const Flow f = exec(*node, out);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

 private:
  using Scope = std::shared_ptr<std::map<std::string, Value>>;

  void add_globals(std::map<std::string, Value>& g) {
    g["raise_exception"] = Value::function("raise_exception", [](CallArgs& a) -> Value {
      throw InputError("chat template raised an error: " + arg(a, 0, "message").str());
    });
    g["namespace"] = Value::function("namespace", [](CallArgs& a) {
      Dict items;
      for (const Value& p : a.positional)
        if (p.is_dict()) items = p.as_dict();
      Value ns = Value::ns(std::move(items));
      for (auto& [k, v] : a.keyword) ns.set(k, v);
      return ns;
    });
    g["dict"] = Value::function("dict", [](CallArgs& a) {
      Value d = Value::dict(a.positional.empty() || !a.positional[0].is_dict() ? Dict{} : a.positional[0].as_dict());
      for (auto& [k, v] : a.keyword) d.set(k, v);
      return d;
    });
    g["range"] = Value::function("range", [](CallArgs& a) {
      int64_t start = 0, stop = 0, step = 1;
      const auto& p = a.positional;
      if (p.size() == 1) stop = p[0].as_int();
      if (p.size() >= 2) start = p[0].as_int(), stop = p[1].as_int();
      if (p.size() >= 3) step = p[2].as_int();
      if (step == 0) throw InputError("chat template: range() step must not be zero");
      List out;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) out.emplace_back(i);
      return Value::list(std::move(out));
    });
    g["strftime_now"] = Value::function("strftime_now", [](CallArgs& a) {
      const std::time_t now = std::time(nullptr);
      std::tm local{};
      localtime_r(&now, &local);
      char buf[256];
      const size_t n = std::strftime(buf, sizeof buf, arg(a, 0, "format").str().c_str(), &local);
      return Value(std::string(buf, n));
    });
  }

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto found = (*it)->find(name);
      if (found != (*it)->end()) return found->second;
    }
    return Value::undefined(name);
  }
  void assign(const std::string& name, Value v) { (*scopes_.back())[name] = std::move(v); }

  void assign_targets(const std::vector<std::string>& targets, const Value& v, int line) {
    if (targets.size() == 1) {
      assign(targets[0], v);
      return;
    }
    const List items = iterate(v, line);
    if (items.size() != targets.size())
      fail(line, "cannot unpack " + std::to_string(items.size()) + " values into " + std::to_string(targets.size()) + " names");
    for (size_t i = 0; i < targets.size(); ++i) assign(targets[i], items[i]);
  }

  Flow exec(const Node& n, std::string& out) {
    switch (n.kind) {
      case Node::Kind::Text: out += n.text; return Flow::Normal;
      case Node::Kind::Output: out += eval(*n.expr).str(); return Flow::Normal;
      case Node::Kind::If:
        for (size_t i = 0; i < n.conditions.size(); ++i)
          if (eval(*n.conditions[i]).truthy()) return exec(n.bodies[i], out);
        return exec(n.else_body, out);
      case Node::Kind::For: return exec_for(n, out);
      case Node::Kind::Set: {
        Value v;
        if (n.expr) {
          v = eval(*n.expr);
        } else {
          std::string captured;
          exec(n.body, captured);
          v = Value(captured);
        }
        if (!n.target_attr.empty()) {
          const Value ns = lookup(n.targets[0]);
          if (!ns.is_namespace()) fail(n.line, "cannot assign attribute on non-namespace object '" + n.targets[0] + "'");
          if (!n.target_attr.empty() && n.target_attr[0] == '_')
            fail(n.line, "chat templates cannot store underscore-prefixed attributes on a namespace");
          ns.set(n.target_attr, v);
        } else {
          assign_targets(n.targets, v, n.line);
        }
        return Flow::Normal;
      }
      case Node::Kind::Macro: define_macro(n); return Flow::Normal;
      case Node::Kind::Break: return Flow::Break;
      case Node::Kind::Continue: return Flow::Continue;
      case Node::Kind::Generation: return exec(n.body, out);
    }
    return Flow::Normal;
  }

  Flow exec_for(const Node& n, std::string& out) {
    List items = iterate(eval(*n.expr), n.line);
    if (n.cond) {
      List kept;
      for (const Value& item : items) {
        scopes_.push_back(std::make_shared<std::map<std::string, Value>>());
        assign_targets(n.targets, item, n.line);
        const bool keep = eval(*n.cond).truthy();
        scopes_.pop_back();
        if (keep) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) return exec(n.else_body, out);
    const int64_t count = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < count; ++i) {
      scopes_.push_back(std::make_shared<std::map<std::string, Value>>());
      Dict loop = {{"index", Value(i + 1)},       {"index0", Value(i)},          {"revindex", Value(count - i)},
                   {"revindex0", Value(count - i - 1)}, {"first", Value(i == 0)}, {"last", Value(i == count - 1)},
                   {"length", Value(count)},      {"depth", Value(int64_t{1})},  {"depth0", Value(int64_t{0})}};
      if (i > 0) loop.emplace_back("previtem", items[i - 1]);
      if (i + 1 < count) loop.emplace_back("nextitem", items[i + 1]);
      loop.emplace_back("cycle", Value::function("cycle", [i](CallArgs& a) {
                          return a.positional.empty() ? Value() : a.positional[static_cast<size_t>(i) % a.positional.size()];
                        }));
      assign("loop", Value::ns(std::move(loop)));
      assign_targets(n.targets, items[i], n.line);
      const Flow f = exec(n.body, out);
      scopes_.pop_back();
      if (f == Flow::Break) break;
    }
    return Flow::Normal;
  }

  void define_macro(const Node& n) {
    const Node* node = &n;
    Scope globals = scopes_.front();
    assign(n.name, Value::function(n.name, [this, node, globals](CallArgs& a) {
      if (++depth_ > 100) fail(node->line, "macro '" + node->name + "' recurses too deeply");
      auto locals = std::make_shared<std::map<std::string, Value>>();
      std::vector<Scope> saved = std::move(scopes_);
      scopes_ = {globals, locals};
      for (size_t i = 0; i < node->params.size(); ++i) {
        const auto& [name, def] = node->params[i];
        Value v = arg(a, i, name.c_str());
        if (v.is_undefined() && def) v = eval(*def);
        (*locals)[name] = v;
      }
      if (a.positional.size() > node->params.size()) fail(node->line, "macro '" + node->name + "' takes " +
                                                                          std::to_string(node->params.size()) + " arguments");
      std::string out;
      exec(node->body, out);
      scopes_ = std::move(saved);
      --depth_;
      return Value(out);
    }));
  }

  CallArgs eval_args(const Expr& e) {
    CallArgs a;
    for (const auto& p : e.args) a.positional.push_back(eval(*p));
    for (const auto& [k, v] : e.kwargs) a.keyword.emplace_back(k, eval(*v));
    return a;
  }

  Value eval(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::Literal: return e.value;
      case Expr::Kind::Name: return lookup(e.name);
      case Expr::Kind::List:
      case Expr::Kind::Tuple: {
        List items;
        for (const auto& x : e.items) items.push_back(eval(*x));
        return Value::list(std::move(items));
      }
      case Expr::Kind::Dict: {
        Value d = Value::dict();
        for (size_t i = 0; i + 1 < e.items.size(); i += 2) {
          const Value key = eval(*e.items[i]);
          if (!key.is_string()) fail(e.line, "dict keys other than strings are not supported");
          d.set(key.as_string(), eval(*e.items[i + 1]));
        }
        return d;
      }
      case Expr::Kind::Attr: return get_attr(eval(*e.items[0]), e.name, e.line);
      case Expr::Kind::Item: return get_item(eval(*e.items[0]), eval(*e.items[1]), e.line);
      case Expr::Kind::Slice: {
        auto part = [&](size_t k) { return e.items[k] ? eval(*e.items[k]) : Value::none(); };
        return get_slice(eval(*e.items[0]), part(1), part(2), part(3), e.line);
      }
      case Expr::Kind::Call: {
        const Value callee = eval(*e.items[0]);
        CallArgs a = eval_args(e);
        if (callee.is_undefined()) {
          if (e.items[0]->kind == Expr::Kind::Name) fail(e.line, "function '" + e.items[0]->name + "' is not supported");
          fail(e.line, "'" + callee.name() + "' is undefined and cannot be called");
        }
        if (!callee.is_function()) fail(e.line, "'" + callee.type_name() + "' object is not callable");
        return callee.as_function()(a);
      }
      case Expr::Kind::Filter: {
        const Value input = eval(*e.items[0]);
        CallArgs a = eval_args(e);
        return apply_filter(e.name, input, a, e.line);
      }
      case Expr::Kind::Test: {
        const Value v = eval(*e.items[0]);
        CallArgs a = eval_args(e);
        return Value(apply_test(e.name, v, a, e.line) != e.negate);
      }
      case Expr::Kind::Unary: {
        const Value v = eval(*e.items[0]);
        if (e.name == "not") return Value(!v.truthy());
        if (v.is_undefined()) fail_undefined(v, e.line);
        if (!v.is_number()) fail(e.line, "bad operand type for unary " + e.name + ": '" + v.type_name() + "'");
        if (e.name == "+") return v.is_float() ? v : Value(v.as_int());
        return v.is_float() ? Value(-v.as_float()) : Value(-v.as_int());
      }
      case Expr::Kind::Conditional:
        if (eval(*e.items[0]).truthy()) return eval(*e.items[1]);
        return e.items[2] ? eval(*e.items[2]) : Value::undefined();
      case Expr::Kind::Binary: return binary(e);
    }
    return Value();
  }

  Value binary(const Expr& e) {
    const std::string& op = e.name;
    const Value a = eval(*e.items[0]);
    if (op == "and") return a.truthy() ? eval(*e.items[1]) : a;
    if (op == "or") return a.truthy() ? a : eval(*e.items[1]);
    const Value b = eval(*e.items[1]);
    if (op == "==") return Value(values_equal(a, b));
    if (op == "!=") return Value(!values_equal(a, b));
    if (op == "in") return Value(contains(b, a, e.line));
    if (op == "notin") return Value(!contains(b, a, e.line));
    if (op == "~") return Value(a.str() + b.str());
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      if (a.is_undefined()) fail_undefined(a, e.line);
      if (b.is_undefined()) fail_undefined(b, e.line);
      bool ok = true;
      const bool less = value_less(a, b, ok), greater = ok && value_less(b, a, ok);
      if (!ok) fail(e.line, "'" + op + "' not supported between instances of '" + a.type_name() + "' and '" + b.type_name() + "'");
      if (op == "<") return Value(less);
      if (op == ">") return Value(greater);
      if (op == "<=") return Value(!greater);
      return Value(!less);
    }
    if (a.is_undefined()) fail_undefined(a, e.line);
    if (b.is_undefined()) fail_undefined(b, e.line);
    auto type_error = [&]() -> Value {
      fail(e.line, "unsupported operand type(s) for " + op + ": '" + a.type_name() + "' and '" + b.type_name() + "'");
    };
    if (op == "+") {
      if (a.is_string() && b.is_string()) return Value(a.as_string() + b.as_string());
      if (a.is_list() && b.is_list()) {
        List items = a.as_list();
        items.insert(items.end(), b.as_list().begin(), b.as_list().end());
        return Value::list(std::move(items));
      }
    }
    if (op == "*" && (a.is_string() || a.is_list() || b.is_string() || b.is_list())) {
      const Value& seq = a.is_string() || a.is_list() ? a : b;
      const Value& times = a.is_string() || a.is_list() ? b : a;
      if (!times.is_int() && !times.is_bool()) return type_error();
      if (seq.is_string()) {
        std::string out;
        for (int64_t i = 0; i < times.as_int(); ++i) out += seq.as_string();
        return Value(out);
      }
      List out;
      for (int64_t i = 0; i < times.as_int(); ++i) out.insert(out.end(), seq.as_list().begin(), seq.as_list().end());
      return Value::list(std::move(out));
    }
    if (op == "%" && a.is_string()) fail(e.line, "string formatting with % is not supported");
    if (!a.is_number() || !b.is_number()) return type_error();
    const bool floats = a.is_float() || b.is_float();
    if (op == "+") return floats ? Value(a.as_float() + b.as_float()) : Value(a.as_int() + b.as_int());
    if (op == "-") return floats ? Value(a.as_float() - b.as_float()) : Value(a.as_int() - b.as_int());
    if (op == "*") return floats ? Value(a.as_float() * b.as_float()) : Value(a.as_int() * b.as_int());
    if (op == "**") {
      if (!floats && b.as_int() >= 0) {
        int64_t r = 1;
        for (int64_t i = 0; i < b.as_int(); ++i) r *= a.as_int();
        return Value(r);
      }
      return Value(std::pow(a.as_float(), b.as_float()));
    }
    if ((op == "/" || op == "//" || op == "%") && b.as_float() == 0.0) fail(e.line, "division by zero");
    if (op == "/") return Value(a.as_float() / b.as_float());
    if (op == "//") {
      if (floats) return Value(std::floor(a.as_float() / b.as_float()));
      const int64_t q = a.as_int() / b.as_int();
      return Value((a.as_int() % b.as_int() != 0 && ((a.as_int() < 0) != (b.as_int() < 0))) ? q - 1 : q);
    }
    if (op == "%") {
      if (floats) {
        const double r = std::fmod(a.as_float(), b.as_float());
        return Value(r != 0 && ((r < 0) != (b.as_float() < 0)) ? r + b.as_float() : r);
      }
      const int64_t r = a.as_int() % b.as_int();
      return Value(r != 0 && ((r < 0) != (b.as_int() < 0)) ? r + b.as_int() : r);
    }
    return type_error();
  }

  std::vector<Scope> scopes_;
  int depth_ = 0;
};

}  // namespace

Template::Template(const std::string& source) {
  auto program = std::make_shared<Program>();
  program->body = parse_template(source);
  program_ = std::move(program);
}

std::string Template::render(const nlohmann::json& context) const {
  Renderer renderer(context);
  std::string out;
  try {
    renderer.exec(program_->body, out);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw InputError(std::string("chat template: ") + e.what());
  }
  return out;
}

}  // namespace lf::jinja
