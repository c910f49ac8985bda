#!/usr/bin/env bash
# /v1 ingest benchmark (issue 14): a release trackd on a fresh data dir, durable commits,
# driven by wrk with Segment track calls (bench/wrk_v1.lua), each with its own messageId:
# /v1/batch with 100 calls a request, then single /v1/track calls, same connections.
#
#   [V1_FLAGS="--message-id-window 0"] bench/v1_batch.sh [ROUNDS] [SECONDS] [CONNECTIONS] [BATCH]
#
# Prints events/s, requests/s, p50/p99 and peak RSS per round and mode, then the medians.
# Needs wrk and python3. Data dirs are under target/ (a real disk: fsync is not free).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}; secs=${2:-10}; conns=${3:-16}; size=${4:-100}
. bench/lib.sh
bench_setup

for r in $(seq 1 "$rounds"); do
  for mode in batch single; do
    # shellcheck disable=SC2086 # extra serve flags, split on purpose
    bench_start "$work/$mode$r" "$work/trackd-$mode$r.log" ${V1_FLAGS:-}
    export WRK_AUTH="Basic $(printf '%s:' "$token" | base64 -w0)"
    if [ "$mode" = batch ]; then export WRK_BATCH=$size; else export WRK_BATCH=1; fi
    WRK_OFFSET=900000000 wrk -t1 -c"$conns" -d2s -s bench/wrk_v1.lua "http://127.0.0.1:$port" >/dev/null 2>&1 # warm-up
    wrk -t1 -c"$conns" -d"${secs}s" --latency -s bench/wrk_v1.lua "http://127.0.0.1:$port" >"$work/wrk-$mode$r.out" 2>&1
    awk '/VmHWM/{print $2}' "/proc/$pid/status" >"$work/rss-$mode$r"
    kill -TERM "$pid"; wait "$pid" || true; pid=
  done
done

python3 - "$work" "$rounds" "$size" <<'PY'
import os, re, statistics, sys
work, rounds, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
res = {"batch": [], "single": []}
for r in range(1, rounds + 1):
    for mode, per in (("batch", size), ("single", 1)):
        out = open(os.path.join(work, f"wrk-{mode}{r}.out")).read()
        if "Non-2xx" in out:
            sys.exit(f"{mode}: non-2xx answers:\n" + out)
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        p50 = int(re.search(r"latency_us p50=(\d+)", out).group(1)) / 1000
        p99 = int(re.search(r"p99=(\d+)", out).group(1)) / 1000
        rss = int(open(os.path.join(work, f"rss-{mode}{r}")).read()) / 1024
        res[mode].append((rps * per, rps, p50, p99, rss))
        print(f"round {r} {mode:6}: events/s {rps*per:9.0f}  requests/s {rps:8.0f}  "
              f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  peak RSS {rss:.1f} MiB")
for mode, rows in res.items():
    med = lambda i: statistics.median(x[i] for x in rows)
    print(f"median {mode:6}: events/s {med(0):9.0f}  requests/s {med(1):8.0f}  "
          f"p50 {med(2):.2f} ms  p99 {med(3):.2f} ms  peak RSS {med(4):.1f} MiB")
PY
