"""`logitfuse merge` (task arithmetic, method.md §4b) against a NumPy reference on the safetensors
files, bit for bit in float32; the base's shard layout kept; error cases exit 2 naming the tensor
and leave nothing behind; the merged model loads in transformers."""
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file


def tensors_of(model_dir):
    index = model_dir / "model.safetensors.index.json"
    if not index.exists():
        return load_file(str(model_dir / "model.safetensors"))
    out = {}
    for f in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        out.update(load_file(str(model_dir / f)))
    return out


def write_model(src, dst, tensors, shards):
    """A copy of model directory `src` holding `tensors`, in one file or in `shards` files with an index."""
    shutil.copytree(src, dst)
    (dst / "model.safetensors").unlink()
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(dst / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.fixture(scope="module")
def models(tmp_path_factory, logitfuse):
    root = tmp_path_factory.mktemp("merge")
    logitfuse("init-model", "--arch", "qwen2", "--out", root / "init", "--vocab-size", 64, "--hidden", 32,
                     "--layers", 2, "--heads", 4, "--kv-heads", 2, "--intermediate", 48, "--seed", 3)
    base = load_file(str(root / "init" / "model.safetensors"))
    rng = np.random.default_rng(0)
    write_model(root / "init", root / "base", base, shards=2)
    experts = []
    for i, shards in enumerate([2, 1]):  # the experts' layouts need not be the base's
        tuned = {n: (t + rng.normal(0, 0.02, t.shape)).astype(t.dtype) for n, t in base.items()}
        write_model(root / "init", root / f"expert{i}", tuned, shards=shards)
        experts.append(tuned)
    return root, base, experts


def test_merge_is_task_arithmetic_bit_for_bit_and_keeps_the_layout(models, logitfuse, tmp_path):
    root, base, experts = models
    weights = [0.5, 0.3]
    logitfuse("merge", "--base", root / "base", "--expert", root / "expert0", "--expert", root / "expert1",
              "--weight", weights[0], "--weight", weights[1], "--out", tmp_path / "merged")
    merged = tensors_of(tmp_path / "merged")
    assert sorted(merged) == sorted(base)
    for name, b in base.items():
        want = b.astype(np.float32).copy()
        for w, e in zip(weights, experts):
            want = want + (e[name].astype(np.float32) - b.astype(np.float32)) * np.float32(w)
        assert merged[name].dtype == b.dtype
        assert np.array_equal(merged[name], want.astype(b.dtype)), name
    # The base's two shards and its index, its config and tokenizer-side files.
    assert (tmp_path / "merged" / "model.safetensors.index.json").read_text() == \
        (root / "base" / "model.safetensors.index.json").read_text()
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == sorted(p.name for p in (root / "base").iterdir())
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(tmp_path / "merged")


def test_merge_with_one_expert_and_weight_one_is_the_expert(models, logitfuse, tmp_path):
    root, base, experts = models
    logitfuse("merge", "--base", root / "base", "--expert", root / "expert1", "--out", tmp_path / "m")
    merged = tensors_of(tmp_path / "m")
    for name in base:  # b + (e - b) in float32: the expert up to one rounding
        assert np.allclose(merged[name], experts[1][name], rtol=0, atol=1e-6), name


def test_merge_errors_name_the_tensor_and_leave_nothing(models, logitfuse, tmp_path):
    root, base, experts = models
    name = sorted(base)[3]
    broken = {
        "missing": {n: t for n, t in experts[1].items() if n != name},
        "shape": {**experts[1], name: np.zeros((3, 3), dtype=np.float32)},
        "dtype": {**experts[1], name: experts[1][name].astype(np.float16)},
    }
    for kind, tensors in broken.items():
        write_model(root / "init", tmp_path / kind, tensors, shards=1)
        proc = logitfuse("merge", "--base", root / "base", "--expert", tmp_path / kind, "--out", tmp_path / f"out-{kind}",
                         expect=2)
        assert name in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not (tmp_path / f"out-{kind}").exists()
        assert not list(tmp_path.glob(f"out-{kind}.tmp*"))
    proc = logitfuse("merge", "--base", root / "base", "--expert", root / "expert0", "--weight", 1, "--weight", 2,
                     "--out", tmp_path / "w", expect=2)
    assert "weight" in proc.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    logitfuse("merge", "--base", root / "base", "--expert", root / "expert0", "--out", tmp_path / "full", expect=2)
    assert (tmp_path / "full" / "x").read_text() == "keep"


def test_merge_onto_a_full_disk_names_the_file_and_leaves_nothing(models, logitfuse, tmp_path):
    # The output on a file system smaller than the merged model: a one-line error naming the file
    # and the bytes it still had to write, no merged directory and no staging left, and what was
    # already on that disk untouched; with room, the same command then succeeds.
    from conftest import small_filesystem
    root, base, experts = models
    size = sum(t.nbytes for t in base.values())
    with small_filesystem(tmp_path / "disk", size // 2048) as disk:
        (disk / "earlier").write_text("keep")
        proc = logitfuse("merge", "--base", root / "base", "--expert", root / "expert0", "--out", disk / "merged",
                         expect=1)
        lines = proc.stderr.strip().splitlines()
        assert "No space left on device" in lines[-1] and "more bytes of this file to write" in lines[-1], proc.stderr
        assert str(disk) in lines[-1]
        assert sorted(p.name for p in disk.iterdir()) == ["earlier"]
        assert (disk / "earlier").read_text() == "keep"
    logitfuse("merge", "--base", root / "base", "--expert", root / "expert0", "--out", tmp_path / "roomy")
    assert sorted(tensors_of(tmp_path / "roomy")) == sorted(base)


def fnv1a64(text):
    h = 0xcbf29ce484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001b3) % 2**64
    return h


def merge_reference(base, experts, weights, method, density, seed=0):
    """TIES (trim by magnitude, elect the sign of the summed trimmed deltas, mean of the agreeing
    weighted ones) and DARE (keep with probability `density`, rescale by 1/density) in float32
    torch, with DARE's masks drawn as the command draws them: torch.bernoulli on a generator seeded
    from (seed, tensor name, expert)."""
    import torch
    out = {}
    for name, b in base.items():
        bm = torch.from_numpy(b.astype(np.float32))
        deltas = []
        for t, e in enumerate(experts):
            d = torch.from_numpy(e[name].astype(np.float32)) - bm
            if method == "ties":
                k = int(density * d.numel())
                mask = torch.zeros(d.numel())
                mask[torch.topk(d.abs().flatten(), k).indices] = 1
                d = d * mask.view_as(d)
            else:
                g = torch.Generator().manual_seed((fnv1a64(name) + 1000003 * t + seed) % 2**64 & (2**63 - 1))
                d = d * torch.bernoulli(torch.full_like(d, density), generator=g) / density
            deltas.append(d)
        if method == "dare":
            o = bm.clone()
            for w, d in zip(weights, deltas):
                o = o + d * w
        else:
            stacked = torch.stack(deltas)
            majority = torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
            agrees = (stacked.sign() == majority).float()
            w = torch.tensor(weights, dtype=torch.float32).view(-1, *[1] * (stacked.dim() - 1))
            o = bm.clone() + (stacked * w * agrees).sum(0) / agrees.sum(0).clamp_min(1.0)
        out[name] = o.numpy().astype(b.dtype)
    return out


@pytest.mark.parametrize("method,density", [("ties", 0.3), ("dare", 0.4), ("dare_ties", 0.5)])
def test_ties_and_dare_match_a_torch_reference_bit_for_bit(models, logitfuse, tmp_path, method, density):
    root, base, experts = models
    weights = [0.7, 0.4]
    logitfuse("merge", "--base", root / "base", "--expert", root / "expert0", "--expert", root / "expert1",
              "--weight", weights[0], "--weight", weights[1], "--method", method, "--density", density,
              "--seed", 5, "--out", tmp_path / "m")
    merged = tensors_of(tmp_path / "m")
    want = merge_reference(base, experts, weights, method, density, seed=5)
    assert sorted(merged) == sorted(base)
    for name in base:
        assert merged[name].dtype == base[name].dtype
        assert np.array_equal(merged[name], want[name]), (method, name)
    if method == "ties":  # each task vector trimmed: most entries agree with the base, not all
        changed = np.mean([np.mean(merged[n] != base[n]) for n in base])
        assert 0.3 < changed < 0.9, changed


def test_dare_draws_depend_on_the_seed_only(models, logitfuse, tmp_path):
    root, base, experts = models
    runs = {}
    for label, seed in (("a", 1), ("b", 1), ("c", 2)):
        logitfuse("merge", "--base", root / "base", "--expert", root / "expert0", "--method", "dare", "--density", 0.5,
                  "--seed", seed, "--out", tmp_path / label)
        runs[label] = tensors_of(tmp_path / label)
    name = max(base, key=lambda n: base[n].size)
    assert np.array_equal(runs["a"][name], runs["b"][name])
    assert not np.array_equal(runs["a"][name], runs["c"][name])
    # Every entry is the base or the base plus twice its delta (rescaled by 1/0.5), about half each.
    delta = experts[0][name].astype(np.float32) - base[name].astype(np.float32)
    kept = np.isclose(runs["a"][name], base[name] + 2 * delta, rtol=0, atol=1e-6)
    dropped = runs["a"][name] == base[name]
    assert np.all(kept | dropped) and 0.4 < kept.mean() < 0.6


def test_merge_method_errors_exit_2(models, logitfuse, tmp_path):
    root, base, experts = models
    for args, word in ((["--method", "average"], "method"), (["--method", "ties", "--density", 1.5], "density")):
        proc = logitfuse("merge", "--base", root / "base", "--expert", root / "expert0", *args, "--out", tmp_path / "x",
                         expect=2)
        assert word in proc.stderr, proc.stderr
        assert not (tmp_path / "x").exists()
