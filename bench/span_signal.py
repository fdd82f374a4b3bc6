"""How much of the teacher's soft signal span alignment carries to a student of another tokenizer,
per UTF-8 byte, against what the same-tokenizer twin gets: a diagnostic for the span proof
(bench/real_span.py), where span keeps only part of the twin's gain on German and French.

For each domain's dev text (bench/real_text.py): Gemma-3-270M's top-k next-token distribution
(renormalised) at each of its tokens, which is what the twin distils from; and
`logitfuse align --method span`'s targets over SmolLM2's tokens, built from the same distributions,
which is what the SmolLM2-tokenizer student distils from. Per byte of text: positions, positions
with a target, the target mass off the actual next token (what the KL term adds beyond SFT's
one-hot label), and the targets' entropy. And whether span's off-label mass lands on tokens the
student's own tokenizer writes there: a target token u at student position i counts as in context
when tokenizing the text before position i followed by u's text gives the text's first i tokens and
u. The same check on the actual next token is its control (it fails where a word's BPE merges
depend on what follows).

    scripts/fetch-models.sh && python bench/span_signal.py [--eval-bytes 6000] [--top-k 32]

Writes runs/span-signal/report.json and prints a markdown table."""
import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import real_text  # noqa: E402

BINARY = Path(os.environ.get("LOGITFUSE_BIN", ROOT / "build" / "bin" / "logitfuse"))
MODELS = Path(os.environ.get("LOGITFUSE_HOME", Path.home() / ".cache" / "logitfuse")) / "models"
TEACHER, STUDENT = MODELS / "gemma-3-270m", MODELS / "smollm2-135m-instruct"


def teacher_rows(model, tok, text, k):
    """The teacher's renormalised top-k distribution predicting each of its tokens of `text`
    (after its BOS, as the benchmark reads a base model's text)."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    logits = model(torch.tensor([[tok.bos_token_id] + ids])).logits[0, :-1].float()
    top, index = torch.softmax(logits, -1).topk(k, -1)
    return ids, top / top.sum(-1, keepdim=True), index


def in_context(student_tok, text, student, targets):
    """(actual tokens passing, actual tokens checked, off-label mass passing, off-label mass) of
    one text's span targets under the in-context check above."""
    offsets = student_tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    candidates, keys = [], []
    for target in targets:
        i = target["token"]
        for u, q in zip(target["ids"], target["probs"]):
            piece = student_tok.decode([u])
            if "\ufffd" not in piece:  # a token that is part of a character is not text on its own
                candidates.append(text[:offsets[i][0]] + piece)
                keys.append((i, u, q))
    actual_ok = actual = off_ok = off = 0.0
    for (i, u, q), ids in zip(keys, student_tok(candidates, add_special_tokens=False)["input_ids"] if candidates else []):
        ok = ids == student[:i] + [u]
        if u == student[i]:
            actual, actual_ok = actual + 1, actual_ok + ok
        else:
            off, off_ok = off + q, off_ok + q * ok
    return actual_ok, actual, off_ok, off


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eval-bytes", type=int, default=6000, help="dev text per domain")
    p.add_argument("--chunk-bytes", type=int, default=1000)
    p.add_argument("--top-k", type=int, default=32)
    p.add_argument("--out", default=str(ROOT / "runs" / "span-signal"))
    a = p.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    real_text.build(out / "data", a.chunk_bytes, a.chunk_bytes, a.eval_bytes)
    texts = {d: [json.loads(l)["response"] for l in (out / "data" / f"dev_{d}.jsonl").read_text().splitlines()]
             for d in real_text.DOMAINS}
    tok = AutoTokenizer.from_pretrained(TEACHER)
    model = AutoModelForCausalLM.from_pretrained(TEACHER, dtype=torch.float32).eval()
    twin, lines, order = {}, [], []  # order: (domain, text) per align input line
    with torch.inference_mode():
        for domain, chunks in texts.items():
            t = twin.setdefault(domain, {"bytes": 0, "positions": 0, "off_label": 0.0, "entropy": 0.0})
            for text in chunks:
                ids, top, index = teacher_rows(model, tok, text, a.top_k)
                on_label = torch.where(index == torch.tensor(ids)[:, None], top, torch.zeros_like(top)).sum(-1)
                t["bytes"] += len(text.encode())
                t["positions"] += len(ids)
                t["off_label"] += float((1 - on_label).sum())
                t["entropy"] += float(-(top * top.clamp_min(1e-30).log()).sum())
                lines.append(json.dumps({"text": text, "teacher": [{"ids": index[j].tolist(), "probs": top[j].tolist()}
                                                                   for j in range(len(ids))]}))
                order.append((domain, text))
    (out / "align.jsonl").write_text("\n".join(lines) + "\n")
    aligned = subprocess.run([str(BINARY), "align", "--student-tokenizer", str(STUDENT), "--teacher-tokenizer",
                              str(TEACHER), "--input", str(out / "align.jsonl"), "--method", "span"],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    student_tok = AutoTokenizer.from_pretrained(STUDENT)
    span = {}
    for (domain, text), line in zip(order, aligned):
        j = json.loads(line)
        s = span.setdefault(domain, {"positions": 0, "targets": 0, "off_label": 0.0, "entropy": 0.0,
                                     "check": [0.0, 0.0, 0.0, 0.0]})
        student = j["student_ids"]
        s["check"] = [a + b for a, b in zip(s["check"], in_context(student_tok, text, student, j["targets"]))]
        s["positions"] += len(student)
        for target in j["targets"]:
            probs = dict(zip(target["ids"], target["probs"]))
            s["targets"] += 1
            s["off_label"] += 1 - probs.get(student[target["token"]], 0.0)
            s["entropy"] += -sum(q * math.log(q) for q in target["probs"] if q > 0)
    rows = []
    print("| domain | twin: positions / byte | twin: off-label mass / byte | twin: entropy / byte | span: positions / byte "
          "| span: with a target | span: off-label mass / byte | span: entropy / byte | off-label mass, span ÷ twin "
          "| span: off-label mass in context | control: actual token in context |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for d in texts:
        t, s, b = twin[d], span[d], twin[d]["bytes"]
        rows.append({"domain": d, "bytes": b, "twin": t, "span": s})
        print(f"| {d} | {t['positions'] / b:.3f} | {t['off_label'] / b:.4f} | {t['entropy'] / b:.4f} | "
              f"{s['positions'] / b:.3f} | {s['targets'] / max(s['positions'], 1):.3f} | {s['off_label'] / b:.4f} | "
              f"{s['entropy'] / b:.4f} | {s['off_label'] / t['off_label']:.2f} | {s['check'][2] / s['check'][3]:.3f} | "
              f"{s['check'][0] / s['check'][1]:.3f} |")
    (out / "report.json").write_text(json.dumps({"settings": vars(a), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
