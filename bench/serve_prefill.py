"""What chunked prefill buys the running streams (localhost only, bounded): `streams` streams decode
on SmolLM2-135M-Instruct (or the load bench's small model) while one request with a long prompt
joins. Measured per setting of serve.prefill_tokens, in the same run on the same server binary:
the running streams' longest gap between two tokens while the long prompt joins (what a user of a
running stream sees), their p50 gap, the long request's time to first token, and whether every
stream's tokens equal its run alone. 0 is the whole prompt in one step (no chunking). With
`--joiner score` the long prompt is a teacher's request instead (prompt logprobs, top 5, no
completion: what `cache-logits` asks of a server), scored in the same pieces, and its column is the
time to its whole answer.

    python bench/serve_prefill.py [--model smollm2|small] [--settings 0,512,128] [--prompt-tokens 1500]
                                  [--joiner completion|score]

Writes runs/serve-prefill/report.json and prints a markdown table."""
import argparse
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_load  # noqa: E402
from serve_load import BINARY, SMOLLM2, alone, pct, prompts, serve_client, stream_many  # noqa: E402


def long_prompt(tokens):
    """About `tokens` tokens of plain English (SmolLM2's tokenizer reads ~1 token per word here)."""
    words = (serve_load.WORDS * (tokens // len(serve_load.WORDS) + 1))[:tokens]
    return " ".join(words)


def score(url, text):
    """A teacher's request: the top-5 logprobs at every prompt position, nothing generated."""
    body = json.dumps({"model": "m", "prompt": text, "max_tokens": 0, "echo": True, "prompt_logprobs": 5}).encode()
    request = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as r:
        return json.loads(r.read())


def run_setting(model_dir, work, setting, args):
    cfg = work / "model.yaml"
    cfg.write_text(f"model: {{path: {model_dir}, dtype: fp32, device: cpu}}\n"
                   f"generation: {{max_new_tokens: {args.tokens}, chat_template: plain}}\n")
    texts = prompts(args.streams)
    joiner = long_prompt(args.prompt_tokens)
    with serve_client.serving(BINARY, cfg, "serve.model_name=m", f"serve.max_batch={args.streams + 1}",
                              f"serve.prefill_tokens={setting}", f"serve.max_context={args.prompt_tokens + 256}") as server:
        alone(server.url, texts[0], 4)  # warm-up
        reference = {p: alone(server.url, p, args.tokens) for p in texts}
        joined = {}

        def join():
            # Once the streams are decoding.
            time.sleep(args.join_after)
            if args.joiner == "score":
                start = time.perf_counter()
                scored = score(server.url, joiner)
                joined["ttft"] = time.perf_counter() - start
                assert len(scored["choices"][0]["prompt_logprobs"]) >= args.prompt_tokens // 2, "the prompt was not scored"
            else:
                [(_, ttft, _)], _ = stream_many(server.url, [joiner], 4)
                joined["ttft"] = ttft

        # The running streams are read by one thread (serve_load.stream_many), the joiner by another.
        thread = threading.Thread(target=join)
        thread.start()
        results, _ = stream_many(server.url, texts, args.tokens)
        thread.join()
    gaps = [g for *_, gs in results for g in gs]
    return {"prefill_tokens": setting, "max_gap_s": max(gaps), "p50_gap_s": pct(gaps, 0.5),
            "long_ttft_s": joined["ttft"],
            "equal_to_alone": all(ids == reference[p] for (ids, _, _), p in zip(results, texts))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "small"])
    ap.add_argument("--settings", default="0,512,128")
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=1500)
    ap.add_argument("--joiner", default="completion", choices=["completion", "score"],
                    help="the long prompt: a streamed completion, or a teacher's prompt-logprobs request")
    ap.add_argument("--join-after", type=float, default=1.0, help="seconds after the streams start")
    ap.add_argument("--out", default=str(serve_load.ROOT / "runs" / "serve-prefill"))
    args = ap.parse_args()
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = SMOLLM2 if args.model == "smollm2" else serve_load.small_model(work / "small")
    rows = [run_setting(model_dir, work, int(s), args) for s in args.settings.split(",")]
    whole = rows[0]
    last = "long prompt TTFT s" if args.joiner == "completion" else "long prompt scored in s"
    lines = [f"| prefill_tokens | running streams' longest gap s | × vs whole | p50 gap ms | {last} | tokens = alone |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['prefill_tokens'] or 'whole'} | {r['max_gap_s']:.3f} | {whole['max_gap_s'] / r['max_gap_s']:.2f} | "
                     f"{1000 * r['p50_gap_s']:.1f} | {r['long_ttft_s']:.2f} | {'yes' if r['equal_to_alone'] else 'NO'} |")
    (work / "report.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
