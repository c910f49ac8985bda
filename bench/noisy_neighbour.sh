#!/usr/bin/env bash
# Noisy neighbour: one tenant's victim load while another tenant sends the heaviest profile
# requests trackd accepts (a users/track with the most channels and the largest properties
# a profile may hold, a users/tags/edit adding the most tags), on one release trackd.
#
#   bench/noisy_neighbour.sh [SECONDS] [sqlite|postgres] [DATABASE_URL]
#
# Prints the victim's p50/p99 (wrk, 8 connections of single events) alone and with the
# attacker (4 connections) in the same run, and what the attacker got. PostgreSQL: a
# database `trackd_bench` is made afresh on DATABASE_URL (default: the local server).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}; store=${2:-sqlite}
admin=${3:-postgres://postgres@127.0.0.1:5432/postgres}
. bench/lib.sh
bench_setup

if [ "$store" = postgres ]; then
  url="${admin%/*}/trackd_bench"
  psql "$admin" -qc "DROP DATABASE IF EXISTS trackd_bench WITH (FORCE)" -c "CREATE DATABASE trackd_bench"
  where=(--database-url "$url")
else
  where=(--data-dir "$work/data")
fi
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
victim=$("$bin" project create victim "${where[@]}" --json | json_field tracking_token)
attacker=$("$bin" project create attacker "${where[@]}" --json | json_field tracking_token)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" serve "${where[@]}" --listen "127.0.0.1:$port" >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done

# The heaviest bodies the default bounds accept (100 channels, 64 KiB of properties, 1,000
# tags), each for a user of its own so the merge starts from a full profile.
python3 - "$work" "$attacker" <<'PY'
import json, sys
work, token = sys.argv[1], sys.argv[2]
channels = [{"type": "push", "address": f"device-{i:04d}", "platform": "ios"} for i in range(100)]
data = {"blob": "x" * (65536 - 11)}
with open(f"{work}/track.body", "w") as f:
    f.write(f"POST /api/v2/users/track?auth_token={token}\n")
    f.write(json.dumps({"id": "heavy", "channels": channels, "data": data}, separators=(",", ":")))
with open(f"{work}/tags.body", "w") as f:
    f.write(f"PUT /api/v2/users/tags/edit?auth_token={token}\n")
    f.write(json.dumps({"id": "heavy", "add": [f"tag-{i:04d}" for i in range(1000)],
                        "remove": [f"gone-{i:04d}" for i in range(1000)]}))
PY
# The attacker's user exists (tags/edit needs one).
curl -s -o /dev/null "http://127.0.0.1:$port/api/v2/users/track?auth_token=$attacker" -d '{"id":"heavy"}'

export WRK_PATH="/api/v2/events/track?auth_token=$victim"
victim_run() { wrk -t1 -c8 -d"${secs}s" --latency -s bench/wrk_track.lua "http://127.0.0.1:$port" | grep latency_us; }
wrk -t1 -c8 -d2s -s bench/wrk_track.lua "http://127.0.0.1:$port" >/dev/null # warm-up
echo "victim alone:         $(victim_run)"
ATTACK_BODIES="$work/track.body,$work/tags.body" \
  wrk -t1 -c4 -d"$((secs + 2))s" --latency -s bench/wrk_attack.lua "http://127.0.0.1:$port" \
  >"$work/attack.out" 2>&1 &
attack=$!
sleep 1
echo "victim under attack:  $(victim_run)"
wait "$attack"
grep attacker "$work/attack.out"
echo "store: $store"
