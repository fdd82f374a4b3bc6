"""lm-evaluation-harness (from PyPI) scores through `logitfuse serve` as it scores the model directly.

lm-eval's `local-completions` model talks to the server as it talks to vLLM: batched token-id prompts
with `echo` and `logprobs` for loglikelihoods, `/tokenize` and friends with the remote tokenizer
backend, and plain completions for generation. Its `hf` model on the same directory is the
reference. The tasks are offline, from files the test writes: multiple choice, rolling perplexity
over texts longer than a window, and greedy generation. A DLF configuration, which has no checkpoint
of its own, is scored through `serve` and against `logitfuse eval` on the same data."""
import json
import os
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import dlf_workspace as ws  # noqa: E402
from conftest import BINARY  # noqa: E402
import serve_client  # noqa: E402

MAX_LENGTH = 48  # tokens per request: the rolling texts below span several windows
# lm-eval's API models keep max_length - 1 tokens per request (room for the one generated token)
# and cut rolling text into windows of one less again; its hf model cuts windows of max_length. The
# reference runs with max_length - 2, so that both score the same windows (lm-eval 0.4.13).
HF_MAX_LENGTH = MAX_LENGTH - 2


def write_tasks(root, mc_rows, texts, gen_rows):
    """Three lm-eval tasks read from local JSONL files; returns the folder for include_path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ws.write_jsonl(root / "mc.jsonl", mc_rows)
    ws.write_jsonl(root / "texts.jsonl", [{"text": t} for t in texts])
    ws.write_jsonl(root / "gen.jsonl", gen_rows)

    def data(name):
        return f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / name}\ntest_split: test\n"

    (root / "lf_mc.yaml").write_text("task: lf_mc\n" + data("mc.jsonl") + """output_type: multiple_choice
doc_to_text: prompt
doc_to_choice: choices
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
""")
    (root / "lf_rolling.yaml").write_text("task: lf_rolling\n" + data("texts.jsonl") + """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: text
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""")
    (root / "lf_gen.yaml").write_text("task: lf_gen\n" + data("gen.jsonl") + """output_type: generate_until
doc_to_text: prompt
doc_to_target: "{{answer}}"
target_delimiter: ""
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
""")
    return root


def evaluate(model, model_args, tasks_dir, tasks=("lf_mc", "lf_rolling", "lf_gen")):
    """lm-eval's results: per task its metrics and its samples' filtered responses, by doc id."""
    out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=list(tasks),
                                  task_manager=TaskManager(include_path=str(tasks_dir)), log_samples=True,
                                  bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                  fewshot_random_seed=0)
    results = {}
    for task in tasks:
        samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
        results[task] = {"metrics": out["results"][task], "responses": [s["filtered_resps"] for s in samples]}
    return results


def metric(result, task, name):
    return result[task]["metrics"][f"{name},none"]


def served_args(server, tokenizer, batch_size, remote=False):
    args = {"model": "tiny", "base_url": server.url + "/v1/completions", "batch_size": batch_size,
            "num_concurrent": 1, "max_retries": 1, "tokenized_requests": True, "max_length": MAX_LENGTH,
            "max_gen_toks": 8, "seed": 0, "timeout": 600}
    if remote:
        args["tokenizer_backend"] = "remote"
    else:
        args.update(tokenizer_backend="huggingface", tokenizer=str(tokenizer))
    return args


def scalar(x):
    """A loglikelihood from lm-eval's filtered responses ((ll, is_greedy) pairs, or [ll])."""
    while isinstance(x, (list, tuple)):
        x = x[0]
    return float(x)


def report(result, label):
    print(f"\n{label}: accuracy {metric(result, 'lf_mc', 'acc'):.4f}"
          + (f", word perplexity {metric(result, 'lf_rolling', 'word_perplexity'):.6g}, bits per byte "
             f"{metric(result, 'lf_rolling', 'bits_per_byte'):.6f}" if "lf_rolling" in result else "")
          + f", exact match {metric(result, 'lf_gen', 'exact_match'):.4f}")


def assert_scores_equal(got, want, label):
    """Per-choice loglikelihoods to 1e-3 (fp32 on both sides: rounding of the batched products),
    accuracy equal, rolling perplexity to 0.1 %, greedy generations equal."""
    worst = 0.0
    for g, w in zip(got["lf_mc"]["responses"], want["lf_mc"]["responses"], strict=True):
        g_ll, w_ll = [scalar(x) for x in g], [scalar(x) for x in w]
        assert len(g_ll) == len(w_ll)
        for a, b in zip(g_ll, w_ll):
            worst = max(worst, abs(a - b))
            assert abs(a - b) < 1e-3, (label, g_ll, w_ll)
    report(got, label)
    print(f"  largest per-choice loglikelihood difference {worst:.2e}")
    assert metric(got, "lf_mc", "acc") == metric(want, "lf_mc", "acc"), label
    for g, w in zip(got["lf_rolling"]["responses"], want["lf_rolling"]["responses"], strict=True):
        assert abs(scalar(g) - scalar(w)) < 1e-3 * max(1.0, abs(scalar(w))), (label, g, w)
    for name in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        a, b = metric(got, "lf_rolling", name), metric(want, "lf_rolling", name)
        assert abs(a - b) <= 1e-3 * abs(b), (label, name, a, b)
    assert got["lf_gen"]["responses"] == want["lf_gen"]["responses"], label
    assert metric(got, "lf_gen", "exact_match") == metric(want, "lf_gen", "exact_match"), label


@pytest.fixture(scope="module")
def paths(tmp_path_factory, logitfuse):
    return ws.build(tmp_path_factory.mktemp("lm_eval"), logitfuse)


def small_tasks(paths, root):
    mc = [json.loads(l) for l in (Path(paths["root"]) / "secret_mc.jsonl").read_text().splitlines()]
    gen = [{"prompt": f"Say {w} twice:", "answer": f" {w} {w}"} for w in ws.WORDS[:8]]
    texts = [" ".join(f"Say {w} twice: {w} {w}." for w in ws.WORDS[i:i + 6]) for i in range(0, 16, 4)]
    return write_tasks(root, mc, texts, gen)


def plain_config(paths, name, model):
    path = Path(paths["root"]) / f"{name}.yaml"
    path.write_text(f"model: {{path: {model}, dtype: fp32, device: cpu}}\n"
                    "generation: {max_new_tokens: 8, batch_size: 16, chat_template: plain}\n")
    return path


def with_eos_in_config(model, out):
    """A copy of `model` whose config.json names the tokenizer's EOS, as a Hub model's does:
    transformers' generate (lm-eval's hf model) stops there only then, and `serve` always does."""
    shutil.copytree(model, out)
    config = json.loads((out / "config.json").read_text())
    config["eos_token_id"] = Tokenizer.from_file(str(out / "tokenizer.json")).token_to_id("<|endoftext|>")
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_lm_eval_through_serve_equals_lm_eval_on_the_small_model(paths, tmp_path):
    tasks = small_tasks(paths, tmp_path / "tasks")
    model = with_eos_in_config(paths["large"], tmp_path / "model")
    want = evaluate("hf", {"pretrained": str(model), "dtype": "float32", "device": "cpu", "batch_size": 4,
                           "max_length": HF_MAX_LENGTH}, tasks)
    report(want, "small model, lm-eval hf")
    assert 1 < metric(want, "lf_rolling", "word_perplexity") < float("inf")
    with serve_client.serving(BINARY, plain_config(paths, "lm_eval_plain", model), "serve.model_name=tiny",
                              "serve.max_batch=16") as server:
        for batch_size, remote in ((1, False), (8, False), (8, True)):
            got = evaluate("local-completions", served_args(server, model, batch_size, remote), tasks)
            assert_scores_equal(got, want, f"batch {batch_size}, remote tokenizer {remote}")


def test_lm_eval_through_serve_equals_lm_eval_on_smollm2(real_models, tmp_path):
    model = real_models["smollm2-135m-instruct"]
    rows = [("The capital of France is", [" Paris", " Rome", " Berlin"], 0),
            ("Water freezes at zero degrees", [" Celsius", " Fahrenheit"], 0),
            ("The opposite of hot is", [" warm", " cold", " red"], 1),
            ("A week has seven", [" days", " hours"], 0),
            ("The largest planet in the solar system is", [" Mars", " Jupiter", " Venus"], 1),
            ("The chemical symbol for gold is", [" Ag", " Au", " Gd"], 1),
            ("The author of Hamlet is William", [" Shakespeare", " Wordsworth", " Blake"], 0),
            ("Twelve divided by four is", [" three", " four", " six"], 0),
            ("The square root of 81 is", [" 7", " 8", " 9"], 2),
            ("The currency of Japan is the", [" yuan", " yen", " won"], 1),
            ("Photosynthesis takes place in the", [" chloroplast", " mitochondrion", " nucleus"], 0),
            ("The longest river in Africa is the", [" Congo", " Niger", " Nile"], 2),
            ("An octagon has", [" six sides", " eight sides", " ten sides"], 1),
            ("The year the Berlin Wall fell was", [" 1989", " 1991", " 1979"], 0),
            ("The smallest prime number is", [" one", " two", " three"], 1),
            ("The speed of light is about 300,000 kilometres per", [" second", " minute", " hour"], 0)]
    mc = [{"prompt": p, "choices": c, "label": l} for p, c, l in rows]
    texts = ["The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the clocks "
             "were striking thirteen. Call me Ishmael. Some years ago, never mind how long precisely, having "
             "little or no money in my purse, I thought I would sail about a little.",
             "Language models assign probabilities to sequences of words; perplexity measures how surprised "
             "a model is by a text, and lower is better."]
    gen = [{"prompt": "Question: What is 2 + 2?\nAnswer:", "answer": " 4"},
           {"prompt": "The color of the sky on a clear day is", "answer": " blue"}]
    tasks = write_tasks(tmp_path / "tasks", mc, texts, gen)
    want = evaluate("hf", {"pretrained": str(model), "dtype": "float32", "device": "cpu", "batch_size": 4,
                           "max_length": HF_MAX_LENGTH}, tasks)
    report(want, "SmolLM2-135M-Instruct, lm-eval hf")
    with serve_client.serving(BINARY, plain_config({"root": tmp_path}, "smollm2", model), "serve.model_name=tiny",
                              "serve.max_batch=16") as server:
        for batch_size, remote in ((1, False), (8, True)):
            got = evaluate("local-completions", served_args(server, model, batch_size, remote), tasks)
            assert_scores_equal(got, want, f"SmolLM2, batch {batch_size}, remote tokenizer {remote}")


def test_a_dlf_configuration_scores_the_same_through_serve_and_logitfuse_eval(paths, logitfuse, tmp_path):
    """DLF has no checkpoint for lm-eval's hf model: its scores through serve are checked against
    `logitfuse eval` on the same questions (multiple-choice loglikelihoods per choice and accuracy,
    greedy generations)."""
    root = Path(paths["root"])
    mc = [json.loads(l) for l in (root / "secret_mc.jsonl").read_text().splitlines()]
    gen = [{"prompt": ws.secret_prompt(w), "answer": f" {n}"} for w, n in ws.secret_table().items()]
    tasks = write_tasks(tmp_path / "tasks", mc, ["unused"], gen)
    ws.write_jsonl(tmp_path / "gen_eval.jsonl", [{"prompt": g["prompt"], "answer": g["answer"].strip()} for g in gen])
    models = (f"models:\n  large: {{path: {paths['large']}, dtype: fp32}}\n  base: {{path: {paths['base']}, dtype: fp32}}\n"
              f"  experts:\n    - {{name: secret, path: {paths['secret']}, dtype: fp32}}\n"
              f"    - {{name: color, path: {paths['color']}, dtype: fp32}}\nfusion: {{strategy: dynamic}}\n")
    cfg = tmp_path / "dlf.yaml"
    cfg.write_text(models + "generation: {max_new_tokens: 8, batch_size: 16, chat_template: plain}\n"
                   f"tasks:\n  - {{name: mc, type: multiple_choice, data: {root / 'secret_mc.jsonl'}}}\n"
                   f"  - {{name: gen, type: exact_match, data: {tmp_path / 'gen_eval.jsonl'}}}\n"
                   f"output_dir: {tmp_path / 'eval'}\n")
    logitfuse("eval", cfg)
    predictions = {t: [json.loads(l) for l in (tmp_path / "eval" / "predictions" / f"{t}.jsonl").read_text().splitlines()]
                   for t in ("mc", "gen")}
    served = tmp_path / "serve.yaml"
    served.write_text(models + "generation: {max_new_tokens: 8, batch_size: 16, chat_template: plain}\n")
    with serve_client.serving(BINARY, served, "serve.model_name=tiny", "serve.max_batch=16") as server:
        got = evaluate("local-completions", served_args(server, paths["large"], 8), tasks, tasks=("lf_mc", "lf_gen"))
    report(got, "DLF through serve")
    for g, p in zip(got["lf_mc"]["responses"], predictions["mc"], strict=True):
        lls = [scalar(x) for x in g]
        assert len(lls) == len(p["scores"])
        for a, b in zip(lls, p["scores"]):
            assert abs(a - b) < 1e-3, (lls, p["scores"])
    accuracy = json.loads((tmp_path / "eval" / "metrics.json").read_text())["tasks"]["mc"]["accuracy"]
    assert metric(got, "lf_mc", "acc") == pytest.approx(accuracy)
    # lm-eval stops at a newline (the task's `until`); eval's completion runs to EOS or 8 tokens.
    assert [r[0] for r in got["lf_gen"]["responses"]] == [p["completion"].split("\n")[0] for p in predictions["gen"]]
    print(f"  logitfuse eval: accuracy {accuracy:.4f}, exact match "
          f"{json.loads((tmp_path / 'eval' / 'metrics.json').read_text())['tasks']['gen']['exact_match']:.4f}")
