#!/usr/bin/env bash
# Delivery benchmark: how fast trackd drains a backlog to a receiver that acknowledges at
# once. A release trackd on a fresh data dir (SQLite, durable), a paused destination, N
# events imported (they wait in the outbox), then the destination resumed and timed until
# the receiver has every item.
#
#   bench/drain.sh [webhook|nats] [EVENTS] [BATCH]
#
# webhook: examples/bench_receiver (hyper, 204 at once) on a free port, batches of BATCH.
# nats: the JetStream on NATS_URL (default nats://127.0.0.1:4222), a stream created for the
# run, every message published with its Nats-Msg-Id and its PubAck awaited.
# Prints events/s of the drain (first arrival to last), and trackd's CPU time over it.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-webhook}; events=${2:-1000000}; batch=${3:-500}
nats_url=${NATS_URL:-nats://127.0.0.1:4222}
cargo build --release -q
cargo build --release -q --example bench_receiver
bin=target/release/trackd
recv=target/release/examples/bench_receiver
work=$(mktemp -d "$PWD/target/drain.XXXXXX")
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

data=$work/data
"$bin" project create bench --data-dir "$data" --json >/dev/null
case "$kind" in
  webhook)
    rport=$(port)
    "$recv" webhook "127.0.0.1:$rport" >/dev/null & pids+=($!)
    "$bin" destination add --data-dir "$data" --project bench --name sink --kind webhook \
      --url "http://127.0.0.1:$rport/" --batch "$batch" >/dev/null
    delivered() { curl -s "http://127.0.0.1:$rport/count" | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"])'; }
    # The receiver's own first and last arrival: what trackd took, not the polling.
    span() { curl -s "http://127.0.0.1:$rport/count" | python3 -c 'import json,sys; c=json.load(sys.stdin); print((c["last_us"]-c["first_us"])/1e6)'; }
    ;;
  nats)
    stream=BENCH_$$
    "$recv" nats-create "$nats_url" "$stream" "drain$$.>"
    "$bin" destination add --data-dir "$data" --project bench --name sink --kind nats \
      --url "$nats_url" --subject-prefix "drain$$" >/dev/null
    delivered() { "$recv" nats-count "$nats_url" "$stream"; }
    trap '"$recv" nats-delete "$nats_url" "$stream" || true; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
    span() { echo 0; }
    ;;
  *) echo "kind: webhook or nats"; exit 2 ;;
esac
"$bin" destination pause --data-dir "$data" --project bench --name sink 2>/dev/null

echo "importing $events events (they wait in the outbox)..."
python3 - "$events" >"$work/events.ndjson" <<'PY'
import json, sys
n = int(sys.argv[1])
out = sys.stdout
for i in range(n):
    out.write(json.dumps({"identity": {"id": str(i % 50000), "email": f"u{i % 50000}@example.com"},
                          "event_name": "Viewed product",
                          "data": {"product_name": "Red T-shirt", "n": i}}, separators=(",", ":")))
    out.write("\n")
PY
"$bin" import "$work/events.ndjson" --data-dir "$data" --project bench --no-dedup >/dev/null

sport=$(port)
"$bin" serve --data-dir "$data" --listen "127.0.0.1:$sport" >"$work/trackd.log" 2>&1 & tpid=$!; pids+=("$tpid")
for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$sport/healthz" && break; sleep 0.1; done
cpu0=$(awk '{print $14 + $15}' "/proc/$tpid/stat")
start=$(date +%s.%N)
"$bin" destination resume --data-dir "$data" --project bench --name sink 2>/dev/null
while :; do
  n=$(delivered)
  [ "$n" -ge "$events" ] && break
  sleep 0.2
done
end=$(date +%s.%N)
cpu1=$(awk '{print $14 + $15}' "/proc/$tpid/stat")
python3 - "$kind" "$events" "$start" "$end" "$cpu0" "$cpu1" "$(getconf CLK_TCK)" "$(span)" <<'PY'
import sys
kind, n = sys.argv[1], int(sys.argv[2])
start, end, c0, c1, hz, span = map(float, sys.argv[3:])
wall = end - start
# The webhook receiver times its first and last batch; NATS is timed from the resume
# (which includes up to a second for the loop to notice it).
secs = span if span > 0 else wall
print(f"{kind}: drained {n} events in {secs:.1f} s: {n / secs:,.0f} events/s "
      f"(wall {wall:.1f} s); trackd CPU {(c1 - c0) / hz:.1f} s")
PY
