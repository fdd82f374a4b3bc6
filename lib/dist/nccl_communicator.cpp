// GPU collectives through c10d: a TCPStore rendezvous at MASTER_ADDR:MASTER_PORT and
// ProcessGroupNCCL. Its watchdog stays on with dist.timeout_s, so a collective that a failed or hung
// peer never joins ends this process with c10d's error instead of hanging. The only file that
// includes ProcessGroupNCCL.hpp (heavy, CUDA): built with USE_C10D_NCCL when LibTorch has CUDA.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAFunctions.h>
#include <spdlog/spdlog.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdlib>

#include "core/error.h"
#include "dist/communicator.h"

namespace lf {

namespace {

// c10d's work handle: wait() orders the current stream after the NCCL kernel (and surfaces errors).
struct NcclPending final : PendingCollective {
  explicit NcclPending(c10::intrusive_ptr<c10d::Work> work) : work_(std::move(work)) {}
  void wait() override {
    if (work_) work_->wait();
    work_.reset();
  }
  c10::intrusive_ptr<c10d::Work> work_;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const LaunchEnv& launch, const CommunicatorOptions& options)
      : rank_(launch.rank), size_(launch.world_size), device_(at::kCUDA, static_cast<c10::DeviceIndex>(options.device_index)) {
    if (launch.world_size > 1 && launch.master_addr.empty())
      throw InputError("dist.backend=nccl with " + std::to_string(launch.world_size) + " ranks needs MASTER_ADDR and MASTER_PORT",
                       "launch with torchrun or srun, or export MASTER_ADDR/MASTER_PORT for mpirun");
    if (options.device_index >= static_cast<int64_t>(c10::cuda::device_count()))
      throw InputError("rank " + std::to_string(rank_) + " wants cuda:" + std::to_string(options.device_index) + " but " +
                       std::to_string(c10::cuda::device_count()) + " GPU(s) are visible", "one process per GPU: --nproc_per_node");
    c10::cuda::set_device(device_.index());
    const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(options.timeout_s * 1000));
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<uint16_t>(launch.world_size > 1 ? launch.master_port : 0);
    // Under torchrun the agent already serves the store at MASTER_PORT: every worker is a client.
    store_options.isServer = rank_ == 0 && !launch.agent_store;
    store_options.numWorkers = static_cast<size_t>(size_);
    store_options.waitWorkers = false;
    store_options.timeout = timeout;
    const std::string host = launch.master_addr.empty() ? "127.0.0.1" : launch.master_addr;
    c10::intrusive_ptr<c10d::Store> store;
    try {
      store = c10::make_intrusive<c10d::TCPStore>(host, store_options);
    } catch (const std::exception& e) {
      throw RuntimeFailure("NCCL rendezvous at " + host + ":" + std::to_string(store_options.port) + " failed: " + e.what(),
                           "check MASTER_ADDR/MASTER_PORT and that rank 0 started");
    }
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("logitfuse", store);
    auto pg_options = c10d::ProcessGroupNCCL::Options::create();
    pg_options->timeout = timeout;
    pg_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, static_cast<int>(rank_), static_cast<int>(size_), pg_options);
  }

  ~NcclCommunicator() override {
    if (pg_) pg_->shutdown();
  }

  int64_t rank() const override { return rank_; }
  int64_t world_size() const override { return size_; }

  void all_reduce_sum(at::Tensor& tensor) override {
    on_device(tensor, [&](at::Tensor& t) {
      std::vector<at::Tensor> list{t};
      c10d::AllreduceOptions opts;
      opts.reduceOp = c10d::ReduceOp::SUM;
      pg_->allreduce(list, opts)->wait();
    });
  }

  // The gradient buckets are CUDA tensors of this rank's device; anything else takes the blocking path.
  std::unique_ptr<PendingCollective> all_reduce_sum_async(at::Tensor& tensor) override {
    if (tensor.device() != device_ || !tensor.is_contiguous()) return Communicator::all_reduce_sum_async(tensor);
    std::vector<at::Tensor> list{tensor};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    return std::make_unique<NcclPending>(pg_->allreduce(list, opts));
  }

  void broadcast(at::Tensor& tensor, int64_t root) override {
    on_device(tensor, [&](at::Tensor& t) {
      std::vector<at::Tensor> list{t};
      c10d::BroadcastOptions opts;
      opts.rootRank = root;
      pg_->broadcast(list, opts)->wait();
    });
  }

  void reduce_scatter_sum(const at::Tensor& input, at::Tensor& output) override {
    at::Tensor in = input.to(device_).contiguous();
    on_device(output, [&](at::Tensor& out) {
      c10d::ReduceScatterOptions opts;
      opts.reduceOp = c10d::ReduceOp::SUM;
      pg_->_reduce_scatter_base(out, in, opts)->wait();
    });
  }

  void all_gather(const at::Tensor& input, at::Tensor& output) override {
    at::Tensor in = input.to(device_).contiguous();
    on_device(output, [&](at::Tensor& out) { pg_->_allgather_base(out, in)->wait(); });
  }

  std::unique_ptr<PendingCollective> all_gather_async(const at::Tensor& input, at::Tensor& output) override {
    // On NCCL's own stream: the gather of the next layer runs while this one computes.
    if (output.device() != device_ || !output.is_contiguous()) return Communicator::all_gather_async(input, output);
    at::Tensor in = input.to(device_).contiguous();  // c10d keeps it alive with the work
    return std::make_unique<NcclPending>(pg_->_allgather_base(output, in));
  }

  void barrier() override {
    c10d::BarrierOptions opts;
    opts.device_ids = {device_.index()};
    pg_->barrier(opts)->wait();
  }

  std::string name() const override { return "nccl (" + device_.str() + ")"; }

  [[noreturn]] void abort(int exit_code) override {
    // The launcher (torchrun, srun) ends the other ranks when this one exits non-zero; those that
    // wait in a collective meanwhile are ended by their watchdog at dist.timeout_s.
    if (pg_) pg_->abort();
    std::_Exit(exit_code);
  }

 private:
  // NCCL works on device tensors: host tensors (the trainer's scalar reductions) go through a copy.
  template <class F>
  void on_device(at::Tensor& tensor, F&& collective) {
    if (tensor.device() == device_ && tensor.is_contiguous()) {
      collective(tensor);
      return;
    }
    at::Tensor staged = tensor.to(device_).contiguous();
    collective(staged);
    tensor.copy_(staged);
  }

  int64_t rank_, size_;
  at::Device device_;
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> pg_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(const LaunchEnv& launch, const CommunicatorOptions& options) {
  return std::make_unique<NcclCommunicator>(launch, options);
}

}  // namespace lf
