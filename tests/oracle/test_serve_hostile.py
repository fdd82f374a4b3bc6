"""`logitfuse serve` under hostile and unusual traffic, bounded and on localhost only: bodies nested a
million levels deep and bodies past the size limit on every endpoint, 200 clients that send their
headers a line at a time, pipelined and HTTP/1.0 requests, and the resident memory after a storm of
requests. Plus OpenAI's completions semantics that lm-eval relies on (batched prompts, echo with
logprobs) and vLLM's tokenizer endpoints, checked against `transformers` and `tokenizers`."""
import concurrent.futures as cf
import json
import math
import socket
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from tokenizers import Tokenizer

import dlf_workspace as ws
from conftest import BINARY
import serve_client


@pytest.fixture(scope="module")
def paths(tmp_path_factory, logitfuse):
    return ws.build(tmp_path_factory.mktemp("hostile"), logitfuse, steps=20)


def config(paths):
    path = Path(paths["root"]) / "plain.yaml"
    path.write_text(f"model: {{path: {paths['large']}, dtype: fp32, device: cpu}}\n"
                    "generation: {max_new_tokens: 6, batch_size: 16, chat_template: plain}\n")
    return path


def address(server):
    host, port = server.url.split("//")[1].split(":")
    return host, int(port)


def raw(server, data, timeout=30):
    """Sends bytes on a fresh connection and returns everything the server answers until it closes
    (the requests say Connection: close; the client does not half-close, which a server reads as a
    client gone away)."""
    s = socket.create_connection(address(server), timeout=timeout)
    try:
        s.sendall(data)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        return got
    finally:
        s.close()


def request(method, path, body=b"", headers=""):
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def status_of(answer):
    return int(answer.split(b" ", 2)[1])


def post(server, path, body, timeout=60):
    """(status, JSON) of one request over a plain socket (Connection: close)."""
    data = json.dumps(body).encode() if not isinstance(body, bytes) else body
    answer = raw(server, request("POST", path, data, "Connection: close\r\n"), timeout)
    head, _, payload = answer.partition(b"\r\n\r\n")
    return status_of(head), json.loads(payload)


def healthy(server):
    return status_of(raw(server, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == 200


ENDPOINTS = ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"]


def test_deep_and_oversized_bodies_are_refused_and_the_server_stays_up(paths):
    with serve_client.serving(BINARY, config(paths), "serve.model_name=tiny", "serve.max_body_bytes=3000000") as server:
        for depth in (100, 200_000, 1_000_000):
            for endpoint in ENDPOINTS:
                body = b'{"prompt": ' + b"[" * depth + b"]" * depth + b"}"
                code, answer = post(server, endpoint, body)
                assert code == 400 and "levels deep" in answer["error"]["message"], (depth, endpoint, answer)
            assert healthy(server)
        # Objects nest too, and brackets inside strings do not count.
        code, _ = post(server, "/v1/completions", b'{"a":' * 70_000 + b"1" + b"}" * 70_000)
        assert code == 400
        code, answer = post(server, "/tokenize", {"prompt": "[" * 1000})
        assert code == 200 and answer["count"] > 0
        # Past the size limit: 413 before the body is read, on every endpoint.
        big = b'{"prompt": "' + b"a" * 3_500_000 + b'"}'
        for endpoint in ENDPOINTS:
            code, answer = post(server, endpoint, big)
            assert code == 413 and answer["error"]["code"] == 413, endpoint
        # A head past 64 KiB: 431. Garbage: 400. A chunked request body: 411.
        assert status_of(raw(server, b"GET /health HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n")) == 431
        assert status_of(raw(server, b"\x16\x03\x01 hello\r\n\r\n")) == 400
        assert status_of(raw(server, b"POST /tokenize HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")) == 411
        assert healthy(server)


def test_pipelined_and_http10_requests_are_answered_in_order(paths):
    with serve_client.serving(BINARY, config(paths), "serve.model_name=tiny") as server:
        one = json.dumps({"prompt": "Say apple twice:"}).encode()
        two = json.dumps({"prompt": "Say river twice:"}).encode()
        answer = raw(server, request("POST", "/tokenize", one) + request("POST", "/tokenize", two, "Connection: close\r\n"))
        bodies = [json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0]) for part in answer.split(b"HTTP/1.1 200 OK")[1:]]
        assert [b["count"] for b in bodies] == [len(b["tokens"]) for b in bodies] and len(bodies) == 2
        assert bodies[0]["tokens"] != bodies[1]["tokens"]
        answer = raw(server, b"GET /health HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer


def completion_seconds(server):
    start = time.monotonic()
    code, body = post(server, "/v1/completions", {"prompt": ws.secret_prompt("apple"), "max_tokens": 6})
    assert code == 200, body
    return time.monotonic() - start


def test_slow_header_clients_do_not_starve_real_requests(paths):
    """200 connections each send one header line every 2 s and never finish. Real requests keep their
    latency (within 2 s of it alone); each slow client gets 408 once serve.request_timeout has passed."""
    with serve_client.serving(BINARY, config(paths), "serve.model_name=tiny", "serve.request_timeout=5") as server:
        alone = statistics.median(completion_seconds(server) for _ in range(5))
        stop = threading.Event()
        socks, answers = [], []
        for _ in range(200):
            s = socket.create_connection(address(server), timeout=30)
            s.sendall(b"POST /v1/completions HTTP/1.1\r\n")
            socks.append(s)

        def drip():
            line = 0
            while not stop.wait(2.0):
                line += 1
                for s in socks:
                    try:
                        s.sendall(f"X-Slow-{line}: {'a' * 20}\r\n".encode())
                    except OSError:
                        pass

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        try:
            time.sleep(1.0)
            during = [completion_seconds(server) for _ in range(8)]
        finally:
            time.sleep(6.0)  # past the request time-out
            stop.set()
            dripper.join()
        for s in socks:
            s.settimeout(5)
            try:
                answers.append(s.recv(4096))
            except OSError:
                answers.append(b"")
            s.close()
        print(f"\nslow-header clients: a completion alone {alone:.3f} s, with 200 of them connected "
              f"{statistics.median(during):.3f} s median, {max(during):.3f} s at most")
        assert max(during) < alone + 2.0, (alone, during)
        timed_out = sum(a.startswith(b"HTTP/1.1 408") for a in answers)
        assert timed_out == 200, timed_out
        metrics = raw(server, b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n").decode()
        assert "logitfuse_request_timeouts_total 200" in metrics


def test_memory_returns_after_a_storm(paths):
    """A storm of 400 requests from 16 threads (batched echo scoring, generation, chat, tokenize, and
    malformed or deep bodies), after a warm-up of the same mix: the resident memory afterwards is within
    50 MB of its level before the storm."""
    ids = Tokenizer.from_file(str(Path(paths["root"]) / "tok" / "tokenizer.json")).encode(ws.secret_prompt("apple")).ids

    def one(i):
        kind = i % 5
        if kind == 0:
            return post(server, "/v1/completions", {"prompt": [ids] * 8, "max_tokens": 1, "echo": True, "logprobs": 1})[0]
        if kind == 1:
            return post(server, "/v1/completions", {"prompt": ws.secret_prompt(ws.WORDS[i % 16]), "max_tokens": 6})[0]
        if kind == 2:
            return post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Say river twice:"}]})[0]
        if kind == 3:
            return post(server, "/tokenize", {"prompt": "Say stone twice:" * 50})[0]
        return post(server, "/v1/completions", b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")[0]

    with serve_client.serving(BINARY, config(paths), "serve.model_name=tiny", "serve.max_queue=256") as server:
        with cf.ThreadPoolExecutor(16) as pool:
            assert set(pool.map(one, range(100))) <= {200, 400}
        time.sleep(1.0)
        before = server.rss_kib()
        with cf.ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(one, range(400)))
        assert codes.count(200) == 320 and codes.count(400) == 80, codes
        time.sleep(1.0)
        after = server.rss_kib()
        print(f"\nstorm: resident memory {before / 1024:.1f} MB before, {after / 1024:.1f} MB after")
        assert after - before < 50 * 1024, (before, after)


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_batched_prompts_and_echo_logprobs_in_openai_shape(paths, logitfuse, tmp_path):
    """A batch of token-id prompts with echo and logprobs: one choice per prompt in order, each with its
    prompt's tokens first (null logprob, then each token's logprob under `logits`), the generated token
    last, and usage summed; max_tokens 0 scores the prompt alone. The same prompts as strings and alone
    give the same numbers."""
    tok = Tokenizer.from_file(str(Path(paths["root"]) / "tok" / "tokenizer.json"))
    prompts = [ws.secret_prompt(w) for w in ("apple", "river", "stone")] + ["Say violet twice: violet"]
    ids = [tok.encode(p).ids for p in prompts]
    (tmp_path / "ids.jsonl").write_text("".join(json.dumps(i) + "\n" for i in ids))
    logitfuse("logits", "--model", paths["large"], "--input", tmp_path / "ids.jsonl", "--out", tmp_path / "l.safetensors")
    logits = load_file(str(tmp_path / "l.safetensors"))
    with serve_client.serving(BINARY, config(paths), "serve.model_name=tiny") as server:
        code, batch = post(server, "/v1/completions", {"model": "tiny", "prompt": ids, "max_tokens": 1, "echo": True,
                                                       "logprobs": 2, "temperature": 0})
        assert code == 200, batch
        assert [c["index"] for c in batch["choices"]] == list(range(len(ids)))
        assert batch["usage"]["prompt_tokens"] == sum(map(len, ids))
        # A generated end-of-sequence token is in the logprobs (lm-eval reads the last entry as the
        # generated token's) but not in the text nor the completion tokens.
        eos = tok.token_to_id("<|endoftext|>")
        greedy = [int(np.argmax(logits[f"logits.{k}"][len(i) - 1])) for k, i in enumerate(ids)]
        assert batch["usage"]["completion_tokens"] == sum(g != eos for g in greedy)
        assert eos in greedy and any(g != eos for g in greedy)  # both kinds are checked below
        for k, (choice, p, i) in enumerate(zip(batch["choices"], prompts, ids)):
            lp = log_softmax(logits[f"logits.{k}"])
            got = choice["logprobs"]
            assert len(got["tokens"]) == len(i) + 1 and choice["text"].startswith(p)
            assert got["token_logprobs"][0] is None and got["top_logprobs"][0] is None
            assert "".join(got["tokens"][:len(i)]) == p
            assert got["text_offset"][:len(i)] == [len("".join(got["tokens"][:t])) for t in range(len(i))]
            for t in range(1, len(i)):
                assert abs(got["token_logprobs"][t] - lp[t - 1, i[t]]) < 1e-4
                top = got["top_logprobs"][t]
                assert got["tokens"][t] in top and len(top) <= 3
                assert abs(max(top.values()) - lp[t - 1].max()) < 1e-4
            generated = int(np.argmax(lp[len(i) - 1]))
            assert got["tokens"][-1] == tok.decode([generated], skip_special_tokens=False)
            assert abs(got["token_logprobs"][-1] - lp[len(i) - 1, generated]) < 1e-4
        # As strings (tokenized by the server), one at a time, and scored only (max_tokens 0).
        code, strings = post(server, "/v1/completions", {"prompt": prompts, "max_tokens": 1, "echo": True, "logprobs": 2})
        assert code == 200 and [c["logprobs"]["tokens"] for c in strings["choices"]] == \
            [c["logprobs"]["tokens"] for c in batch["choices"]]
        for k, i in enumerate(ids):
            code, alone = post(server, "/v1/completions", {"prompt": i, "max_tokens": 0, "echo": True, "logprobs": 2})
            assert code == 200
            choice = alone["choices"][0]
            assert choice["text"] == prompts[k] and len(choice["logprobs"]["tokens"]) == len(i)
            assert np.allclose(np.array(choice["logprobs"]["token_logprobs"][1:]),
                               np.array(batch["choices"][k]["logprobs"]["token_logprobs"][1:len(i)]), atol=1e-4)
        # A batch of generations: each equals its prompt alone.
        code, gen = post(server, "/v1/completions", {"prompt": prompts, "max_tokens": 6, "temperature": 0})
        for k, p in enumerate(prompts):
            code, alone = post(server, "/v1/completions", {"prompt": p, "max_tokens": 6, "temperature": 0})
            assert gen["choices"][k]["text"] == alone["choices"][0]["text"]
        # Streaming a batch: every chunk names its prompt; each prompt's text equals the whole answer's.
        body = json.dumps({"prompt": prompts, "max_tokens": 6, "temperature": 0, "stream": True}).encode()
        answer = raw(server, request("POST", "/v1/completions", body, "Connection: close\r\n"))
        texts = ["" for _ in prompts]
        for line in answer.decode().split("\n"):
            if line.startswith("data: {"):
                c = json.loads(line[6:])["choices"][0]
                texts[c["index"]] += c["text"]
        assert texts == [c["text"] for c in gen["choices"]]


def test_tokenizer_endpoints_in_vllm_shape(paths):
    tok = Tokenizer.from_file(str(Path(paths["root"]) / "tok" / "tokenizer.json"))
    with serve_client.serving(BINARY, config(paths), "serve.model_name=tiny") as server:
        text = "Secret number of apple? Answer: 42<|endoftext|>"
        code, t = post(server, "/tokenize", {"model": "tiny", "prompt": text, "add_special_tokens": False,
                                             "return_token_strs": True})
        assert code == 200 and t["tokens"] == tok.encode(text, add_special_tokens=False).ids
        assert t["count"] == len(t["tokens"]) and t["max_model_len"] > 0
        assert t["token_strs"] == [tok.id_to_token(i) for i in t["tokens"]]
        code, d = post(server, "/detokenize", {"model": "tiny", "tokens": t["tokens"]})
        assert code == 200 and d["prompt"] == tok.decode(t["tokens"], skip_special_tokens=False)
        info = json.loads(raw(server, b"GET /tokenizer_info HTTP/1.1\r\nConnection: close\r\n\r\n").split(b"\r\n\r\n", 1)[1])
        assert info["eos_token"] == "<|endoftext|>" and info["bos_token"] is None
        for body, param in (({"tokens": [1, 10**9]}, "tokens"), ({"tokens": "x"}, "tokens")):
            code, answer = post(server, "/detokenize", body)
            assert code == 400 and answer["error"]["param"] == param
        code, answer = post(server, "/tokenize", {"prompt": 5})
        assert code == 400
        code, _ = post(server, "/tokenize", {"model": "other", "prompt": "x"})
        assert code == 404
