"""The real-model fusion benchmark (docs/benchmark.md, version 3): SmolLM2-135M-Instruct, the pivot and
student, fused with Gemma-3-270M, a pretrained teacher of another family with another tokenizer, on
real text (bench/real_text.py: Debian's German, French and English manual pages and Python source,
split by file). Every variant starts from the pivot with the same tokens and steps; the teacher's
top-k logits are cached once by `logitfuse cache-logits`. Measured: bits per UTF-8 byte of the
held-out (test) text per domain, the share of the pivot→teacher gap closed, forgetting where the
teacher is not ahead, wall time and peak memory; a table, a JSON report and a PNG of bpb against steps.

    scripts/fetch-models.sh && build/bin/... python bench/real_fusion.py [--quick] [--out runs/real]

Every model is trained and evaluated by the logitfuse CLI. A finished step (run, evaluation) is kept
and reused by a rerun with the same settings."""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BINARY = Path(os.environ.get("LOGITFUSE_BIN", ROOT / "build" / "bin" / "logitfuse"))
MODELS = Path(os.environ.get("LOGITFUSE_HOME", Path.home() / ".cache" / "logitfuse")) / "models"
PIVOT, TEACHER = MODELS / "smollm2-135m-instruct", MODELS / "gemma-3-270m"

# name: (token term, graph term, positions); None: SFT only. λ, temperature and top-k are flags.
VARIANTS = {
    "sft": None,
    "kl-exact": ("kl", False, "exact"),
    "kl-span": ("kl", False, "span"),
    "uld": ("uld", False, "offsets"),
    "gld+uld": ("uld", True, "offsets"),
    "gld+kl-span": ("kl", True, "span"),
    # LoRA students (docs/lora.md): the variant of the same name without the prefix, trained through
    # adapters (r 16, α 32, dropout 0.05, attention and MLP) over the float32 pivot, at --lora-lr.
    "lora-sft": None,
    "lora-kl-span": ("kl", False, "span"),
}


def is_lora(variant):
    return variant.startswith("lora-")


# What each kept directory depends on. A run's directory names λ where it matters (run_name).
_NOT_IN_RUNS = {"variants", "variant_list", "seeds", "seed_list", "distill_weight", "ahead_margin", "curve", "select",
                "select_steps"}
STAMPED = {
    "teacher-cache": lambda s: ["corpus_sha256", "top_k", "max_length", "quick"],
    "eval-pivot": lambda s: ["corpus_sha256", "split"],
    "eval-teacher": lambda s: ["corpus_sha256", "split"],
    "runs": lambda s: [k for k in s if k not in _NOT_IN_RUNS],
}


def run_name(args, variant, seed):
    name = f"{variant}-s{seed}"
    return name if VARIANTS[variant] is None else f"{name}-lambda{args.distill_weight:g}"


def log(message):
    print(f"[real {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(args, *cmd, threads, level="warn"):
    """One logitfuse command; returns (seconds, peak resident memory in MiB) of that process. Its
    log (at `level`) is left in out/last_command.err."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    err_path = Path(args.out) / "last_command.err"
    with open(err_path, "w") as err:
        t0 = time.time()
        proc = subprocess.Popen([str(BINARY), "--log-level", level, *map(str, cmd)], stdout=subprocess.DEVNULL,
                                stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.time() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"real_fusion: `logitfuse {' '.join(map(str, cmd))}` failed ({code}):\n{err_path.read_text()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024


def recipe(args, run_dir, variant, seed, data):
    spec = VARIANTS[variant]
    teacher = "[]"
    loss = "{}"
    positions = "offsets"
    if spec:
        token, graph, positions = spec
        teacher = (f"\n  - {{name: gemma, path: {TEACHER}, dtype: fp32, chat_template: plain, "
                   f"logits_cache: {Path(args.out) / 'teacher-cache'}}}")
        graph_yaml = f"{{type: gld, weight: 1.0, top_k: {args.graph_top_k}}}" if graph else "{type: none}"
        loss = (f"{{distill_weight: {args.distill_weight}, token: {{type: {token}, top_k: {args.top_k}, "
                f"temperature: {args.temperature}}}, graph: {graph_yaml}}}")
    # --curve-every: every seed, every N steps; by default the first seed at half the run.
    every = (args.curve_every or (args.steps // 2 if seed == args.seed_list[0] else 0)) if args.curve else 0
    keep = max(2, args.steps // every + 1) if every else 2  # every checkpoint is evaluated after the run
    lora = ", lora: {r: 16, alpha: 32, dropout: 0.05}" if is_lora(variant) else ""
    lr = args.lora_lr if is_lora(variant) else args.lr
    text = f"""run: {{name: {run_dir.name}, output_dir: {run_dir}, seed: {seed}, device: cpu}}
student: {{path: {PIVOT}, dtype: fp32, chat_template: plain{lora}}}
teachers: {teacher}
data: {{train: {data / 'train.jsonl'}, max_length: {args.max_length}, max_prompt_length: 8}}
loss: {loss}
alignment: {{positions: {positions}, vocab: exact, cache_dir: {Path(args.out) / 'vocab-maps'}}}
train: {{max_steps: {args.steps}, micro_batch_size: {args.batch}, grad_accum: 1, lr: {lr}, schedule: cosine,
         warmup_ratio: 0.0, precision: fp32, clip_grad: 1.0, weight_decay: 0.0, logit_chunk_size: 256}}
checkpoint: {{every_steps: {every}, keep_last: {keep}}}
log: {{every_steps: 1}}
"""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(text)
    return path


def evaluate(args, model_dir, out_dir, data, split, threads, adapter=None):
    """bits per byte of `model_dir` (with a PEFT `adapter` over it) on each domain's `split` set, kept in
    out_dir/metrics.json."""
    metrics = out_dir / "metrics.json"
    if not metrics.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        tasks = "".join(f"\n  - {{name: {d}, type: perplexity, data: {data / f'{split}_{d}.jsonl'}}}"
                        for d in real_text.DOMAINS)
        config = out_dir / "eval.yaml"
        model = f"{{path: {model_dir}, device: cpu, dtype: fp32" + (f", adapter: {adapter}}}" if adapter else "}")
        config.write_text(f"""model: {model}
generation: {{batch_size: 1, chat_template: plain}}
output_dir: {out_dir}
tasks:{tasks}
""")
        seconds, _ = run(args, "eval", config, threads=threads)
        (out_dir / "seconds").write_text(f"{seconds:.1f}\n")
    m = json.loads(metrics.read_text())["tasks"]
    return {d: m[d]["bits_per_byte"] for d in real_text.DOMAINS}


def evaluate_written(args, variant, written, out_dir, data):
    """evaluate() on a directory a run wrote: the model itself, or the pivot with it as the adapter."""
    if is_lora(variant):
        return evaluate(args, PIVOT, out_dir, data, args.split, args.threads, adapter=written)
    return evaluate(args, written, out_dir, data, args.split, args.threads)


def train_variant(args, variant, seed, data):
    run_dir = Path(args.out) / "runs" / run_name(args, variant, seed)
    done = run_dir / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    path = recipe(args, run_dir, variant, seed, data)
    log(f"train {variant} seed {seed}")
    seconds, peak = run(args, "train", path, threads=args.threads)
    curve = {}
    for ckpt in sorted((run_dir / "checkpoints").glob("step_*")):
        if (ckpt / "DONE").exists():
            step = int(ckpt.name.split("_")[1])
            if step < args.steps:
                curve[step] = evaluate_written(args, variant, ckpt, run_dir / f"eval-{step}", data)
    final = evaluate_written(args, variant, run_dir / "final", run_dir / "eval-final", data)
    curve[args.steps] = final
    losses = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    result = {"variant": variant, "seed": seed, "bpb": final, "curve": curve, "train_seconds": seconds,
              "peak_mib": peak, "last_loss": next((x for x in reversed(losses) if "loss" in x), {})}
    if not args.keep_models:  # 0.5 GB of weights (and 1 GB of optimizer state) per checkpoint
        shutil.rmtree(run_dir / "final", ignore_errors=True)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result


def select_checkpoint(args, result):
    """With --select VARIANT=STEP, that variant is measured at its checkpoint of that step (chosen
    on the other split) instead of at the end of the run."""
    step = args.select_steps.get(result["variant"])
    if step is None:
        return result
    # parse_args made sure --curve-every evaluates that step.
    curve = {int(k): v for k, v in result["curve"].items()}
    return {**result, "bpb": curve[step], "selected_step": step}


def spread(values):
    return (max(values) - min(values)) if len(values) > 1 else 0.0


def summarise(args, pivot, teacher, results):
    """Per variant: mean and spread of bpb per domain, gap share, forgetting, time, memory."""
    ahead = [d for d in real_text.DOMAINS if pivot[d] - teacher[d] > args.ahead_margin]
    level = [d for d in real_text.DOMAINS if d not in ahead]
    rows = {}
    for variant in args.variant_list:
        runs = [r for r in results if r["variant"] == variant]
        row = {"seeds": len(runs), "bpb": {}, "spread": {}, "gap_closed": {}, "forgetting": {}}
        for d in real_text.DOMAINS:
            values = [r["bpb"][d] for r in runs]
            row["bpb"][d] = statistics.mean(values)
            row["spread"][d] = spread(values)
            if d in ahead:
                row["gap_closed"][d] = (pivot[d] - row["bpb"][d]) / (pivot[d] - teacher[d])
            else:
                row["forgetting"][d] = row["bpb"][d] - pivot[d]
        row["selected_step"] = runs[0].get("selected_step")
        row["train_seconds"] = statistics.mean(r["train_seconds"] for r in runs)
        row["peak_mib"] = max(r["peak_mib"] for r in runs)
        rows[variant] = row
    verdicts = []
    if "sft" in rows:
        sft = rows["sft"]
        for variant, row in rows.items():
            if variant == "sft":
                continue
            for d in ahead:
                sft_runs = [r["bpb"][d] for r in results if r["variant"] == "sft"]
                var_runs = [r["bpb"][d] for r in results if r["variant"] == variant]
                beats = max(var_runs) < min(sft_runs)  # every seed below every SFT seed
                ratio = row["gap_closed"][d] / sft["gap_closed"][d] if sft["gap_closed"][d] > 0 else float("nan")
                verdicts.append({"variant": variant, "domain": d, "beats_sft_on_every_seed": beats,
                                 "gap_ratio_vs_sft": ratio,
                                 "forgetting_no_worse": all(row["forgetting"][l] <= sft["forgetting"][l] + 1e-9
                                                            for l in level)})
    return {"ahead": ahead, "level": level, "rows": rows, "verdicts": verdicts}


def table(pivot, teacher, summary):
    domains = real_text.DOMAINS
    head = "| model | " + " | ".join(f"{d} bpb" for d in domains) + " | gap closed (" + ", ".join(summary["ahead"]) + \
        ") | forgetting (" + ", ".join(summary["level"]) + ") | train s | peak MiB |"
    lines = [head, "|" + " --- |" * (len(domains) + 5)]
    lines.append("| teacher Gemma-3-270M | " + " | ".join(f"{teacher[d]:.3f}" for d in domains) + " | | | | |")
    lines.append("| pivot SmolLM2-135M-Instruct | " + " | ".join(f"{pivot[d]:.3f}" for d in domains) + " | 0 | 0 | | |")
    for variant, row in summary["rows"].items():
        cells = [f"{row['bpb'][d]:.3f} ± {row['spread'][d] / 2:.3f}" for d in domains]
        gap = ", ".join(f"{row['gap_closed'][d]:+.1%}" for d in summary["ahead"])
        forget = ", ".join(f"{row['forgetting'][d]:+.3f}" for d in summary["level"])
        name = variant if row["selected_step"] is None else f"{variant} at step {row['selected_step']}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {gap} | {forget} | {row['train_seconds']:.0f} | "
                     f"{row['peak_mib']:.0f} |")
    return "\n".join(lines)


def plot(pivot, teacher, results, args, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no PNG")
        return
    seed = args.seed_list[0]
    fig, axes = plt.subplots(1, len(real_text.DOMAINS), figsize=(4 * len(real_text.DOMAINS), 3.6))
    for ax, d in zip(axes, real_text.DOMAINS):
        for r in results:
            if r["seed"] != seed:
                continue
            steps = [0] + sorted(int(s) for s in r["curve"])
            values = [pivot[d]] + [r["curve"][str(s) if str(s) in r["curve"] else s][d] for s in steps[1:]]
            ax.plot(steps, values, marker="o", label=r["variant"])
        ax.axhline(teacher[d], color="black", linestyle="--", linewidth=1, label="teacher")
        ax.set_title(d)
        ax.set_xlabel("step")
        ax.set_ylabel("bits per byte (test)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "runs" / "real"))
    p.add_argument("--quick", action="store_true", help="a minute-scale run for the tests: 2 steps, 1 seed, 3 variants")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--lora-lr", type=float, default=2e-4, help="the lora-* variants' learning rate (set before any run)")
    # λ chosen once, on the dev split, from {0.2, 0.5} (SFT, span KL and GLD + ULD, seed 1; README);
    # temperature, learning rate and steps were set before any run and not tuned.
    p.add_argument("--distill-weight", type=float, default=0.2)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=32, help="teacher top-k cached and used by the token term")
    p.add_argument("--graph-top-k", type=int, default=10)
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--chunk-bytes", type=int, default=1000)
    p.add_argument("--train-bytes", type=int, default=40000, help="training text per domain")
    p.add_argument("--eval-bytes", type=int, default=5000, help="held-out text per domain and split")
    p.add_argument("--split", default="test", choices=["dev", "test"], help="what the report measures on")
    p.add_argument("--ahead-margin", type=float, default=0.1, help="bpb by which the teacher must lead on a domain")
    p.add_argument("--no-curve", dest="curve", action="store_false", help="skip the mid-run evaluations")
    p.add_argument("--curve-every", type=int, default=0,
                   help="evaluate every seed every N steps (default: the first seed at half the run)")
    p.add_argument("--select", default="", help="VARIANT=STEP,...: measure a variant at that checkpoint, "
                   "chosen on the other split (needs --curve-every)")
    p.add_argument("--keep-models", action="store_true")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    if args.quick:
        args.variants, args.seeds, args.steps, args.batch = "sft,kl-span,gld+uld", "1", 2, 2
        args.train_bytes, args.eval_bytes, args.max_length, args.curve = 3000, 1500, 128, False
        args.chunk_bytes = 400
    args.variant_list = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variant_list if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {unknown[0]} (known: {', '.join(VARIANTS)})")
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    try:
        args.select_steps = {v: int(step) for v, _, step in (x.partition("=") for x in args.select.split(",") if x)}
    except ValueError:
        p.error(f"--select {args.select}: expected VARIANT=STEP,...")
    if any(v not in args.variant_list for v in args.select_steps):
        p.error(f"--select {args.select}: a variant that is not run")
    # Checked here, not after hours of training: a step must be one that --curve-every evaluates.
    every = args.curve_every if args.curve else 0
    for v, step in args.select_steps.items():
        if not every or step % every or not 0 < step <= args.steps:
            p.error(f"--select {v}={step}: no checkpoint at that step (--curve-every {every}, --steps {args.steps})")
    return args


def open_out(args, script):
    """The output folder with the corpus built in out/data (kept when unchanged); exits naming a missing
    model. Returns (out, data folder, corpus summary)."""
    for model in (PIVOT, TEACHER):
        if not (model / "SOURCE.json").exists():
            sys.exit(f"{script}: {model} is missing: run scripts/fetch-models.sh")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    return out, data, real_text.build(data, args.chunk_bytes, args.train_bytes, args.eval_bytes)


def main():
    args = parse_args()
    started = time.time()
    out, data, corpus = open_out(args, "real_fusion")
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "keep_models", "threads")}
    settings["corpus_sha256"] = corpus["sha256"]
    stamp = out / "settings.json"
    if stamp.exists():
        # A changed setting discards only what depends on it, so that a sweep of λ on one split
        # reuses the teacher's cache, the base evaluations and the SFT runs.
        before = json.loads(stamp.read_text())
        for sub, keys in STAMPED.items():
            if any(before.get(k) != json.loads(json.dumps(settings.get(k))) for k in keys(settings)):
                log(f"settings or corpus changed: discarding {sub}")
                shutil.rmtree(out / sub, ignore_errors=True)
    stamp.write_text(json.dumps(settings, indent=2) + "\n")
    log(f"corpus {corpus['sha256'][:12]}: " + ", ".join(
        f"{d} {v['train']['bytes']} B train / {v[args.split]['bytes']} B {args.split}" for d, v in corpus["domains"].items()))

    log("pivot and teacher on the held-out text")
    pivot = evaluate(args, PIVOT, out / "eval-pivot", data, args.split, args.threads)
    teacher = evaluate(args, TEACHER, out / "eval-teacher", data, args.split, args.threads)
    log("pivot " + " ".join(f"{d} {v:.3f}" for d, v in pivot.items()))
    log("teacher " + " ".join(f"{d} {v:.3f}" for d, v in teacher.items()))

    cache_seconds = 0.0
    distilled = [v for v in args.variant_list if VARIANTS[v]]
    cache_time = out / "teacher-cache" / "seconds"
    if distilled and not (out / "teacher-cache" / "manifest.json").exists():
        log("caching the teacher's top-k logits")
        path = recipe(args, out / "runs" / "cache", distilled[0], args.seed_list[0], data)
        cache_seconds, _ = run(args, "cache-logits", path, threads=args.threads)
        cache_time.write_text(f"{cache_seconds:.1f}\n")
    elif cache_time.exists():  # made by an earlier invocation (a sweep on the other split): counted once, there
        cache_seconds = float(cache_time.read_text())

    results = [select_checkpoint(args, train_variant(args, v, s, data)) for s in args.seed_list for v in args.variant_list]
    summary = summarise(args, pivot, teacher, results)
    report = {"settings": settings, "corpus": corpus, "pivot": pivot, "teacher": teacher, "summary": summary,
              "results": results, "cache_seconds": cache_seconds, "wall_seconds": time.time() - started}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    text = table(pivot, teacher, summary)
    (out / "report.md").write_text(text + "\n")
    plot(pivot, teacher, results, args, out / "bpb_vs_steps.png")
    print(text)
    for v in summary["verdicts"]:
        print(f"{v['variant']} on {v['domain']}: beats SFT on every seed: {v['beats_sft_on_every_seed']}, "
              f"gap closed ×{v['gap_ratio_vs_sft']:.2f} of SFT's, forgetting no worse: {v['forgetting_no_worse']}")
    log(f"done in {time.time() - started:.0f} s (report: {out / 'report.md'})")


if __name__ == "__main__":
    main()
