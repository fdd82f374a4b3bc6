// The Jinja engine's syntax tree (internal to lib/template/jinja*.cpp): what the parser builds from
// a template and the evaluator walks. Every node keeps its template line for error messages.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "template/jinja_value.h"

namespace lf::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    Literal,      // value
    Name,         // name
    List,         // items
    Tuple,        // items (evaluates to a list)
    Dict,         // keys[i]: items[2i], value: items[2i+1]
    Attr,         // items[0].name
    Item,         // items[0][items[1]]
    Slice,        // items[0][items[1]:items[2]:items[3]] (null parts absent)
    Call,         // items[0](args)
    Filter,       // items[0] | name(args); items may be empty for a filter block's input
    Test,         // items[0] is [not] name(args); negate
    Unary,        // op items[0]: "not", "-", "+"
    Binary,       // items[0] op items[1]: or and == != < > <= >= in notin + - * / // % ** ~
    Conditional,  // items[1] if items[0] else items[2] (items[2] may be null)
  };
  Kind kind;
  int line = 0;
  Value value;
  std::string name;  // name, attribute, filter, test or operator
  bool negate = false;
  std::vector<ExprPtr> items;
  std::vector<ExprPtr> args;                                  // call / filter / test positional arguments
  std::vector<std::pair<std::string, ExprPtr>> kwargs;        // and keyword ones
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

struct Node {
  enum class Kind {
    Text,      // text
    Output,    // {{ expr }}
    If,        // conditions[i] -> bodies[i]; else_body
    For,       // for targets in expr [if cond]: body; else_body
    Set,       // targets (names, or ns.attr as target_attr) = expr; or a block set capturing body
    Macro,     // name(params = defaults): body
    Break,
    Continue,
    Generation,  // {% generation %}: HF's assistant-mask marker; its body renders as it is
  };
  Kind kind;
  int line = 0;
  std::string text;
  ExprPtr expr, cond;
  std::vector<ExprPtr> conditions;
  std::vector<Body> bodies;
  Body body, else_body;
  std::vector<std::string> targets;
  std::string target_attr;  // set ns.attr = ...: targets[0] is ns
  std::string name;
  std::vector<std::pair<std::string, ExprPtr>> params;  // macro parameters and their defaults (may be null)
};

// Parses a template into its body; InputError "chat template line N: ..." on a syntax error or an
// unsupported tag.
Body parse_template(const std::string& source);

}  // namespace lf::jinja
