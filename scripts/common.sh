# Sourced by the scripts: where the Python environment and the build live.
# LOGITFUSE_HOME holds state that outlives a checkout (the venv with LibTorch), so CI reruns and
# fresh clones reuse it.
LOGITFUSE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOGITFUSE_HOME=${LOGITFUSE_HOME:-$HOME/.cache/logitfuse}
LOGITFUSE_VENV=${LOGITFUSE_VENV:-$LOGITFUSE_HOME/venv}
LOGITFUSE_BUILD=${LOGITFUSE_BUILD:-$LOGITFUSE_ROOT/build}
LOGITFUSE_PYTHON=$LOGITFUSE_VENV/bin/python
if [ -d /usr/local/cuda/bin ]; then PATH=/usr/local/cuda/bin:$PATH; fi
export PATH LOGITFUSE_ROOT LOGITFUSE_HOME LOGITFUSE_VENV LOGITFUSE_BUILD LOGITFUSE_PYTHON
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
