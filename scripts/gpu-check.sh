#!/usr/bin/env bash
# The GPU check: one prepared script for the GPU machine (no package registry; python3 there has
# torch 2.11.0+cu130, transformers and tokenizers). Run scripts/fetch-gpu-deps.sh here first and
# carry .deps. It unpacks the Debian packages into a prefix, builds with CUDA for Hopper, runs the
# unit tests, the oracle tests (CPU and CUDA device), and the benchmarks on the GPU.
#   device run: bash scripts/gpu-check.sh      (carry: [".deps/debs", ".deps/wheels"])
# Order: what needs the GPU most first (the CUDA kernels' tests and benchmark, NCCL, the oracle tests
# on CUDA), then the CPU unit tests that CI also runs.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PREFIX=$ROOT/.deps/prefix
BUILD=$ROOT/build-gpu
step() { printf '\n=== %s (%s)\n' "$*" "$(date +%H:%M:%S)"; }
status=0

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'

step "dependencies from .deps"
[ -d .deps/debs ] || { echo "no .deps/debs: run scripts/fetch-gpu-deps.sh on the build machine and carry .deps"; exit 2; }
mkdir -p "$PREFIX"
for deb in .deps/debs/*.deb; do dpkg -x "$deb" "$PREFIX"; done
# Wheels are zip files: unpacking them needs no pip (and no PEP 668 exemption).
mkdir -p "$ROOT/.deps/py"
for w in .deps/wheels/*.whl; do python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$w" "$ROOT/.deps/py"; done
export PYTHONPATH=$ROOT/.deps/py${PYTHONPATH:+:$PYTHONPATH}
export LD_LIBRARY_PATH=$PREFIX/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PKG_CONFIG_PATH=$PREFIX/usr/lib/x86_64-linux-gnu/pkgconfig:$PREFIX/usr/share/pkgconfig
export PKG_CONFIG_SYSROOT_DIR=$PREFIX
# Debian's .pc files name /usr/lib/...: with the sysroot they point into the prefix.

step "configure and build (CUDA, sm_90a)"
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLOGITFUSE_CUDA=ON \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$PREFIX/usr;$PREFIX/usr/lib/x86_64-linux-gnu/cmake;$PREFIX/usr/share/cmake" \
  -DCMAKE_INCLUDE_PATH="$PREFIX/usr/include" -DCMAKE_LIBRARY_PATH="$PREFIX/usr/lib/x86_64-linux-gnu" >/dev/null || exit 1
ninja -C "$BUILD" -j "$(nproc)" > "$BUILD.log" 2>&1 || { grep -B2 -A12 -m3 "error" "$BUILD.log" | head -60; tail -20 "$BUILD.log"; exit 1; }
"$BUILD/bin/logitfuse" version

step "CUDA kernel tests (issue 7)"
"$BUILD/bin/logitfuse_tests" "[cuda]" 2>&1 | tail -60 || status=1
if command -v compute-sanitizer >/dev/null || [ -x /usr/local/cuda/bin/compute-sanitizer ]; then
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  step "CUDA kernel tests under compute-sanitizer memcheck (small shapes)"
  LOGITFUSE_KERNEL_TEST_SMALL=1 timeout 150 "$sanitizer" --tool memcheck --error-exitcode 1 \
    "$BUILD/bin/logitfuse_tests" "[cuda]" 2>&1 | tail -30 || status=1
else
  echo "compute-sanitizer not found: memcheck skipped"
fi

step "kernel benchmark (fused vs copy bandwidth vs LibTorch)"
"$BUILD/bin/logitfuse" --log-level warn bench kernels --device cuda || status=1
"$BUILD/bin/logitfuse" --log-level warn bench kernels --device cuda --rows 1024 --dlf-dtype bf16 --skip-aten 2>&1 \
  | tail -3 || status=1

# GPU_CHECK_PROFILE=1: Nsight Compute's view of the DLF kernel (speed of light, occupancy, warp
# stalls), for the work on its speed; skipped when ncu is missing or has no counter permission.
if [ "${GPU_CHECK_PROFILE:-0}" = 1 ]; then
  step "ncu profile of the DLF solve kernel"
  ncu_bin=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  if [ -x "$ncu_bin" ]; then
    timeout 120 "$ncu_bin" --kernel-name regex:dlf_kl_kernel --launch-skip 2 --launch-count 1 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      "$BUILD/bin/logitfuse" --log-level warn bench kernels --device cuda --rows 8 --vocab 1000 --iters 3 \
      --warmup 1 --skip-aten 2>&1 | grep -v '^{' | tail -80 || true
  else
    echo "ncu not found"
  fi
fi

for extra in scripts/gpu-check.d/*.sh; do
  [ -e "$extra" ] || continue
  step "$extra"
  BUILD=$BUILD timeout 120 bash "$extra" || status=1
done

if [ "${GPU_CHECK_QUICK:-0}" = 1 ]; then step "GPU_CHECK_QUICK=1: stopping before the full test suites (status $status)"; exit $status; fi

step "oracle tests: model logits against transformers on CPU and CUDA"
export LOGITFUSE_BIN=$BUILD/bin/logitfuse LOGITFUSE_TEST_DEVICES=cpu,cuda
python3 -m pytest tests/oracle/test_model_logits.py -q -p no:cacheprovider 2>&1 | tail -8 || status=1

step "the other oracle tests"
# test_gld_pot.py needs POT (not carried; CPU-only checks that CI runs).
python3 -m pytest tests/oracle -q -p no:cacheprovider --ignore=tests/oracle/test_gld_pot.py \
  --ignore=tests/oracle/test_model_logits.py 2>&1 | tail -12 || status=1

step "unit tests"
# The whole log goes to a file (and to $OUT when the device tool provides it); failed tests' own
# output, crash stacks included, is printed here.
unit_log=${OUT:-$BUILD}/unit-tests.log
ctest --test-dir "$BUILD" -j 8 --output-on-failure > "$unit_log" 2>&1 || status=1
tail -5 "$unit_log"
grep -q "tests failed" "$unit_log" && grep -E -A40 "^[0-9]+/[0-9]+ Test +#[0-9]+: .*(Failed|Exception|SEGFAULT|Subprocess aborted)" "$unit_log" | head -150

step "loss-term benchmark on the GPU (ratios to cross entropy)"
python3 bench/loss_terms.py --device cuda --dtype bf16 --rows 4096 --vocab 151936 --k 10 --iters 20 --binary "$BUILD/bin/logitfuse" || status=1

step "done (status $status)"
exit $status
