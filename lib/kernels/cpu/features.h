// What the CPU running us can do, for the kernels compiled for one instruction set only
// (ce_kl_avx2, adamw_avx2): their callers check here before calling them.
#pragma once

namespace lf::kernels::cpu {

// AVX2 and FMA both present (read once).
bool avx2_available();

}  // namespace lf::kernels::cpu
