#include "kernels/cpu/features.h"

namespace lf::kernels::cpu {

bool avx2_available() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
#else
  return false;  // the AVX2 files are built empty on other architectures
#endif
}

}  // namespace lf::kernels::cpu
