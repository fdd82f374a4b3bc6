// The tokenizer.json components around the model: normalizers, pre-tokenizers, post-processors and
// decoders, parsed into plain step lists (Sequence flattened). Parsing throws lf::InputError naming
// any component or option it does not support, so nothing tokenizes differently in silence.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tokenizer/piece.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode_normalize.h"

namespace lf::tok {

struct NormalizerStep {
  enum class Kind { kPrepend, kReplace, kUnicode } kind;
  std::string pattern;                 // Replace: the literal, when `regex` is null
  std::shared_ptr<const Regex> regex;  // Replace with a Regex pattern
  std::string content;                 // Prepend: the prefix; Replace: the replacement
  NormalForm form = NormalForm::kNFC;  // Unicode: NFC, NFD, NFKC or NFKD
};

enum class PrependScheme { kAlways, kFirst, kNever };

struct PreTokenizerStep {
  enum class Kind { kSplit, kByteLevel, kMetaspace, kWhitespaceSplit } kind;
  // Split (also Digits and Punctuation, which are splits on a char class)
  std::shared_ptr<const Regex> regex;
  std::string literal;  // a String pattern, matched without a regex
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  // ByteLevel
  bool add_prefix_space = false;
  bool use_regex = true;
  // Metaspace
  std::string replacement = "\xE2\x96\x81";
  PrependScheme prepend_scheme = PrependScheme::kAlways;
  bool split = true;
};

struct DecoderStep {
  enum class Kind { kByteLevel, kMetaspace, kReplace, kByteFallback, kFuse, kStrip } kind;
  std::string pattern, content;        // Replace (literal pattern), Metaspace replacement, Strip content
  std::shared_ptr<const Regex> regex;  // Replace with a Regex pattern
  PrependScheme prepend_scheme = PrependScheme::kAlways;
  size_t start = 0, stop = 0;          // Strip
};

// What the post-processor does: trim byte-level offsets (always) and add special tokens around a
// single sequence (only with add_special_tokens).
struct PostProcessor {
  bool trim_offsets = false;  // a ByteLevel/Roberta step with trim_offsets
  bool trim_add_prefix_space = false;
  std::vector<int64_t> prefix_ids, suffix_ids;
};

std::vector<NormalizerStep> parse_normalizer(const nlohmann::json& j, const std::string& file);
std::vector<PreTokenizerStep> parse_pre_tokenizer(const nlohmann::json& j, const std::string& file);
std::vector<DecoderStep> parse_decoder(const nlohmann::json& j, const std::string& file);
PostProcessor parse_post_processor(const nlohmann::json& j, const std::string& file);

void apply_normalizers(const std::vector<NormalizerStep>& steps, Piece& piece);
// Pre-tokenizes one normalized segment into words (pieces), in order.
void apply_pre_tokenizers(const std::vector<PreTokenizerStep>& steps, Piece segment, std::vector<Piece>& words);
// tokenizers' Decoder::decode over token strings; with no steps the tokens are joined by spaces.
std::string apply_decoders(const std::vector<DecoderStep>& steps, std::vector<std::string> tokens);
// Offset trimming of the ByteLevel post-processor (leading/trailing 'Ġ' or whitespace).
void trim_byte_level_offsets(const std::vector<std::string>& tokens, std::vector<std::pair<int64_t, int64_t>>& offsets,
                             bool add_prefix_space);

}  // namespace lf::tok
