"""The embedded benchmark (docs/benchmark.md): two teachers, each trained by logitfuse on one skill
with its own tokenizer, fused into a student on a small mixed set; the students (SFT-only, fused
GLD+ULD+SFT, and the ULD+SFT / GLD+SFT ablations, several seeds) and the teachers are evaluated by
exact match on held-out sets of each skill. Then Dynamic Logit Fusion on the same skills: a small
base and the larger model trained on the mixed set, an expert per skill fine-tuned from the base on
its pool, and decoding with dynamic, static (α = 1) and large-only fusion.

    python demo/run_demo.py [--out runs/demo] [--seeds 3] [--quick] [--fresh] [--skip-dlf]

Teachers and finished runs are kept under --out and reused by a rerun (--fresh retrains students).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tasks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BINARY = Path(os.environ.get("LOGITFUSE_BIN", ROOT / "build" / "bin" / "logitfuse"))


def log(message):
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def logitfuse(*args, quiet=True):
    cmd = [str(BINARY), "--log-level", "warn" if quiet else "info", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"demo: `{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_data(out, args):
    """Per skill: a large teacher pool, a small fusion share, a held-out evaluation set; disjoint."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    fusion = []
    for skill in tasks.SKILLS:
        evaluation = tasks.make_split(skill, args.eval_size, seed=1)
        fusion_part = tasks.make_split(skill, args.fusion_size, seed=2, exclude={e["prompt"] for e in evaluation})
        pool = tasks.make_split(skill, args.pool_size, seed=3,
                                exclude={e["prompt"] for e in evaluation + fusion_part})
        write_jsonl(data / f"pool_{skill}.jsonl", pool)
        write_jsonl(data / f"eval_{skill}.jsonl", evaluation)
        fusion += fusion_part
    fusion.sort(key=lambda e: e["prompt"])  # mixed; the trainer shuffles
    write_jsonl(data / "fusion.jsonl", fusion)
    corpus = data / "corpus.txt"
    with corpus.open("w") as f:
        for skill in tasks.SKILLS:
            for line in (data / f"pool_{skill}.jsonl").read_text().splitlines():
                e = json.loads(line)
                f.write(e["prompt"] + e["response"] + "\n")
    return data


def make_tokenizers(out, data):
    """Three genuinely different tokenizers trained on the task text."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    made = {}
    sp_dir = out / "tokenizers" / "unigram"
    if not (sp_dir / "tokenizer.model").exists():
        sp_dir.mkdir(parents=True, exist_ok=True)
        spm.SentencePieceTrainer.train(input=str(data / "corpus.txt"), model_prefix=str(sp_dir / "tokenizer"),
                                       vocab_size=180, model_type="unigram", bos_id=1, eos_id=2, unk_id=0, pad_id=3,
                                       minloglevel=2)
    made["unigram"] = sp_dir / "tokenizer.model"
    for name, size in [("bpe400", 400), ("bpe300", 300)]:
        d = out / "tokenizers" / name
        if not (d / "tokenizer.json").exists():
            d.mkdir(parents=True, exist_ok=True)
            tok = Tokenizer(models.BPE())
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=["<|endoftext|>"],
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
            tok.train([str(data / "corpus.txt")], trainer)
            tok.save(str(d / "tokenizer.json"))
            (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
        made[name] = d
    return made


def init_model(out_dir, arch, tokenizer, size, seed):
    if (out_dir / "config.json").exists():
        return
    hidden, layers = size
    logitfuse("init-model", "--arch", arch, "--out", out_dir, "--tokenizer", tokenizer, "--hidden", hidden,
              "--layers", layers, "--heads", 4, "--kv-heads", 2, "--intermediate", 2 * hidden, "--seed", seed)


def train(run_dir, student, teachers, data_file, loss, steps, seed, lr, batch, resume=True, positions="exact"):
    teacher_lines = "".join(f"\n  - {{name: {n}, path: {p}, dtype: fp32, chat_template: plain}}" for n, p in teachers)
    recipe = f"""run: {{name: {run_dir.name}, output_dir: {run_dir}, seed: {seed}, device: cpu}}
student: {{path: {student}, dtype: fp32, chat_template: plain}}
teachers: {"[]" if not teachers else ""}{teacher_lines}
data: {{train: {data_file}, max_length: 96, max_prompt_length: 48}}
loss: {loss}
alignment: {{positions: {positions}, vocab: mined, cache_dir: {run_dir.parent / "vocab-maps"}}}
train: {{max_steps: {steps}, micro_batch_size: {batch}, lr: {lr}, schedule: cosine, warmup_ratio: 0.05, precision: fp32, clip_grad: 1.0, weight_decay: 0.01}}
checkpoint: {{every_steps: 0}}
log: {{every_steps: 10}}
"""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(recipe)
    args = ["train", path] + (["--resume", "auto"] if resume and (run_dir / "final").exists() else [])
    logitfuse(*args)
    return run_dir / "final"


# Each teacher knows one skill and is lost on the other (its perplexity there is in the hundreds), so
# teachers are mixed per sequence by their own CE on it (FuseLLM's min_ce), not uniformly.
VARIANTS = {
    # name: (teachers?, loss section)
    "sft": (False, "{}"),
    "fused": (True, "{distill_weight: 0.5, teacher_mix: min_ce, token: {type: uld}, graph: {type: gld, top_k: 5}}"),
    "uld+sft": (True, "{distill_weight: 0.5, teacher_mix: min_ce, token: {type: uld}, graph: {type: none}}"),
    "gld+sft": (True, "{distill_weight: 0.5, teacher_mix: min_ce, token: {type: none}, graph: {type: gld, top_k: 5}}"),
    # Not in the paper's recipe: token-level KL through the mined vocabulary map, with GLD.
    # Lighter distillation (λ = 0.1), for comparison.
    "fused-l0.1": (True, "{distill_weight: 0.1, teacher_mix: min_ce, token: {type: uld}, graph: {type: gld, top_k: 5}}"),
    "kl-l0.1": (True, "{distill_weight: 0.1, teacher_mix: min_ce, token: {type: kl, top_k: 10}, graph: {type: none}}"),
    "kl+gld+sft": (True, "{distill_weight: 0.5, teacher_mix: min_ce, token: {type: kl, top_k: 10}, graph: {type: gld, top_k: 5}}"),
}
ANSWER_REGEX = "The answer is ([^.]*)[.]"


def evaluate(model_dir, out_dir, data, fusion=None, perplexity=True, skills=tuple(tasks.SKILLS)):
    """Exact match (and perplexity) on each skill's held-out set, through `logitfuse eval`; with
    `fusion` (the models and fusion sections of a DLF config), of fused decoding instead of one model."""
    if not (out_dir / "metrics.json").exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        tasks_yaml = "".join(
            f"\n  - {{name: {skill}, type: exact_match, data: {data / f'eval_{skill}.jsonl'}, extract: regex, "
            f"regex: '{ANSWER_REGEX}'}}" +
            (f"\n  - {{name: {skill}-ppl, type: perplexity, data: {data / f'eval_{skill}.jsonl'}}}" if perplexity else "")
            for skill in tasks.SKILLS)
        config = out_dir / "eval.yaml"
        models = fusion if fusion else f"model: {{path: {model_dir}, device: cpu}}"
        config.write_text(f"""{models}
generation: {{max_new_tokens: 40, batch_size: 50, chat_template: plain}}
sampling: {{temperature: 0}}
output_dir: {out_dir}
tasks:{tasks_yaml}
""")
        logitfuse("eval", config)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    scores = {skill: metrics["tasks"][skill]["exact_match"] for skill in skills}
    if perplexity:
        scores.update({f"{skill}-ppl": metrics["tasks"][f"{skill}-ppl"]["perplexity"] for skill in skills})
    return scores


DLF_STRATEGIES = ["large_only", "static", "dynamic"]


def dlf_benchmark(out, data, toks, args, large):
    """Dynamic Logit Fusion on the demo's skills (docs/benchmark.md). One shared tokenizer (the
    students'); the small base and the large model know the skills only from the mixed fusion set,
    each expert is the base fine-tuned on its skill's pool. Each skill's held-out set is decoded with
    that skill's expert (the paper's single-task setting) by every strategy, and with both experts
    (multi-task: one active expert per step, J summed over both, method.md §4).
    Returns {row name: {skill: EM}}."""
    models = out / "models"
    hidden, layers = (int(x) for x in args.dlf_base_size.split("x"))
    base_init = models / f"dlf_base_init_{args.dlf_base_size}"
    init_model(base_init, "llama", toks["bpe300"], (hidden, layers), 21)
    dlf = out / "dlf"
    t0 = time.time()
    base = train(dlf / "base", base_init, [], data / "fusion.jsonl", "{}", args.student_steps, 1, 3e-3, 16)
    experts = {}
    for skill in tasks.SKILLS:
        experts[skill] = train(dlf / f"expert_{skill}", base, [], data / f"pool_{skill}.jsonl", "{}",
                               args.expert_steps, 1, 2e-3, 32)
    log(f"DLF base and experts ready ({time.time() - t0:.0f}s); large model: {large}")

    def run(name, strategy, expert_skills, skills, only=None):
        t0 = time.time()
        fusion = f"""models:
  large: {{path: {large}, device: cpu}}
  base: {{path: {base}}}
  experts: [{", ".join(f"{{name: {s}, path: {experts[s]}}}" for s in expert_skills)}]
fusion: {{strategy: {strategy}, alpha: {{min: 0.0, max: 2.0, step: 0.1}}, static_alpha: 1.0{f", expert: {only}" if only else ""}}}"""
        scores = evaluate(None, out / "eval" / "dlf" / name, data, fusion, perplexity=False, skills=skills)
        log(f"DLF {name}: " + ", ".join(f"{s} EM {100 * scores[s]:.0f}%" for s in skills) + f" ({time.time() - t0:.0f}s)")
        return scores

    results = {}
    for strategy in DLF_STRATEGIES:  # single task: each skill with its own expert
        results[strategy] = {}
        for skill in tasks.SKILLS:
            results[strategy].update(run(f"{strategy}-{skill}", strategy, [skill], [skill]))
    results["dynamic, both experts"] = run("dynamic-both", "dynamic", list(tasks.SKILLS), list(tasks.SKILLS))
    results["expert alone"] = {}
    for skill in tasks.SKILLS:
        results["expert alone"].update(run(f"expert-{skill}", "expert_only", [skill], [skill], only=skill))
    return results


def mean_spread(values):
    m = sum(values) / len(values)
    return m, (max(values) - min(values)) / 2 if len(values) > 1 else 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "runs" / "demo"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pool-size", type=int, default=1200)
    parser.add_argument("--fusion-size", type=int, default=300)
    parser.add_argument("--eval-size", type=int, default=100)
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--student-steps", type=int, default=400)
    parser.add_argument("--variants", default="sft,fused,uld+sft,gld+sft",
                        help="students to train, from: " + ", ".join(VARIANTS))
    parser.add_argument("--student-size", default="128x4", help="hidden x layers of the student")
    parser.add_argument("--positions", default="exact", choices=["exact", "offsets", "dtw", "index"],
                        help="alignment.positions of the fused students (exact: the next tokens are the same text)")
    parser.add_argument("--dlf-base-size", default="64x2", help="hidden x layers of the DLF small base and experts")
    parser.add_argument("--expert-steps", type=int, default=400, help="fine-tuning steps of each DLF expert")
    parser.add_argument("--skip-dlf", action="store_true", help="leave out the Dynamic Logit Fusion part")
    parser.add_argument("--quick", action="store_true", help="small sizes for the test suite")
    parser.add_argument("--fresh", action="store_true", help="retrain the students")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.pool_size, args.fusion_size, args.eval_size = 1, 300, 40, 20
        args.teacher_steps, args.student_steps, args.variants, args.student_size = 40, 20, "sft,fused", "64x2"
        args.dlf_base_size, args.expert_steps = "32x2", 20
    variants = args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            sys.exit(f"demo: unknown variant {v!r} (known: {', '.join(VARIANTS)})")
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = make_data(out, args)
    toks = make_tokenizers(out, data)
    log(f"data in {data}: pools of {args.pool_size} per skill, fusion set of {args.fusion_size} per skill, "
        f"{args.eval_size} held out per skill")

    models = out / "models"
    init_model(models / "teacher_arithmetic_init", "qwen2", toks["unigram"], (128, 4), 11)
    init_model(models / "teacher_reverse_init", "phi3", toks["bpe400"], (128, 4), 12)
    hidden, layers = (int(x) for x in args.student_size.split("x"))
    student_init = models / f"student_init_{args.student_size}"
    init_model(student_init, "llama", toks["bpe300"], (hidden, layers), 13)
    teachers = {}
    for skill in tasks.SKILLS:
        t0 = time.time()
        teachers[skill] = train(out / "teachers" / skill, models / f"teacher_{skill}_init", [],
                                data / f"pool_{skill}.jsonl", "{}", args.teacher_steps, 1, 3e-3, 32)
        log(f"teacher {skill} ready ({time.time() - t0:.0f}s)")

    results = {}
    for skill in tasks.SKILLS:
        results[f"teacher-{skill}"] = [evaluate(teachers[skill], out / "eval" / f"teacher-{skill}", data)]
    students = out / "students"
    if args.fresh and students.exists():
        shutil.rmtree(students)
        shutil.rmtree(out / "eval" / "students", ignore_errors=True)
        shutil.rmtree(out / "eval" / "dlf", ignore_errors=True)  # its large model is the SFT student
    teacher_list = [(skill, teachers[skill]) for skill in tasks.SKILLS]
    for variant in variants:
        use_teachers, loss = VARIANTS[variant]
        results[variant] = []
        for seed in range(args.seeds):
            t0 = time.time()
            run = students / f"{variant}-seed{seed}"
            final = train(run, student_init, teacher_list if use_teachers else [], data / "fusion.jsonl",
                          loss, args.student_steps, 100 + seed, 2e-3, 16, positions=args.positions)
            results[variant].append(evaluate(final, out / "eval" / "students" / run.name, data))
            r = results[variant][-1]
            log(f"student {variant} seed {seed}: " + ", ".join(
                f"{skill} EM {100 * r[skill]:.0f}% ppl {r[skill + '-ppl']:.2f}" for skill in tasks.SKILLS) +
                f" ({time.time() - t0:.0f}s)")

    dlf = None
    if not args.skip_dlf:
        # The large model: the SFT student of seed 0 (trained on the mixed set only), or one trained
        # the same way when the SFT variant was not run.
        large = students / "sft-seed0" / "final"
        if not large.exists():
            large = train(out / "dlf" / "large", student_init, [], data / "fusion.jsonl", "{}", args.student_steps,
                          100, 2e-3, 16)
        dlf = dlf_benchmark(out, data, toks, args, large)

    report = {"wall_seconds": time.time() - start, "seeds": args.seeds, "teacher_steps": args.teacher_steps,
              "student_steps": args.student_steps, "positions": args.positions, "fusion_size_per_skill": args.fusion_size,
              "pool_size_per_skill": args.pool_size, "eval_size_per_skill": args.eval_size, "models": {}}
    columns = [(skill, f"{skill} EM %", 100.0) for skill in tasks.SKILLS]
    columns += [(f"{skill}-ppl", f"{skill} ppl", 1.0) for skill in tasks.SKILLS]
    lines = [f"{'model':<20}" + "".join(f"{title:>20}" for _, title, _ in columns)]
    for name, runs in results.items():
        row, entry = f"{name:<20}", {}
        for key, _, scale in columns:
            m, spread = mean_spread([r[key] for r in runs])
            entry[key] = {"mean": m, "spread": spread, "runs": [r[key] for r in runs]}
            cell = f"{scale * m:.{1 if scale > 1 else 2}f}" + (f" ± {scale * spread:.{1 if scale > 1 else 2}f}" if len(runs) > 1 else "")
            row += f"{cell:>20}"
        report["models"][name] = entry
        lines.append(row)
    if dlf:
        report["dlf"] = {"strategies": dlf, "dlf_base_size": args.dlf_base_size, "expert_steps": args.expert_steps}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(f"Fusion benchmark: exact match (%) and response perplexity on {args.eval_size} held-out examples per skill; "
          f"students: mean ± half-range over {args.seeds} seed(s), {args.student_steps} steps on "
          f"{2 * args.fusion_size} fusion examples")
    print("\n".join(lines))
    if "sft" in results and "fused" in results:
        fused, sft = report["models"]["fused"], report["models"]["sft"]
        em = [s for s in tasks.SKILLS if fused[s]["mean"] > sft[s]["mean"]]
        ppl = [s for s in tasks.SKILLS if fused[f"{s}-ppl"]["mean"] < sft[f"{s}-ppl"]["mean"]]
        print(f"fused beats SFT-only on: exact match: {', '.join(em) if em else 'no skill'}; "
              f"perplexity: {', '.join(ppl) if ppl else 'no skill'}")
    if dlf:
        print()
        print(f"Dynamic Logit Fusion: exact match (%) on the same held-out sets. Large: the SFT student; small base "
              f"{args.dlf_base_size} trained on the mixed set; each skill decoded with its own expert (the base "
              f"fine-tuned on that skill's pool), and with both experts")
        print(f"{'decoding':<24}" + "".join(f"{skill + ' EM %':>20}" for skill in tasks.SKILLS))
        for name, scores in dlf.items():
            print(f"{name:<24}" + "".join(f"{100 * scores[s]:>20.1f}" for s in tasks.SKILLS))
        order = [s for s in tasks.SKILLS if dlf["dynamic"][s] >= dlf["static"][s] >= dlf["large_only"][s]]
        print(f"dynamic >= static >= large-only on: {', '.join(order) if order else 'no skill'}")
    print(f"wall time {report['wall_seconds']:.0f}s; report: {out / 'report.json'}")


if __name__ == "__main__":
    main()
