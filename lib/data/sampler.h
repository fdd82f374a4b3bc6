// Which examples go into which micro-batch: a deterministic shuffle per epoch from the seed, length
// bucketing so padding is not most of the compute, sharding by rank, and a cursor that a checkpoint
// stores so a resumed run continues exactly where it stopped.
#pragma once

#include <cstdint>
#include <vector>

namespace lf {

struct DataCursor {
  int64_t epoch = 0;
  int64_t step = 0;  // global micro-batches already consumed in this epoch
};

struct SamplerConfig {
  int64_t micro_batch_size = 1;  // per rank
  int64_t seed = 0;
  int64_t rank = 0;
  int64_t world_size = 1;
  bool bucket_by_length = true;
  int64_t bucket_batches = 8;  // a bucket spans this many global micro-batches
};

// The global micro-batches of one epoch (each a list of example indices), identical on every rank
// and independent of how the global micro-batch is split over ranks. An incomplete last global
// micro-batch is kept with one rank, dropped with several (every rank must step together).
std::vector<std::vector<int64_t>> epoch_plan(const std::vector<int64_t>& lengths, const SamplerConfig& config,
                                             int64_t epoch);

class Sampler {
 public:
  Sampler(std::vector<int64_t> lengths, SamplerConfig config, DataCursor cursor = {});
  // This rank's examples of the next micro-batch; advances the cursor (wrapping into the next epoch).
  std::vector<int64_t> next();
  const DataCursor& cursor() const { return cursor_; }
  int64_t batches_per_epoch() const { return static_cast<int64_t>(plan_.size()); }

 private:
  std::vector<int64_t> lengths_;
  SamplerConfig config_;
  DataCursor cursor_;
  std::vector<std::vector<int64_t>> plan_;  // of cursor_.epoch
};

// A deterministic permutation of 0..n-1 (Fisher-Yates on mt19937_64, whose output the standard fixes,
// unlike std::shuffle's use of it).
std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed);

}  // namespace lf
