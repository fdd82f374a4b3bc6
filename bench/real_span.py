"""The real-text proof of span alignment (docs/benchmark.md, version 3, part 4). Two tiny students are
trained from scratch on the same real text (bench/real_text.py), the same architecture, size, seed and
steps, and differ only in their tokenizer:

- the twin reads Gemma-3-270M's own tokenizer, so the teacher's distribution lands on it whole
  (every position and every token pairs: what distillation can give when there is no tokenizer gap);
- the cross student reads SmolLM2's tokenizer, and receives Gemma-3-270M's distribution through
  `alignment.positions: span` (and, beside it, through `exact`, which keeps only the positions where
  both tokenizers cut the text the same way).

Each is trained SFT-only and KL + SFT from the teacher's cached top-k logits. The gain of distillation
is SFT-only's bits per UTF-8 byte minus KL + SFT's, on the held-out (test) text; the proof asks span's
gain to be at least 0.8 of the twin's.

    scripts/fetch-models.sh && python bench/real_span.py [--quick] [--out runs/real-span]
"""
import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_fusion  # noqa: E402
import real_text  # noqa: E402
from real_fusion import PIVOT, TEACHER, log  # noqa: E402

# name: (tokenizer of the student, positions of the KL term; None: SFT only)
VARIANTS = {
    "twin-sft": (TEACHER, None),
    "twin-kl": (TEACHER, "exact"),
    "cross-sft": (PIVOT, None),
    "cross-kl-span": (PIVOT, "span"),
    "cross-kl-exact": (PIVOT, "exact"),
}


def recipe(args, run_dir, variant, seed, data):
    tokenizer, positions = VARIANTS[variant]
    student = Path(args.out) / "init" / ("twin" if tokenizer == TEACHER else "cross")
    teacher, loss = "[]", "{}"
    if positions:
        teacher = (f"\n  - {{name: gemma, path: {TEACHER}, dtype: fp32, chat_template: plain, "
                   f"logits_cache: {Path(args.out) / 'teacher-cache'}}}")
        loss = (f"{{distill_weight: {args.distill_weight}, token: {{type: kl, top_k: {args.top_k}, "
                f"temperature: {args.temperature}}}, graph: {{type: none}}}}")
    text = f"""run: {{name: {run_dir.name}, output_dir: {run_dir}, seed: {seed}, device: cpu}}
student: {{path: {student}, dtype: fp32, chat_template: plain}}
teachers: {teacher}
data: {{train: {data / 'train.jsonl'}, max_length: {args.max_length}, max_prompt_length: 8}}
loss: {loss}
alignment: {{positions: {positions or 'exact'}, vocab: exact, cache_dir: {Path(args.out) / 'vocab-maps'}}}
train: {{max_steps: {args.steps}, micro_batch_size: {args.batch}, grad_accum: 1, lr: {args.lr}, schedule: cosine,
         warmup_ratio: 0.05, precision: fp32, clip_grad: 1.0, weight_decay: 0.01, logit_chunk_size: 256}}
checkpoint: {{every_steps: 0, keep_last: 1}}
log: {{every_steps: 10}}
"""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(text)
    return path


def init_students(args):
    """The two initial checkpoints: same architecture, size and seed; only the tokenizer differs."""
    for name, tokenizer in (("twin", TEACHER), ("cross", PIVOT)):
        out = Path(args.out) / "init" / name
        if (out / "config.json").exists():
            continue
        real_fusion.run(args, "init-model", "--arch", "llama", "--out", out, "--tokenizer", tokenizer,
                        "--hidden", args.hidden, "--layers", args.layers, "--heads", 4, "--kv-heads", 2,
                        "--intermediate", 2 * args.hidden, "--seed", 1, threads=args.threads)


def train_variant(args, variant, seed, data):
    run_dir = Path(args.out) / "runs" / f"{variant}-s{seed}"
    done = run_dir / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    path = recipe(args, run_dir, variant, seed, data)
    log(f"train {variant} seed {seed}")
    seconds, peak = real_fusion.run(args, "train", path, threads=args.threads, level="info")
    # train logs which share of the student's response positions each teacher's signal reaches.
    log_text = (Path(args.out) / "last_command.err").read_text()
    share = re.search(r"alignment \(\w+\): teacher \S+ pairs \d+ of the student's \d+ response positions \(([\d.]+)%\)",
                      log_text)
    bpb = real_fusion.evaluate(args, run_dir / "final", run_dir / "eval-final", data, "test", args.threads)
    result = {"variant": variant, "seed": seed, "bpb": bpb, "mean_bpb": mean_bpb(bpb, args.corpus),
              "train_seconds": seconds, "peak_mib": peak,
              "paired_percent": float(share.group(1)) if share else None}
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result


def mean_bpb(bpb, corpus):
    """bits per byte over the whole held-out text: each domain weighted by its bytes."""
    weights = {d: corpus["domains"][d]["test"]["bytes"] for d in real_text.DOMAINS}
    return sum(bpb[d] * weights[d] for d in real_text.DOMAINS) / sum(weights.values())


def summarise(args, results):
    rows = {}
    for variant in VARIANTS:
        runs = [r for r in results if r["variant"] == variant]
        if runs:
            rows[variant] = {"bpb": {d: statistics.mean(r["bpb"][d] for r in runs) for d in real_text.DOMAINS},
                             "mean_bpb": statistics.mean(r["mean_bpb"] for r in runs),
                             "mean_bpb_seeds": [r["mean_bpb"] for r in runs],
                             "train_seconds": statistics.mean(r["train_seconds"] for r in runs),
                             "paired_percent": runs[0]["paired_percent"],
                             "peak_mib": max(r["peak_mib"] for r in runs)}

    def gain(sft, kl, key=None):
        if key is None:
            return rows[sft]["mean_bpb"] - rows[kl]["mean_bpb"]
        return rows[sft]["bpb"][key] - rows[kl]["bpb"][key]

    gains = {}
    for name, (sft, kl) in {"twin": ("twin-sft", "twin-kl"), "span": ("cross-sft", "cross-kl-span"),
                            "exact": ("cross-sft", "cross-kl-exact")}.items():
        if sft in rows and kl in rows:
            gains[name] = {"all": gain(sft, kl), **{d: gain(sft, kl, d) for d in real_text.DOMAINS},
                           # the same seed's SFT run against its KL run: the gain's spread over seeds
                           "all_per_seed": [a - b for a, b in zip(rows[sft]["mean_bpb_seeds"], rows[kl]["mean_bpb_seeds"])]}
    verdict = None
    if "twin" in gains and "span" in gains:
        ratio = gains["span"]["all"] / gains["twin"]["all"] if gains["twin"]["all"] > 0 else float("nan")
        verdict = {"span_over_twin": ratio, "passes": ratio >= 0.8,
                   "exact_over_twin": (gains["exact"]["all"] / gains["twin"]["all"]
                                       if "exact" in gains and gains["twin"]["all"] > 0 else None)}
    return {"rows": rows, "gains": gains, "verdict": verdict}


def table(summary):
    domains = real_text.DOMAINS
    lines = ["| student | " + " | ".join(f"{d} bpb" for d in domains) +
             " | all bpb | positions paired | train s | peak MiB |", "|" + " --- |" * (len(domains) + 5)]
    for variant, row in summary["rows"].items():
        paired = f"{row['paired_percent']:.1f} %" if row["paired_percent"] is not None else ""
        lines.append(f"| {variant} | " + " | ".join(f"{row['bpb'][d]:.3f}" for d in domains) +
                     f" | {row['mean_bpb']:.3f} | {paired} | {row['train_seconds']:.0f} | {row['peak_mib']:.0f} |")
    lines += ["", "| gain of KL + SFT over SFT-only (bpb) | " + " | ".join(domains) + " | all | all, per seed |",
              "|" + " --- |" * (len(domains) + 3)]
    for name, g in summary["gains"].items():
        label = {"twin": "twin (same tokenizer)", "span": "cross, span", "exact": "cross, exact"}[name]
        lines.append(f"| {label} | " + " | ".join(f"{g[d]:+.3f}" for d in domains) + f" | {g['all']:+.3f} | " +
                     ", ".join(f"{x:+.3f}" for x in g["all_per_seed"]) + " |")
    return "\n".join(lines)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(real_fusion.ROOT / "runs" / "real-span"))
    p.add_argument("--quick", action="store_true", help="a minute-scale run for the tests")
    p.add_argument("--seeds", default="1")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--steps", type=int, default=160)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--distill-weight", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=32)
    p.add_argument("--max-length", type=int, default=192)
    p.add_argument("--chunk-bytes", type=int, default=500)
    p.add_argument("--train-bytes", type=int, default=40000)
    p.add_argument("--eval-bytes", type=int, default=5000)
    p.add_argument("--threads", type=int, default=real_fusion.os.cpu_count() or 1)
    args = p.parse_args()
    if args.quick:
        args.steps, args.batch, args.train_bytes, args.eval_bytes, args.max_length = 3, 2, 3000, 1500, 96
        args.chunk_bytes, args.hidden, args.layers = 300, 32, 1
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    return args


def main():
    args = parse_args()
    started = time.time()
    out, data, args.corpus = real_fusion.open_out(args, "real_span")
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "threads", "corpus")}
    settings["corpus_sha256"] = args.corpus["sha256"]
    stamp = out / "settings.json"
    # More seeds reuse the runs of the seeds already done.
    kept = lambda d: {k: v for k, v in d.items() if k not in ("seeds", "seed_list")}  # noqa: E731
    if stamp.exists() and kept(json.loads(stamp.read_text())) != kept(json.loads(json.dumps(settings))):
        log("settings or corpus changed: starting over")
        for sub in ("runs", "init", "teacher-cache"):
            real_fusion.shutil.rmtree(out / sub, ignore_errors=True)
    stamp.write_text(json.dumps(settings, indent=2) + "\n")

    init_students(args)
    cache_seconds = 0.0
    if not (out / "teacher-cache" / "manifest.json").exists():
        log("caching the teacher's top-k logits")
        path = recipe(args, out / "runs" / "cache", "cross-kl-span", args.seed_list[0], data)
        cache_seconds, _ = real_fusion.run(args, "cache-logits", path, threads=args.threads)
    results = [train_variant(args, v, s, data) for s in args.seed_list for v in VARIANTS]
    summary = summarise(args, results)
    report = {"settings": settings, "summary": summary, "results": results, "cache_seconds": cache_seconds,
              "wall_seconds": time.time() - started}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    text = table(summary)
    (out / "report.md").write_text(text + "\n")
    print(text)
    v = summary["verdict"]
    if v:
        exact = f", exact's {v['exact_over_twin']:.2f}" if v["exact_over_twin"] is not None else ""
        print(f"span's gain is {v['span_over_twin']:.2f} of the twin's (goal >= 0.8: "
              f"{'met' if v['passes'] else 'not met'}){exact}")
    log(f"done in {time.time() - started:.0f} s (report: {out / 'report.md'})")


if __name__ == "__main__":
    main()
