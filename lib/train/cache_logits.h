// `logitfuse cache-logits`: run each teacher that names a logits_cache once over the training data,
// and the checks that tie a cache to the recipe that reads it.
#pragma once

#include <memory>

#include "config/recipe.h"
#include "loss/objective.h"
#include "teacher/logits_cache.h"
#include "train/fusion_data.h"
#include "train/participants.h"

namespace lf {

// The k of the top-k rows a teacher read as rows (a cache or a server) must give this recipe's
// losses; InputError naming `key` if a token loss without loss.token.top_k needs the full vocabulary.
int64_t teacher_rows_k(const Recipe& recipe, const std::string& key);

// What a cache for teachers[index] must match under this recipe (data, tokenizer, weights, template,
// truncation, k, temperatures). InputError if the recipe's losses cannot be served from a cache.
// `data_hash`: hex64(hash_file(recipe.data.train)), read once by the caller for every teacher.
CacheSpec expected_cache_spec(const Recipe& recipe, size_t index, const Participant& teacher,
                              const std::string& data_hash);

// Index of `temperature` in the spec's list.
size_t temperature_index(const CacheSpec& spec, double temperature);

// Writes the cache of every teacher with teachers.N.logits_cache set; InputError if none has one.
void write_logits_caches(const Recipe& recipe);

// One example's teacher rows (cached or served) appended for the objective: the graph reads all k
// rows' columns, the token loss its own loss.token.top_k of them.
void append_teacher_rows(loss::PrecomputedTeacherRows& out, const Recipe& recipe, int64_t k, at::Tensor graph_probs,
                         at::Tensor graph_ids, const at::Tensor& token_probs, const at::Tensor& token_ids, double ce);

// The cached rows of one micro-batch for the objective.
std::shared_ptr<loss::PrecomputedTeacherRows> cached_rows(const LogitsCache& cache, const MicroBatch& batch, const Recipe& recipe);

}  // namespace lf
