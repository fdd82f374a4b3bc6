"""The embedded benchmark, version 2 (docs/benchmark.md): training-time fusion into a competent pivot.

Two skills; a specialist teacher per skill, each with its own tokenizer; a student first trained on a
small general pool (the pivot); then, from the pivot, students trained on a small mixed fusion set,
`clean` and `noisy` (a share of wrong final answers): SFT-only, InfiGFusion (GLD + ULD + SFT),
ULD + SFT, KL through the vocabulary map + SFT, on-policy distillation (KL, and GLD + ULD), and the
same-tokenizer control (KL from each teacher's twin trained with the student's tokenizer), over
several seeds, with checkpoints evaluated along the way. An "ample-data SFT" row (the student trained
on the teachers' pools) shows what the student can learn. Then Dynamic Logit Fusion on the same
skills. Everything is made, trained and evaluated by logitfuse.

    python demo/run_demo.py [--out runs/demo] [--data-seed 0] [--seeds 3] [--noise 0.3] [--quick]

Every split is regenerated from --data-seed; everything of one data seed lives under OUT/data-seed-N
and is reused by a rerun (--fresh retrains the students).
"""
import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data as bench_data  # noqa: E402
import report  # noqa: E402
import tasks  # noqa: E402
from dlf_part import run_dlf  # noqa: E402
from lf import (ROOT, Runner, checkpoints_of, evaluate, init_model, kernels_available, log, machine, parse_size,  # noqa: E402
                train, train_seconds)

SKILLS = list(tasks.SKILLS)
# Each teacher knows one skill, so teachers are mixed per sequence by their own CE on it (FuseLLM's
# min_ce): in effect routed by the skill. λ is chosen once (--distill-weight) for every variant.
GLD = "graph: {type: gld, top_k: 5}"
KL = "token: {type: kl, top_k: 10}, graph: {type: none}"
ON_POLICY = "on_policy: {weight: 0.5, max_new_tokens: 40}"
VARIANTS = {
    # name: (teachers: None, "own" (their own tokenizers) or "twin" (the same-tokenizer control: each
    # teacher's twin, same size, data and steps, with the student's tokenizer), loss without λ[,
    # position alignment when not --positions: kl+sft-span is the span-level alignment of docs/training.md])
    "sft": (None, None),
    "infigfusion": ("own", "token: {type: uld}, " + GLD),
    "uld+sft": ("own", "token: {type: uld}, graph: {type: none}"),
    "kl+sft": ("own", KL),
    "kl+sft-span": ("own", KL, "span"),
    "on-policy": ("own", KL + ", " + ON_POLICY),
    "on-policy+gld+uld": ("own", "token: {type: uld}, " + GLD + ", " + ON_POLICY),
    "kl+sft-same-tok": ("twin", KL),
}


def loss_section(variant, args):
    teachers, body = VARIANTS[variant][:2]
    if teachers is None:
        return "{}"
    return f"{{distill_weight: {args.distill_weight}, teacher_mix: min_ce, {body}}}"


def positions_of(variant, args):
    return VARIANTS[variant][2] if len(VARIANTS[variant]) > 2 else args.positions


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "runs" / "demo"))
    p.add_argument("--data-seed", type=int, default=0, help="regenerates every split (and the tokenizers)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per student variant")
    p.add_argument("--noise", type=float, default=0.3, help="share of the noisy fusion set's responses with a wrong final answer")
    p.add_argument("--conditions", default="clean,noisy")
    p.add_argument("--variants", default=",".join(VARIANTS), help="from: " + ", ".join(VARIANTS))
    p.add_argument("--eval-size", type=int, default=80, help="held-out examples per skill")
    p.add_argument("--fusion-size", type=int, default=200, help="fusion examples per skill")
    p.add_argument("--general-size", type=int, default=300, help="general-pool examples per skill (the pivot's)")
    p.add_argument("--pool-size", type=int, default=700, help="teacher-pool examples per skill")
    p.add_argument("--student-size", default="128x4", help="hidden x layers")
    p.add_argument("--teacher-size", default="128x4", help="hidden x layers")
    p.add_argument("--teacher-steps", default="2400,1000", help="per skill (arithmetic,reverse)")
    p.add_argument("--pivot-steps", type=int, default=1500)
    p.add_argument("--pivot-rows", default="150,100",
                   help="general-pool rows per skill (arithmetic,reverse) the pivot trains on: with all 300 of each, "
                        "at lr 3e-3, its scores were a draw of the training seed (reverse 19-64%% on one data seed)")
    p.add_argument("--pivot-lr", type=float, default=1e-3)
    p.add_argument("--ample-steps", type=int, default=1500, help="steps of the ample-data SFT row")
    p.add_argument("--student-steps", type=int, default=150)
    p.add_argument("--student-lr", type=float, default=1e-3)
    p.add_argument("--distill-weight", type=float, default=0.5, help="λ of every fused variant")
    p.add_argument("--eval-points", type=int, default=4, help="checkpoints evaluated along each student's run")
    p.add_argument("--positions", default="exact", choices=["exact", "offsets", "dtw", "index"])
    p.add_argument("--dlf-base-size", default="64x2")
    p.add_argument("--dlf-base-steps", type=int, default=1200,
                   help="steps of the small DLF base on the general pool (with 600, one data seed's reverse expert "
                        "did not learn its skill: 16%% alone)")
    p.add_argument("--expert-steps", type=int, default=150, help="light fine-tuning steps of each DLF expert")
    p.add_argument("--expert-lr", type=float, default=2.5e-4,
                   help="learning rate of the DLF experts' fine-tuning: the lighter the experts, the less they move "
                        "from the base on the other skill, which static decoding with both experts pays for, and the "
                        "less DLF gains (docs/decoding.md)")
    p.add_argument("--shots", type=int, default=3,
                   help="worked examples before every question in the DLF in-context rows, whose models are also "
                        "trained with 1..shots examples in a share of their rows (0: no in-context rows)")
    p.add_argument("--icl-share", type=float, default=0.5,
                   help="share of each in-context DLF model's training rows also given as a copy with worked examples before it")
    p.add_argument("--icl-steps", type=int, default=800,
                   help="steps that teach the pivot worked examples before it serves as DLF's large model")
    p.add_argument("--merge-weight", type=float, default=1.0,
                   help="λ of each expert's task vector in the merged DLF expert (logitfuse merge)")
    p.add_argument("--skip-dlf", action="store_true")
    p.add_argument("--harsh-teachers", action="store_true",
                   help="teachers with a tokenizer that merges across words and digits (data.WHOLE_LINE); its own "
                        "teachers, students, report-harsh.json and pictures; the twins and the pivot are shared")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs in parallel (one thread each)")
    p.add_argument("--cpu-kernels", choices=["avx2", "avx512", "default", "native"], default="avx2",
                   help="the instruction set of LibTorch's CPU kernels in every run: the same recipe trains other "
                        "weights with each (one data seed's arithmetic teacher: 78.8%% with AVX2, 93.8%% with AVX-512), "
                        "and the default printed the README's figures on both machines measured (one with AVX-512); "
                        "native: the machine's best")
    p.add_argument("--quick", action="store_true", help="small sizes for the test suite")
    p.add_argument("--fresh", action="store_true", help="retrain the students")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.eval_size, args.fusion_size, args.general_size, args.pool_size = 1, 20, 30, 40, 120
        args.student_size, args.teacher_size, args.dlf_base_size = "32x2", "32x2", "32x2"
        args.teacher_steps, args.pivot_steps, args.ample_steps, args.student_steps = "20,20", 10, 20, 10
        args.pivot_rows = "30,20"
        args.dlf_base_steps, args.expert_steps, args.eval_points, args.shots, args.icl_steps = 10, 10, 2, 2, 10
        args.variants = "sft,infigfusion,on-policy"
    for v in args.variants.split(","):
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r} (known: {', '.join(VARIANTS)})")
    rows = args.pivot_rows.split(",")
    if len(rows) != len(tasks.SKILLS) or not all(r.isdigit() and 0 < int(r) <= args.general_size for r in rows):
        p.error(f"--pivot-rows {args.pivot_rows!r}: one count per skill ({', '.join(tasks.SKILLS)}), each 1..{args.general_size}")
    args.pivot_rows = [int(r) for r in rows]
    for c in args.conditions.split(","):
        if c not in ("clean", "noisy"):
            p.error(f"unknown condition {c!r} (known: clean, noisy)")
    return args


def main():
    args = parse_args()
    start = time.time()
    native = machine(Runner(1, 1))
    if not kernels_available(args.cpu_kernels, native):
        sys.exit(f"demo: --cpu-kernels {args.cpu_kernels}: this machine offers fewer ({native}); "
                 "run with --cpu-kernels native (its figures will differ from the README's)")
    lf = Runner(args.jobs, 1, args.cpu_kernels)
    root = Path(args.out) / f"data-seed-{args.data_seed}"
    root.mkdir(parents=True, exist_ok=True)
    cpu = machine(lf)
    log(f"this machine: {cpu}")
    data = bench_data.make_data(root, args)
    toks = bench_data.make_tokenizers(root, data)
    log(f"data seed {args.data_seed} in {data}: per skill {args.pool_size} pool, {args.general_size} general, "
        f"{args.fusion_size} fusion ({100 * args.noise:.0f}% wrong when noisy), {args.eval_size} held out")
    coverage = bench_data.exact_coverage(lf, toks, data, root)

    models = root / "models"
    student_init = init_model(lf, models / f"student_init_{args.student_size}", "llama", toks["student"],
                              parse_size(args.student_size), 13)
    arches = {"arithmetic": ("qwen2", 11), "reverse": ("phi3", 12)}
    tag = "-harsh" if args.harsh_teachers else ""
    teacher_tok = {k: toks["harsh" if args.harsh_teachers else k] for k in SKILLS}
    teacher_inits = {k: init_model(lf, models / f"teacher_{k}{tag}_init_{args.teacher_size}", arches[k][0], teacher_tok[k],
                                   parse_size(args.teacher_size), arches[k][1]) for k in SKILLS}

    # The reference models: specialists, the pivot and the ample-data row, trained in parallel.
    teacher_steps = dict(zip(SKILLS, (int(x) for x in args.teacher_steps.split(","))))
    jobs = [(f"teacher-{k}", lambda k=k: train(lf, root / f"teachers{tag}" / k, teacher_inits[k], data / f"pool_{k}.jsonl",
                                               steps=teacher_steps[k], seed=1, lr=3e-3, batch=32)) for k in SKILLS]
    jobs.insert(1, ("ample-data SFT", lambda: train(lf, root / "ample", student_init, data / "pool_all.jsonl",
                                                    steps=args.ample_steps, seed=1, lr=3e-3, batch=32)))
    if any(VARIANTS[v][0] == "twin" for v in args.variants.split(",")):
        twin_inits = {k: init_model(lf, models / f"twin_{k}_init_{args.teacher_size}", arches[k][0], toks["student"],
                                    parse_size(args.teacher_size), arches[k][1]) for k in SKILLS}
        jobs[2:2] = [(f"twin-{k}", lambda k=k: train(lf, root / "twins" / k, twin_inits[k], data / f"pool_{k}.jsonl",
                                                     steps=teacher_steps[k], seed=1, lr=3e-3, batch=32)) for k in SKILLS]
    # Everything trained from the pivot lives in folders named by its recipe, so a rerun with another
    # one trains its own students and DLF rows instead of reusing stale ones.
    pivot_tag = f"rows{'-'.join(map(str, args.pivot_rows))}-lr{args.pivot_lr:g}-steps{args.pivot_steps}"
    jobs.append(("pivot", lambda: train(lf, root / "pivot" / pivot_tag, student_init,
                                        bench_data.pivot_pool(data, args.pivot_rows), steps=args.pivot_steps, seed=1,
                                        lr=args.pivot_lr, batch=16)))

    def reference_job(job):
        name, make = job
        final = make()
        # The harsh teachers are other models than the usual ones: their own evaluation folders.
        where = name + tag if name.startswith("teacher-") else f"pivot/{pivot_tag}" if name == "pivot" else name
        scores = evaluate(lf, final, root / "eval" / where, data, SKILLS)
        log(f"{name}: " + ", ".join(f"{k} EM {100 * scores[k]:.0f}%" for k in SKILLS))
        return name, final, {**scores, "wall_s": train_seconds(final.parent)}

    reference, finals = {}, {}
    for name, final, scores in lf.parallel(reference_job, jobs):
        reference[name], finals[name] = report.summarize([scores]), final
    pivot = finals["pivot"]
    teacher_sets = {"own": [(k, finals[f"teacher-{k}"]) for k in SKILLS]}
    if f"twin-{SKILLS[0]}" in finals:
        teacher_sets["twin"] = [(k, finals[f"twin-{k}"]) for k in SKILLS]

    students_dir = root / f"students{tag}" / f"pivot-{pivot_tag}"
    students_eval = root / "eval" / f"students{tag}" / f"pivot-{pivot_tag}"
    if args.fresh:
        shutil.rmtree(students_dir, ignore_errors=True)
        shutil.rmtree(students_eval, ignore_errors=True)
    conditions = args.conditions.split(",")
    variants = args.variants.split(",")
    runs = [(c, v, s) for c in conditions for v in variants for s in range(args.seeds)]

    def student_job(run):
        condition, variant, seed = run
        teacher_set = VARIANTS[variant][0]
        name = f"{condition}-{variant}-seed{seed}"
        run_dir = students_dir / name
        final = train(lf, run_dir, pivot, data / f"fusion-{condition}.jsonl", steps=args.student_steps, seed=100 + seed,
                      lr=args.student_lr, batch=16, teachers=teacher_sets[teacher_set] if teacher_set else (),
                      loss=loss_section(variant, args), positions=positions_of(variant, args), checkpoints=args.eval_points)
        seconds = train_seconds(run_dir)
        curve = {step: evaluate(lf, d, students_eval / name / d.name, data, SKILLS, perplexity=False)
                 for step, d in checkpoints_of(run_dir) if step <= args.student_steps - args.student_steps // args.eval_points}
        scores = evaluate(lf, final, students_eval / name / "final", data, SKILLS)
        curve[args.student_steps] = {k: scores[k] for k in SKILLS}
        log(f"{condition} {variant} seed {seed}: " + ", ".join(
            f"{k} EM {100 * scores[k]:.0f}% ppl {scores[k + '-ppl']:.2f}" for k in SKILLS) + f" ({seconds:.0f}s)")
        return {**scores, "wall_s": seconds}, curve

    results = dict(zip(runs, lf.parallel(student_job, runs)))
    pivot_point = {k: reference["pivot"][k]["mean"] for k in SKILLS}
    students, curves = {}, {}
    for c in conditions:
        students[c] = {v: report.summarize([results[(c, v, s)][0] for s in range(args.seeds)]) for v in variants}
        curves[c] = {}
        for v in variants:
            by_step = {0: [pivot_point] * args.seeds}
            for s in range(args.seeds):
                for step, scores in results[(c, v, s)][1].items():
                    by_step.setdefault(step, []).append(scores)
            curves[c][v] = by_step

    outcome = run_dlf(lf, root, data, toks, args, pivot, pivot_tag) if not args.skip_dlf else None
    pictures = report.plot_curves(curves, lambda k: root / f"exact_match_{k}{tag}.png", SKILLS, conditions)
    if outcome and (root / "dlf_trace.png").exists():
        pictures.append(root / "dlf_trace.png")

    teacher_rows = {k: reference[f"teacher-{k}"] for k in SKILLS}
    out = {"data_seed": args.data_seed, "machine": cpu, "seeds": args.seeds, "noise": args.noise,
           "student_steps": args.student_steps,
           "distill_weight": args.distill_weight, "positions": args.positions, "exact_coverage": coverage,
           "sizes": {"student": args.student_size, "teacher": args.teacher_size, "eval": args.eval_size,
                     "fusion": args.fusion_size, "general": args.general_size, "pool": args.pool_size},
           "pivot": {"rows": dict(zip(SKILLS, args.pivot_rows)), "lr": args.pivot_lr, "steps": args.pivot_steps},
           "models": reference, "conditions": {}, "curves": {c: {v: {str(s): r for s, r in by.items()}
                                                              for v, by in cv.items()} for c, cv in curves.items()},
           "pictures": [str(p) for p in pictures]}
    print()
    print(f"Fusion benchmark v2, data seed {args.data_seed}: exact match % and response perplexity on {args.eval_size} "
          f"held-out examples per skill; the pivot trained {args.pivot_steps} steps (lr {args.pivot_lr:g}) on "
          + ", ".join(f"{n} {k}" for k, n in zip(SKILLS, args.pivot_rows)) + " general-pool rows; "
          f"students start from it and train {args.student_steps} steps on "
          f"{len(SKILLS) * args.fusion_size} fusion examples (mean ± half-range over {args.seeds} seed(s); λ = "
          f"{args.distill_weight}; positions {args.positions})")
    print(f"run on: {cpu} (models trained elsewhere and reused keep that machine's rounding)")
    print("student response tokens with an identical teacher token (what `exact` pairs): " + "; ".join(
        f"{k}-teacher on {k} {100 * coverage[teacher_tok[k].name][k]:.0f}%" for k in SKILLS))
    ref_rows = [(name, reference[name]) for name in [f"teacher-{k}" for k in SKILLS] + [f"twin-{k}" for k in SKILLS]
                + ["pivot", "ample-data SFT"] if name in reference]
    for c in conditions:
        print(f"\n[{c} fusion set]")
        print("\n".join(report.table(ref_rows + list(students[c].items()), SKILLS)))
        lines, verdict = report.verdicts(c, students[c], reference["pivot"], teacher_rows, SKILLS)
        print("\n".join(lines))
        out["conditions"][c] = {"students": students[c], "verdict": verdict}
    if outcome:
        dlf, shift, held_out = (outcome[k] for k in ("strategies", "expert_kl_from_base", "held_out"))
        out["dlf"] = {**{k: v for k, v in outcome.items() if k != "correct"}, "dlf_base_size": args.dlf_base_size,
                      "dlf_base_steps": args.dlf_base_steps, "expert_steps": args.expert_steps,
                      "expert_lr": args.expert_lr, "shots": args.shots, "icl_share": args.icl_share}
        print(f"\nDynamic Logit Fusion (exact match %): large = the pivot; small base {args.dlf_base_size} trained "
              f"{args.dlf_base_steps} steps on the general pool; experts = the base fine-tuned {args.expert_steps} "
              f"steps (lr {args.expert_lr:g}) on each skill's pool; held out: "
              + ", ".join(f"{n} {k}" for k, n in held_out.items())
              + " questions (the evaluation and fusion prompts: no DLF model trains on them)")
        if args.shots:
            print(f"in-context rows: their own models: the pivot and the base trained {args.icl_steps} more steps on the "
                  f"general pool with {100 * args.icl_share:.0f}% more rows that carry 1-{args.shots} worked examples, "
                  f"the experts fine-tuned from that base the same way; k-shot: {args.shots} examples of the skill "
                  f"before every question")
        width = max(24, *(len(name) + 2 for name in dlf))
        print(f"{'decoding':<{width}}" + "".join(f"{k + ' EM %':>18}" for k in SKILLS))
        for name, scores in dlf.items():
            print(f"{name:<{width}}" + "".join(f"{100 * scores[k]:>18.1f}" for k in SKILLS))
        print("experts' mean KL(expert || base) per gold response token: " + "; ".join(
            f"{name}: " + ", ".join(f"on {k} {v:.3f}" for k, v in by.items()) for name, by in shift.items()))
        print("\n".join(report.dlf_single_task_lines(dlf, outcome["correct"], SKILLS)))
        for prefix in ("", "in-context models: "):  # the in-context models' 0-shot rows too
            if f"{prefix}static, both experts" in dlf:
                print("\n".join(report.dlf_goal_lines(dlf, outcome["correct"], SKILLS, prefix)))
        suffix = f", {args.shots}-shot"
        for row in [r for r in dlf if r.endswith(suffix)]:
            plain = dlf[row[:-len(suffix)]]
            print(f"{args.shots}-shot vs 0-shot ({row[:-len(suffix)]}): " + ", ".join(
                f"{k} {100 * dlf[row][k]:.1f} vs {100 * plain[k]:.1f}" for k in SKILLS))
    out["wall_seconds"] = time.time() - start
    (root / f"report{tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwall time {out['wall_seconds']:.0f}s; report: {root / f'report{tag}.json'}; pictures: "
          + ", ".join(str(p) for p in pictures))


if __name__ == "__main__":
    main()
