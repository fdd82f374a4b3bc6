"""Hugging Face checkpoints load as the Hub serves them: the `config.json` of real checkpoints of every
supported family (tests/fixtures/hub_configs and paper_models, bookkeeping fields and all), shrunk in
their sizes only and given random weights by transformers, give transformers' logits; a field that
changes the forward pass in a way logitfuse does not implement still exits 2 naming it."""
import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from conftest import ROOT
from test_model_logits import SEQUENCES, TOL, logitfuse_logits, reference_logits, refused_logits, write_ids

FIXTURES = ROOT / "tests" / "fixtures"
# Gemma's configs need their layer_types and text_config shrunk too: tests/oracle/test_gemma.py.
CONFIGS = {p.stem: p for p in (FIXTURES / "hub_configs").glob("*.json") if not p.stem.startswith("gemma-")}
CONFIGS.update({p.parent.name: p for p in (FIXTURES / "paper_models").glob("*/config.json")})


def shrink(config):
    """The same config with small sizes: 2 layers, heads of 8 channels in the same query/key-value
    ratio; every other field (RoPE, windows, token ids, bookkeeping) as it is."""
    c = dict(config)
    heads = c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or heads
    ratio = heads // kv
    c["num_key_value_heads"] = 2 if ratio <= 4 else 1
    c["num_attention_heads"] = ratio * c["num_key_value_heads"]
    # A head_dim that differs from hidden_size / heads (Mistral-Small) keeps differing.
    decoupled = c.get("head_dim") is not None and c["head_dim"] * heads != c["hidden_size"]
    if c.get("head_dim") is not None:
        c["head_dim"] = 8
    c["hidden_size"] = (16 if decoupled else 8) * c["num_attention_heads"]
    c.update(intermediate_size=64, num_hidden_layers=2)
    # LongRoPE has one factor per rotated frequency: keep evenly spaced real factors, as many as the
    # shrunk head rotates.
    rope = c.get("rope_scaling") or {}
    if "short_factor" in rope:
        head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
        keep = int(head_dim * c.get("partial_rotary_factor", 1.0)) // 2
        step = len(rope["short_factor"]) // keep
        c["rope_scaling"] = {**rope, **{k: rope[k][::step][:keep] for k in ("short_factor", "long_factor")}}
    return c


def compare_logits(name, config, tmp_path, logitfuse, sequences):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.json").write_text(json.dumps(config, indent=2))
    hf_config = AutoConfig.from_pretrained(tmp_path / "config")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(tmp_path / "model")
    # The weights transformers wrote, next to the config.json as the Hub serves it.
    (tmp_path / "model" / "config.json").write_text(json.dumps(config, indent=2))
    write_ids(tmp_path / "ids.jsonl", sequences)
    ours = logitfuse_logits(logitfuse, tmp_path / "model", tmp_path / "ids.jsonl", tmp_path / "out.safetensors",
                            "--dtype", "fp32")
    for ids, got in zip(sequences, ours):
        diff = (got - reference_logits(model, ids)).abs().max().item()
        assert diff < TOL, f"{name}: max |logits diff| {diff:.3g} on a sequence of {len(ids)}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_real_config_loads_as_it_is_and_gives_transformers_logits(name, tmp_path, logitfuse):
    compare_logits(name, shrink(json.loads(CONFIGS[name].read_text())), tmp_path, logitfuse, SEQUENCES)


def test_longrope_beyond_the_original_context_uses_the_long_factors(tmp_path, logitfuse):
    # Phi-3.5's LongRoPE with its original context cut to 6 positions: every sequence here reaches
    # past it (transformers picks the long set per forward call from the largest position), and the
    # attention factor follows from max_position_embeddings / original_max_position_embeddings.
    config = shrink(json.loads(CONFIGS["phi-3.5-mini-instruct"].read_text()))
    config["original_max_position_embeddings"] = 6
    compare_logits("phi-3.5 long", config, tmp_path, logitfuse, [s for s in SEQUENCES if len(s) > 6])


@pytest.mark.parametrize("field, value", [("quantization_config", {"quant_method": "gptq", "bits": 4}),
                                          ("num_local_experts", 8), ("final_logit_softcapping", 30.0)])
def test_a_field_that_changes_the_forward_pass_is_refused_by_name(field, value, tmp_path, logitfuse):
    config = shrink(json.loads(CONFIGS["tinyllama-1.1b-chat-v1.0"].read_text()))
    config[field] = value
    stderr = refused_logits(config, [1, 2], tmp_path, logitfuse)
    assert f"field '{field}'" in stderr, stderr
