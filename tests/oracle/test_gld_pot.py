"""GLD's sorted closed form against Gromov-Wasserstein as POT computes it (method.md §2): the
lower-bound guarantee for q = 2 (POT's gromov_wasserstein2) and q = 1 (brute force over
permutations), and logitfuse's entropic GW solver against POT's entropic_gromov_wasserstein2."""
import itertools

import numpy as np
import ot
import pytest
import torch
from safetensors.torch import load_file, save_file


def coactivation_graph(rng, T, k):
    logits = rng.normal(size=(T, 50)) * rng.uniform(0.5, 3.0)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    X = -np.sort(-p, axis=1)[:, :k]  # top-k probabilities, sorted descending
    return X.T @ X, X


def evaluate(logitfuse, tmp_path, tensors, *extra):
    save_file({k: torch.from_numpy(np.array(v, copy=True)).contiguous().clone() for k, v in tensors.items()}, str(tmp_path / "in.safetensors"))
    logitfuse("loss-eval", "--input", tmp_path / "in.safetensors", "--out", tmp_path / "out.safetensors", *extra)
    return {k: v.double().numpy() for k, v in load_file(str(tmp_path / "out.safetensors")).items()}


@pytest.mark.parametrize("n", [3, 5, 8, 12, 20])
def test_sorted_closed_form_lower_bounds_pot_gw2(n, tmp_path, logitfuse):
    rng = np.random.default_rng(n)
    graphs = {}
    for i in range(15):
        graphs[f"C.{i}"], _ = coactivation_graph(rng, int(rng.integers(4, 40)), n)
        graphs[f"D.{i}"], _ = coactivation_graph(rng, int(rng.integers(4, 40)), n)
    out = evaluate(logitfuse, tmp_path, graphs)
    p = ot.unif(n)
    for i in range(15):
        C, D = graphs[f"C.{i}"], graphs[f"D.{i}"]
        gw2 = ot.gromov.gromov_wasserstein2(C, D, p, p, loss_fun="square_loss")
        fc, fd = -np.sort(-C.sum(1)), -np.sort(-D.sum(1))
        assert np.isclose(out[f"sorted_q2.{i}"], ((fc - fd) ** 2).sum(), rtol=1e-9)
        bound = out[f"sorted_q2.{i}"] / n ** 3
        assert bound <= gw2 + 1e-12, f"pair {i}: (1/n^3) sorted = {bound} > GW2 = {gw2}"


@pytest.mark.parametrize("n", [3, 5, 7])
def test_sorted_closed_form_lower_bounds_gw1_over_permutations(n, tmp_path, logitfuse):
    rng = np.random.default_rng(100 + n)
    graphs = {}
    for i in range(8):
        graphs[f"C.{i}"], _ = coactivation_graph(rng, 10, n)
        graphs[f"D.{i}"], _ = coactivation_graph(rng, 10, n)
    out = evaluate(logitfuse, tmp_path, graphs)
    for i in range(8):
        C, D = graphs[f"C.{i}"], graphs[f"D.{i}"]
        best = min(np.abs(C - D[np.ix_(s, s)]).sum() for s in map(list, itertools.permutations(range(n)))) / n ** 2
        assert out[f"sorted_q1.{i}"] / n ** 2 <= best + 1e-12


def test_isomorphic_graphs_have_zero_distance(tmp_path, logitfuse):
    rng = np.random.default_rng(7)
    C, _ = coactivation_graph(rng, 12, 6)
    perm = rng.permutation(6)
    out = evaluate(logitfuse, tmp_path, {"C.0": C, "D.0": C[np.ix_(perm, perm)]})
    assert out["sorted_q1.0"] == pytest.approx(0, abs=1e-12)
    assert out["sorted_q2.0"] == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("epsilon", [0.01, 0.05])
def test_entropic_solver_matches_pot(epsilon, tmp_path, logitfuse):
    rng = np.random.default_rng(11)
    graphs = {}
    for i, n in enumerate([4, 6, 10]):
        C, _ = coactivation_graph(rng, 20, n)
        D, _ = coactivation_graph(rng, 25, n)
        graphs[f"C.{i}"], graphs[f"D.{i}"] = C / C.max(), D / D.max()
    out = evaluate(logitfuse, tmp_path, graphs, "--epsilon", epsilon)
    for i, n in enumerate([4, 6, 10]):
        C, D = graphs[f"C.{i}"], graphs[f"D.{i}"]
        want = ot.gromov.entropic_gromov_wasserstein2(C, D, ot.unif(n), ot.unif(n), "square_loss", epsilon=epsilon)
        assert out[f"entropic.{i}"] == pytest.approx(want, rel=1e-6, abs=1e-10)


def test_gld_is_invariant_to_relabelling_channels(tmp_path, logitfuse):
    rng = np.random.default_rng(3)
    _, xs = coactivation_graph(rng, 30, 10)
    _, xt = coactivation_graph(rng, 17, 10)
    perm = rng.permutation(10)
    out = evaluate(logitfuse, tmp_path, {"XS.0": xs, "XT.0": xt, "XS.1": xs, "XT.1": xt[:, perm], "XS.2": xs, "XT.2": xs})
    assert out["gld.0"] == pytest.approx(out["gld.1"], abs=1e-12)
    assert out["gld.2"] == pytest.approx(0, abs=1e-12)
    assert out["gld.0"] > 0
