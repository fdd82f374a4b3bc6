// `logitfuse version`: versions of logitfuse, LibTorch, CUDA and NCCL, and the CPU kernels in use.
#include <CLI/CLI.hpp>
#include <ATen/Context.h>
#include <ATen/Version.h>
#include <torch/version.h>
#include <dlfcn.h>

#include <fstream>
#include <iostream>
#include <string>
#include <thread>

#include "commands.h"

namespace lf::app {

namespace {

// NCCL is loaded by LibTorch's CUDA library when it has one; ask it for its version if present.
std::string nccl_version() {
  void* handle = dlopen("libnccl.so.2", RTLD_LAZY | RTLD_NOLOAD);
  if (!handle) handle = dlopen("libnccl.so.2", RTLD_LAZY);
  if (!handle) return "not available";
  using GetVersion = int (*)(int*);
  auto get = reinterpret_cast<GetVersion>(dlsym(handle, "ncclGetVersion"));
  int code = 0;
  if (!get || get(&code) != 0) return "unknown";
  const int major = code / 10000, minor = (code % 10000) / 100, patch = code % 100;
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
}

// The processor's name as Linux reports it ("unknown" elsewhere).
std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) != 0) continue;
    const auto colon = line.find(':');
    if (colon != std::string::npos && colon + 2 <= line.size()) return line.substr(colon + 2);
  }
  return "unknown";
}

}  // namespace

void add_version(CLI::App& root) {
  CLI::App* cmd = root.add_subcommand("version", "Versions of logitfuse, LibTorch, CUDA and NCCL, and the CPU kernels in use");
  cmd->callback([] {
    std::cout << "logitfuse " << LOGITFUSE_VERSION << "\n";
    std::cout << "LibTorch " << TORCH_VERSION << "\n";
#ifdef LOGITFUSE_HAVE_CUDA
    const char* kernels = "built";
#else
    const char* kernels = "not built";
#endif
    std::cout << "CUDA " << (at::hasCUDA() ? "available" : "not available") << " (CUDA sources " << kernels << ")\n";
    std::cout << "NCCL " << nccl_version() << "\n";
#ifdef LOGITFUSE_HAVE_MPI
    const char* mpi = "built";
#else
    const char* mpi = "not built";
#endif
#ifdef LOGITFUSE_HAVE_NCCL
    const char* nccl_backend = "built";
#else
    const char* nccl_backend = "not built";
#endif
    std::cout << "distributed: cpu (MPI) " << mpi << ", nccl (c10d) " << nccl_backend << "\n";
    // Trained weights depend on it: LibTorch picks its CPU kernels (and MKL its GEMM) by instruction
    // set, and each sums in its own order, so runs on two processors round differently
    // (ATEN_CPU_CAPABILITY=avx2 chooses the AVX2 kernels on an AVX-512 machine).
    std::cout << "CPU " << cpu_model() << ", " << std::thread::hardware_concurrency() << " threads; ATen CPU kernels "
              << at::get_cpu_capability() << "\n";
  });
}

}  // namespace lf::app
