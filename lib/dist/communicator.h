// The communicator: every reduction that must be global (token counts, loss sums, gradient norms,
// gradients, the sharded optimizer's parameter gathers) goes through it. Implementations: a single
// process, MPI on CPU (mpi_communicator.cpp, built when MPI is found) and NCCL through c10d
// (nccl_communicator.cpp, built when LibTorch has CUDA). make_communicator() picks one from the
// launcher's environment and the recipe's dist.backend; nothing below it reads the environment.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>

#include "dist/launch_env.h"

namespace lf {

// A collective in flight: wait() returns once its result is in place (on a GPU: once the current
// stream is ordered after it). Waiting twice is harmless.
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int64_t rank() const = 0;
  virtual int64_t world_size() const = 0;
  // In-place sum over ranks (a contiguous tensor of any device the backend accepts).
  virtual void all_reduce_sum(at::Tensor& tensor) = 0;
  // Starts an in-place sum over ranks and returns without waiting, so it can run while the backward
  // pass goes on. Every rank must start its collectives in the same order. The default runs the
  // blocking all_reduce_sum and returns a finished handle.
  virtual std::unique_ptr<PendingCollective> all_reduce_sum_async(at::Tensor& tensor);
  // In place: every rank ends with root's values.
  virtual void broadcast(at::Tensor& tensor, int64_t root) = 0;
  // `input` holds world_size() equal contiguous chunks; `output` (one chunk) receives the sum over
  // ranks of chunk rank().
  virtual void reduce_scatter_sum(const at::Tensor& input, at::Tensor& output) = 0;
  // `output` (world_size() chunks) receives every rank's `input` chunk, in rank order.
  virtual void all_gather(const at::Tensor& input, at::Tensor& output) = 0;
  // The same, started and not waited for (ZeRO-3 prefetches the next layer's parameters with it):
  // `input` and `output` must stay alive and untouched until wait(). The default is blocking.
  virtual std::unique_ptr<PendingCollective> all_gather_async(const at::Tensor& input, at::Tensor& output);
  virtual void barrier() = 0;
  virtual std::string name() const = 0;
  // Ends every process of the job with `exit_code` after a local error: the others may be blocked
  // in a collective that would never finish. The single process simply exits.
  [[noreturn]] virtual void abort(int exit_code) = 0;

  bool is_main() const { return rank() == 0; }
  double all_reduce_sum(double value);
};

struct CommunicatorOptions {
  std::string backend = "cpu";  // cpu | nccl, already resolved from auto
  int64_t device_index = 0;     // the CUDA device of this rank (nccl)
  double timeout_s = 600;       // collective timeout (nccl's watchdog; MPI has none)
};

// The communicator for this process: single-process for world size 1 on CPU, MPI for `cpu`, NCCL
// for `nccl`. NotAvailable when the backend was not built; InputError when the launch does not fit
// the backend (e.g. several ranks on `cpu` without mpirun).
std::unique_ptr<Communicator> make_communicator(const LaunchEnv& launch, const CommunicatorOptions& options);

std::unique_ptr<Communicator> make_single_process_communicator();
#ifdef LOGITFUSE_HAVE_MPI
std::unique_ptr<Communicator> make_mpi_communicator(const LaunchEnv& launch);
#endif
#ifdef LOGITFUSE_HAVE_NCCL
std::unique_ptr<Communicator> make_nccl_communicator(const LaunchEnv& launch, const CommunicatorOptions& options);
#endif

}  // namespace lf
