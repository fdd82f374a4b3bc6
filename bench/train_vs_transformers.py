"""A training step on the CPU: `logitfuse train` against the same step in eager PyTorch +
`transformers`, on the same model and the same batches, measured in one run.

    python bench/train_vs_transformers.py [--size small|135m] [--batch 2] [--seq 256] [--steps 8] [--threads 2]
                                          [--repeats 3]

Modes: `sft` (cross entropy) and `kl` (0.5 · CE + 0.5 · full-vocabulary KL(p_teacher ‖ p_student)
from a teacher of the same shape and tokenizer). The student and teacher are Llama models made by
transformers (`135m`: the SmolLM-135M shape, 30 layers, hidden 576, vocabulary 16k here, since the
tokenizer is trained on the spot; `small`: 8 layers, hidden 256), fp32, AdamW, gradient clipping at 1.
Each side runs in its own process; tokens/s is the median over the steps after the first two
(batch × sequence tokens per step), peak memory the process's maximum RSS. The sides alternate
--repeats times per mode. Prints one JSON line per run, then per mode the median ratio logitfuse /
transformers and each repeat's.
"""
import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4),
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3),
}


def make_workspace(root, args):
    """A byte-level BPE tokenizer, a student and a teacher in Hugging Face layout, and the data."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModelForCausalLM

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(20000)]
    corpus = [" ".join(rng.choice(words) for _ in range(200)) for _ in range(400)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=args.vocab, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    vocab = tok.get_vocab_size()
    config = AutoConfig.for_model("llama", vocab_size=vocab, tie_word_embeddings=False, **SIZES[args.size])
    for name, seed in (("student", 1), ("teacher", 2)):
        import torch
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(root / name)
        tok.save(str(root / name / "tokenizer.json"))
        (root / name / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>",
                                                                       "pad_token": "<|endoftext|>"}))
    # Responses long enough that truncation gives every sequence exactly --seq tokens.
    rows = [{"prompt": " ".join(rng.choice(words) for _ in range(8)) + "\n",
             "response": " ".join(rng.choice(words) for _ in range(args.seq))} for _ in range(args.batch * args.steps)]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return vocab, sum(p.numel() for p in model.parameters())


def run_logitfuse(root, mode, args):
    teachers = f"\n  - {{name: t, path: {root / 'teacher'}, dtype: fp32, chat_template: plain}}" if mode == "kl" else " []"
    loss = "{distill_weight: 0.5, token: {type: kl}, graph: {type: none}}" if mode == "kl" else "{}"
    recipe = root / f"{mode}.yaml"
    recipe.write_text(f"""run: {{name: {mode}, output_dir: {root / ('lf-' + mode)}, seed: 1, device: cpu}}
student: {{path: {root / 'student'}, dtype: fp32, chat_template: plain}}
teachers:{teachers}
data: {{train: {root / 'data.jsonl'}, max_length: {args.seq}, max_prompt_length: 32}}
loss: {loss}
alignment: {{positions: exact, vocab: exact, cache_dir: {root / 'maps'}}}
train: {{max_steps: {args.steps}, micro_batch_size: {args.batch}, lr: 1.0e-4, precision: fp32, clip_grad: 1.0, schedule: constant, warmup_ratio: 0.0}}
checkpoint: {{every_steps: 0}}
log: {{every_steps: 1}}
""")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    shutil.rmtree(root / f"lf-{mode}", ignore_errors=True)  # a reused --workspace holds the last run
    subprocess.run([args.binary, "--log-level", "warn", "train", str(recipe)], check=True, env=env)
    steps = [json.loads(l) for l in (root / f"lf-{mode}" / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "tokens_per_s" in s]
    return {"tokens_per_s": statistics.median(s["tokens_per_s"] for s in steps[2:]),
            "peak_gib": max(s["peak_memory_bytes"] for s in steps) / 2**30}


def reference(root, mode, args):
    """The same step in eager PyTorch + transformers (run in a child process: --reference MODE)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    torch.set_num_threads(args.threads)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(root / "student" / "tokenizer.json"))
    student = AutoModelForCausalLM.from_pretrained(root / "student", torch_dtype=torch.float32).train()
    teacher = AutoModelForCausalLM.from_pretrained(root / "teacher", torch_dtype=torch.float32).eval() if mode == "kl" else None
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.01)
    rows = [json.loads(l) for l in (root / "data.jsonl").read_text().splitlines()]
    times = []
    for step in range(args.steps):
        batch = rows[step * args.batch:(step + 1) * args.batch]
        ids, labels = [], []
        for r in batch:
            p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
            full = (p + tok(r["response"], add_special_tokens=False)["input_ids"])[:args.seq]
            ids.append(full)
            labels.append([-100] * (len(p) - 1) + full[len(p):] + [-100])
        ids, labels = torch.tensor(ids), torch.tensor(labels)
        t0 = time.perf_counter()
        logits = student(ids).logits
        ce = F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1), ignore_index=-100)
        loss = ce
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(ids).logits
            mask = labels != -100
            log_s = F.log_softmax(logits[mask], -1)
            log_t = F.log_softmax(t_logits[mask], -1)
            kl = (log_t.exp() * (log_t - log_s)).sum(-1).mean()
            loss = 0.5 * ce + 0.5 * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        times.append(time.perf_counter() - t0)
    tokens = args.batch * args.seq
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    print(json.dumps({"tokens_per_s": statistics.median(tokens / t for t in times[2:]), "peak_gib": peak}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=list(SIZES), default="small")
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", default="sft,kl")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of the two sides per mode")
    p.add_argument("--binary", default=str(ROOT / "build" / "bin" / "logitfuse"))
    p.add_argument("--workspace", help="reuse this folder (made if missing)")
    p.add_argument("--reference", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.reference:
        reference(Path(args.workspace), args.reference, args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workspace or tmp)
        if not (root / "data.jsonl").exists():
            root.mkdir(parents=True, exist_ok=True)
            vocab, params = make_workspace(root, args)
            print(f"model: llama {args.size}, {params / 1e6:.1f}M parameters, vocabulary {vocab}; batch {args.batch} x "
                  f"{args.seq} tokens, {args.steps} steps, {args.threads} threads, fp32", flush=True)
        results = {}
        for mode in args.modes.split(","):
            # The two sides alternate --repeats times, so a slow spell of a shared machine falls on
            # both; the ratio is the median of the per-repeat ratios.
            pairs = []
            for _ in range(args.repeats):
                ours = run_logitfuse(root, mode, args)
                out = subprocess.run([sys.executable, __file__, "--workspace", str(root), "--reference", mode,
                                      *[f"--{k}={v}" for k, v in (("batch", args.batch), ("seq", args.seq),
                                                                   ("steps", args.steps), ("threads", args.threads))]],
                                     check=True, capture_output=True, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": str(args.threads)}).stdout
                theirs = json.loads(out.strip().splitlines()[-1])
                pairs.append((ours, theirs))
                print(json.dumps({"mode": mode, "side": "logitfuse", **ours}))
                print(json.dumps({"mode": mode, "side": "transformers", **theirs}), flush=True)
            results[mode] = pairs
        for mode, pairs in results.items():
            speed = [o["tokens_per_s"] / t["tokens_per_s"] for o, t in pairs]
            memory = [o["peak_gib"] / t["peak_gib"] for o, t in pairs]
            print(f"{mode}: tokens/s {statistics.median(o['tokens_per_s'] for o, _ in pairs):.0f} vs "
                  f"{statistics.median(t['tokens_per_s'] for _, t in pairs):.0f} "
                  f"({statistics.median(speed):.2f}x; per repeat {', '.join(f'{x:.2f}' for x in speed)}); peak RSS "
                  f"{statistics.median(o['peak_gib'] for o, _ in pairs):.2f} vs "
                  f"{statistics.median(t['peak_gib'] for _, t in pairs):.2f} GiB ({max(memory):.2f}x at most)")


if __name__ == "__main__":
    main()
