"""Writes the generated seed inputs of the fuzz targets into fuzz/seeds/<target>/ (committed; small).

scripts/fuzz.sh adds the test fixtures (hub and paper-model configs, chat templates, configs/*.yaml)
to these when it builds each target's corpus. Inputs of several files join them with NUL bytes, as
the targets split them (fuzz/fuzz_common.h). Run with the project's venv Python:
    ~/.cache/logitfuse/venv/bin/python fuzz/make_seeds.py
"""
import io
import json
import pathlib
import shutil
import struct

import numpy as np
from safetensors.numpy import save
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

ROOT = pathlib.Path(__file__).resolve().parent
SEEDS = ROOT / "seeds"
TEXT = ["Hello world! The quick brown fox jumps over the lazy dog.", "Numbers 12345 and 3.14, café naïve 漢字.",
        "def f(x):\n    return x * 2  # code\n", "<|im_start|>user\nHi<|im_end|>"] * 4
NUL = b"\0"


def put(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def tokenizer_json_seeds():
    specials = ["<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
    def byte_level(pre, post, normalizer=None):
        tok = Tokenizer(models.BPE())
        if normalizer is not None:
            tok.normalizer = normalizer
        tok.pre_tokenizer = pre
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False))
        tok.post_processor = post(tok)
        return tok.to_str()
    split = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    files = {
        "gpt2": byte_level(pre_tokenizers.ByteLevel(add_prefix_space=False), lambda t: processors.ByteLevel(trim_offsets=False)),
        "llama3-nfc": byte_level(pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                          pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
                                 lambda t: processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", t.token_to_id("<s>"))]),
                                 normalizer=normalizers.NFC()),
        "digits-punct": byte_level(pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True),
                                                            pre_tokenizers.Punctuation(), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
                                   lambda t: processors.ByteLevel(trim_offsets=True)),
    }
    # A converted-Llama-2 style file: '▁' words, <0xNN> byte fallback, a Sequence decoder.
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for w in ["▁", "e", "h", "t", "o", "r", "l", "d", "w", "▁t", "he", "▁the", "▁w", "or", "ld"]:
        vocab.setdefault(w, len(vocab))
    spec = json.loads(Tokenizer(models.BPE()).to_str())
    spec["model"] = {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                     "vocab": vocab, "merges": ["▁ t", "h e", "▁t he", "▁ w", "o r", "l d"]}
    spec["added_tokens"] = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for i, c in enumerate(["<unk>", "<s>", "</s>"])]
    spec["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                              {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    spec["decoder"] = {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                                                        {"type": "ByteFallback"}, {"type": "Fuse"},
                                                        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    files["sp-style"] = json.dumps(spec, ensure_ascii=False)
    config = {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "unk_token": "<unk>", "add_bos_token": True,
              "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"}
    for name, text in files.items():
        put("fuzz_tokenizer_json", name, text)
        put("fuzz_tokenizer_json", name + "+config", text.encode() + NUL + json.dumps(config).encode())


def sentencepiece_seeds():
    import sentencepiece as spm
    for kind, size in [("bpe", 330), ("unigram", 62)]:
        out = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXT * 8), model_writer=out, vocab_size=size,
                                       model_type=kind, byte_fallback=(kind == "bpe"), character_coverage=1.0,
                                       user_defined_symbols=["<|im_end|>"], minloglevel=2,
                                       normalization_rule_name="identity")
        put("fuzz_sentencepiece", kind, out.getvalue())


def safetensors_seeds():
    put("fuzz_safetensors", "mixed", save({"a": np.arange(6, dtype=np.float32).reshape(2, 3),
                                           "b": np.array([1, 2], dtype=np.int64), "c": np.zeros((0, 4), dtype=np.float16),
                                           "d": np.array([True, False])}, metadata={"format": "pt"}))
    put("fuzz_safetensors", "one", save({"model.embed_tokens.weight": np.ones((4, 2), dtype=np.float32)}))
    index = {"metadata": {"total_size": 48}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                                             "b": "model-00002-of-00002.safetensors",
                                                             "c": "model-00001-of-00002.safetensors"}}
    put("fuzz_safetensors_index", "two-shards", json.dumps(index, indent=2))


def logits_cache_seed():
    # Matches the spec fixed in fuzz_logits_cache.cpp: k 4, temperatures [1, 2].
    manifest = {"teacher": "t", "data_hash": "d", "tokenizer_hash": "h", "model_fingerprint": "m",
                "chat_template": "chatml", "max_length": 64, "max_prompt_length": 32, "k": 4,
                "temperatures": [1.0, 2.0], "version": 1, "shards": ["shard-00000.safetensors"], "examples": 2}
    rows = 5
    shard = save({"lines": np.array([1, 3], dtype=np.int64), "row_offsets": np.array([0, 2, 5], dtype=np.int64),
                  "ce": np.array([0.5, 1.5], dtype=np.float64),
                  "probs.t0": np.full((rows, 4), 0.25, dtype=np.float32), "ids.t0": np.arange(rows * 4, dtype=np.int32).reshape(rows, 4),
                  "probs.t1": np.full((rows, 4), 0.25, dtype=np.float32), "ids.t1": np.arange(rows * 4, dtype=np.int32).reshape(rows, 4)})
    put("fuzz_logits_cache", "cache", json.dumps(manifest, indent=2).encode() + NUL + shard)


def jsonl_seeds():
    put("fuzz_data_jsonl", "prompt-response", "\n".join(json.dumps(x) for x in [
        {"prompt": "What is 2+2?", "response": "4"}, {"prompt": "Hi", "response": "Hello!", "system": "Be kind."}]) + "\n")
    put("fuzz_data_jsonl", "messages", "\n".join(json.dumps(x) for x in [
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                      {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]}]) + "\n")
    put("fuzz_eval_tasks", "exact-match", "\n".join(json.dumps(x) for x in [
        {"prompt": "2+2=?", "answer": "4"}, {"prompt": "Sum 1,000 and 234.5", "answer": 1234.5, "system": "Math."}]) + "\n")
    put("fuzz_eval_tasks", "multiple-choice", "\n".join(json.dumps(x) for x in [
        {"prompt": "Sky?", "choices": ["blue", "green"], "label": 0}, {"prompt": "2+2", "choices": ["3", "4", "5"], "label": 1}]) + "\n")


def sweep_seeds():
    base = (ROOT.parent / "configs" / "fusion_example.yaml").read_bytes()
    sweeps = {
        "grid": "base: base.yaml\noutput_root: out\ngrid:\n  train.lr: [1.0e-3, 3.0e-3]\n  loss.distill_weight: [0.0, 0.5]\n",
        "list": "base: base.yaml\nname: 'run-{index}-{train.lr}'\noverrides: {train.epochs: 2}\n"
                "list:\n  - {train.lr: 1.0e-2, train.schedule: linear}\n  - {train.lr: 2.0e-2}\n",
        "slurm": "base: base.yaml\ngrid: {train.lr: [1.0e-5]}\nslurm: {partition: gpu, max_parallel: 2}\n",
    }
    for name, text in sweeps.items():
        put("fuzz_sweep", name, text.encode() + NUL + base)


def recipe_seeds():
    base = (ROOT.parent / "configs" / "fusion_example.yaml").read_bytes()
    put("fuzz_recipe", "overrides", base + NUL + b"train.lr=3.0e-5" + NUL + b"teachers.0.path=/models/a" + NUL + b"loss.token.top_k=8")


if __name__ == "__main__":
    shutil.rmtree(SEEDS, ignore_errors=True)
    tokenizer_json_seeds()
    sentencepiece_seeds()
    safetensors_seeds()
    logits_cache_seed()
    jsonl_seeds()
    sweep_seeds()
    recipe_seeds()
    total = sum(p.stat().st_size for p in SEEDS.rglob("*") if p.is_file())
    print(f"{SEEDS}: {sum(1 for p in SEEDS.rglob('*') if p.is_file())} files, {total} bytes")
