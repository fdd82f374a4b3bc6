"""logitfuse's transformer against Hugging Face transformers: logits of every supported family,
incremental decoding through the KV cache, and checkpoints written by logitfuse loaded back."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

TOL = 1e-4  # fp32, max absolute difference of logits
# scripts/gpu-check.sh sets LOGITFUSE_TEST_DEVICES=cpu,cuda on the GPU machine.
DEVICES = os.environ.get("LOGITFUSE_TEST_DEVICES", "cpu").split(",")

BASE = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
            num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256)

FAMILIES = {
    "llama-gqa": ("llama", dict()),
    "llama-tied-bias": ("llama", dict(tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
                                      num_key_value_heads=6)),
    "llama3-rope-scaling": ("llama", dict(rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                        "original_max_position_embeddings": 16},
                                          rope_theta=500000.0)),
    "llama-linear-rope": ("llama", dict(rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "mistral-sliding": ("mistral", dict(sliding_window=5)),
    "qwen2-bias": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen3-qknorm": ("qwen3", dict(head_dim=16)),
    "phi3-fused": ("phi3", dict(pad_token_id=0, eos_token_id=1, bos_token_id=1)),
    "phi3-partial-sliding": ("phi3", dict(partial_rotary_factor=0.5, sliding_window=6, pad_token_id=0,
                                          eos_token_id=1, bos_token_id=1)),
}

SEQUENCES = [[5], [1, 2, 3, 4, 5, 6, 7], list(range(3, 96, 4)), [7] * 9 + [11, 13, 17, 19]]


def make_reference_model(model_type, overrides, out_dir, seed=0):
    config = AutoConfig.for_model(model_type, **{**BASE, **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():  # perturb every weight (norms and biases too) so each must be read right
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(out_dir)
    return model


def reference_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def write_ids(path, sequences):
    path.write_text("".join(json.dumps(s) + "\n" for s in sequences))


def refused_logits(config, ids, tmp_path, logitfuse):
    """`logitfuse logits` on a model of `config` (no weights needed): it must refuse with one line and
    exit 2, writing nothing. Returns its stderr."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    write_ids(tmp_path / "ids.jsonl", [ids])
    proc = logitfuse("logits", "--model", tmp_path / "model", "--input", tmp_path / "ids.jsonl",
                     "--out", tmp_path / "out.safetensors", expect=2)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out.safetensors").exists()
    return proc.stderr


def logitfuse_logits(logitfuse, model_dir, ids_file, out_file, *extra):
    logitfuse("logits", "--model", model_dir, "--input", ids_file, "--out", out_file, *extra)
    tensors = load_file(str(out_file))
    return [tensors[f"logits.{i}"] for i in range(len(tensors))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_logits_match_transformers(name, device, tmp_path, logitfuse):
    model_type, overrides = FAMILIES[name]
    model = make_reference_model(model_type, overrides, tmp_path / "model")
    write_ids(tmp_path / "ids.jsonl", SEQUENCES)
    ours = logitfuse_logits(logitfuse, tmp_path / "model", tmp_path / "ids.jsonl", tmp_path / "out.safetensors",
                            "--device", device)
    assert len(ours) == len(SEQUENCES)
    for ids, got in zip(SEQUENCES, ours):
        want = reference_logits(model, ids)
        assert got.shape == want.shape
        diff = (got - want).abs().max().item()
        assert diff < TOL, f"{name}: max |logits diff| {diff:.3g} on a sequence of {len(ids)}"


@pytest.mark.parametrize("name", ["llama-gqa", "mistral-sliding", "qwen3-qknorm", "phi3-partial-sliding"])
@pytest.mark.parametrize("chunk", [1, 4])
def test_kv_cache_decoding_matches_full_forward(name, chunk, tmp_path, logitfuse):
    model_type, overrides = FAMILIES[name]
    model = make_reference_model(model_type, overrides, tmp_path / "model")
    write_ids(tmp_path / "ids.jsonl", SEQUENCES)
    full = logitfuse_logits(logitfuse, tmp_path / "model", tmp_path / "ids.jsonl", tmp_path / "full.safetensors")
    incremental = logitfuse_logits(logitfuse, tmp_path / "model", tmp_path / "ids.jsonl", tmp_path / "inc.safetensors",
                                   "--decode-chunk", chunk)
    for ids, a, b in zip(SEQUENCES, full, incremental):
        assert (a - b).abs().max().item() < TOL
        assert (b - reference_logits(model, ids)).abs().max().item() < TOL


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "phi3"])
def test_init_model_loads_in_transformers(arch, tmp_path, logitfuse):
    out = tmp_path / arch
    # A small shard limit forces a sharded checkpoint with an index, as transformers writes them.
    logitfuse("init-model", "--arch", arch, "--out", out, "--vocab-size", 120, "--hidden", 32, "--layers", 2,
              "--heads", 4, "--kv-heads", 2, "--intermediate", 64, "--seed", 3, "--max-shard-size", "20KB")
    assert (out / "model.safetensors.index.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert model.config.model_type == arch
    write_ids(tmp_path / "ids.jsonl", SEQUENCES[:3])
    ours = logitfuse_logits(logitfuse, out, tmp_path / "ids.jsonl", tmp_path / "out.safetensors")
    for ids, got in zip(SEQUENCES[:3], ours):
        assert (got - reference_logits(model, ids)).abs().max().item() < TOL
    # The initialisation follows transformers' scheme: N(0, 0.02) matrices, unit norms.
    weight = model.model.layers[0].mlp.down_proj.weight
    assert abs(weight.std().item() - 0.02) < 0.004
    assert torch.all(model.model.norm.weight == 1)


def test_bf16_logits_close_to_transformers(tmp_path, logitfuse):
    model = make_reference_model("llama", {}, tmp_path / "model")
    write_ids(tmp_path / "ids.jsonl", SEQUENCES[1:3])
    ours = logitfuse_logits(logitfuse, tmp_path / "model", tmp_path / "ids.jsonl", tmp_path / "out.safetensors",
                            "--dtype", "bf16")
    reference = model.to(torch.bfloat16)
    for ids, got in zip(SEQUENCES[1:3], ours):
        want = reference_logits(reference, ids)
        assert got.dtype == torch.float32
        assert (got - want).abs().max().item() < 0.1  # bf16 rounding, not a different model


def test_bad_token_id_is_an_input_error(tmp_path, logitfuse):
    make_reference_model("llama", {}, tmp_path / "model")
    (tmp_path / "ids.jsonl").write_text("[1, 2]\n[3, 999]\n")
    proc = logitfuse("logits", "--model", tmp_path / "model", "--input", tmp_path / "ids.jsonl",
                     "--out", tmp_path / "out.safetensors", expect=2)
    assert "ids.jsonl:2" in proc.stderr and "999" in proc.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_unsupported_config_field_names_it(tmp_path, logitfuse):
    make_reference_model("llama", {}, tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config["hidden_act"] = "gelu"
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    (tmp_path / "ids.jsonl").write_text("[1, 2]\n")
    proc = logitfuse("logits", "--model", tmp_path / "model", "--input", tmp_path / "ids.jsonl",
                     "--out", tmp_path / "out.safetensors", expect=2)
    assert "hidden_act" in proc.stderr
    config["hidden_act"] = "silu"
    config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    proc = logitfuse("logits", "--model", tmp_path / "model", "--input", tmp_path / "ids.jsonl",
                     "--out", tmp_path / "out.safetensors", expect=2)
    assert "rope_parameters" in proc.stderr and "yarn" in proc.stderr
