#!/usr/bin/env bash
# Run here (with a package registry) before scripts/gpu-check.sh: downloads the Debian packages of
# the C++ dependencies and the Python wheels of the test oracles into .deps/, which the device
# tool carries to the GPU machine (no registry there). Idempotent.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$LOGITFUSE_ROOT"
mkdir -p .deps/debs .deps/wheels
debs=(libyaml-cpp-dev libyaml-cpp0.7 libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 libcli11-dev
      libsentencepiece-dev libsentencepiece0 catch2 nlohmann-json3-dev libpcre2-dev libpcre2-8-0
      libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libicu-dev libicu72
      # the served-teacher HTTP client (serve itself needs none); its pkg-config file names openssl, zlib and brotli (Requires.private),
      # whose runtime libraries Ubuntu 24.04 has
      libcpp-httplib-dev libcpp-httplib0.11 libssl-dev zlib1g-dev libbrotli-dev)
cd .deps/debs
for d in "${debs[@]}"; do ls ${d}_*.deb >/dev/null 2>&1 || apt-get download "$d" >/dev/null; done
cd "$LOGITFUSE_ROOT"
# Wheels for the GPU machine's python3 (3.12 on Ubuntu 24.04): what its tests need and it lacks
# (torch, transformers, tokenizers and numpy are there). No POT: it would bring scipy (35 MB) past
# the device tool's 64 MiB carry limit, and the POT checks are CPU-only and run in CI.
rm -f .deps/wheels/numpy-* .deps/wheels/scipy-* .deps/wheels/pot-*
"$LOGITFUSE_PYTHON" -m pip download -q --no-deps -d .deps/wheels --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  pytest==9.2.0 iniconfig pluggy packaging pygments sentencepiece==0.2.3 safetensors==0.8.0
du -sh .deps  # must stay under the device tool's 64 MiB carry limit
