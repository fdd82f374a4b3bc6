#include <catch2/catch.hpp>

#include "core/strings.h"

TEST_CASE("strings: edit distance and suggestions", "[strings]") {
  CHECK(lf::edit_distance("kitten", "sitting") == 3);
  CHECK(lf::edit_distance("", "abc") == 3);
  CHECK(lf::closest_match("grad_acum", {"grad_accum", "epochs", "lr"}) == "grad_accum");
  CHECK(lf::closest_match("zzzzzz", {"grad_accum", "epochs", "lr"}).empty());
  CHECK(lf::split("a.b..c", '.') == std::vector<std::string>{"a", "b", "", "c"});
  CHECK(lf::format_bytes(1536) == "1.50 KiB");
}
