"""The demo's hands on logitfuse: every model is made, trained and evaluated by the CLI (no Python
model code), and independent runs go out in parallel, one LibTorch thread each, on the machine's
cores."""
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BINARY = Path(os.environ.get("LOGITFUSE_BIN", ROOT / "build" / "bin" / "logitfuse"))
ANSWER_REGEX = "The answer is ([^.]*)[.]"
_print_lock = threading.Lock()


def log(message):
    with _print_lock:
        print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Runner:
    """Runs logitfuse commands; `parallel` maps a function over items on `jobs` workers, each
    command with `threads` intra-op threads (tiny models scale far better across processes)."""

    def __init__(self, jobs, threads, cpu_kernels="native"):
        self.jobs, self.threads = max(1, jobs), max(1, threads)
        # LibTorch's own override of its CPU dispatch (ATEN_CPU_CAPABILITY): kernels of one instruction
        # set sum in one order, so the same recipe trains the same models on machines that have it
        # (two measured; MKL's choice of GEMM path is not pinned: README, findings).
        self.kernels = {} if cpu_kernels == "native" else {"ATEN_CPU_CAPABILITY": cpu_kernels}

    def __call__(self, *args):
        cmd = [str(BINARY), "--log-level", "warn", *map(str, args)]
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads), **self.kernels}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"demo: `{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def parallel(self, fn, items):
        items = list(items)
        if self.jobs == 1 or len(items) <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            return list(pool.map(fn, items))


def machine(lf):
    """The CPU line of `logitfuse version` (processor, threads, the ATen kernels' instruction set):
    trained weights, and so every figure of the demo, depend on it (README, findings)."""
    lines = [line for line in lf("version").stdout.splitlines() if line.startswith("CPU ")]
    return lines[0] if lines else "CPU unknown"


def kernels_available(wanted, native_line):
    """Whether LibTorch can run the requested kernels here (asked for ones the processor lacks, it
    would run them anyway and stop on an illegal instruction)."""
    order = ["DEFAULT", "AVX2", "AVX512"]
    native = native_line.rsplit("ATen CPU kernels ", 1)[-1].strip()
    return wanted in ("native", "default") or (native in order and order.index(native) >= order.index(wanted.upper()))


def init_model(lf, out_dir, arch, tokenizer, size, seed):
    if (out_dir / "config.json").exists():
        return out_dir
    hidden, layers = size
    lf("init-model", "--arch", arch, "--out", out_dir, "--tokenizer", tokenizer, "--hidden", hidden,
       "--layers", layers, "--heads", 4, "--kv-heads", 2, "--intermediate", 2 * hidden, "--seed", seed)
    return out_dir


def parse_size(text):
    hidden, layers = (int(x) for x in text.split("x"))
    return hidden, layers


def train(lf, run_dir, student, data_file, *, steps, seed, lr, batch, teachers=(), loss="{}",
          positions="exact", checkpoints=0, max_length=96, max_prompt_length=48):
    """One `logitfuse train` run (kept: a finished run is not trained again). `checkpoints` > 0 keeps
    that many evenly spaced checkpoints for the evaluation along the way. Returns final/."""
    final = run_dir / "final"
    if (final / "config.json").exists():
        return final
    teacher_lines = "".join(f"\n  - {{name: {n}, path: {p}, dtype: fp32, chat_template: plain}}" for n, p in teachers)
    every = steps // checkpoints if checkpoints else 0
    recipe = f"""run: {{name: {run_dir.name}, output_dir: {run_dir}, seed: {seed}, device: cpu}}
student: {{path: {student}, dtype: fp32, chat_template: plain}}
teachers: {"[]" if not teachers else ""}{teacher_lines}
data: {{train: {data_file}, max_length: {max_length}, max_prompt_length: {max_prompt_length}}}
loss: {loss}
alignment: {{positions: {positions}, vocab: mined, cache_dir: {run_dir.parent / "vocab-maps"}}}
train: {{max_steps: {steps}, micro_batch_size: {batch}, lr: {lr}, schedule: cosine, warmup_ratio: 0.05, precision: fp32, clip_grad: 1.0, weight_decay: 0.01}}
checkpoint: {{every_steps: {every}, keep_last: {max(checkpoints, 1) + 1}}}
log: {{every_steps: 10}}
"""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(recipe)
    t0 = time.time()
    lf("train", path, "--resume", "auto")
    (run_dir / "wall_seconds").write_text(f"{time.time() - t0:.1f}\n")
    return final


def answered_right(out_dir, task):
    """Per question of an evaluation in out_dir, in file order: whether its answer was right."""
    rows = [json.loads(line) for line in (out_dir / "predictions" / f"{task}.jsonl").read_text().splitlines()]
    return [row["correct"] for row in sorted(rows, key=lambda row: row["line"])]


def train_seconds(run_dir):
    """How long the run's `train` took when it ran (a rerun that reuses it reports the same)."""
    path = run_dir / "wall_seconds"
    return float(path.read_text()) if path.exists() else float("nan")


def checkpoints_of(run_dir):
    """(step, model dir) of each complete checkpoint the run kept, oldest first (final/ is not one)."""
    out = []
    for d in sorted((run_dir / "checkpoints").glob("step_*")):
        if (d / "DONE").exists() and (d / "config.json").exists():
            out.append((int(d.name.split("_")[1]), d))
    return out


def evaluate(lf, model_dir, out_dir, data, skills, *, fusion=None, perplexity=True, shots=0, held_out="eval"):
    """Exact match (and response perplexity) on each skill's held-out set (data/<held_out>_<skill>.jsonl)
    through `logitfuse eval`, kept in out_dir/metrics.json; with `fusion` (the models and fusion
    sections of a DLF config), of fused decoding instead of one model; with `shots`, that many worked
    examples of the skill (data/shots_<skill>.jsonl) before every question."""
    metrics_file = out_dir / "metrics.json"
    if not metrics_file.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        tasks_yaml = "".join(
            f"\n  - {{name: {skill}, type: exact_match, data: {data / f'{held_out}_{skill}.jsonl'}, extract: regex, "
            f"regex: '{ANSWER_REGEX}'" + (f", shots: {shots}, shots_file: {data / f'shots_{skill}.jsonl'}" if shots else "")
            + "}" +
            (f"\n  - {{name: {skill}-ppl, type: perplexity, data: {data / f'{held_out}_{skill}.jsonl'}}}" if perplexity else "")
            for skill in skills)
        models = fusion if fusion else f"model: {{path: {model_dir}, device: cpu}}"
        config = out_dir / "eval.yaml"
        config.write_text(f"""{models}
generation: {{max_new_tokens: 40, batch_size: 50, chat_template: plain}}
sampling: {{temperature: 0}}
output_dir: {out_dir}
tasks:{tasks_yaml}
""")
        lf("eval", config)
    metrics = json.loads(metrics_file.read_text())
    scores = {skill: metrics["tasks"][skill]["exact_match"] for skill in skills}
    if perplexity:
        scores.update({f"{skill}-ppl": metrics["tasks"][f"{skill}-ppl"]["perplexity"] for skill in skills})
    return scores
