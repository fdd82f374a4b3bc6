#!/usr/bin/env bash
# Kill-and-resume soak: scripts/soak.sh [KILLS [RANKS]] (default 50 kills, 1 rank). A small fusion run is
# SIGKILLed KILLS times at random moments and resumed each time; its final weights must equal an
# uninterrupted run's bit for bit (scripts/soak.py; docs/reliability.md).
set -euo pipefail
source "$(dirname "$0")/common.sh"
"$LOGITFUSE_ROOT/scripts/setup.sh"
export LOGITFUSE_BIN="$LOGITFUSE_BUILD/bin/logitfuse"
exec "$LOGITFUSE_PYTHON" "$LOGITFUSE_ROOT/scripts/soak.py" --kills "${1:-50}" --ranks "${2:-1}"
