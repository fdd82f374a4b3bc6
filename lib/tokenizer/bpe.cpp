#include "tokenizer/bpe.h"

#include <cstdio>
#include <queue>
#include <stdexcept>

#include "tokenizer/text_util.h"

namespace lf::tok {

Bpe::Bpe(std::unordered_map<std::string, int32_t> vocab, const std::vector<std::pair<std::string, std::string>>& merges,
         BpeOptions options)
    : vocab_(std::move(vocab)), options_(std::move(options)) {
  merges_.reserve(merges.size() * 2);
  const size_t prefix_len = options_.continuing_subword_prefix.size();
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    auto ia = vocab_.find(a), ib = vocab_.find(b);
    if (ia == vocab_.end() || ib == vocab_.end())
      throw std::invalid_argument("merge \"" + a + " " + b + "\" uses a token that is not in the vocabulary");
    // As in tokenizers: the right part's continuing-subword prefix is dropped in the merged token.
    const std::string merged = a + (prefix_len && b.compare(0, prefix_len, options_.continuing_subword_prefix) == 0
                                        ? b.substr(prefix_len) : b);
    auto im = vocab_.find(merged);
    if (im == vocab_.end())
      throw std::invalid_argument("merge \"" + a + " " + b + "\" makes \"" + merged + "\", which is not in the vocabulary");
    // A repeated pair: the later entry wins, as when tokenizers collects merges into its HashMap.
    merges_[pair_key(ia->second, ib->second)] = {static_cast<int32_t>(rank), im->second};
  }
  if (options_.unk_token) {
    auto it = vocab_.find(*options_.unk_token);
    if (it != vocab_.end()) unk_id_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    auto it = vocab_.find(name);
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }
}

const Bpe::Merge* Bpe::find_merge(int32_t a, int32_t b) const {
  auto it = merges_.find(pair_key(a, b));
  return it == merges_.end() ? nullptr : &it->second;
}

void Bpe::initial_symbols(std::string_view word, std::vector<Symbol>& symbols) const {
  symbols.clear();
  std::optional<Symbol> unk;  // a pending (possibly fused) unknown run
  auto push = [&](int32_t id, uint32_t len) {
    symbols.push_back({id, len, static_cast<int32_t>(symbols.size()) - 1, static_cast<int32_t>(symbols.size()) + 1});
  };
  auto flush_unk = [&] {
    if (unk) push(unk->id, unk->len);
    unk.reset();
  };
  std::string key;
  size_t i = 0;
  while (i < word.size()) {
    const size_t n = std::min(utf8_len(static_cast<unsigned char>(word[i])), word.size() - i);
    const bool first = i == 0, last = i + n == word.size();
    std::string_view ch = word.substr(i, n);
    const std::unordered_map<std::string, int32_t>::const_iterator found = [&] {
      if ((first || options_.continuing_subword_prefix.empty()) && (!last || options_.end_of_word_suffix.empty())) {
        key.assign(ch);
      } else {
        key.clear();
        if (!first) key += options_.continuing_subword_prefix;
        key += ch;
        if (last) key += options_.end_of_word_suffix;
      }
      return vocab_.find(key);
    }();
    i += n;
    if (found != vocab_.end()) {
      flush_unk();
      push(found->second, static_cast<uint32_t>(n));
      continue;
    }
    if (options_.byte_fallback) {
      // Every byte of the (prefixed) char must have its <0xNN> token, else it is unknown.
      bool all = true;
      for (unsigned char c : key) all = all && byte_ids_[c] >= 0;
      if (all) {
        flush_unk();  // tokenizers leaves a pending unk in place; a fallback char never follows one in practice
        for (unsigned char c : key) push(byte_ids_[c], 1);
        continue;
      }
    }
    if (options_.unk_token) {
      if (!unk_id_) throw std::invalid_argument("unk_token \"" + *options_.unk_token + "\" is not in the vocabulary");
      if (unk && options_.fuse_unk) {
        unk->len += static_cast<uint32_t>(n);
      } else {
        flush_unk();
        unk = Symbol{*unk_id_, static_cast<uint32_t>(n), 0, 0};
      }
    }
    // No unk token: tokenizers drops the char.
  }
  flush_unk();
  if (!symbols.empty()) symbols.back().next = -1;
}

void Bpe::merge_all(std::vector<Symbol>& symbols) const {
  const int32_t n = static_cast<int32_t>(symbols.size());
  if (n < 2) return;
  // Lowest rank first, leftmost first among equal ranks: the order of tokenizers' Word::merge_all.
  struct Candidate {
    int32_t rank, pos, new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  for (int32_t p = 0; p + 1 < n; ++p)
    if (const Merge* m = find_merge(symbols[p].id, symbols[p + 1].id)) queue.push({m->rank, p, m->new_id});
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (left.len == 0 || left.next < 0) continue;  // merged away, or now the last symbol
    Symbol& right = symbols[left.next];
    const Merge* m = find_merge(left.id, right.id);
    if (!m || m->new_id != top.new_id) continue;  // stale: a neighbour changed since it was queued
    left.id = top.new_id;
    left.len += right.len;
    right.len = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0)
      if (const Merge* pm = find_merge(symbols[left.prev].id, left.id)) queue.push({pm->rank, left.prev, pm->new_id});
    if (left.next >= 0)
      if (const Merge* nm = find_merge(left.id, symbols[left.next].id)) queue.push({nm->rank, top.pos, nm->new_id});
  }
}

void Bpe::tokenize_uncached(std::string_view word, std::vector<WordToken>& out) const {
  if (options_.ignore_merges) {
    auto it = vocab_.find(std::string(word));
    if (it != vocab_.end()) {
      out.push_back({it->second, static_cast<uint32_t>(word.size())});
      return;
    }
  }
  thread_local std::vector<Symbol> symbols;
  initial_symbols(word, symbols);
  merge_all(symbols);
  for (const Symbol& s : symbols)
    if (s.len > 0) out.push_back({s.id, s.len});
}

void Bpe::tokenize(std::string_view word, std::vector<WordToken>& out) const {
  if (word.empty()) return;
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  thread_local std::string key;
  if (cacheable) {
    key.assign(word);
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = cache_.find(key);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t mark = out.size();
  tokenize_uncached(word, out);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() < kCacheCapacity)
      cache_.emplace(key, std::vector<WordToken>(out.begin() + static_cast<std::ptrdiff_t>(mark), out.end()));
  }
}

}  // namespace lf::tok
