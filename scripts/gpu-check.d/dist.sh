#!/usr/bin/env bash
# GPU check of the NCCL communicator at world size 1 (issues 6 and 15): a TCPStore rendezvous and
# ProcessGroupNCCL under torchrun's environment, a 3-step training run with dist.backend=nccl, a
# checkpoint (NCCL barriers) and a resume from it; once at ZeRO-1, once at ZeRO-3 with a sharded
# teacher (gathers and reduce-scatters through NCCL, the model written unit by unit). Run from the
# repository root on the GPU machine after the build; $BUILD is the build directory. Finishes in
# well under 2 minutes.
set -euo pipefail
BUILD=${BUILD:-build-gpu}
BIN=$BUILD/bin/logitfuse
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$BIN" version | grep -q "nccl (c10d) built" || { echo "dist.sh: $BIN was built without NCCL"; exit 1; }
python3 - "$work" <<'PY'
import json, random, sys
from pathlib import Path
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
root = Path(sys.argv[1])
rng = random.Random(0)
rows = []
for _ in range(32):
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    rows.append({"prompt": f"What is {a} plus {b}?", "response": f"{a} plus {b} is {a + b}."})
(root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
(root / "corpus.txt").write_text("".join(r["prompt"] + " " + r["response"] + "\n" for r in rows))
(root / "bpe").mkdir()
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train([str(root / "corpus.txt")], trainers.BpeTrainer(vocab_size=260, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
tok.save(str(root / "bpe" / "tokenizer.json"))
(root / "bpe" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
PY
"$BIN" init-model --arch llama --out "$work/student" --tokenizer "$work/bpe" --seed 1 \
  --hidden 32 --layers 2 --heads 4 --kv-heads 2 --intermediate 64 >/dev/null
export RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29511
for zero in 1 3; do
  run=$work/zero$zero
  mkdir -p "$run"
  teachers=""
  [ "$zero" = 3 ] && teachers="teachers: [{name: t, path: $work/student, dtype: bf16, chat_template: chatml, placement: shard}]"
  cat > "$run/recipe.yaml" <<YAML
run: {name: nccl, output_dir: $run/run, seed: 5, device: cuda}
student: {path: $work/student, dtype: fp32, chat_template: chatml}
$teachers
data: {train: $work/train.jsonl, max_length: 48, max_prompt_length: 24}
train: {micro_batch_size: 2, grad_accum: 2, lr: 1.0e-3, precision: bf16, max_steps: 3}
checkpoint: {every_steps: 2}
log: {every_steps: 1}
dist: {backend: nccl, zero: $zero, timeout_s: 60}
YAML
  timeout 60 "$BIN" train "$run/recipe.yaml" 2> "$run/log" || { cat "$run/log"; exit 1; }
  grep -q "communicator: nccl (cuda:0)" "$run/log" || { cat "$run/log"; echo "dist.sh: NCCL communicator not used"; exit 1; }
  if [ "$zero" = 3 ]; then
    grep -q "student sharded over 1 rank(s) (ZeRO-3)" "$run/log" || { cat "$run/log"; echo "dist.sh: student not sharded"; exit 1; }
    grep -q "teacher t: sharded over 1 rank(s)" "$run/log" || { cat "$run/log"; echo "dist.sh: teacher not sharded"; exit 1; }
  fi
  [ "$(grep -c '"loss"' "$run/run/metrics.jsonl")" = 3 ] || { cat "$run/run/metrics.jsonl"; exit 1; }
  [ -f "$run/run/checkpoints/step_000002/optimizer.rank00000.safetensors" ] || { echo "dist.sh: no optimizer shard"; exit 1; }
  # Resume from the step-2 checkpoint into a fresh output directory: the same final weights.
  mkdir -p "$run/again/checkpoints" && cp -r "$run/run/checkpoints/step_000002" "$run/again/checkpoints/"
  timeout 60 "$BIN" train "$run/recipe.yaml" "run.output_dir=$run/again" --resume auto 2> "$run/log2" || { cat "$run/log2"; exit 1; }
  python3 - "$run" "$zero" <<'PY'
import json, sys
from safetensors.torch import load_file
a = load_file(f"{sys.argv[1]}/run/final/model.safetensors")
b = load_file(f"{sys.argv[1]}/again/final/model.safetensors")
worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
peak = max(json.loads(l).get("peak_memory_bytes", 0) for l in open(f"{sys.argv[1]}/run/metrics.jsonl"))
print(f"dist.sh: NCCL world size 1, ZeRO-{sys.argv[2]}, 3 steps, resume from step 2: final weights differ by {worst:.3g}; "
      f"peak GPU memory {peak / 2**20:.1f} MiB")
sys.exit(0 if worst < 1e-3 else 1)
PY
done
