#!/usr/bin/env bash
# Ingest benchmark: a release trackd on a fresh data dir, driven by wrk with Vero track
# bodies from many users (bench/wrk_track.lua), durable commits as in production.
#
#   bench/ingest.sh [ROUNDS] [SECONDS] [CONNECTIONS]
#
# Each round starts a new server on a new data dir and prints events/s, p50/p99 latency,
# peak RSS, bytes on disk per stored event (the database after shutdown, dedup records
# and indexes included) against the request body size, bytes written to the disk per event
# (WAL frames and checkpoints, /proc/PID/io) and requests per commit (the writer's batch
# size, from /metrics); the last line is the median round. TRACKD_BIN=path runs another
# build instead of building this one.
# This machine's disk and CPU are shared and noisy: compare medians, not single rounds.
# Needs wrk (apt-get install -y wrk) and python3. Data dirs are under target/ (a real disk:
# a tmpfs would make fsync free).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}; secs=${2:-10}; conns=${3:-64}
. bench/lib.sh
bench_setup

for r in $(seq 1 "$rounds"); do
  bench_start "$work/data$r" "$work/trackd$r.log"
  wrk -t1 -c"$conns" -d2s -s bench/wrk_track.lua "http://127.0.0.1:$port" >/dev/null 2>&1 # warm-up
  wrk -t1 -c"$conns" -d"${secs}s" --latency -s bench/wrk_track.lua "http://127.0.0.1:$port" >"$work/wrk$r.out" 2>&1
  awk '/VmHWM/{print $2}' "/proc/$pid/status" >"$work/rss$r"
  awk '/^write_bytes/{print $2}' "/proc/$pid/io" >"$work/written$r"
  curl -s "http://127.0.0.1:$port/metrics" |
    awk '/^trackd_store_commit_batch_size_(sum|count)/{print $2}' | paste -sd' ' >"$work/batches$r"
  kill -TERM "$pid"; wait "$pid" || true; pid=
done

python3 - "$work" "$rounds" <<'PY'
import os, re, sqlite3, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
# The mean body wrk sends (bench/wrk_track.lua's format, ids of 5 digits, n of 7).
body = len('{"identity":{"id":"12345","email":"u12345@example.com"},"event_name":"Viewed product",'
           '"data":{"product_name":"Red T-shirt","product_url":"http://www.yourdomain.com/products/red-t-shirt","n":1234567},'
           '"extras":{"source":"bench","created_at":"2023-05-30T04:46:31+0000"}}')
results = []
for r in range(1, rounds + 1):
    out = open(os.path.join(work, f"wrk{r}.out")).read()
    if "Non-2xx" in out:
        sys.exit("non-2xx answers:\n" + out)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = int(re.search(r"latency_us p50=(\d+)", out).group(1)) / 1000
    p99 = int(re.search(r"p99=(\d+)", out).group(1)) / 1000
    rss = int(open(os.path.join(work, f"rss{r}")).read()) / 1024
    data = os.path.join(work, f"data{r}")
    events = sqlite3.connect(os.path.join(data, "trackd.db")).execute("select count(*) from events").fetchone()[0]
    size = sum(os.path.getsize(os.path.join(data, f)) for f in os.listdir(data))
    per = size / events
    written = int(open(os.path.join(work, f"written{r}")).read()) / events
    total, commits = (float(x) for x in open(os.path.join(work, f"batches{r}")).read().split())
    results.append((rps, p50, p99, rss, per, written, total / commits))
    print(f"round {r}: events/s {rps:.0f}  p50 {p50:.2f} ms  p99 {p99:.2f} ms  peak RSS {rss:.1f} MiB  "
          f"{events} events, {per:.0f} bytes/event on disk ({per/body:.2f}x the {body}-byte body), "
          f"{written:.0f} bytes/event written (WAL and checkpoints), {total / commits:.1f} requests a commit")
med = lambda i: statistics.median(x[i] for x in results)
print(f"median: events/s {med(0):.0f}  p50 {med(1):.2f} ms  p99 {med(2):.2f} ms  "
      f"peak RSS {med(3):.1f} MiB  {med(4):.0f} bytes/event ({med(4)/body:.2f}x body)  "
      f"{med(5):.0f} bytes/event written  {med(6):.1f} requests a commit")
PY
