"""Real text for the real-model benchmark, from files Debian packages install: manual pages in German,
French and English (`/usr/share/man/{de,fr,}/man1`, roff markup removed) and Python source (the
standard library of Debian's python3). Split by source file, never by chunk: a page is held out in
every language at once, so a translation cannot leak the held-out text into training.

Splits (by a hash of the page or module name, fixed): 70 % train, 10 % dev (for choosing
hyperparameters), 20 % test (reported)."""
import glob
import gzip
import hashlib
import json
import os
import re
import sys
from pathlib import Path

DOMAINS = ["de", "fr", "en", "code"]
MAN = Path("/usr/share/man")


def split_of(name):
    """Fixed split of a page/module name: train, dev or test."""
    h = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 10
    return "test" if h < 2 else "dev" if h < 3 else "train"


# groff's special characters (groff_char(7)) that these pages use; the rest are dropped.
_GLYPHS = {":a": "ä", ":o": "ö", ":u": "ü", ":A": "Ä", ":O": "Ö", ":U": "Ü", "ss": "ß", ":e": "ë", ":i": "ï",
           ":y": "ÿ", "'a": "á", "'e": "é", "'i": "í", "'o": "ó", "'u": "ú", "'E": "É", "`a": "à", "`e": "è",
           "`u": "ù", "`E": "È", "`A": "À", "^a": "â", "^e": "ê", "^i": "î", "^o": "ô", "^u": "û", "^E": "Ê",
           ",c": "ç", ",C": "Ç", "oe": "œ", "OE": "Œ", "ae": "æ", "Fo": "«", "Fc": "»", "fo": "‹", "fc": "›",
           "lq": "“", "rq": "”", "oq": "‘", "cq": "’", "aq": "'", "dq": '"', "em": "—", "en": "–", "hy": "-",
           "bu": "•", "co": "©", "rg": "®", "tm": "™", "mu": "×", "de": "°", "rs": "\\", "ti": "~", "ha": "^",
           ">=": "≥", "<=": "≤", "->": "→", "<-": "←", "ua": "↑", "da": "↓", "sl": "/", "ba": "|", "at": "@",
           "sh": "#", "Do": "$", "lB": "[", "rB": "]", "lC": "{", "rC": "}", "la": "⟨", "ra": "⟩", "...": "…"}


def _glyph(match):
    name = match.group(1) or match.group(2)
    if name in _GLYPHS:
        return _GLYPHS[name]
    if re.fullmatch(r"u[0-9A-F]{4,5}", name):
        return chr(int(name[1:], 16))
    return ""


_ESCAPES = [(r"\\f(\[[^]]*\]|\(..|.)", ""), (r"\\s[-+]?\d", ""), (r"\\\*(\[[^]]*\]|\(..|.)", ""),
            (r"\\[hvwo]'[^']*'", ""), (r"\\\((..)|\\\[([^]]*)\]", _glyph), (r"\\-", "-"), (r"\\e", "\\\\"),
            (r"\\[&%c:|^)/,]", ""), (r"\\ ", " "), (r"\\~", " "), (r'\\"', "")]
_TEXT_MACROS = {"SH", "SS", "B", "I", "BI", "BR", "IB", "IR", "RB", "RI", "SM", "SB", "TP", "IP", "UR", "MT", "OP", "Nm",
                "Nd", "Ar", "Fl", "It", "Sh", "Pa", "Xr", "Dl"}


def strip_roff(source):
    """Plain text of a roff manual page: text lines and the text of font and heading macros; other
    requests, comments, definitions and tables' control lines dropped."""
    out, skipping = [], False
    for line in source.splitlines():
        if skipping:
            skipping = not line.startswith("..")
            continue
        if line.startswith((".de", ".ig")):
            skipping = True
            continue
        if line.startswith(('.\\"', "'\\\"", '\\"')):
            continue
        if line.startswith((".", "'")):
            parts = line[1:].strip().split(None, 1)
            if not parts or parts[0] not in _TEXT_MACROS or len(parts) == 1:
                if parts and parts[0] in ("PP", "LP", "P", "SH", "SS", "sp", "Pp"):
                    out.append("")
                continue
            args = re.findall(r'"((?:[^"]|"")*)"|(\S+)', parts[1])
            words = [a or b for a, b in args]
            if parts[0] in ("TP", "IP"):  # indents and tags: .IP "\(bu" 4
                words = words[:1] if parts[0] == "IP" and not words[0].isdigit() else []
            line = " ".join(words)
            if parts[0] in ("SH", "SS", "Sh"):
                out.append("")
        for pattern, repl in _ESCAPES:
            line = re.sub(pattern, repl, line)
        out.append(line.rstrip())
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()
    return text


def man_pages(lang):
    """(name, text) of every section-1 page in `lang` ('' for English), sorted by name."""
    folder = MAN / lang / "man1" if lang else MAN / "man1"
    pages = []
    for path in sorted(glob.glob(str(folder / "*.1.gz"))):
        name = os.path.basename(path)[: -len(".1.gz")]
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            source = f.read()
        if source.startswith(".so "):  # a link to another page
            continue
        text = strip_roff(source)
        if len(text) > 400:
            pages.append((name, text))
    return pages


def python_modules():
    """(name, source) of the top-level modules of the system Python's standard library."""
    folders = sorted(glob.glob("/usr/lib/python3.[0-9]*"))
    folders = [f for f in folders if re.fullmatch(r"/usr/lib/python3\.\d+", f)]
    if not folders:
        return []
    out = []
    for path in sorted(glob.glob(folders[-1] + "/*.py")):
        text = Path(path).read_text(encoding="utf-8", errors="replace")
        if len(text) > 400:
            out.append((Path(path).stem, text))
    return out


def documents(domain):
    if domain == "code":
        return python_modules()
    lang = {"de": "de", "fr": "fr", "en": ""}[domain]
    pages = man_pages(lang)
    if domain == "en":  # the pages that exist in German or French too: the same tools, other texts
        translated = {n for n, _ in man_pages("de")} | {n for n, _ in man_pages("fr")}
        pages = [p for p in pages if p[0] in translated]
    return pages


def chunks(text, size):
    """Pieces of about `size` bytes, cut at blank lines (else at line ends), none empty."""
    out, cur = [], ""
    for para in re.split(r"(\n\s*\n)", text):
        if len((cur + para).encode()) > size and cur.strip():
            out.append(cur.strip("\n"))
            cur = ""
        while len(para.encode()) > size:  # a long paragraph: cut at a line end
            cut = para.rfind("\n", 0, size)
            cut = cut if cut > 0 else size
            if cur.strip() or para[:cut].strip():
                out.append((cur + para[:cut]).strip("\n"))
            cur, para = "", para[cut:]
        cur += para
    if cur.strip():
        out.append(cur.strip("\n"))
    return [c for c in out if c.strip()]


def build(out_dir, chunk_bytes, train_bytes, eval_bytes):
    """Writes train.jsonl (the domains interleaved, `train_bytes` per domain), dev_<domain>.jsonl and
    test_<domain>.jsonl (`eval_bytes` per domain each), as {"prompt": "", "response": chunk}.
    Returns a summary: files and bytes per domain and split, and a hash of the corpus."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_split = {}
    summary = {"chunk_bytes": chunk_bytes, "domains": {}}
    for domain in DOMAINS:
        docs = documents(domain)
        if not docs:
            sys.exit(f"real_text: no {domain} documents on this machine (Debian's manual pages and python3 are needed)")
        budget = {"train": train_bytes, "dev": eval_bytes, "test": eval_bytes}
        taken = {s: [] for s in budget}
        files = {s: 0 for s in budget}
        # Round-robin over the files of a split, one chunk each, so that many files are represented.
        by_split = {s: [chunks(t, chunk_bytes) for n, t in docs if split_of(n) == s] for s in budget}
        for s, lists in by_split.items():
            used = 0
            depth = 0
            while used < budget[s] and any(depth < len(l) for l in lists):
                for l in lists:
                    if depth < len(l) and used < budget[s]:
                        taken[s].append(l[depth])
                        used += len(l[depth].encode())
                depth += 1
            files[s] = sum(1 for l in lists if l)
            per_split.setdefault(s, {})[domain] = taken[s]
        summary["domains"][domain] = {s: {"files": files[s], "chunks": len(taken[s]),
                                          "bytes": sum(len(c.encode()) for c in taken[s])} for s in budget}
    train = []
    longest = max(len(v) for v in per_split["train"].values())
    for i in range(longest):  # interleaved, so every step sees every domain
        for domain in DOMAINS:
            if i < len(per_split["train"][domain]):
                train.append(per_split["train"][domain][i])
    digest = hashlib.sha256()

    def write(name, texts):
        data = "".join(json.dumps({"prompt": "", "response": t}, ensure_ascii=False) + "\n" for t in texts)
        digest.update(data.encode())
        (out_dir / name).write_text(data, encoding="utf-8")

    write("train.jsonl", train)
    for s in ("dev", "test"):
        for domain in DOMAINS:
            write(f"{s}_{domain}.jsonl", per_split[s][domain])
    summary["sha256"] = digest.hexdigest()
    (out_dir / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--chunk-bytes", type=int, default=1200)
    p.add_argument("--train-bytes", type=int, default=60000)
    p.add_argument("--eval-bytes", type=int, default=6000)
    a = p.parse_args()
    print(json.dumps(build(a.out, a.chunk_bytes, a.train_bytes, a.eval_bytes), indent=2))
