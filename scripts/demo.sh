#!/usr/bin/env bash
# README command 1: set-up, then the embedded fusion benchmark (docs/benchmark in demo/run_demo.py):
# teachers trained per skill with their own tokenizers, students fused from them, and a report.
# Flags go to demo/run_demo.py (--quick, --seeds N, --fresh, --out DIR, ...).
set -euo pipefail
source "$(dirname "$0")/common.sh"
"$LOGITFUSE_ROOT/scripts/setup.sh"
export LOGITFUSE_BIN="$LOGITFUSE_BUILD/bin/logitfuse"
exec "$LOGITFUSE_PYTHON" "$LOGITFUSE_ROOT/demo/run_demo.py" "$@"
