"""The code's shape, as docs/architecture.md states it: no function in lib/ over 80 lines (outside
lib/kernels/ and the dispatch tables scripts/long_functions.py names), and the module table's
"depends on" column equal to the libraries each lf_<module> target links (CMakeLists.txt), which the
build enforces through per-module include roots."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_function_in_lib_is_over_80_lines():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "long_functions.py")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 function(s) over 80 lines" in proc.stdout


def cmake_modules():
    text = (ROOT / "CMakeLists.txt").read_text()
    out = {}
    for name, deps in re.findall(r"^logitfuse_module\((\w+)(?: DEPENDS ([\w ]+))?\)", text, re.M):
        out[name] = set(deps.split()) if deps else set()
    return out


def documented_modules(names):
    out = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        m = re.match(r"^\| `(\w+)` \|.*\| ([^|]*) \|$", line)
        if m and m.group(1) in names:
            out[m.group(1)] = {w for w in re.findall(r"[a-z]+", re.sub(r"\(.*?\)", "", m.group(2))) if w in names}
    return out


def test_the_module_table_states_what_the_build_links():
    built = cmake_modules()
    assert len(built) >= 15 and "train" in built and built["core"] == set()
    for name in built:
        assert (ROOT / "lib" / name).is_dir(), name
    assert {p.name for p in (ROOT / "lib").iterdir() if p.is_dir()} == set(built)
    documented = documented_modules(set(built))
    assert set(documented) == set(built)
    for name, deps in built.items():
        assert documented[name] == deps, (name, documented[name], deps)
