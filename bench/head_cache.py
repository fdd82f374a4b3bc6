"""How much an LM head's time depends on what the caches still hold of its weight.

Inside `serve` the small model's head (49,152 x 256, fp32, 50 MB) takes 1.6x its time alone at 16 rows
(bench/serve_load.py's phase table): between two of its calls the layers, caches and logits go
through the caches. This times the head the way serve runs it (oneDNN's blocked weight, as
CausalLM::pack_head_for_decoding packs it; and the plain `linear` beside it) called again at once,
and after other memory of a given size was written, which stands in for the rest of a step.

    python bench/head_cache.py [--vocab 49152] [--hidden 256] [--rows 1,16] [--sweep-mb 0,4,10,20,40]

Per cell: the median of --calls timed calls, with the sweep's own time (measured alone) taken off.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import head_paths  # noqa: E402


def median_ms(fn, calls):
    for _ in range(3):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return 1000 * times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--rows", default="1,16")
    ap.add_argument("--sweep-mb", default="0,4,10,20,40", help="memory written between two head calls, MB")
    ap.add_argument("--calls", type=int, default=60)
    a = ap.parse_args()
    torch.manual_seed(0)
    head = torch.randn(a.vocab, a.hidden) * 0.02
    served, plain = head_paths(head)
    paths = {"plain": plain} if served is plain else {"blocked (serve)": served, "plain": plain}
    sweeps = [int(s) for s in a.sweep_mb.split(",")]
    print(f"head {a.vocab} x {a.hidden} fp32 ({head.numel() * 4 / 2**20:.0f} MiB), {torch.get_num_threads()} threads, "
          f"median of {a.calls} calls, ms\n")
    print("| path | rows | " + " | ".join("at once" if mb == 0 else f"after {mb} MB" for mb in sweeps) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in sweeps) + " |")
    with torch.inference_mode():
        for name, head_fn in paths.items():
            for rows in (int(r) for r in a.rows.split(",")):
                x = torch.randn(rows, a.hidden)
                cells = []
                for mb in sweeps:
                    if mb == 0:
                        cells.append(median_ms(lambda: head_fn(x), a.calls))
                        continue
                    other = torch.empty(mb * 2**20 // 4)
                    sweep = lambda: other.fill_(1.0)  # noqa: E731
                    alone = median_ms(sweep, a.calls)
                    cells.append(median_ms(lambda: (sweep(), head_fn(x)), a.calls) - alone)
                print(f"| {name} | {rows} | " + " | ".join(f"{c:.3f}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
