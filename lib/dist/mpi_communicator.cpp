// CPU collectives through MPI (OpenMPI from Debian): the torch wheel has no Gloo headers, and a
// hand-written socket protocol is what MPI already is. Ranks come from MPI itself (mpirun, or srun
// with PMIx), checked against what the launcher's environment said.
#include <ATen/ATen.h>
#include <mpi.h>
#include <spdlog/spdlog.h>

#include <vector>

#include <climits>
#include <cstdlib>

#include "core/error.h"
#include "dist/communicator.h"

namespace lf {

namespace {

MPI_Datatype mpi_type(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return MPI_FLOAT;
    case at::kDouble: return MPI_DOUBLE;
    case at::kLong: return MPI_INT64_T;
    case at::kInt: return MPI_INT32_T;
    case at::kByte: return MPI_UINT8_T;
    default: throw RuntimeFailure(std::string("MPI collectives: unsupported dtype ") + c10::toString(t.scalar_type()));
  }
}

void check(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw RuntimeFailure(std::string(what) + " failed: " + std::string(text, length));
}

void check_cpu_contiguous(const at::Tensor& t, const char* what) {
  if (!t.device().is_cpu() || !t.is_contiguous())
    throw RuntimeFailure(std::string(what) + ": MPI collectives take contiguous CPU tensors");
}

// MPI counts are int: larger tensors go in pieces (all-reduce), or are refused (the trainer's buckets
// stay far below this).
constexpr int64_t kMaxCount = INT_MAX / 2;

struct MpiPending final : PendingCollective {
  std::vector<MPI_Request> requests;
  std::vector<at::Tensor> buffers;  // kept alive until the requests complete
  void wait() override {
    if (requests.empty()) return;
    check(MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE), "MPI_Waitall");
    requests.clear();
    buffers.clear();
  }
};

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(const LaunchEnv& launch) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      // Only the main thread calls MPI (LibTorch's intra-op threads never do).
      check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
      owns_init_ = true;
    }
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    rank_ = rank;
    size_ = size;
    if (size_ != launch.world_size || rank_ != launch.rank) {
      const std::string what = "MPI reports rank " + std::to_string(rank_) + " of " + std::to_string(size_) +
                               " but the launcher set " + launch.describe();
      finalize();
      throw InputError(what, "dist.backend=cpu runs its ranks under mpirun (or srun --mpi=pmix); with torchrun use "
                             "dist.backend=nccl on GPUs");
    }
  }
  ~MpiCommunicator() override { finalize(); }

  int64_t rank() const override { return rank_; }
  int64_t world_size() const override { return size_; }

  void all_reduce_sum(at::Tensor& tensor) override {
    check_cpu_contiguous(tensor, "all_reduce_sum");
    const int64_t element = tensor.element_size();
    char* data = static_cast<char*>(tensor.data_ptr());
    for (int64_t start = 0; start < tensor.numel(); start += kMaxCount) {
      const int count = static_cast<int>(std::min(kMaxCount, tensor.numel() - start));
      check(MPI_Allreduce(MPI_IN_PLACE, data + start * element, count, mpi_type(tensor), MPI_SUM, MPI_COMM_WORLD),
            "MPI_Allreduce");
    }
  }

  std::unique_ptr<PendingCollective> all_reduce_sum_async(at::Tensor& tensor) override {
    check_cpu_contiguous(tensor, "all_reduce_sum_async");
    auto pending = std::make_unique<MpiPending>();
    const int64_t element = tensor.element_size();
    char* data = static_cast<char*>(tensor.data_ptr());
    for (int64_t start = 0; start < tensor.numel(); start += kMaxCount) {
      const int count = static_cast<int>(std::min(kMaxCount, tensor.numel() - start));
      pending->requests.emplace_back();
      check(MPI_Iallreduce(MPI_IN_PLACE, data + start * element, count, mpi_type(tensor), MPI_SUM, MPI_COMM_WORLD,
                           &pending->requests.back()),
            "MPI_Iallreduce");
    }
    return pending;
  }

  void broadcast(at::Tensor& tensor, int64_t root) override {
    check_cpu_contiguous(tensor, "broadcast");
    check(MPI_Bcast(tensor.data_ptr(), count(tensor.numel()), mpi_type(tensor), static_cast<int>(root), MPI_COMM_WORLD),
          "MPI_Bcast");
  }

  void reduce_scatter_sum(const at::Tensor& input, at::Tensor& output) override {
    check_cpu_contiguous(input, "reduce_scatter_sum");
    check_cpu_contiguous(output, "reduce_scatter_sum");
    if (input.numel() != output.numel() * size_) throw RuntimeFailure("reduce_scatter_sum: input is not world_size chunks");
    check(MPI_Reduce_scatter_block(input.data_ptr(), output.data_ptr(), count(output.numel()), mpi_type(input), MPI_SUM,
                                   MPI_COMM_WORLD),
          "MPI_Reduce_scatter_block");
  }

  void all_gather(const at::Tensor& input, at::Tensor& output) override {
    check_cpu_contiguous(input, "all_gather");
    check_cpu_contiguous(output, "all_gather");
    if (output.numel() != input.numel() * size_) throw RuntimeFailure("all_gather: output is not world_size chunks");
    // MPI forbids aliased send and receive buffers unless the input is passed as MPI_IN_PLACE.
    const char* in = static_cast<const char*>(input.data_ptr());
    const char* own = static_cast<const char*>(output.data_ptr()) + rank_ * input.numel() * input.element_size();
    const void* send = in == own ? MPI_IN_PLACE : input.data_ptr();
    check(MPI_Allgather(send, count(input.numel()), mpi_type(input), output.data_ptr(), count(input.numel()),
                        mpi_type(output), MPI_COMM_WORLD),
          "MPI_Allgather");
  }

  std::unique_ptr<PendingCollective> all_gather_async(const at::Tensor& input, at::Tensor& output) override {
    check_cpu_contiguous(input, "all_gather_async");
    check_cpu_contiguous(output, "all_gather_async");
    if (output.numel() != input.numel() * size_) throw RuntimeFailure("all_gather_async: output is not world_size chunks");
    if (input.numel() > kMaxCount) return Communicator::all_gather_async(input, output);
    auto pending = std::make_unique<MpiPending>();
    pending->buffers = {input, output};
    pending->requests.emplace_back();
    check(MPI_Iallgather(input.data_ptr(), count(input.numel()), mpi_type(input), output.data_ptr(), count(input.numel()),
                         mpi_type(output), MPI_COMM_WORLD, &pending->requests.back()),
          "MPI_Iallgather");
    return pending;
  }

  void barrier() override { check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }
  std::string name() const override { return "mpi (CPU)"; }

  [[noreturn]] void abort(int exit_code) override {
    // MPI_Abort makes mpirun end every rank; its exit status is ours.
    MPI_Abort(MPI_COMM_WORLD, exit_code);
    std::_Exit(exit_code);
  }

 private:
  static int count(int64_t n) {
    if (n > kMaxCount) throw RuntimeFailure("MPI collective of " + std::to_string(n) + " elements exceeds one call's limit");
    return static_cast<int>(n);
  }
  void finalize() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_init_ && !finalized) MPI_Finalize();
    owns_init_ = false;
  }

  int64_t rank_ = 0, size_ = 1;
  bool owns_init_ = false;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(const LaunchEnv& launch) {
  return std::make_unique<MpiCommunicator>(launch);
}

}  // namespace lf
