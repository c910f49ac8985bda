#!/usr/bin/env bash
# Ingest against PostgreSQL: NODES release trackd processes on one fresh database, the same
# wrk load as bench/ingest.sh (64 connections in all unless CONNS says, split over the nodes), durable
# commits (synchronous_commit=on, the server's default).
#
#   bench/ingest_pg.sh [NODES] [ROUNDS] [SECONDS] [DATABASE_URL]
#
# Prints per round: events/s (stored), p50/p99 (wrk's, per node), PostgreSQL's CPU
# time per stored event (all postgres processes, from /proc), the WAL written per stored
# event (the database's whole WAL, pg_current_wal_lsn), trackd's CPU time per stored event
# (every node), how busy the machine was (/proc/stat, 100% = one core), and the writers'
# average batch and its time from start to commit (every node's /metrics). DATABASE_URL is a server
# where the bench may create and drop the database `trackd_bench` (default: the local one).
# CONNS (default 64) sets the connections in all, split over the nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=${1:-1}; rounds=${2:-3}; secs=${3:-10}
admin=${4:-postgres://postgres@127.0.0.1:5432/postgres}
. bench/lib.sh
bench_setup
url="${admin%/*}/trackd_bench"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

ticks() { # clock ticks used by the given processes so far
  local total=0
  for p in "$@"; do total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  echo "$total"
}
pg_cpu() { ticks $(pgrep -x postgres); } # every postgres process's
busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; } # the machine's, all cores
commits() { # every node's committed batches, writes in them, and seconds spent: "n writes secs"
  for port in "${ports[@]}"; do curl -s "http://127.0.0.1:$port/metrics"; done | awk '
    /^trackd_store_commit_batch_size_count/ {n += $2}
    /^trackd_store_commit_batch_size_sum/ {w += $2}
    /^trackd_store_commit_duration_seconds_sum/ {s += $2}
    END {print n + 0, w + 0, s + 0}'
}

for r in $(seq 1 "$rounds"); do
  psql "$admin" -qc "DROP DATABASE IF EXISTS trackd_bench WITH (FORCE)" -c "CREATE DATABASE trackd_bench"
  token=$("$bin" project create bench --database-url "$url" --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["tracking_token"])')
  ports=(); pids=()
  for n in $(seq 1 "$nodes"); do
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$bin" serve --database-url "$url" --listen "127.0.0.1:$port" >"$work/node$r.$n.log" 2>&1 &
    pids+=($!); ports+=("$port")
    for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
  done
  export WRK_PATH="/api/v2/events/track?auth_token=$token"
  conns=$((${CONNS:-64} / nodes))
  i=0
  for port in "${ports[@]}"; do
    i=$((i + 1))
    WRK_OFFSET=$((i * 100000000000)) wrk -t1 -c"$conns" -d2s -s bench/wrk_track.lua \
      "http://127.0.0.1:$port" >/dev/null 2>&1 &
  done
  wait_wrk() { for j in $(jobs -p); do case " ${pids[*]} " in *" $j "*) ;; *) wait "$j";; esac; done; }
  wait_wrk
  before_events=$(psql "$url" -tAc "select count(*) from events")
  before_wal=$(psql "$url" -tAc "select pg_current_wal_lsn()")
  before_cpu=$(pg_cpu)
  before_trackd=$(ticks "${pids[@]}"); before_busy=$(busy); before_commits=$(commits)
  i=0
  for port in "${ports[@]}"; do
    i=$((i + 1))
    WRK_OFFSET=$((i * 100000000000 + 50000000000)) wrk -t1 -c"$conns" -d"${secs}s" --latency \
      -s bench/wrk_track.lua "http://127.0.0.1:$port" >"$work/wrk$r.$i.out" 2>&1 &
  done
  wait_wrk
  after_cpu=$(pg_cpu)
  after_trackd=$(ticks "${pids[@]}"); after_busy=$(busy); after_commits=$(commits)
  after_events=$(psql "$url" -tAc "select count(*) from events")
  wal=$(psql "$url" -tAc "select pg_wal_lsn_diff(pg_current_wal_lsn(), '$before_wal')::bigint")
  for p in "${pids[@]}"; do kill -TERM "$p"; wait "$p" || true; done
  pids=()
  python3 - "$work" "$r" "$nodes" "$secs" "$before_events" "$after_events" "$before_cpu" "$after_cpu" "$(getconf CLK_TCK)" "$wal" \
    "$before_trackd" "$after_trackd" "$before_busy" "$after_busy" "$before_commits" "$after_commits" <<'PY'
import re, sys
work, r, nodes, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
events = int(sys.argv[6]) - int(sys.argv[5])
tck = int(sys.argv[9])
cpu = (int(sys.argv[8]) - int(sys.argv[7])) / tck
wal = int(sys.argv[10])
trackd = (int(sys.argv[12]) - int(sys.argv[11])) / tck
busy = (int(sys.argv[14]) - int(sys.argv[13])) / tck
c0, c1 = [list(map(float, a.split())) for a in sys.argv[15:17]]
batches, writes, commit_s = (c1[0] - c0[0]), (c1[1] - c0[1]), (c1[2] - c0[2])
lat = []
answered = 0.0
for n in range(1, nodes + 1):
    out = open(f"{work}/wrk{r}.{n}.out").read()
    if "Non-2xx" in out:
        sys.exit("non-2xx answers:\n" + out)
    p50 = int(re.search(r"latency_us p50=(\d+)", out).group(1)) / 1000
    p99 = int(re.search(r"p99=(\d+)", out).group(1)) / 1000
    answered += float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat.append(f"node {n} p50 {p50:.2f} ms p99 {p99:.2f} ms")
print(f"round {r}: {nodes} node(s): {events / secs:.0f} events/s stored ({answered:.0f}/s answered); {'; '.join(lat)}; "
      f"PostgreSQL CPU {cpu:.1f} s = {cpu / events * 1e6:.0f} µs per event; "
      f"WAL {wal / events:.0f} bytes per event; trackd CPU {trackd / events * 1e6:.0f} µs per event; "
      f"machine busy {busy / secs * 100:.0f}% of one core; "
      f"batches of {writes / max(batches, 1):.1f} writes, {commit_s / max(batches, 1) * 1e3:.2f} ms each")
PY
done
psql "$admin" -qc "DROP DATABASE IF EXISTS trackd_bench WITH (FORCE)"
