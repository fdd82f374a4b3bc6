"""The main job in its --quick form: data, tokenizers, teachers, students, the DLF part and the report
run end to end through logitfuse (the accuracies of such tiny runs are not asserted; the pipeline is)."""
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
    # Dynamic Logit Fusion on the same skills: every strategy on each skill, from logitfuse eval.
    dlf = report["dlf"]["strategies"]
    assert {"large_only", "static", "dynamic", "dynamic, both experts", "expert alone"} <= set(dlf)
    for scores in dlf.values():
        assert all(0.0 <= scores[skill] <= 1.0 for skill in ("arithmetic", "reverse"))
    assert "dynamic >= static >= large-only on" in proc.stdout
    for row in ("dynamic", "static", "large_only"):
        metrics = json.loads((tmp_path / "eval" / "dlf" / f"{row}-arithmetic" / "metrics.json").read_text())
        assert metrics["strategy"] == row
    # Each model's tokenizer differs: the teachers were trained by logitfuse on their own skill.
    for skill in ("arithmetic", "reverse"):
        assert (tmp_path / "teachers" / skill / "final" / "config.json").exists()
    # A rerun reuses teachers and finished students and prints the same table.
    again = subprocess.run([sys.executable, str(ROOT / "demo" / "run_demo.py"), "--quick", "--out", str(tmp_path)],
                           capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0
    table = lambda out: [l for l in out.splitlines() if l.startswith(("teacher-", "sft", "fused", "large_only", "static",
                                                                      "dynamic", "expert alone"))]
    assert table(again.stdout) == table(proc.stdout)
