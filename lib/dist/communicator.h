// The communicator: every reduction that must be global (token counts, loss sums, gradient norms,
// gradients) goes through it. One process today; NCCL (c10d) and CPU collectives plug in behind the
// same interface.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>

namespace lf {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int64_t rank() const = 0;
  virtual int64_t world_size() const = 0;
  // In-place sum over ranks.
  virtual void all_reduce_sum(at::Tensor& tensor) = 0;
  virtual void barrier() = 0;
  virtual std::string name() const = 0;

  bool is_main() const { return rank() == 0; }
  double all_reduce_sum(double value);
};

std::unique_ptr<Communicator> make_single_process_communicator();

}  // namespace lf
