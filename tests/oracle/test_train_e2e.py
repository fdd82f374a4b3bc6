"""End-to-end fusion training on tiny models with genuinely different tokenizers (a byte-level BPE
and a SentencePiece unigram model): the loss goes down, the result loads in transformers, and a run
that is killed and resumed ends with exactly the weights of an uninterrupted one."""
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import BINARY, small_filesystem


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, logitfuse):
    return build_workspace(tmp_path_factory.mktemp("fusion"), logitfuse)


def build_workspace(root, logitfuse):
    """Tiny student and teachers with genuinely different tokenizers, and arithmetic data, in `root`
    (also used by scripts/trainer_parity.py). `logitfuse(*args)` runs the binary."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    examples = []
    for _ in range(240):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        examples.append({"prompt": f"What is {a} plus {b}?", "response": f"{a} plus {b} is {a + b}."})
    (root / "train.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    (root / "eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples[:16]))
    corpus = root / "corpus.txt"
    corpus.write_text("".join(e["prompt"] + " " + e["response"] + "\n" for e in examples))

    (root / "bpe").mkdir()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train([str(corpus)], trainers.BpeTrainer(vocab_size=260, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.save(str(root / "bpe" / "tokenizer.json"))
    (root / "bpe" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
    (root / "sp").mkdir()
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(root / "sp" / "tokenizer"), vocab_size=100,
                                   model_type="unigram", bos_id=1, eos_id=2, unk_id=0, pad_id=3,
                                   user_defined_symbols=["<|im_start|>", "<|im_end|>"], minloglevel=2)

    sizes = ["--hidden", 32, "--layers", 2, "--heads", 4, "--kv-heads", 2, "--intermediate", 64]
    logitfuse("init-model", "--arch", "llama", "--out", root / "student", "--tokenizer", root / "bpe", "--seed", 1, *sizes)
    logitfuse("init-model", "--arch", "qwen2", "--out", root / "teacher_a", "--tokenizer", root / "sp" / "tokenizer.model",
              "--seed", 2, *sizes)
    logitfuse("init-model", "--arch", "phi3", "--out", root / "teacher_b", "--tokenizer", root / "bpe", "--seed", 3, *sizes)
    return root


def recipe(root, out, **overrides):
    text = f"""
run: {{name: t, output_dir: {out}, seed: 5, device: cpu}}
student: {{path: {root}/student, dtype: fp32, chat_template: chatml}}
teachers:
  - {{name: a, path: {root}/teacher_a, dtype: fp32, chat_template: chatml}}
  - {{name: b, path: {root}/teacher_b, dtype: fp32, chat_template: chatml}}
data: {{train: {root}/train.jsonl, eval: {root}/eval.jsonl, max_length: 48, max_prompt_length: 24}}
loss: {{distill_weight: 0.5, token: {{type: uld}}, graph: {{type: gld, top_k: 5}}}}
train: {{micro_batch_size: 4, grad_accum: 2, lr: 3.0e-3, precision: fp32, max_steps: 12, schedule: cosine, warmup_ratio: 0.1}}
checkpoint: {{every_steps: 4, keep_last: 2}}
log: {{every_steps: 1}}
"""
    path = Path(out).with_suffix(".yaml")
    path.write_text(text)
    return path, [f"{k}={v}" for k, v in overrides.items()]


def metrics(out):
    return [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def weights(model_dir):
    """A model directory's tensors, or a LoRA run's adapters (a PEFT adapter directory)."""
    adapter = Path(model_dir) / "adapter_model.safetensors"
    return load_file(str(adapter if adapter.exists() else Path(model_dir) / "model.safetensors"))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), f"{name} differs"


def stop_after_six_steps(out, path, overrides):
    """Starts `train`, sends SIGTERM once six steps are logged, and checks it stopped with a checkpoint (75)."""
    proc = subprocess.Popen([str(BINARY), "train", path, *overrides], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        log = Path(out) / "metrics.jsonl"
        if log.exists() and sum(1 for l in log.read_text().splitlines() if '"loss"' in l) >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err.decode()


def test_fusion_training_lowers_the_loss_and_loads_in_transformers(workspace, tmp_path, logitfuse):
    path, overrides = recipe(workspace, tmp_path / "run", **{"train.max_steps": 30, "checkpoint.every_steps": 0})
    logitfuse("train", path, *overrides)
    m = [x for x in metrics(tmp_path / "run") if "loss" in x]
    assert len(m) == 30
    assert all(x["graph"] > 0 and x["token"] > 0 and x["sft"] > 0 for x in m)
    first, last = sum(x["loss"] for x in m[:5]) / 5, sum(x["loss"] for x in m[-5:]) / 5
    assert last < 0.8 * first, f"loss went from {first:.3f} to {last:.3f}"
    assert any("eval_loss" in x for x in metrics(tmp_path / "run"))
    final = tmp_path / "run" / "final"
    assert (final / "tokenizer.json").exists()
    model = AutoModelForCausalLM.from_pretrained(final).eval()
    ids = [[5, 9, 33, 7, 120, 3]]
    (tmp_path / "ids.jsonl").write_text(json.dumps(ids[0]) + "\n")
    logitfuse("logits", "--model", final, "--input", tmp_path / "ids.jsonl", "--out", tmp_path / "l.safetensors")
    with torch.no_grad():
        want = model(torch.tensor(ids)).logits[0]
    assert (load_file(str(tmp_path / "l.safetensors"))["logits.0"] - want).abs().max() < 1e-4


@pytest.mark.parametrize("token", ["kl", "jsd"])
def test_kl_family_with_vocabulary_maps_trains(workspace, tmp_path, logitfuse, token):
    path, overrides = recipe(workspace, tmp_path / "run", **{"loss.token.type": token, "loss.token.top_k": 8,
                                                             "alignment.vocab": "mined", "train.max_steps": 6,
                                                             "checkpoint.every_steps": 0,
                                                             "alignment.cache_dir": tmp_path / "maps"})
    logitfuse("train", path, *overrides)
    m = [x for x in metrics(tmp_path / "run") if "loss" in x]
    assert all(x["token"] > 0 for x in m)
    assert len(list((tmp_path / "maps").iterdir())) == 2  # one map per teacher, cached


def test_train_logs_the_share_of_positions_each_teacher_aligns(workspace, tmp_path, logitfuse):
    """Teacher b shares the student's tokenizer, so `exact` pairs every response position; teacher a's
    SentencePiece model cuts the text differently, so some positions carry no token-level signal."""
    path, overrides = recipe(workspace, tmp_path / "run", **{"train.max_steps": 1, "checkpoint.every_steps": 0,
                                                             "alignment.positions": "exact"})
    err = logitfuse("train", path, *overrides).stderr
    found = re.findall(r"alignment \(exact\): teacher (\w+) pairs (\d+) of the student's (\d+) response positions", err)
    shares = {name: (int(p), int(n)) for name, p, n in found}
    assert set(shares) == {"a", "b"}, err
    # The same tokenizer pairs every position but one per example: chatml's newline after <|im_end|>,
    # which no alignment pairs (it follows the end of the turn).
    assert shares["b"][1] - shares["b"][0] == 240
    assert 0 < shares["a"][0] < shares["b"][0] and shares["a"][1] == shares["b"][1]


def test_span_alignment_pairs_every_position_trains_and_reads_a_cache(workspace, tmp_path, logitfuse):
    """Span alignment gives teacher a (another tokenizer) a signal at every response position `exact`
    pairs and more; KL trains through it, from live teachers and from a logits cache alike."""
    common = {"loss.token.type": "kl", "loss.token.top_k": 6, "loss.graph.type": "none", "train.max_steps": 4,
              "checkpoint.every_steps": 0, "alignment.cache_dir": tmp_path / "maps"}
    share = r"alignment \({}\): teacher (\w+) pairs (\d+) of the student's (\d+) response positions"
    path, overrides = recipe(workspace, tmp_path / "exact", **common, **{"alignment.positions": "exact"})
    exact = {n: int(p) for n, p, _ in re.findall(share.format("exact"), logitfuse("train", path, *overrides).stderr)}
    path, overrides = recipe(workspace, tmp_path / "span", **common, **{"alignment.positions": "span"})
    err = logitfuse("train", path, *overrides).stderr
    span = {n: (int(p), int(m)) for n, p, m in re.findall(share.format("span"), err)}
    assert set(span) == {"a", "b"}, err
    assert span["a"][0] > exact["a"] and span["b"][0] == exact["b"]
    online = [x for x in metrics(tmp_path / "span") if "loss" in x]
    assert len(online) == 4 and all(x["token"] > 0 for x in online)

    cached = {**common, "alignment.positions": "span", "teachers.0.logits_cache": tmp_path / "cache_a",
              "teachers.1.logits_cache": tmp_path / "cache_b"}
    path, overrides = recipe(workspace, tmp_path / "cached", **cached)
    logitfuse("cache-logits", path, *overrides)
    logitfuse("train", path, *overrides)
    offline = [x for x in metrics(tmp_path / "cached") if "loss" in x]
    for a, b in zip(online, offline):
        for term in ("loss", "sft", "token"):
            assert a[term] == pytest.approx(b[term], rel=1e-5, abs=1e-7), term

    # ULD does not use token identities: span is refused for it, naming the key.
    proc = logitfuse("train", path, "alignment.positions=span", "loss.token.type=uld", expect=2)
    assert "alignment.positions" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_sigterm_writes_a_checkpoint_and_resume_is_exact(workspace, tmp_path, logitfuse):
    path, overrides = recipe(workspace, tmp_path / "ref")
    logitfuse("train", path, *overrides)

    path2, overrides2 = recipe(workspace, tmp_path / "cut")
    stop_after_six_steps(tmp_path / "cut", path2, overrides2)
    assert not (tmp_path / "cut" / "final").exists()
    logitfuse("train", path2, *overrides2, "--resume", "auto")
    assert_same_weights(tmp_path / "ref" / "final", tmp_path / "cut" / "final")


def test_hard_kill_then_resume_auto_is_exact_and_skips_a_corrupt_checkpoint(workspace, tmp_path, logitfuse):
    path, overrides = recipe(workspace, tmp_path / "ref")
    logitfuse("train", path, *overrides)

    path2, overrides2 = recipe(workspace, tmp_path / "cut")
    proc = subprocess.Popen([str(BINARY), "train", path2, *overrides2], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "cut" / "checkpoints" / "step_000008" / "DONE").exists():
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    checkpoints = tmp_path / "cut" / "checkpoints"
    assert (checkpoints / "step_000004" / "DONE").exists() and (checkpoints / "step_000008" / "DONE").exists()
    # Corrupt the newest checkpoint: resume must fall back to step 4 with a warning, and still be exact.
    weights_file = checkpoints / "step_000008" / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:100])
    proc = logitfuse("train", path2, *overrides2, "--resume", "auto")
    assert "skipping checkpoint" in proc.stderr and "step_000008" in proc.stderr
    assert "resuming from" in proc.stderr and "step_000004" in proc.stderr
    assert_same_weights(tmp_path / "ref" / "final", tmp_path / "cut" / "final")


ON_POLICY = {"loss.on_policy.weight": 0.5, "loss.on_policy.max_new_tokens": 12}


def test_on_policy_distillation_uses_the_students_completions_and_resumes_exactly(workspace, tmp_path, logitfuse):
    path, overrides = recipe(workspace, tmp_path / "ref", **ON_POLICY)
    logitfuse("train", path, *overrides)
    m = [x for x in metrics(tmp_path / "ref") if "loss" in x]
    assert len(m) == 12
    # The student wrote completions every step and both distillation terms ran on them.
    assert all(x["on_policy_tokens"] > 0 for x in m)
    assert all(x["on_policy_token"] > 0 and x["on_policy_graph"] > 0 for x in m)

    # Greedy completions depend only on the weights, so a run stopped and resumed is exact.
    path2, overrides2 = recipe(workspace, tmp_path / "cut", **ON_POLICY)
    stop_after_six_steps(tmp_path / "cut", path2, overrides2)
    logitfuse("train", path2, *overrides2, "--resume", "auto")
    assert_same_weights(tmp_path / "ref" / "final", tmp_path / "cut" / "final")

    # And it trains a different student than the same recipe without it.
    path3, overrides3 = recipe(workspace, tmp_path / "off")
    logitfuse("train", path3, *overrides3)
    a, b = weights(tmp_path / "ref" / "final"), weights(tmp_path / "off" / "final")
    assert any(not torch.equal(a[name], b[name]) for name in a)


def test_on_policy_generation_leaves_nothing_behind(workspace, tmp_path, logitfuse):
    # λ > 0 with no distillation term (token and graph off): the completions are generated and carry
    # no loss, so the student is the one trained without on-policy, bit for bit (generating in eval
    # mode leaves nothing behind).
    common = {"loss.token.type": "none", "loss.graph.type": "none", "train.max_steps": 4, "checkpoint.every_steps": 0}
    path, overrides = recipe(workspace, tmp_path / "on", **common, **ON_POLICY)
    logitfuse("train", path, *overrides)
    assert all(x["on_policy_tokens"] > 0 for x in metrics(tmp_path / "on") if "loss" in x)
    path2, overrides2 = recipe(workspace, tmp_path / "off", **common)
    logitfuse("train", path2, *overrides2)
    assert_same_weights(tmp_path / "on" / "final", tmp_path / "off" / "final")
    # λ = 0 does not distil: on-policy is off, nothing is generated, and the run is plain SFT.
    zero = {"loss.distill_weight": 0.0, "train.max_steps": 4, "checkpoint.every_steps": 0}
    path3, overrides3 = recipe(workspace, tmp_path / "zero", **zero, **ON_POLICY)
    logitfuse("train", path3, *overrides3)
    assert not any("on_policy_tokens" in x for x in metrics(tmp_path / "zero"))
    path4, overrides4 = recipe(workspace, tmp_path / "sft", **zero)
    logitfuse("train", path4, *overrides4)
    assert_same_weights(tmp_path / "zero" / "final", tmp_path / "sft" / "final")


def test_on_policy_recipe_errors(workspace, tmp_path, logitfuse):
    path, overrides = recipe(workspace, tmp_path / "run")
    proc = logitfuse("train", path, "loss.on_policy.weight=1.5", expect=2)
    assert "loss.on_policy.weight" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = logitfuse("train", path, "loss.on_policy.weight=0.5", f"teachers.0.logits_cache={tmp_path}/cache", expect=2)
    assert "loss.on_policy.weight" in proc.stderr and "logits cache" in proc.stderr


def test_an_output_dir_with_checkpoints_needs_resume(workspace, tmp_path, logitfuse):
    path, overrides = recipe(workspace, tmp_path / "run", **{"train.max_steps": 4})
    logitfuse("train", path, *overrides)
    proc = logitfuse("train", path, *overrides, expect=2)
    assert "--resume auto" in proc.stderr


def test_bad_recipe_and_data_are_one_line_input_errors(workspace, tmp_path, logitfuse):
    path, overrides = recipe(workspace, tmp_path / "run")
    proc = logitfuse("train", path, "loss.graph.top_kk=3", expect=2)
    assert "loss.graph.top_kk" in proc.stderr and "top_k" in proc.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    proc = logitfuse("train", path, f"data.train={bad}", expect=2)
    assert "bad.jsonl:2" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_logits_cache_trains_like_online_teachers_and_stale_caches_are_refused(workspace, tmp_path, logitfuse):
    common = {"loss.token.top_k": 5, "train.max_steps": 4, "checkpoint.every_steps": 0}
    path, overrides = recipe(workspace, tmp_path / "online", **common)
    logitfuse("train", path, *overrides)
    cached = {**common, "teachers.0.logits_cache": tmp_path / "cache_a", "teachers.1.logits_cache": tmp_path / "cache_b"}
    path2, overrides2 = recipe(workspace, tmp_path / "cached", **cached)
    logitfuse("cache-logits", path2, *overrides2)
    assert (tmp_path / "cache_a" / "manifest.json").exists()
    logitfuse("train", path2, *overrides2)
    online = [x for x in metrics(tmp_path / "online") if "loss" in x]
    offline = [x for x in metrics(tmp_path / "cached") if "loss" in x]
    for a, b in zip(online, offline):
        for term in ("loss", "sft", "token", "graph"):
            assert a[term] == pytest.approx(b[term], rel=1e-5, abs=1e-7), term

    # Another data file: the cache no longer matches and training refuses it, naming what differs.
    data = tmp_path / "other.jsonl"
    data.write_text((workspace / "train.jsonl").read_text() + '{"prompt": "x", "response": "y"}\n')
    path3, overrides3 = recipe(workspace, tmp_path / "stale", **cached, **{"data.train": data})
    proc = logitfuse("train", path3, *overrides3, expect=2)
    assert "stale or mismatched logits cache" in proc.stderr and "data_hash" in proc.stderr
    # Full-vocabulary token losses cannot be served from a cache.
    path4, overrides4 = recipe(workspace, tmp_path / "full", **{**cached, "loss.token.top_k": "null"})
    assert "loss.token.top_k must be set" in logitfuse("train", path4, *overrides4, expect=2).stderr


def test_launcher_environment_is_parsed_and_cpu_ranks_need_mpi(workspace, tmp_path):
    path, overrides = recipe(workspace, tmp_path / "run")
    env = {**os.environ, "RANK": "3", "WORLD_SIZE": "16", "LOCAL_RANK": "3", "MASTER_ADDR": "node07", "MASTER_PORT": "29500"}
    dry = subprocess.run([str(BINARY), "train", path, *overrides, "--dry-run"], capture_output=True, text=True, env=env)
    assert dry.returncode == 0 and "torchrun: rank 3 of 16 (local rank 3), rendezvous node07:29500" in dry.stderr
    slurm = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    slurm.update({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "gpu[12-13]", "SLURM_JOB_ID": "42"})
    run = subprocess.run([str(BINARY), "train", path, *overrides], capture_output=True, text=True, env=slurm)
    # CPU ranks are MPI processes: srun without --mpi=pmix cannot form their world (test_train_dist.py
    # runs them under mpirun).
    assert run.returncode == 2 and "mpirun" in run.stderr and "gpu12:20042" in run.stderr


def test_tensorboard_events_hold_every_metric_as_tensorboard_reads_them(workspace, tmp_path, logitfuse):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path, overrides = recipe(workspace, tmp_path / "run", **{"train.max_steps": 4, "train.eval_every_steps": 2,
                                                              "log.tensorboard": "true"})
    logitfuse("train", path, *overrides)
    files = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    events = EventAccumulator(str(files[0]), size_guidance={"scalars": 0})
    events.Reload()
    lines = metrics(tmp_path / "run")
    for prefix, rows in (("train/", [x for x in lines if "loss" in x]), ("eval/", [x for x in lines if "eval_loss" in x])):
        assert rows
        for key in ("loss", "sft", "token", "graph", "grad_norm", "lr", "tokens_per_s", "skipped", "eval_loss", "eval_ppl"):
            if key not in rows[0]:
                continue
            scalars = events.Scalars(prefix + key)
            assert [s.step for s in scalars] == [x["step"] for x in rows], key
            for s, x in zip(scalars, rows):  # float32 in the event file
                assert s.value == pytest.approx(float(x[key]), rel=1e-6, abs=1e-30), (key, x["step"])
    # The reader checks each record's CRC-32C: every record passes, and a flipped byte drops the last.
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    records = len(list(RawEventFileLoader(str(files[0])).Load()))
    corrupt = bytearray(files[0].read_bytes())
    corrupt[-3] ^= 0xFF
    (tmp_path / "corrupt.tfevents").write_bytes(bytes(corrupt))
    assert len(list(RawEventFileLoader(str(tmp_path / "corrupt.tfevents")).Load())) == records - 1


def test_a_poisoned_teacher_stops_the_run_naming_step_term_and_teacher_and_never_reaches_the_weights(
        workspace, tmp_path, logitfuse):
    from safetensors.torch import save_file

    poisoned = tmp_path / "teacher_a"
    shutil.copytree(workspace / "teacher_a", poisoned)
    tensors = load_file(str(poisoned / "model.safetensors"))
    tensors["model.norm.weight"][0] = float("nan")  # every logit of this teacher becomes NaN
    save_file(tensors, str(poisoned / "model.safetensors"), metadata={"format": "pt"})
    common = {"teachers.0.path": poisoned, "train.max_steps": 4, "checkpoint.every_steps": 2, "data.eval": "null"}

    path, overrides = recipe(workspace, tmp_path / "stop", **common)
    proc = logitfuse("train", path, *overrides, expect=1)
    assert "step 1: non-finite" in proc.stderr and "no weights were written" in proc.stderr, proc.stderr
    assert "non-finite logits of teacher a)" in proc.stderr, proc.stderr
    assert not (tmp_path / "stop" / "final").exists() and not (tmp_path / "stop" / "checkpoints").exists()

    # Skipped instead: every step is skipped, and what is written is the untouched student.
    path, overrides = recipe(workspace, tmp_path / "skip", **common, **{"train.skip_nonfinite": "true"})
    logitfuse("train", path, *overrides)
    assert all(x["skipped"] for x in metrics(tmp_path / "skip") if "loss" in x)
    start = weights(workspace / "student")
    for directory in [tmp_path / "skip" / "final", *sorted((tmp_path / "skip" / "checkpoints").iterdir())]:
        written = weights(directory)
        assert all(torch.isfinite(t).all() for t in written.values()), directory
        assert all(torch.equal(written[k].float(), start[k].float()) for k in start), directory


def test_a_poisoned_teacher_is_named_when_only_its_token_term_reads_it(workspace, tmp_path, logitfuse):
    # Without GLD (and without min_ce mixing) the teacher's logits are read once, by the token term
    # of the main pass; the non-finite check moved there with them.
    from safetensors.torch import save_file

    poisoned = tmp_path / "teacher_a"
    shutil.copytree(workspace / "teacher_a", poisoned)
    tensors = load_file(str(poisoned / "model.safetensors"))
    tensors["model.norm.weight"][0] = float("nan")
    save_file(tensors, str(poisoned / "model.safetensors"), metadata={"format": "pt"})
    for token in ("kl", "uld"):
        path, overrides = recipe(workspace, tmp_path / token, **{
            "teachers.0.path": poisoned, "train.max_steps": 2, "data.eval": "null", "loss.graph.type": "none",
            "loss.token.type": token})
        proc = logitfuse("train", path, *overrides, expect=1)
        assert "step 1: non-finite token distillation loss" in proc.stderr, proc.stderr
        assert "non-finite logits of teacher a)" in proc.stderr, proc.stderr
        assert not (tmp_path / token / "final").exists()


def test_cache_logits_on_a_full_disk_keeps_the_earlier_cache(workspace, tmp_path, logitfuse):
    # An earlier complete cache on a disk with room for it and half of another: rewriting it fails
    # for lack of space naming the file, and the earlier cache is still there, byte for byte, with
    # no staging left beside it; training still reads it.
    common = {"loss.token.type": "kl", "loss.token.top_k": 6, "loss.graph.type": "none", "train.max_steps": 2,
              "data.eval": "null"}
    path, overrides = recipe(workspace, tmp_path / "first", **common, **{"teachers.0.logits_cache": tmp_path / "roomy"})
    logitfuse("cache-logits", path, *overrides)
    size = sum(f.stat().st_size for f in (tmp_path / "roomy").iterdir())
    with small_filesystem(tmp_path / "disk", (size * 3 // 2) // 1024 + 8) as disk:
        shutil.copytree(tmp_path / "roomy", disk / "cache")
        before = {f.name: f.read_bytes() for f in (disk / "cache").iterdir()}
        path, overrides = recipe(workspace, tmp_path / "again", **common, **{"teachers.0.logits_cache": disk / "cache"})
        proc = logitfuse("cache-logits", path, *overrides, expect=1)
        last = proc.stderr.strip().splitlines()[-1]
        assert "No space left on device" in last and str(disk / "cache") in last, last
        assert sorted(p.name for p in disk.iterdir()) == ["cache"]
        assert {f.name: f.read_bytes() for f in (disk / "cache").iterdir()} == before
        logitfuse("train", path, *overrides)
        assert (tmp_path / "again" / "final" / "config.json").exists()


def test_an_fp16_teacher_that_overflows_is_named_like_a_poisoned_one(workspace, tmp_path, logitfuse):
    # Finite fp32 weights whose logits pass float16's largest value (65504): the teacher runs in fp16,
    # its logits overflow to inf, and the run stops at step 1 naming the term and the teacher.
    from safetensors.torch import save_file

    loud = tmp_path / "teacher_a"
    shutil.copytree(workspace / "teacher_a", loud)
    tensors = load_file(str(loud / "model.safetensors"))
    head = "lm_head.weight" if "lm_head.weight" in tensors else "model.embed_tokens.weight"
    tensors[head] = tensors[head] * (30000.0 / tensors[head].abs().max())
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * 10
    assert all(torch.isfinite(t.half()).all() for t in tensors.values())  # every weight fits float16
    save_file(tensors, str(loud / "model.safetensors"), metadata={"format": "pt"})
    common = {"teachers.0.path": loud, "teachers.0.dtype": "fp16", "train.max_steps": 2, "data.eval": "null"}
    path, overrides = recipe(workspace, tmp_path / "fp16", **common)
    proc = logitfuse("train", path, *overrides, expect=1)
    assert "step 1: non-finite" in proc.stderr and "non-finite logits of teacher a)" in proc.stderr, proc.stderr
    assert not (tmp_path / "fp16" / "final").exists()


def test_a_full_disk_stops_the_run_naming_the_file_and_keeps_the_checkpoints_resumable(workspace, tmp_path, logitfuse):
    # The output directory on a 1.2 MB file system: two checkpoints fit, the third does not.
    common = {"train.max_steps": 8, "checkpoint.every_steps": 2, "checkpoint.keep_last": 2, "data.eval": "null"}
    with small_filesystem(tmp_path / "disk", 1200) as disk:
        path, overrides = recipe(workspace, disk / "run", **common)
        proc = logitfuse("train", path, *overrides, expect=1)
        last = proc.stderr.strip().splitlines()[-1]
        assert "No space left on device" in last and "more bytes of this file to write" in last, last
        checkpoints = sorted(p.name for p in (disk / "run" / "checkpoints").iterdir())
        assert checkpoints == ["step_000002", "step_000004"], checkpoints  # complete ones, no staging left
        assert all((disk / "run" / "checkpoints" / c / "DONE").exists() for c in checkpoints)
        assert not (disk / "run" / "final").exists()
        shutil.copytree(disk / "run", tmp_path / "moved")
    # Moved to a disk with room, the run resumes and ends where an uninterrupted one does.
    path, overrides = recipe(workspace, tmp_path / "moved", **common)
    logitfuse("train", path, *overrides, "--resume", "auto")
    path, overrides = recipe(workspace, tmp_path / "reference", **common)
    logitfuse("train", path, *overrides)
    assert_same_weights(tmp_path / "moved" / "final", tmp_path / "reference" / "final")


def test_bad_data_and_caches_at_scale_are_a_clear_error_or_a_counted_skip(workspace, tmp_path, logitfuse):
    # A 10 MB data line among ordinary ones trains (the line is truncated to data.max_length like any
    # other); a truncated cache shard is a one-line exit-2 error naming the shard, and a valid
    # cache elsewhere is untouched by it.
    import time as clock
    lines = (workspace / "train.jsonl").read_text().splitlines()
    huge = json.loads(lines[0])
    huge["response"] = ("word " * 2_100_000)[:10_000_000]
    (tmp_path / "huge.jsonl").write_text("\n".join([json.dumps(huge)] + lines[1:]) + "\n")
    common = {"train.max_steps": 2, "data.eval": "null", "checkpoint.every_steps": 0}
    path, overrides = recipe(workspace, tmp_path / "huge", **common, **{"data.train": tmp_path / "huge.jsonl"})
    start = clock.time()
    logitfuse("train", path, *overrides)
    assert (tmp_path / "huge" / "final" / "config.json").exists()
    print(f"a 10 MB line: {clock.time() - start:.1f}s for the whole run")

    cached = {**common, "loss.token.type": "kl", "loss.token.top_k": 6, "loss.graph.type": "none",
              "teachers.0.logits_cache": tmp_path / "cache"}
    path, overrides = recipe(workspace, tmp_path / "cached", **cached)
    logitfuse("cache-logits", path, *overrides)
    shard = sorted((tmp_path / "cache").glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    proc = logitfuse("train", path, *overrides, expect=2)
    assert shard.name in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "cached" / "final").exists()


def test_a_data_file_edited_before_a_resume_is_refused_and_restored_resumes(workspace, tmp_path, logitfuse):
    # The data cursor of a checkpoint indexes the file as it was: resuming on an edited file stops
    # with a one-line error naming it; with the file restored, the resume goes on.
    data = tmp_path / "train.jsonl"
    shutil.copy(workspace / "train.jsonl", data)
    common = {"train.max_steps": 4, "checkpoint.every_steps": 2, "data.eval": "null", "data.train": data}
    path, overrides = recipe(workspace, tmp_path / "run", **common)
    logitfuse("train", path, *overrides, "train.max_steps=3")
    shutil.rmtree(tmp_path / "run" / "final")  # as if it had stopped after its checkpoint of step 2
    original = data.read_text()
    data.write_text(original.replace("\n", "\n", 1) + original.splitlines()[0] + "\n")  # one line added
    proc = logitfuse("train", path, *overrides, "--resume", "auto", expect=2)
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "data.train changed since the checkpoint of step 2" in errors[0], proc.stderr
    assert str(data) in errors[0]
    data.write_text(original)
    logitfuse("train", path, *overrides, "--resume", "auto")
    assert (tmp_path / "run" / "final" / "config.json").exists()


def test_a_teacher_removed_mid_run_stops_the_resume_naming_it_and_keeps_the_checkpoints(workspace, tmp_path, logitfuse):
    # A live run has its teachers in memory, so a teacher directory removed under it does not stop
    # it; a resume then needs the teacher: a one-line exit-2 error naming its path, the checkpoints
    # as they were; with the teacher back, the resume goes on.
    teacher = tmp_path / "teacher_a"
    shutil.copytree(workspace / "teacher_a", teacher)
    common = {"teachers.0.path": teacher, "train.max_steps": 4, "checkpoint.every_steps": 2, "data.eval": "null"}
    path, overrides = recipe(workspace, tmp_path / "run", **common)
    proc = subprocess.Popen([str(BINARY), "train", str(path), *overrides, "train.max_steps=3"],
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # "training ... for N steps": the teachers are loaded
        if " info training " in line:
            shutil.move(str(teacher), str(tmp_path / "away"))
            break
    proc.stderr.read()
    assert proc.wait() == 0
    shutil.rmtree(tmp_path / "run" / "final")  # as if it had stopped after its checkpoint of step 2
    before = {p: p.read_bytes() for p in (tmp_path / "run" / "checkpoints").rglob("*") if p.is_file()}
    proc = logitfuse("train", path, *overrides, "--resume", "auto", expect=2)
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and str(teacher) in errors[0], proc.stderr
    assert {p: p.read_bytes() for p in (tmp_path / "run" / "checkpoints").rglob("*") if p.is_file()} == before
    shutil.move(str(tmp_path / "away"), str(teacher))
    logitfuse("train", path, *overrides, "--resume", "auto")
    assert (tmp_path / "run" / "final" / "config.json").exists()


def test_empty_responses_are_an_error_or_a_counted_skip_and_long_prompts_keep_a_response(workspace, tmp_path, logitfuse):
    # Every line with an empty response: exit 2 naming the first line; with data.skip_invalid the
    # lines are counted as skipped and a set with none left is exit 2. Prompts longer than the whole
    # max_length are truncated first (to max_prompt_length < max_length), so every line keeps at least
    # one response token to learn from and the run trains.
    lines = [json.loads(l) for l in (workspace / "train.jsonl").read_text().splitlines()]
    (tmp_path / "empty.jsonl").write_text("".join(json.dumps({**x, "response": ""}) + "\n" for x in lines))
    common = {"train.max_steps": 2, "data.eval": "null", "checkpoint.every_steps": 0,
              "data.train": tmp_path / "empty.jsonl"}
    path, overrides = recipe(workspace, tmp_path / "empty", **common)
    proc = logitfuse("train", path, *overrides, expect=2)
    assert f"{tmp_path / 'empty.jsonl'}:1: empty response" in proc.stderr, proc.stderr
    proc = logitfuse("train", path, *overrides, "data.skip_invalid=true", expect=2)
    assert f"skipped {len(lines)} invalid line(s)" in proc.stderr and "no valid examples" in proc.stderr, proc.stderr
    assert not (tmp_path / "empty" / "final").exists()

    (tmp_path / "long.jsonl").write_text("".join(json.dumps({**x, "prompt": x["prompt"] * 40}) + "\n" for x in lines))
    path, overrides = recipe(workspace, tmp_path / "long", **{**common, "data.train": tmp_path / "long.jsonl"})
    logitfuse("train", path, *overrides)
    rows = [x for x in metrics(tmp_path / "long") if "loss" in x]
    assert len(rows) == 2 and all(math.isfinite(x["loss"]) for x in rows)


def test_a_final_write_on_a_full_disk_leaves_no_partial_final(workspace, tmp_path, logitfuse):
    # No checkpoints, an output disk smaller than the model: the run trains, then writing final/
    # fails naming the file; no final/ and no staging are left, only the run's logs.
    size = sum(f.stat().st_size for f in (workspace / "student").glob("*.safetensors"))
    with small_filesystem(tmp_path / "disk", size // 2048) as disk:
        path, overrides = recipe(workspace, disk / "run", **{"train.max_steps": 2, "checkpoint.every_steps": 0,
                                                            "data.eval": "null"})
        proc = logitfuse("train", path, *overrides, expect=1)
        last = proc.stderr.strip().splitlines()[-1]
        assert "No space left on device" in last and "final" in last, last
        assert not (disk / "run" / "final").exists()
        assert not [p for p in (disk / "run").rglob("*") if ".tmp" in p.name], list((disk / "run").rglob("*"))
