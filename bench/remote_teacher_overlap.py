"""How much of a served teacher's latency `train` hides (localhost only, bounded). The student is
SmolLM2-135M-Instruct; the teacher is a small random Llama with SmolLM2's tokenizer served by
`logitfuse serve` behind a proxy that holds every scoring request for --delay seconds, as a teacher
on another node (network, a busy vLLM) would. Three runs of the same recipe, same run:

- cache: the teacher's rows read from a logits cache made through the same server (no request
  during training: the floor);
- live: the teacher asked at every step (placement: server), a step's requests sent in the
  background one micro-batch after another while the student computes;
- the cost of asking without overlap, computed: the cache run's time plus every micro-batch's
  request time (the proxy's measured time per micro-batch of requests, summed).

The hidden share = 1 - (live - cache) / (sequential - cache). Every run must end with the same weights
(live against the cache made through the server: bit for bit).

    python bench/remote_teacher_overlap.py [--steps 6] [--grad-accum 4] [--delay 0.5]"""
import argparse
import contextlib
import http.client
import http.server
import json
import shutil
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_load  # noqa: E402
from serve_load import BINARY, SMOLLM2, serve_client  # noqa: E402


@contextlib.contextmanager
def delaying_proxy(target, delay):
    """Forwards to `target`; every POST is held `delay` seconds first. Yields (url, log of POST times)."""
    u = urlparse(target)
    posts = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def forward(self, body=None):
            start = time.perf_counter()
            if body is not None:
                time.sleep(delay)
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
            conn.request(self.command, self.path, body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            conn.close()
            if body is not None:
                posts.append((start, time.perf_counter()))
            self.send_response(r.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.forward()

        def do_POST(self):
            self.forward(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", posts
    finally:
        server.shutdown()


def write_data(path, n):
    rows = [{"prompt": p, "response": " Once upon a time, " + " ".join(serve_load.WORDS[(i + j) % len(serve_load.WORDS)]
                                                                      for j in range(40))}
            for i, p in enumerate(serve_load.prompts(n))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def recipe(work, name, teacher, args, cache=None):
    path = work / f"{name}.yaml"
    cache_key = f", logits_cache: {cache}" if cache else ""
    path.write_text(f"""run: {{name: {name}, output_dir: {work / name}, seed: 3, device: cpu}}
student: {{path: {SMOLLM2}, dtype: fp32, chat_template: plain}}
teachers:
  - {{name: t, path: {teacher}, dtype: fp32, chat_template: plain{cache_key}}}
data: {{train: {work / 'train.jsonl'}, max_length: {args.max_length}, max_prompt_length: 48}}
loss: {{distill_weight: 0.5, token: {{type: kl, top_k: 16, temperature: 1.0}}, graph: {{type: none}}}}
train: {{micro_batch_size: {args.micro}, grad_accum: {args.grad_accum}, lr: 1.0e-5, precision: fp32,
         max_steps: {args.steps}, schedule: constant}}
checkpoint: {{every_steps: 0}}
log: {{every_steps: 1}}
""")
    return path


def run(*args):
    start = time.perf_counter()
    proc = serve_client.subprocess.run([str(BINARY), *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"logitfuse {' '.join(map(str, args[:2]))} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--grad-accum", type=int, default=4)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--delay", type=float, default=0.5, help="seconds each scoring request is held")
    ap.add_argument("--out", default=str(serve_load.ROOT / "runs" / "remote-overlap"))
    args = ap.parse_args()
    work = Path(args.out)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    teacher = serve_load.small_model(work / "teacher")
    write_data(work / "train.jsonl", args.steps * args.grad_accum * args.micro)
    served = work / "teacher.yaml"
    served.write_text(f"model: {{path: {teacher}, dtype: fp32, device: cpu}}\ngeneration: {{chat_template: plain}}\n")
    with serve_client.serving(BINARY, served, "serve.model_name=t") as server, \
            delaying_proxy(server.url, args.delay) as (url, posts):
        over = [f"teachers.0.server.url={url}", "teachers.0.server.model=t", f"teachers.0.server.concurrency={args.micro}"]
        cached = recipe(work, "cache", teacher, args, cache=work / "teacher-cache")
        run("cache-logits", cached, *over)
        cache_s = run("train", cached, *over)
        posts.clear()
        live_s = run("train", recipe(work, "live", teacher, args), *over)
        # Requests go out one micro-batch at a time (`micro` in flight): a micro-batch's request time
        # is from its first request's start to its last one's end.
        spans = sorted(posts)
        per_micro = [spans[i:i + args.micro] for i in range(0, len(spans), args.micro)]
        request_s = sum(max(e for _, e in g) - min(s for s, _ in g) for g in per_micro)
    sequential_s = cache_s + request_s
    a, b = (load_file(str(work / d / "final" / "model.safetensors")) for d in ("cache", "live"))
    same = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    hidden = 1 - (live_s - cache_s) / (sequential_s - cache_s)
    report = {"settings": vars(args), "cache_s": cache_s, "live_s": live_s, "request_s": request_s,
              "sequential_s": sequential_s, "hidden_share": hidden, "same_weights": same, "requests": len(posts)}
    (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print("| train from a cache s | live s | requests' time s | without overlap s (cache + requests) | hidden | same weights |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| {cache_s:.1f} | {live_s:.1f} | {request_s:.1f} | {sequential_s:.1f} | {100 * hidden:.0f} % | {'yes' if same else 'NO'} |")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
