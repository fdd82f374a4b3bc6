#!/bin/bash
# Single-node logitfuse training with torchrun, one process per GPU (NCCL).
#
#   scripts/launch/torchrun_train.sh [-n NPROC] RECIPE.yaml [key.path=value ...]
#
# NPROC defaults to the number of GPUs nvidia-smi lists (else 1). torchrun sets RANK, WORLD_SIZE,
# LOCAL_RANK, MASTER_ADDR and MASTER_PORT; each logitfuse process reads them and uses
# cuda:LOCAL_RANK. --resume auto: an interrupted run continues from its newest checkpoint. For
# several nodes run torchrun on each with --nnodes, --node_rank and --master_addr (docs/distributed.md),
# or use slurm_train.sbatch. TORCHRUN=... and LOGITFUSE=... pick other executables.
set -euo pipefail

nproc=""
if [ "${1:-}" = "-n" ]; then
  nproc=$2
  shift 2
fi
if [ $# -lt 1 ]; then
  echo "usage: $0 [-n NPROC] RECIPE.yaml [key.path=value ...]" >&2
  exit 2
fi
if [ -z "$nproc" ]; then
  nproc=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || true)
  [ "${nproc:-0}" -ge 1 ] || nproc=1
fi
LOGITFUSE=${LOGITFUSE:-build/bin/logitfuse}
TORCHRUN=${TORCHRUN:-torchrun}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

exec "$TORCHRUN" --standalone --no-python --nproc_per_node="$nproc" "$LOGITFUSE" train "$@" --resume auto
