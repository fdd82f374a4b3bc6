#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS] [TARGET ...]: builds the libFuzzer targets of fuzz/ (clang, ASan + UBSan,
# no LibTorch) in build-fuzz/ and runs each for SECONDS (default 10) on its seed corpus: fuzz/seeds/
# plus the test fixtures that are inputs of its parser. First each target replays the inputs that once
# crashed it (fuzz/regressions/TARGET/: every crash found becomes one); they must pass. Prints one line per target (executions,
# crashes) and exits 1 if any target crashed, naming the input that crashed it.
#   FUZZ_RUNS=N        stop a target after N executions (the long run: FUZZ_RUNS=1000000 scripts/fuzz.sh 3600)
#   FUZZ_JOBS=N        targets run at once (default 1)
#   FUZZ_WORK=DIR      where corpora, logs and crashing inputs go (default: a new temporary folder);
#                      the seeds are copied there, so the corpus growing never touches the checkout.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$LOGITFUSE_ROOT"

seconds=${1:-10}
shift || true
build=${LOGITFUSE_FUZZ_BUILD:-$LOGITFUSE_ROOT/build-fuzz}
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$LOGITFUSE_ROOT}
if [ ! -f "$build/build.ninja" ]; then
  log "configuring $build (clang, -DLOGITFUSE_FUZZ=ON)"
  cmake -S . -B "$build" -G Ninja -DLOGITFUSE_FUZZ=ON -DCMAKE_CXX_COMPILER="${FUZZ_CXX:-clang++}" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
log "building the fuzz targets"
ninja -C "$build" -j "${LOGITFUSE_JOBS:-$(nproc)}" >/dev/null || { ninja -C "$build" -j 1 | tail -30; exit 1; }

targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < "$build/fuzz_targets.txt"
work=${FUZZ_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/logitfuse-fuzz.XXXXXX")}
mkdir -p "$work"

# Fixture files that are inputs of each target's parser (added to fuzz/seeds/TARGET).
fixtures() {
  case "$1" in
    fuzz_model_config) ls tests/fixtures/hub_configs/*.json tests/fixtures/paper_models/*/config.json ;;
    fuzz_chat_template | fuzz_jinja) ls tests/fixtures/chat_templates/*.jinja ;;
    fuzz_recipe) ls configs/*.yaml ;;
    fuzz_tokenizer_json) ;;  # tokenizer_config.json fixtures go in as "{}\0CONFIG" below
  esac
}

run_target() {
  local t=$1 dir=$work/$1
  mkdir -p "$dir/corpus" "$dir/crashes"
  [ -d "fuzz/seeds/$t" ] && cp fuzz/seeds/"$t"/* "$dir/corpus/"
  for f in $(fixtures "$t"); do cp "$f" "$dir/corpus/fixture-$(echo "$f" | tr / _)"; done
  if [ "$t" = fuzz_tokenizer_json ]; then
    for f in tests/fixtures/paper_models/*/tokenizer_config.json; do
      cat "fuzz/seeds/$t/gpt2" <(printf '\0') "$f" > "$dir/corpus/fixture-$(echo "$f" | tr / _)"
    done
  fi
  # The regressions: each input once (libFuzzer runs the files it is given); then part of the corpus.
  if [ -d "fuzz/regressions/$t" ]; then
    if ! "$build/bin/$t" fuzz/regressions/"$t"/* >"$dir/regressions.log" 2>&1; then
      printf '%-24s %10s executions  1 crashes  a regression input of fuzz/regressions/%s crashes it (log %s)\n' \
        "$t" 0 "$t" "$dir/regressions.log"
      return
    fi
    cp fuzz/regressions/"$t"/* "$dir/corpus/"
  fi
  local runs=()
  [ -n "${FUZZ_RUNS:-}" ] && runs=(-runs="$FUZZ_RUNS")
  # -timeout: an input taking longer is a hang (a finding); -rss_limit_mb: so is using more memory.
  "$build/bin/$t" "$dir/corpus" -max_total_time="$seconds" "${runs[@]}" \
    -timeout="${FUZZ_TIMEOUT:-20}" -rss_limit_mb="${FUZZ_RSS_MB:-2048}" -print_final_stats=1 \
    -artifact_prefix="$dir/crashes/" >"$dir/log" 2>&1 || true
  local execs crashes
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$dir/log" | grep -o '[0-9]*$' | tail -1)
  crashes=$(find "$dir/crashes" -type f | wc -l)
  if [ "$crashes" -gt 0 ]; then
    printf '%-24s %10s executions  %d crashes  %s (log %s)\n' "$t" "${execs:-?}" "$crashes" \
      "$(find "$dir/crashes" -type f | head -1)" "$dir/log"
  elif [ -z "$execs" ]; then
    printf '%-24s %10s executions  %d crashes  did not run (log %s)\n' "$t" "?" 0 "$dir/log"
  else
    printf '%-24s %10s executions  %d crashes\n' "$t" "$execs" 0
  fi
}

log "running ${#targets[@]} targets for ${seconds}s each${FUZZ_RUNS:+ (at most $FUZZ_RUNS executions)} in $work"
export -f run_target fixtures
export work build seconds
printf '%s\n' "${targets[@]}" | xargs -P "${FUZZ_JOBS:-1}" -I{} bash -c 'run_target {}' | tee "$work/summary.txt"
bad=$(grep -cvE ' 0 crashes$' "$work/summary.txt" || true)
if [ "$bad" -gt 0 ]; then
  log "$bad target(s) crashed or did not run; inputs and logs under $work"
  exit 1
fi
log "all targets: 0 crashes (corpora under $work)"
