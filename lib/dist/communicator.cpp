#include "dist/communicator.h"

#include <ATen/ATen.h>

namespace lf {

double Communicator::all_reduce_sum(double value) {
  if (world_size() == 1) return value;
  at::Tensor t = at::scalar_tensor(value, at::TensorOptions().dtype(at::kDouble));
  all_reduce_sum(t);
  return t.item<double>();
}

namespace {

class SingleProcess final : public Communicator {
 public:
  int64_t rank() const override { return 0; }
  int64_t world_size() const override { return 1; }
  void all_reduce_sum(at::Tensor&) override {}
  void barrier() override {}
  std::string name() const override { return "single-process"; }
};

}  // namespace

std::unique_ptr<Communicator> make_single_process_communicator() { return std::make_unique<SingleProcess>(); }

}  // namespace lf
