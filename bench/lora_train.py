"""Full fine-tuning against LoRA on the real models (issue 43's benchmark): SmolLM2-135M-Instruct and
Gemma-3-270M as students, the same SFT steps on the same tokens, as

  full-fp32    every weight trained, float32 (the reference of the ratios)
  full-bf16    every weight trained, float32 master weights under bf16 autocast (train.precision bf16)
  lora-fp32    LoRA r=16, α 32, dropout 0.05 on attention and MLP, the base frozen in float32
  lora-bf16    LoRA r=16, the base frozen in bfloat16 (adapters and AdamW float32) under bf16 autocast:
               on a CPU with bf16 matrix units (AMX, AVX-512 BF16) oneDNN runs every product on them
  lora-bf16-nodrop
               the same without dropout (what the adapter dropout costs)

Measured in one run, every variant in its own process: trainable parameters (from the run's log),
peak resident memory of the process (wait4's ru_maxrss) and seconds per step (the median of the
steps after the first two, from metrics.jsonl's tokens_per_s). Ratios are against full-fp32 and
full-bf16 of the same model in the same run; nothing is compared across runs or machines.

    scripts/fetch-models.sh && python bench/lora_train.py [--models smollm2,gemma3] [--steps 6]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BINARY = Path(os.environ.get("LOGITFUSE_BIN", ROOT / "build" / "bin" / "logitfuse"))
MODELS = Path(os.environ.get("LOGITFUSE_HOME", Path.home() / ".cache" / "logitfuse")) / "models"
STUDENTS = {"smollm2": MODELS / "smollm2-135m-instruct", "gemma3": MODELS / "gemma-3-270m"}

VARIANTS = {  # name: (student overrides, precision)
    "full-fp32": ("", "fp32"),
    "full-bf16": ("", "bf16"),
    "lora-fp32": (", dtype: fp32, lora: {r: 16, alpha: 32, dropout: 0.05}", "fp32"),
    "lora-bf16": (", dtype: bf16, lora: {r: 16, alpha: 32, dropout: 0.05}", "bf16"),
    "lora-bf16-nodrop": (", dtype: bf16, lora: {r: 16, alpha: 32, dropout: 0.0}", "bf16"),
}


def cpu_bf16_units():
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return [f for f in ("amx_bf16", "avx512_bf16") if f in flags]


def write_data(path, examples, seed=0):
    """Deterministic English-like prompt/response pairs (the content does not matter for speed)."""
    import random
    rng = random.Random(seed)
    words = ("the model reads a line of text and writes the next one while the teacher watches every token it "
             "chooses so that the student learns what the larger network would have said about it").split()
    lines = []
    for _ in range(examples):
        prompt = " ".join(rng.choice(words) for _ in range(24)).capitalize() + "?"
        response = " ".join(rng.choice(words) for _ in range(160)).capitalize() + "."
        lines.append(json.dumps({"prompt": prompt, "response": response}))
    path.write_text("\n".join(lines) + "\n")


def run_variant(args, model, variant, data, out):
    student, precision = VARIANTS[variant]
    run_dir = out / f"{model}-{variant}"
    recipe = out / f"{model}-{variant}.yaml"
    recipe.write_text(f"""run: {{name: {variant}, output_dir: {run_dir}, seed: 1, device: cpu}}
student: {{path: {STUDENTS[model]}, chat_template: plain{student}}}
data: {{train: {data}, max_length: {args.max_length}, max_prompt_length: 32}}
train: {{max_steps: {args.steps}, micro_batch_size: {args.batch}, grad_accum: 1, lr: 1.0e-4, schedule: constant,
         precision: {precision}, logit_chunk_size: 256, activation_checkpointing: {str(args.checkpointing).lower()}}}
checkpoint: {{every_steps: 0}}
log: {{every_steps: 1}}
""")
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.time()
    proc = subprocess.Popen([str(BINARY), "train", str(recipe)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"lora_train: {variant} on {model} failed:\n{err[-3000:]}")
    steps = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    # Every variant trains the same tokens per step, so seconds per token give the ratio of steps per second.
    per_step = [1.0 / s["tokens_per_s"] for s in steps[2:]] if len(steps) > 2 else [1.0 / s["tokens_per_s"] for s in steps]
    trainable = re.search(r"(\d+) trainable parameters", err)
    return {"model": model, "variant": variant, "trainable": int(trainable.group(1)) if trainable else None,
            "peak_mib": usage.ru_maxrss / 1024, "seconds_per_token": statistics.median(per_step),
            "wall_s": time.time() - t0, "last_loss": steps[-1]["loss"], "first_loss": steps[0]["loss"]}


def full_parameters(model_dir):
    """Every weight of the checkpoint (a tied LM head is stored, and trained, once)."""
    import math
    from safetensors import safe_open
    total = 0
    for f in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(f), "pt") as s:
            total += sum(math.prod(s.get_slice(k).get_shape()) for k in s.keys())
    return total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2,gemma3")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--checkpointing", action="store_true", help="train.activation_checkpointing in every variant")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default=str(ROOT / "runs" / "lora-bench"))
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "train.jsonl"
    write_data(data, args.batch * args.steps)
    units = cpu_bf16_units()
    print(f"CPU bf16 units: {', '.join(units) or 'none'}; {args.threads} threads; {args.steps} steps of "
          f"{args.batch} x {args.max_length} tokens (SFT)", flush=True)
    results = []
    for model in args.models.split(","):
        if not (STUDENTS[model] / "config.json").exists():
            sys.exit(f"lora_train: {STUDENTS[model]} is missing: run scripts/fetch-models.sh")
        params = full_parameters(STUDENTS[model])
        for variant in args.variants.split(","):
            r = run_variant(args, model, variant, data, out)
            if r["trainable"] is None:
                r["trainable"] = params
            results.append(r)
            print(f"  {model} {variant}: {r['trainable']:,} trainable, peak {r['peak_mib']:.0f} MiB, "
                  f"{r['seconds_per_token'] * 1e3:.3f} ms/token, loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}",
                  flush=True)
    print("\n| model | variant | trainable parameters | peak RSS MiB | × full-fp32 peak | × full-bf16 peak "
          "| steps/s × full-fp32 | steps/s × full-bf16 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        ref = {v: next((x for x in results if x["model"] == r["model"] and x["variant"] == v), None)
               for v in ("full-fp32", "full-bf16")}
        ratio = lambda key, v, inverse=False: (  # noqa: E731
            f"{(ref[v][key] / r[key] if inverse else r[key] / ref[v][key]):.2f}" if ref[v] else "-")
        print(f"| {r['model']} | {r['variant']} | {r['trainable']:,} | {r['peak_mib']:.0f} | {ratio('peak_mib', 'full-fp32')} "
              f"| {ratio('peak_mib', 'full-bf16')} | {ratio('seconds_per_token', 'full-fp32', True)} "
              f"| {ratio('seconds_per_token', 'full-bf16', True)} |")
    (out / "report.json").write_text(json.dumps({"cpu_bf16_units": units, "threads": args.threads,
                                                 "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
