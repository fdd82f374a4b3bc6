#!/bin/bash
# logitfuse training on CPU ranks with OpenMPI (dist.backend: cpu), e.g. to check a recipe's
# data-parallel behaviour without GPUs.
#
#   scripts/launch/mpirun_train.sh [-n NRANKS] RECIPE.yaml [key.path=value ...]
#
# NRANKS defaults to 2. Each rank is one logitfuse process with one OpenMP thread; MPI forms the
# world (OMPI_COMM_WORLD_RANK/SIZE), no rendezvous address is needed. --oversubscribe allows more
# ranks than cores; as root, mpirun also needs --allow-run-as-root (added when running as root).
# --resume auto: an interrupted run continues. MPIRUN=... and LOGITFUSE=... pick other executables.
set -euo pipefail

nranks=2
if [ "${1:-}" = "-n" ]; then
  nranks=$2
  shift 2
fi
if [ $# -lt 1 ]; then
  echo "usage: $0 [-n NRANKS] RECIPE.yaml [key.path=value ...]" >&2
  exit 2
fi
LOGITFUSE=${LOGITFUSE:-build/bin/logitfuse}
MPIRUN=${MPIRUN:-mpirun}
as_root=()
[ "$(id -u)" -ne 0 ] || as_root=(--allow-run-as-root)

exec "$MPIRUN" -np "$nranks" --oversubscribe --bind-to none ${as_root[@]+"${as_root[@]}"} -x OMP_NUM_THREADS=1 \
  "$LOGITFUSE" train "$@" dist.backend=cpu --resume auto
