"""Load test of `logitfuse serve` (localhost only, bounded): 1, 4, 16 and 64 concurrent streams on a
small model and on SmolLM2-135M-Instruct, on this machine's CPU. Each stream is one streamed
completion of a distinct prompt with a fixed number of tokens (ignore_eos), all read by one client
thread (sse_client.py: a thread per stream took half of one of the two cores from the server at 16
streams). Each level runs --repeats times, and more until its runs have lasted 2 s; the run with the
median tokens/s is reported:
requests/s, generated tokens/s, p50/p99 time to first token and between tokens; the speed-up of
tokens/s over one stream; the ceiling the LM head alone puts on that speed-up (its time on one row
against the level's rows, same run, through the blocked-weight path serve decodes with in fp32),
and beside it the plain at::linear head's time over the blocked one's; the client's CPU share;
whether every stream's tokens equal its own run alone (sequential, not streamed). Beside it, on the same model, threads and prompts: transformers' generate loop with the
level's batch (left-padded, greedy, the same token count), tokens/s; and `transformers serve` with
its continuous batching (where its serving extras, FastAPI and uvicorn, are installed), the same
streams, each asked for exactly the same token count through its `generation_config` field (it has
no ignore_eos), tokens/s as its usage counts them.

    python bench/serve_load.py [--models small,smollm2] [--streams 1,4,16,64] [--tokens 32] [--repeats 3] [--quick]

Writes runs/serve-load/report.json and prints a markdown table."""
import argparse
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import http.client
import torch
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "oracle"))
import serve_client  # noqa: E402
import sse_client  # noqa: E402

BINARY = Path(os.environ.get("LOGITFUSE_BIN", ROOT / "build" / "bin" / "logitfuse"))
MODELS = Path(os.environ.get("LOGITFUSE_HOME", Path.home() / ".cache" / "logitfuse")) / "models"
SMOLLM2 = MODELS / "smollm2-135m-instruct"
TORCH_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}
DTYPE = "fp32"  # --dtype

WORDS = ("river stone cloud tiger piano lemon candle forest rocket violet castle garden pepper silver "
         "winter apple harbor meadow thunder marble canyon falcon lantern orchard").split()


def prompts(n):
    return [f"Write a short story about a {WORDS[i % len(WORDS)]} and a {WORDS[(7 * i + 3) % len(WORDS)]} "
            f"(number {i})." for i in range(n)]


def small_model(out):
    """A random Llama (hidden 256, 4 layers) with SmolLM2's tokenizer: the serving path without the
    weight of a real model."""
    if not (out / "config.json").exists():
        serve_client.subprocess.run([str(BINARY), "init-model", "--arch", "llama", "--out", str(out), "--tokenizer",
                                     str(SMOLLM2), "--hidden", "256", "--layers", "4", "--heads", "4", "--kv-heads", "2",
                                     "--intermediate", "512", "--seed", "1"], check=True, capture_output=True)
    return out


def stream_many(url, texts, tokens):
    """Every prompt streamed at once from one thread: ([(token ids, time to first token, gaps)], the
    client's share of one core)."""
    bodies = [{"model": "m", "prompt": p, "max_tokens": tokens, "stream": True, "ignore_eos": True,
               "return_token_ids": True, "temperature": 0} for p in texts]
    streams, share = sse_client.stream_all(url, bodies)
    results = []
    for start, events, status in streams:
        if status != 200:
            raise RuntimeError(f"a stream answered {status}")
        ids, stamps = [], []
        for stamp, chunk in events:
            for t in (chunk["choices"][0].get("token_ids") or []) if chunk["choices"] else []:
                ids.append(t)
                stamps.append(stamp)
        results.append((ids, stamps[0] - start, [b - a for a, b in zip(stamps, stamps[1:])]))
    return results, share


def alone(url, prompt, tokens):
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    conn.request("POST", "/v1/completions", json.dumps({"model": "m", "prompt": prompt, "max_tokens": tokens,
                                                        "ignore_eos": True, "return_token_ids": True,
                                                        "temperature": 0}), {"Content-Type": "application/json"})
    r = conn.getresponse()
    body = json.loads(r.read())
    conn.close()
    if r.status != 200:
        raise RuntimeError(f"{r.status}: {body}")
    return body["choices"][0]["token_ids"]


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


def transformers_tokens_per_s(model_dir, texts, tokens, threads):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=TORCH_DTYPE[DTYPE]).eval()
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        start = time.perf_counter()
        out = model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        seconds = time.perf_counter() - start
    return (out.shape[1] - batch["input_ids"].shape[1]) * len(texts) / seconds


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def transformers_serve(model_dir):
    """`transformers serve` (FastAPI + uvicorn) with its continuous batching, on the CPU in --dtype,
    the model preloaded; None where its serving extras are not installed."""
    try:
        import fastapi, uvicorn  # noqa: F401
    except ImportError:
        yield None
        return
    port = free_port()
    cli = Path(sys.executable).parent / "transformers"
    proc = subprocess.Popen([str(cli), "serve", str(model_dir), "--device", "cpu", "--dtype",
                             str(TORCH_DTYPE[DTYPE]).split(".")[1],
                             "--continuous-batching", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        def up():
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=2):
                    return True
            except OSError:
                return False
        if not serve_client.wait_until(up, 180):
            raise RuntimeError("transformers serve did not start")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def transformers_serve_tokens_per_s(url, model, texts, tokens):
    """The same streams, read by the same one-thread client, each asked for exactly `tokens` new
    tokens; the tokens its final usage counts (or its chunks, where it sends no usage)."""
    bodies = [{"model": model, "prompt": p, "max_tokens": tokens, "stream": True, "temperature": 0,
               "generation_config": json.dumps({"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False})}
              for p in texts]
    start = time.perf_counter()
    streams, _ = sse_client.stream_all(url, bodies)
    seconds = time.perf_counter() - start
    total = 0
    for _, events, _ in streams:
        usage = [e["usage"]["completion_tokens"] for _, e in events if e.get("usage")]
        total += usage[-1] if usage else sum(1 for _, e in events for c in e.get("choices") or [] if not c.get("finish_reason"))
    return total / seconds


def lm_head(model_dir):
    """The model's own LM head weights ([vocab, hidden], in --dtype; the embedding where they are tied)."""
    from safetensors.torch import load_file
    weights = load_file(str(Path(model_dir) / "model.safetensors"))
    return weights.get("lm_head.weight", weights["model.embed_tokens.weight"]).to(TORCH_DTYPE[DTYPE]).contiguous()


def head_paths(head):
    """(the path serve decodes with, the plain at::linear one), each a function of the rows. In fp32
    serve uses oneDNN's blocked copy of the head (CausalLM::pack_head_for_decoding), through the
    same mkldnn operators, packed once here; elsewhere (bf16) the plain one."""
    plain = lambda x: torch.nn.functional.linear(x, head)  # noqa: E731
    if head.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return plain, plain
    packed = torch.ops.mkldnn._reorder_linear_weight(head, None)
    return (lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")), plain


def head_seconds(fn, rows, width, dtype, repeats=30):
    """Best of `repeats` timed calls of the head on `rows` random rows: the hardware's time for it,
    with other processes' interference (±50% between single calls on this 2-core VM) left out."""
    x = torch.randn(rows, width, dtype=dtype)
    fn(x)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return min(times)


def head_speedup(head, paths, level, one_row):
    """The ceiling the LM head alone puts on batching: level × t(1 row) / t(level rows) with the
    same threads, on the path serve uses (`paths` from head_paths; `one_row` is its t(1 row)); and
    the plain head's time on the level's rows over that path's; and t(level rows) itself. A head that dominates the step (the
    small model: 12.6M of the 15.2M parameters a token is multiplied by) turns compute-bound with a
    few rows, and no scheduler can batch past this."""
    served, plain = paths
    t = head_seconds(served, level, head.shape[1], head.dtype) if level > 1 else one_row
    return level * one_row / t, head_seconds(plain, level, head.shape[1], head.dtype) / t, t


PHASES = ("prefill", "decode_layers", "decode_head", "sample", "emit")


def engine_counters(url):
    """The engine's step count and seconds by phase so far, from GET /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=60) as r:
        text = r.read().decode()
    phases = {k: float(v) for k, v in re.findall(r'^logitfuse_step_phase_seconds_total\{phase="(\w+)"\} (\S+)$', text, re.M)}
    steps = float(re.search(r"^logitfuse_steps_total (\S+)$", text, re.M).group(1))
    step_seconds = float(re.search(r"^logitfuse_step_duration_seconds_sum (\S+)$", text, re.M).group(1))
    return steps, step_seconds, phases


def per_step_ms(before, after):
    """Milliseconds per engine step, by phase and in all, between two engine_counters readings."""
    steps = max(after[0] - before[0], 1)
    out = {p: 1000 * (after[2].get(p, 0) - before[2].get(p, 0)) / steps for p in PHASES}
    out["step"] = 1000 * (after[1] - before[1]) / steps
    return out


def run_model(name, model_dir, levels, tokens, work, hf, repeats):
    cfg = work / f"{name}.yaml"
    cfg.write_text(f"model: {{path: {model_dir}, dtype: {DTYPE}, device: cpu}}\n"
                   f"generation: {{max_new_tokens: {tokens}, chat_template: plain}}\n")
    rows = []
    head = lm_head(model_dir)
    threads = torch.get_num_threads()
    paths = head_paths(head)
    one_row = head_seconds(paths[0], 1, head.shape[1], head.dtype)
    with serve_client.serving(BINARY, cfg, "serve.model_name=m", f"serve.max_batch={max(levels)}",
                              f"serve.max_queue={2 * max(levels)}") as server:
        texts = prompts(max(levels))
        alone(server.url, texts[0], 4)  # warm-up
        reference = {}
        for level in levels:
            batch = texts[:level]
            for p in batch:
                if p not in reference:
                    reference[p] = alone(server.url, p, tokens)
            runs = []
            counters = engine_counters(server.url)
            # At least `repeats` runs and 2 s in all: one stream of 32 tokens lasts ~0.1 s, where a
            # single run's tokens/s moved by ±20% from one run to the next.
            while len(runs) < repeats or (sum(r["wall_s"] for r in runs) < 2.0 and len(runs) < 50):
                start = time.perf_counter()
                results, share = stream_many(server.url, batch, tokens)
                wall = time.perf_counter() - start
                generated = sum(len(ids) for ids, _, _ in results)
                runs.append({"model": name, "streams": level, "requests_per_s": level / wall,
                             "tokens_per_s": generated / wall,
                             "ttft_p50": pct([t for _, t, _ in results], 0.5),
                             "ttft_p99": pct([t for _, t, _ in results], 0.99),
                             "itl_p50": pct([g for *_, gs in results for g in gs], 0.5),
                             "itl_p99": pct([g for *_, gs in results for g in gs], 0.99),
                             "equal_to_alone": all(ids == reference[p] for (ids, _, _), p in zip(results, batch)),
                             "client_cpu_share": share, "wall_s": wall})
            row = sorted(runs, key=lambda r: r["tokens_per_s"])[len(runs) // 2]
            row["step_ms"] = per_step_ms(counters, engine_counters(server.url))
            row["equal_to_alone"] = all(r["equal_to_alone"] for r in runs)
            row["tokens_per_s_runs"] = [r["tokens_per_s"] for r in runs]
            row["head_speedup"], row["head_plain_over_served"], head_alone = head_speedup(head, paths, level, one_row)
            row["head_alone_ms"] = 1000 * head_alone
            if hf:
                row["transformers_tokens_per_s"] = transformers_tokens_per_s(model_dir, batch, tokens, threads)
            rows.append(row)
    if hf:
        # After logitfuse's server has stopped, so the two never share the cores.
        with transformers_serve(model_dir) as url:
            for row in rows if url else []:
                texts = prompts(row["streams"])
                if row is rows[0]:
                    transformers_serve_tokens_per_s(url, str(model_dir), texts[:1], 4)  # warm-up
                row["transformers_serve_tokens_per_s"] = transformers_serve_tokens_per_s(url, str(model_dir), texts, tokens)
    for row in rows:
        print(json.dumps(row), flush=True)
    one = next(r["tokens_per_s"] for r in rows if r["streams"] == levels[0])
    for r in rows:
        r["speedup_vs_one"] = r["tokens_per_s"] / one
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="small,smollm2")
    ap.add_argument("--streams", default="1,4,16,64")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="runs per level at least (and 2 s); the median's is reported")
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--dtype", default="fp32", choices=sorted(TORCH_DTYPE), help="every model's weights and compute")
    ap.add_argument("--quick", action="store_true", help="small model, 1 and 4 streams, 8 tokens (the tests)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "serve-load"))
    a = ap.parse_args()
    global DTYPE
    DTYPE = a.dtype
    if a.quick:
        a.models, a.streams, a.tokens, a.repeats = "small", "1,4", 8, 1
    levels = [int(s) for s in a.streams.split(",")]
    work = Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    if not SMOLLM2.exists():
        sys.exit(f"{SMOLLM2} is missing: run scripts/fetch-models.sh")
    rows = []
    for name in a.models.split(","):
        model_dir = small_model(work / "small-model") if name == "small" else SMOLLM2
        rows += run_model(name, model_dir, levels, a.tokens, work, not a.no_transformers, a.repeats)
    (work / "report.json").write_text(json.dumps({"tokens": a.tokens, "dtype": DTYPE, "threads": torch.get_num_threads(),
                                                  "cpu_count": os.cpu_count(), "rows": rows}, indent=1))
    print(f"\n{a.tokens} tokens per stream, {torch.get_num_threads()} threads, {DTYPE}, per level the median of ≥ {a.repeats} run(s) lasting ≥ 2 s\n")
    print("| model | streams | req/s | tok/s | × one stream | TTFT p50 / p99 s | ITL p50 / p99 ms | "
          "LM head alone × | plain head ÷ served | client CPU | tokens = alone | transformers generate tok/s | "
          "transformers serve tok/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        hf = f"{r['transformers_tokens_per_s']:.1f}" if "transformers_tokens_per_s" in r else ""
        ts = f"{r['transformers_serve_tokens_per_s']:.1f}" if "transformers_serve_tokens_per_s" in r else ""
        print(f"| {r['model']} | {r['streams']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | "
              f"{r['speedup_vs_one']:.2f} | {r['ttft_p50']:.3f} / {r['ttft_p99']:.3f} | "
              f"{1000 * r['itl_p50']:.1f} / {1000 * r['itl_p99']:.1f} | {r['head_speedup']:.2f} | "
              f"{r['head_plain_over_served']:.2f} | {r['client_cpu_share']:.2f} | {r['equal_to_alone']} | {hf} | {ts} |")
    print("\nWhere an engine step's time goes (ms per step, over all runs of a level; the server's "
          "logitfuse_step_phase_seconds_total):\n")
    print("| model | streams | step | " + " | ".join(PHASES) + " | LM head alone (best of 30) |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in PHASES) + " | --- |")
    for r in rows:
        ms = r["step_ms"]
        print(f"| {r['model']} | {r['streams']} | {ms['step']:.3f} | " + " | ".join(f"{ms[p]:.3f}" for p in PHASES) +
              f" | {r['head_alone_ms']:.3f} |")
    if not all(r["equal_to_alone"] for r in rows):
        sys.exit("some stream's tokens differ from its run alone")


if __name__ == "__main__":
    main()
