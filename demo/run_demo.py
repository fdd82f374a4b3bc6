"""The embedded benchmark (docs/benchmark.md): two teachers, each trained by logitfuse on one skill
with its own tokenizer, fused into a student on a small mixed set; the students (SFT-only, fused
GLD+ULD+SFT, and the ULD+SFT / GLD+SFT ablations, several seeds) and the teachers are evaluated by
exact match on held-out sets of each skill.

    python demo/run_demo.py [--out runs/demo] [--seeds 3] [--quick] [--fresh]

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


def train(run_dir, student, teachers, data_file, loss, steps, seed, lr, batch, resume=True):
    teacher_lines = "".join(f"\n  - {{name: {n}, path: {p}, dtype: fp32, chat_template: plain}}" for n, p in teachers)
    recipe = f"""run: {{name: {run_dir.name}, output_dir: {run_dir}, seed: {seed}, device: cpu}}
student: {{path: {student}, dtype: fp32, chat_template: plain}}
teachers: {"[]" if not teachers else ""}{teacher_lines}
data: {{train: {data_file}, max_length: 96, max_prompt_length: 48}}
loss: {loss}
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "runs" / "demo"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pool-size", type=int, default=1000)
    parser.add_argument("--fusion-size", type=int, default=150)
    parser.add_argument("--eval-size", type=int, default=100)
    parser.add_argument("--teacher-steps", type=int, default=400)
    parser.add_argument("--student-steps", type=int, default=150)
    parser.add_argument("--quick", action="store_true", help="small sizes for the test suite")
    parser.add_argument("--fresh", action="store_true", help="retrain the students")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.pool_size, args.fusion_size, args.eval_size = 1, 300, 60, 30
        args.teacher_steps, args.student_steps = 60, 30
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = make_data(out, args)
    toks = make_tokenizers(out, data)
    log(f"data and tokenizers ready in {out}")

    models = out / "models"
    init_model(models / "teacher_arithmetic_init", "qwen2", toks["unigram"], (128, 4), 11)
    init_model(models / "teacher_reverse_init", "phi3", toks["bpe400"], (128, 4), 12)
    init_model(models / "student_init", "llama", toks["bpe300"], (96, 3), 13)
    teachers = {}
    for skill in tasks.SKILLS:
        t0 = time.time()
        teachers[skill] = train(out / "teachers" / skill, models / f"teacher_{skill}_init", [],
                                data / f"pool_{skill}.jsonl", "{}", args.teacher_steps, 1, 3e-3, 32)
        log(f"teacher {skill}: {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
