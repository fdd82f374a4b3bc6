"""End-to-end decoding and evaluation on models the test makes (see dlf_workspace.py): Dynamic Logit
Fusion with experts fine-tuned by `logitfuse train` beats the large model alone on the experts' task;
the generate command's outputs, traces and error handling; a plain model against transformers."""
import json
import math
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

import dlf_workspace as ws


@pytest.fixture(scope="module")
def paths(tmp_path_factory, logitfuse):
    return ws.build(tmp_path_factory.mktemp("dlf"), logitfuse)


def read_jsonl(path):
    return [json.loads(l) for l in Path(path).read_text().splitlines()]


def generate_config(paths, out, strategy="dynamic", experts=("secret",), **overrides):
    root = Path(paths["root"])
    expert_lines = "".join(f"    - {{name: {e}, path: {paths[e]}, dtype: fp32, device: cpu}}\n" for e in experts)
    path = Path(out).with_suffix(".yaml")
    path.write_text(f"""
models:
  large: {{path: {paths['large']}, dtype: fp32, device: cpu}}
  base: {{path: {paths['base']}, dtype: fp32, device: cpu}}
  experts:
{expert_lines}fusion: {{strategy: {strategy}}}
generation: {{max_new_tokens: 5, batch_size: 16, chat_template: plain}}
input: {root}/secret_prompts.jsonl
output: {out}
""")
    return [path, *[f"{k}={v}" for k, v in overrides.items()]]


def test_dynamic_beats_large_only_on_the_expert_task(paths, tmp_path, logitfuse):
    results = {}
    for strategy in ("large_only", "static", "dynamic", "expert_only"):
        cfg = ws.eval_config(paths, tmp_path / strategy, strategy)
        proc = logitfuse("eval", cfg)
        print(proc.stdout)
        results[strategy] = json.loads((tmp_path / strategy / "metrics.json").read_text())["tasks"]
        assert (tmp_path / strategy / "predictions" / "secret_em.jsonl").exists()
    em = {s: r["secret_em"]["exact_match"] for s, r in results.items()}
    assert em["dynamic"] > em["large_only"], em
    assert em["dynamic"] >= 0.5, em
    ppl = {s: r["secret_ppl"]["perplexity"] for s, r in results.items()}
    assert ppl["dynamic"] < ppl["large_only"], ppl
    assert results["dynamic"]["secret_mc"]["accuracy"] > results["large_only"]["secret_mc"]["accuracy"]


def test_several_experts_run_one_expert_per_step(paths, tmp_path, logitfuse):
    out = tmp_path / "c.jsonl"
    logitfuse("generate", *generate_config(paths, out, experts=("secret", "color")), "--trace", tmp_path / "t.jsonl")
    trace = read_jsonl(tmp_path / "t.jsonl")
    assert trace and {t["expert"] for t in trace} <= {"secret", "color"}
    assert all(0.0 <= t["alpha"] <= 2.0 + 1e-9 and t["J"] >= 0 for t in trace)


def test_route_keeps_one_expert_per_prompt_whatever_the_batching(paths, tmp_path, logitfuse):
    # fusion.multi_expert route: each prompt's expert is chosen at its first token and kept; batching
    # (one prompt per batch or all together) changes neither the choice nor the text.
    runs = {}
    for batch in (1, 16):
        out = tmp_path / f"route{batch}.jsonl"
        logitfuse("generate", *generate_config(paths, out, experts=("secret", "color"), **{
            "fusion.multi_expert": "route", "generation.batch_size": batch}), "--trace", tmp_path / f"t{batch}.jsonl")
        trace = read_jsonl(tmp_path / f"t{batch}.jsonl")
        chosen = {}
        for t in trace:
            chosen.setdefault(t["prompt_index"], set()).add(t["expert"])
        assert chosen and all(len(experts) == 1 for experts in chosen.values()), chosen
        runs[batch] = ([c["completion"] for c in read_jsonl(out)], chosen)
    assert runs[1] == runs[16]


def test_generate_output_order_trace_batching_and_cache(paths, tmp_path, logitfuse):
    prompts = read_jsonl(Path(paths["root"]) / "secret_prompts.jsonl")
    out = tmp_path / "batched.jsonl"
    logitfuse("generate", *generate_config(paths, out), "--trace", tmp_path / "trace.jsonl")
    rows = read_jsonl(out)
    assert [r["prompt"] for r in rows] == [p["prompt"] for p in prompts]
    assert all(set(r) >= {"prompt", "completion", "prompt_ids", "completion_ids", "finish_reason"} for r in rows)
    trace = read_jsonl(tmp_path / "trace.jsonl")
    assert {t["prompt_index"] for t in trace} == set(range(len(prompts)))
    grid = [round(0.1 * i, 6) for i in range(21)]
    assert all(t["expert"] == "secret" and min(abs(t["alpha"] - g) for g in grid) < 1e-6 for t in trace)
    # One prompt at a time, and without the KV cache: the same tokens.
    logitfuse("generate", *generate_config(paths, tmp_path / "single.jsonl", **{"generation.batch_size": 1}))
    logitfuse("generate", *generate_config(paths, tmp_path / "nocache.jsonl", **{"generation.batch_size": 5,
                                                                                 "generation.kv_cache": "false"}))
    for other in ("single.jsonl", "nocache.jsonl"):
        assert [r["completion_ids"] for r in read_jsonl(tmp_path / other)] == [r["completion_ids"] for r in rows]


def test_alpha_zero_reproduces_large_only(paths, tmp_path, logitfuse):
    logitfuse("generate", *generate_config(paths, tmp_path / "large.jsonl", strategy="large_only"))
    logitfuse("generate", *generate_config(paths, tmp_path / "zero.jsonl", **{"fusion.alpha.max": 0.0}))
    logitfuse("generate", *generate_config(paths, tmp_path / "static0.jsonl", strategy="static", **{"fusion.static_alpha": 0}))
    want = [r["completion_ids"] for r in read_jsonl(tmp_path / "large.jsonl")]
    assert [r["completion_ids"] for r in read_jsonl(tmp_path / "zero.jsonl")] == want
    assert [r["completion_ids"] for r in read_jsonl(tmp_path / "static0.jsonl")] == want


def test_plain_model_matches_transformers(paths, tmp_path, logitfuse):
    """Greedy completions and perplexity of a plain model, against transformers on the same ids."""
    root = Path(paths["root"])
    cfg = tmp_path / "plain.yaml"
    cfg.write_text(f"""
model: {{path: {paths['secret']}, dtype: fp32, device: cpu}}
generation: {{max_new_tokens: 6, batch_size: 4, stop: []}}
input: {root}/secret_prompts.jsonl
output: {tmp_path}/plain.jsonl
""")
    logitfuse("generate", cfg)
    rows = read_jsonl(tmp_path / "plain.jsonl")
    model = AutoModelForCausalLM.from_pretrained(paths["secret"]).eval()
    tok = Tokenizer.from_file(str(Path(paths["secret"]) / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    for r in rows[:6]:
        ids = tok.encode(r["prompt"], add_special_tokens=False).ids
        assert r["prompt_ids"] == ids
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=eos)
        want = out[0, len(ids):].tolist()
        if eos in want:
            want = want[:want.index(eos)]
        assert r["completion_ids"] == want
        assert r["completion"] == tok.decode(want)

    ev = tmp_path / "ppl.yaml"
    ev.write_text(f"""
model: {{path: {paths['secret']}, dtype: fp32}}
tasks: [{{name: ppl, type: perplexity, data: {root}/secret_train.jsonl, limit: 8}}]
output_dir: {tmp_path}/ppl
""")
    logitfuse("eval", ev)
    got = json.loads((tmp_path / "ppl" / "metrics.json").read_text())["tasks"]["ppl"]
    nll = tokens = 0
    for line in (root / "secret_train.jsonl").read_text().splitlines()[:8]:
        e = json.loads(line)
        p = tok.encode(e["prompt"], add_special_tokens=False).ids
        resp = tok.encode(e["response"], add_special_tokens=False).ids + [eos]  # plain template: EOS after the response
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p + resp])).logits[0].double(), -1)
        for k, t in enumerate(resp):
            nll -= logp[len(p) + k - 1, t].item()
        tokens += len(resp)
    assert got["tokens"] == tokens
    assert math.isclose(got["perplexity"], math.exp(nll / tokens), rel_tol=1e-4)


def test_mismatched_vocabularies_and_bad_configs_exit_2(paths, tmp_path, logitfuse):
    from tokenizers import decoders, models, pre_tokenizers, trainers
    other = tmp_path / "tok"
    other.mkdir()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train([str(Path(paths["root"]) / "corpus.txt")], trainers.BpeTrainer(vocab_size=280, special_tokens=["<|endoftext|>"],
                                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.save(str(other / "tokenizer.json"))
    logitfuse("init-model", "--arch", "llama", "--out", tmp_path / "odd", "--tokenizer", other, "--hidden", 16, "--layers", 1,
              "--heads", 2, "--kv-heads", 1, "--intermediate", 32)
    cfg = generate_config(paths, tmp_path / "o.jsonl", **{"models.experts.0.path": tmp_path / "odd",
                                                          "models.experts.0.name": "odd"})
    proc = logitfuse("generate", *cfg, expect=2)
    assert "'large' and 'odd'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = logitfuse("generate", *generate_config(paths, tmp_path / "o.jsonl", **{"fusion.alpha.stpe": 0.2}), expect=2)
    assert "fusion.alpha.stpe" in proc.stderr and "fusion.alpha.step" in proc.stderr
    proc = logitfuse("generate", *generate_config(paths, tmp_path / "o.jsonl", **{"sampling.temperature": -1}), expect=2)
    assert "sampling.temperature" in proc.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    proc = logitfuse("generate", *generate_config(paths, tmp_path / "o.jsonl", input=bad), expect=2)
    assert "bad.jsonl:2" in proc.stderr


CHATML_JINJA = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_shots_are_chat_turns_before_every_prompt(paths, tmp_path, logitfuse):
    """In-context examples reach every model as user/assistant turns before the question: the prompt
    ids equal transformers' apply_chat_template (ChatML) of the same conversation."""
    from transformers import PreTrainedTokenizerFast
    examples = [{"prompt": f"What is {a} + {a}?", "response": f"{a} + {a} = {2 * a}. The answer is {2 * a}."}
                for a in (3, 5, 8)]
    shots = tmp_path / "shots.jsonl"
    shots.write_text("".join(json.dumps(e) + "\n" for e in examples))
    out = tmp_path / "c.jsonl"
    logitfuse("generate", *generate_config(paths, out, strategy="static", experts=("secret", "color"),
                                           **{"generation.chat_template": "chatml", "generation.shots": 2,
                                              "generation.shots_file": shots}))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(paths["root"]) / "tok" / "tokenizer.json"))
    prompts = read_jsonl(Path(paths["root"]) / "secret_prompts.jsonl")
    rows = read_jsonl(out)
    assert len(rows) == len(prompts)
    for row, p in zip(rows, prompts):
        messages = [m for e in examples[:2] for m in ({"role": "user", "content": e["prompt"]},
                                                      {"role": "assistant", "content": e["response"]})]
        messages.append({"role": "user", "content": p["prompt"]})
        text = tok.apply_chat_template(messages, chat_template=CHATML_JINJA, add_generation_prompt=True, tokenize=False)
        assert row["prompt_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    # More shots than the file holds: one line naming the file, exit 2.
    proc = logitfuse("generate", *generate_config(paths, tmp_path / "d.jsonl", **{"generation.shots": 4,
                                                                                  "generation.shots_file": shots}),
                     expect=2)
    assert "shots.jsonl" in proc.stderr and "4 shots" in proc.stderr
