#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) with the nightly toolchain, starting
# from the committed seeds of valid inputs (fuzz/corpus/<target>/) and growing a working
# corpus in fuzz/work/<target>/ (not committed). For each target it prints the executions,
# the share of them the target accepted (a valid body, query, import line or JSON document:
# the success path the properties are about) and the share of the final working corpus it
# accepts (replayed once with -runs=0). fuzz/trackd.dict gives libFuzzer the wire's tokens.
# track_case and profile_case feed the proptest generators (mostly valid bodies) instead of
# raw bytes. Findings land in fuzz/artifacts/<target>/.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Needs: rustup's nightly toolchain and `cargo install cargo-fuzz`.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzz="$(pwd)/fuzz"
seconds="${1:-60}"
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

# "accepted refused" from the counts the target prints at exit (fuzz/src/lib.rs).
counts() {
  grep -oE 'trackd-fuzz-stats: accepted=[0-9]+ refused=[0-9]+' "$1" | tail -1 |
    sed -E 's/.*accepted=([0-9]+) refused=([0-9]+)/\1 \2/'
}
share() {
  local accepted=$1 refused=$2
  local all=$((accepted + refused))
  if [[ $all -eq 0 ]]; then
    echo "none of 0"
  else
    echo "$accepted of $all ($((accepted * 100 / all))%)"
  fi
}

total=0
for target in "${targets[@]}"; do
  mkdir -p "$fuzz/work/$target"
  log="$(mktemp)"
  TRACKD_FUZZ_STATS=1 cargo +nightly fuzz run "$target" "$fuzz/work/$target" \
    "$fuzz/corpus/$target" -- -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=2048 \
    -dict="$fuzz/trackd.dict" \
    2>&1 | tee "$log" | grep -E "^(INFO|==|SUMMARY|Done)" || true
  runs="$(grep -oE 'Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' | tail -1)"
  if [[ -z "$runs" ]]; then
    echo "$target: FAILED (see fuzz/artifacts/$target)" >&2
    tail -40 "$log" >&2
    exit 1
  fi
  read -r run_accepted run_refused < <(counts "$log")
  # The final corpus, each input once: what share of what the fuzzer kept is valid.
  TRACKD_FUZZ_STATS=1 cargo +nightly fuzz run "$target" "$fuzz/work/$target" -- -runs=0 \
    -max_len=4096 >"$log" 2>&1
  read -r corpus_accepted corpus_refused < <(counts "$log")
  echo "$target: $runs executions in ${seconds}s, no crash;" \
    "accepted $(share "$run_accepted" "$run_refused") executions;" \
    "final corpus: $(share "$corpus_accepted" "$corpus_refused") inputs accepted"
  total=$((total + runs))
  rm -f "$log"
done
echo "all targets: $total executions"
