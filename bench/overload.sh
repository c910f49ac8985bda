#!/usr/bin/env bash
# Overload: what trackd answers when offered more than a limit lets through, and how fast
# normal service returns once the load stops.
#
#   bench/overload.sh [SECONDS] [TOKEN_RATE] [WRITE_QUEUE]
#
# Two runs of wrk at full speed (64 connections) against a release trackd:
#   1. --token-rate TOKEN_RATE (default 5000/s): the excess must be 429 + Retry-After;
#   2. --write-queue WRITE_QUEUE (default 16) with 256 connections: the excess must be 503
#      (--max-in-flight-per-ip 0: all of wrk's connections share one address).
# For each: requests offered and answered per status (from /metrics), events stored, and
# the time from the end of the load to the first 200 of a fresh request.
# Needs wrk and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}; rate=${2:-5000}; queue=${3:-16}
. bench/lib.sh
bench_setup

run() { # name conns serve-flags...
  local name=$1 conns=$2; shift 2
  bench_start "$work/$name" "$work/$name.log" "$@"
  wrk -t1 -c"$conns" -d"${secs}s" -s bench/wrk_track.lua "http://127.0.0.1:$port" >"$work/$name.wrk" 2>&1
  # Time from the end of the load to the first 200 of a fresh request.
  python3 - "$port" "$token" >"$work/$name.recovery" <<'PY'
import json, sys, time, urllib.request, urllib.error
port, token = sys.argv[1], sys.argv[2]
url = f"http://127.0.0.1:{port}/api/v2/events/track?auth_token={token}"
start = time.monotonic()
n = 0
while True:
    n += 1
    body = json.dumps({"identity": {"id": "probe"}, "event_name": "recovery", "data": {"n": n}}).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=5) as r:
            if r.status == 200:
                break
    except urllib.error.HTTPError:
        pass
    time.sleep(0.001)
print(f"{(time.monotonic() - start) * 1000:.1f}")
PY
  curl -s "http://127.0.0.1:$port/metrics" >"$work/$name.metrics"
  kill -TERM "$pid"; wait "$pid" || true; pid=
  python3 - "$work" "$name" "$secs" <<'PY'
import re, sqlite3, sys, os
work, name, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
wrk = open(f"{work}/{name}.wrk").read()
offered = int(re.search(r"(\d+) requests in", wrk).group(1))
metrics = open(f"{work}/{name}.metrics").read()
by_status = {}
for m in re.finditer(r'trackd_http_requests_total\{route="/api/v2/events/track",method="POST",status="(\d+)"\} (\d+)', metrics):
    by_status[m.group(1)] = by_status.get(m.group(1), 0) + int(m.group(2))
limited = dict(re.findall(r'trackd_rate_limited_total\{reason="(\w+)"\} (\d+)', metrics))
stored = sqlite3.connect(f"{work}/{name}/trackd.db").execute("select count(*) from events").fetchone()[0]
recovery = open(f"{work}/{name}.recovery").read().strip()
print(f"{name}: offered {offered} requests in {secs:.0f} s ({offered/secs:.0f}/s); answered by status {by_status}; "
      f"limits {limited}; stored {stored} events ({stored/secs:.0f}/s); first 200 after the load {recovery} ms")
PY
}

run token-rate 64 --token-rate "$rate"
# wrk's 256 connections all come from one address: the per-address in-flight bound (64)
# would answer most of them 429 before the write queue is reached; it is off here.
run write-queue 256 --write-queue "$queue" --max-in-flight-per-ip 0
