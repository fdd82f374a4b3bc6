#include "data/sampler.h"

#include <algorithm>
#include <random>

#include "core/error.h"

namespace lf {

std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  std::mt19937_64 rng(seed);
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
    std::swap(order[i], order[j]);
  }
  return order;
}

std::vector<std::vector<int64_t>> epoch_plan(const std::vector<int64_t>& lengths, const SamplerConfig& config,
                                             int64_t epoch) {
  const int64_t n = static_cast<int64_t>(lengths.size());
  const int64_t global = config.micro_batch_size * config.world_size;
  const uint64_t seed = static_cast<uint64_t>(config.seed) * 1000003ull + static_cast<uint64_t>(epoch);
  std::vector<int64_t> order = seeded_permutation(n, seed);
  if (config.bucket_by_length) {
    // Sort within buckets of a few global batches: similar lengths share a batch, and the shuffle
    // still decides which examples meet.
    const int64_t bucket = global * std::max<int64_t>(1, config.bucket_batches);
    for (int64_t start = 0; start < n; start += bucket) {
      auto first = order.begin() + start, last = order.begin() + std::min(n, start + bucket);
      std::stable_sort(first, last, [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });
    }
  }
  std::vector<std::vector<int64_t>> batches;
  for (int64_t start = 0; start + global <= n; start += global) batches.emplace_back(order.begin() + start, order.begin() + start + global);
  // Shuffle the batch order too, so lengths do not decrease steadily through the epoch.
  const std::vector<int64_t> batch_order = seeded_permutation(static_cast<int64_t>(batches.size()), seed ^ 0x9e3779b97f4a7c15ull);
  std::vector<std::vector<int64_t>> shuffled;
  for (int64_t i : batch_order) shuffled.push_back(std::move(batches[i]));
  // The incomplete remainder goes last, so the complete batches are the same whatever the world size.
  const int64_t remainder = n % global;
  if (remainder > 0 && config.world_size == 1) shuffled.emplace_back(order.end() - remainder, order.end());
  return shuffled;
}

Sampler::Sampler(std::vector<int64_t> lengths, SamplerConfig config, DataCursor cursor)
    : lengths_(std::move(lengths)), config_(config), cursor_(cursor) {
  if (config_.world_size < 1 || config_.rank < 0 || config_.rank >= config_.world_size)
    throw InputError("sampler: rank " + std::to_string(config_.rank) + " outside world size " + std::to_string(config_.world_size));
  plan_ = epoch_plan(lengths_, config_, cursor_.epoch);
  if (plan_.empty())
    throw InputError("the data set has fewer examples (" + std::to_string(lengths_.size()) +
                     ") than one global micro-batch (" + std::to_string(config_.micro_batch_size * config_.world_size) + ")");
}

std::vector<int64_t> Sampler::next() {
  if (cursor_.step >= static_cast<int64_t>(plan_.size())) {
    cursor_.epoch += 1;
    cursor_.step = 0;
    plan_ = epoch_plan(lengths_, config_, cursor_.epoch);
  }
  const std::vector<int64_t>& global = plan_[cursor_.step++];
  // Each rank takes a contiguous slice; with one rank that is the whole (possibly short) batch.
  const int64_t per_rank = config_.micro_batch_size;
  const int64_t begin = std::min<int64_t>(config_.rank * per_rank, global.size());
  const int64_t end = std::min<int64_t>(begin + per_rank, global.size());
  if (config_.world_size == 1) return global;
  return std::vector<int64_t>(global.begin() + begin, global.begin() + end);
}

}  // namespace lf
