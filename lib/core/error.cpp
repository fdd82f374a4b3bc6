#include "core/error.h"

namespace lf {

std::string Error::one_line() const {
  std::string out = what();
  if (!hint_.empty()) out += " (hint: " + hint_ + ")";
  for (char& c : out)
    if (c == '\n' || c == '\r') c = ' ';
  return out;
}

}  // namespace lf
