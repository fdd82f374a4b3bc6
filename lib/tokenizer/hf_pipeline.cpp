#include "tokenizer/hf_pipeline.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <functional>

#include "core/error.h"
#include "tokenizer/text_util.h"

namespace lf::tok {

using nlohmann::json;

namespace {

[[noreturn]] void unsupported(const std::string& file, const std::string& what) {
  throw InputError(file + ": " + what + " is not supported by logitfuse's tokenizer.json reader",
                   "supported: BPE models with the normalizers, pre-tokenizers, post-processors and decoders of "
                   "GPT-2, Llama, Mistral, Qwen and Phi tokenizers");
}

std::string type_of(const json& j, const std::string& file, const char* where) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    throw InputError(file + ": " + where + " has no \"type\"");
  return j["type"].get<std::string>();
}

template <typename T>
T get_or(const json& j, const char* key, T fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  return j[key].get<T>();
}

// A {"String": s} or {"Regex": r} pattern: the literal, or a compiled regex.
void parse_pattern(const json& j, const std::string& file, const std::string& where, std::string& literal,
                   std::shared_ptr<const Regex>& regex) {
  if (j.is_object() && j.contains("String")) {
    literal = j["String"].get<std::string>();
  } else if (j.is_object() && j.contains("Regex")) {
    try {
      regex = std::make_shared<const Regex>(j["Regex"].get<std::string>());
    } catch (const std::invalid_argument& e) {
      throw InputError(file + ": " + where + ": " + e.what());
    }
  } else {
    throw InputError(file + ": " + where + " has a pattern that is neither {\"String\"} nor {\"Regex\"}");
  }
}

PrependScheme parse_prepend_scheme(const json& j, const std::string& file) {
  if (j.contains("prepend_scheme")) {
    const auto s = j["prepend_scheme"].get<std::string>();
    if (s == "always") return PrependScheme::kAlways;
    if (s == "first") return PrependScheme::kFirst;
    if (s == "never") return PrependScheme::kNever;
    unsupported(file, "Metaspace prepend_scheme \"" + s + "\"");
  }
  return get_or(j, "add_prefix_space", true) ? PrependScheme::kAlways : PrependScheme::kNever;  // older files
}

std::shared_ptr<const Regex> shared_regex(const char* pattern) { return std::make_shared<const Regex>(pattern); }

// GPT-2's pre-tokenization pattern, used by ByteLevel with use_regex.
const std::shared_ptr<const Regex>& gpt2_regex() {
  static const auto re = shared_regex(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)");
  return re;
}

void parse_pre_tokenizer_into(const json& j, const std::string& file, std::vector<PreTokenizerStep>& steps) {
  if (j.is_null()) return;
  const std::string type = type_of(j, file, "pre_tokenizer");
  PreTokenizerStep step;
  if (type == "Sequence") {
    for (const auto& sub : j.at("pretokenizers")) parse_pre_tokenizer_into(sub, file, steps);
    return;
  } else if (type == "Split") {
    step.kind = PreTokenizerStep::Kind::kSplit;
    parse_pattern(j.at("pattern"), file, "Split pre-tokenizer", step.literal, step.regex);
    const auto behavior = j.at("behavior").get<std::string>();
    if (behavior == "Removed") step.behavior = SplitBehavior::kRemoved;
    else if (behavior == "Isolated") step.behavior = SplitBehavior::kIsolated;
    else if (behavior == "MergedWithPrevious") step.behavior = SplitBehavior::kMergedWithPrevious;
    else if (behavior == "MergedWithNext") step.behavior = SplitBehavior::kMergedWithNext;
    else if (behavior == "Contiguous") step.behavior = SplitBehavior::kContiguous;
    else unsupported(file, "Split behavior \"" + behavior + "\"");
    step.invert = get_or(j, "invert", false);
  } else if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::kByteLevel;
    step.add_prefix_space = get_or(j, "add_prefix_space", true);
    step.use_regex = get_or(j, "use_regex", true);
  } else if (type == "Metaspace") {
    step.kind = PreTokenizerStep::Kind::kMetaspace;
    step.replacement = get_or<std::string>(j, "replacement", "\xE2\x96\x81");
    step.prepend_scheme = parse_prepend_scheme(j, file);
    step.split = get_or(j, "split", true);
  } else if (type == "Digits") {
    // char::is_numeric (Unicode N), each digit alone or runs of them.
    step.kind = PreTokenizerStep::Kind::kSplit;
    step.regex = shared_regex(R"(\p{N})");
    step.behavior = get_or(j, "individual_digits", false) ? SplitBehavior::kIsolated : SplitBehavior::kContiguous;
  } else if (type == "Punctuation") {
    // is_ascii_punctuation || Unicode P, one char per match.
    step.kind = PreTokenizerStep::Kind::kSplit;
    step.regex = shared_regex(R"([\p{P}!-/:-@\[-`{-~])");
    const auto behavior = get_or<std::string>(j, "behavior", "Isolated");
    if (behavior == "Isolated") step.behavior = SplitBehavior::kIsolated;
    else if (behavior == "Removed") step.behavior = SplitBehavior::kRemoved;
    else if (behavior == "MergedWithPrevious") step.behavior = SplitBehavior::kMergedWithPrevious;
    else if (behavior == "MergedWithNext") step.behavior = SplitBehavior::kMergedWithNext;
    else step.behavior = SplitBehavior::kContiguous;
  } else if (type == "WhitespaceSplit") {
    step.kind = PreTokenizerStep::Kind::kWhitespaceSplit;
  } else if (type == "Whitespace") {
    // Rust regex \w+|[^\w\s]+, matches kept and the rest removed; \w and \s spelled as Rust defines them.
    step.kind = PreTokenizerStep::Kind::kSplit;
    step.regex = shared_regex(
        R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}]+|[^\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}\p{White_Space}]+)");
    step.behavior = SplitBehavior::kRemoved;
    step.invert = true;
  } else {
    unsupported(file, "pre-tokenizer " + type);
  }
  steps.push_back(std::move(step));
}

void parse_decoder_into(const json& j, const std::string& file, std::vector<DecoderStep>& steps) {
  if (j.is_null()) return;
  const std::string type = type_of(j, file, "decoder");
  DecoderStep step;
  if (type == "Sequence") {
    for (const auto& sub : j.at("decoders")) parse_decoder_into(sub, file, steps);
    return;
  } else if (type == "ByteLevel") {
    step.kind = DecoderStep::Kind::kByteLevel;
  } else if (type == "Metaspace") {
    step.kind = DecoderStep::Kind::kMetaspace;
    step.content = get_or<std::string>(j, "replacement", "\xE2\x96\x81");
    step.prepend_scheme = parse_prepend_scheme(j, file);
  } else if (type == "Replace") {
    step.kind = DecoderStep::Kind::kReplace;
    parse_pattern(j.at("pattern"), file, "Replace decoder", step.pattern, step.regex);
    step.content = j.at("content").get<std::string>();
  } else if (type == "ByteFallback") {
    step.kind = DecoderStep::Kind::kByteFallback;
  } else if (type == "Fuse") {
    step.kind = DecoderStep::Kind::kFuse;
  } else if (type == "Strip") {
    step.kind = DecoderStep::Kind::kStrip;
    step.content = j.at("content").get<std::string>();
    step.start = j.at("start").get<size_t>();
    step.stop = j.at("stop").get<size_t>();
  } else {
    unsupported(file, "decoder " + type);
  }
  steps.push_back(std::move(step));
}

void parse_post_processor_into(const json& j, const std::string& file, PostProcessor& post) {
  if (j.is_null()) return;
  const std::string type = type_of(j, file, "post_processor");
  if (type == "Sequence") {
    for (const auto& sub : j.at("processors")) parse_post_processor_into(sub, file, post);
  } else if (type == "ByteLevel") {
    if (get_or(j, "trim_offsets", true)) {
      post.trim_offsets = true;
      post.trim_add_prefix_space = get_or(j, "add_prefix_space", true);
    }
  } else if (type == "TemplateProcessing") {
    if (!post.prefix_ids.empty() || !post.suffix_ids.empty()) unsupported(file, "more than one special-token post-processor");
    const auto& specials = j.at("special_tokens");
    bool seen_sequence = false;
    for (const auto& item : j.at("single")) {
      if (item.contains("Sequence")) {
        if (seen_sequence || item["Sequence"].at("id").get<std::string>() != "A")
          unsupported(file, "TemplateProcessing single template other than specials around $A");
        seen_sequence = true;
      } else if (item.contains("SpecialToken")) {
        const auto name = item["SpecialToken"].at("id").get<std::string>();
        if (!specials.contains(name)) throw InputError(file + ": TemplateProcessing names undefined special token " + name);
        auto& ids = seen_sequence ? post.suffix_ids : post.prefix_ids;
        for (const auto& id : specials[name].at("ids")) ids.push_back(id.get<int64_t>());
      } else {
        unsupported(file, "TemplateProcessing item " + item.dump());
      }
    }
    if (!seen_sequence) unsupported(file, "TemplateProcessing single template without $A");
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    if (!post.prefix_ids.empty() || !post.suffix_ids.empty()) unsupported(file, "more than one special-token post-processor");
    post.prefix_ids = {j.at("cls").at(1).get<int64_t>()};
    post.suffix_ids = {j.at("sep").at(1).get<int64_t>()};
    if (type == "RobertaProcessing" && get_or(j, "trim_offsets", true)) {
      post.trim_offsets = true;
      post.trim_add_prefix_space = get_or(j, "add_prefix_space", true);
    }
  } else {
    unsupported(file, "post-processor " + type);
  }
}

void byte_level_map_piece(Piece& p) {
  const auto& map = byte_level_map();
  Piece out;
  out.text.reserve(p.text.size() * 2);
  out.align.reserve(p.text.size() * 2);
  for (size_t i = 0; i < p.text.size(); ++i) {
    const std::string& mapped = map.byte_to_utf8[static_cast<unsigned char>(p.text[i])];
    out.text += mapped;
    out.align.insert(out.align.end(), mapped.size(), p.align[i]);
  }
  p = std::move(out);
}

void literal_matches(const std::string& text, const std::string& literal, std::vector<std::pair<size_t, size_t>>& out) {
  out.clear();
  if (literal.empty()) return;
  for (size_t at = text.find(literal); at != std::string::npos; at = text.find(literal, at + literal.size()))
    out.emplace_back(at, at + literal.size());
}

}  // namespace

std::vector<NormalizerStep> parse_normalizer(const json& j, const std::string& file) {
  std::vector<NormalizerStep> steps;
  // Sequences flattened depth-first, in order.
  std::function<void(const json&)> visit = [&](const json& n) {
    if (n.is_null()) return;
    const std::string type = type_of(n, file, "normalizer");
    if (type == "Sequence") {
      for (const auto& sub : n.at("normalizers")) visit(sub);
    } else if (type == "Prepend") {
      steps.push_back({NormalizerStep::Kind::kPrepend, "", nullptr, n.at("prepend").get<std::string>()});
    } else if (type == "Replace") {
      NormalizerStep step{NormalizerStep::Kind::kReplace, "", nullptr, n.at("content").get<std::string>()};
      parse_pattern(n.at("pattern"), file, "Replace normalizer", step.pattern, step.regex);
      steps.push_back(std::move(step));
    } else if (NormalForm form; parse_normal_form(type, form)) {
      NormalizerStep step{NormalizerStep::Kind::kUnicode, "", nullptr, ""};
      step.form = form;
      steps.push_back(std::move(step));
    } else {
      unsupported(file, "normalizer " + type);
    }
  };
  visit(j);
  return steps;
}

std::vector<PreTokenizerStep> parse_pre_tokenizer(const json& j, const std::string& file) {
  std::vector<PreTokenizerStep> steps;
  parse_pre_tokenizer_into(j, file, steps);
  return steps;
}

std::vector<DecoderStep> parse_decoder(const json& j, const std::string& file) {
  std::vector<DecoderStep> steps;
  parse_decoder_into(j, file, steps);
  return steps;
}

PostProcessor parse_post_processor(const json& j, const std::string& file) {
  PostProcessor post;
  parse_post_processor_into(j, file, post);
  return post;
}

void apply_normalizers(const std::vector<NormalizerStep>& steps, Piece& piece) {
  thread_local std::vector<std::pair<size_t, size_t>> matches;
  for (const auto& step : steps) {
    if (step.kind == NormalizerStep::Kind::kPrepend) {
      prepend(piece, step.content);
    } else if (step.kind == NormalizerStep::Kind::kUnicode) {
      unicode_normalize(piece, step.form);
    } else if (step.regex) {
      step.regex->find_all(piece.text, matches);
      replace_ranges(piece, matches, step.content);
    } else {
      replace_literal(piece, step.pattern, step.content);
    }
  }
}

void apply_pre_tokenizers(const std::vector<PreTokenizerStep>& steps, Piece segment, std::vector<Piece>& words) {
  std::vector<Piece> current, next;
  current.push_back(std::move(segment));
  std::vector<std::pair<size_t, size_t>> matches;
  for (const auto& step : steps) {
    next.clear();
    for (Piece& p : current) {
      switch (step.kind) {
        case PreTokenizerStep::Kind::kSplit:
          if (step.regex) step.regex->find_all(p.text, matches);
          else literal_matches(p.text, step.literal, matches);
          split_piece(p, matches, step.behavior, step.invert, next);
          break;
        case PreTokenizerStep::Kind::kByteLevel: {
          if (step.add_prefix_space && p.text[0] != ' ') prepend(p, " ");
          const size_t first = next.size();
          if (step.use_regex) {
            gpt2_regex()->find_all(p.text, matches);
            split_piece(p, matches, SplitBehavior::kIsolated, false, next);
          } else {
            next.push_back(std::move(p));
          }
          for (size_t k = first; k < next.size(); ++k) byte_level_map_piece(next[k]);
          break;
        }
        case PreTokenizerStep::Kind::kMetaspace: {
          replace_literal(p, " ", step.replacement);
          const bool starts = p.text.compare(0, step.replacement.size(), step.replacement) == 0;
          if (!starts && (step.prepend_scheme == PrependScheme::kAlways ||
                          (step.prepend_scheme == PrependScheme::kFirst && p.align[0].first == 0)))
            prepend(p, step.replacement);
          if (step.split) {
            literal_matches(p.text, step.replacement, matches);
            split_piece(p, matches, SplitBehavior::kMergedWithNext, false, next);
          } else {
            next.push_back(std::move(p));
          }
          break;
        }
        case PreTokenizerStep::Kind::kWhitespaceSplit: {
          matches.clear();
          size_t i = 0;
          while (i < p.text.size()) {
            const size_t b = i;
            if (is_unicode_whitespace(utf8_next(p.text, i))) matches.emplace_back(b, i);
          }
          split_piece(p, matches, SplitBehavior::kRemoved, false, next);
          break;
        }
      }
    }
    std::swap(current, next);
  }
  for (Piece& p : current)
    if (!p.empty()) words.push_back(std::move(p));
}

namespace {

// ByteFallback: runs of <0xNN> pieces become their bytes when those are valid UTF-8, else one U+FFFD
// per byte; other tokens pass.
void decode_byte_fallback(std::vector<std::string>& tokens) {
  std::vector<std::string> out;
  std::string pending;
  auto flush = [&] {
    if (pending.empty()) return;
    if (utf8_invalid_at(pending) == std::string::npos) out.push_back(pending);
    else out.insert(out.end(), pending.size(), "\xEF\xBF\xBD");  // one U+FFFD per byte
    pending.clear();
  };
  for (auto& t : tokens) {
    const int byte = parse_byte_piece(t);
    if (byte >= 0) {
      pending += static_cast<char>(byte);
    } else {
      flush();
      out.push_back(std::move(t));
    }
  }
  flush();
  tokens = std::move(out);
}

// Strip, with chars as tokenizers counts them: up to `start` leading and `stop` trailing `content`
// chars, then take(byte_len - cuts) chars of what is left.
void decode_strip(const DecoderStep& step, std::string& t) {
  std::vector<std::pair<size_t, size_t>> chars;  // [b, e) of each char
  for (size_t i = 0; i < t.size();) {
    const size_t b = i;
    utf8_next(t, i);
    chars.emplace_back(b, i);
  }
  auto is_content = [&](size_t k) { return t.compare(chars[k].first, chars[k].second - chars[k].first, step.content) == 0; };
  size_t start_cut = 0, stop_cut = 0;
  while (start_cut < step.start && start_cut < chars.size() && is_content(start_cut)) ++start_cut;
  while (stop_cut < step.stop && stop_cut < chars.size() && is_content(chars.size() - 1 - stop_cut)) ++stop_cut;
  const size_t take = t.size() >= start_cut + stop_cut ? t.size() - start_cut - stop_cut : 0;
  const size_t end_char = std::min(chars.size(), start_cut + take);
  t = start_cut >= end_char ? std::string() : t.substr(chars[start_cut].first, chars[end_char - 1].second - chars[start_cut].first);
}

void decode_step(const DecoderStep& step, std::vector<std::string>& tokens) {
  switch (step.kind) {
    case DecoderStep::Kind::kByteLevel: {
      std::string bytes;
      for (const auto& t : tokens)
        if (!byte_level_decode(t, bytes)) bytes += t;  // a char outside the map: the token's own bytes
      tokens.assign(1, utf8_lossy(bytes));
      break;
    }
    case DecoderStep::Kind::kMetaspace:
      for (size_t i = 0; i < tokens.size(); ++i) {
        // tokenizers drops every replacement char of the first token when a prefix was prepended.
        const bool drop = i == 0 && step.prepend_scheme != PrependScheme::kNever;
        std::string out;
        size_t at = 0;
        for (size_t hit; (hit = tokens[i].find(step.content, at)) != std::string::npos; at = hit + step.content.size()) {
          out.append(tokens[i], at, hit - at);
          if (!drop) out += ' ';
        }
        out.append(tokens[i], at, std::string::npos);
        tokens[i] = std::move(out);
      }
      break;
    case DecoderStep::Kind::kReplace:
      for (auto& t : tokens) {
        Piece p{t, std::vector<Span>(t.size())};
        if (step.regex) {
          std::vector<std::pair<size_t, size_t>> matches;
          step.regex->find_all(t, matches);
          replace_ranges(p, matches, step.content);
        } else {
          replace_literal(p, step.pattern, step.content);
        }
        t = std::move(p.text);
      }
      break;
    case DecoderStep::Kind::kByteFallback:
      decode_byte_fallback(tokens);
      break;
    case DecoderStep::Kind::kFuse: {
      std::string all;
      for (const auto& t : tokens) all += t;
      tokens.assign(1, std::move(all));
      break;
    }
    case DecoderStep::Kind::kStrip:
      for (auto& t : tokens) decode_strip(step, t);
      break;
  }
}

}  // namespace

std::string apply_decoders(const std::vector<DecoderStep>& steps, std::vector<std::string> tokens) {
  if (steps.empty()) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  for (const auto& step : steps) decode_step(step, tokens);
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

void trim_byte_level_offsets(const std::vector<std::string>& tokens, std::vector<std::pair<int64_t, int64_t>>& offsets,
                             bool add_prefix_space) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string& t = tokens[i];
    std::vector<uint32_t> cps;
    for (size_t k = 0; k < t.size();) cps.push_back(utf8_next(t, k));
    auto is_space = [](uint32_t cp) { return cp == 0x120 /* Ġ */ || is_unicode_whitespace(cp); };
    int64_t leading = 0, trailing = 0;
    while (leading < static_cast<int64_t>(cps.size()) && is_space(cps[leading])) ++leading;
    while (trailing < static_cast<int64_t>(cps.size()) && is_space(cps[cps.size() - 1 - trailing])) ++trailing;
    auto& [start, end] = offsets[i];
    if (leading > 0) {
      const bool is_first = i == 0 || start == 0;
      if (is_first && add_prefix_space && leading == 1) leading = 0;
      start = std::min(start + leading, end);
    }
    if (trailing > 0 && end >= trailing) end = std::max(end - trailing, start);
  }
}

}  // namespace lf::tok
