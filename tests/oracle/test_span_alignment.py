"""Span alignment (docs/training.md, "Span alignment") against a brute-force reference.

Two byte-level BPE tokenizers trained here with Hugging Face `tokenizers` cut the same texts
differently (one groups up to three digits, the other merges across words and digits). For random
teacher distributions at every teacher token, the reference enumerates the teacher token sequences
the definition covers (every token consistent with the text already written; the actual token leads
on to the next position until it covers the student token) and places each sequence's probability
on the student token that `tokenizers` starts its text with. `logitfuse align` must give the same
distribution over the student's next token at every student token, to 1e-9.
"""
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "demo"))

from data import LLAMA3_SPLIT, QWEN_SPLIT, WHOLE_LINE  # noqa: E402

TEXTS = ["3 + 4 = 7. 7 * 2 = 14. The answer is 14.", "12 + 19 = 31. 31 * 3 = 93. The answer is 93.",
         "reverse abc: cba", "The cat sat on the mat, and the answer is 408."]


def corpus():
    rng = random.Random(0)
    lines = []
    for _ in range(400):
        a, b, c = rng.randint(1, 60), rng.randint(1, 60), rng.randint(2, 9)
        lines.append(f"{a} + {b} = {a + b}. {a + b} * {c} = {(a + b) * c}. The answer is {(a + b) * c}.")
        w = "".join(rng.choice("abcdefgh") for _ in range(3))
        lines.append(f"reverse {w}: {w[::-1]}. The cat sat on the mat.")
    return lines


def byte_decoder():
    # GPT-2's byte <-> printable-unicode table, which byte-level BPE vocabularies are written in.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def train_tokenizer(path, pattern, size):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
    return tok


class Side:
    """One tokenizer as the reference sees it: token bytes, the bytes index, and first pieces."""

    def __init__(self, tok):
        self.tok = tok
        decode = byte_decoder()
        self.special = {i for t, i in tok.get_vocab().items() if t == "<|endoftext|>"}
        self.bytes = {i: (b"" if i in self.special else bytes(decode[ch] for ch in t)) for t, i in tok.get_vocab().items()}
        self.index = {b: i for i, b in self.bytes.items() if b}

    def encode(self, text):
        enc = self.tok.encode(text)
        return enc.ids, [tuple(o) for o in enc.offsets]

    def first_piece(self, data):
        if not data:
            return None
        if data in self.index:
            return self.index[data]
        ids = self.tok.encode(data.decode("utf-8")).ids
        return ids[0] if ids else None


def reference_targets(student, teacher, text, dists):
    """{student token index: {student id: probability}} by enumerating the teacher's token sequences."""
    s_ids, s_off = student.encode(text)
    t_ids, t_off = teacher.encode(text)
    eos_s = next(iter(student.special))
    out = {}
    for i, (o, e) in enumerate(s_off):
        j = next((k for k, (c, f) in enumerate(t_off) if c <= o < f), None)
        if j is None:
            continue
        tb = teacher.bytes[t_ids[j]]
        pre = tb[:len(tb) - (t_off[j][1] - o)]
        target = defaultdict(float)

        def expand(j, pre, written, weight):
            actual, tb, f = t_ids[j], teacher.bytes[t_ids[j]], t_off[j][1]
            branches = []
            for v, p in zip(dists[j]["ids"], dists[j]["probs"]):
                if p <= 0:
                    continue
                if v == actual:
                    branches.append((s_ids[i] if f >= e else "next", p))
                    continue
                bv = teacher.bytes[v]
                if not pre and not written:  # a whole teacher token: the exact map, else its first piece
                    u = eos_s if v in teacher.special else student.first_piece(bv)
                elif not bv:
                    u = student.first_piece(written) if not pre else None
                elif bv.startswith(pre) and len(bv) > len(pre):
                    u = student.first_piece(written + bv[len(pre):])
                else:
                    u = None
                if u is not None:
                    branches.append((u, p))
            total = sum(p for _, p in branches)
            if total <= 0:
                return
            for u, p in branches:
                if u == "next":
                    expand(j + 1, b"", written + tb[len(pre):], weight * p / total)
                else:
                    target[u] += weight * p / total

        expand(j, pre, b"", 1.0)
        mass = sum(target.values())
        if mass > 0:
            out[i] = {u: p / mass for u, p in target.items()}
    return out


def random_dists(teacher, text, rng):
    """A top-k-like distribution at every teacher token: often the actual token, tokens sharing its
    first bytes (so conditioning on a written part matters), a few others, sometimes the end token."""
    t_ids, _ = teacher.encode(text)
    # ASCII tokens only: a piece of a UTF-8 character has no text of its own to tokenize.
    vocab = sorted(v for v, b in teacher.bytes.items() if all(x < 128 for x in b))
    dists = []
    for a in t_ids:
        ab = teacher.bytes[a]
        cands = {a} if rng.random() < 0.85 else set()
        same_start = [v for v in vocab if teacher.bytes[v][:1] == ab[:1] and v != a]
        cands.update(rng.sample(same_start, min(5, len(same_start))))
        cands.update(rng.sample(vocab, 3))
        ids = list(cands)
        dists.append({"ids": ids, "probs": [rng.random() for _ in ids]})
    return dists


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("span")
    made = {}
    for name, pattern in [("student", LLAMA3_SPLIT), ("digits", QWEN_SPLIT), ("lines", WHOLE_LINE)]:
        made[name] = (root / name, Side(train_tokenizer(root / name, pattern, 400)))
    return root, made


@pytest.mark.parametrize("teacher_name", ["digits", "lines"])
def test_span_targets_match_the_brute_force_reference(logitfuse, tokenizers, teacher_name):
    root, made = tokenizers
    (s_dir, student), (t_dir, teacher) = made["student"], made[teacher_name]
    rng = random.Random(teacher_name)
    rows = [{"text": text, "teacher": random_dists(teacher, text, rng)} for text in TEXTS for _ in range(3)]
    source = root / f"align-{teacher_name}.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = logitfuse("align", "--student-tokenizer", s_dir, "--teacher-tokenizer", t_dir, "--input", source)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == len(rows)
    differing_cuts = compared = 0
    for row, got in zip(rows, lines):
        assert got["student_ids"] == student.encode(row["text"])[0]
        assert got["teacher_ids"] == teacher.encode(row["text"])[0]
        # Every student token is paired with the teacher token containing its first byte.
        assert len(got["pairs"]) == len(got["student_ids"])
        expected = reference_targets(student, teacher, row["text"], row["teacher"])
        actual = {}
        for t in got["targets"]:
            merged = defaultdict(float)
            for u, p in zip(t["ids"], t["probs"]):
                merged[u] += p
            actual[t["token"]] = dict(merged)
        assert sorted(actual) == sorted(expected)
        for i, dist in expected.items():
            assert sorted(actual[i]) == sorted(dist), f"{row['text']!r} token {i}"
            for u, p in dist.items():
                assert actual[i][u] == pytest.approx(p, abs=1e-9), f"{row['text']!r} token {i} id {u}"
            compared += 1
        s_off, t_off = student.encode(row["text"])[1], set(teacher.encode(row["text"])[1])
        differing_cuts += sum(o not in t_off for o in s_off)
    assert differing_cuts > 0 and compared > 0
    # With tokenizers this different `exact` pairs far fewer tokens than span alignment.
    texts = root / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows))
    exact = logitfuse("align", "--student-tokenizer", s_dir, "--teacher-tokenizer", t_dir, "--input", texts,
                      "--method", "exact")
    exact_pairs = sum(len(json.loads(line)["pairs"]) for line in exact.stdout.splitlines())
    span_pairs = sum(len(line["pairs"]) for line in lines)
    assert exact_pairs < span_pairs


def test_identical_tokenizers_give_the_teachers_distribution(logitfuse, tokenizers):
    root, made = tokenizers
    s_dir, student = made["student"]
    rng = random.Random(7)
    rows = [{"text": text, "teacher": random_dists(student, text, rng)} for text in TEXTS]
    source = root / "align-self.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = logitfuse("align", "--student-tokenizer", s_dir, "--teacher-tokenizer", s_dir, "--input", source).stdout
    for row, line in zip(rows, out.splitlines()):
        got = json.loads(line)
        for t in got["targets"]:
            d = row["teacher"][t["token"]]
            total = sum(d["probs"])
            assert dict(zip(t["ids"], t["probs"])) == pytest.approx({u: p / total for u, p in zip(d["ids"], d["probs"])})
        assert len(got["targets"]) == len(got["student_ids"])


def test_align_rejects_distributions_of_the_wrong_length(logitfuse, tokenizers):
    root, made = tokenizers
    s_dir, _ = made["student"]
    source = root / "bad.jsonl"
    source.write_text(json.dumps({"text": "3 + 4 = 7.", "teacher": [{"ids": [1], "probs": [1.0]}]}) + "\n")
    proc = logitfuse("align", "--student-tokenizer", s_dir, "--teacher-tokenizer", s_dir, "--input", source, expect=2)
    assert "one distribution per teacher token" in proc.stderr
