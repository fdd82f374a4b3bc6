// The Jinja engine's lexer (internal to lib/template/jinja*.cpp): a template's text and tags as
// tokens, with the whitespace rules of the environment transformers renders chat templates in:
// trim_blocks=True (a block or comment tag eats the newline after it), lstrip_blocks=True (spaces and
// tabs before a block or comment tag at the start of a line go), `-` on a tag strips all whitespace
// on that side, `+` turns the two rules off for that tag, and keep_trailing_newline=False (one
// newline at the end of the template goes). Comments are dropped; string literals are unescaped.
#pragma once

#include <string>
#include <vector>

#include "template/jinja_value.h"

namespace lf::jinja {

struct Token {
  enum class Kind { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, End };
  Kind kind;
  std::string text;
  int line;
  Value value;  // of a String, Int or Float
};

// InputError "chat template line N: ..." on an unclosed tag, string or comment.
std::vector<Token> lex_template(const std::string& source);

}  // namespace lf::jinja
