// Task arithmetic (Ilharco et al. 2023; method.md §4b): a model merged from experts fine-tuned from
// one base, θ = θ_S + Σ_t λ_t (θ_t − θ_S), over Hugging Face directories; TIES and DARE as options. Streams tensor by tensor
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
  // How the task vectors δ_t = θ_t − θ_S combine (per tensor):
  //   task_arithmetic  Σ_t λ_t δ_t
  //   ties             (Yadav et al. 2023) each δ_t trimmed to its `density` largest magnitudes; the
  //                    sign of Σ_t δ̂_t elected per entry; the mean of λ_t δ̂_t over the experts whose
  //                    δ̂_t has that sign (PEFT's `ties`, majority "total")
  //   dare             (Yu et al. 2023) each entry of δ_t kept with probability `density` and
  //                    rescaled by 1/density, then Σ_t λ_t δ̂_t
  //   dare_ties        DARE's drop and rescale, then TIES' sign election and disjoint mean
  std::string method = "task_arithmetic";
  double density = 0;  // 0: the method's default (ties 0.2, dare 0.1: the papers' top-20 % and p = 0.9)
  uint64_t seed = 0;   // DARE's drops: a function of (seed, tensor name, expert), whatever the shard order
};

// The merge methods, for the command line's check.
const std::vector<std::string>& merge_methods();

// Every expert must hold the base's tensors (names, shapes, dtypes) and the same model_type: any
// difference is an InputError naming the tensor or key and the directory, found before anything is
// written. Floating-point tensors are combined in float32 (float64 stays float64) and written in their
// own dtype; other tensors are copied from the base. config.json, tokenizer and generation files
// come from the base. Returns the number of tensors merged.
int64_t merge_task_arithmetic(const MergeOptions& options);

}  // namespace lf
