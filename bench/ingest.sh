#!/usr/bin/env bash
# Ingest benchmark: a release trackd on a fresh data dir, driven by wrk with Vero track
# bodies from many users (bench/wrk_track.lua), durable commits as in production.
#
#   bench/ingest.sh [SECONDS] [CONNECTIONS]
#
# Prints events/s, p50/p99 latency, peak RSS, and bytes on disk per stored event (database
# after shutdown, dedup records and indexes included) against the mean request body size.
# Needs wrk (apt-get install -y wrk) and python3. The data dir is under target/ (a real disk:
# a tmpfs would make fsync free).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}; conns=${2:-64}
command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install -y wrk"; exit 2; }
cargo build --release -q
bin=target/release/trackd
work=$(mktemp -d "$PWD/target/bench.XXXXXX")
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT

token=$("$bin" project create bench --data-dir "$work/data" --json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["tracking_token"])')
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" serve --data-dir "$work/data" --listen "127.0.0.1:$port" >"$work/trackd.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/api/v2/heartbeat" && break; sleep 0.1; done

export WRK_PATH="/api/v2/events/track?auth_token=$token"
wrk -t1 -c"$conns" -d2s -s bench/wrk_track.lua "http://127.0.0.1:$port" >/dev/null 2>&1 # warm-up
wrk -t1 -c"$conns" -d"${secs}s" --latency -s bench/wrk_track.lua "http://127.0.0.1:$port" >"$work/wrk.out" 2>&1
rss_kib=$(awk '/VmHWM/{print $2}' "/proc/$pid/status")
kill -TERM "$pid"; wait "$pid" || true; pid=

python3 - "$work" "$rss_kib" <<'PY'
import os, re, sqlite3, sys
work, rss_kib = sys.argv[1], int(sys.argv[2])
out = open(os.path.join(work, "wrk.out")).read()
if "Non-2xx" in out:
    sys.exit("non-2xx answers:\n" + out)
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p50 = re.search(r"latency_us p50=(\d+)", out).group(1)
p99 = re.search(r"p99=(\d+)", out).group(1)
db = os.path.join(work, "data", "trackd.db")
events = sqlite3.connect(db).execute("select count(*) from events").fetchone()[0]
size = sum(os.path.getsize(os.path.join(work, "data", f)) for f in os.listdir(os.path.join(work, "data")))
# The mean body wrk sends (bench/wrk_track.lua's format, ids of 5 digits, n of 7).
body = len('{"identity":{"id":"12345","email":"u12345@example.com"},"event_name":"Viewed product",'
           '"data":{"product_name":"Red T-shirt","product_url":"http://www.yourdomain.com/products/red-t-shirt","n":1234567},'
           '"extras":{"source":"bench","created_at":"2023-05-30T04:46:31+0000"}}')
print(f"events/s {rps:.0f}  p50 {int(p50)/1000:.2f} ms  p99 {int(p99)/1000:.2f} ms  "
      f"peak RSS {rss_kib/1024:.1f} MiB")
print(f"stored {events} events, {size} bytes on disk: {size/events:.0f} bytes/event "
      f"= {size/events/body:.2f}x the {body}-byte body")
PY
