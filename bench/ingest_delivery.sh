#!/usr/bin/env bash
# Ingest with a destination against ingest without one, in one run: alternating rounds of
# the same wrk load (bench/wrk_track.lua, 64 connections, durable commits), one server
# without destinations, one with an active webhook destination whose receiver
# (examples/bench_receiver) acknowledges at once, so the outbox is written and drained
# while the load runs.
#
#   bench/ingest_delivery.sh [ROUNDS] [SECONDS]
#
# Prints each round's events/s and, last, the medians and their ratio (with/without), and
# how many events the receiver got in the rounds with a destination.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}; secs=${2:-10}
. bench/lib.sh
bench_setup
cargo build --release -q --example bench_receiver
recv=target/release/examples/bench_receiver
rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$recv" webhook "127.0.0.1:$rport" >/dev/null & rpid=$!
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; kill "$rpid" 2>/dev/null; rm -rf "$work"' EXIT

rate() { awk '/Requests\/sec/{print $2}' "$1"; }
plain=(); with=()
for r in $(seq 1 "$rounds"); do
  for mode in plain with; do
    data="$work/$mode$r"
    if [ "$mode" = with ]; then
      token=$("$bin" project create bench --data-dir "$data" --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["tracking_token"])')
      "$bin" destination add --data-dir "$data" --project bench --name sink --kind webhook \
        --url "http://127.0.0.1:$rport/" --batch 500 >/dev/null
      port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
      "$bin" serve --data-dir "$data" --listen "127.0.0.1:$port" >"$work/$mode$r.log" 2>&1 &
      pid=$!
      for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
      export WRK_PATH="/api/v2/events/track?auth_token=$token"
    else
      bench_start "$data" "$work/$mode$r.log"
    fi
    wrk -t1 -c64 -d2s -s bench/wrk_track.lua "http://127.0.0.1:$port" >/dev/null 2>&1
    wrk -t1 -c64 -d"${secs}s" --latency -s bench/wrk_track.lua "http://127.0.0.1:$port" >"$work/wrk.out" 2>&1
    if grep -q Non-2xx "$work/wrk.out"; then cat "$work/wrk.out"; exit 1; fi
    t=$(rate "$work/wrk.out")
    kill -TERM "$pid"; wait "$pid" || true; pid=
    echo "round $r $mode: $t events/s"
    if [ "$mode" = plain ]; then plain+=("$t"); else with+=("$t"); fi
  done
done
got=$(curl -s "http://127.0.0.1:$rport/count")
python3 - "${plain[*]}" "${with[*]}" "$got" <<'PY'
import json, statistics, sys
plain = [float(x) for x in sys.argv[1].split()]
withd = [float(x) for x in sys.argv[2].split()]
got = json.loads(sys.argv[3])
p, w = statistics.median(plain), statistics.median(withd)
print(f"without a destination {p:.0f}/s, with one {w:.0f}/s: {w / p:.2f}x "
      f"(the receiver got {got['items']} events in {got['batches']} batches)")
PY
