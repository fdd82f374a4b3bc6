#include "template/jinja_lex.h"

#include <charconv>
#include <cstdlib>
#include <cctype>

#include "template/jinja_builtins.h"

namespace lf::jinja {

namespace {

bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string normalize_source(const std::string& source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();  // keep_trailing_newline=False
  return out;
}

// Python's unicode-escape decoding of a string literal's body, as jinja2's lexer applies it.
std::string unescape(const std::string& body, int line) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] != '\\' || i + 1 == body.size()) {
      out += body[i];
      continue;
    }
    const char c = body[++i];
    auto hex = [&](size_t n) {
      const std::string digits = body.substr(i + 1, n);
      if (digits.size() != n || digits.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
        fail(line, "truncated \\x/\\u escape in a string");
      i += n;
      out += utf8_encode(std::u32string(1, static_cast<char32_t>(std::stoul(digits, nullptr, 16))));
    };
    switch (c) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'v': out += '\v'; break;
      case '\n': break;  // line continuation
      case 'x': hex(2); break;
      case 'u': hex(4); break;
      case 'U': hex(8); break;
      default:
        if (c >= '0' && c <= '7') {
          int v = c - '0', n = 1;
          while (n < 3 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7') v = v * 8 + (body[++i] - '0'), ++n;
          out += utf8_encode(std::u32string(1, static_cast<char32_t>(v)));
        } else {
          out += '\\';
          out += c;
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(const std::string& source) : src_(normalize_source(source)) {}

  std::vector<Token> run() {
    bool line_starting = true;
    while (pos_ < src_.size()) {
      size_t open = pos_;
      while ((open = src_.find('{', open)) != std::string::npos) {
        if (open + 1 < src_.size() && (src_[open + 1] == '{' || src_[open + 1] == '%' || src_[open + 1] == '#')) break;
        ++open;
      }
      std::string text = src_.substr(pos_, open == std::string::npos ? std::string::npos : open - pos_);
      const int text_line = line_;
      count_lines(text);
      if (open == std::string::npos) {
        emit_text(text, text_line);
        break;
      }
      const char kind = src_[open + 1];
      const char sign = open + 2 < src_.size() ? src_[open + 2] : '\0';
      if (sign == '-') {
        while (!text.empty() && is_ws(text.back())) text.pop_back();
      } else if (sign != '+' && kind != '{') {  // lstrip_blocks
        const size_t l_pos = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
        if ((l_pos > 0 || line_starting) && l_pos < text.size()) {
          bool blank = true;
          for (size_t k = l_pos; k < text.size(); ++k) blank = blank && is_ws(text[k]);
          if (blank) text.erase(l_pos);
        }
      }
      emit_text(text, text_line);
      pos_ = open + 2 + ((sign == '-' || sign == '+') ? 1 : 0);
      char close_sign;
      if (kind == '#') {
        const size_t end = src_.find("#}", pos_);
        if (end == std::string::npos) fail(line_, "unclosed comment {# ... #}");
        count_lines(src_.substr(pos_, end - pos_));
        close_sign = end > pos_ && (src_[end - 1] == '-' || src_[end - 1] == '+') ? src_[end - 1] : '\0';
        pos_ = end + 2;
      } else {
        tokens_.push_back({kind == '{' ? Token::Kind::VarBegin : Token::Kind::BlockBegin, "", line_, {}});
        close_sign = lex_tag(kind == '{' ? '}' : '%');
      }
      if (close_sign == '-') {
        while (pos_ < src_.size() && is_ws(src_[pos_])) count_lines(std::string(1, src_[pos_++]));
      } else if (kind != '{' && close_sign != '+' && pos_ < src_.size() && src_[pos_] == '\n') {  // trim_blocks
        ++pos_;
        ++line_;
      }
      line_starting = pos_ > 0 && src_[pos_ - 1] == '\n';
    }
    tokens_.push_back({Token::Kind::End, "", line_, {}});
    return std::move(tokens_);
  }

 private:
  void count_lines(const std::string& s) {
    for (char c : s) line_ += c == '\n';
  }
  void emit_text(const std::string& text, int line) {
    if (!text.empty()) tokens_.push_back({Token::Kind::Text, text, line, {}});
  }

  // Tokens of one {{ }} or {% %} tag up to its closer (`end` + '}'); returns the closer's sign.
  char lex_tag(char end) {
    int depth = 0;
    const int start_line = line_;
    while (true) {
      while (pos_ < src_.size() && is_ws(src_[pos_])) line_ += src_[pos_++] == '\n';
      if (pos_ >= src_.size()) fail(start_line, end == '}' ? "unclosed {{ ... }}" : "unclosed {% ... %}");
      const char c = src_[pos_];
      if (depth == 0) {
        for (const char sign : {'-', '+', '\0'}) {
          const std::string closer = (sign ? std::string(1, sign) : std::string()) + end + "}";
          if (src_.compare(pos_, closer.size(), closer) == 0 && (sign != '+' || end == '%')) {
            pos_ += closer.size();
            tokens_.push_back({end == '}' ? Token::Kind::VarEnd : Token::Kind::BlockEnd, "", line_, {}});
            return sign;
          }
        }
      }
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t e = pos_;
        while (e < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) ++e;
        tokens_.push_back({Token::Kind::Name, src_.substr(pos_, e - pos_), line_, {}});
        pos_ = e;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        lex_number();
      } else if (c == '\'' || c == '"') {
        size_t e = pos_ + 1;
        while (e < src_.size() && src_[e] != c) e += src_[e] == '\\' ? 2 : 1;
        if (e >= src_.size()) fail(line_, "unterminated string literal");
        const std::string body = src_.substr(pos_ + 1, e - pos_ - 1);
        tokens_.push_back({Token::Kind::String, "", line_, Value(unescape(body, line_))});
        count_lines(body);
        pos_ = e + 1;
      } else {
        static const char* const ops[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">",
                                          "=", "(", ")", "[", "]", "{", "}", ".", ",", ":", "|"};
        bool matched = false;
        for (const char* op : ops) {
          const std::string o(op);
          if (src_.compare(pos_, o.size(), o) != 0) continue;
          if (o == "(" || o == "[" || o == "{") ++depth;
          if (o == ")" || o == "]" || o == "}") --depth;
          tokens_.push_back({Token::Kind::Op, o, line_, {}});
          pos_ += o.size();
          matched = true;
          break;
        }
        if (!matched) fail(line_, std::string("unexpected character '") + c + "'");
      }
    }
  }

  void lex_number() {
    size_t e = pos_;
    auto digits = [&] {
      while (e < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) ++e;
    };
    digits();
    bool is_float = false;
    if (e + 1 < src_.size() && src_[e] == '.' && std::isdigit(static_cast<unsigned char>(src_[e + 1]))) {
      is_float = true;
      ++e;
      digits();
    }
    if (e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t k = e + 1;
      if (k < src_.size() && (src_[k] == '+' || src_[k] == '-')) ++k;
      if (k < src_.size() && std::isdigit(static_cast<unsigned char>(src_[k]))) {
        is_float = true;
        e = k;
        digits();
      }
    }
    std::string text;
    for (size_t k = pos_; k < e; ++k)
      if (src_[k] != '_') text += src_[k];
    // Python reads an overflowing float literal as inf and has unbounded ints; ours are 64-bit, so a
    // larger int literal is an error naming the line (std::stoll would throw a bare out_of_range).
    Value v;
    if (is_float) {
      v = Value(std::strtod(text.c_str(), nullptr));
    } else {
      int64_t parsed = 0;
      const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), parsed);
      if (ec != std::errc() || end != text.data() + text.size())
        fail(line_, "integer literal " + text + " does not fit in 64 bits");
      v = Value(parsed);
    }
    tokens_.push_back({is_float ? Token::Kind::Float : Token::Kind::Int, text, line_, v});
    pos_ = e;
  }

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> lex_template(const std::string& source) { return Lexer(source).run(); }

}  // namespace lf::jinja
