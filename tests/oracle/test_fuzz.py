"""The parser fuzzers at a size for CI (scripts/fuzz.sh SECONDS runs the long one): every libFuzzer
target of fuzz/ (ASan + UBSan, one per parser of outside input) is built with clang and run for a few
seconds on its seed corpus, and none may crash, hang or leave an uncaught non-input error."""
import os
import re
import shutil
import subprocess

import pytest

from conftest import ROOT

SECONDS = int(os.environ.get("LOGITFUSE_CI_FUZZ_SECONDS", "5"))


@pytest.mark.skipif(shutil.which("clang++") is None, reason="needs clang (scripts/setup.sh installs it)")
def test_every_fuzz_target_runs_without_a_crash(tmp_path):
    proc = subprocess.run([str(ROOT / "scripts" / "fuzz.sh"), str(SECONDS)], capture_output=True, text=True,
                          env={**os.environ, "FUZZ_WORK": str(tmp_path), "FUZZ_JOBS": str(min(4, os.cpu_count() or 1))},
                          timeout=1200)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-5000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("fuzz_")]
    targets = sorted(p.stem for p in (ROOT / "fuzz").glob("fuzz_*.cpp"))
    assert sorted(line.split()[0] for line in lines) == targets
    for line in lines:
        m = re.match(r"(\S+)\s+(\d+) executions\s+(\d+) crashes$", line)
        assert m, line
        assert int(m.group(2)) > 0 and int(m.group(3)) == 0, line
