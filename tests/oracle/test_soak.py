"""The kill-and-resume soak at a size for CI (scripts/soak.sh runs the long one): a fusion run SIGKILLed
at random moments, some while a checkpoint or final/ is being written, resumed each time, ends with
exactly the weights of an uninterrupted run; also with two MPI ranks, killing a random rank."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import BINARY, ROOT
from test_train_dist import _built_with_mpi


def soak(*args):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak.py"), *args], capture_output=True, text=True,
                          env={**os.environ, "LOGITFUSE_BIN": str(BINARY)}, timeout=900)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "bit-identical to the uninterrupted run" in proc.stdout
    return proc.stdout


def test_killed_and_resumed_eight_times_ends_bit_identical():
    out = soak("--kills", "8", "--seed", "1")
    assert out.count("soak: kill ") == 8


@pytest.mark.skipif(shutil.which("mpirun") is None or not _built_with_mpi(), reason="needs mpirun and an MPI build")
def test_two_ranks_killed_at_random_end_bit_identical():
    out = soak("--kills", "3", "--ranks", "2", "--seed", "2")
    assert out.count("soak: kill ") == 3
