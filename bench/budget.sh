#!/usr/bin/env bash
# The per-event CPU budget under ratio.sh's load, and the ceiling it sets: what each thread of
# trackd, the database (PostgreSQL) and wrk itself spend per event, measured from /proc over
# one run, then the rate the machine could reach if all of it were busy with that work
# (CPUs / CPU per event). The bare hyper server (../shared/bench/limit) is measured the same
# way first, so the two sides of ratio.sh's ratio are compared per request, not per second.
#
#   bench/budget.sh [SECONDS] [DATABASE_URL]
#
# Without DATABASE_URL trackd runs on a fresh SQLite data dir. With it (a server where the
# bench may create and drop the database `trackd_budget`), trackd runs on PostgreSQL, and
# when that server is local and this user may read its WAL directory and set its logging,
# two more tables: the WAL written per event by relation and record (pg_waldump over the
# run's WAL), and the time of each statement per batch (log_min_duration_statement = 0 on
# the bench database for a second run; it slows that run, so its rate is not reported).
#
# Every event is new (the warm-up and the run send different counters; ratio.sh's run
# repeats the warm-up's first events, which trackd answers as duplicates). 64 connections
# (CONNS), one wrk thread, as ratio.sh. TRACKD_BIN=path measures another build.
# Needs wrk, python3, and cargo for the bare server (built once into $LIMIT_TARGET_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}; db=${2:-}
conns=${CONNS:-64}
. bench/lib.sh
bench_setup
shared=$(cd ../shared/bench 2>/dev/null && pwd) || { echo "no ../shared/bench beside the repo"; exit 2; }
export CARGO_TARGET_DIR=${LIMIT_TARGET_DIR:-/tmp/trackd-bench-limit-target}
cargo build --release -q --manifest-path "$shared/limit/Cargo.toml"
limit_bin=$CARGO_TARGET_DIR/release/limit
unset CARGO_TARGET_DIR
lpid= admin= dburl=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; [ -n "$lpid" ] && kill "$lpid" 2>/dev/null; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
machine() { awk '/^cpu /{print $5 + $6, $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; } # idle, interrupts, all
threads() { # per thread of PID: name, user and system ticks
  for t in /proc/"$1"/task/*; do
    echo "$(tr ' ' _ <"$t/comm") $(cut -d')' -f2- "$t/stat" | awk '{print $12, $13}')"
  done
}
pg_ticks() { for p in $(pgrep -x postgres); do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null; done | awk '{s += $1} END {print s + 0}'; }

# run NAME PID URL PATH OFFSET: wrk for $secs s; writes $work/NAME.{wrk,time,threads0,threads1,machine,pg}
run() {
  local name=$1 p=$2 url=$3 path=$4 offset=$5
  WRK_PATH=$path WRK_OFFSET=$offset wrk -t1 -c"$conns" -d2s -s bench/wrk_track.lua "$url" >/dev/null 2>&1
  threads "$p" >"$work/$name.threads0"; machine >"$work/$name.machine"; pg_ticks >"$work/$name.pg"
  [ -z "$dburl" ] || psql "$dburl" -tAc "select pg_current_wal_lsn()" >"$work/$name.lsn"
  (TIMEFORMAT='%U %S'; time (WRK_PATH=$path WRK_OFFSET=$((offset + 50000000000)) \
    wrk -t1 -c"$conns" -d"${secs}s" --latency -s bench/wrk_track.lua "$url" >"$work/$name.wrk" 2>&1)) 2>"$work/$name.time"
  threads "$p" >"$work/$name.threads1"; machine >>"$work/$name.machine"; pg_ticks >>"$work/$name.pg"
  [ -z "$dburl" ] || psql "$dburl" -tAc "select pg_current_wal_lsn()" >>"$work/$name.lsn"
}

port=$(free_port)
"$limit_bin" raw "127.0.0.1:$port" 2>/dev/null & lpid=$!
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
run limit "$lpid" "http://127.0.0.1:$port" /api/v2/events/track 0
kill "$lpid"; wait "$lpid" 2>/dev/null || true; lpid=

if [ -n "$db" ]; then
  admin=$db; dburl="${db%/*}/trackd_budget"
  psql "$admin" -qc "DROP DATABASE IF EXISTS trackd_budget WITH (FORCE)" -c "CREATE DATABASE trackd_budget" 2>/dev/null
  store=(--database-url "$dburl")
else
  store=(--data-dir "$work/data")
fi
start() {
  port=$(free_port)
  "$bin" serve "${store[@]}" --listen "127.0.0.1:$port" >>"$work/trackd.log" 2>&1 & pid=$!
  for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
}
token=$("$bin" project create bench "${store[@]}" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["tracking_token"])')
start
path="/api/v2/events/track?auth_token=$token"
if [ -n "$db" ]; then
  psql "$dburl" -tAF' ' -c "select pg_relation_filenode(c.oid), c.relname from pg_class c
    join pg_namespace n on n.oid = c.relnamespace where n.nspname = current_schema()" >"$work/rels"
fi
run trackd "$pid" "http://127.0.0.1:$port" "$path" 100000000000
curl -s "http://127.0.0.1:$port/metrics" | awk '/^trackd_store_commit_batch_size_(sum|count)/{print $2}' | paste -sd' ' >"$work/batches"
if [ -n "$db" ]; then
  { read -r before; read -r after; } <"$work/trackd.lsn"
  wal_dir=$(psql "$admin" -tAc "show data_directory")/pg_wal
  waldump=$(ls /usr/lib/postgresql/*/bin/pg_waldump 2>/dev/null | tail -1 || true)
  if [ -n "$waldump" ] && [ -r "$wal_dir" ]; then
    "$waldump" -p "$wal_dir" -s "$before" -e "$after" >"$work/wal" 2>/dev/null || true
  fi
  # The statements' times: a second, logged run (slower; only the per-statement times count).
  log=$(ls /var/log/postgresql/postgresql-*-main.log 2>/dev/null | tail -1 || true)
  if [ -n "$log" ] && [ -r "$log" ] && psql "$admin" -qc "ALTER DATABASE trackd_budget SET log_min_duration_statement = 0" 2>/dev/null; then
    kill -TERM "$pid"; wait "$pid" || true
    start
    offset=$(stat -c %s "$log")
    WRK_PATH=$path WRK_OFFSET=300000000000 wrk -t1 -c"$conns" -d5s -s bench/wrk_track.lua "http://127.0.0.1:$port" >/dev/null 2>&1
    psql "$admin" -qc "ALTER DATABASE trackd_budget RESET log_min_duration_statement"
    tail -c +"$((offset + 1))" "$log" >"$work/statements"
  fi
fi
kill -TERM "$pid"; wait "$pid" || true; pid=
[ -z "$db" ] || psql "$admin" -qc "DROP DATABASE IF EXISTS trackd_budget WITH (FORCE)"

python3 - "$work" "$secs" "$(getconf CLK_TCK)" "$(nproc)" "${db:+pg}" <<'PY'
import collections, os, re, sys
work, secs, tck, cpus, pg = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

def rate(name):
    out = open(f"{work}/{name}.wrk").read()
    if "Non-2xx" in out:
        sys.exit(f"{name}: non-2xx answers:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), re.search(r"p99=(\d+)", out)

def per_thread(name):
    t0 = {}
    for line in open(f"{work}/{name}.threads0"):
        n, u, s = line.split()
        t0.setdefault(n, [0, 0]); t0[n][0] += int(u); t0[n][1] += int(s)
    t1 = {}
    for line in open(f"{work}/{name}.threads1"):
        n, u, s = line.split()
        t1.setdefault(n, [0, 0]); t1[n][0] += int(u); t1[n][1] += int(s)
    return {n: (u - t0.get(n, [0, 0])[0], s - t0.get(n, [0, 0])[1]) for n, (u, s) in t1.items()}

def report(name):
    rps, p99 = rate(name)
    n = rps * secs
    us = lambda ticks: ticks / tck / n * 1e6
    wrk_u, wrk_s = map(float, open(f"{work}/{name}.time").read().split())
    (i0, q0, a0), (i1, q1, a1) = [map(int, l.split()) for l in open(f"{work}/{name}.machine")]
    idle = (i1 - i0) / (a1 - a0)
    # Interrupt and softirq time (on loopback mostly TCP delivery, both sides; the disk's
    # completions): already in the times of the threads they interrupted (tick-based
    # accounting), so shown apart, not added.
    irq = us(q1 - q0)
    rows = []
    for thread, (u, s) in sorted(per_thread(name).items(), key=lambda kv: -sum(kv[1])):
        if u + s:
            rows.append((thread, us(u), us(s)))
    total = sum(u + s for _, u, s in rows)
    p0, p1 = [int(l) for l in open(f"{work}/{name}.pg")]
    db = us(p1 - p0) if pg and name == "trackd" else 0.0
    wrk = (wrk_u + wrk_s) / n * 1e6
    whole = total + db + wrk
    print(f"{name}: {rps:,.0f} requests/s, p99 {int(p99.group(1)) / 1000:.2f} ms, machine idle {idle * 100:.0f}%")
    for thread, u, s in rows:
        print(f"  {thread:18s} {u:6.1f} µs user {s:6.1f} µs system a request")
    print(f"  {'server in all':18s} {total:6.1f} µs")
    if db:
        print(f"  {'PostgreSQL':18s} {db:6.1f} µs (every postgres process)")
    print(f"  {'wrk':18s} {wrk:6.1f} µs")
    print(f"  {'interrupts':18s} {irq:6.1f} µs of the above in interrupts and softirqs")
    print(f"  ceiling at {cpus} busy CPUs: {cpus / whole * 1e6:,.0f} requests/s ({whole:.1f} µs a request in all)")
    return rps, whole

lim, lim_cost = report("limit")
trk, trk_cost = report("trackd")
print(f"ratio {trk / lim:.3f}; at a ratio of 0.6 ({0.6 * lim:,.0f}/s) the machine has {cpus / (0.6 * lim) * 1e6:.1f} µs a request for everything")
b = open(f"{work}/batches").read().split()
if len(b) == 2 and float(b[1]):
    print(f"requests a commit: {float(b[0]) / float(b[1]):.1f} (the server's life, warm-up included)")

if pg and os.path.exists(f"{work}/wal"):
    rels = dict(l.split() for l in open(f"{work}/rels") if len(l.split()) == 2)
    size, count, total = collections.Counter(), collections.Counter(), 0
    for line in open(f"{work}/wal"):
        m = re.search(r"len \(rec/tot\):\s*\d+/\s*(\d+)", line)
        if not m:
            continue
        n = int(m.group(1)); total += n
        rm = re.search(r"rmgr: (\w+)", line).group(1)
        desc = re.search(r"desc: (\w+)", line)
        rel = re.search(r"blkref #0: rel \d+/\d+/(\d+)", line)
        key = (rels.get(rel.group(1), "rel " + rel.group(1)) if rel else "-", f"{rm} {desc.group(1) if desc else ''}")
        size[key] += n; count[key] += 1
    events = trk * secs
    print(f"WAL {total / events:,.0f} bytes an event (pg_waldump over the measured run); by relation and record:")
    for (rel, rec), n in size.most_common(20):
        print(f"  {rel:30s} {rec:24s} {n / events:7.1f} bytes {count[(rel, rec)] / events:6.3f} records an event")
if pg and os.path.exists(f"{work}/statements"):
    times = collections.defaultdict(list)
    for line in open(f"{work}/statements"):
        m = re.search(r"duration: ([\d.]+) ms  (\w+)(?: \w+)?: (.*)", line)
        if m and "trackd_budget" in line:
            times[(m.group(2), " ".join(m.group(3).split())[:60])].append(float(m.group(1)) * 1000)
    commits = len(times.get(("statement", "COMMIT"), [])) or 1
    print(f"statements of the logged run ({commits} commits), time per commit:")
    for (kind, sql), ts in sorted(times.items(), key=lambda kv: -sum(kv[1]))[:12]:
        ts.sort()
        print(f"  {sum(ts) / commits:7.0f} µs  {kind:9s} (median {ts[len(ts) // 2]:5.0f} µs, {len(ts)} times) {sql}")
PY
