"""Kill-and-resume soak (docs/reliability.md): a small fusion run is SIGKILLed again and again at random
moments (half of the kills aimed at a checkpoint or final/ being written), resumed with --resume auto
each time until it finishes, and its final weights compared with an uninterrupted run's, bit for bit.

    python scripts/soak.py --kills 50 [--ranks 2] [--seed 0] [--keep DIR]

With --ranks N > 1 the job runs under mpirun and each kill takes one random rank (the others are ended
by the job). Prints one line per kill and a summary; exits 1 unless every resumed run is identical.
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BINARY = Path(os.environ.get("LOGITFUSE_BIN", ROOT / "build" / "bin" / "logitfuse"))


def make_workspace(root):
    """Tokenizer, data, a student and a teacher (the e2e tests' tiny setting)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rng = random.Random(0)
    rows = []
    for _ in range(96):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        rows.append({"prompt": f"What is {a} plus {b}?", "response": f"{a} plus {b} is {a + b}."})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "corpus.txt").write_text("".join(r["prompt"] + " " + r["response"] + "\n" for r in rows))
    (root / "bpe").mkdir()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train([str(root / "corpus.txt")], trainers.BpeTrainer(
        vocab_size=260, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.save(str(root / "bpe" / "tokenizer.json"))
    (root / "bpe" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>",
                                                                    "pad_token": "<|endoftext|>"}))
    sizes = ["--hidden", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--intermediate", "64"]
    for name, arch, seed in (("student", "llama", "1"), ("teacher", "qwen2", "2")):
        subprocess.run([str(BINARY), "init-model", "--arch", arch, "--out", str(root / name), "--tokenizer",
                        str(root / "bpe"), "--seed", seed, *sizes], check=True, capture_output=True)


def recipe(root, out, ranks):
    path = Path(str(out) + ".yaml")
    path.write_text(f"""
run: {{name: soak, output_dir: {out}, seed: 5, device: cpu}}
student: {{path: {root}/student, dtype: fp32, chat_template: chatml}}
teachers:
  - {{name: t, path: {root}/teacher, dtype: fp32, chat_template: chatml}}
data: {{train: {root}/train.jsonl, max_length: 48, max_prompt_length: 24}}
loss: {{distill_weight: 0.5, token: {{type: uld}}, graph: {{type: gld, top_k: 5}}}}
train: {{micro_batch_size: {4 // ranks}, grad_accum: 2, lr: 3.0e-3, precision: fp32, max_steps: 16}}
checkpoint: {{every_steps: 2, keep_last: 2}}
log: {{every_steps: 1}}
""")
    return path


def command(path, ranks, resume):
    args = [str(BINARY), "train", str(path), *(["--resume", "auto"] if resume else [])]
    if ranks == 1:
        return args
    return ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", str(ranks),
            "--mca", "btl_vader_single_copy_mechanism", "none", "-x", "OMP_NUM_THREADS=1", *args]


def rank_pids(job_pid):
    """The logitfuse processes of a job: the process itself, or mpirun's children."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if (int(entry.name) == job_pid or parent == job_pid) and b"logitfuse" in cmd and b"mpirun" not in cmd:
            pids.append(int(entry.name))
    return pids


def staging(out):
    """Staged writes (of a checkpoint, final/ or a file) in the output directory."""
    return {p for root in (out / "checkpoints", out) if root.exists() for p in root.iterdir() if ".tmp" in p.name}


def writing(out, before):
    """A checkpoint or final/ being staged right now (not what a killed run left behind)."""
    return bool(staging(out) - before)


def weights(model_dir):
    from safetensors.torch import load_file
    return load_file(str(model_dir / "model.safetensors"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary directory)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = args.keep or Path(tempfile.mkdtemp(prefix="logitfuse-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        make_workspace(work)
        ref = work / "ref"
        start = time.time()
        subprocess.run(command(recipe(work, ref, args.ranks), args.ranks, False), check=True, capture_output=True)
        duration = time.time() - start
        print(f"soak: uninterrupted run of 16 steps on {args.ranks} rank(s): {duration:.1f} s")

        out = work / "soak"
        path = recipe(work, out, args.ranks)
        kills, aimed, runs = 0, 0, 0
        while kills < args.kills:
            if (out / "final" / "config.json").exists():
                # Finished before all kills were spent: compare, then start over for the rest.
                if not compare(ref, out, kills):
                    return 1
                shutil.rmtree(out)
            runs += 1
            job = subprocess.Popen(command(path, args.ranks, resume=True), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, start_new_session=True)
            aim = rng.random() < 0.5
            left = staging(out)
            deadline = time.time() + rng.uniform(0.3, duration)
            while job.poll() is None and time.time() < deadline and not (aim and writing(out, left)):
                time.sleep(0.002)
            if job.poll() is not None:
                err = job.stderr.read().decode()
                if job.returncode != 0:
                    print(f"soak: run {runs} failed on its own (exit {job.returncode}):\n{err[-2000:]}")
                    return 1
                continue
            targets = rank_pids(job.pid)
            victim = rng.choice(targets) if targets else job.pid
            during = writing(out, left)
            os.kill(victim, signal.SIGKILL)
            try:
                job.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(job.pid, signal.SIGKILL)
                print("soak: the job hung after a kill")
                return 1
            # A scheduler starts the next attempt once every process of the last one is gone.
            gone_by = time.time() + 60
            while any(Path(f"/proc/{pid}").exists() for pid in targets) and time.time() < gone_by:
                time.sleep(0.01)
            kills += 1
            aimed += during
            steps = max((json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()
                         if l.strip()), default=0) if (out / "metrics.jsonl").exists() else 0
            print(f"soak: kill {kills}: after step {steps}{' while writing a checkpoint or final/' if during else ''}")
        # Finish the last run without killing it.
        subprocess.run(command(path, args.ranks, resume=True), check=True, capture_output=True)
        ok = compare(ref, out, kills)
        print(f"soak: {kills} kills ({aimed} while writing), {runs} runs: final weights "
              f"{'bit-identical' if ok else 'DIFFER'} to the uninterrupted run")
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def compare(ref, out, kills):
    import torch
    a, b = weights(ref / "final"), weights(out / "final")
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if not same:
        print(f"soak: after {kills} kills the final weights differ from the uninterrupted run")
    left = staging(out)
    if left:
        print(f"soak: a finished run left unfinished writes behind: {sorted(p.name for p in left)}")
    return same and not left


if __name__ == "__main__":
    sys.exit(main())
