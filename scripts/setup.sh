#!/usr/bin/env bash
# Idempotent set-up: Debian packages, the Python environment (LibTorch from the torch wheel and the
# oracle libraries), then configure and build. Ends with build/bin/logitfuse. A second run only
# rebuilds what changed.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$LOGITFUSE_ROOT"

# 1. Debian packages for the C++ build.
packages=(cmake ninja-build g++ pkg-config ccache python3-venv libyaml-cpp-dev libspdlog-dev libfmt-dev
          libcli11-dev libsentencepiece-dev catch2 nlohmann-json3-dev libpcre2-dev libicu-dev
          libopenmpi-dev openmpi-bin
          # The fuzz build (scripts/fuzz.sh, tests/oracle/test_fuzz.py): clang, and libFuzzer with the
          # sanitizer runtimes, which clang only recommends.
          clang libclang-rt-14-dev
          # `serve`'s HTTP layer (lib/serve/http_server.cpp).
          libcpp-httplib-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. Python environment, reinstalled only when requirements.txt changes.
stamp="$LOGITFUSE_VENV/.requirements.sha256"
extra_oracles="mistral-common==1.13.1"
want=$( (cat scripts/requirements.txt; echo "$extra_oracles") | sha256sum | cut -d' ' -f1)
if [ ! -x "$LOGITFUSE_PYTHON" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "preparing the Python environment in $LOGITFUSE_VENV (LibTorch comes from the torch wheel)"
  mkdir -p "$LOGITFUSE_HOME"
  [ -x "$LOGITFUSE_PYTHON" ] || python3 -m venv "$LOGITFUSE_VENV"
  "$LOGITFUSE_PYTHON" -m pip install -q --upgrade pip
  "$LOGITFUSE_PYTHON" -m pip install -q -r scripts/requirements.txt
  # Real Mistral SentencePiece models for the tokenizer oracle test. --no-deps: the package pins
  # numpy<2.4, which the test does not need.
  "$LOGITFUSE_PYTHON" -m pip install -q --no-deps $extra_oracles
  echo "$want" > "$stamp"
fi

# 3. Configure and build. CUDA sources are compiled when nvcc is present (nothing runs them here);
# TORCH_CUDA_ARCH_LIST defaults to Hopper, the GPU machines' architecture.
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
export CCACHE_SLOPPINESS=${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}
# Paths under the checkout are hashed relative to it, so a fresh clone elsewhere (CI) reuses the cache.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$LOGITFUSE_ROOT}
torch_prefix=$("$LOGITFUSE_PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')
if [ ! -f "$LOGITFUSE_BUILD/build.ninja" ]; then
  log "configuring $LOGITFUSE_BUILD"
  cmake -S . -B "$LOGITFUSE_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$torch_prefix${CMAKE_PREFIX_PATH:+;$CMAKE_PREFIX_PATH}" ${LOGITFUSE_CMAKE_ARGS:-} >/dev/null
fi
log "building (ninja, $(nproc) cores)"
ninja -C "$LOGITFUSE_BUILD" -j "${LOGITFUSE_JOBS:-$(nproc)}"
[ -x "$LOGITFUSE_BUILD/bin/logitfuse" ] || { log "build failed: no $LOGITFUSE_BUILD/bin/logitfuse"; exit 1; }
log "ready: $LOGITFUSE_BUILD/bin/logitfuse"
