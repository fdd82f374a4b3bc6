// Task arithmetic (Ilharco et al. 2023; method.md §4b): a model merged from experts fine-tuned from
// one base, θ = θ_S + Σ_t λ_t (θ_t − θ_S), over Hugging Face directories. Streams tensor by tensor
// (memory near one tensor), writes the base's shard layout, and leaves nothing behind on failure.
#pragma once

#include <string>
#include <vector>

namespace lf {

struct MergeOptions {
  std::string base;
  std::vector<std::string> experts;
  std::vector<double> weights;  // λ_t, one per expert
  std::string out;
};

// Every expert must hold the base's tensors (names, shapes, dtypes) and the same model_type: any
// difference is an InputError naming the tensor or key and the directory, found before anything is
// written. Floating-point tensors are combined in float32 (float64 stays float64) and written in their
// own dtype; other tensors are copied from the base. config.json, tokenizer and generation files
// come from the base. Returns the number of tensors merged.
int64_t merge_task_arithmetic(const MergeOptions& options);

}  // namespace lf
