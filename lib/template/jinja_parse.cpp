// Parser of the Jinja subset: jinja2's grammar (statements, and expressions with its precedence:
// conditional, or, and, not, comparisons and `in`, + -, ~, * / // %, **, unary, then postfix
// access, calls, filters and tests) over the tokens of lib/template/jinja_lex.h.
#include <set>

#include "core/error.h"
#include "template/jinja_ast.h"
#include "template/jinja_builtins.h"
#include "template/jinja_lex.h"

namespace lf::jinja {

namespace {

ExprPtr make(Expr::Kind kind, int line) {
  auto e = std::make_unique<Expr>();
  e->kind = kind;
  e->line = line;
  return e;
}

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : t_(std::move(tokens)) {}

  Body parse_all() {
    std::string end_tag;
    Body body = parse_body({}, end_tag);
    return body;
  }

 private:
  const Token& peek(size_t k = 0) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  const Token& next() { return t_[std::min(i_++, t_.size() - 1)]; }
  bool is_op(const char* op, size_t k = 0) const { return peek(k).kind == Token::Kind::Op && peek(k).text == op; }
  bool is_name(const char* name, size_t k = 0) const { return peek(k).kind == Token::Kind::Name && peek(k).text == name; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    ++i_;
    return true;
  }
  bool skip_name(const char* name) {
    if (!is_name(name)) return false;
    ++i_;
    return true;
  }
  std::string describe(const Token& t) const {
    switch (t.kind) {
      case Token::Kind::VarEnd: return "'}}'";
      case Token::Kind::BlockEnd: return "'%}'";
      case Token::Kind::End: return "the end of the template";
      case Token::Kind::String: return "a string";
      default: return "'" + t.text + "'";
    }
  }
  void expect_op(const char* op) {
    if (!skip_op(op)) fail(peek().line, std::string("expected '") + op + "', found " + describe(peek()));
  }
  std::string expect_name() {
    if (peek().kind != Token::Kind::Name) fail(peek().line, "expected a name, found " + describe(peek()));
    return next().text;
  }
  void expect_block_end() {
    if (peek().kind != Token::Kind::BlockEnd) fail(peek().line, "expected '%}', found " + describe(peek()));
    ++i_;
  }

  // Nodes up to a {% tag %} named in `ends` (consumed up to its name; `end_tag` says which).
  Body parse_body(const std::set<std::string>& ends, std::string& end_tag) {
    Body body;
    while (true) {
      const Token& t = peek();
      if (t.kind == Token::Kind::End) {
        if (!ends.empty()) fail(t.line, "missing {% " + *ends.rbegin() + " %} before the end of the template");
        return body;
      }
      if (t.kind == Token::Kind::Text) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::Text;
        n->line = t.line;
        n->text = t.text;
        body.push_back(std::move(n));
        ++i_;
      } else if (t.kind == Token::Kind::VarBegin) {
        ++i_;
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::Output;
        n->line = t.line;
        n->expr = parse_tuple(true);
        if (peek().kind != Token::Kind::VarEnd) fail(peek().line, "expected '}}', found " + describe(peek()));
        ++i_;
        body.push_back(std::move(n));
      } else {  // BlockBegin
        ++i_;
        const Token& name = peek();
        if (name.kind != Token::Kind::Name) fail(name.line, "expected a tag name after '{%', found " + describe(name));
        if (ends.count(name.text)) {
          end_tag = name.text;
          ++i_;
          return body;
        }
        body.push_back(parse_statement());
      }
    }
  }

  NodePtr parse_statement() {
    const Token tag = next();
    auto n = std::make_unique<Node>();
    n->line = tag.line;
    std::string end;
    if (tag.text == "if") {
      parse_if(*n);
    } else if (tag.text == "for") {
      parse_for(*n);
    } else if (tag.text == "set") {
      parse_set(*n);
    } else if (tag.text == "macro") {
      parse_macro(*n);
    } else if (tag.text == "break" || tag.text == "continue") {
      n->kind = tag.text == "break" ? Node::Kind::Break : Node::Kind::Continue;
      expect_block_end();
    } else if (tag.text == "generation") {
      n->kind = Node::Kind::Generation;
      expect_block_end();
      n->body = parse_body({"endgeneration"}, end);
      expect_block_end();
    } else {
      static const std::set<std::string> stray = {"elif", "else", "endif", "endfor", "endset", "endmacro", "endgeneration"};
      if (stray.count(tag.text)) fail(tag.line, "unexpected {% " + tag.text + " %}");
      fail(tag.line, "tag '" + tag.text + "' is not supported");
    }
    return n;
  }

  // {% if %} ... {% elif %} ... {% else %} ... {% endif %}, after the tag's name.
  void parse_if(Node& n) {
    std::string end;
    n.kind = Node::Kind::If;
    n.conditions.push_back(parse_expression(true));
    expect_block_end();
    while (true) {
      n.bodies.push_back(parse_body({"elif", "else", "endif"}, end));
      if (end == "elif") {
        n.conditions.push_back(parse_expression(true));
        expect_block_end();
      } else if (end == "else") {
        expect_block_end();
        n.else_body = parse_body({"endif"}, end);
        break;
      } else {
        break;
      }
    }
    expect_block_end();
  }

  // {% for targets in expr [if cond] %} ... [{% else %} ...] {% endfor %}.
  void parse_for(Node& n) {
    std::string end;
    n.kind = Node::Kind::For;
    do n.targets.push_back(expect_name());
    while (skip_op(","));
    if (!skip_name("in")) fail(peek().line, "expected 'in' in the for tag, found " + describe(peek()));
    n.expr = parse_tuple(false);
    if (skip_name("if")) n.cond = parse_expression(true);
    if (is_name("recursive")) fail(peek().line, "recursive for loops are not supported");
    expect_block_end();
    n.body = parse_body({"else", "endfor"}, end);
    if (end == "else") {
      expect_block_end();
      n.else_body = parse_body({"endfor"}, end);
    }
    expect_block_end();
  }

  // {% set a[, b] = expr %}, {% set ns.attr = expr %}, or a block set {% set a %} ... {% endset %}.
  void parse_set(Node& n) {
    std::string end;
    n.kind = Node::Kind::Set;
    n.targets.push_back(expect_name());
    if (skip_op(".")) {
      n.target_attr = expect_name();
    } else {
      while (skip_op(",")) n.targets.push_back(expect_name());
    }
    if (skip_op("=")) {
      n.expr = parse_tuple(true);
      expect_block_end();
      return;
    }
    if (n.targets.size() != 1 || !n.target_attr.empty()) fail(n.line, "expected '=' in the set tag");
    if (is_op("|")) fail(peek().line, "filters on a block set are not supported");
    expect_block_end();
    n.body = parse_body({"endset"}, end);
    expect_block_end();
  }

  // {% macro name(params with defaults) %} ... {% endmacro %}.
  void parse_macro(Node& n) {
    std::string end;
    n.kind = Node::Kind::Macro;
    n.name = expect_name();
    expect_op("(");
    while (!skip_op(")")) {
      std::string param = expect_name();
      ExprPtr def;
      if (skip_op("=")) def = parse_expression(true);
      n.params.emplace_back(param, std::move(def));
      if (!is_op(")")) expect_op(",");
    }
    expect_block_end();
    n.body = parse_body({"endmacro"}, end);
    expect_block_end();
  }

  // An expression, or a bare tuple `a, b` (as in {{ a, b }} or set x = a, b).
  ExprPtr parse_tuple(bool with_condexpr) {
    const int line = peek().line;
    ExprPtr first = parse_expression(with_condexpr);
    if (!is_op(",")) return first;
    auto tuple = make(Expr::Kind::Tuple, line);
    tuple->items.push_back(std::move(first));
    while (skip_op(",")) {
      if (peek().kind == Token::Kind::BlockEnd || peek().kind == Token::Kind::VarEnd) break;
      tuple->items.push_back(parse_expression(with_condexpr));
    }
    return tuple;
  }

  ExprPtr parse_expression(bool with_condexpr) {
    ExprPtr e = parse_or();
    if (!with_condexpr) return e;
    while (is_name("if")) {
      const int line = next().line;
      auto c = make(Expr::Kind::Conditional, line);
      ExprPtr cond = parse_or();
      ExprPtr otherwise = skip_name("else") ? parse_expression(true) : nullptr;
      c->items.push_back(std::move(cond));
      c->items.push_back(std::move(e));
      c->items.push_back(std::move(otherwise));
      e = std::move(c);
    }
    return e;
  }

  ExprPtr binary(const std::string& op, ExprPtr a, ExprPtr b, int line) {
    auto e = make(Expr::Kind::Binary, line);
    e->name = op;
    e->items.push_back(std::move(a));
    e->items.push_back(std::move(b));
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) e = binary("or", std::move(e), (next(), parse_and()), peek().line);
    return e;
  }
  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) e = binary("and", std::move(e), (next(), parse_not()), peek().line);
    return e;
  }
  ExprPtr parse_not() {
    if (is_name("not")) {
      auto e = make(Expr::Kind::Unary, next().line);
      e->name = "not";
      e->items.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }
  ExprPtr parse_compare() {
    ExprPtr e = parse_math1();
    while (true) {
      const int line = peek().line;
      std::string op;
      if (peek().kind == Token::Kind::Op &&
          (peek().text == "==" || peek().text == "!=" || peek().text == "<" || peek().text == ">" ||
           peek().text == "<=" || peek().text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        ++i_;
        op = "in";
      } else if (is_name("not") && is_name("in", 1)) {
        i_ += 2;
        op = "notin";
      } else {
        return e;
      }
      e = binary(op, std::move(e), parse_math1(), line);
    }
  }
  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& t = next();
      e = binary(t.text, std::move(e), parse_concat(), t.line);
    }
    return e;
  }
  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      const int line = next().line;
      e = binary("~", std::move(e), parse_math2(), line);
    }
    return e;
  }
  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& t = next();
      e = binary(t.text, std::move(e), parse_pow(), t.line);
    }
    return e;
  }
  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (is_op("**")) {
      const int line = next().line;
      e = binary("**", std::move(e), parse_unary(true), line);
    }
    return e;
  }
  ExprPtr parse_unary(bool with_filter) {
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      const Token& t = next();
      e = make(Expr::Kind::Unary, t.line);
      e->name = t.text;
      e->items.push_back(parse_unary(false));
    } else {
      e = parse_postfix(parse_primary());
    }
    return with_filter ? parse_filter_expr(std::move(e)) : std::move(e);
  }

  ExprPtr parse_primary() {
    const Token& t = next();
    switch (t.kind) {
      case Token::Kind::Name: {
        if (t.text == "true" || t.text == "True") return literal(Value(true), t.line);
        if (t.text == "false" || t.text == "False") return literal(Value(false), t.line);
        if (t.text == "none" || t.text == "None") return literal(Value::none(), t.line);
        auto e = make(Expr::Kind::Name, t.line);
        e->name = t.text;
        return e;
      }
      case Token::Kind::String: {
        std::string s = t.value.as_string();
        while (peek().kind == Token::Kind::String) s += next().value.as_string();  // adjacent literals join
        return literal(Value(s), t.line);
      }
      case Token::Kind::Int:
      case Token::Kind::Float: return literal(t.value, t.line);
      case Token::Kind::Op:
        if (t.text == "(") {
          if (skip_op(")")) return make(Expr::Kind::Tuple, t.line);
          ExprPtr e = parse_expression(true);
          if (is_op(",")) {
            auto tuple = make(Expr::Kind::Tuple, t.line);
            tuple->items.push_back(std::move(e));
            while (skip_op(",") && !is_op(")")) tuple->items.push_back(parse_expression(true));
            e = std::move(tuple);
          }
          expect_op(")");
          return e;
        }
        if (t.text == "[") {
          auto e = make(Expr::Kind::List, t.line);
          while (!skip_op("]")) {
            e->items.push_back(parse_expression(true));
            if (!is_op("]")) expect_op(",");
          }
          return e;
        }
        if (t.text == "{") {
          auto e = make(Expr::Kind::Dict, t.line);
          while (!skip_op("}")) {
            e->items.push_back(parse_expression(true));
            expect_op(":");
            e->items.push_back(parse_expression(true));
            if (!is_op("}")) expect_op(",");
          }
          return e;
        }
        break;
      default: break;
    }
    fail(t.line, "unexpected " + describe(t) + " in an expression");
  }

  ExprPtr literal(Value v, int line) {
    auto e = make(Expr::Kind::Literal, line);
    e->value = std::move(v);
    return e;
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      const int line = peek().line;
      if (skip_op(".")) {
        auto a = make(Expr::Kind::Attr, line);
        if (peek().kind == Token::Kind::Int) {  // x.0 is x[0]
          a->kind = Expr::Kind::Item;
          a->items.push_back(std::move(e));
          a->items.push_back(literal(next().value, line));
        } else {
          a->name = expect_name();
          a->items.push_back(std::move(e));
        }
        e = std::move(a);
      } else if (skip_op("[")) {
        e = parse_subscript(std::move(e), line);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr target, int line) {
    ExprPtr parts[3];
    bool is_slice = false;
    for (int k = 0; k < 3; ++k) {
      if (!is_op(":") && !is_op("]")) parts[k] = parse_expression(true);
      if (k < 2 && skip_op(":")) {
        is_slice = true;
        continue;
      }
      break;
    }
    expect_op("]");
    auto e = make(is_slice ? Expr::Kind::Slice : Expr::Kind::Item, line);
    e->items.push_back(std::move(target));
    if (!is_slice) {
      if (!parts[0]) fail(line, "empty subscript []");
      e->items.push_back(std::move(parts[0]));
    } else {
      for (auto& p : parts) e->items.push_back(std::move(p));
    }
    return e;
  }

  void parse_args(Expr& e) {
    expect_op("(");
    while (!skip_op(")")) {
      if (is_op("*") || is_op("**")) fail(peek().line, "*args and **kwargs in calls are not supported");
      if (peek().kind == Token::Kind::Name && is_op("=", 1)) {
        std::string key = next().text;
        ++i_;
        e.kwargs.emplace_back(key, parse_expression(true));
      } else {
        e.args.push_back(parse_expression(true));
      }
      if (!is_op(")")) expect_op(",");
    }
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto e = make(Expr::Kind::Call, peek().line);
    e->items.push_back(std::move(callee));
    parse_args(*e);
    return e;
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        const int line = next().line;
        auto f = make(Expr::Kind::Filter, line);
        f->name = expect_name();
        while (skip_op(".")) f->name += "." + expect_name();
        if (!is_supported_filter(f->name)) fail(line, "filter '" + f->name + "' is not supported");
        f->items.push_back(std::move(e));
        if (is_op("(")) parse_args(*f);
        e = std::move(f);
      } else if (is_name("is")) {
        const int line = next().line;
        auto t = make(Expr::Kind::Test, line);
        t->negate = skip_name("not");
        t->name = expect_name();
        if (!is_supported_test(t->name)) fail(line, "test '" + t->name + "' is not supported");
        t->items.push_back(std::move(e));
        if (is_op("(")) {
          parse_args(*t);
        } else {
          const Token& a = peek();
          const bool starts_arg = a.kind == Token::Kind::String || a.kind == Token::Kind::Int ||
                                  a.kind == Token::Kind::Float || (a.kind == Token::Kind::Op && (a.text == "[" || a.text == "{")) ||
                                  (a.kind == Token::Kind::Name && a.text != "else" && a.text != "or" && a.text != "and" &&
                                   a.text != "if" && a.text != "is" && a.text != "in" && a.text != "not");
          if (starts_arg) t->args.push_back(parse_postfix(parse_primary()));
        }
        e = std::move(t);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  std::vector<Token> t_;
  size_t i_ = 0;
};

}  // namespace

Body parse_template(const std::string& source) { return Parser(lex_template(source)).parse_all(); }

}  // namespace lf::jinja
