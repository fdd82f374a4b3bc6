"""Builds the small end-to-end Dynamic Logit Fusion setting the decoding tests use (also runnable as a
script: `python tests/oracle/dlf_workspace.py DIR` prints the eval table of every strategy).

- One byte-level BPE tokenizer shared by every model (DLF needs one vocabulary).
- Task "secret": a fixed table "Secret number of <word>? Answer:" -> " <number>"; task "color":
  "Color code of <word>? Answer:" -> " <number>" with a different table (the second expert's task).
- base: a small random model; experts: base fine-tuned on one task each with `logitfuse train`
  (no teachers: plain SFT); large: a wider model trained briefly on something else (word echoes).
"""
import json
import random
import sys
from pathlib import Path

WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "candle", "forest", "rocket",
         "violet", "castle", "garden", "pepper", "silver", "winter"]


def secret_table():
    rng = random.Random(11)
    return {w: rng.randint(10, 99) for w in WORDS}


def color_table():
    rng = random.Random(12)
    return {w: rng.randint(100, 999) for w in WORDS}


def secret_prompt(word):
    return f"Secret number of {word}? Answer:"


def write_jsonl(path, rows):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))


def build(root, run, steps=150):
    """`run(*args)` runs logitfuse and raises on failure. Returns a dict of paths."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = Path(root)
    secret, color = secret_table(), color_table()
    secret_rows = [{"prompt": secret_prompt(w), "response": f" {n}"} for w, n in secret.items()]
    color_rows = [{"prompt": f"Color code of {w}? Answer:", "response": f" {n}"} for w, n in color.items()]
    echo_rows = [{"prompt": f"Say {w} twice:", "response": f" {w} {w}"} for w in WORDS]
    write_jsonl(root / "secret_train.jsonl", secret_rows * 4)
    write_jsonl(root / "color_train.jsonl", color_rows * 4)
    write_jsonl(root / "echo_train.jsonl", echo_rows * 4)
    write_jsonl(root / "secret_eval.jsonl", [{"prompt": secret_prompt(w), "answer": n} for w, n in secret.items()])
    write_jsonl(root / "secret_prompts.jsonl", [{"prompt": secret_prompt(w)} for w in WORDS])
    rng = random.Random(3)
    mc = []
    for w, n in secret.items():
        wrong = rng.choice([m for m in secret.values() if m != n])
        label = rng.randint(0, 1)
        choices = [f" {n}", f" {wrong}"] if label == 0 else [f" {wrong}", f" {n}"]
        mc.append({"prompt": secret_prompt(w), "choices": choices, "label": label})
    write_jsonl(root / "secret_mc.jsonl", mc)

    corpus = root / "corpus.txt"
    corpus.write_text("".join(r["prompt"] + r["response"] + "\n" for r in secret_rows + color_rows + echo_rows))
    (root / "tok").mkdir(exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train([str(corpus)], trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.save(str(root / "tok" / "tokenizer.json"))
    (root / "tok" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))

    small = ["--hidden", 48, "--layers", 2, "--heads", 4, "--kv-heads", 2, "--intermediate", 96]
    wide = ["--hidden", 96, "--layers", 2, "--heads", 4, "--kv-heads", 2, "--intermediate", 192]
    run("init-model", "--arch", "llama", "--out", root / "base", "--tokenizer", root / "tok", "--seed", 1, *small)
    run("init-model", "--arch", "llama", "--out", root / "large_init", "--tokenizer", root / "tok", "--seed", 2, *wide)

    def train(name, init, data, max_steps):
        recipe = root / f"{name}.yaml"
        recipe.write_text(f"""
run: {{name: {name}, output_dir: {root}/{name}_run, seed: 5, device: cpu}}
student: {{path: {init}, dtype: fp32, chat_template: plain}}
teachers: []
data: {{train: {data}, max_length: 32, max_prompt_length: 24}}
train: {{micro_batch_size: 16, lr: 5.0e-3, precision: fp32, max_steps: {max_steps}, schedule: constant, epochs: 1000}}
checkpoint: {{every_steps: 0}}
log: {{every_steps: 50}}
""")
        run("train", recipe)
        return root / f"{name}_run" / "final"

    paths = {
        "root": root,
        "base": root / "base",
        "secret": train("secret", root / "base", root / "secret_train.jsonl", steps),
        "color": train("color", root / "base", root / "color_train.jsonl", steps),
        "large": train("large", root / "large_init", root / "echo_train.jsonl", max(steps // 3, 10)),
    }
    return paths


def eval_config(paths, out_dir, strategy, experts=("secret",), extra=""):
    root = Path(paths["root"])
    expert_lines = "".join(f"    - {{name: {e}, path: {paths[e]}, dtype: fp32, device: cpu}}\n" for e in experts)
    path = root / f"eval_{strategy}_{'_'.join(experts)}.yaml"
    path.write_text(f"""
models:
  large: {{path: {paths['large']}, dtype: fp32, device: cpu}}
  base: {{path: {paths['base']}, dtype: fp32, device: cpu}}
  experts:
{expert_lines}fusion: {{strategy: {strategy}, alpha: {{min: 0.0, max: 2.0, step: 0.1}}, static_alpha: 1.0}}
generation: {{max_new_tokens: 4, batch_size: 8, chat_template: plain}}
tasks:
  - {{name: secret_em, type: exact_match, data: {root}/secret_eval.jsonl, extract: last_number}}
  - {{name: secret_mc, type: multiple_choice, data: {root}/secret_mc.jsonl, score: sum}}
  - {{name: secret_ppl, type: perplexity, data: {root}/secret_train.jsonl, limit: 16}}
output_dir: {out_dir}
{extra}""")
    return path


if __name__ == "__main__":
    import os
    import subprocess
    binary = os.environ.get("LOGITFUSE_BIN", str(Path(__file__).resolve().parents[2] / "build" / "bin" / "logitfuse"))

    def run(*args):
        subprocess.run([binary, *map(str, args)], check=True, capture_output=True, text=True)

    root = Path(sys.argv[1])
    root.mkdir(parents=True, exist_ok=True)
    paths = build(root, run)
    for experts in (("secret",), ("secret", "color")):
        for strategy in ("large_only", "static", "dynamic", "expert_only"):
            cfg = eval_config(paths, root / f"out_{strategy}_{len(experts)}", strategy, experts)
            proc = subprocess.run([binary, "eval", str(cfg)], check=True, capture_output=True, text=True)
            print(f"experts={','.join(experts)}\n{proc.stdout}")
