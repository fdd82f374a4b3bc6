"""Data-parallel training on CPU under mpirun (2 and 3 ranks): the loss curve and final weights equal
one process with the same global batch; ZeRO-1/2 runs equal the unsharded one; a rank killed mid-run
ends the job instead of hanging it; and a resume after the kill reproduces the uninterrupted run, at
the same world size and (through resharded optimizer state) at another."""
import json
import re
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import torch

from conftest import BINARY
from test_train_e2e import metrics, recipe, weights, workspace  # noqa: F401 (workspace is a fixture)

MPIRUN = shutil.which("mpirun")


def _built_with_mpi():
    if not BINARY.exists():
        return False
    out = subprocess.run([str(BINARY), "version"], capture_output=True, text=True).stdout
    return "cpu (MPI) built" in out


pytestmark = [
    pytest.mark.skipif(MPIRUN is None, reason="mpirun is missing (scripts/setup.sh installs openmpi-bin)"),
    pytest.mark.skipif(not _built_with_mpi(), reason="logitfuse was built without MPI (LOGITFUSE_MPI)"),
]

# Six examples per global micro-batch, two micro-batches per step: 1×6, 2×3 and 3×2 see the same data.
# Adam's ε is 1 here (see assert_same_run): its update is then a Lipschitz function of the gradient,
# so the float32 rounding of another reduction order stays at rounding size and a bound follows from it.
GLOBAL = 6
COMMON = {"train.grad_accum": 2, "train.max_steps": 6, "checkpoint.every_steps": 0, "data.eval": "null",
          "train.adam_eps": 1.0}
MAX_LENGTH = 48  # the workspace recipe's data.max_length
UNIT_ROUNDOFF = 2.0 ** -24  # float32


# glibc's allocator settings and the injected fault, passed on to the ranks when set (the memory test
# and the wrong-average test set them).
MALLOC_KNOBS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LOGITFUSE_INJECT_FAULT")


def mpirun_command(ranks, args, run_id):
    # As root mpirun needs --allow-run-as-root; the machine may have fewer cores than ranks.
    return [MPIRUN, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", str(ranks),
            "--mca", "btl_vader_single_copy_mechanism", "none", "-x", "OMP_NUM_THREADS=1",
            "-x", f"LOGITFUSE_TEST_RUN={run_id}",
            *[arg for name in MALLOC_KNOBS if name in os.environ for arg in ("-x", name)], str(BINARY), *map(str, args)]


def train(ranks, root, out, resume=False, expect=0, **overrides):
    path, args = recipe(root, out, **{**COMMON, "train.micro_batch_size": GLOBAL // ranks, **overrides})
    command = ["train", path, *args, *(["--resume", "auto"] if resume else [])]
    if ranks == 1:
        proc = subprocess.run([str(BINARY), *map(str, command)], capture_output=True, text=True, timeout=600)
    else:
        proc = subprocess.run(mpirun_command(ranks, command, uuid.uuid4().hex), capture_output=True, text=True,
                              timeout=600)
    assert proc.returncode == expect, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def losses(out):
    return [x for x in metrics(out) if "loss" in x]


def rounding_bounds(run, weights_b):
    """What float32 rounding alone can make two runs of the same math differ by, from the run's own
    log. Another reduction order (ranks, buckets, shards) changes each gradient element, a sum over
    the step's N ≤ global batch × max_length positions, by about √N·u of its size (u = 2^-24: rounding
    errors of a long sum add like a random walk; Higham, Accuracy and Stability, §2.8), and an element
    is at most the clipped gradient norm ‖g‖, its mean over the n elements at most ‖g‖/√n. With ε = 1
    Adam's update lr·m̂/(√v̂ + 1) moves by at most 2·lr times that (1 from m̂, at most 1 more from v̂
    while |g| < 1). Summed over the steps:
      mean |Δw| ≤ 2·Σ lr_t·√N·u·‖g_t‖/√n,
      |Δw_e|   ≤ steps·ulp(w_e) + 2·Σ lr_t·√N·u·‖g_t‖ (each step's rounding of w_e may land one ulp apart).
    With the default ε = 1e-8 no such bound exists: a gradient element that is rounding noise itself is
    normalised to a full update of either sign, and the test would measure one processor's rounding."""
    log = losses(run)
    clip = 1.0
    n_positions = GLOBAL * COMMON["train.grad_accum"] * MAX_LENGTH
    per_step = [2 * x["lr"] * (n_positions ** 0.5) * UNIT_ROUNDOFF * min(x["grad_norm"], clip) for x in log]
    n = sum(t.numel() for t in weights_b.values())
    return sum(per_step) / n ** 0.5, sum(per_step), len(log)


def weight_differences(a, b):
    """(mean |Δw| over every weight, its bound, the worst element's |Δw| / its own bound)."""
    wa, wb = weights(Path(a) / "final"), weights(Path(b) / "final")
    assert wa.keys() == wb.keys()
    mean_bound, element_slack, steps = rounding_bounds(a, wb)
    total = sum((wa[n].double() - wb[n].double()).abs().sum().item() for n in wa)
    mean = total / sum(t.numel() for t in wa.values())
    worst_ratio = 0.0
    for n in wa:
        x, y = wa[n].float(), wb[n].float()
        ulp = torch.nextafter(torch.maximum(x.abs(), y.abs()), torch.tensor(float("inf"))) - torch.maximum(x.abs(), y.abs())
        bound = steps * ulp.double() + element_slack
        worst_ratio = max(worst_ratio, ((x.double() - y.double()).abs() / bound).max().item())
    return mean, mean_bound, worst_ratio


def assert_same_run(a, b, rel=1e-4):
    """Same losses to `rel`, and the same weights to float32 rounding (rounding_bounds)."""
    ma, mb = losses(a), losses(b)
    assert [x["step"] for x in ma] == [x["step"] for x in mb]
    for x, y in zip(ma, mb):
        for term in ("loss", "sft", "token", "graph", "grad_norm", "lr"):
            assert x[term] == pytest.approx(y[term], rel=rel, abs=1e-7), (x["step"], term)
    mean, mean_bound, worst_ratio = weight_differences(a, b)
    print(f"final weights differ by {mean:.3g} on average (bound {mean_bound:.3g}); worst element at "
          f"{worst_ratio:.3g} of its bound")
    assert mean <= mean_bound and worst_ratio <= 1, \
        f"final weights differ by {mean:.3g} on average (float32 rounding allows {mean_bound:.3g}), worst element " \
        f"{worst_ratio:.3g}× what rounding allows"


@pytest.fixture(scope="module")
def single(workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    train(1, workspace, out)
    return out


@pytest.mark.parametrize("ranks", [2, 3])
def test_data_parallel_equals_one_process_with_the_same_global_batch(workspace, single, tmp_path, ranks):
    proc = train(ranks, workspace, tmp_path / "dp")
    assert f"mpi (CPU) (mpi: rank 0 of {ranks}" in proc.stderr  # the communicator is logged once, by rank 0
    assert len(losses(tmp_path / "dp")) == 6  # rank 0 alone writes the metrics
    assert_same_run(single, tmp_path / "dp")


def test_a_wrong_gradient_average_fails_the_equivalence(workspace, single, tmp_path, monkeypatch):
    # The classic data-parallel error, injected: each rank divides by its own response tokens (times
    # the world size) instead of the global count, so the step averages the ranks' means. With this
    # data the ranks' token counts differ little: the losses move by 1e-4 of themselves at most, the
    # gradient norm a little more, and the weights, which the bound must catch alone, as much.
    monkeypatch.setenv("LOGITFUSE_INJECT_FAULT", "local_token_mean")
    proc = train(3, workspace, tmp_path / "wrong")
    assert "LOGITFUSE_INJECT_FAULT=local_token_mean" in proc.stderr
    mean, mean_bound, _ = weight_differences(single, tmp_path / "wrong")
    print(f"wrong average: final weights differ by {mean:.3g} on average, {mean / mean_bound:.3g}× the bound")
    assert mean > mean_bound
    with pytest.raises(AssertionError):
        assert_same_run(single, tmp_path / "wrong")


@pytest.mark.parametrize("zero", [1, 2])
def test_zero_sharded_optimizer_equals_the_unsharded_run(workspace, single, tmp_path, zero):
    # Weight decay on, so the per-parameter decay rule is exercised on the shards too.
    train(2, workspace, tmp_path / "zero", **{"dist.zero": zero, "train.weight_decay": 0.1})
    train(1, workspace, tmp_path / "plain", **{"train.weight_decay": 0.1})
    assert_same_run(tmp_path / "plain", tmp_path / "zero")


# LoRA: only the adapters' gradients are reduced (and at ZeRO-1/2 their AdamW state sharded). Without
# dropout: each process draws its own masks, as in any data-parallel run, so with dropout the runs differ.
LORA = {"student.lora.r": 4, "student.lora.alpha": 8, "student.lora.dropout": 0.0}


@pytest.mark.parametrize("zero", [0, 2])
def test_lora_on_two_ranks_equals_one_process(workspace, tmp_path, zero):
    train(1, workspace, tmp_path / "one", **LORA)
    proc = train(2, workspace, tmp_path / "two", **LORA, **{"dist.zero": zero})
    assert "LoRA student" in proc.stderr
    assert (tmp_path / "two" / "final" / "adapter_model.safetensors").exists()
    assert_same_run(tmp_path / "one", tmp_path / "two")


def test_overlapped_reduction_equals_the_reduction_after_backward(workspace, tmp_path):
    # Small buckets, so that most start while the backward pass is still running.
    small = {"dist.bucket_mb": 0.01}
    train(2, workspace, tmp_path / "overlap", **small)
    train(2, workspace, tmp_path / "after", **small, **{"dist.overlap": "false"})
    overlapped = [x["buckets_overlapped"] for x in losses(tmp_path / "overlap")]
    assert all(n > 0 for n in overlapped), overlapped
    assert all(x["buckets_overlapped"] == 0 for x in losses(tmp_path / "after"))
    # The same buckets summed in the same order: identical numbers, not just close ones.
    for x, y in zip(losses(tmp_path / "overlap"), losses(tmp_path / "after")):
        assert x["loss"] == y["loss"] and x["grad_norm"] == y["grad_norm"], (x, y)
    wa, wb = weights(tmp_path / "overlap" / "final"), weights(tmp_path / "after" / "final")
    assert all(torch.equal(wa[n], wb[n]) for n in wa)


def test_on_policy_distillation_with_two_ranks_equals_one_process(workspace, tmp_path):
    # Each rank completes its own prompts; the completions' token and sequence counts are global, and
    # the overlapped reduction is armed by the data's last micro-batch, after the completions' backward.
    on_policy = {"loss.on_policy.weight": 0.5, "loss.on_policy.max_new_tokens": 8}
    train(1, workspace, tmp_path / "one", **on_policy)
    train(2, workspace, tmp_path / "two", **on_policy)
    assert_same_run(tmp_path / "one", tmp_path / "two")
    for x, y in zip(losses(tmp_path / "one"), losses(tmp_path / "two")):
        assert x["on_policy_tokens"] == y["on_policy_tokens"] > 0
        assert x["on_policy_token"] == pytest.approx(y["on_policy_token"], rel=1e-4)


def rank_pid(run_id, rank):
    """The pid of one rank of an mpirun job, found by the job's marker in its environment."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if (f"LOGITFUSE_TEST_RUN={run_id}".encode() in env and f"OMPI_COMM_WORLD_RANK={rank}".encode() in env
                and b"logitfuse" in cmd and b"mpirun" not in cmd):
            return int(entry.name)
    return None


def start_and_kill_rank(ranks, root, out, until, victim=1, **overrides):
    """Starts an mpirun job, SIGKILLs rank `victim` once `until()` holds, and returns the job's exit
    status and how long the other ranks took to end."""
    path, args = recipe(root, out, **{**COMMON, "train.micro_batch_size": GLOBAL // ranks, **overrides})
    run_id = uuid.uuid4().hex
    proc = subprocess.Popen(mpirun_command(ranks, ["train", path, *args], run_id), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and not until() and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the job ended before the kill: " + proc.communicate()[1].decode()[-2000:]
    pid = rank_pid(run_id, victim)
    assert pid is not None, "rank process not found"
    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the surviving ranks hung for 60 s after a peer was killed")
    survivors = [r for r in range(ranks) if r != victim and rank_pid(run_id, r) is not None]
    return proc.returncode, time.time() - killed, survivors, err.decode()


def test_killing_one_rank_ends_the_job_with_an_error(workspace, tmp_path):
    out = tmp_path / "run"
    status, seconds, survivors, err = start_and_kill_rank(
        3, workspace, out, lambda: len(losses(out)) >= 2 if (out / "metrics.jsonl").exists() else False,
        **{"train.max_steps": 200})
    print(f"killed rank 1 of 3: mpirun exited {status} after {seconds:.1f} s")
    assert status != 0, err
    assert not survivors, f"ranks {survivors} are still running"
    assert seconds < 60
    assert not (out / "final").exists()


def killed_after_step_4(workspace, tmp_path, every):
    """A two-rank reference run, and the same run with rank 1 killed once checkpoint 4 is complete:
    returns the cut run's directory and that checkpoint."""
    train(2, workspace, tmp_path / "ref", **every)
    cut = tmp_path / "cut"
    status, _, _, err = start_and_kill_rank(
        2, workspace, cut, lambda: (cut / "checkpoints" / "step_000004" / "DONE").exists(), **every)
    assert status != 0, err
    return cut, cut / "checkpoints" / "step_000004"


def copy_of_run_at_step_4(cut, step4, dest):
    """A new output directory holding only checkpoint 4 and the metrics up to it."""
    (dest / "checkpoints").mkdir(parents=True)
    shutil.copytree(step4, dest / "checkpoints" / "step_000004")
    (dest / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in metrics(cut) if x["step"] <= 4))
    return dest


def resume_exactly(workspace, tmp_path, cut, every):
    """The cut run resumed at its own world size ends with exactly the reference's weights."""
    train(2, workspace, cut, resume=True, **every)
    wr, wc = weights(tmp_path / "ref" / "final"), weights(cut / "final")
    for name in wr:
        assert torch.equal(wr[name], wc[name]), f"{name} differs after the resume"


def test_resume_after_a_killed_rank_reproduces_the_uninterrupted_run(workspace, tmp_path):
    every = {"checkpoint.every_steps": 2, "checkpoint.keep_last": 3}
    cut, step4 = killed_after_step_4(workspace, tmp_path, every)
    assert (step4 / "optimizer.rank00000.safetensors").exists() and (step4 / "optimizer.rank00001.safetensors").exists()
    # Another copy of the checkpoint, for the resume at another world size below.
    resharded = copy_of_run_at_step_4(cut, step4, tmp_path / "resharded")
    resume_exactly(workspace, tmp_path, cut, every)
    # Three ranks (ZeRO-1) continue the two-rank checkpoint: the optimizer state is resharded.
    proc = train(3, workspace, resharded, resume=True, **every, **{"dist.zero": 1})
    assert "resuming from" in proc.stderr and "step_000004" in proc.stderr
    assert_same_run(tmp_path / "ref", resharded)


def test_a_changed_global_batch_is_refused_on_resume(workspace, tmp_path):
    every = {"checkpoint.every_steps": 2, "train.max_steps": 3}
    train(2, workspace, tmp_path / "run", **every)
    shutil.rmtree(tmp_path / "run" / "final")
    path, args = recipe(workspace, tmp_path / "run", **{**COMMON, **every, "train.micro_batch_size": 2,
                                                         "train.max_steps": 4})
    proc = subprocess.run([str(BINARY), "train", path, *args, "--resume", "auto"], capture_output=True, text=True)
    assert proc.returncode == 2 and "global micro-batch of 6" in proc.stderr, proc.stderr


def test_cpu_backend_with_several_ranks_needs_mpirun(workspace, tmp_path):
    path, args = recipe(workspace, tmp_path / "run", **COMMON)
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533"}
    proc = subprocess.run([str(BINARY), "train", path, *args, "dist.backend=cpu"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "mpirun" in proc.stderr, proc.stderr
    # On-policy completions differ in length per rank, which sharded forwards cannot follow.
    proc = subprocess.run([str(BINARY), "train", path, *args, "dist.zero=3", "loss.on_policy.weight=0.5"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "on-policy" in proc.stderr and "not yet available" in proc.stderr, proc.stderr


# ZeRO-3: parameters, gradients and AdamW state sharded unit by unit (train/zero3.h).
ZERO3 = {"dist.zero": 3, "train.weight_decay": 0.1}


@pytest.fixture(scope="module")
def single_decay(workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("single_decay") / "run"
    train(1, workspace, out, **{"train.weight_decay": 0.1})
    return out


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_zero3_sharded_parameters_equal_one_unsharded_process(workspace, single_decay, tmp_path, ranks):
    proc = train(ranks, workspace, tmp_path / "zero3", **ZERO3)
    assert f"student sharded over {ranks} rank(s) (ZeRO-3)" in proc.stderr
    assert "memory plan per rank" in proc.stderr
    assert_same_run(single_decay, tmp_path / "zero3")


def test_zero3_with_sharded_teachers_and_evaluation_equals_one_process(workspace, tmp_path):
    evaluation = {"data.eval": workspace / "eval.jsonl", "train.eval_every_steps": 3}
    train(1, workspace, tmp_path / "plain", **evaluation)
    shard = {"dist.zero": 3, "teachers.0.placement": "shard", "teachers.1.placement": "shard"}
    proc = train(3, workspace, tmp_path / "sharded", **evaluation, **shard)
    assert "teacher a: sharded over 3 rank(s)" in proc.stderr and "teacher b: sharded over 3 rank(s)" in proc.stderr
    assert_same_run(tmp_path / "plain", tmp_path / "sharded")
    ea = [x["eval_loss"] for x in metrics(tmp_path / "plain") if "eval_loss" in x]
    eb = [x["eval_loss"] for x in metrics(tmp_path / "sharded") if "eval_loss" in x]
    assert len(ea) == len(eb) == 2 and ea == pytest.approx(eb, rel=1e-5)  # after step 3, and at the end


def test_zero3_resume_after_a_kill_at_other_world_sizes_and_stages(workspace, tmp_path):
    every = {"checkpoint.every_steps": 2, "checkpoint.keep_last": 3, **ZERO3}
    cut, step4 = killed_after_step_4(workspace, tmp_path, every)
    from safetensors import safe_open
    with safe_open(step4 / "optimizer.rank00001.safetensors", "pt") as f:
        assert "ranges" in f.keys()  # a slice of every unit: several ranges of the flat space
    copies = {name: copy_of_run_at_step_4(cut, step4, tmp_path / name) for name in ("three", "one")}
    # The same world size continues exactly where the uninterrupted run went.
    resume_exactly(workspace, tmp_path, cut, every)
    # Three ZeRO-3 ranks, and one unsharded process, continue the two-rank ZeRO-3 checkpoint.
    proc = train(3, workspace, copies["three"], resume=True, **every)
    assert "resuming from" in proc.stderr and "step_000004" in proc.stderr
    assert_same_run(tmp_path / "ref", copies["three"])
    train(1, workspace, copies["one"], resume=True, **{**every, "dist.zero": 0})
    assert_same_run(tmp_path / "ref", copies["one"])


def planned_total(root, out, ranks, overrides):
    """The memory plan's total per rank, in bytes, from `train --dry-run --world-size`."""
    path, args = recipe(root, out, **{**COMMON, "train.micro_batch_size": GLOBAL // ranks, **overrides})
    proc = subprocess.run([str(BINARY), "train", path, *args, "--dry-run", "--world-size", str(ranks)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"^\s+total\s+([\d.]+) (B|KiB|MiB|GiB)$", proc.stdout, re.M)
    assert match, proc.stdout
    return float(match.group(1)) * {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[match.group(2)]


def test_zero3_peak_memory_per_rank_falls_with_the_ranks_as_planned(workspace, tmp_path, monkeypatch):
    # A 51M-parameter student, so that its 16 bytes per parameter dominate each rank's memory. Freed
    # blocks go back to the system at once, so the peak resident memory follows the live tensors and
    # not how much of its heap glibc keeps after a 28 MB layer is gathered and freed.
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", str(1 << 20))
    big = tmp_path / "big"
    subprocess.run([str(x) for x in [BINARY, "init-model", "--arch", "llama", "--out", big, "--tokenizer", workspace / "bpe",
                                     "--seed", 1, "--hidden", 768, "--layers", 8, "--heads", 8, "--kv-heads", 8,
                                     "--intermediate", 2048]], check=True, capture_output=True)
    overrides = {**ZERO3, "student.path": big, "train.max_steps": 2, "train.grad_accum": 1}
    measured, planned = {}, {}
    for ranks in (1, 2, 3):
        train(ranks, workspace, tmp_path / f"r{ranks}", **overrides)
        measured[ranks] = max(x["peak_memory_bytes"] for x in losses(tmp_path / f"r{ranks}"))
        planned[ranks] = planned_total(workspace, tmp_path / f"plan{ranks}", ranks, overrides)
    print({r: (round(measured[r] / 2**20), round(planned[r] / 2**20)) for r in measured}, "MiB measured, planned")
    for ranks in (2, 3):
        drop, predicted = measured[1] - measured[ranks], planned[1] - planned[ranks]
        assert predicted > 0 and abs(drop - predicted) <= 0.15 * predicted, (ranks, drop, predicted)


def test_zero3_under_bf16_autocast_follows_the_unsharded_run(workspace, tmp_path):
    # The recompute in the backward runs under the forward's autocast state (bf16 matmuls): the
    # sharded run follows the unsharded one to bf16 rounding, not bit for bit.
    bf16 = {"train.precision": "bf16", "train.adam_eps": 1e-8}  # Adam as trained, so the loss falls in 6 steps
    train(1, workspace, tmp_path / "plain", **bf16)
    train(2, workspace, tmp_path / "zero3", **bf16, **{"dist.zero": 3})
    train(2, workspace, tmp_path / "ddp", **bf16)
    la, lb = losses(tmp_path / "plain"), losses(tmp_path / "zero3")
    for x, y in zip(la, lb):
        assert x["loss"] == pytest.approx(y["loss"], rel=2e-2), (x["step"], x["loss"], y["loss"])
    assert lb[-1]["loss"] < lb[0]["loss"]
    # As close to the one process as plain data parallelism (two ranks, no sharding) is, within 2x.
    def worst(a, b):
        wa, wb = weights(tmp_path / a / "final"), weights(tmp_path / b / "final")
        return max((wa[n].float() - wb[n].float()).abs().max().item() for n in wa)
    sharded, ddp = worst("plain", "zero3"), worst("plain", "ddp")
    print(f"bf16: final weights differ from one process by {sharded:.3g} (ZeRO-3) and {ddp:.3g} (DDP) at most")
    assert sharded <= 2 * ddp + 1e-6
