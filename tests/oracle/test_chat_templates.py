"""Chat templates from the model's own Jinja: `chat_template: auto` renders real templates (Llama 3.3,
Qwen2.5, Qwen3 with and without thinking, Mistral v1/v3/v3-tekken/v7, Phi-3.5, Phi-4, Gemma 2/3,
DeepSeek-V3.1, SmolLM2; tests/fixtures/chat_templates/) exactly as transformers' apply_chat_template
does, character for character and token for token, and exits 2 exactly where the template raises.
Also: the training split (history with the generation prompt, then the response and its suffix)
concatenates to the full rendering, and an unsupported construct exits 2 naming it."""
import json
import re
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import PreTrainedTokenizerFast

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"
TOKENS = json.loads((FIXTURES / "tokens.json").read_text(encoding="utf-8"))
NAMES = sorted(TOKENS)

SYSTEM = {"role": "system", "content": "You are terse."}
USER1 = {"role": "user", "content": "Hello"}
ASSISTANT1 = {"role": "assistant", "content": "Hi there"}
USER2 = {"role": "user", "content": "  Who are you?\n"}
ASSISTANT2 = {"role": "assistant", "content": "\n  I am an assistant — ünïcödé 日本語 🙂  \n"}
THINKING = {"role": "assistant", "content": "<think>\nLet me see.\n</think>\n\nIt is 4."}
CONVERSATIONS = {
    "system_user_assistant": [SYSTEM, USER1, ASSISTANT1],
    "multi_turn": [SYSTEM, USER1, ASSISTANT1, USER2, ASSISTANT2],
    "no_system": [USER1, ASSISTANT1, USER2, ASSISTANT2],
    "generation": [SYSTEM, USER1, ASSISTANT1, USER2],
    "one_user": [USER1],
    "reasoning": [USER1, THINKING],
    "two_systems": [SYSTEM, SYSTEM, USER1, ASSISTANT1],
    "not_alternating": [USER1, USER2, ASSISTANT1],
    "empty_content": [USER1, {"role": "assistant", "content": ""}],
    "newlines": [{"role": "user", "content": "\n\nline one\n\tline two\n\n"}, {"role": "assistant", "content": "a\nb\n"}],
}
KWARGS = [{}, {"enable_thinking": False}, {"enable_thinking": True}, {"thinking": True}]


def special_tokens(source, tokens):
    found = set(re.findall(r"<[^<>\s'\"]{1,40}>|\[/?[A-Z_]{2,20}\]", source))
    found.update(t for t in tokens.values() if t)
    return sorted(found)


def write_model(tmp, name):
    """A model directory as the Hub ships it: a small byte-level tokenizer.json that knows the template's
    special tokens, and tokenizer_config.json with the template and the bos/eos tokens."""
    source = (FIXTURES / f"{name}.jinja").read_text(encoding="utf-8")
    tokens = TOKENS[name]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = special_tokens(source, tokens)
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=specials, show_progress=False)
    tok.train_from_iterator(["Hello there, who are you? I am an assistant.", "system user assistant model"], trainer)
    d = tmp / name
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    config = {"chat_template": source, "bos_token": tokens["bos_token"], "eos_token": tokens["eos_token"],
              "tokenizer_class": "PreTrainedTokenizerFast"}
    (d / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=tokens["bos_token"], eos_token=tokens["eos_token"])
    hf.chat_template = source
    return d, hf


def reference(hf, messages, add_generation_prompt, kwargs):
    """transformers' rendering and ids, or None where the template raises."""
    try:
        text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs)
    except Exception as e:  # jinja2's TemplateError from raise_exception, or an UndefinedError
        return None, repr(e)
    return text, hf(text, add_special_tokens=False)["input_ids"]


def cases():
    for name, messages in CONVERSATIONS.items():
        for add_generation_prompt in (False, True):
            for kwargs in KWARGS:
                yield name, messages, add_generation_prompt, kwargs


def run_lines(logitfuse, path, tmp, lines, *extra, expect=0):
    inp = tmp / "chats.jsonl"
    inp.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    proc = logitfuse("tokenize", "--tokenizer", path, "--input", inp, "--chat-template", "auto", *extra, expect=expect)
    return [json.loads(line) for line in proc.stdout.split("\n") if line], proc


@pytest.mark.parametrize("name", NAMES)
def test_real_templates_match_apply_chat_template(logitfuse, tmp_path, name):
    path, hf = write_model(tmp_path, name)
    good, raising = [], []
    for conv, messages, agp, kwargs in cases():
        text, ids = reference(hf, messages, agp, kwargs)
        line = {"messages": messages, "add_generation_prompt": agp, **kwargs}
        (good if text is not None else raising).append((conv, line, text, ids))
    assert good, f"{name}: every conversation raised"
    out, _ = run_lines(logitfuse, path, tmp_path, [line for _, line, _, _ in good])
    assert len(out) == len(good)
    for (conv, line, text, ids), got in zip(good, out):
        assert got["text"] == text, f"{name} / {conv} / {line}"
        assert got["ids"] == ids, f"{name} / {conv} / {line}"
    # Where jinja raises, logitfuse exits 2 with a one-line message (each conversation once: the
    # keyword variables do not change whether these templates raise).
    seen = set()
    for conv, line, _, error in raising:
        if (conv, line["add_generation_prompt"]) in seen:
            continue
        seen.add((conv, line["add_generation_prompt"]))
        _, proc = run_lines(logitfuse, path, tmp_path, [line], expect=2)
        assert "chat template" in proc.stderr, f"{name} / {conv}: {proc.stderr} (transformers: {error})"


@pytest.mark.parametrize("name", NAMES)
def test_training_split_concatenates_to_the_full_rendering(logitfuse, tmp_path, name):
    path, hf = write_model(tmp_path, name)
    splits = []
    for conv, messages in CONVERSATIONS.items():
        if messages[-1]["role"] != "assistant":
            continue
        text, _ = reference(hf, messages, False, {})
        prompt, _ = reference(hf, messages[:-1], True, {})
        content = messages[-1]["content"]
        if text is None or prompt is None:
            continue
        line = {"messages": messages, "add_generation_prompt": False}
        splittable = text.startswith(prompt) and content.strip() and (
            content in text[len(prompt):] or content.strip() in text[len(prompt):])
        if not splittable:
            _, proc = run_lines(logitfuse, path, tmp_path, [line], "--training-split", expect=2)
            assert "response's tokens cannot be located" in proc.stderr, f"{name} / {conv}: {proc.stderr}"
            continue
        splits.append((conv, line, text, prompt, content))
    out, _ = run_lines(logitfuse, path, tmp_path, [line for _, line, _, _, _ in splits], "--training-split")
    assert len(out) == len(splits) > 0
    for (conv, line, text, prompt, content), got in zip(splits, out):
        assert got["prompt"] + got["response"] + got["response_suffix"] == got["text"] == text, f"{name} / {conv}"
        assert got["prompt"].startswith(prompt)
        assert got["response"] in (content, content.strip())


def test_unsupported_construct_exits_2_naming_it(logitfuse, tmp_path):
    path, _ = write_model(tmp_path, "qwen2.5")
    (path / "chat_template.jinja").write_text("{% for m in messages %}\n{{ m.content | wordwrap(5) }}{% endfor %}",
                                              encoding="utf-8")
    _, proc = run_lines(logitfuse, path, tmp_path, [{"messages": [USER1]}], expect=2)
    assert "chat template line 2: filter 'wordwrap' is not supported" in proc.stderr
    (path / "chat_template.jinja").write_text("{% include 'other.jinja' %}", encoding="utf-8")
    _, proc = run_lines(logitfuse, path, tmp_path, [{"messages": [USER1]}], expect=2)
    assert "tag 'include' is not supported" in proc.stderr


def test_model_without_template_keeps_the_preset_error(logitfuse, tmp_path):
    path, _ = write_model(tmp_path, "qwen2.5")
    config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    del config["chat_template"]
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    _, proc = run_lines(logitfuse, path, tmp_path, [{"messages": [USER1]}], expect=2)
    assert "the model ships no chat template" in proc.stderr
    # Presets stay names: chatml renders without any template in the model.
    inp = tmp_path / "preset.jsonl"
    inp.write_text(json.dumps({"messages": [USER1], "add_generation_prompt": True}) + "\n", encoding="utf-8")
    out = logitfuse("tokenize", "--tokenizer", path, "--input", inp, "--chat-template", "chatml").stdout
    assert json.loads(out)["text"] == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
