// The student's loss on data.eval during training (an evaluation line of the run log).
#pragma once

#include <cstdint>
#include <vector>

#include "data/sequence.h"
#include "dist/communicator.h"
#include "train/participants.h"

namespace lf {

// Token-mean cross entropy of the student on an evaluation set; each rank takes every world_size-th
// example and the sums are reduced. `lockstep` (a sharded student, whose forward is collective): every
// rank runs as many batches as rank 0, one with no examples left repeating the first and counting nothing.
double evaluate_student(const Participant& student, const std::vector<TokenizedSequence>& eval, int64_t batch_size,
                        bool bf16, Communicator& comm, bool lockstep);

}  // namespace lf
