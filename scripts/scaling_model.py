#!/usr/bin/env python3
"""The paper scaling model of docs/scaling.md: memory per GPU, communication per step, and expected
data-parallel efficiency of fusion training on H100 nodes. A model, not a measurement; every constant
is an assumption stated below and in the doc. `python3 scripts/scaling_model.py` prints the tables."""

GB = 1e9
GPUS_PER_NODE = 8
NVLINK_BUSBW = 450 * GB   # NCCL bus bandwidth inside an H100 SXM node
NODE_LINK = 50 * GB       # 400 Gb/s between nodes, per node
PEAK = 989e12             # H100 SXM dense bf16 FLOP/s
MFU = 0.40
TOKENS = 512 * 2048       # global tokens per optimizer step (fixed: strong scaling)
MICRO_BATCHES = 1         # per rank per step (ZeRO-3 gathers parameters once per micro-batch)

CASES = [("7B student, 14B teacher", 7e9, 14e9), ("14B student, 24B teacher", 14e9, 24e9)]
NODES = [1, 2, 4, 8]


def memory_gb(stage, params, teacher, n):
    """bf16 params (2) + bf16 grads (2) + fp32 AdamW (master 4, m 4, v 4 = 12), per ZeRO stage."""
    p, g, o = 2 * params, 2 * params, 12 * params
    if stage >= 1:
        o /= n
    if stage >= 2:
        g /= n
    if stage >= 3:
        p /= n
    return (p + g + o) / GB, 2 * teacher / GB


def collective_seconds(kind, nbytes, nodes, hierarchical):
    """Ring all-reduce ("ar") moves 2(N-1)/N of the bytes over each link, reduce-scatter and
    all-gather ("rs", "ag") (N-1)/N. Flat ring: one ring over all GPUs, limited by the node link.
    Hierarchical: the collective inside each node on NVLink, the node-to-node part on the shards."""
    factor = 2 if kind == "ar" else 1
    n = nodes * GPUS_PER_NODE
    intra = factor * (GPUS_PER_NODE - 1) / GPUS_PER_NODE * nbytes / NVLINK_BUSBW
    if nodes == 1:
        return intra
    if not hierarchical:
        return factor * (n - 1) / n * nbytes / NODE_LINK
    return intra + factor * (nodes - 1) / nodes * nbytes / NODE_LINK


def step_collectives(stage, params, k=MICRO_BATCHES):
    """(kind, bytes) per step; bf16 gradients and parameters on the wire."""
    g = p = 2 * params
    return {0: [("ar", g)],
            1: [("ar", g), ("ag", p)],          # as logitfuse builds it; the ZeRO paper's ZeRO-1 = ZeRO-2
            2: [("rs", g), ("ag", p)],
            3: [("ag", p)] * (2 * k) + [("rs", g)]}[stage]


def wire_gb_per_gpu(stage, params, n):
    total = 0.0
    for kind, nbytes in step_collectives(stage, params):
        total += (2 if kind == "ar" else 1) * (n - 1) / n * nbytes
    return total / GB


def main():
    for name, params, teacher in CASES:
        print(f"\n## {name}: memory per GPU, GB (student states + teacher bf16 {2 * teacher / GB:.0f} GB)")
        print("| GPUs | DDP | ZeRO-1 | ZeRO-2 | ZeRO-3 |")
        print("| --- | --- | --- | --- | --- |")
        for nodes in NODES:
            n = nodes * GPUS_PER_NODE
            cells = []
            for stage in range(4):
                s, t = memory_gb(stage, params, teacher, n)
                cells.append(f"{s:.1f} + {t:.0f} = {s + t:.1f}")
            print(f"| {n} | " + " | ".join(cells) + " |")

        flops = (6 * params + 2 * teacher) * TOKENS
        print(f"\n## {name}: one step of {TOKENS:,} tokens = {flops:.3g} FLOP "
              f"(6·N_s·T + 2·N_t·T) at {MFU:.0%} MFU of {PEAK / 1e12:.0f} TFLOP/s")
        print("| nodes | GPUs | compute s | backward s | stage | wire GB/GPU | comm s flat | comm s hier. "
              "| efficiency no overlap (hier.) | efficiency overlapped (hier.) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for nodes in NODES:
            n = nodes * GPUS_PER_NODE
            compute = flops / (n * PEAK * MFU)
            backward = 4 * params * TOKENS / (n * PEAK * MFU)  # the student's backward: the overlap window
            for stage in range(4):
                flat = sum(collective_seconds(k, b, nodes, False) for k, b in step_collectives(stage, params))
                hier = sum(collective_seconds(k, b, nodes, True) for k, b in step_collectives(stage, params))
                plain = compute / (compute + hier)
                # Gradient collectives hide behind the backward pass; ZeRO-3's forward gathers behind the
                # forward pass (prefetch); ZeRO-1/2's parameter all-gather after the step does not hide.
                exposed = hier
                if stage in (0, 2):
                    grad = collective_seconds(step_collectives(stage, params)[0][0], 2 * params, nodes, True)
                    exposed = max(0.0, grad - backward) + (hier - grad)
                elif stage == 1:
                    grad = collective_seconds("ar", 2 * params, nodes, True)
                    exposed = max(0.0, grad - backward) + (hier - grad)
                elif stage == 3:
                    exposed = max(0.0, hier - (compute - backward) - backward)
                overlapped = compute / (compute + exposed)
                print(f"| {nodes} | {n} | {compute:.2f} | {backward:.2f} | {['DDP', 'ZeRO-1', 'ZeRO-2', 'ZeRO-3'][stage]} "
                      f"| {wire_gb_per_gpu(stage, params, n):.1f} | {flat:.3f} | {hier:.3f} | {plain:.1%} | {overlapped:.1%} |")


if __name__ == "__main__":
    main()
