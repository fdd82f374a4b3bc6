"""Behaviour of `logitfuse train`, recorded so that a change meant to keep it (a refactor) can be checked
to keep it bit for bit: the final weights' hashes and metrics.jsonl (times and memory removed) of a
fixed set of runs on the tests' tiny models (tests/oracle/test_train_e2e.py's workspace).

    python scripts/trainer_parity.py record BEFORE.json [--workspace DIR]   # on the code before
    python scripts/trainer_parity.py record AFTER.json  [--workspace DIR]   # on the code after
    python scripts/trainer_parity.py compare BEFORE.json AFTER.json        # exit 1 on any difference

Both records must come from the same machine and the same workspace (float rounding differs between
processors; the workspace's tokenizers are trained anew when it is built): --workspace keeps it.
LOGITFUSE_BIN picks the binary (default build/bin/logitfuse)."""
import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "oracle"))
BINARY = Path(os.environ.get("LOGITFUSE_BIN", ROOT / "build" / "bin" / "logitfuse"))
os.environ["LOGITFUSE_BIN"] = str(BINARY)

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from test_train_e2e import build_workspace, recipe  # noqa: E402
from test_train_dist import mpirun_command  # noqa: E402

# What a refactor may change without changing behaviour: how long things took and how much memory.
VOLATILE = {"tokens_per_s", "peak_memory_bytes"}
COMMON = {"train.max_steps": 6, "checkpoint.every_steps": 2, "data.eval": "null", "log.every_steps": 1}
CASES = {
    "sft": {"teachers": "[]"},
    "kl-span": {"loss.token.type": "kl", "alignment.positions": "span"},
    "gld+uld": {},
    "on-policy": {"loss.on_policy.weight": 0.5, "loss.on_policy.max_new_tokens": 8},
    "zero1-2ranks": {"dist.zero": 1, "train.micro_batch_size": 2, "ranks": 2},
    "zero3-2ranks": {"dist.zero": 3, "train.micro_batch_size": 2, "ranks": 2},
    "killed-resumed": {"kill_after": 12, "train.max_steps": 40},
    "logits-cache": {"alignment.positions": "span", "loss.token.type": "kl", "loss.token.top_k": 8, "cache": True},
    "min-ce-mix": {"loss.teacher_mix": "min_ce"},
    "teacher-shard-2ranks": {"teachers.0.placement": "shard", "train.micro_batch_size": 2, "ranks": 2},
    "exact-no-graph": {"alignment.positions": "exact", "loss.graph.type": "none"},
    # A LoRA student (docs/lora.md), with dropout through checkpointed layers: what it writes is a
    # PEFT adapter directory, compared tensor by tensor like a model.
    "lora-dropout": {"student.lora.r": 4, "student.lora.alpha": 8, "student.lora.dropout": 0.1,
                     "train.activation_checkpointing": "true"},
}


def run(*args, check=True):
    proc = subprocess.run([str(BINARY), *map(str, args)], capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        sys.exit(f"trainer_parity: logitfuse {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def logged_steps(out):
    path = Path(out) / "metrics.jsonl"
    return sum(1 for line in path.read_text().splitlines() if '"loss"' in line) if path.exists() else 0


def train_case(workspace, out, spec):
    spec = dict(spec)
    ranks = spec.pop("ranks", 1)
    kill_after = spec.pop("kill_after", None)
    cache = spec.pop("cache", False)
    overrides = {**COMMON, **spec}
    if cache:
        overrides.update({"teachers.0.logits_cache": out.parent / f"{out.name}-cache-a",
                          "teachers.1.logits_cache": out.parent / f"{out.name}-cache-b"})
    path, args = recipe(workspace, out, **overrides)
    if cache:
        run("cache-logits", path, *args)
    if ranks > 1:
        proc = subprocess.run(mpirun_command(ranks, ["train", path, *args], uuid.uuid4().hex), capture_output=True,
                              text=True, timeout=900)
        if proc.returncode != 0:
            sys.exit(f"trainer_parity: {out.name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    elif kill_after:
        # SIGKILL once `kill_after` steps are logged, then resume from the newest complete checkpoint.
        proc = subprocess.Popen([str(BINARY), "train", path, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while logged_steps(out) < kill_after and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        if proc.wait() != -signal.SIGKILL:
            sys.exit(f"trainer_parity: {out.name} ended before it could be killed (exit {proc.returncode})")
        run("train", path, *args, "--resume", "auto")
    else:
        run("train", path, *args)


def tensor_hashes(model_dir):
    """SHA-256 of each tensor's bytes (the file's header may order or pad them otherwise)."""
    adapter = Path(model_dir) / "adapter_model.safetensors"
    tensors = load_file(str(adapter if adapter.exists() else Path(model_dir) / "model.safetensors"))
    return {name: hashlib.sha256(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
            for name, t in sorted(tensors.items())}


def stable_metrics(path):
    """metrics.jsonl without times and memory; a step logged again after a resume (the killed run
    may have logged steps past its last checkpoint, how many depends on when the kill landed) counts
    once, as last logged."""
    lines = {}
    for line in Path(path).read_text().splitlines():
        entry = {k: v for k, v in json.loads(line).items() if k not in VOLATILE}
        lines[(entry.get("step"), tuple(sorted(entry)))] = entry
    return list(lines.values())


def record(out_json, workspace):
    if not (workspace / "student" / "config.json").exists():
        from conftest import run_logitfuse
        build_workspace(workspace, run_logitfuse)
    runs = Path(tempfile.mkdtemp(prefix="parity-"))
    result = {"binary": str(BINARY), "cases": {}}
    try:
        for name, spec in CASES.items():
            started = time.time()
            out = runs / name
            train_case(workspace, out, spec)
            metrics = stable_metrics(out / "metrics.jsonl")
            result["cases"][name] = {"weights": tensor_hashes(out / "final"), "metrics": metrics}
            print(f"{name}: {len(metrics)} metric lines, {time.time() - started:.0f} s", flush=True)
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    Path(out_json).write_text(json.dumps(result, indent=1) + "\n")


def compare(a_json, b_json):
    a, b = json.loads(Path(a_json).read_text()), json.loads(Path(b_json).read_text())
    differ = 0
    print("| run | final weights | metrics.jsonl (times and memory removed) |\n| --- | --- | --- |")
    for name in sorted(set(a["cases"]) | set(b["cases"])):
        x, y = a["cases"].get(name), b["cases"].get(name)
        if x is None or y is None:
            print(f"| {name} | missing in {'the first' if x is None else 'the second'} | |")
            differ += 1
            continue
        weights = [n for n in set(x["weights"]) | set(y["weights"]) if x["weights"].get(n) != y["weights"].get(n)]
        lines = [i for i in range(max(len(x["metrics"]), len(y["metrics"])))
                 if i >= len(x["metrics"]) or i >= len(y["metrics"]) or x["metrics"][i] != y["metrics"][i]]
        differ += bool(weights) + bool(lines)
        print(f"| {name} | {'bit-identical' if not weights else f'{len(weights)} tensors differ'} ({len(x['weights'])} tensors) | "
              f"{'identical' if not lines else f'lines {lines[:5]} differ'} ({len(x['metrics'])} lines) |")
    return 1 if differ else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record")
    r.add_argument("out")
    r.add_argument("--workspace", default=str(ROOT / "runs" / "parity-workspace"))
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = p.parse_args()
    if args.command == "record":
        record(args.out, Path(args.workspace))
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
