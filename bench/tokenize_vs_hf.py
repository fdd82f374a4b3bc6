"""Single-thread encode throughput of logitfuse's tokenizer against Hugging Face `tokenizers` (Rust).

    python bench/tokenize_vs_hf.py [--tokenizer PATH/tokenizer.json] [--corpus FILE.jsonl] [--iters 3]

Without --tokenizer it trains byte-level BPE tokenizers here (GPT-2 regex and Llama-3 split regex,
8k vocab) and a converted-Llama-2 style one; without --corpus it writes ~2 MB of texts: Python standard
library source (code and English comments) mixed with CJK, Arabic, Cyrillic and emoji lines. Both
implementations encode every text one at a time (no batching; TOKENIZERS_PARALLELISM=false), without
added special tokens, `iters` passes over the corpus; the fastest pass of each is reported, with the
ratio logitfuse / tokenizers in MB/s of UTF-8 input.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "oracle"))

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
WORLD = [
    "自然语言处理是人工智能的一个重要领域。我们喜欢机器学习和深度学习。",
    "日本語のテキストも少し含めます。カタカナとひらがな、そして漢字。",
    "اللغة العربية جميلة جدا. مَرْحَبًا بِكُمْ في البيت الجديد.",
    "Привет, как дела? Это тест на русском языке с числами 12345.",
    "Emoji 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 — café naïve résumé Ångström.",
]


def make_corpus(path, target_bytes):
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    rng = random.Random(0)
    texts, total = [], 0
    for f in files:
        src = f.read_text(encoding="utf-8", errors="ignore")
        for start in range(0, len(src), 1500):
            chunk = src[start:start + 1500]
            if rng.random() < 0.3:
                chunk += "\n" + " ".join(rng.choice(WORLD) for _ in range(3))
            texts.append(chunk)
            total += len(chunk.encode("utf-8"))
            if total >= target_bytes:
                break
        if total >= target_bytes:
            break
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return texts


def train(path, pre_tokenizer, texts):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.save(str(path))


def bench_hf(tokenizer, texts, iters):
    best, tokens = float("inf"), 0
    for _ in range(iters):
        start = time.perf_counter()
        tokens = sum(len(tokenizer.encode(t, add_special_tokens=False).ids) for t in texts)
        best = min(best, time.perf_counter() - start)
    return best, tokens


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", action="append", help="tokenizer.json to time (repeatable)")
    parser.add_argument("--corpus", help="JSONL with a 'text' field")
    parser.add_argument("--bytes", type=int, default=2_000_000, help="size of the generated corpus")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--binary", default=str(ROOT / "build" / "bin" / "logitfuse"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = Path(args.corpus) if args.corpus else tmp / "corpus.jsonl"
        if args.corpus:
            texts = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            texts = make_corpus(corpus, args.bytes)
        tokenizers = {Path(p).name: Path(p) for p in args.tokenizer} if args.tokenizer else {}
        if not tokenizers:
            train_texts = texts[: len(texts) // 4]
            tokenizers["gpt2-bytelevel"] = tmp / "gpt2.json"
            train(tokenizers["gpt2-bytelevel"], pre_tokenizers.ByteLevel(add_prefix_space=False), train_texts)
            tokenizers["llama3-split"] = tmp / "llama3.json"
            train(tokenizers["llama3-split"], pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), train_texts)
            from test_tokenizers import sp_style_json  # the converted-Llama-2 layout of the oracle tests
            tokenizers["llama2-sp-bpe"] = sp_style_json(tmp, "llama2", metaspace=False)
        size = sum(len(t.encode("utf-8")) for t in texts)
        print(f"corpus: {len(texts)} texts, {size / 1e6:.2f} MB; one thread, best of {args.iters}")
        print(f"{'tokenizer':<18} {'tokens':>9} {'tokenizers MB/s':>16} {'logitfuse MB/s':>15} {'ratio':>6}")
        for name, path in tokenizers.items():
            hf_s, hf_tokens = bench_hf(Tokenizer.from_file(str(path)), texts, args.iters)
            out = subprocess.run([args.binary, "bench", "tokenize", "--tokenizer", str(path), "--input", str(corpus),
                                  "--iters", str(args.iters)], check=True, capture_output=True, text=True).stdout
            lf = json.loads(out.strip().splitlines()[-1])
            if lf["tokens"] != hf_tokens:
                print(f"warning: {name}: token counts differ (logitfuse {lf['tokens']}, tokenizers {hf_tokens})")
            hf_mbs = size / hf_s / 1e6
            print(f"{name:<18} {hf_tokens:>9} {hf_mbs:>16.2f} {lf['mb_per_s']:>15.2f} {lf['mb_per_s'] / hf_mbs:>6.2f}")


if __name__ == "__main__":
    main()
