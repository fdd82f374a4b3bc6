"""`logitfuse sweep`: a grid of overrides over a base recipe becomes named runs that are validated up
front, trained one after another by the same binary (or written out as a SLURM job array), recorded in
sweep.json, and skipped once finished. Tiny SFT runs on the train oracle's models keep it fast."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BINARY
from test_train_e2e import workspace  # noqa: F401  (the tiny models and data, built once per module)


def write_base(root, tmp_path, max_steps=2):
    base = tmp_path / "base.yaml"
    base.write_text(f"""
run: {{name: base, output_dir: {tmp_path}/unused, seed: 5, device: cpu}}
student: {{path: {root}/student, dtype: fp32, chat_template: chatml}}
data: {{train: {root}/train.jsonl, max_length: 48, max_prompt_length: 24}}
train: {{micro_batch_size: 2, lr: 1.0e-3, precision: fp32, max_steps: {max_steps}, schedule: constant}}
log: {{every_steps: 1}}
""")
    return base


def write_sweep(tmp_path, body, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(f"base: base.yaml\noutput_root: {tmp_path}/out\n" + body)
    return path


def sweep(*args, expect=0, env=None):
    proc = subprocess.run([str(BINARY), "sweep", *map(str, args)], capture_output=True, text=True, env=env)
    assert proc.returncode == expect, f"exit {proc.returncode}, expected {expect}\n{proc.stdout}\n{proc.stderr}"
    return proc


def record(tmp_path):
    return {r["name"]: r for r in json.loads((tmp_path / "out" / "sweep.json").read_text())["runs"]}


GRID = "grid:\n  train.lr: [1.0e-3, 3.0e-3]\n  loss.distill_weight: [0.0, 0.5]\n"


def test_the_grid_expands_into_deterministic_named_runs(workspace, tmp_path):
    write_base(workspace, tmp_path)
    path = write_sweep(tmp_path, GRID + "list:\n  - {train.lr: 1.0e-2, train.schedule: linear}\n")
    listed = sweep(path, "--list").stdout.splitlines()[1:]
    assert [line.split("\t")[1] for line in listed] == [
        "lr=1.0e-3_distill_weight=0.0", "lr=1.0e-3_distill_weight=0.5",
        "lr=3.0e-3_distill_weight=0.0", "lr=3.0e-3_distill_weight=0.5", "lr=1.0e-2_schedule=linear"]
    assert all(line.split("\t")[2] == "new" for line in listed)
    assert listed[3].split("\t")[3] == "train.lr=3.0e-3 loss.distill_weight=0.5"
    dry = sweep(path, "--dry-run").stdout
    assert dry.count("--resume auto") == 5
    assert "run.output_dir=" in dry and f"{tmp_path}/out/lr=3.0e-3_distill_weight=0.0" in dry
    assert not (tmp_path / "out").exists()  # --list and --dry-run write nothing
    # A name template, with the index to keep names apart.
    named = write_sweep(tmp_path, 'name: "run{index}-lr{train.lr}"\n' + GRID, "named.yaml")
    assert sweep(named, "--list").stdout.splitlines()[2].split("\t")[1] == "run1-lr1.0e-3"


@pytest.mark.parametrize("body, wanted", [
    ("grid:\n  train.lr: [1.0e-3]\n  train.lrr: [1, 2]\n", ["sweep.yaml:5:", "train.lrr", "did you mean 'train.lr'"]),
    ("grid:\n  train.lr: [1.0e-3]\nlist:\n  - {loss.distill_weight: 2.0}\n",
     ["sweep.yaml:6:", "loss.distill_weight", "must be in [0, 1]"]),
    ("gird:\n  train.lr: [1.0e-3]\n", ["sweep.yaml:3:", "unknown key 'gird'", "did you mean 'grid'"]),
    ("grid:\n  run.output_dir: [a, b]\n", ["run.output_dir is set by the sweep"]),
    ("grid:\n  train.lr: 1.0e-3\n", ["expected a non-empty list"]),
    ("overrides: {train.lr: 1.0e-3}\ngrid:\n  train.lr: [1.0e-3]\n", ["also set under overrides"]),
])
def test_a_bad_sweep_is_one_exit_2_line_before_anything_runs(workspace, tmp_path, body, wanted):
    write_base(workspace, tmp_path)
    path = write_sweep(tmp_path, body)
    for mode in ("local", "slurm"):
        proc = sweep(path, "--mode", mode, expect=2)
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1, proc.stderr
        assert all(w in lines[0] for w in wanted), lines[0]
        assert not (tmp_path / "out").exists()  # no run started, no script written


def test_local_runs_train_each_run_and_a_rerun_skips_finished_ones(workspace, tmp_path):
    write_base(workspace, tmp_path)
    path = write_sweep(tmp_path, "grid:\n  train.lr: [1.0e-3, 1.0e-2]\n")
    out = sweep(path)
    runs = record(tmp_path)
    assert list(runs) == ["lr=1.0e-3", "lr=1.0e-2"]
    for name, lr in [("lr=1.0e-3", 1e-3), ("lr=1.0e-2", 1e-2)]:
        run_dir = tmp_path / "out" / name
        assert (run_dir / "final" / "config.json").exists()
        assert runs[name]["status"] == "completed" and runs[name]["exit_code"] == 0
        assert runs[name]["final_metrics"]["step"] == 2
        assert runs[name]["final_metrics"]["lr"] == pytest.approx(lr)  # the override reached the run
        assert f"name: {name}" in (run_dir / "recipe.resolved.yaml").read_text()
        assert f"{name}\tcompleted\tstep=2" in out.stdout
    # Same initialisation, different learning rates: the second step's losses differ.
    assert runs["lr=1.0e-3"]["final_metrics"]["loss"] != runs["lr=1.0e-2"]["final_metrics"]["loss"]

    stamps = {n: (tmp_path / "out" / n / "final" / "model.safetensors").stat().st_mtime_ns for n in runs}
    # Re-run with one more grid value: the finished runs are skipped, only the new one trains.
    path = write_sweep(tmp_path, "grid:\n  train.lr: [1.0e-3, 1.0e-2, 3.0e-3]\n")
    rerun = sweep(path)
    runs = record(tmp_path)
    assert [runs[n]["status"] for n in runs] == ["skipped", "skipped", "completed"]
    assert runs["lr=1.0e-3"]["final_metrics"]["step"] == 2  # still reported for skipped runs
    assert "finished before, skipped" in rerun.stderr
    assert stamps == {n: (tmp_path / "out" / n / "final" / "model.safetensors").stat().st_mtime_ns for n in stamps}


def test_a_failing_run_does_not_stop_the_others_and_the_sweep_exits_1(workspace, tmp_path):
    write_base(workspace, tmp_path)
    # A missing data file passes recipe validation and fails when that run starts.
    path = write_sweep(tmp_path, f"list:\n  - {{data.train: {tmp_path}/missing.jsonl}}\n  - {{train.lr: 2.0e-3}}\n")
    proc = sweep(path, expect=1)
    runs = record(tmp_path)
    statuses = [(r["status"], r.get("exit_code")) for r in runs.values()]
    assert statuses == [("failed", 2), ("completed", 0)]
    assert "1 of 2 sweep runs failed" in proc.stderr and "missing.jsonl" in proc.stderr  # the log's tail
    failed_dir = Path(list(runs.values())[0]["output_dir"])
    assert "missing.jsonl" in (failed_dir / "train.log").read_text()


def test_a_signal_stops_the_sweep_with_a_checkpoint_and_a_rerun_finishes(workspace, tmp_path):
    write_base(workspace, tmp_path, max_steps=400)
    path = write_sweep(tmp_path, "grid:\n  train.lr: [1.0e-3, 2.0e-3]\n")
    proc = subprocess.Popen([str(BINARY), "sweep", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "out" / "lr=1.0e-3" / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    runs = record(tmp_path)
    assert [r["status"] for r in runs.values()] == ["preempted", "pending"]
    assert runs["lr=1.0e-3"]["exit_code"] == 75
    assert list((tmp_path / "out" / "lr=1.0e-3" / "checkpoints").iterdir())  # the child wrote its checkpoint
    stopped_at = runs["lr=1.0e-3"]["final_metrics"]["step"]
    assert 0 < stopped_at < 400
    sweep(path)
    runs = record(tmp_path)
    assert [r["status"] for r in runs.values()] == ["completed", "completed"]
    assert "resuming from" in (tmp_path / "out" / "lr=1.0e-3" / "train.log").read_text()


def test_slurm_mode_writes_a_job_array_that_runs_its_task(workspace, tmp_path):
    write_base(workspace, tmp_path)
    path = write_sweep(tmp_path, GRID + "slurm: {partition: gpu, time: '01:00:00', max_parallel: 2, gpus_per_node: 0}\n")
    out = sweep(path, "--mode", "slurm").stdout
    script = tmp_path / "out" / "sweep.sbatch"
    assert f"sbatch {script}" in out
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for line in ["#SBATCH --array=0-3%2", "#SBATCH --requeue", "#SBATCH --signal=USR1@120", "#SBATCH --partition=gpu",
                 "#SBATCH --time=01:00:00", "#SBATCH --job-name=sweep"]:
        assert line + "\n" in text
    assert "--gpus-per-node" not in text
    manifest = (tmp_path / "out" / "runs.tsv").read_text().splitlines()
    assert len(manifest) == 5 and manifest[3].split("\t")[:3] == ["2", "lr=3.0e-3_distill_weight=0.0", "new"]
    assert [r["status"] for r in record(tmp_path).values()] == ["pending"] * 4

    # Array task 1 under a stand-in srun that runs its command: the run trains, and a requeue is asked
    # for when train exits 75.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\n[ -z "${FAKE_SRUN_STATUS:-}" ] || exit "$FAKE_SRUN_STATUS"\nexec "$@"\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/scontrol.log\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "77"}
    subprocess.run(["bash", str(script)], check=True, env=env, capture_output=True, text=True)
    assert (tmp_path / "out" / "lr=1.0e-3_distill_weight=0.5" / "final" / "config.json").exists()
    again = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "has finished" in again.stdout
    preempted = subprocess.run(["bash", str(script)], env={**env, "SLURM_ARRAY_TASK_ID": "2", "FAKE_SRUN_STATUS": "75"},
                               capture_output=True, text=True)
    assert preempted.returncode == 0 and (tmp_path / "scontrol.log").read_text() == "requeue 77\n"

    # Re-run: the finished run leaves the array.
    sweep(path, "--mode", "slurm")
    assert "#SBATCH --array=0,2-3%2\n" in script.read_text()
    assert [r["status"] for r in record(tmp_path).values()] == ["pending", "skipped", "pending", "pending"]
