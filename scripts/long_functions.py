"""Lists functions in lib/ longer than a limit (default 80 lines), outside lib/kernels/: the length
budget of docs/architecture.md. A function is a brace block opened at namespace level (a free
function or a member defined out of line) or inside a class body; string, character and raw-string
literals and comments are blanked before braces are counted. Exit 1 when any is over the limit and
not listed in ALLOWED (a dispatch table that says why in a comment).

    python scripts/long_functions.py [--limit 80]"""
import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Dispatch tables: one branch per name, each a line or two, and nothing to gain from splitting them.
ALLOWED = {("lib/template/jinja_builtins.cpp", "apply_filter"), ("lib/template/jinja_strings.cpp", "string_method")}


def blank_literals(text):
    """The text with comments and string/char literals replaced by spaces (newlines kept)."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i)); i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j])); i = j
        elif text.startswith('R"', i) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            d = text.index("(", i)
            delim = ")" + text[i + 2:d] + '"'
            j = text.index(delim, d) + len(delim)
            out.append(re.sub(r"[^\n]", " ", text[i:j])); i = j
        elif text[i] in "\"'":
            q, j = text[i], i + 1
            while j < n and text[j] != q:
                j += 2 if text[j] == "\\" else 1
            out.append(" " * (j + 1 - i)); i = j + 1
        else:
            out.append(text[i]); i += 1
    return "".join(out)


def functions(path):
    """(name, first line, line count) of each function body in the file."""
    text = blank_literals(path.read_text())
    lines = text.split("\n")
    scopes = []  # per open brace: "function" or "scope"
    found, start = [], None
    header = ""
    for lineno, line in enumerate(lines, 1):
        for k, ch in enumerate(line):
            if ch == "{":
                inside_function = "function" in scopes
                prefix = (header + line[:k]).strip()
                is_function = (not inside_function and prefix.endswith(")") or re.search(r"\)\s*(const|noexcept|override|final|\s)*$", prefix)
                               or re.search(r"\)\s*(const\s*)?(noexcept\s*)?:\s*[\w:<>]+[({]", prefix)) and not re.match(
                    r"^(namespace|struct|class|enum|union)\b", prefix.split("\n")[-1].strip())
                if not inside_function and is_function and not re.search(r"\b(if|for|while|switch|catch)\s*\(", prefix.split(";")[-1][-80:].split("{")[-1][:20]):
                    name = re.findall(r"([\w:~]+)\s*\(", prefix)
                    found.append([name[0] if name else "?", lineno, None])
                    scopes.append("function")
                else:
                    scopes.append("scope")
                header = ""
            elif ch == "}":
                kind = scopes.pop() if scopes else "scope"
                if kind == "function" and "function" not in scopes:
                    found[-1][2] = lineno - found[-1][1] + 1
                header = ""
            elif ch == ";":
                header = ""
        header += line + "\n" if "{" not in line and "}" not in line else line[line.rfind("}") + 1 if "}" in line else 0:] + "\n"
        header = header[-400:]
    return [(n, l, c) for n, l, c in found if c]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=80)
    args = ap.parse_args()
    over = []
    for path in sorted((ROOT / "lib").rglob("*")):
        if path.suffix not in (".cpp", ".h", ".cu") or "kernels" in path.relative_to(ROOT).parts:
            continue
        rel = str(path.relative_to(ROOT))
        for name, line, count in functions(path):
            short = name.split("::")[-1]
            if count > args.limit and (rel, short) not in ALLOWED:
                over.append((count, rel, line, name))
    for count, rel, line, name in sorted(over, reverse=True):
        print(f"{rel}:{line}: {name}: {count} lines")
    print(f"{len(over)} function(s) over {args.limit} lines")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
