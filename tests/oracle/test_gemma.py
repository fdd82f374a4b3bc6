"""The Gemma 2 / Gemma 3 text family against transformers: the Hub's configs (Gemma 3 270M, 1B, 4B
through its multimodal config, Gemma 2 2B) shrunk and filled with random weights, soft-capping that
bites, checkpoints logitfuse writes and merges, and fields logitfuse does not implement refused by name.
The real pretrained Gemma-3-270M is in test_real_models.py."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

from conftest import ROOT
from test_model_logits import TOL, logitfuse_logits, reference_logits, refused_logits, write_ids

HUB = ROOT / "tests" / "fixtures" / "hub_configs"
# Long enough that a window of 4 slides many times; the ids fit the shrunk vocabulary.
SEQUENCES = [[2], [2, 5, 9, 11, 40, 7, 3, 8, 8, 100], [2] + list(range(3, 300, 7)), [2] + [17] * 12 + [5, 6]]


def shrink(config, layers=6, window=4):
    """Hub config with small sizes: 6 layers (Gemma 3's pattern of 5 sliding + 1 full; Gemma 2's
    alternation), a window of 4, heads of 8 channels in the same query/key-value ratio, a vocabulary of
    320. Every other field (query_pre_attn_scalar, RoPE per layer type, soft-capping) as served."""
    c = dict(config)
    heads, kv = c.get("num_attention_heads", 8), c.get("num_key_value_heads", 4)
    c["num_key_value_heads"] = 1 if kv == 1 else 2
    c["num_attention_heads"] = max(heads // max(kv, 1), 1) * c["num_key_value_heads"]
    c.update(head_dim=8, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, vocab_size=320,
             sliding_window=window)
    if "layer_types" in c:
        c["layer_types"] = c["layer_types"][:layers]
    return c


def random_reference(text_config, tmp_path, scale=0.05):
    """transformers' eager model of a text config with every weight perturbed, saved to tmp/model."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.json").write_text(json.dumps(text_config))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path / "config"),
                                             attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * scale)
    model.save_pretrained(tmp_path / "model")
    return model


def assert_logits_match(name, model, model_dir, tmp_path, logitfuse, *extra):
    write_ids(tmp_path / "ids.jsonl", SEQUENCES)
    ours = logitfuse_logits(logitfuse, model_dir, tmp_path / "ids.jsonl", tmp_path / "out.safetensors",
                            "--dtype", "fp32", *extra)
    for ids, got in zip(SEQUENCES, ours):
        diff = (got - reference_logits(model, ids)).abs().max().item()
        assert diff < TOL, f"{name}: max |logits diff| {diff:.3g} on a sequence of {len(ids)}"


@pytest.mark.parametrize("name", ["gemma-3-270m", "gemma-3-1b-it", "gemma-2-2b"])
@pytest.mark.parametrize("chunk", [0, 3])
def test_hub_gemma_configs_give_transformers_logits(name, chunk, tmp_path, logitfuse):
    config = shrink(json.loads((HUB / f"{name}.json").read_text()))
    model = random_reference(config, tmp_path)
    (tmp_path / "model" / "config.json").write_text(json.dumps(config, indent=2))  # as the Hub serves it
    # --decode-chunk 3: the KV cache, fed three tokens at a time, past the window of 4.
    assert_logits_match(name, model, tmp_path / "model", tmp_path, logitfuse,
                        *(["--decode-chunk", chunk] if chunk else []))


def test_soft_capping_that_bites(tmp_path, logitfuse):
    # Gemma 2 with caps far below the logits that large weights give: both tanh caps change the result.
    config = shrink(json.loads((HUB / "gemma-2-2b.json").read_text()))
    config.update(attn_logit_softcapping=2.0, final_logit_softcapping=3.0)
    model = random_reference(config, tmp_path, scale=0.6)
    assert reference_logits(model, SEQUENCES[2]).abs().max() > 2.5  # the final cap is reached
    assert_logits_match("gemma-2 capped", model, tmp_path / "model", tmp_path, logitfuse)


def test_gemma3_4b_multimodal_checkpoint_runs_its_text_model(tmp_path, logitfuse):
    # The 4B config is Gemma3ForConditionalGeneration: a text_config (linear RoPE scaling of 8 on the
    # full layers) inside; its weights are named language_model.model.* beside a vision tower.
    hub = json.loads((HUB / "gemma-3-4b-it.json").read_text())
    text = shrink({**hub["text_config"], "num_attention_heads": 8, "num_key_value_heads": 4})
    text.update(bos_token_id=2, eos_token_id=1, pad_token_id=0)
    model = random_reference(text, tmp_path)
    weights = load_file(str(tmp_path / "model" / "model.safetensors"))
    renamed = {"language_model." + n: t for n, t in weights.items()}  # the Hub's names for Gemma 3
    renamed["vision_tower.vision_model.embeddings.patch_embedding.weight"] = torch.zeros(4, 3, 2, 2)
    renamed["multi_modal_projector.mm_input_projection_weight"] = torch.zeros(4, 32)
    mm = tmp_path / "multimodal"
    mm.mkdir()
    save_file(renamed, str(mm / "model.safetensors"), metadata={"format": "pt"})
    (mm / "config.json").write_text(json.dumps({**hub, "text_config": text}, indent=2))
    assert_logits_match("gemma-3-4b", model, mm, tmp_path, logitfuse)


@pytest.mark.parametrize("arch", ["gemma3_text", "gemma2"])
def test_init_model_and_merge_load_in_transformers(arch, tmp_path, logitfuse):
    common = ["--arch", arch, "--vocab-size", 300, "--hidden", 32, "--layers", 3, "--heads", 4, "--kv-heads", 1,
              "--intermediate", 64]
    logitfuse("init-model", *common, "--out", tmp_path / "base", "--seed", 3)
    logitfuse("init-model", *common, "--out", tmp_path / "expert", "--seed", 4)
    logitfuse("merge", "--base", tmp_path / "base", "--expert", tmp_path / "expert", "--weight", 0.5,
              "--out", tmp_path / "merged")
    for name in ["base", "merged"]:
        model = AutoModelForCausalLM.from_pretrained(tmp_path / name, attn_implementation="eager").eval()
        assert model.config.model_type == arch
        with torch.no_grad():  # the norms start at 0 (the scale is 1 + w): perturb them to be read right
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.05)
        model.save_pretrained(tmp_path / f"{name}-perturbed")
        assert_logits_match(f"{arch} {name}", model, tmp_path / f"{name}-perturbed", tmp_path, logitfuse)


@pytest.mark.parametrize("field, value, named", [
    ("layer_types", ["sliding_attention"] * 5 + ["chunked_attention"], "layer_types[5]"),
    ("use_bidirectional_attention", True, "use_bidirectional_attention"),
    ("hidden_activation", "relu", "hidden_activation"),
    ("rope_scaling", {"rope_type": "dynamic", "factor": 2.0}, "rope_scaling"),
])
def test_a_gemma_field_that_changes_the_forward_pass_is_refused_by_name(field, value, named, tmp_path, logitfuse):
    config = shrink(json.loads((HUB / "gemma-3-270m.json").read_text()))
    config[field] = value
    stderr = refused_logits(config, [2, 3], tmp_path, logitfuse)
    assert named in stderr, stderr
