// The Jinja subset of lib/template/jinja.h: expressions, whitespace control with trim_blocks and
// lstrip_blocks, loops, namespaces, filters, tests, methods, and errors that name the construct.
// (tests/oracle/test_chat_templates.py compares real templates with transformers.)
#include <catch2/catch.hpp>

#include "core/error.h"
#include "test_helpers.h"
#include "template/jinja.h"

using Catch::Matchers::Contains;

namespace {

std::string render(const std::string& source, const nlohmann::json& context = nlohmann::json::object()) {
  return lf::jinja::Template(source).render(context);
}

std::string error_of(const std::string& source, const nlohmann::json& context = nlohmann::json::object()) {
  return lf::test::error_text([&] { render(source, context); });
}

}  // namespace

TEST_CASE("jinja: literals, operators and Python's str()", "[jinja]") {
  CHECK(render("{{ 1 + 2 * 3 }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ -7 % 3 }}|{{ 7 / 2 }}|{{ 2 ** 10 }}") == "7|3|-4|2|3.5|1024");
  CHECK(render("{{ 'a' ~ 1 ~ none }}|{{ 'ab' * 2 }}|{{ [1] + [2] }}|{{ 1.0 }}|{{ 1e20 }}") == "a1None|abab|[1, 2]|1.0|1e+20");
  CHECK(render("{{ true }}{{ False }}{{ none }}{{ undefined_name }}|{{ {'a': [1, 'x']} }}") == "TrueFalseNone|{'a': [1, 'x']}");
  CHECK(render(R"({{ "it's" }}|{{ 'tab\there\n' | tojson }}|{{ '\u00e9\x41' }})") == "it's|\"tab\\there\\n\"|\xc3\xa9" "A");
  CHECK(render("{{ 1 == 1.0 }}{{ 'a' < 'b' }}{{ [1, 2] == [1, 2] }}{{ 'x' in 'xyz' }}{{ 3 not in [1, 2] }}") == "TrueTrueTrueTrueTrue");
  CHECK(render("{{ 'a' if 0 else 'b' }}{{ 'c' if 1 }}{{ 'd' if 0 }}|{{ 0 or 'e' }}{{ 1 and 'f' }}{{ not [] }}") == "bc|efTrue");
  CHECK(render("{{ ('a', 'b')[1] }}{{ 'hello'[1:3] }}{{ 'hello'[::-1] }}{{ [1, 2, 3][-1] }}{{ [1, 2, 3][:-1] }}") ==
        "belolleh3[1, 2]");
  CHECK(render("{{ 'h\xc3\xa9llo'[1] }}{{ 'h\xc3\xa9llo' | length }}") == "\xc3\xa9" "5");  // code points, as Python
}

TEST_CASE("jinja: whitespace control as transformers' environment (trim_blocks, lstrip_blocks)", "[jinja]") {
  // trim_blocks: the newline after a block tag goes; after {{ }} it stays.
  CHECK(render("{% if true %}\nA\n{% endif %}\nB{{ 'x' }}\nC") == "A\nBx\nC");
  // lstrip_blocks: indentation before a block tag goes; before {{ }} it stays.
  CHECK(render("<\n    {% if true %}\n    A\n    {% endif %}\n>") == "<\n    A\n>");
  CHECK(render("  {{ 'v' }}") == "  v");
  // '-' strips all whitespace on its side, '+' keeps what the rules would strip.
  CHECK(render("a  \n  {{- 'b' -}}  \n  c") == "abc");
  CHECK(render("a\n  {%+ if true %}b{% endif %}\nc") == "a\n  bc");
  CHECK(render("x {# note #}\ny\n  {# indented #}\nz") == "x y\nz");
  // keep_trailing_newline=False: one final newline goes.
  CHECK(render("a\n\n") == "a\n");
}

TEST_CASE("jinja: for loops, loop variables, else, unpacking, filters and loop controls", "[jinja]") {
  const nlohmann::json ctx = {{"xs", {"a", "b", "c"}}, {"d", {{"k1", 1}, {"k2", 2}}}};
  CHECK(render("{% for x in xs %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ x }}{% if loop.first %}F{% endif %}"
               "{% if loop.last %}L{{ loop.length }}{% endif %};{% endfor %}", ctx) == "103aF;212b;321cL3;");
  CHECK(render("{% for x in [] %}x{% else %}empty{% endfor %}") == "empty");
  CHECK(render("{% for k, v in d.items() %}{{ k }}={{ v }},{% endfor %}|{% for k, v in d | items %}{{ k }}{% endfor %}", ctx) ==
        "k1=1,k2=2,|k1k2");
  CHECK(render("{% for x in xs if x != 'b' %}{{ x }}{{ loop.index }}{% endfor %}", ctx) == "a1c2");
  CHECK(render("{% for x in xs %}{% if x == 'b' %}{% continue %}{% endif %}{% if x == 'c' %}{% break %}{% endif %}{{ x }}"
               "{% endfor %}", ctx) == "a");
  CHECK(render("{% for x in xs[::-1] %}{{ x }}{% endfor %}{% for i in range(3) %}{{ i }}{% endfor %}", ctx) == "cba012");
  // A set in a loop does not outlive it; a namespace carries state out.
  CHECK(render("{% set n = 0 %}{% set ns = namespace(n=0) %}{% for x in xs %}{% set n = n + 1 %}{% set ns.n = ns.n + 1 %}"
               "{% endfor %}{{ n }}{{ ns.n }}", ctx) == "03");
}

TEST_CASE("jinja: filters, tests and methods that chat templates use", "[jinja]") {
  const nlohmann::json ctx = {{"ms", {{{"role", "user"}, {"content", " hi "}}, {{"role", "assistant"}, {"content", "yo"}}}}};
  CHECK(render("{{ ms | selectattr('role', 'equalto', 'user') | list | length }}{{ ms | map(attribute='role') | join(',') }}",
               ctx) == "1user,assistant");
  CHECK(render("[{{ ms[0].content | trim }}][{{ ms[0]['content'].strip() }}][{{ ' x\n'.rstrip() }}][{{ 'xxhixx'.strip('x') }}]",
               ctx) == "[hi][hi][ x][hi]");
  CHECK(render("{{ 'a,b,,c'.split(',') }}{{ ' a  b '.split() }}{{ 'a</think>b'.split('</think>')[-1] }}") ==
        "['a', 'b', '', 'c']['a', 'b']b");
  CHECK(render("{{ 'Hello'.startswith('He') }}{{ 'Hello'.endswith(('x', 'lo')) }}{{ 'hello world' | title }}"
               "{{ 'ab' | upper }}{{ 'AB'.lower() }}{{ 'aXa'.replace('a', 'b') }}") == "TrueTrueHello WorldABabbXb");
  CHECK(render("{{ x | default('d') }}{{ '' | default('e', true) }}{{ [3, 1, 2] | sort | first }}{{ [1, 1, 2] | unique | list }}") ==
        "de1[1, 2]");
  CHECK(render("{{ {'b': 1, 'a': [1, 2.5, none, true]} | tojson }}") == R"({"b": 1, "a": [1, 2.5, null, true]})");
  CHECK(render("{{ {'a': {'b': 'é'}} | tojson(indent=2) }}") == "{\n  \"a\": {\n    \"b\": \"\xc3\xa9\"\n  }\n}");
  CHECK(render("{{ 'a\nb' | indent(2) }}|{{ 'a\nb' | indent(2, first=true) }}") == "a\n  b|  a\n  b");
  CHECK(render("{{ x is defined }}{{ none is none }}{{ 'a' is string }}{{ {} is mapping }}{{ [1] is iterable }}"
               "{{ 3 is odd }}{{ 4 is divisibleby 2 }}{{ false is false }}{{ 1 is not number }}") ==
        "FalseTrueTrueTrueTrueTrueTrueTrueFalse");
  CHECK(render("{{ ms[0].get('role') }}{{ ms[0].get('nope', 'dflt') }}{{ ms[0].nope is defined }}{{ 'role' in ms[0] }}", ctx) ==
        "userdfltFalseTrue");
  CHECK(render("{% macro greet(name, p='Hi') %}{{ p }} {{ name }}{% endmacro %}{{ greet('A') }}/{{ greet('B', p='Yo') }}") ==
        "Hi A/Yo B");
  CHECK(render("{% set s %}in{{ 1 }}{% endset %}[{{ s }}]{% generation %}gen{% endgeneration %}") == "[in1]gen");
}

TEST_CASE("jinja: errors name the construct and the line; raise_exception exits 2", "[jinja]") {
  CHECK_THAT(error_of("a\n{{ x | xyz }}"), Contains("chat template line 2: filter 'xyz' is not supported"));
  CHECK_THAT(error_of("{% include 'x' %}"), Contains("tag 'include' is not supported"));
  CHECK_THAT(error_of("{{ x is prime }}"), Contains("test 'prime' is not supported"));
  CHECK_THAT(error_of("{{ 'a'.zfill(3) }}"), Contains("string method 'zfill' is not supported"));
  CHECK_THAT(error_of("{{ [].append(1) }}"), Contains("list method 'append' is not supported"));
  CHECK_THAT(error_of("{{ cycler(1) }}"), Contains("function 'cycler' is not supported"));
  CHECK_THAT(error_of("{% if x %}"), Contains("missing {% endif %}"));
  CHECK_THAT(error_of("{{ 'a' + x }}"), Contains("'x' is undefined"));
  CHECK_THAT(error_of("{{ x.y }}"), Contains("'x' is undefined"));
  CHECK_THAT(error_of("{{ 'a' + 1 }}"), Contains("unsupported operand type(s) for +: 'str' and 'int'"));
  CHECK_THAT(error_of("{{ raise_exception('Roles must alternate') }}"), Contains("Roles must alternate"));
  // Found by fuzz_chat_template: number literals past 64 bits (Python: unbounded ints, inf floats).
  CHECK_THAT(error_of("\n{{ 99999999999999999999 }}"), Contains("chat template line 2: integer literal 99999999999999999999 does not fit"));
  CHECK(render("{{ 1e999 }}") == "inf");
  // Python would make a big int here; ours are 64-bit, so the filter's default comes back (no UB).
  CHECK(render("{{ 1e999 | int }}|{{ '1e300' | int(7) }}") == "0|7");
  try {
    render("{{ raise_exception('no') }}");
    FAIL("expected an error");
  } catch (const lf::Error& e) {
    CHECK(e.exit_code() == lf::kExitInput);
  }
}
