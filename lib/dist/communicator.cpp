#include "dist/communicator.h"

#include <ATen/ATen.h>

#include <cstdlib>

#include "core/error.h"

namespace lf {

namespace {
struct FinishedCollective final : PendingCollective {
  void wait() override {}
};
}  // namespace

std::unique_ptr<PendingCollective> Communicator::all_reduce_sum_async(at::Tensor& tensor) {
  all_reduce_sum(tensor);
  return std::make_unique<FinishedCollective>();
}

std::unique_ptr<PendingCollective> Communicator::all_gather_async(const at::Tensor& input, at::Tensor& output) {
  all_gather(input, output);
  return std::make_unique<FinishedCollective>();
}

double Communicator::all_reduce_sum(double value) {
  if (world_size() == 1) return value;
  at::Tensor t = at::scalar_tensor(value, at::TensorOptions().dtype(at::kDouble)).reshape({1});
  all_reduce_sum(t);
  return t.item<double>();
}

namespace {

class SingleProcess final : public Communicator {
 public:
  int64_t rank() const override { return 0; }
  int64_t world_size() const override { return 1; }
  void all_reduce_sum(at::Tensor&) override {}
  void broadcast(at::Tensor&, int64_t) override {}
  void reduce_scatter_sum(const at::Tensor& input, at::Tensor& output) override {
    if (!output.is_same(input)) output.copy_(input);
  }
  void all_gather(const at::Tensor& input, at::Tensor& output) override {
    if (!output.is_same(input)) output.copy_(input);
  }
  void barrier() override {}
  std::string name() const override { return "single-process"; }
  [[noreturn]] void abort(int exit_code) override { std::exit(exit_code); }
};

}  // namespace

std::unique_ptr<Communicator> make_single_process_communicator() { return std::make_unique<SingleProcess>(); }

std::unique_ptr<Communicator> make_communicator(const LaunchEnv& launch, const CommunicatorOptions& options) {
  if (options.backend == "nccl") {
#ifdef LOGITFUSE_HAVE_NCCL
    return make_nccl_communicator(launch, options);
#else
    throw NotAvailable("dist.backend=nccl (this build has no NCCL: LibTorch without CUDA)");
#endif
  }
  if (options.backend != "cpu") throw InputError("dist.backend: unknown backend '" + options.backend + "'");
  if (launch.world_size == 1) return make_single_process_communicator();
  if (!launch.mpi_wired)
    throw InputError("dist.backend=cpu with several ranks runs under mpirun (or srun --mpi=pmix); this process was "
                     "started as " + launch.describe(),
                     "launch with mpirun -np N, or use dist.backend=nccl on GPUs");
#ifdef LOGITFUSE_HAVE_MPI
  return make_mpi_communicator(launch);
#else
  throw NotAvailable("multi-process CPU training (" + launch.describe() +
                     "; this build has no MPI: install libopenmpi-dev and rebuild, or use dist.backend=nccl on GPUs)");
#endif
}

}  // namespace lf
