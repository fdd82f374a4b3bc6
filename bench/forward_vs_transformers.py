"""CPU forward throughput of logitfuse against the same model in transformers, measured in one run.

    python bench/forward_vs_transformers.py [--batch 4 --seq 128 --iters 10 --threads 2]

Builds a ~10M-parameter Llama with transformers, saves it, and times both implementations on the
same shapes with the same thread count, in two regimes:
  prefill  whole sequences [batch, seq] at once (GEMM-bound: both run the same LibTorch kernels)
  decode   a prompt of `seq` tokens, then `decode_steps` single-token steps through the KV cache
           (per-layer overhead matters: this is where having no Python between the layers shows)
It prints tokens/s of each and the ratio logitfuse / transformers.
"""
import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--decode-batch", type=int, default=1)
    parser.add_argument("--decode-steps", type=int, default=64)
    parser.add_argument("--binary", default=str(ROOT / "build" / "bin" / "logitfuse"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = AutoConfig.for_model("llama", vocab_size=8000, hidden_size=256, intermediate_size=688,
                                  num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    params = sum(p.numel() for p in model.parameters())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)

        def ours(mode, batch, iters):
            out = subprocess.run([args.binary, "--log-level", "warn", "bench", "forward", "--model", tmp,
                                  "--mode", mode, "--batch", str(batch), "--seq", str(args.seq),
                                  "--iters", str(iters), "--warmup", str(args.warmup),
                                  "--threads", str(args.threads)],
                                 check=True, capture_output=True, text=True).stdout
            return json.loads(out.strip().splitlines()[-1])["tokens_per_s"]

        rows.append(("prefill", args.batch, ours("prefill", args.batch, args.iters),
                     prefill_reference(model, config, args)))
        rows.append(("decode", args.decode_batch, ours("decode", args.decode_batch, args.decode_steps),
                     decode_reference(model, config, args)))

    print(f"model: llama, {params / 1e6:.1f}M parameters, prompt/sequence length {args.seq}, "
          f"{args.threads} thread(s), fp32, CPU")
    print(f"{'regime':<10}{'batch':>6}{'logitfuse tok/s':>18}{'transformers tok/s':>21}{'ratio':>8}")
    for mode, batch, a, b in rows:
        print(f"{mode:<10}{batch:>6}{a:>18.0f}{b:>21.0f}{a / b:>7.2f}x")


def prefill_reference(model, config, args):
    ids = torch.randint(config.vocab_size, (args.batch, args.seq))
    with torch.inference_mode():
        for _ in range(args.warmup):
            model(ids)
        start = time.perf_counter()
        for _ in range(args.iters):
            model(ids)
        seconds = time.perf_counter() - start
    return args.batch * args.seq * args.iters / seconds


def decode_reference(model, config, args):
    ids = torch.randint(config.vocab_size, (args.decode_batch, args.seq))
    seconds = 0.0
    with torch.inference_mode():
        for _ in range(args.warmup + 1):  # the last round is the timed one
            out = model(ids, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            start = time.perf_counter()
            for _ in range(args.decode_steps):
                out = model(token, past_key_values=cache, use_cache=True)
                cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            seconds = time.perf_counter() - start
    return args.decode_batch * args.decode_steps / seconds


if __name__ == "__main__":
    main()
