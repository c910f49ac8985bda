#!/usr/bin/env bash
# Read-side benchmark: bulk-loads N events (default 10 million) with `trackd import`, then
# measures a user's timeline (last 100 events) and a filtered query with wrk, `trackd
# export` throughput and its anonymous RSS over time. `bench/read_rounds.sh` compares builds
# on the data dir this leaves when READ_KEEP=DIR.
#
#   bench/read.sh [EVENTS] [USERS]
#
# TRACKD_BIN=path measures another build instead of building this one.
# Needs wrk and python3; about 350 bytes of disk per event for the input file and the same
# for the database (under target/, a real disk).
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-10000000}; users=${2:-100000}
command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install -y wrk"; exit 2; }
if [ -n "${TRACKD_BIN:-}" ]; then
  bin=$(readlink -f "$TRACKD_BIN") # another build, to compare
else
  cargo build --release -q
  bin=$PWD/target/release/trackd
fi
work=$(mktemp -d "$PWD/target/readbench.XXXXXX")
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT

echo "generating $events export lines for $users users..."
python3 - "$events" "$users" >"$work/events.ndjson" <<'PY'
import random, sys, time
n, users = int(sys.argv[1]), int(sys.argv[2])
names = ["Viewed product", "Added to cart", "Purchased item", "Signed up"]
keys = [x.lower().replace(" ", "_") for x in names]
rnd = random.Random(7)
base = 1_700_000_000  # event times spread over the 100 days after this
write = sys.stdout.write
last_t, stamp = None, None
for i in range(n):
    u, k = rnd.randrange(users), rnd.randrange(4)
    t = base + (i * 8_640_000) // n
    if t != last_t:
        last_t, stamp = t, time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(t))
    write('{"id":%d,"user":{"id":"u%d","email":"u%d@example.com"},"event_name":"%s","event_key":"%s",'
          '"data":{"product_name":"Red T-shirt","price":%d,"n":%d},"source":"bench","created_at":"%s",'
          '"received_at":"%s"}\n' % (i, u, u, names[k], keys[k], i % 100, i, stamp, stamp))
PY
data=$work/data
"$bin" project create bench --data-dir "$data" --json >"$work/project.json"
key=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["secret_key"])' "$work/project.json")

echo "importing..."
start=$(date +%s.%N)
"$bin" import "$work/events.ndjson" --project bench --data-dir "$data" 2>"$work/import.log"
end=$(date +%s.%N)
tail -1 "$work/import.log"
import_eps=$(python3 -c "print(f'{$events / ($end - $start):.0f}')")

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" serve --data-dir "$data" --listen "127.0.0.1:$port" >"$work/trackd.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/api/v2/heartbeat" && break; sleep 0.1; done
for kind in timeline filtered; do
  READ_KEY=$key READ_KIND=$kind READ_USERS=$users wrk -t1 -c8 -d10s --latency -s bench/read_query.lua \
    "http://127.0.0.1:$port" >"$work/$kind.out" 2>&1
  echo "$kind: $(grep -E 'Requests/sec' "$work/$kind.out" | awk '{print $2}') req/s," \
    "p50 $(awk '/^ +50%/{print $2}' "$work/$kind.out"), p99 $(awk '/^ +99%/{print $2}' "$work/$kind.out")"
  grep -q "Non-2xx" "$work/$kind.out" && { echo "non-2xx answers"; cat "$work/$kind.out"; exit 1; }
done
kill -TERM "$pid"; wait "$pid" || true; pid=

echo "exporting..."
start=$(date +%s.%N)
"$bin" export --project bench --data-dir "$data" -o /dev/null 2>"$work/export.log" &
pid=$!
: >"$work/rss"
while kill -0 "$pid" 2>/dev/null; do
  # Its own memory: readers map the database file, whose pages (the OS's file cache) the
  # resident size counts too.
  awk '/RssAnon/{print $2}' "/proc/$pid/status" 2>/dev/null >>"$work/rss" || true
  sleep 1
done
wait "$pid"; pid=
end=$(date +%s.%N)
tail -1 "$work/export.log"
python3 - "$work/rss" "$events" "$start" "$end" "$import_eps" <<'PY'
import sys
rss = [int(x) / 1024 for x in open(sys.argv[1]).read().split() if x.strip()]
events, start, end, import_eps = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
print(f"export: {events / (end - start):.0f} events/s; anonymous RSS MiB min {min(rss):.0f} max {max(rss):.0f} "
      f"(samples each second: {', '.join(f'{r:.0f}' for r in rss[:: max(1, len(rss) // 10)])})")
print(f"import: {import_eps} events/s")
PY
if [ -n "${READ_KEEP:-}" ]; then
  mv "$data" "$READ_KEEP"
  echo "data dir kept in $READ_KEEP (project bench, secret key $key)"
fi
