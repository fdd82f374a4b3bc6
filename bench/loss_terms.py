"""Time and peak memory of the distillation terms (forward + backward) against plain cross entropy
on the same logits, each term in its own process, as ratios from one run.

    python bench/loss_terms.py [--rows 1024 --vocab 32000 --k 10 --device cpu]

Peak memory is the process's peak RSS on CPU (minus a run that only allocates the logits), and
the CUDA allocator's peak on a GPU.
"""
import argparse
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TERMS = ["ce", "gld", "uld_topk", "uld", "ce_gld_uld_topk"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--binary", default=str(ROOT / "build" / "bin" / "logitfuse"))
    args = parser.parse_args()

    results = {}
    for term in ["none"] + TERMS:
        cmd = [args.binary, "--log-level", "warn", "bench", "loss", "--term", term, "--rows", str(args.rows),
               "--vocab", str(args.vocab), "--k", str(args.k), "--iters", str(args.iters), "--device", args.device,
               "--dtype", args.dtype]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            raise SystemExit(f"{' '.join(cmd)} failed")
        results[term] = (json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss * 1024)

    base_rss = results["none"][1]
    ce_ms, ce_mem = results["ce"][0]["ms"], results["ce"][1] - base_rss
    print(f"logits [{args.rows}, {args.vocab}] {args.dtype} on {args.device}, k={args.k}, forward+backward, "
          f"{results['ce'][0]['threads']} thread(s)")
    print(f"{'term':<18}{'ms':>10}{'x CE time':>11}{'extra MiB':>11}{'x CE mem':>10}")
    for term in TERMS:
        r, rss = results[term]
        mem = rss - base_rss
        print(f"{term:<18}{r['ms']:>10.2f}{r['ms'] / ce_ms:>11.2f}{mem / 2**20:>11.1f}{mem / max(ce_mem, 1):>10.2f}")


if __name__ == "__main__":
    main()
