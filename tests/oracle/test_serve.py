"""`logitfuse serve` with real clients (the official `openai` package, curl, raw sockets) on the DLF
workspace's models (dlf_workspace.py): greedy outputs equal `generate`'s token for token, plain and
fused, alone and in a full batch; prompt and completion logprobs equal `logits`; the `fusion` field;
bad requests, the queue limit, clients that vanish mid-stream, and SIGTERM under load."""
import concurrent.futures as cf
import contextlib
import http.server
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from openai import OpenAI
import openai
from safetensors.numpy import load_file

import dlf_workspace as ws
from conftest import BINARY
import serve_client


def serving(binary, cfg, *overrides):
    """The generate config served as the model "tiny", 16 rows at once (the overrides may change it)."""
    return serve_client.serving(binary, cfg, "serve.model_name=tiny", "serve.max_batch=16", *overrides)


wait_until = serve_client.wait_until
# scripts/gpu-check.sh sets LOGITFUSE_TEST_DEVICES=cpu,cuda on the GPU machine: there the equality
# and logprob tests also serve (and generate, and score) on the GPU.
DEVICES = os.environ.get("LOGITFUSE_TEST_DEVICES", "cpu").split(",")


@pytest.fixture(scope="module")
def paths(tmp_path_factory, logitfuse):
    return ws.build(tmp_path_factory.mktemp("serve"), logitfuse)


def read_jsonl(path):
    return [json.loads(l) for l in Path(path).read_text().splitlines()]


def config(paths, name, strategy="dynamic", experts=("secret", "color"), extra="", device="cpu"):
    root = Path(paths["root"])
    if strategy == "plain":
        models = f"model: {{path: {paths['large']}, dtype: fp32, device: {device}}}\n"
    else:
        lines = "".join(f"    - {{name: {e}, path: {paths[e]}, dtype: fp32, device: {device}}}\n" for e in experts)
        models = (f"models:\n  large: {{path: {paths['large']}, dtype: fp32, device: {device}}}\n"
                  f"  base: {{path: {paths['base']}, dtype: fp32, device: {device}}}\n  experts:\n{lines}"
                  f"fusion: {{strategy: {strategy}}}\n")
    path = root / f"{name}.yaml"
    path.write_text(models + f"""generation: {{max_new_tokens: 6, batch_size: 16, chat_template: plain}}
input: {root}/secret_prompts.jsonl
output: {root}/{name}.jsonl
{extra}""")
    return path


def generated(logitfuse, cfg, *overrides):
    logitfuse("generate", cfg, *overrides)
    out = Path(cfg).with_suffix(".jsonl")
    return read_jsonl(out)


def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)


def chat(c, prompt, **kw):
    r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}],
                                  extra_body={"return_token_ids": True, **kw.pop("extra", {})}, **kw)
    return r.choices[0]


def post(server, path, body, raw=None):
    """(status, parsed JSON) through curl, so the HTTP seen is a plain client's."""
    data = raw if raw is not None else json.dumps(body)
    proc = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "-X", "POST", server.url + path, "-H",
                           "Content-Type: application/json", "--data-binary", data], capture_output=True, text=True)
    text, code = proc.stdout.rsplit("\n", 1)
    return int(code), json.loads(text)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("strategy,overrides", [("plain", ()), ("dynamic", ()),
                                                 # prompts prefilled a few tokens per step, between steps
                                                 ("dynamic", ("serve.prefill_tokens=3",))])
def test_greedy_outputs_equal_generate_alone_and_in_a_full_batch(paths, logitfuse, strategy, overrides, device):
    cfg = config(paths, f"greedy_{strategy}_{device}", strategy, device=device)
    want = generated(logitfuse, cfg)
    assert len(want) == 16 and any(w["completion_ids"] for w in want)
    with serving(BINARY, cfg, *overrides) as server:
        c = client(server)
        for w in want[:4]:  # one at a time
            got = chat(c, w["prompt"])
            assert got.prompt_token_ids == w["prompt_ids"]
            assert got.token_ids == w["completion_ids"], w["prompt"]
            assert got.message.content == w["completion"]
        with cf.ThreadPoolExecutor(16) as pool:  # all 16 at once: one full batch, joining as they come
            got = list(pool.map(lambda w: chat(c, w["prompt"]), want))
        assert [g.token_ids for g in got] == [w["completion_ids"] for w in want]
        assert [g.message.content for g in got] == [w["completion"] for w in want]
        # The completions endpoint with the same token ids gives the same tokens.
        r = c.completions.create(model="tiny", prompt=want[0]["prompt_ids"], max_tokens=6,
                                 extra_body={"return_token_ids": True})
        assert r.choices[0].token_ids == want[0]["completion_ids"]


def test_streaming_equals_the_whole_answer_with_openai_and_curl(paths):
    cfg = config(paths, "stream", "dynamic")
    with serving(BINARY, cfg) as server:
        c = client(server)
        prompt = ws.secret_prompt("apple")
        whole = chat(c, prompt, max_tokens=12, extra={"ignore_eos": True})
        chunks = list(c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}],
                                                max_tokens=12, stream=True, stream_options={"include_usage": True},
                                                extra_body={"ignore_eos": True}))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == whole.message.content
        assert chunks[0].choices[0].delta.role == "assistant"
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
        assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.prompt_tokens > 0
        # Completions, streamed through curl: server-sent events ending with [DONE].
        proc = subprocess.run(["curl", "-sN", server.url + "/v1/completions", "-d",
                               json.dumps({"prompt": prompt, "max_tokens": 12, "stream": True, "ignore_eos": True})],
                              capture_output=True, text=True, check=True)
        events = [l[len("data: "):] for l in proc.stdout.splitlines() if l.startswith("data: ")]
        assert events[-1] == "[DONE]"
        streamed = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
        plain = c.completions.create(model="tiny", prompt=prompt, max_tokens=12, extra_body={"ignore_eos": True})
        assert streamed == plain.choices[0].text


def log_softmax(z):
    z = z.astype(np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("overrides", [(), ("serve.prefill_tokens=3",)], ids=["whole", "scored-3-at-a-time"])
def test_prompt_and_completion_logprobs_equal_logits(paths, logitfuse, tmp_path, overrides, device):
    """Prompt logprobs for a teacher, scored whole and 3 prompt tokens per engine step (with KV caches
    between the pieces, as a long prompt is scored while other rows decode), against `logits` on the
    same device."""
    cfg = config(paths, f"logprobs_{device}", "plain", device=device)
    with serving(BINARY, cfg, *overrides) as server:
        c = client(server)
        r = c.completions.create(model="tiny", prompt=ws.secret_prompt("river"), max_tokens=6, logprobs=3,
                                 extra_body={"return_token_ids": True, "ignore_eos": True})
        choice = r.choices[0]
        ids = choice.prompt_token_ids + choice.token_ids
        # The teacher's request: top-5 logprobs at every prompt position (vLLM's shape).
        code, scored = post(server, "/v1/completions", {"model": "tiny", "prompt": ids, "max_tokens": 0, "echo": True,
                                                        "prompt_logprobs": 5})
        assert code == 200
    (tmp_path / "ids.jsonl").write_text(json.dumps(ids) + "\n")
    logitfuse("logits", "--model", paths["large"], "--input", tmp_path / "ids.jsonl", "--out", tmp_path / "l.safetensors",
              "--device", device)
    lp = log_softmax(load_file(str(tmp_path / "l.safetensors"))["logits.0"])  # [T, V]
    vocab = lp.shape[1]
    prompt_lp = scored["choices"][0]["prompt_logprobs"]
    assert prompt_lp[0] is None and len(prompt_lp) == len(ids)
    for pos in range(1, len(ids)):
        row = lp[pos - 1]
        entry = {int(k): v for k, v in prompt_lp[pos].items()}
        # The top 5 are there (a token within rounding of the fifth may stand in for it).
        for t in np.nonzero(row > np.sort(row)[-5] + 1e-4)[0]:
            assert int(t) in entry, (pos, t)
        for t, v in entry.items():
            assert 0 <= t < vocab
            assert abs(v["logprob"] - row[t]) < 1e-4
            # Rank: 1 + the tokens likelier than t (those within rounding of it may fall either way).
            assert 1 + int((row > row[t] + 1e-4).sum()) <= v["rank"] <= 1 + int((row > row[t] - 1e-4).sum())
        assert ids[pos] in entry
    # Completion logprobs: the chosen token's and the top 3 at each generated position.
    P = len(choice.prompt_token_ids)
    for i, tok in enumerate(choice.token_ids):
        row = lp[P - 1 + i]
        assert abs(choice.logprobs.token_logprobs[i] - row[tok]) < 1e-4
        assert abs(max(choice.logprobs.top_logprobs[i].values()) - row.max()) < 1e-4


def test_the_fusion_field_chooses_per_request(paths, logitfuse):
    cfg = config(paths, "fusion", "dynamic")
    large_only = generated(logitfuse, cfg, "fusion.strategy=large_only")
    static = generated(logitfuse, cfg, "fusion.strategy=static", "fusion.static_alpha=0.5")
    secret_only = generated(logitfuse, config(paths, "fusion_secret", "dynamic", experts=("secret",)))
    with serving(BINARY, cfg) as server:
        c = client(server)
        prompts = [w["prompt"] for w in large_only[:6]]
        jobs = [(p, "off") for p in prompts] + [(p, {"strategy": "static", "static_alpha": 0.5}) for p in prompts] + \
               [(p, {"expert": "secret"}) for p in prompts]
        with cf.ThreadPoolExecutor(16) as pool:  # mixed fusions in one batch
            got = list(pool.map(lambda j: chat(c, j[0], extra={"fusion": j[1]}).token_ids, jobs))
        assert got[:6] == [w["completion_ids"] for w in large_only[:6]]
        assert got[6:12] == [w["completion_ids"] for w in static[:6]]
        assert got[12:] == [w["completion_ids"] for w in secret_only[:6]]
        # Each row runs only the models its fusion reads: "off" the large model, one expert's the
        # large, the base and that expert; here nothing read "color" but the static rows.
        before = positions_run(server)
        with cf.ThreadPoolExecutor(16) as pool:
            again = list(pool.map(lambda j: chat(c, j[0], extra={"fusion": j[1]}).token_ids,
                                  jobs[:6] + jobs[12:]))
        assert again == got[:6] + got[12:]
        after = positions_run(server)
        assert after["color"] == before["color"]
        assert after["secret"] > before["secret"] and after["base"] > before["base"]
        assert after["large"] - before["large"] > after["secret"] - before["secret"]
        for bad in ({"expert": "nope"}, {"strategy": "blend"}, {"alpha": "x"}, {"colour": 1}, 7):
            code, body = post(server, "/v1/chat/completions",
                              {"messages": [{"role": "user", "content": "x"}], "fusion": bad})
            assert code == 400 and "fusion" in body["error"]["message"], bad
    with serving(BINARY, config(paths, "fusion_plain", "plain")) as server:
        code, body = post(server, "/v1/completions", {"prompt": "x", "fusion": {"strategy": "dynamic"}})
        assert code == 400 and "strategy" in body["error"]["message"]


def test_routed_rows_run_only_their_expert_after_the_first_token(paths, logitfuse):
    """fusion.multi_expert route: greedy outputs equal generate's (which runs every expert at every
    step), alone and 16 at once, while after a row's first token the server runs only the expert it
    was routed to: the experts together run the large model's positions less each row's decoding
    steps (two experts: each step skips one)."""
    cfg = config(paths, "route", "dynamic")
    want = generated(logitfuse, cfg, "fusion.multi_expert=route")
    assert any(len(w["completion_ids"]) > 1 for w in want)
    with serving(BINARY, cfg, "fusion.multi_expert=route") as server:
        c = client(server)
        for w in want[:2]:
            assert chat(c, w["prompt"]).token_ids == w["completion_ids"], w["prompt"]
        before = positions_run(server)
        with cf.ThreadPoolExecutor(16) as pool:
            got = list(pool.map(lambda w: chat(c, w["prompt"]).token_ids, want))
        assert got == [w["completion_ids"] for w in want]
        after = positions_run(server)
    ran = {m: after[m] - before[m] for m in after}
    assert ran["base"] == ran["large"] and ran["secret"] <= ran["large"] and ran["color"] <= ran["large"]
    # A row's steps after its first token: one per later token, plus one that produced an EOS.
    skipped = 2 * ran["large"] - ran["secret"] - ran["color"]
    assert sum(len(w["completion_ids"]) - 1 for w in want) <= skipped <= sum(len(w["completion_ids"]) for w in want)


def test_bad_requests_get_openai_errors_and_the_queue_limit_429(paths):
    cfg = config(paths, "bad", "plain", extra="")
    with serving(BINARY, cfg, "serve.max_context=400", "serve.max_batch=1", "serve.max_queue=1") as server:
        cases = [
            ("/v1/completions", None, "{not json", 400),
            ("/v1/completions", {"prompt": "x", "max_tokens": "many"}, None, 400),
            ("/v1/completions", {"prompt": "x", "temperature": [1]}, None, 400),
            ("/v1/completions", {"prompt": "x", "model": "gpt-9"}, None, 404),
            ("/v1/completions", {"prompt": "word " * 500}, None, 400),
            ("/v1/completions", {"prompt": "x", "max_tokens": 1000}, None, 400),
            ("/v1/completions", {"prompt": "x", "n": 2}, None, 400),
            ("/v1/completions", {"prompt": [1, 2, 99999]}, None, 400),
            ("/v1/chat/completions", {"messages": []}, None, 400),
            ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, None, 400),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, None, 400),
            ("/v1/nothing", {}, None, 404),
        ]
        for path, body, raw, want in cases:
            code, answer = post(server, path, body, raw)
            assert code == want, (path, body, raw, answer)
            assert set(answer["error"]) >= {"message", "type", "param", "code"}
        c = client(server)
        # One row and one queue place: of 8 requests sent at once, each of 380 tokens (hundreds of
        # steps, against milliseconds for the 8 to arrive), one runs, one waits and the rest get 429.
        # Those answered are answered right.
        long = dict(max_tokens=380, extra={"ignore_eos": True})
        ok = chat(c, ws.secret_prompt("apple"), **long).token_ids

        def one(_):
            try:
                return chat(c, ws.secret_prompt("apple"), **dict(long)).token_ids
            except openai.RateLimitError:
                return 429
        with cf.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(8)))
        assert results.count(429) >= 1 and results.count(ok) >= 1, [r if r == 429 else len(r) for r in results]
        assert all(r == ok for r in results if r != 429)


def stream_then_vanish(url, prompt, chunks=2):
    """Opens a streaming request, reads a couple of events, and closes the socket mid-stream."""
    host, port = url.split("//")[1].split(":")
    s = socket.create_connection((host, int(port)))
    body = json.dumps({"prompt": prompt, "max_tokens": 400, "stream": True, "ignore_eos": True})
    s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    got = b""
    while got.count(b"data: ") < chunks:
        got += s.recv(4096)
    s.close()


def metrics_text(server):
    return subprocess.run(["curl", "-s", server.url + "/metrics"], capture_output=True, text=True).stdout


def positions_run(server):
    """Token positions each model has run (logitfuse_model_tokens_total), by model name."""
    return {m: int(n) for m, n in re.findall(r'logitfuse_model_tokens_total\{model="(\w+)"\} (\d+)', metrics_text(server))}


def metric(server, name):
    for line in metrics_text(server).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} missing from /metrics")


def test_a_burst_of_clients_connects_at_once(paths):
    """64 clients that connect in the same instant are all accepted at once, and each is answered.
    httplib listened with a backlog of 5: past it the kernel dropped the SYNs, and those clients
    connected only when they resent them a second later (Linux's initial retransmission timeout)."""
    cfg = config(paths, "burst", "plain")
    with serving(BINARY, cfg) as server:
        host, port = server.url.rsplit("/", 1)[1].split(":")
        socks = []
        start = time.perf_counter()
        for _ in range(64):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((host, int(port)))
            socks.append(s)
        pending = set(socks)
        while pending and time.perf_counter() - start < 5:
            _, writable, _ = select.select([], list(pending), [], 0.05)
            for s in writable:
                assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                pending.discard(s)
        connected = time.perf_counter() - start
        assert not pending and connected < 0.9, f"{len(pending)} still connecting; all in {connected:.3f} s"
        for s in socks:
            s.setblocking(True)
            s.settimeout(30)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        for s in socks:
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
            s.close()
            assert answer.startswith(b"HTTP/1.1 200"), answer[:80]


def test_vanishing_clients_malformed_requests_and_sigterm_under_load(paths):
    cfg = config(paths, "faults", "dynamic")
    prompts = [ws.secret_prompt(w) for w in ws.WORDS]
    server_cm = serving(BINARY, cfg)
    server = server_cm.__enter__()
    try:
        c = client(server)
        run = lambda p: chat(c, p, max_tokens=24, extra={"ignore_eos": True}).token_ids
        with cf.ThreadPoolExecutor(16) as pool:
            want = list(pool.map(run, prompts))  # warm-up load: the allocator reaches its level
        with cf.ThreadPoolExecutor(16) as pool:
            list(pool.map(run, prompts))
        rss_before = server.rss_kib()
        # Clients that vanish mid-stream, with malformed requests in between.
        with cf.ThreadPoolExecutor(16) as pool:
            jobs = [pool.submit(stream_then_vanish, server.url, p) for p in prompts[:8]]
            for _ in range(8):
                assert post(server, "/v1/completions", None, '{"prompt": ')[0] == 400
            jobs += [pool.submit(run, p) for p in prompts[8:]]
            later = [j.result() for j in jobs][8:]
        assert later == want[8:]  # nobody got another's tokens
        # Every vanished row is freed at a step boundary: nothing runs or waits.
        assert wait_until(lambda: metric(server, "logitfuse_running_requests") == 0
                          and metric(server, "logitfuse_queued_requests") == 0)
        with cf.ThreadPoolExecutor(16) as pool:
            assert list(pool.map(run, prompts)) == want
        rss_after = server.rss_kib()
        # The same load again needs no more memory: 10% (or 32 MiB) over its level is allocator slack.
        assert rss_after <= max(rss_before * 1.10, rss_before + 32 * 1024), (rss_before, rss_after)
        assert metric(server, "logitfuse_generation_tokens_total") > 0

        # SIGTERM under load: what runs finishes and is answered; then the server exits 0.
        def streamed(p):
            chunks = list(c.completions.create(model="tiny", prompt=p, max_tokens=60, stream=True,
                                               extra_body={"ignore_eos": True, "return_token_ids": True}))
            return [t for ch in chunks for t in (ch.choices[0].token_ids or [])], chunks[-1].choices[0].finish_reason
        with cf.ThreadPoolExecutor(8) as pool:
            jobs = [pool.submit(streamed, p) for p in prompts[:8]]
            assert wait_until(lambda: metric(server, "logitfuse_running_requests") > 0)
            server.proc.send_signal(signal.SIGTERM)
            results = [j.result() for j in jobs]
        assert all(len(ids) == 60 and reason == "length" for ids, reason in results), [(len(i), r) for i, r in results]
        assert server.proc.wait(120) == 0
        assert any("serve: stopped" in l for l in server.log)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()


def test_a_client_that_vanishes_before_a_whole_answer_frees_its_row(real_models, tmp_path):
    """A non-streaming request writes nothing until its end; its client closing the connection still
    frees the row at the next step (SmolLM2, so that 400 tokens take many seconds on a CPU)."""
    cfg = tmp_path / "smollm2.yaml"
    cfg.write_text(f"model: {{path: {real_models['smollm2-135m-instruct']}, dtype: fp32, device: cpu}}\n"
                   "generation: {chat_template: plain}\n")
    with serving(BINARY, cfg) as server:
        before = metric(server, "logitfuse_generation_tokens_total")
        body = json.dumps({"model": "tiny", "prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True})
        host, port = server.url.split("//")[1].split(":")
        s = socket.create_connection((host, int(port)))
        s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        # Decoding (the gauge is set at the end of an engine step).
        assert wait_until(lambda: metric(server, "logitfuse_running_requests") == 1)
        s.close()
        assert wait_until(lambda: 'logitfuse_requests_total{endpoint="/v1/completions",code="499"} 1' in metrics_text(server),
                          timeout=10)
        assert wait_until(lambda: metric(server, "logitfuse_running_requests") == 0, timeout=10)
        assert metric(server, "logitfuse_generation_tokens_total") - before < 100
        # The server carries on.
        code, answer = post(server, "/v1/completions", {"model": "tiny", "prompt": "Hello", "max_tokens": 2})
        assert code == 200 and answer["usage"]["completion_tokens"] == 2


def test_the_load_benchmark_runs_and_every_stream_equals_its_run_alone(real_models, tmp_path):
    """bench/serve_load.py --quick (a random model with SmolLM2's tokenizer, 1 and 4 streams): the
    benchmark exits 0 only if every stream's tokens equal its sequential run."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[2] / "bench" / "serve_load.py"),
                           "--quick", "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads((tmp_path / "report.json").read_text())["rows"]
    assert [r["streams"] for r in rows] == [1, 4] and all(r["equal_to_alone"] for r in rows)
    assert all(r["tokens_per_s"] > 0 and r["transformers_tokens_per_s"] > 0 for r in rows)
    # `transformers serve` (continuous batching) ran beside it on the same streams.
    assert all(r["transformers_serve_tokens_per_s"] > 0 for r in rows)
    # The server's step phases (logitfuse_step_phase_seconds_total) are parts of its steps: each
    # timed inside one, so together they never exceed the steps' own time.
    for r in rows:
        ms = r["step_ms"]
        assert ms["decode_layers"] > 0 and ms["decode_head"] > 0 and ms["emit"] > 0 and ms["sample"] >= 0, ms
        parts = sum(v for p, v in ms.items() if p != "step")
        assert parts <= ms["step"] * (1 + 1e-6), ms


def test_the_head_cache_benchmark_runs():
    """bench/head_cache.py on a small head: a row per path and row count, a time per sweep size."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[2] / "bench" / "head_cache.py"),
                           "--vocab", "1000", "--hidden", "64", "--sweep-mb", "0,1", "--calls", "3"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [l.split("|")[1:-1] for l in proc.stdout.splitlines() if l.startswith("| ") and "---" not in l][1:]
    # The head called at once takes time; after a sweep, the difference of two medians is a number
    # (on a head this small it may even come out below zero).
    assert len(rows) >= 2 and all(float(r[2]) > 0 and np.isfinite(float(r[3])) for r in rows), proc.stdout


def distill_recipe(paths, out, cache):
    root = Path(paths["root"])
    path = Path(out).with_suffix(".yaml")
    cache_key = f", logits_cache: {cache}" if cache else ""
    path.write_text(f"""
run: {{name: r, output_dir: {out}, seed: 5, device: cpu}}
student: {{path: {paths['base']}, dtype: fp32, chat_template: plain}}
teachers:
  - {{name: big, path: {paths['large']}, dtype: fp32, chat_template: plain{cache_key}}}
data: {{train: {root}/secret_train.jsonl, max_length: 32, max_prompt_length: 24}}
loss: {{distill_weight: 0.5, token: {{type: kl, top_k: 8, temperature: 1.0}}, graph: {{type: gld, top_k: 8, temperature: 1.0}}}}
train: {{micro_batch_size: 4, grad_accum: 2, lr: 3.0e-3, precision: fp32, max_steps: 6, schedule: constant}}
checkpoint: {{every_steps: 0}}
log: {{every_steps: 1}}
""")
    return path


def test_a_teacher_on_a_server_trains_like_one_run_here_through_a_cache_or_live(paths, logitfuse, tmp_path):
    direct = distill_recipe(paths, tmp_path / "direct", tmp_path / "cache_direct")
    logitfuse("cache-logits", direct)
    logitfuse("train", direct)
    served = distill_recipe(paths, tmp_path / "served", tmp_path / "cache_served")
    with serving(BINARY, config(paths, "teacher", "plain")) as server:
        over = [f"teachers.0.server.url={server.url}", "teachers.0.server.model=tiny", "teachers.0.server.concurrency=3"]
        logitfuse("cache-logits", served, *over)
        logitfuse("train", served, *over)
        # Another served model name: refused by the server (404), named in one line, exit 1, no cache.
        bad = distill_recipe(paths, tmp_path / "bad", tmp_path / "cache_bad")
        proc = logitfuse("cache-logits", bad, f"teachers.0.server.url={server.url}", "teachers.0.server.model=other",
                         expect=1)
        assert server.url in proc.stderr and "404" in proc.stderr and not (tmp_path / "cache_bad").exists()
        # No cache: `train` asks the server at every step (placement server), the same numbers as the
        # cache read through it, so the same weights bit for bit.
        live = distill_recipe(paths, tmp_path / "live", None)
        proc = logitfuse("train", live, *over)
        assert "reading top-k logprobs at every step from " + server.url in proc.stderr
        # A model the server does not serve: refused at start-up, naming the URL and what it serves.
        proc = logitfuse("train", live, over[0], "teachers.0.server.model=other", "run.output_dir=" + str(tmp_path / "x"),
                         expect=1)
        assert server.url in proc.stderr and "'other'" in proc.stderr and "'tiny'" in proc.stderr
        assert not (tmp_path / "x" / "final").exists()
    # Same top-k ids; probabilities exp(logprob) against softmax, equal to float32 rounding; six steps
    # of Adam at lr 3e-3 on that keep the weights within 1e-4 and the losses within 1e-5 relative.
    a, b, c = (load_file(str(tmp_path / d / "final" / "model.safetensors")) for d in ("direct", "served", "live"))
    assert b.keys() == c.keys() and all(np.array_equal(b[k], c[k]) for k in b)
    assert a.keys() == b.keys()
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-4
    la = [json.loads(l) for l in (tmp_path / "direct" / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    lb = [json.loads(l) for l in (tmp_path / "served" / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert len(la) == len(lb) == 6
    for x, y in zip(la, lb):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
    # The server gone: the URL is named after the retries, exit 1, nothing half-written.
    proc = logitfuse("cache-logits", served, f"teachers.0.server.url={server.url}", "teachers.0.server.model=tiny",
                     "teachers.0.server.retries=1", f"teachers.0.logits_cache={tmp_path}/cache_down", expect=1)
    assert server.url in proc.stderr and "is the server up" in proc.stderr
    assert not (tmp_path / "cache_down").exists()
    # A temperature the server cannot give is refused before any request.
    proc = logitfuse("cache-logits", served, *over[:2], "loss.token.temperature=2.0", expect=2)
    assert "temperature 1 only" in proc.stderr
    # A served teacher the recipe would also run here, or ask on-policy: refused, naming the key.
    proc = logitfuse("train", live, *over[:2], "teachers.0.placement=replicate", expect=2)
    assert "teachers.0.placement" in proc.stderr and "server is set" in proc.stderr
    proc = logitfuse("train", live, *over[:2], "loss.on_policy.weight=0.5", expect=2)
    assert "loss.on_policy.weight" in proc.stderr and "on a server" in proc.stderr
    proc = logitfuse("train", direct, "teachers.0.placement=server", expect=2)
    assert "teachers.0.placement" in proc.stderr and "teachers.0.server, which is not set" in proc.stderr
    # A server that lists the model but fails every scoring request: the step's requests, asked in
    # the background, fail the run naming the URL, and nothing final is written.
    with failing_server() as url:
        proc = logitfuse("train", live, f"teachers.0.server.url={url}", "teachers.0.server.model=tiny",
                         "teachers.0.server.retries=1", "run.output_dir=" + str(tmp_path / "failing"), expect=1)
        assert url in proc.stderr and "500" in proc.stderr, proc.stderr[-2000:]
        assert not (tmp_path / "failing" / "final").exists()


@contextlib.contextmanager
def failing_server():
    """Lists the model "tiny" at /v1/models and answers every POST with 500."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.reply(200, {"object": "list", "data": [{"id": "tiny", "object": "model"}]})

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.reply(500, {"error": {"message": "broken on purpose", "type": "server_error"}})

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
