"""The benchmark's data and tokenizers, all regenerated from one data seed (docs/benchmark.md v2).

Per skill, disjoint by prompt: a held-out evaluation set, the small fusion set (`clean`, and `noisy`
with a share of wrong final answers), a small general pool (the pivot's), and a large teacher pool.
Tokenizers are trained on the pools' text and differ the way real ones do: the student's groups up
to three digits (Llama-3's split rule), the arithmetic teacher's splits every digit (Qwen's), the
reverse teacher's keeps digit runs whole with their leading space (GPT-2's), so most tokens agree
and the numbers do not.
"""
import json
import random

import tasks
from lf import log

# Llama-3's and Qwen2's pre-tokenization patterns: identical but for the digit rule.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
# GPT-2's: a leading space joins digits as it joins letters, and digit runs stay whole.
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# name: (split pattern, BPE vocabulary size). The corpus is small, so 1024 means "every merge it has".
# A harsh one for --harsh-teachers: no pre-tokenizer split inside a line, so merges cross words,
# spaces and digits (" = 22." as one piece), as a SentencePiece model without whitespace splitting can.
WHOLE_LINE = r"[^\n]+|\n"
TOKENIZERS = {"student": (LLAMA3_SPLIT, 1024), "arithmetic": (QWEN_SPLIT, 1024), "reverse": (GPT2_SPLIT, 1024),
              "harsh": (WHOLE_LINE, 1024)}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def make_data(root, args):
    """Writes root/data/{eval,fusion-clean,fusion-noisy,general,pool}_*.jsonl for args.data_seed."""
    data = root / "data"
    if (data / "DONE").exists():
        return data
    data.mkdir(parents=True, exist_ok=True)
    s = args.data_seed
    rng = random.Random(f"noise-{s}")
    fusion_clean, fusion_noisy, general, pools = [], [], [], []
    for skill in tasks.SKILLS:
        taken = set()

        def split(name, count):
            rows = tasks.make_split(skill, count, seed=f"{s}-{name}", exclude=taken)
            taken.update(r["prompt"] for r in rows)
            return rows

        write_jsonl(data / f"eval_{skill}.jsonl", split("eval", args.eval_size))
        fusion = split("fusion", args.fusion_size)
        wrong = set(rng.sample(range(len(fusion)), round(args.noise * len(fusion))))
        fusion_clean += fusion
        fusion_noisy += [tasks.corrupt(r, rng) if i in wrong else r for i, r in enumerate(fusion)]
        general += split("general", args.general_size)
        pool = split("pool", args.pool_size)
        write_jsonl(data / f"pool_{skill}.jsonl", pool)
        pools += pool
    for name, rows in [("fusion-clean", fusion_clean), ("fusion-noisy", fusion_noisy), ("general", general)]:
        random.Random(f"{name.split('-')[0]}-{s}").shuffle(rows)  # mixed, both fusion sets alike
        write_jsonl(data / f"{name}.jsonl", rows)
    write_jsonl(data / "pool_all.jsonl", pools)
    (data / "corpus.txt").write_text("".join(row["prompt"] + row["response"] + "\n" for row in pools + general))
    (data / "DONE").write_text("")
    return data


def pivot_pool(data, rows_per_skill):
    """The pivot's training file: the first rows_per_skill[skill] rows of each skill in the general
    pool, in the pool's mixed order (data/general-pivot-<n>-<n>.jsonl; returns its path). Fewer rows
    of a skill than the pool holds keep the pivot stably behind on it: with all 300 reversal rows,
    whether the pivot generalises reversal was a draw of its training seed (README, findings)."""
    counts = dict(zip(tasks.SKILLS, rows_per_skill))
    path = data / ("general-pivot-" + "-".join(str(n) for n in rows_per_skill) + ".jsonl")
    if not path.exists():
        taken = {skill: 0 for skill in tasks.SKILLS}
        keep = []
        for row in read_jsonl(data / "general.jsonl"):
            if taken[row["skill"]] < counts[row["skill"]]:
                taken[row["skill"]] += 1
                keep.append(row)
        write_jsonl(path, keep)
    return path


def dlf_held_out(data):
    """Each skill's held-out set for Dynamic Logit Fusion: the evaluation rows and the fusion set's
    rows of the skill (clean responses). No DLF model trains on either (the pivot and the small base
    train on the general pool, the experts on the teacher pools), and 80 questions alone leave a
    binomial spread of about ±5 points, wider than the differences the multi-task goal compares.
    Writes data/dlf-heldout_<skill>.jsonl; returns {skill: questions}."""
    fusion = read_jsonl(data / "fusion-clean.jsonl")
    sizes = {}
    for skill in tasks.SKILLS:
        rows = read_jsonl(data / f"eval_{skill}.jsonl") + [r for r in fusion if r["skill"] == skill]
        path = data / f"dlf-heldout_{skill}.jsonl"
        if not path.exists():
            write_jsonl(path, rows)
        sizes[skill] = len(rows)
    return sizes


def with_worked_examples(source, out, max_shots, share, seed):
    """`source` plus, for a `share` of its rows, a copy with 1..max_shots worked examples of the same
    skill (other rows of `source`) as chat turns before the question: {"messages": [...]}, rendered by
    the chat template exactly as `shots` renders them at evaluation. A model trained on it reads a
    few-shot prompt as well as a bare question (written once; returns `out`)."""
    if out.exists():
        return out
    rows = read_jsonl(source)
    by_skill = {}
    for i, r in enumerate(rows):
        by_skill.setdefault(r["skill"], []).append(i)
    rng = random.Random(f"icl-{seed}-{source.name}")
    extra = []
    for i in sorted(rng.sample(range(len(rows)), round(share * len(rows)))):
        row = rows[i]
        others = [j for j in by_skill[row["skill"]] if j != i]
        messages = []
        for j in rng.sample(others, rng.randint(1, max_shots)):
            messages += [{"role": "user", "content": rows[j]["prompt"]}, {"role": "assistant", "content": rows[j]["response"]}]
        messages += [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
        extra.append({"messages": messages, "skill": row["skill"]})
    mixed = rows + extra
    random.Random(f"icl-order-{seed}-{source.name}").shuffle(mixed)
    write_jsonl(out, mixed)
    return out


def make_tokenizers(root, data):
    """Byte-level BPE tokenizers in Hugging Face format, one per TOKENIZERS entry."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    made = {}
    for name, (pattern, size) in TOKENIZERS.items():
        d = root / "tokenizers" / name
        if not (d / "tokenizer.json").exists():
            d.mkdir(parents=True, exist_ok=True)
            tok = Tokenizer(models.BPE())
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
            tok.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=["<|endoftext|>"], show_progress=False,
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
            tok.train([str(data / "corpus.txt")], trainer)
            tok.save(str(d / "tokenizer.json"))
            (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>",
                                                                 "pad_token": "<|endoftext|>"}))
        made[name] = d
    return made


def token_spans(lf, tokenizer, texts, work):
    """Byte spans of each text's tokens, from `logitfuse tokenize`."""
    work.mkdir(parents=True, exist_ok=True)
    source = work / "texts.jsonl"
    write_jsonl(source, [{"text": t} for t in texts])
    out = lf("tokenize", "--tokenizer", tokenizer, "--input", source).stdout
    return [[tuple(o) for o in json.loads(line)["offsets"]] for line in out.splitlines() if line.strip()]


def exact_coverage(lf, toks, data, root):
    """Per teacher and skill: the share of the student's response tokens in the clean fusion set that
    have a teacher token over exactly the same bytes (what `alignment.positions: exact` can pair)."""
    rows = read_jsonl(data / "fusion-clean.jsonl")
    texts = [r["response"] for r in rows]  # train tokenizes the response on its own, as here
    spans = {name: token_spans(lf, toks[name], texts, root / "coverage" / name) for name in toks}
    coverage = {}
    for teacher in (n for n in toks if n != "student"):
        coverage[teacher] = {}
        for skill in tasks.SKILLS:
            total = same = 0
            for r, s_spans, t_spans in zip(rows, spans["student"], spans[teacher]):
                if r["skill"] == skill:
                    t_set = set(t_spans)
                    total += len(s_spans)
                    same += sum(sp in t_set for sp in s_spans)
            coverage[teacher][skill] = same / total
    for teacher, by_skill in coverage.items():
        log(f"tokenizers: share of the student's response tokens with an identical {teacher}-tokenizer token: "
            + ", ".join(f"{k} {100 * v:.0f}%" for k, v in by_skill.items()))
    return coverage
