"""Dynamic Logit Fusion on the benchmark's skills (docs/benchmark.md, DLF): the pivot is the large
model; a small base with the student's tokenizer is trained on the general pool, and each expert is
the base fine-tuned lightly on its skill's pool. Each skill's held-out set is decoded with that
skill's expert by every strategy (single task), and with both experts (multi-task: one active expert
per step, J summed over both experts, method.md §4)."""
import time

import tasks
from lf import evaluate, init_model, log, parse_size, train

STRATEGIES = ["large_only", "static", "dynamic"]


def run_dlf(lf, root, data, toks, args, large):
    """Returns {row name: {skill: EM}}."""
    skills = list(tasks.SKILLS)
    hidden, layers = parse_size(args.dlf_base_size)
    base_init = init_model(lf, root / "models" / f"dlf_base_init_{args.dlf_base_size}", "llama", toks["student"],
                           (hidden, layers), 21)
    dlf = root / "dlf"
    t0 = time.time()
    base = train(lf, dlf / "base", base_init, data / "general.jsonl", steps=args.dlf_base_steps, seed=1, lr=3e-3,
                 batch=16)
    experts = dict(zip(skills, lf.parallel(
        lambda skill: train(lf, dlf / f"expert_{skill}", base, data / f"pool_{skill}.jsonl", steps=args.expert_steps,
                            seed=1, lr=1e-3, batch=16), skills)))
    # Task arithmetic (method.md §4b): one small model from both experts, used as a single expert.
    merged = dlf / "merged"
    if not (merged / "config.json").exists():
        lf("merge", "--base", base, *[a for s in skills for a in ("--expert", experts[s], "--weight", args.merge_weight)],
           "--out", merged)
    experts["merged"] = merged
    log(f"DLF base and experts ready ({time.time() - t0:.0f}s); large model: the pivot")

    def run(job):
        name, strategy, expert_skills, eval_skills, only = job
        fusion = f"""models:
  large: {{path: {large}, device: cpu}}
  base: {{path: {base}}}
  experts: [{", ".join(f"{{name: {s}, path: {experts[s]}}}" for s in expert_skills)}]
fusion: {{strategy: {strategy}, alpha: {{min: 0.0, max: 2.0, step: 0.1}}, static_alpha: 1.0{f", expert: {only}" if only else ""}}}"""
        return evaluate(lf, None, root / "eval" / "dlf" / name, data, eval_skills, fusion=fusion, perplexity=False)

    jobs = []
    for strategy in STRATEGIES:  # single task: each skill with its own expert
        jobs += [(strategy, f"{strategy}-{skill}", strategy, [skill], [skill], None) for skill in skills]
    jobs.append(("dynamic, both experts", "dynamic-both", "dynamic", skills, skills, None))
    jobs.append(("static, both experts", "static-both", "static", skills, skills, None))
    jobs += [("expert alone", f"expert-{skill}", "expert_only", [skill], [skill], skill) for skill in skills]
    jobs.append(("dynamic, merged expert", "dynamic-merged", "dynamic", ["merged"], skills, None))
    jobs.append(("static, merged expert", "static-merged", "static", ["merged"], skills, None))
    jobs.append(("merged expert alone", "expert-merged", "expert_only", ["merged"], skills, "merged"))
    scores = lf.parallel(lambda job: run(job[1:]), jobs)
    results = {}
    for job, score in zip(jobs, scores):
        results.setdefault(job[0], {}).update(score)
    for name, score in results.items():
        log(f"DLF {name}: " + ", ".join(f"{s} EM {100 * v:.0f}%" for s, v in score.items()))
    return results
