#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) with the nightly toolchain and
# prints the executions of each. Findings land in fuzz/artifacts/<target>/.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Needs: rustup's nightly toolchain and `cargo install cargo-fuzz`.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
total=0
for target in "${targets[@]}"; do
  log="$(mktemp)"
  cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -max_len=4096 \
    -rss_limit_mb=2048 2>&1 | tee "$log" | grep -E "^(INFO|==|SUMMARY|Done)" || true
  runs="$(grep -oE 'Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' | tail -1)"
  if [[ -z "$runs" ]]; then
    echo "$target: FAILED (see fuzz/artifacts/$target)" >&2
    tail -40 "$log" >&2
    exit 1
  fi
  echo "$target: $runs executions in ${seconds}s, no crash"
  total=$((total + runs))
  rm -f "$log"
done
echo "all targets: $total executions"
