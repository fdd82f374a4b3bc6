"""LoRA students and adapters against PEFT (peft==0.21.2), which nobody here wrote: its adapters
applied by logitfuse give its logits; `merge --lora` gives its merge_and_unload; three AdamW steps of
LoRA SFT + KL from the same initial adapters give what PEFT and PyTorch autograd give; what `train`
writes loads in PEFT. Then resume after a kill, two ranks against one, teachers and decoding models
that are adapters, and the input errors."""
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import BINARY
from test_train_e2e import assert_same_weights, metrics, recipe, workspace  # noqa: F401 (workspace is a fixture)

peft = pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peft_adapter(base_dir, out, targets, r=4, alpha=8, rslora=False, seed=0, scale_b=0.05):
    """A PEFT adapter over `base_dir` with non-zero B (so that it changes the model), saved to `out`."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets,
                                             use_rslora=rslora, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, scale_b)
    model.save_pretrained(out)
    return out


def peft_logits(base_dir, adapter, ids):
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def our_logits(logitfuse, tmp_path, model_dir, ids, adapter=None):
    (tmp_path / "ids.jsonl").write_text(json.dumps(ids) + "\n")
    out = tmp_path / "logits.safetensors"
    logitfuse("logits", "--model", model_dir, *(["--adapter", adapter] if adapter else []), "--input",
              tmp_path / "ids.jsonl", "--out", out)
    return load_file(str(out))["logits.0"]


IDS = [5, 9, 33, 7, 120, 3, 41, 8]


@pytest.mark.parametrize("arch,targets,rslora", [
    ("student", ALL, False),                          # llama
    ("teacher_a", ["q_proj", "v_proj", "down_proj"], True),  # qwen2 (biases on q/k/v), rsLoRA
    ("teacher_b", ["qkv_proj", "gate_up_proj", "o_proj"], False),  # phi3's fused projections
])
def test_adapter_logits_equal_peft(workspace, tmp_path, logitfuse, arch, targets, rslora):
    adapter = peft_adapter(workspace / arch, tmp_path / "adapter", targets, rslora=rslora)
    vocab = AutoConfig.from_pretrained(workspace / arch).vocab_size
    ids = [i % vocab for i in IDS]
    want = peft_logits(workspace / arch, adapter, ids)
    got = our_logits(logitfuse, tmp_path, workspace / arch, ids, adapter)
    plain = our_logits(logitfuse, tmp_path, workspace / arch, ids)
    assert (plain - want).abs().max() > 1e-2, "the adapter should change the logits"
    # fp32 on both sides; the same products in another order differ by rounding, far below 1e-4.
    assert (got - want).abs().max() < 1e-4


def test_merge_lora_equals_merge_and_unload_and_keeps_the_shard_layout(workspace, tmp_path, logitfuse):
    base = tmp_path / "base"
    AutoModelForCausalLM.from_pretrained(workspace / "student").save_pretrained(base, max_shard_size="20KB")
    shutil.copy(workspace / "student" / "tokenizer.json", base)
    assert (base / "model.safetensors.index.json").exists()
    one = peft_adapter(base, tmp_path / "one", ALL, seed=1)
    logitfuse("merge", "--base", base, "--lora", one, "--out", tmp_path / "merged")
    want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), one).merge_and_unload()
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert sorted(p.name for p in (tmp_path / "merged").glob("*.safetensors")) == sorted(p.name for p in base.glob("*.safetensors"))
    assert (tmp_path / "merged" / "tokenizer.json").exists()
    w, g = want.state_dict(), got.state_dict()
    assert w.keys() == g.keys()
    assert max((w[k] - g[k]).abs().max().item() for k in w) <= 1e-6
    # Two adapters with weights: W + Σ weight_i · s_i · B_i A_i.
    two = peft_adapter(base, tmp_path / "two", ["q_proj", "down_proj"], r=2, alpha=6, seed=2)
    logitfuse("merge", "--base", base, "--lora", one, "--lora", two, "--weight", 0.5, "--weight", 2.0,
              "--out", tmp_path / "merged2")
    both = AutoModelForCausalLM.from_pretrained(tmp_path / "merged2", dtype=torch.float32).state_dict()
    plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).state_dict()
    a1, a2 = load_file(str(one / "adapter_model.safetensors")), load_file(str(two / "adapter_model.safetensors"))
    for k in plain:
        expect = plain[k].clone()
        module = "base_model.model." + k[:-len(".weight")]
        for adapter, weight, scale in ((a1, 0.5, 8 / 4), (a2, 2.0, 6 / 2)):
            if module + ".lora_A.weight" in adapter:
                expect = expect + weight * scale * adapter[module + ".lora_B.weight"] @ adapter[module + ".lora_A.weight"]
        assert (both[k] - expect).abs().max() <= 1e-6, k


def lora_sft_kl_recipe(root, tmp_path, init):
    examples = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()[:4]]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    text = f"""
run: {{name: t, output_dir: {tmp_path}/run, seed: 5, device: cpu}}
student: {{path: {root}/student, adapter: {init}, dtype: fp32, chat_template: plain, lora: {{r: 4, alpha: 8, dropout: 0.0}}}}
teachers:
  - {{name: b, path: {root}/teacher_b, dtype: fp32, chat_template: plain}}
data: {{train: {tmp_path}/data.jsonl, max_length: 48, max_prompt_length: 24}}
loss: {{distill_weight: 0.5, token: {{type: kl}}, graph: {{type: none}}}}
train: {{micro_batch_size: 4, grad_accum: 1, lr: 1.0e-2, precision: fp32, max_steps: 3, schedule: constant,
        weight_decay: 0.01, clip_grad: 0}}
checkpoint: {{every_steps: 0}}
log: {{every_steps: 1}}
"""
    (tmp_path / "r.yaml").write_text(text)
    return tmp_path / "r.yaml", examples


def test_three_adamw_steps_of_lora_sft_and_kl_equal_peft_and_autograd(workspace, tmp_path, logitfuse):
    """The student (Llama) and teacher b (Phi-3) share a tokenizer, so the KL is over the same ids at the
    same positions: L = ½ · CE + ½ · KL(p_T ‖ p_S), each summed over the response tokens and divided by
    their count (method.md §1), with `plain` prompts (prompt, then response and EOS)."""
    from tokenizers import Tokenizer
    init = peft_adapter(workspace / "student", tmp_path / "init", ALL)
    path, examples = lora_sft_kl_recipe(workspace, tmp_path, init)
    logitfuse("train", path)
    got = load_file(str(tmp_path / "run" / "final" / "adapter_model.safetensors"))

    tok = Tokenizer.from_file(str(workspace / "student" / "tokenizer.json"))
    eos = tok.token_to_id(json.loads((workspace / "student" / "tokenizer_config.json").read_text())["eos_token"])
    seqs = [(tok.encode(e["prompt"], add_special_tokens=False).ids,
             tok.encode(e["response"], add_special_tokens=False).ids + [eos]) for e in examples]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(workspace / "student", dtype=torch.float32),
                                      init, is_trainable=True)
    teacher = AutoModelForCausalLM.from_pretrained(workspace / "teacher_b", dtype=torch.float32).eval()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.01)
    vocab = tok.get_vocab_size()
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        ce = kl = 0.0
        n = 0
        for prompt, response in seqs:
            ids = torch.tensor([prompt + response])
            rows = slice(len(prompt) - 1, ids.shape[1] - 1)
            s = model(ids).logits[0, rows, :vocab]
            with torch.no_grad():
                t = teacher(ids).logits[0, rows, :vocab]
            ce = ce + torch.nn.functional.cross_entropy(s, ids[0, len(prompt):], reduction="sum")
            kl = kl + (t.softmax(-1) * (t.log_softmax(-1) - s.log_softmax(-1))).sum()
            n += len(response)
        loss = 0.5 * ce / n + 0.5 * kl / n
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    want = {k.replace(".default", ""): v.detach() for k, v in model.state_dict().items() if "lora_" in k}
    assert got.keys() == want.keys()
    logged = [m["loss"] for m in metrics(tmp_path / "run") if "loss" in m]
    assert logged == pytest.approx(losses, rel=1e-5)
    start = load_file(str(init / "adapter_model.safetensors"))
    for k in got:
        size = want[k].abs().max()
        assert (start[k] - want[k]).abs().max() > 1e-2 * size, f"{k} did not move"
        # Relative to the tensor's size: float32 sums in another order over ~100 positions and 3
        # Adam steps (each moves a weight by at most lr) stay orders of magnitude below 1e-5.
        assert (got[k] - want[k]).abs().max() <= 1e-5 * size, k


def lora_overrides(**extra):
    return {"student.lora.r": 4, "student.lora.alpha": 8, **extra}


def test_lora_training_writes_a_peft_adapter_that_peft_loads_and_merges(workspace, tmp_path, logitfuse):
    path, overrides = recipe(workspace, tmp_path / "run", **lora_overrides(**{"train.max_steps": 4, "checkpoint.every_steps": 0}))
    logitfuse("train", path, *overrides)
    final = tmp_path / "run" / "final"
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["r"] == 4
    assert config["lora_alpha"] == 8 and config["bias"] == "none" and config["use_rslora"] is False
    assert config["base_model_name_or_path"] == str(workspace / "student")
    assert sorted(config["target_modules"]) == sorted(ALL)
    tensors = load_file(str(final / "adapter_model.safetensors"))
    assert len(tensors) == 2 * 7 * 2  # 7 modules × 2 layers, A and B
    assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, 32)
    assert tensors["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"].shape == (32, 4)
    assert any(t.abs().max() > 0 for k, t in tensors.items() if "lora_B" in k), "B never moved"
    ids = [5, 9, 33, 7, 120, 3]
    want = peft_logits(workspace / "student", final, ids)
    assert (our_logits(logitfuse, tmp_path, workspace / "student", ids, final) - want).abs().max() < 1e-4
    logitfuse("merge", "--base", workspace / "student", "--lora", final, "--out", tmp_path / "merged")
    assert (our_logits(logitfuse, tmp_path, tmp_path / "merged", ids) - want).abs().max() < 1e-4


@pytest.mark.parametrize("name,extra", [
    ("kl-span", {"loss.token.type": "kl", "loss.token.top_k": 6, "alignment.positions": "span", "loss.graph.type": "none"}),
    ("on-policy", {"loss.on_policy.weight": 0.5, "loss.on_policy.max_new_tokens": 6}),
    ("sharded-teacher", {"teachers.0.placement": "shard", "train.activation_checkpointing": "true"}),
    ("bf16-base", {"student.dtype": "bf16", "train.precision": "bf16"}),
])
def test_lora_trains_with_every_part_of_the_trainer(workspace, tmp_path, logitfuse, name, extra):
    path, overrides = recipe(workspace, tmp_path / "run", **lora_overrides(**{"train.max_steps": 3, "checkpoint.every_steps": 0,
                                                                               "data.eval": "null", **extra}))
    logitfuse("train", path, *overrides)
    steps = [m for m in metrics(tmp_path / "run") if "loss" in m]
    assert len(steps) == 3 and all(m["loss"] == m["loss"] and m["grad_norm"] > 0 for m in steps)
    adapters = load_file(str(tmp_path / "run" / "final" / "adapter_model.safetensors"))
    assert all(t.dtype == torch.float32 for t in adapters.values())
    assert any(t.abs().max() > 0 for k, t in adapters.items() if "lora_B" in k)


def test_logits_cache_teachers_train_a_lora_student_like_online_ones(workspace, tmp_path, logitfuse):
    common = lora_overrides(**{"loss.token.type": "kl", "loss.token.top_k": 6, "loss.graph.type": "none",
                               "train.max_steps": 2, "checkpoint.every_steps": 0, "data.eval": "null"})
    path, overrides = recipe(workspace, tmp_path / "online", **common)
    logitfuse("train", path, *overrides)
    cached = {**common, "teachers.0.logits_cache": tmp_path / "cache_a", "teachers.1.logits_cache": tmp_path / "cache_b"}
    path, overrides = recipe(workspace, tmp_path / "cached", **cached)
    logitfuse("cache-logits", path, *overrides)
    logitfuse("train", path, *overrides)
    online, offline = metrics(tmp_path / "online"), metrics(tmp_path / "cached")
    assert [m["loss"] for m in online if "loss" in m] == pytest.approx([m["loss"] for m in offline if "loss" in m], rel=1e-4)


def kill_after(out, path, overrides, steps, sig):
    """Starts `train` and sends `sig` once `steps` steps are logged."""
    proc = subprocess.Popen([str(BINARY), "train", path, *overrides], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        log = Path(out) / "metrics.jsonl"
        if log.exists() and sum(1 for line in log.read_text().splitlines() if '"loss"' in line) >= steps:
            break
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    return proc.returncode


def test_kill_and_resume_of_a_lora_run_is_bit_identical(workspace, tmp_path, logitfuse):
    """With dropout and activation checkpointing, so that the recomputed layers must draw the same
    dropout masks and the resume must continue the random stream."""
    extra = lora_overrides(**{"student.lora.dropout": 0.1, "train.activation_checkpointing": "true",
                              "train.max_steps": 10, "checkpoint.every_steps": 2})
    path, overrides = recipe(workspace, tmp_path / "ref", **extra)
    logitfuse("train", path, *overrides)
    path2, overrides2 = recipe(workspace, tmp_path / "cut", **extra)
    assert kill_after(tmp_path / "cut", path2, overrides2, 5, signal.SIGKILL) == -signal.SIGKILL
    assert not (tmp_path / "cut" / "final").exists()
    logitfuse("train", path2, *overrides2, "--resume", "auto")
    assert_same_weights(tmp_path / "ref" / "final", tmp_path / "cut" / "final")
    ref, cut = metrics(tmp_path / "ref"), metrics(tmp_path / "cut")
    last = {m["step"]: m["loss"] for m in cut if "loss" in m}
    assert all(last[m["step"]] == m["loss"] for m in ref if "loss" in m)
    # Checkpoints hold the adapters and their optimizer state, not the base.
    step = sorted((tmp_path / "cut" / "checkpoints").glob("step_*"))[-1]
    assert (step / "adapter_model.safetensors").exists() and not (step / "model.safetensors").exists()
    state = load_file(str(step / "optimizer.rank00000.safetensors"))
    adapters = load_file(str(step / "adapter_model.safetensors"))
    assert state["exp_avg"].numel() == sum(t.numel() for t in adapters.values())


def test_teacher_with_an_adapter_equals_the_merged_teacher(workspace, tmp_path, logitfuse):
    adapter = peft_adapter(workspace / "teacher_b", tmp_path / "tb_adapter", ["qkv_proj", "down_proj"], scale_b=0.5)
    logitfuse("merge", "--base", workspace / "teacher_b", "--lora", adapter, "--out", tmp_path / "tb_merged")
    common = {"train.max_steps": 3, "checkpoint.every_steps": 0, "data.eval": "null"}
    runs = {}
    for name, teacher in (("adapter", {"teachers.1.adapter": adapter}), ("merged", {"teachers.1.path": tmp_path / "tb_merged"}),
                          ("plain", {})):
        path, overrides = recipe(workspace, tmp_path / name, **common, **teacher)
        logitfuse("train", path, *overrides)
        runs[name] = [m for m in metrics(tmp_path / name) if "loss" in m]
    # The merge rounds W + s·B A once in float32: the terms agree to rounding, far inside 1e-5.
    for term in ("loss", "token", "graph"):
        assert runs["adapter"][0][term] == pytest.approx(runs["merged"][0][term], rel=1e-5), term
    # The teacher's graph term changes with its adapter by far more than that.
    assert abs(runs["adapter"][0]["graph"] / runs["plain"][0]["graph"] - 1) > 1e-2


def adapter_and_merged_configs(workspace, tmp_path, logitfuse, question, prompts, generation):
    """A PEFT adapter over the student and the same adapter merged, each as a generate config over
    `prompts` prompts; returns {"adapter": path, "merged": path} (outputs: tmp_path/<name>.jsonl)."""
    adapter = peft_adapter(workspace / "student", tmp_path / "adapter", ALL, scale_b=0.5)
    logitfuse("merge", "--base", workspace / "student", "--lora", adapter, "--out", tmp_path / "merged")
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": question.format(a)}) + "\n" for a in range(prompts)))
    configs = {}
    for name, model in (("adapter", f"{{path: {workspace}/student, adapter: {adapter}, dtype: fp32}}"),
                        ("merged", f"{{path: {tmp_path}/merged, dtype: fp32}}")):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(f"model: {model}\ninput: {tmp_path}/prompts.jsonl\noutput: {tmp_path}/{name}.jsonl\n"
                                 f"generation: {generation}\n")
    return configs


def generated_ids(logitfuse, config):
    logitfuse("generate", config)
    return [json.loads(line) for line in Path(config).with_suffix(".jsonl").read_text().splitlines()]


def test_generate_with_an_adapter_equals_the_merged_model(workspace, tmp_path, logitfuse):
    configs = adapter_and_merged_configs(workspace, tmp_path, logitfuse, "What is {} plus 3?", 4, "{max_new_tokens: 12}")
    outputs = {name: [w["completion_ids"] for w in generated_ids(logitfuse, config)] for name, config in configs.items()}
    assert outputs["adapter"] == outputs["merged"]


def test_serve_with_an_adapter_answers_as_generate_with_the_merged_model(workspace, tmp_path, logitfuse):
    import urllib.request
    from serve_client import serving
    configs = adapter_and_merged_configs(workspace, tmp_path, logitfuse, "What is {} plus 5?", 3,
                                         "{max_new_tokens: 8, chat_template: plain}")
    want = generated_ids(logitfuse, configs["merged"])
    with serving(BINARY, configs["adapter"], "serve.model_name=tiny") as server:
        for w in want:
            body = json.dumps({"model": "tiny", "prompt": w["prompt_ids"], "max_tokens": 8, "temperature": 0,
                               "return_token_ids": True}).encode()
            request = urllib.request.Request(server.url + "/v1/completions", data=body,
                                             headers={"Content-Type": "application/json"})
            answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
            assert answer["choices"][0]["token_ids"] == w["completion_ids"], w["prompt"]


@pytest.mark.parametrize("override,needle", [
    ({"student.lora.r": 0}, "student.lora.r"),
    ({"student.lora.target_modules": "[q_proj, qkv_projection]"}, "student.lora.target_modules: 'qkv_projection'"),
    ({"student.lora.target_modules": "[embed_tokens]"}, "is the embedding"),
    ({"student.lora.r": 4, "dist.zero": 3}, "not yet available"),
    ({"student.lora.dropout": 1.0}, "student.lora.dropout"),
])
def test_bad_lora_recipes_are_one_line_errors(workspace, tmp_path, logitfuse, override, needle):
    path, overrides = recipe(workspace, tmp_path / "run", **override)
    proc = logitfuse("train", path, *overrides, expect=2)
    assert needle in proc.stderr, proc.stderr
    assert not (tmp_path / "run" / "final").exists()


def test_an_adapter_of_another_base_is_refused_naming_the_tensor(workspace, tmp_path, logitfuse):
    other = peft_adapter(workspace / "teacher_a", tmp_path / "other", ["q_proj"])  # qwen2's; Phi-3 has qkv_proj
    (tmp_path / "ids.jsonl").write_text("[1, 2, 3]\n")
    proc = logitfuse("logits", "--model", workspace / "teacher_b", "--adapter", other, "--input", tmp_path / "ids.jsonl",
                     "--out", tmp_path / "x.safetensors", expect=2)
    assert "q_proj" in proc.stderr and "does not have" in proc.stderr, proc.stderr
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))
    proc = logitfuse("logits", "--model", workspace / "teacher_a", "--adapter", other, "--input", tmp_path / "ids.jsonl",
                     "--out", tmp_path / "x.safetensors", expect=2)
    assert "has shape" in proc.stderr and "r=8" in proc.stderr, proc.stderr
    (other / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    proc = logitfuse("logits", "--model", workspace / "teacher_a", "--adapter", other, "--input", tmp_path / "ids.jsonl",
                     "--out", tmp_path / "x.safetensors", expect=2)
    assert "DoRA" in proc.stderr and "not yet available" in proc.stderr, proc.stderr


def test_dlf_experts_that_are_adapters_over_one_base_decode_like_merged_experts(workspace, tmp_path, logitfuse):
    """Dynamic Logit Fusion with two experts given as adapters over the base (one copy of the base in
    memory) against the same experts merged into models of their own."""
    adapters = [peft_adapter(workspace / "student", tmp_path / f"a{i}", ALL, seed=10 + i, scale_b=0.5) for i in range(2)]
    for i, adapter in enumerate(adapters):
        logitfuse("merge", "--base", workspace / "student", "--lora", adapter, "--out", tmp_path / f"m{i}")
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"What is {a} plus 4?"}) + "\n" for a in range(4)))
    outputs = {}
    for name, experts in (("adapters", [f"{{name: e{i}, path: {workspace}/student, adapter: {a}, dtype: fp32}}"
                                        for i, a in enumerate(adapters)]),
                          ("merged", [f"{{name: e{i}, path: {tmp_path}/m{i}, dtype: fp32}}" for i in range(2)])):
        config = tmp_path / f"{name}.yaml"
        expert_lines = "".join(f"    - {e}\n" for e in experts)
        config.write_text(f"""models:
  large: {{path: {workspace}/teacher_b, dtype: fp32}}
  base: {{path: {workspace}/student, dtype: fp32}}
  experts:
{expert_lines}fusion: {{strategy: dynamic}}
input: {tmp_path}/prompts.jsonl
output: {tmp_path}/{name}.jsonl
generation: {{max_new_tokens: 8}}
""")
        proc = logitfuse("generate", config)
        if name == "adapters":
            assert proc.stderr.count("weights shared, not copied") == 2, proc.stderr
        outputs[name] = [json.loads(line)["completion_ids"] for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert outputs["adapters"] == outputs["merged"]
