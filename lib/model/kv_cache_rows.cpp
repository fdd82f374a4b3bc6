#include "model/kv_cache_rows.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <stdexcept>

namespace lf {

namespace {

// Spare columns allocated past the filled length, so the next steps do not reallocate at once.
constexpr int64_t kSpareColumns = 32;

at::Tensor valid_columns(const KVCache& cache) {
  if (cache.key_mask.defined()) return cache.key_mask.narrow(1, 0, cache.length);
  return at::ones({cache_rows(cache), cache.length}, at::TensorOptions().dtype(at::kBool).device(cache.keys[0].device()));
}

// A fresh buffer per layer, [rows, kv_heads, length + spare, head_dim], zero where nothing is copied.
at::Tensor fresh_buffer(const at::Tensor& like, int64_t rows, int64_t length) {
  return at::zeros({rows, like.size(1), length + kSpareColumns, like.size(3)}, like.options());
}

}  // namespace

int64_t cache_rows(const KVCache& cache) { return cache.keys.empty() ? 0 : cache.keys[0].size(0); }

void append_cache_rows(KVCache& cache, const KVCache& rows) {
  if (cache_rows(rows) == 0) return;
  if (cache_rows(cache) == 0) {
    cache.keys.clear();
    cache.values.clear();
    cache.length = 0;
    cache.key_mask = at::Tensor();
  }
  const int64_t a = cache_rows(cache), b = cache_rows(rows);
  const int64_t la = cache.length, lb = rows.length;
  const int64_t length = std::max(la, lb);
  if (a > 0 && cache.keys.size() != rows.keys.size()) throw std::logic_error("append_cache_rows: caches of different models");
  const size_t layers = rows.keys.size();
  std::vector<at::Tensor> keys(layers), values(layers);
  for (size_t l = 0; l < layers; ++l) {
    for (auto [out, from_a, from_b] : {std::make_tuple(&keys, &cache.keys, &rows.keys),
                                      std::make_tuple(&values, &cache.values, &rows.values)}) {
      at::Tensor buffer = fresh_buffer((*from_b)[l], a + b, length);
      if (a > 0) buffer.narrow(0, 0, a).narrow(2, length - la, la).copy_((*from_a)[l].narrow(2, 0, la));
      buffer.narrow(0, a, b).narrow(2, length - lb, lb).copy_((*from_b)[l].narrow(2, 0, lb));
      (*out)[l] = buffer;
    }
  }
  const auto bool_options = at::TensorOptions().dtype(at::kBool).device(rows.keys[0].device());
  at::Tensor mask = at::zeros({a + b, length}, bool_options);
  if (a > 0) mask.narrow(0, 0, a).narrow(1, length - la, la).copy_(valid_columns(cache));
  mask.narrow(0, a, b).narrow(1, length - lb, lb).copy_(valid_columns(rows));
  cache.keys = std::move(keys);
  cache.values = std::move(values);
  cache.key_mask = mask;
  cache.length = length;
}

void keep_cache_rows(KVCache& cache, const std::vector<int64_t>& keep) {
  if (keep.empty() || cache_rows(cache) == 0) {
    cache.clear();
    return;
  }
  const auto device = cache.keys[0].device();
  const at::Tensor index = at::tensor(keep, at::TensorOptions().dtype(at::kLong)).to(device);
  const at::Tensor mask = valid_columns(cache).index_select(0, index);
  // The first column any kept row attends to: everything before it is padding for all of them.
  const at::Tensor any = mask.any(0).to(at::kCPU);
  int64_t first = 0;
  const bool* valid = any.data_ptr<bool>();
  while (first < cache.length && !valid[first]) ++first;
  const int64_t length = cache.length - first;
  for (auto* buffers : {&cache.keys, &cache.values}) {
    for (auto& t : *buffers) {
      at::Tensor kept = fresh_buffer(t, static_cast<int64_t>(keep.size()), length);
      kept.narrow(2, 0, length).copy_(t.narrow(2, first, length).index_select(0, index));
      t = kept;
    }
  }
  cache.key_mask = mask.narrow(1, first, length).contiguous();
  cache.length = length;
}

}  // namespace lf
