#!/usr/bin/env bash
# Read API, builds compared: alternating rounds over one existing data dir (made by
# `bench/read.sh` or `trackd import`), each build in turn serving it while wrk asks for a
# random user's timeline (or the filtered query) with 8 connections. Each round warms up for
# 5 s, then measures 10 s and prints requests/s, p50, p99, the server's CPU per request
# (from /proc: steadier than the rate on a shared machine) and its resident memory, anonymous
# (its own) and file (mapped database pages, the OS's file cache).
#
#   bench/read_rounds.sh DATA_DIR SECRET_KEY BIN [BIN...]
#
# ROUNDS (3), READ_KIND (timeline), READ_USERS (100000) as for read_query.lua.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { echo "usage: $0 DATA_DIR SECRET_KEY BIN [BIN...]"; exit 2; }
command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install -y wrk"; exit 2; }
data=$1 key=$2
shift 2
kind=${READ_KIND:-timeline} users=${READ_USERS:-100000}
log=$(mktemp)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -f "$log"' EXIT
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
query() { # SECONDS [--latency]
  READ_KEY=$key READ_KIND=$kind READ_USERS=$users wrk -t1 -c8 "-d$1s" ${2:-} \
    -s bench/read_query.lua "http://127.0.0.1:$port"
}
for round in $(seq 1 "${ROUNDS:-3}"); do
  for bin in "$@"; do
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$bin" serve --data-dir "$data" --listen "127.0.0.1:$port" >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
    query 5 >/dev/null
    before=$(cpu_ticks "$pid")
    out=$(query 10 --latency)
    after=$(cpu_ticks "$pid")
    if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx answers from $bin"; echo "$out"; exit 1; fi
    rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
    mem=$(awk '/RssAnon/{a=$2} /RssFile/{f=$2} END{printf "RSS anon %d MiB, file %d MiB", a/1024, f/1024}' "/proc/$pid/status")
    printf '%s round %s: %s req/s, p50 %s, p99 %s, %s µs CPU a request, %s\n' "$bin" "$round" "$rps" \
      "$(awk '/^ +50%/{print $2}' <<<"$out")" "$(awk '/^ +99%/{print $2}' <<<"$out")" \
      "$(python3 -c "print(round(($after - $before) * 1e6 / $(getconf CLK_TCK) / ($rps * 10)))")" "$mem"
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=
  done
done
