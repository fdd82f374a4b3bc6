#include "align/vocab_map.h"

#include <spdlog/spdlog.h>

#include <cstring>
#include <filesystem>
#include <unordered_map>

#include "core/error.h"
#include "core/hash.h"
#include "core/strings.h"
#include "io/file.h"

namespace fs = std::filesystem;

namespace lf {

namespace {

bool is_byte_token(const std::string& token) { return token.size() == 6 && starts_with(token, "<0x") && token[5] == '>'; }

}  // namespace

std::unordered_map<std::string, int64_t> bytes_index(const Tokenizer& student) {
  std::unordered_map<std::string, int64_t> index;
  std::unordered_map<std::string, bool> from_byte_token;
  for (int64_t id = 0; id < student.vocab_size(); ++id) {
    if (student.is_special(id)) continue;
    const std::string bytes = student.id_to_bytes(id);
    if (bytes.empty()) continue;
    const bool byte_token = is_byte_token(student.id_to_token(id));
    auto it = index.find(bytes);
    if (it == index.end() || (from_byte_token[bytes] && !byte_token)) {
      index[bytes] = id;
      from_byte_token[bytes] = byte_token;
    }
  }
  return index;
}

namespace {

void map_special_tokens(const Tokenizer& teacher, const Tokenizer& student, VocabMap& map) {
  const SpecialTokens& t = teacher.special_tokens();
  const SpecialTokens& s = student.special_tokens();
  auto link = [&](const std::optional<int64_t>& from, const std::optional<int64_t>& to) {
    if (from && to && *from < static_cast<int64_t>(map.to_student.size()) && map.to_student[*from] < 0) {
      map.to_student[*from] = *to;
      ++map.exact;
    }
  };
  link(t.eos, s.eos);
  link(t.bos, s.bos);
  link(t.pad, s.pad);
  link(t.unk, s.unk);
  // Other special tokens with the same text (e.g. both use <|im_end|>).
  for (int64_t id = 0; id < teacher.vocab_size(); ++id) {
    if (!teacher.is_special(id) || map.to_student[id] >= 0) continue;
    if (auto sid = student.token_to_id(teacher.id_to_token(id)); sid && student.is_special(*sid)) {
      map.to_student[id] = *sid;
      ++map.exact;
    }
  }
}

}  // namespace

VocabMap build_vocab_map(const Tokenizer& teacher, const Tokenizer& student, const std::string& method) {
  if (method != "exact" && method != "mined")
    throw InputError("alignment.vocab: unknown method '" + method + "'", "use exact or mined");
  VocabMap map;
  map.to_student.assign(teacher.vocab_size(), -1);
  const auto index = bytes_index(student);
  for (int64_t id = 0; id < teacher.vocab_size(); ++id) {
    if (teacher.is_special(id)) continue;
    auto it = index.find(teacher.id_to_bytes(id));
    if (it != index.end()) {
      map.to_student[id] = it->second;
      ++map.exact;
    }
  }
  map_special_tokens(teacher, student, map);
  if (method == "mined") {
    // FuseLLM maps the rest by minimum edit distance. Searching the whole vocabulary per token is
    // quadratic; the candidates here are the student tokens that are prefixes of the teacher
    // token's bytes, and the token with its leading space added or removed.
    for (int64_t id = 0; id < teacher.vocab_size(); ++id) {
      if (map.to_student[id] >= 0 || teacher.is_special(id)) continue;
      const std::string bytes = teacher.id_to_bytes(id);
      if (bytes.empty()) continue;
      std::vector<std::string> candidates;
      for (size_t len = bytes.size() - 1; len >= 1; --len)
        if (index.count(bytes.substr(0, len))) {
          candidates.push_back(bytes.substr(0, len));
          break;
        }
      candidates.push_back(bytes[0] == ' ' ? bytes.substr(1) : " " + bytes);
      int64_t best = -1;
      size_t best_distance = SIZE_MAX;
      for (const auto& c : candidates) {
        auto it = index.find(c);
        if (it == index.end()) continue;
        const size_t d = edit_distance(bytes, c);
        if (d < best_distance) {
          best_distance = d;
          best = it->second;
        }
      }
      if (best >= 0) {
        map.to_student[id] = best;
        ++map.mined;
      }
    }
  }
  return map;
}

VocabMap load_or_build_vocab_map(const Tokenizer& teacher, const Tokenizer& student, const std::string& method,
                                 const std::string& cache_dir) {
  if (cache_dir.empty()) return build_vocab_map(teacher, student, method);
  const uint64_t key = fnv1a64(method, hash_file(teacher.source()) * 31 + hash_file(student.source()));
  const fs::path path = fs::path(cache_dir) / ("vocab-map-" + hex64(key) + ".bin");
  const std::string magic = "LFVMAP1";
  if (fs::exists(path)) {
    const std::string bytes = read_text_file(path.string());
    const size_t header = magic.size() + 3 * sizeof(int64_t);
    int64_t n = 0, exact = 0, mined = 0;
    if (bytes.size() >= header && bytes.compare(0, magic.size(), magic) == 0) {
      std::memcpy(&n, bytes.data() + magic.size(), sizeof n);
      std::memcpy(&exact, bytes.data() + magic.size() + 8, sizeof exact);
      std::memcpy(&mined, bytes.data() + magic.size() + 16, sizeof mined);
      if (n == teacher.vocab_size() && bytes.size() == header + n * sizeof(int64_t)) {
        VocabMap map;
        map.to_student.resize(n);
        std::memcpy(map.to_student.data(), bytes.data() + header, n * sizeof(int64_t));
        map.exact = exact;
        map.mined = mined;
        return map;
      }
    }
    spdlog::warn("{}: ignoring an unreadable vocabulary-map cache file; rebuilding it", path.string());
  }
  VocabMap map = build_vocab_map(teacher, student, method);
  fs::create_directories(cache_dir);
  std::string bytes = magic;
  const int64_t n = static_cast<int64_t>(map.to_student.size());
  bytes.append(reinterpret_cast<const char*>(&n), sizeof n);
  bytes.append(reinterpret_cast<const char*>(&map.exact), sizeof map.exact);
  bytes.append(reinterpret_cast<const char*>(&map.mined), sizeof map.mined);
  bytes.append(reinterpret_cast<const char*>(map.to_student.data()), n * sizeof(int64_t));
  write_file_atomic(path.string(), bytes);
  return map;
}

}  // namespace lf
