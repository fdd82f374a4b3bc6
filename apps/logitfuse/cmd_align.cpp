// `logitfuse align`: how a teacher's tokenization of texts lines up with a student's, one JSON line
// per text: the pairs of an alignment method, and with `teacher` distributions given, the span
// targets (the teacher's distribution over the student's next token at each student token). For
// inspecting what a teacher can carry to a student before a run, and for checking span alignment
// against a reference.
//
// Input lines: {"text": "...", "teacher": [{"ids": [...], "probs": [...]}, ...]} where teacher[j]
// is the teacher's next-token distribution (top-k or any subset) where it predicts its token j.
// Output lines: {"student_ids", "teacher_ids", "pairs": [[student token, teacher token], ...],
// "targets": [{"token": i, "ids": [...], "probs": [...]}, ...]} (probabilities normalised; token
// indices count the text's tokens from 0; a token without a target is left out).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <iostream>

#include "align/positions.h"
#include "align/span.h"
#include "align/vocab_map.h"
#include "commands.h"
#include "core/error.h"
#include "io/jsonl.h"
#include "tokenizer/tokenizer.h"

namespace lf::app {

namespace {

// The text as a response after a one-token prompt, so position k predicts content token k.
TokenizedSequence as_response(const Tokenizer& tokenizer, const std::string& text) {
  const Encoding enc = tokenizer.encode(text, false);
  TokenizedSequence s;
  s.ids.push_back(tokenizer.special_tokens().bos.value_or(0));
  s.ids.insert(s.ids.end(), enc.ids.begin(), enc.ids.end());
  s.prompt_length = 1;
  s.content_tokens = static_cast<int64_t>(enc.ids.size());
  for (const auto& [a, b] : enc.offsets) s.content_offsets.emplace_back(static_cast<int64_t>(a), static_cast<int64_t>(b));
  return s;
}

}  // namespace

void add_align(CLI::App& root) {
  struct Options {
    std::string student, teacher, input, method = "span";
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = root.add_subcommand("align", "Alignment of a teacher's tokens to a student's on texts, one JSON line each");
  cmd->add_option("--student-tokenizer", opt->student, "tokenizer.json, tokenizer.model or a model directory")->required();
  cmd->add_option("--teacher-tokenizer", opt->teacher, "tokenizer.json, tokenizer.model or a model directory")->required();
  cmd->add_option("--input", opt->input, "JSONL with a 'text' field (and optionally 'teacher' distributions)")->required();
  cmd->add_option("--method", opt->method, "offsets | exact | dtw | index | span")->capture_default_str();
  cmd->callback([opt] {
    const auto student = load_tokenizer(opt->student);
    const auto teacher = load_tokenizer(opt->teacher);
    const SpanProjector projector(*student, *teacher, build_vocab_map(*teacher, *student, "exact"));
    int64_t paired = 0, tokens = 0;
    std::ios::sync_with_stdio(false);
    for_each_jsonl_line(opt->input, [&](const nlohmann::json& j, int64_t) {
      if (!j.is_object() || !j.contains("text") || !j["text"].is_string())
        throw InputError("expected an object with a string \"text\" field");
      const std::string text = j["text"].get<std::string>();
      const TokenizedSequence s = as_response(*student, text), t = as_response(*teacher, text);
      const PositionPairs pairs = align_positions(s, t, opt->method, *student, *teacher);
      nlohmann::json out;
      out["student_ids"] = std::vector<int64_t>(s.ids.begin() + 1, s.ids.end());
      out["teacher_ids"] = std::vector<int64_t>(t.ids.begin() + 1, t.ids.end());
      out["pairs"] = nlohmann::json::array();
      for (const auto& [ps, pt] : pairs) out["pairs"].push_back({ps, pt});
      paired += static_cast<int64_t>(pairs.size());
      tokens += s.content_tokens;
      if (j.contains("teacher")) {
        if (opt->method != "span") throw InputError("\"teacher\" distributions give span targets: use --method span");
        const auto& dists = j["teacher"];
        if (!dists.is_array() || static_cast<int64_t>(dists.size()) != t.content_tokens)
          throw InputError("\"teacher\" must hold one distribution per teacher token (" + std::to_string(t.content_tokens) + ")");
        int64_t width = 1;
        for (const auto& d : dists) width = std::max<int64_t>(width, static_cast<int64_t>(d.at("ids").size()));
        std::vector<double> probs(dists.size() * width, 0.0);
        std::vector<int64_t> ids(dists.size() * width, 0);
        for (size_t r = 0; r < dists.size(); ++r) {
          const auto& d = dists[r];
          if (d.at("ids").size() != d.at("probs").size()) throw InputError("teacher[" + std::to_string(r) + "]: ids and probs differ in length");
          for (size_t i = 0; i < d["ids"].size(); ++i) {
            ids[r * width + i] = d["ids"][i].get<int64_t>();
            probs[r * width + i] = d["probs"][i].get<double>();
          }
        }
        const TeacherRows rows{probs.data(), ids.data(), static_cast<int64_t>(dists.size()), width};
        out["targets"] = nlohmann::json::array();
        for (const auto& [ps, pt] : pairs) {
          const SpanTarget target = projector.project(s, t, ps, pt, rows);
          double total = 0;
          for (double m : target.mass) total += m;
          if (target.ids.empty() || !(total > 0)) continue;
          std::vector<double> normalised;
          for (double m : target.mass) normalised.push_back(m / total);
          out["targets"].push_back({{"token", ps}, {"ids", target.ids}, {"probs", normalised}});
        }
      }
      std::cout << out.dump() << "\n";
    });
    std::cout.flush();
    std::cerr << "align (" << opt->method << "): " << paired << " of " << tokens << " student tokens paired\n";
  });
}

}  // namespace lf::app
