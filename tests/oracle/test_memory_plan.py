"""The memory plan (`train --dry-run`, and the check before every run): its parameter counts equal
what transformers builds from the same config.json; the InfiGFusion recipe (Phi-4 from three 14-24B
teachers, the real models' configs in tests/fixtures/paper_models) fits one node of 8 x 80 GB at ZeRO-3
with sharded teachers and not without; `auto` placement shards teachers only when replicas do not
fit; and `train` refuses a run whose plan exceeds the memory per rank, before writing anything."""
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from conftest import BINARY, ROOT
from test_train_e2e import recipe, workspace  # noqa: F401 (workspace is a fixture)

FIXTURES = ROOT / "tests" / "fixtures" / "paper_models"
INFIGFUSION = ROOT / "configs" / "infigfusion-phi4.yaml"
MODELS = {"student": "phi-4", "teachers.0": "qwen2.5-14b-instruct", "teachers.1": "qwen2.5-coder-14b-instruct",
          "teachers.2": "mistral-small-24b-instruct-2501"}
PATHS = [f"{key}.path={FIXTURES / name}" for key, name in MODELS.items()]
UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def dry_run(*args):
    return subprocess.run([str(BINARY), "train", str(INFIGFUSION), *PATHS, *map(str, args), "--dry-run"],
                          capture_output=True, text=True, timeout=120)


def total(stdout):
    match = re.search(r"^\s+total\s+([\d.]+) (\w+)$", stdout, re.M)
    assert match, stdout
    return float(match.group(1)) * UNITS[match.group(2)]


@pytest.mark.parametrize("name", sorted(MODELS.values()) + ["llama-2-13b", "llama-2-7b"])
def test_planned_parameter_counts_equal_the_transformers_model(name, tmp_path):
    config = AutoConfig.from_pretrained(FIXTURES / name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    expected = sum(p.numel() for p in model.parameters())
    (tmp_path / "train.jsonl").write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n")
    (tmp_path / "r.yaml").write_text(f"student: {{path: {FIXTURES / name}}}\ndata: {{train: {tmp_path / 'train.jsonl'}}}\n"
                                     "run: {device: cpu, memory_gb: 1.0e+6}\n")
    proc = subprocess.run([str(BINARY), "train", str(tmp_path / "r.yaml"), "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"parameters of student: {expected}\n" in proc.stdout, proc.stdout


def test_infigfusion_recipe_fits_8x80gb_at_zero3_with_sharded_teachers():
    proc = dry_run("--world-size", 8)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert "(8 rank(s), dist.zero 3)" in proc.stdout and "(run.memory_gb): fits" in proc.stdout
    assert proc.stdout.count(": shard\n") == 3
    assert total(proc.stdout) <= 80e9


def test_the_same_run_without_sharding_is_refused_naming_the_biggest_item():
    replicated = [f"teachers.{i}.placement=replicate" for i in range(3)]
    proc = dry_run("--world-size", 8, "dist.zero=2", *replicated)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "does NOT fit" in proc.stdout
    line = proc.stderr.strip().splitlines()[-1]
    assert "memory plan: 8 rank(s) at dist.zero 2 need" in line and "the biggest item is" in line, line
    # A single GPU cannot hold it even fully sharded.
    assert dry_run("--world-size", 1).returncode == 2


def test_auto_placement_shards_teachers_only_when_replicas_do_not_fit():
    auto = [f"teachers.{i}.placement=auto" for i in range(3)]
    tight = dry_run("--world-size", 8, *auto)
    assert tight.returncode == 0, tight.stderr
    assert tight.stdout.count(": shard\n") >= 1
    roomy = dry_run("--world-size", 8, *auto, "run.memory_gb=1000")
    assert roomy.returncode == 0 and roomy.stdout.count(": replicate\n") == 3, roomy.stdout
    # More ranks shard more: per rank, the plan falls with the world size.
    assert total(dry_run("--world-size", 16).stdout) < total(dry_run("--world-size", 8).stdout)


def test_train_refuses_a_run_that_does_not_fit_before_writing_anything(workspace, tmp_path):
    path, args = recipe(workspace, tmp_path / "run", **{"run.memory_gb": 0.001})
    proc = subprocess.run([str(BINARY), "train", str(path), *args], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "memory plan: 1 rank(s) at dist.zero 0 need" in line and "the biggest item is" in line and "hint:" in line
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "final").exists()


def test_dlf_recipe_fits_one_80gb_gpu_at_batch_4_and_not_at_8_nor_on_40gb():
    paths = [f"models.large.path={FIXTURES / 'llama-2-13b'}", f"models.base.path={FIXTURES / 'llama-2-7b'}",
             f"models.experts.0.path={FIXTURES / 'llama-2-7b'}", f"models.experts.1.path={FIXTURES / 'llama-2-7b'}"]

    def dry(memory_gb, *extra):
        return subprocess.run([str(BINARY), "generate", str(ROOT / "configs" / "dlf-llama2.yaml"), *paths, *extra,
                               "--dry-run", "--memory-gb", str(memory_gb)], capture_output=True, text=True, timeout=120)

    proc = dry(80)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert "parameters of llama-2-13b: 13015864320\n" in proc.stdout  # Llama-2-13B's 13.0B
    assert "parameters of math: 6738415616\n" in proc.stdout            # Llama-2-7B's 6.7B
    assert "(--memory-gb): fits" in proc.stdout
    # Twice the batch: the four models' KV caches no longer fit beside their weights.
    assert dry(80, "generation.batch_size=8").returncode == 2
    small = dry(40)
    assert small.returncode == 2 and "the biggest item is llama-2-13b weights" in small.stderr, small.stderr
