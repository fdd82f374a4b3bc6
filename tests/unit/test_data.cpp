#include <catch2/catch.hpp>

#include <set>

#include "core/error.h"
#include "data/batch.h"
#include "data/examples.h"
#include "data/sampler.h"
#include "data/sequence.h"
#include "fake_tokenizer.h"
#include "test_helpers.h"
#include "tokenizer/chat_template.h"

using Catch::Matchers::Contains;

TEST_CASE("data: JSONL examples in both shapes and bad lines", "[data]") {
  lf::test::TempDir dir;
  const auto good = dir.file("good.jsonl",
                             "{\"prompt\": \"2+2?\", \"response\": \"4\"}\n\n"
                             "{\"messages\": [{\"role\": \"system\", \"content\": \"be brief\"}, {\"role\": \"user\", "
                             "\"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}]}\n");
  auto set = lf::read_examples(good, false);
  REQUIRE(set.examples.size() == 2);
  CHECK(set.examples[0].messages.size() == 2);
  CHECK(set.examples[1].line == 3);
  CHECK(set.examples[1].messages[0].role == "system");

  const auto bad = dir.file("bad.jsonl",
                            "{\"prompt\": \"a\", \"response\": \"b\"}\n"
                            "not json\n"
                            "{\"prompt\": \"a\"}\n"
                            "{\"prompt\": \"a\", \"response\": \"\"}\n"
                            "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n"
                            "{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}\n");
  try {
    lf::read_examples(bad, false);
    FAIL("expected an error");
  } catch (const lf::InputError& e) {
    CHECK_THAT(e.one_line(), Contains("bad.jsonl:2: not valid JSON"));
    CHECK_THAT(e.one_line(), Contains("data.skip_invalid"));
  }
  auto skipped = lf::read_examples(bad, true);
  CHECK(skipped.examples.size() == 1);
  CHECK(skipped.skipped == 5);
  for (const char* line : {"{\"prompt\": \"a\"}", "{\"prompt\": \"a\", \"response\": \"\"}",
                           "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}"})
    CHECK_THROWS_AS(lf::parse_example(std::string(line)), lf::InputError);
}

TEST_CASE("data: chat templates render prompt and response", "[data]") {
  std::vector<lf::Message> chat = {{"system", "S"}, {"user", "U"}, {"assistant", "A"}};
  auto chatml = lf::render_chat(lf::resolve_chat_template("chatml", ""), chat);
  CHECK(chatml.prompt == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n");
  CHECK(chatml.response == "A");
  CHECK(chatml.response_suffix == "<|im_end|>\n");
  CHECK_FALSE(chatml.bos);
  auto llama2 = lf::render_chat(lf::resolve_chat_template("llama2", ""), chat);
  CHECK(llama2.prompt == "[INST] <<SYS>>\nS\n<</SYS>>\n\nU [/INST] ");
  CHECK(llama2.bos);
  CHECK(llama2.eos);
  auto plain = lf::render_chat(lf::resolve_chat_template("plain", ""), {{"user", "2+2="}, {"assistant", "4"}});
  CHECK(plain.prompt == "2+2=");
  CHECK(plain.eos);
  // Earlier assistant turns (multi-turn data, in-context examples) end with the EOS text where the
  // template puts EOS after each assistant turn, and with its end-of-turn text in any case.
  const std::vector<lf::Message> turns = {{"user", "1+1="}, {"assistant", "2"}, {"user", "2+2="}};
  CHECK(lf::render_generation_prompt(lf::resolve_chat_template("plain", ""), turns, "</s>").prompt == "1+1=2</s>2+2=");
  CHECK(lf::render_generation_prompt(lf::resolve_chat_template("chatml", ""), turns, "</s>").prompt ==
        "<|im_start|>user\n1+1=<|im_end|>\n<|im_start|>assistant\n2<|im_end|>\n<|im_start|>user\n2+2=<|im_end|>\n"
        "<|im_start|>assistant\n");
  CHECK_THAT(lf::test::error_text([] { lf::resolve_chat_template("chatm", ""); }), Contains("did you mean 'chatml'"));
  lf::test::TempDir dir;
  dir.file("tokenizer_config.json", R"({"bos_token": "<s>"})");
  CHECK_THAT(lf::test::error_text([&] { lf::resolve_chat_template("auto", dir.path.string()); }),
             Contains("set chat_template to one of"));
}

TEST_CASE("data: chat_template auto renders the model's own Jinja template", "[data][jinja]") {
  lf::test::TempDir dir;
  // A Llama-3-like template: BOS as text, a header per turn, the content trimmed, EOS-like end of turn.
  dir.file("tokenizer_config.json", R"({"bos_token": {"content": "<B>"}, "eos_token": "<E>", "chat_template":
    "{{ bos_token }}{% for m in messages %}<h>{{ m.role }}</h>\n{{ m.content | trim }}<eot>{% endfor %}{% if add_generation_prompt %}<h>assistant</h>\n{% endif %}"})");
  const lf::ChatTemplate t = lf::resolve_chat_template("auto", dir.path.string());
  CHECK(t.name.rfind("jinja:", 0) == 0);
  CHECK(t.assistant_suffix == "<eot>");
  const std::vector<lf::Message> chat = {{"user", "U"}, {"assistant", "  A \n"}};
  const lf::RenderedChat r = lf::render_chat(t, chat);
  CHECK(r.prompt == "<B><h>user</h>\nU<eot><h>assistant</h>\n");
  CHECK(r.response == "A");  // the template trims; the response is the content as rendered
  CHECK(r.response_suffix == "<eot>");
  CHECK_FALSE(r.bos);
  CHECK_FALSE(r.eos);
  CHECK(lf::render_generation_prompt(t, {{"user", "U"}}).prompt == "<B><h>user</h>\nU<eot><h>assistant</h>\n");
  // chat_template.jinja wins over tokenizer_config.json, as in transformers.
  dir.file("chat_template.jinja",
           "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]"
           "{% else %}{{ eos_token }}{% endif %}");
  const lf::RenderedChat j = lf::render_chat(lf::resolve_chat_template("auto", dir.path.string()), chat);
  CHECK(j.prompt == "[user]U[assistant]");
  CHECK(j.response == "  A \n");
  CHECK(j.response_suffix == "<E>");
  // A content that also occurs in the template's own text is located where the template puts it.
  dir.file("chat_template.jinja", "{% for m in messages %}{% if m.role == 'assistant' %}<think></think>{% endif %}"
                                  "{{ m.content }}|{% endfor %}");
  const lf::RenderedChat h = lf::render_chat(lf::resolve_chat_template("auto", dir.path.string()), {{"user", "U"}, {"assistant", "h"}});
  CHECK(h.prompt == "U|<think></think>");
  CHECK(h.response == "h");
  CHECK(h.response_suffix == "|");
  // A template that renders the history differently once the answer is there cannot be split.
  dir.file("chat_template.jinja", "{% for m in messages %}{{ m.content }}{% endfor %}{{ eos_token }}");
  CHECK_THAT(lf::test::error_text([&] { lf::render_chat(lf::resolve_chat_template("auto", dir.path.string()), chat); }),
             Contains("is not the start of"));
  dir.file("chat_template.jinja", "{{ messages | xyz }}");
  CHECK_THAT(lf::test::error_text([&] { lf::resolve_chat_template("auto", dir.path.string()); }),
             Contains("filter 'xyz' is not supported"));
}

TEST_CASE("data: chat_template_kwargs are variables of the model's template", "[data][jinja]") {
  // Qwen3-style: a variable the caller sets (enable_thinking) changes the generation prompt and the
  // training split alike; the name (a logits cache key) changes with it; presets refuse variables.
  lf::test::TempDir dir;
  dir.file("chat_template.jinja",
           "{% for m in messages %}<{{ m.role }}>{{ m.content }}</>{% endfor %}{% if add_generation_prompt %}<assistant>"
           "{% if enable_thinking is defined and enable_thinking is false %}<think></think>{% endif %}{% endif %}");
  const lf::ChatTemplate plain = lf::resolve_chat_template("auto", dir.path.string());
  const lf::ChatTemplate off = lf::resolve_chat_template("auto", dir.path.string(), {}, {{"enable_thinking", false}});
  CHECK(lf::render_generation_prompt(plain, {{"user", "U"}}).prompt == "<user>U</><assistant>");
  CHECK(lf::render_generation_prompt(off, {{"user", "U"}}).prompt == "<user>U</><assistant><think></think>");
  CHECK(off.name != plain.name);
  CHECK_THAT(lf::test::error_text([&] { lf::resolve_chat_template("chatml", "", {}, {{"enable_thinking", false}}); }),
             Contains("has none"));
}

TEST_CASE("data: tokenized examples carry labels and offsets and truncate the prompt first", "[data]") {
  lf::test::ChunkTokenizer tok(2);
  lf::Example ex{{{"user", "abcdef"}, {"assistant", "xyz"}}, 1};
  auto t = lf::resolve_chat_template("plain", "");
  auto seq = lf::tokenize_example(ex, tok, t, {100, 50});
  // prompt "abcdef" -> 3 tokens; response "xyz" -> "xy","z" then EOS.
  CHECK(seq.prompt_length == 3);
  CHECK(seq.length() == 6);
  CHECK(seq.content_tokens == 2);
  CHECK(seq.content_offsets == std::vector<std::pair<int64_t, int64_t>>{{0, 2}, {2, 3}});
  CHECK(seq.ids.back() == 1);
  CHECK(seq.first_label_position() == 2);
  CHECK(seq.label_count() == 3);

  auto cut = lf::tokenize_example(ex, tok, t, {4, 1});
  CHECK(cut.prompt_length == 1);  // the prompt keeps its last token
  CHECK(cut.length() == 4);       // and the response all three
  auto cut2 = lf::tokenize_example(ex, tok, t, {3, 1});
  CHECK(cut2.length() == 3);  // then the response is cut at the end
  CHECK(cut2.content_tokens == 2);
  CHECK_THROWS_AS(lf::tokenize_example(ex, tok, t, {1, 1}), lf::InputError);

  auto batch = lf::collate({&seq, &cut2}, 2);
  CHECK(batch.input_ids.sizes() == at::IntArrayRef({2, 6}));
  CHECK(batch.label_tokens == 3 + 2);
  CHECK(batch.labels[0][2].item<int64_t>() == seq.ids[3]);
  CHECK(batch.labels[0][1].item<int64_t>() == lf::kIgnoreIndex);
  CHECK(batch.labels[0][5].item<int64_t>() == lf::kIgnoreIndex);
  CHECK(batch.input_ids[1][5].item<int64_t>() == 2);
}

TEST_CASE("data: sampler is deterministic and covers every example once per epoch", "[data]") {
  std::vector<int64_t> lengths;
  for (int i = 0; i < 37; ++i) lengths.push_back(5 + (i * 7) % 23);
  lf::SamplerConfig config;
  config.micro_batch_size = 4;
  config.seed = 3;
  lf::Sampler a(lengths, config), b(lengths, config);
  std::multiset<int64_t> seen;
  for (int64_t i = 0; i < a.batches_per_epoch(); ++i) {
    auto x = a.next();
    CHECK(x == b.next());
    seen.insert(x.begin(), x.end());
  }
  CHECK(seen.size() == 37);
  CHECK(std::set<int64_t>(seen.begin(), seen.end()).size() == 37);
  // A cursor restores the stream exactly.
  lf::Sampler c(lengths, config);
  for (int i = 0; i < 13; ++i) c.next();
  lf::Sampler d(lengths, config, c.cursor());
  for (int i = 0; i < 20; ++i) CHECK(c.next() == d.next());
  // Two ranks split each global micro-batch of one rank with twice the batch.
  lf::SamplerConfig r0 = config, r1 = config, whole = config;
  r0.micro_batch_size = r1.micro_batch_size = 2;
  r0.world_size = r1.world_size = 2;
  r1.rank = 1;
  lf::Sampler s0(lengths, r0), s1(lengths, r1), sw(lengths, whole);
  for (int i = 0; i < 5; ++i) {
    auto x = s0.next(), y = s1.next();
    x.insert(x.end(), y.begin(), y.end());
    CHECK(x == sw.next());
  }
}
