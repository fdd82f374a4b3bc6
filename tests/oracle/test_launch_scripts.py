"""scripts/launch/: each script parses (bash -n), and under stand-in launchers that set the environment
the real ones set (srun: SLURM_PROCID/NTASKS/LOCALID/JOB_NODELIST; torchrun: RANK/WORLD_SIZE/...;
mpirun: OMPI_COMM_WORLD_*), `logitfuse train --dry-run` on every rank shows the launch it parsed. The
SLURM script requeues the job when train exits 75 (stopped after a checkpoint). The parsing itself is
unit-tested in test_launch_env.cpp; this checks the scripts' command lines end to end."""
import os
import subprocess
from pathlib import Path

import pytest

from conftest import BINARY, ROOT
from test_train_e2e import workspace  # noqa: F401

LAUNCH = ROOT / "scripts" / "launch"

# Each stand-in logs its arguments and starts the command once per rank, as the real launcher would.
FAKE_SRUN = """#!/bin/bash
echo "srun $*" >> "$FAKE_LOG"
[ -z "${FAKE_SRUN_STATUS:-}" ] || exit "$FAKE_SRUN_STATUS"
status=0
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$((i % 8)) "$@" || status=$?
done
exit $status
"""
FAKE_TORCHRUN = """#!/bin/bash
echo "torchrun $*" >> "$FAKE_LOG"
n=1
while [[ "$1" == --* ]]; do
  case "$1" in --nproc_per_node=*) n=${1#*=} ;; esac
  shift
done
for ((i = 0; i < n; i++)); do
  RANK=$i WORLD_SIZE=$n LOCAL_RANK=$i MASTER_ADDR=127.0.0.1 MASTER_PORT=29400 "$@" || exit $?
done
"""
FAKE_MPIRUN = """#!/bin/bash
echo "mpirun $*" >> "$FAKE_LOG"
shift  # -np
n=$1
shift
while [[ "$1" == -* ]]; do
  case "$1" in -x|--bind-to) shift ;; esac
  shift
done
for ((i = 0; i < n; i++)); do
  OMPI_COMM_WORLD_RANK=$i OMPI_COMM_WORLD_SIZE=$n OMPI_COMM_WORLD_LOCAL_RANK=$i "$@" || exit $?
done
"""
FAKE_SCONTROL = """#!/bin/bash
echo "scontrol $*" >> "$FAKE_LOG"
"""


@pytest.fixture
def launchers(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in [("srun", FAKE_SRUN), ("torchrun", FAKE_TORCHRUN), ("mpirun", FAKE_MPIRUN), ("scontrol", FAKE_SCONTROL)]:
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "launch.log"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_")) and k not in
            ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**base, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log), "LOGITFUSE": str(BINARY)}, log


def recipe(root, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(f"""
run: {{name: l, output_dir: {tmp_path}/run, device: cpu}}
student: {{path: {root}/student, dtype: fp32, chat_template: chatml}}
data: {{train: {root}/train.jsonl, max_length: 48, max_prompt_length: 24}}
""")
    return path


@pytest.mark.parametrize("script", sorted(p.name for p in LAUNCH.iterdir()))
def test_launch_scripts_parse(script):
    subprocess.run(["bash", "-n", str(LAUNCH / script)], check=True)


def test_slurm_script_starts_every_task_and_requeues_after_a_preemption(workspace, tmp_path, launchers):
    env, log = launchers
    env.update({"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "16", "SLURM_JOB_NODELIST": "gpu[07-08]"})
    proc = subprocess.run(["bash", str(LAUNCH / "slurm_train.sbatch"), str(recipe(workspace, tmp_path)), "--dry-run"],
                          env=env, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for rank in (0, 9, 15):
        assert f"slurm: rank {rank} of 16 (local rank {rank % 8}), rendezvous gpu07:24242" in proc.stderr
    assert log.read_text().splitlines()[0].endswith("--dry-run --resume auto")
    text = (LAUNCH / "slurm_train.sbatch").read_text()
    for line in ["--ntasks-per-node=8", "--gpus-per-node=8", "--requeue", "--signal=USR1@120"]:
        assert f"#SBATCH {line}\n" in text
    # train exits 75 (checkpoint written after SIGUSR1): the script asks SLURM to requeue the job.
    env["FAKE_SRUN_STATUS"] = "75"
    proc = subprocess.run(["bash", str(LAUNCH / "slurm_train.sbatch"), "r.yaml"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and "scontrol requeue 4242" in log.read_text()
    # Any other failure is the job's status, without a requeue.
    env["FAKE_SRUN_STATUS"] = "1"
    proc = subprocess.run(["bash", str(LAUNCH / "slurm_train.sbatch"), "r.yaml"], env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and log.read_text().count("scontrol") == 1


def test_torchrun_script_starts_n_ranks(workspace, tmp_path, launchers):
    env, log = launchers
    proc = subprocess.run([str(LAUNCH / "torchrun_train.sh"), "-n", "2", str(recipe(workspace, tmp_path)), "--dry-run"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for rank in (0, 1):
        assert f"torchrun: rank {rank} of 2 (local rank {rank}), rendezvous 127.0.0.1:29400" in proc.stderr
    assert "--standalone --no-python --nproc_per_node=2" in log.read_text()


def test_mpirun_script_runs_cpu_ranks(workspace, tmp_path, launchers):
    env, log = launchers
    proc = subprocess.run([str(LAUNCH / "mpirun_train.sh"), "-n", "3", str(recipe(workspace, tmp_path)), "--dry-run"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("is valid") == 3  # each rank validated the recipe
    line = log.read_text().splitlines()[0]
    assert line.startswith("mpirun -np 3 --oversubscribe") and line.endswith("train " + str(tmp_path / "r.yaml") +
                                                                             " --dry-run dist.backend=cpu --resume auto")
