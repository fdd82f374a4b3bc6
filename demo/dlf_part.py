"""Dynamic Logit Fusion on the benchmark's skills (docs/benchmark.md, DLF): the pivot is the large
model; a small base with the student's tokenizer is trained on the general pool, and each expert is
the base fine-tuned lightly on its skill's pool. Each skill's held-out set is decoded with that
skill's expert by every strategy (single task), and with both experts (multi-task: one active expert
per step, J summed over both experts, method.md §4). The in-context rows (k worked examples before
every question) run on models of their own, trained to read such prompts (in_context_models)."""
import json
import time

import data as bench_data
import report
import tasks
from lf import answered_right, evaluate, init_model, log, parse_size, train

STRATEGIES = ["large_only", "static", "dynamic"]


def run_dlf(lf, root, data, toks, args, pivot, pivot_tag):
    """`pivot_tag` names the pivot's recipe: the evaluations and the in-context large model depend on it.
    Returns {"strategies": {row: {skill: EM}}, "correct": {row: {skill: [right or not, per
    question]}}, "expert_kl_from_base": {expert: {skill: nats}}, "large": {section: what its large
    model is}, "held_out": {skill: questions}}."""
    skills = list(tasks.SKILLS)
    hidden, layers = parse_size(args.dlf_base_size)
    base_init = init_model(lf, root / "models" / f"dlf_base_init_{args.dlf_base_size}", "llama", toks["student"],
                           (hidden, layers), 21)
    t0 = time.time()
    held_out = bench_data.dlf_held_out(data)
    questions = max(held_out.values())
    # Folders named by the training recipe (and evaluations by the held-out size), so a rerun with
    # other steps or rates trains new models.
    tag = f"base{args.dlf_base_steps}-expert{args.expert_steps}-lr{args.expert_lr:g}"
    dlf, eval_root = root / "dlf" / tag, root / "eval" / "dlf" / f"pivot-{pivot_tag}" / f"{tag}-heldout{questions}"
    # The base does not depend on the experts' recipe: shared by the runs that differ in it.
    base = train(lf, root / "dlf" / f"base{args.dlf_base_steps}" / "base", base_init, data / "general.jsonl",
                 steps=args.dlf_base_steps, seed=1, lr=3e-3, batch=16)
    experts = dict(zip(skills, lf.parallel(
        lambda skill: train(lf, dlf / f"expert_{skill}", base, data / f"pool_{skill}.jsonl", steps=args.expert_steps,
                            seed=1, lr=args.expert_lr, batch=16), skills)))
    # Task arithmetic (method.md §4b): one small model from both experts, used as a single expert;
    # and TIES: each task vector trimmed to its largest 20 %, signs elected per entry, agreeing entries
    # averaged, so the two skills' vectors interfere less than in the plain sum.
    for name, method in (("merged", "task_arithmetic"), ("merged-ties", "ties")):
        experts[name] = dlf / name
        if not (experts[name] / "config.json").exists():
            lf("merge", "--base", base,
               *[a for s in skills for a in ("--expert", experts[s], "--weight", args.merge_weight)],
               "--method", method, "--out", experts[name])
    large_names = {"main": "the pivot"}
    log(f"DLF base and experts ready ({time.time() - t0:.0f}s); large model: the pivot")
    shift = expert_shift(lf, eval_root, data, base, {s: experts[s] for s in skills})
    for name, by_skill in shift.items():
        log(f"DLF expert {name}: mean KL(expert || base) per response token " +
            ", ".join(f"on {s} {v:.3f}" for s, v in by_skill.items()))

    def job(label, name, strategy, expert_skills, eval_skills, only=None, criterion="sum", shots=0, models=None):
        return label, name, strategy, expert_skills, eval_skills, only, criterion, shots, models

    def run(spec):
        _, name, strategy, expert_skills, eval_skills, only, criterion, shots, models = spec
        large_, base_, experts_, where = models or (pivot, base, experts, eval_root)
        fusion = fusion_section(large_, base_, {s: experts_[s] for s in expert_skills}, strategy, criterion, only)
        scores = evaluate(lf, None, where / name, data, eval_skills, fusion=fusion, perplexity=False, shots=shots,
                          held_out="dlf-heldout")
        return scores, {skill: answered_right(where / name, skill) for skill in eval_skills}

    jobs = []
    for strategy in STRATEGIES:  # single task: each skill with its own expert
        jobs += [job(strategy, f"{strategy}-{skill}", strategy, [skill], [skill]) for skill in skills]
    jobs.append(job("dynamic, both experts", "dynamic-both", "dynamic", skills, skills))
    jobs.append(job("static, both experts", "static-both", "static", skills, skills))
    # The multi-expert criteria besides the paper's sum (docs/decoding.md).
    for criterion in ("active", "closest", "route"):
        jobs.append(job(f"dynamic, both, {criterion}", f"dynamic-both-{criterion}", "dynamic", skills, skills,
                        criterion=criterion))
    jobs += [job("expert alone", f"expert-{skill}", "expert_only", [skill], [skill], skill) for skill in skills]
    jobs.append(job("dynamic, merged expert", "dynamic-merged", "dynamic", ["merged"], skills))
    jobs.append(job("static, merged expert", "static-merged", "static", ["merged"], skills))
    jobs.append(job("merged expert alone", "expert-merged", "expert_only", ["merged"], skills, "merged"))
    jobs.append(job("dynamic, TIES-merged expert", "dynamic-merged-ties", "dynamic", ["merged-ties"], skills))
    jobs.append(job("TIES-merged expert alone", "expert-merged-ties", "expert_only", ["merged-ties"], skills,
                    "merged-ties"))
    if args.shots:
        models, large_names["in-context"] = in_context_models(lf, root, data, args, pivot, pivot_tag, base, skills,
                                                              questions)
        jobs += in_context_jobs(job, args.shots, skills, models)
    results, correct = {}, {}
    for job_, (score, right) in zip(jobs, lf.parallel(run, jobs)):
        results.setdefault(job_[0], {}).update(score)
        correct.setdefault(job_[0], {}).update(right)
    for name, score in results.items():
        log(f"DLF {name}: " + ", ".join(f"{s} EM {100 * v:.0f}%" for s, v in score.items()))
    trace_picture(lf, root, eval_root, data, skills, pivot, base, experts)
    return {"strategies": results, "correct": correct, "expert_kl_from_base": shift, "large": large_names,
            "held_out": held_out}


def in_context_models(lf, root, data, args, pivot, pivot_tag, plain_base, skills, held_out):
    """In-context learning (method.md §4b) needs models that read a few-shot prompt: measured, the
    models above score 0 % on every row when k worked examples precede the question, since none has
    seen more than one example in a sequence. So the in-context rows have their own models, trained
    as above on files where a share of the rows (--icl-share) also comes as a copy with 1..k worked
    examples of the same skill before it (data.with_worked_examples): as the large model the pivot
    and as the base the plain base, each taught worked examples on the general pool (--icl-steps),
    and the base's two experts. (A base trained from scratch on the worked-example rows learned the
    general pool's reversals by heart instead of the skill: on one data seed its reversal expert
    stayed at 17-22 % alone whatever its rate and steps.) Returns ((large, base,
    experts, evaluation folder), what the large model is)."""
    k = args.shots
    # Both taught models depend on the plain base's and the pivot's training only: shared by the runs
    # that differ in the experts' recipe.
    taught = f"icl{k}-share{args.icl_share:g}-base{args.dlf_base_steps}-taught{args.icl_steps}"
    tag = f"{taught}-expert{args.expert_steps}-lr{args.expert_lr:g}"
    shared, dlf = root / "dlf" / taught, root / "dlf" / tag
    eval_root = root / "eval" / "dlf" / f"pivot-{pivot_tag}" / f"{tag}-heldout{held_out}"
    lengths = dict(max_length=96 + 48 * k, max_prompt_length=48 + 48 * k)

    def with_shots(name):
        return bench_data.with_worked_examples(data / f"{name}.jsonl", data / f"{name}-icl{k}-share{args.icl_share:g}.jsonl", k,
                                               args.icl_share, args.data_seed)

    general = with_shots("general")
    base, large = lf.parallel(lambda start: train(lf, shared / start[0], start[1], general, steps=args.icl_steps, seed=1,
                                                  lr=1e-3, batch=16, **lengths),
                              [("base", plain_base), (f"large-pivot-{pivot_tag}", pivot)])
    experts = dict(zip(skills, lf.parallel(
        lambda skill: train(lf, dlf / f"expert_{skill}", base, with_shots(f"pool_{skill}"), steps=args.expert_steps,
                            seed=1, lr=args.expert_lr, batch=16, **lengths), skills)))
    # The examples shown at evaluation: the first k of each skill's pool (never held out).
    for skill in skills:
        pool = (data / f"pool_{skill}.jsonl").read_text().splitlines(keepends=True)
        (data / f"shots_{skill}.jsonl").write_text("".join(pool[:k]))
    return (large, base, experts, eval_root), f"the pivot trained {args.icl_steps} more steps with worked-example rows"


def in_context_jobs(job, k, skills, models):
    """Each in-context row with and without the k examples, on the same (in-context) models; static
    with both experts too, so the multi-task goal can be checked on them."""
    jobs = []
    for shots, suffix in ((0, ""), (k, f", {k}-shot")):
        name = f"-{k}shot" if shots else ""
        jobs += [job(f"in-context models: large_only{suffix}", f"large_only-{skill}{name}", "large_only", [skill],
                     [skill], shots=shots, models=models) for skill in skills]
        jobs += [job(f"in-context models: expert alone{suffix}", f"expert-{skill}{name}", "expert_only", [skill],
                     [skill], skill, shots=shots, models=models) for skill in skills]
        jobs += [job(f"in-context models: dynamic{suffix}", f"dynamic-{skill}{name}", "dynamic", [skill], [skill],
                     shots=shots, models=models) for skill in skills]
        jobs.append(job(f"in-context models: dynamic, both experts{suffix}", f"dynamic-both{name}", "dynamic", skills,
                        skills, shots=shots, models=models))
        jobs.append(job(f"in-context models: dynamic, both, route{suffix}", f"dynamic-both-route{name}", "dynamic",
                        skills, skills, criterion="route", shots=shots, models=models))
        jobs.append(job(f"in-context models: static, both experts{suffix}", f"static-both{name}", "static", skills,
                        skills, shots=shots, models=models))
    return jobs


def expert_shift(lf, eval_root, data, base, experts, rows=40):
    """How far each expert has moved from the base (benchmark.md: light fine-tunes stay general):
    mean KL(Q_expert ‖ Q_base) over the gold response tokens of each skill's first `rows` held-out
    examples, prompt and response tokenized apart as the plain template does; logits by `logitfuse
    logits`. Returns {expert: {skill: nats}}."""
    import numpy as np
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    out_dir = eval_root / "shift"
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    result = {name: {} for name in experts}
    for skill in tasks.SKILLS:
        examples = [json.loads(line) for line in (data / f"eval_{skill}.jsonl").read_text().splitlines()[:rows]]
        spans, sequences = [], []
        for ex in examples:
            p = tok.encode(ex["prompt"], add_special_tokens=False).ids
            r = tok.encode(ex["response"], add_special_tokens=False).ids
            sequences.append(p + r)
            spans.append((len(p) - 1, len(p) + len(r) - 1))  # positions that predict the response
        ids = out_dir / f"ids_{skill}.jsonl"
        ids.write_text("".join(json.dumps(s) + "\n" for s in sequences))

        def log_probs(model, name):
            path = out_dir / f"{name}_{skill}.safetensors"
            if not path.exists():
                lf("logits", "--model", model, "--input", ids, "--out", path, "--dtype", "fp32")
            t = load_file(str(path))
            rows_ = [t[f"logits.{i}"][a:b].astype(np.float64) for i, (a, b) in enumerate(spans)]
            return [z - np.logaddexp.reduce(z, axis=-1, keepdims=True) for z in rows_]

        base_lp = log_probs(base, "base")
        for name, model in experts.items():
            kls = [(np.exp(e) * (e - b)).sum(-1) for e, b in zip(log_probs(model, name), base_lp)]
            result[name][skill] = float(np.concatenate(kls).mean())
    return result


def fusion_section(large, base, experts, strategy, criterion="sum", only=None):
    """The models and fusion sections of a generate/eval config: `experts` maps names to model dirs."""
    return f"""models:
  large: {{path: {large}, device: cpu}}
  base: {{path: {base}}}
  experts: [{", ".join(f"{{name: {n}, path: {d}}}" for n, d in experts.items())}]
fusion: {{strategy: {strategy}, alpha: {{min: 0.0, max: 2.0, step: 0.1}}, static_alpha: 1.0, multi_expert: {criterion}{f", expert: {only}" if only else ""}}}"""


def trace_picture(lf, root, eval_root, data, skills, large, base, experts):
    """`generate --trace` with both experts on the first held-out question of each skill, drawn as α
    and the active expert per step (OUT/data-seed-N/dlf_trace.png)."""
    out = eval_root / "trace"
    trace = out / "trace.jsonl"
    if not trace.exists():
        out.mkdir(parents=True, exist_ok=True)
        questions = [json.loads((data / f"eval_{s}.jsonl").read_text().splitlines()[0]) for s in skills]
        (out / "prompts.jsonl").write_text("".join(json.dumps({"prompt": q["prompt"]}) + "\n" for q in questions))
        (out / "generate.yaml").write_text(f"""{fusion_section(large, base, {s: experts[s] for s in skills}, "dynamic")}
generation: {{max_new_tokens: 40, batch_size: {len(skills)}, chat_template: plain}}
input: {out / "prompts.jsonl"}
output: {out / "completions.jsonl"}
""")
        lf("generate", out / "generate.yaml", "--trace", trace)
    rows = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    completions = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    path = report.plot_trace(rows, skills, [c["completion"] for c in completions], root / "dlf_trace.png")
    log(f"DLF trace picture: {path}")
    return path
