"""The main job in its --quick form: data, tokenizers, teachers, students and the report run end to
end through logitfuse (the accuracies of such tiny runs are not asserted; the pipeline is)."""
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import BINARY, ROOT


def test_demo_quick_produces_the_report(tmp_path):
    env = {**os.environ, "LOGITFUSE_BIN": str(BINARY)}
    proc = subprocess.run([sys.executable, str(ROOT / "demo" / "run_demo.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["models"]) == {"teacher-arithmetic", "teacher-reverse", "sft", "fused"}
    for scores in report["models"].values():
        for skill in ("arithmetic", "reverse"):
            assert 0.0 <= scores[skill]["mean"] <= 1.0
            assert scores[f"{skill}-ppl"]["mean"] >= 1.0
    assert "Fusion benchmark" in proc.stdout and "fused beats SFT-only on" in proc.stdout
    # Each model's tokenizer differs: the teachers were trained by logitfuse on their own skill.
    for skill in ("arithmetic", "reverse"):
        assert (tmp_path / "teachers" / skill / "final" / "config.json").exists()
    # A rerun reuses teachers and finished students and prints the same table.
    again = subprocess.run([sys.executable, str(ROOT / "demo" / "run_demo.py"), "--quick", "--out", str(tmp_path)],
                           capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0
    table = lambda out: [l for l in out.splitlines() if l.startswith(("teacher-", "sft", "fused"))]
    assert table(again.stdout) == table(proc.stdout)
