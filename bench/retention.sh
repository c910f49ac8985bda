#!/usr/bin/env bash
# The cost of retention under ingest (DESIGN §10): a data dir seeded with old history
# (export lines received in 2020, restored by `trackd import`), then alternating rounds of
# the ingest load (bench/wrk_track.lua, as bench/ingest.sh) on a copy of it: "off" with the
# project's retention off, "on" with 90 days, so the background task deletes the old
# events, 500 per transaction, while the load runs.
#
#   bench/retention.sh [OLD_EVENTS] [ROUNDS] [SECONDS] [CONNECTIONS]
#
# Prints per round events/s, p50/p99 latency, the old events deleted during the load, and
# the retention steps' time (from the server's debug log: each step's wait for the writer
# included); then the median of each mode. TRACKD_BIN=path runs another build.
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:-1000000}; rounds=${2:-2}; secs=${3:-10}; conns=${4:-64}
. bench/lib.sh
bench_setup

seed="$work/seed"
"$bin" project create bench --data-dir "$seed" --json >/dev/null
python3 - "$old" >"$work/old.ndjson" <<'PY'
import json, sys
for n in range(int(sys.argv[1])):
    print(json.dumps({"id": n + 1, "user": {"id": str(n % 100000)}, "event_name": "Viewed product",
        "event_key": "viewed_product",
        "data": {"product_name": "Red T-shirt", "product_url": "http://www.yourdomain.com/products/red-t-shirt", "n": n},
        "source": "bench", "created_at": "2020-01-01T00:00:00Z",
        "received_at": f"2020-01-{1 + n // 86400 % 28:02d}T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}Z"}))
PY
"$bin" import "$work/old.ndjson" --project bench --data-dir "$seed" >/dev/null 2>&1
rm "$work/old.ndjson"

for r in $(seq 1 "$rounds"); do
  for mode in off on; do
    data="$work/data-$mode$r"
    cp -r "$seed" "$data"
    if [ "$mode" = on ]; then
      "$bin" project set bench --retention 90d --data-dir "$data" 2>/dev/null
    fi
    token=$("$bin" token add --project bench --data-dir "$data" --json |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["tracking_token"])')
    TRACKD_LOG=info,trackd_server::retention=debug bench_serve "$data" "$work/$mode$r.log"
    before=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^trackd_retention_deleted_events_total/{print $2}')
    wrk -t1 -c"$conns" -d"${secs}s" --latency -s bench/wrk_track.lua "http://127.0.0.1:$port" >"$work/wrk-$mode$r.out" 2>&1
    after=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^trackd_retention_deleted_events_total/{print $2}')
    echo "$((${after:-0} - ${before:-0}))" >"$work/deleted-$mode$r"
    kill -TERM "$pid"; wait "$pid" || true; pid=
    rm -rf "$data"
  done
done

python3 - "$work" "$rounds" "$secs" <<'PY'
import os, re, statistics, sys
work, rounds, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
res = {"off": [], "on": []}
for r in range(1, rounds + 1):
    for mode in ("off", "on"):
        out = open(os.path.join(work, f"wrk-{mode}{r}.out")).read()
        if "Non-2xx" in out:
            sys.exit("non-2xx answers:\n" + out)
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        p50 = int(re.search(r"latency_us p50=(\d+)", out).group(1)) / 1000
        p99 = int(re.search(r"p99=(\d+)", out).group(1)) / 1000
        deleted = int(open(os.path.join(work, f"deleted-{mode}{r}")).read())
        steps = [int(m) / 1000 for m in re.findall(r"elapsed_us=(\d+)", open(os.path.join(work, f"{mode}{r}.log")).read())]
        steps.sort()
        step = (f"{len(steps)} steps, p50 {steps[len(steps) // 2]:.1f} ms, p99 {steps[int(len(steps) * 0.99)]:.1f} ms, "
                f"max {steps[-1]:.1f} ms") if steps else "no steps"
        res[mode].append((rps, p50, p99, deleted))
        print(f"round {r} retention {mode}: events/s {rps:.0f}  p50 {p50:.2f} ms  p99 {p99:.2f} ms  "
              f"old events deleted {deleted} ({deleted / secs:.0f}/s); {step}")
for mode in ("off", "on"):
    med = lambda i: statistics.median(x[i] for x in res[mode])
    print(f"median retention {mode}: events/s {med(0):.0f}  p50 {med(1):.2f} ms  p99 {med(2):.2f} ms  "
          f"deleted {med(3):.0f} ({med(3) / secs:.0f}/s)")
PY
