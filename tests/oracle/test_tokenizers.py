"""logitfuse's tokenizers against Hugging Face `tokenizers` and `sentencepiece`: ids, byte offsets and
decoding of BPE tokenizers trained here (GPT-2 byte-level, Llama-3/Qwen split regexes, SentencePiece-style
BPE with byte fallback) and of SentencePiece models, on a corpus of many scripts; plus the errors that
malformed or unsupported tokenizer files give."""
import json
from pathlib import Path

import pytest
import sentencepiece as spm
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Training text: enough repetition for a few hundred merges over several scripts.
TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog. It's what they'd said, and we'll see.",
    "def tokenize(text: str) -> list[int]:\n    return [ord(c) for c in text]  # comment\n",
    "for (int i = 0; i < n; ++i) { total += values[i] * 2; }",
    "自然语言处理是人工智能的一个重要领域。我们喜欢机器学习。",
    "日本語のテキストも少し含めます。カタカナとひらがな。",
    "اللغة العربية جميلة جدا. مَرْحَبًا بِكُمْ في البيت.",
    "Numbers: 1234567890, 3.14159, 2024-06-01, $1,000.00 and 42%.",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 — café naïve résumé Ångström.",
    "Привет, как дела? Это тест на русском языке.",
    "Ελληνικά κείμενα και ένα ακόμη παράδειγμα.",
    "한국어 문장도 포함합니다. 안녕하세요!",
] * 20

# What is compared: every script and the whitespace, digit and special-token cases the regexes treat apart.
CORPUS = [
    "Hello world",
    "hello",
    " leading space and trailing space ",
    "I'm sure you're RIGHT, they'VE gone; it'S 'tis",
    "def f(x):\n\treturn x**2  # square\n\n\n",
    "if (a&&b || c != d) { return -1; } // done",
    "    indented\n        more   \t\t tabs\r\n\r\nend",
    "a" + " " * 40 + "b" + "\n" * 7 + "c",
    "trailing spaces   ",
    "自然语言处理很有趣。",
    "これは日本語です",
    "مَرْحَبًا بِالْعَالَمِ",
    "Emoji 😀😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷🇩🇪!",
    "combining: e\u0301 a\u0300\u0323 n\u0303o Z\u0351\u0352\u0357a\u0300\u0301lgo",
    "digits 1234567890 3.14159 007 ٣٤٥ ௧௨",
    "unicode spaces:\u00a0nbsp\u3000ideographic\u2009thin\u2028sep",
    "<|endoftext|>",
    "before<|endoftext|>after <|endoftext|> spaced",
    "<s>Hello</s> <unk> inside",
    "<|begin_of_text|>Hi<|eot_id|>\n<|start_header_id|>user<|end_header_id|>",
    "mixed Русский, ελληνικά, 한국어 and English.",
    "",
    " ",
    "\n",
    "▁already▁has▁metaspace",
    "x" * 300,
    "ǅemo ǈj ＦＵＬＬＷＩＤＴＨ ﬁ ligature",
    "café naïve résumé",
]

# Texts whose normal forms differ from them: precomposed vs combining accents, Hangul syllables vs jamo,
# compatibility characters (ligatures, full width, super/subscripts, units, Roman numerals), singletons
# (Angstrom, Ohm, Kelvin), canonical reordering of combining marks, long combining runs, mixed scripts.
NORMALIZATION_TEXTS = [
    "précomposé é vs combining e\u0301, A\u030a vs \u00c5 vs Angstrom \u212b, Ohm \u2126 Kelvin \u212a",
    "Hangul 한국어 안녕하세요 vs jamo \u1112\u1161\u11ab\u1100\u116e\u11a8\u110b\u1165, LV+T \uac00\u11a8 \u1100\u1161",
    "ligatures ﬁ ﬂ ﬀ ﬃ ﬄ ﬅ ﬆ finance ﬁnance",
    "full width １２３ ＡＢＣ ｄｅｆ ！？ and half width ｶﾀｶﾅ ﾊﾟﾝ",
    "superscripts x² y³ ¹ subscripts H₂O fractions ½ ¼ ⅓ ⅞",
    "compat ㎞ ㍿ ℡ № ™ Ⅻ ⅻ ⑳ ㈱ ﹏ ﹐ ǆ Ĳ ŉ ſt … ‥ µ",
    "long run a\u0301\u0302\u0303\u0304\u0305\u0306\u0307\u0308\u0309\u030a\u0316\u0317\u0318\u0323 end",
    "reorder x\u0301\u0316 q\u0307\u0323 \u1e0b\u0323 \u0344\u0323 \u1e9b\u0323 A\u0301\u030a o\u031b\u0323\u0301",
    "\u0301\u0316 starts with marks",
    "\u0301",
    "e\u0301",
    "mixed Ελληνικά ά vs α\u0301 ΐ \u0390 Việt Nam tiếng Việt Äpfel A\u0308pfel ñ n\u0303 Ω",
    "CJK compat \uf900\uf901\uf9dc \u2f00\u2f08 Arabic \ufdfa \ufefb \ufe8e Hebrew \ufb2a \ufb1d Tibetan \u0f73 \u0f75 \u0f81",
    "Devanagari \u0958 \u0929 क़ Bengali \u09cb \u09c7\u09be Kannada \u0cca \u0cc6\u0cc2",
    "spaces\u00a0nbsp\u2002en\u3000ideographic\u2009thin",
    "ﬁ<|endoftext|>１２３ e\u0301<|endoftext|>\u0301after",
    "emoji 👍🏽 ❤️ 1️⃣ 🇰🇷 and ㋿ ㍻",
    # Assigned after Unicode 9.0, the tables tokenizers normalizes with: left alone there (Reiwa U+32FF,
    # raised MR U+1F16C, Dives Akuru U+11935 U+11930, Malayalam U+0D3B with a combining class since 10.0).
    "newer \u32ff \U0001f16c \U00011935\U00011930 \u0d15\u0d3b\u0301 \ua7f2 \U0001fbf5 o\u1df6\u0301",
]

SPECIALS = ["<|endoftext|>", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]


def byte_offsets(text, char_offsets):
    """Char offsets (what tokenizers' Python binding reports) as UTF-8 byte offsets."""
    pos = [0]
    for ch in text:
        pos.append(pos[-1] + len(ch.encode("utf-8")))
    return [[pos[s], pos[e]] for s, e in char_offsets]


def char_offsets(text, offsets):
    """Byte offsets as tokenizers' BytesToCharOffsetConverter turns them into the chars Python reports.
    Rust-side offsets can end inside a char (ByteLevel trim_offsets on a token holding part of one), which
    no char offset can express; comparing through this converter checks exactly what tokenizers exposes."""
    char_of = {}
    b = 0
    for i, ch in enumerate(text):
        for k in range(len(ch.encode("utf-8"))):
            char_of[b + k] = i
        b += len(ch.encode("utf-8"))
    out = []
    for s, e in offsets:
        if s == e:  # an empty span: the char position itself (the end of the text is one past the last char)
            out.append((char_of.get(s, len(text)),) * 2)
            continue
        if s in char_of and e in char_of:
            out.append((char_of[s], char_of[e]))
        elif s in char_of:
            out.append((char_of[s], char_of.get(e - 1, char_of[s]) + 1))
        else:
            out.append(None)
    return out


def assert_offsets_match(text, got, enc, what):
    """Byte offsets equal the reference wherever it is on char boundaries; through the converter always."""
    ref_bytes = byte_offsets(text, enc.offsets)
    as_chars = char_offsets(text, got)
    for k, (mine, theirs) in enumerate(zip(got, ref_bytes)):
        assert as_chars[k] == tuple(enc.offsets[k]) or (mine[0] == mine[1] == 0 and enc.offsets[k] == (0, 0)), \
            f"{what}: token {k} offsets {mine} (chars {as_chars[k]}) vs tokenizers' chars {enc.offsets[k]}"
    assert len(got) == len(ref_bytes), what


def train_byte_level(tmp, name, pre_tokenizer, post_processor, extra_added=(), normalizer=None):
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=900, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(TRAIN_TEXT, trainer)
    tok.post_processor = post_processor(tok)
    for token in extra_added:
        tok.add_tokens([token])
    path = tmp / f"{name}.json"
    tok.save(str(path))
    return path


def sp_style_json(tmp, name, metaspace):
    """A converted-Llama-2 style tokenizer.json: BPE over '▁'-words, <0xNN> byte fallback in the model vocab."""
    base = Tokenizer(models.BPE())
    base.normalizer = normalizers.Replace(" ", "▁")
    base.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    # Rare chars (most CJK, emoji) stay out of the alphabet so byte fallback has work to do.
    trainer = trainers.BpeTrainer(vocab_size=700, limit_alphabet=120, show_progress=False)
    base.train_from_iterator(TRAIN_TEXT, trainer)
    trained = json.loads(base.to_str())["model"]
    words = sorted(trained["vocab"], key=trained["vocab"].get)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for w in words:
        vocab.setdefault(w, len(vocab))
    spec = json.loads(Tokenizer(models.BPE()).to_str())
    spec["model"] = {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                     "vocab": vocab, "merges": trained["merges"]}
    spec["added_tokens"] = [
        {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": True} for i, c in enumerate(["<unk>", "<s>", "</s>"])]
    if metaspace:  # newer conversions (Llama-3-style transformers converter for Llama/Mistral)
        spec["normalizer"] = None
        spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    else:  # Llama-2 / Mistral-7B-v0.1 tokenizer.json
        spec["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
        spec["pre_tokenizer"] = None
    spec["post_processor"] = {"type": "TemplateProcessing",
                              "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                              "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                       {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                              "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    spec["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(spec, ensure_ascii=False))
    return path


def template(bos):
    return lambda tok: processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])])


@pytest.fixture(scope="session")
def hf_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tokenizers")
    files = {
        "gpt2": train_byte_level(tmp, "gpt2", pre_tokenizers.ByteLevel(add_prefix_space=False),
                                 lambda tok: processors.ByteLevel(trim_offsets=False)),
        "gpt2-prefix-trim": train_byte_level(tmp, "gpt2-prefix-trim", pre_tokenizers.ByteLevel(add_prefix_space=True),
                                             lambda tok: processors.ByteLevel(trim_offsets=True)),
        "llama3": train_byte_level(tmp, "llama3", pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), template("<|begin_of_text|>"),
            extra_added=["<tool_call>"]),
        "qwen2": train_byte_level(tmp, "qwen2", pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
            lambda tok: processors.ByteLevel(trim_offsets=False)),
        # Qwen2/Qwen3 tokenizer.json: NFC, the Qwen split regex, byte-level BPE.
        "qwen2-nfc": train_byte_level(tmp, "qwen2-nfc", pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
            lambda tok: processors.ByteLevel(trim_offsets=False), normalizer=normalizers.NFC()),
        "gpt2-nfkc": train_byte_level(tmp, "gpt2-nfkc", pre_tokenizers.ByteLevel(add_prefix_space=False),
                                      lambda tok: processors.ByteLevel(trim_offsets=False),
                                      normalizer=normalizers.NFKC()),
        "llama3-nfd": train_byte_level(tmp, "llama3-nfd", pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), template("<|begin_of_text|>"),
            normalizer=normalizers.NFD()),
        "gpt2-nfkd-trim": train_byte_level(tmp, "gpt2-nfkd-trim", pre_tokenizers.ByteLevel(add_prefix_space=True),
                                           lambda tok: processors.ByteLevel(trim_offsets=True),
                                           normalizer=normalizers.Sequence([normalizers.NFKD(),
                                                                            normalizers.Replace("ﬀ", "ff")])),
        "digits-punct": train_byte_level(tmp, "digits-punct", pre_tokenizers.Sequence([
            pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Punctuation(), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
            lambda tok: processors.ByteLevel(trim_offsets=False)),
        "sp-bpe-normalizer": sp_style_json(tmp, "sp-bpe-normalizer", metaspace=False),
        "sp-bpe-metaspace": sp_style_json(tmp, "sp-bpe-metaspace", metaspace=True),
    }
    return files


def run_tokenize(logitfuse, tmp_path, tokenizer, texts, *extra):
    inp = tmp_path / "texts.jsonl"
    inp.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    out = logitfuse("tokenize", "--tokenizer", tokenizer, "--input", inp, "--decode", *extra).stdout
    lines = [json.loads(line) for line in out.split("\n") if line]
    assert len(lines) == len(texts)
    return lines


HF_NAMES = ["gpt2", "gpt2-prefix-trim", "llama3", "qwen2", "digits-punct", "sp-bpe-normalizer", "sp-bpe-metaspace"]


@pytest.mark.parametrize("name", HF_NAMES)
@pytest.mark.parametrize("add_special", [False, True])
def test_tokenizer_json_matches_tokenizers(logitfuse, hf_files, tmp_path, name, add_special):
    ref = Tokenizer.from_file(str(hf_files[name]))
    extra = ["--add-special-tokens"] if add_special else []
    got = run_tokenize(logitfuse, tmp_path, hf_files[name], CORPUS, *extra)
    for text, line in zip(CORPUS, got):
        enc = ref.encode(text, add_special_tokens=add_special)
        assert line["ids"] == enc.ids, f"{name}: ids differ for {text!r}: {ref.decode(line['ids'])!r}"
        assert_offsets_match(text, line["offsets"], enc, f"{name}: {text!r}")
        assert line["decoded"] == ref.decode(enc.ids, skip_special_tokens=False), f"{name}: decode differs for {text!r}"


NORMALIZING_NAMES = ["qwen2-nfc", "gpt2-nfkc", "llama3-nfd", "gpt2-nfkd-trim"]


@pytest.mark.parametrize("name", NORMALIZING_NAMES)
@pytest.mark.parametrize("add_special", [False, True])
def test_unicode_normalizers_match_tokenizers(logitfuse, hf_files, tmp_path, name, add_special):
    ref = Tokenizer.from_file(str(hf_files[name]))
    extra = ["--add-special-tokens"] if add_special else []
    texts = CORPUS + NORMALIZATION_TEXTS
    got = run_tokenize(logitfuse, tmp_path, hf_files[name], texts, *extra)
    for text, line in zip(texts, got):
        enc = ref.encode(text, add_special_tokens=add_special)
        assert line["ids"] == enc.ids, f"{name}: ids differ for {text!r}: {ref.decode(line['ids'])!r}"
        if "trim" not in name:  # normalized offsets fall on char boundaries of the original text: exact bytes
            assert_offsets_match(text, line["offsets"], enc, f"{name}: {text!r}")
            assert line["offsets"] == byte_offsets(text, enc.offsets), f"{name}: {text!r}"
        else:
            assert line["offsets"] == rust_trimmed_byte_offsets(ref, text, add_special), f"{name}: {text!r}"
        assert line["decoded"] == ref.decode(enc.ids, skip_special_tokens=False), f"{name}: decode differs for {text!r}"


def rust_trimmed_byte_offsets(ref, text, add_special):
    """Byte offsets as tokenizers' Rust API (OffsetType::Byte) trims them for ByteLevel(trim_offsets=True,
    add_prefix_space=True). Python trims after converting to chars, so where a normalizer turned a multi-byte
    space (U+00A0, U+3000) into ' ', it moves the start a whole char where Rust moves it one byte; what
    logitfuse reports is the Rust byte result."""
    untrimmed = Tokenizer.from_str(ref.to_str())
    untrimmed.post_processor = processors.ByteLevel(trim_offsets=False)
    enc = untrimmed.encode(text, add_special_tokens=add_special)
    out = []
    for i, (token, (s, e)) in enumerate(zip(enc.tokens, byte_offsets(text, enc.offsets))):
        spaces = [c == "Ġ" or (c.isspace() and c not in "\x1c\x1d\x1e\x1f") for c in token]  # Rust is_whitespace
        lead = next((k for k, sp in enumerate(spaces) if not sp), len(spaces))
        trail = next((k for k, sp in enumerate(reversed(spaces)) if not sp), len(spaces))
        if lead > 0:
            if (i == 0 or s == 0) and lead == 1:
                lead = 0
            s = min(s + lead, e)
        if trail > 0 and e >= trail:
            e = max(e - trail, s)
        out.append([s, e])
    return out


def test_nfc_text_round_trips_through_qwen2_nfc(logitfuse, hf_files, tmp_path):
    """NFC is the identity on NFC text: the normalizer changes nothing where nothing needs composing."""
    import unicodedata
    texts = [unicodedata.normalize("NFC", t) for t in CORPUS + NORMALIZATION_TEXTS]
    got = run_tokenize(logitfuse, tmp_path, hf_files["qwen2-nfc"], texts)
    ref = Tokenizer.from_file(str(hf_files["qwen2-nfc"]))
    for text, line in zip(texts, got):
        assert line["decoded"] == text
        assert line["offsets"] == byte_offsets(text, ref.encode(text, add_special_tokens=False).offsets)


@pytest.mark.parametrize("name", ["gpt2", "llama3", "qwen2"])
def test_byte_level_round_trip_is_lossless(logitfuse, hf_files, tmp_path, name):
    got = run_tokenize(logitfuse, tmp_path, hf_files[name], CORPUS)
    for text, line in zip(CORPUS, got):
        assert line["decoded"] == text


@pytest.fixture(scope="session")
def sp_models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spm")
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(TRAIN_TEXT) + "\n", encoding="utf-8")
    paths = {}
    for model_type in ["bpe", "unigram"]:
        prefix = tmp / model_type
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(prefix), vocab_size=480, hard_vocab_limit=False, model_type=model_type,
            byte_fallback=True, character_coverage=0.9995, user_defined_symbols=["<tool>"],
            control_symbols=["<ctrl>"], minloglevel=2)
        paths[model_type] = tmp / f"{model_type}.model"
    return paths


def sp_reference(sp, text):
    """SentencePiece ids/offsets with control symbols and <unk> written in the text split off first."""
    specials = sorted((sp.id_to_piece(i) for i in range(sp.get_piece_size())
                       if sp.is_control(i) or sp.is_unknown(i)), key=len, reverse=True)
    data = text.encode("utf-8")
    ids, offsets, start, i = [], [], 0, 0

    def flush(end):
        if end > start:
            enc = sp.encode(data[start:end].decode("utf-8"), return_type="offset_mapping", return_bytes=True)
            ids.extend(enc["ids"])
            offsets.extend([start + b, start + e] for b, e in enc["offsets"])

    while i < len(data):
        hit = next((s for s in specials if data.startswith(s.encode("utf-8"), i)), None)
        if hit is None:
            i += 1
            continue
        flush(i)
        ids.append(sp.piece_to_id(hit))
        offsets.append([i, i + len(hit.encode("utf-8"))])
        i += len(hit.encode("utf-8"))
        start = i
    flush(len(data))
    return ids, offsets


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_matches_library(logitfuse, sp_models, tmp_path, model_type):
    sp = spm.SentencePieceProcessor(model_file=str(sp_models[model_type]))
    texts = CORPUS + ["<tool> user-defined <tool>x", "<ctrl>control<s>"]
    got = run_tokenize(logitfuse, tmp_path, sp_models[model_type], texts)
    for text, line in zip(texts, got):
        ids, offsets = sp_reference(sp, text)
        assert line["ids"] == ids, f"ids differ for {text!r}"
        assert line["offsets"] == offsets, f"offsets differ for {text!r}"
        if not any(sp.is_control(i) or sp.is_unknown(i) for i in ids):
            assert line["decoded"] == sp.decode(ids)
    with_bos = run_tokenize(logitfuse, tmp_path, sp_models[model_type], ["Hello"], "--add-special-tokens")[0]
    assert with_bos["ids"] == [sp.bos_id()] + sp.encode("Hello")
    assert with_bos["offsets"][0] == [0, 0]


def test_text_flag_and_directory(logitfuse, hf_files, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "tokenizer.json").write_text(hf_files["llama3"].read_text())
    (model_dir / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>",
                                                                "eos_token": {"content": "<|eot_id|>"}}))
    out = json.loads(logitfuse("tokenize", "--tokenizer", model_dir, "--text", "Hi there").stdout)
    ref = Tokenizer.from_file(str(hf_files["llama3"])).encode("Hi there", add_special_tokens=False)
    assert out["ids"] == ref.ids
    assert out["offsets"] == byte_offsets("Hi there", ref.offsets)


def write_json(tmp_path, spec):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec, ensure_ascii=False))
    return path


@pytest.mark.parametrize("component,patch", [
    ("normalizer StripAccents", {"normalizer": {"type": "StripAccents"}}),
    ("normalizer Lowercase", {"normalizer": {"type": "Lowercase"}}),
    ("pre-tokenizer BertPreTokenizer", {"pre_tokenizer": {"type": "BertPreTokenizer"}}),
    ("decoder WordPiece", {"decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True}}),
    ("post-processor ByteLevelX", {"post_processor": {"type": "ByteLevelX"}}),
    ("model type Unigram", {"model": {"type": "Unigram", "vocab": [["a", 0.0]], "unk_id": 0}}),
    ("truncation", {"truncation": {"max_length": 8, "strategy": "LongestFirst", "stride": 0, "direction": "Right"}}),
])
def test_unsupported_component_is_an_input_error(logitfuse, hf_files, tmp_path, component, patch):
    spec = json.loads(hf_files["gpt2"].read_text())
    spec.update(patch)
    path = write_json(tmp_path, spec)
    proc = logitfuse("tokenize", "--tokenizer", path, "--text", "hi", expect=2)
    assert component in proc.stderr
    assert str(path) in proc.stderr


def test_malformed_tokenizer_json_is_an_input_error(logitfuse, tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}}')
    proc = logitfuse("tokenize", "--tokenizer", path, "--text", "hi", expect=2)
    assert "a b" in proc.stderr and str(path) in proc.stderr
    path.write_text("{not json")
    proc = logitfuse("tokenize", "--tokenizer", path, "--text", "hi", expect=2)
    assert "not valid JSON" in proc.stderr


def test_bad_input_line_names_file_and_line(logitfuse, hf_files, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"text": "fine"}\n{"txt": "no text field"}\n')
    proc = logitfuse("tokenize", "--tokenizer", hf_files["gpt2"], "--input", inp, expect=2)
    assert f"{inp}:2" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def mistral_models():
    """Real SentencePiece models shipped in the mistral-common wheel (Mistral 7B v0.1 and the v3 instruct
    tokenizer with [INST]-style control symbols); empty when the package is not installed."""
    import importlib.util
    spec = importlib.util.find_spec("mistral_common")
    if spec is None:
        return []
    data = Path(spec.origin).parent / "data"
    return [data / name for name in ["tokenizer.model.v1", "mistral_instruct_tokenizer_240323.model.v3"]
            if (data / name).exists()]


@pytest.mark.parametrize("model", mistral_models() or [pytest.param(None, marks=pytest.mark.skip(
    reason="mistral-common (scripts/requirements.txt) is not installed"))], ids=lambda p: p.name if p else "none")
def test_real_mistral_sentencepiece_models(logitfuse, tmp_path, model):
    sp = spm.SentencePieceProcessor(model_file=str(model))
    texts = CORPUS + TRAIN_TEXT[:11] + ["[INST] What is 2+2? [/INST] 4</s>"]
    got = run_tokenize(logitfuse, tmp_path, model, texts)
    for text, line in zip(texts, got):
        ids, offsets = sp_reference(sp, text)
        assert line["ids"] == ids, f"ids differ for {text!r}"
        assert line["offsets"] == offsets, f"offsets differ for {text!r}"
