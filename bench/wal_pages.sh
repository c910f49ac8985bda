#!/usr/bin/env bash
# Where the WAL's bytes go: which B-tree (table or index) each WAL frame written by the
# writer belongs to, per stored event (the "bytes of WAL per stage" of ARCHITECTURE's
# per-event budget).
#
#   bench/wal_pages.sh ingest [SECONDS]        # wrk_track.lua's load, 64 connections
#   bench/wal_pages.sh import DATA_DIR FILE    # `trackd import FILE` into (a copy of) DATA_DIR
#
# The process runs under `strace -f --seccomp-bpf -e trace=pwrite64` (only its writes stop,
# so it is slower and its batches may differ from a run without strace: for ingest the
# requests per commit are printed beside the frames); bench/wal_pages.py maps each frame's page number to its
# B-tree with the database's `dbstat`. TRACKD_BIN=path measures another build. Needs strace,
# wrk, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v strace >/dev/null || { echo "strace is not installed: apt-get install -y strace"; exit 2; }
mode=${1:-ingest}
. bench/lib.sh
bench_setup
# The traced server is strace's child: a signal to strace alone would only detach it.
trap '[ -n "$pid" ] && { pkill -TERM -P "$pid"; kill "$pid"; } 2>/dev/null; rm -rf "$work"' EXIT
count_events() {
  python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("select count(*) from events").fetchone()[0])' "$1"
}
trace="strace -f --seccomp-bpf -e trace=pwrite64 -e signal=none -o $work/strace.log"

case "$mode" in
ingest)
  secs=${2:-5}
  # Warm-up without strace (the users exist afterwards, as in a steady state), then the
  # same server again under strace for the measured load.
  bench_start "$work/data" "$work/warm.log"
  wrk -t1 -c64 -d"${secs}s" -s bench/wrk_track.lua "http://127.0.0.1:$port" >/dev/null 2>&1
  kill -TERM "$pid"; wait "$pid" || true; pid=
  warm=$(count_events "$work/data/trackd.db")
  serve_wrap=$trace bench_serve "$work/data" "$work/trackd.log"
  WRK_OFFSET=100000000 wrk -t1 -c64 -d"${secs}s" -s bench/wrk_track.lua "http://127.0.0.1:$port" >"$work/wrk.out" 2>&1
  commits=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^trackd_store_commit_batch_size_count/{print $2}')
  pkill -TERM -P "$pid" || true; wait "$pid" || true; pid=
  grep -E "Requests/sec|Non-2xx" "$work/wrk.out"; tail -3 "$work/trackd.log"
  events=$(( $(count_events "$work/data/trackd.db") - warm ))
  ;;
import)
  src=${2:?a data dir to import into}; file=${3:?an NDJSON file}
  cp -r "$src" "$work/data"
  $trace "$bin" import "$file" --data-dir "$work/data" --project bench 2>&1 | tail -1
  commits=0 # not known here
  events=$(( $(count_events "$work/data/trackd.db") - $(count_events "$src/trackd.db") ))
  ;;
*) echo "usage: $0 ingest [SECONDS] | import DATA_DIR FILE"; exit 2 ;;
esac

python3 bench/wal_pages.py "$work/strace.log" "$work/data/trackd.db" "$events" "$commits"
