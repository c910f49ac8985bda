# Shared by the wrk benchmarks (sourced): a release build, a work dir under target/ (a real
# disk: a tmpfs would make fsync free), and a server started on a fresh data dir.
#
#   bench_setup                     builds (or takes $TRACKD_BIN), sets $bin and $work,
#                                   cleans up on exit
#   bench_start DATA LOG [FLAGS...] creates a project in DATA, serves it on a free port;
#                                   sets $token, $port and $pid, exports WRK_PATH
#   bench_serve DATA LOG [FLAGS...] the same for DATA with a project and $token already;
#                                   $serve_wrap (words) runs before the binary, e.g. strace

command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install -y wrk"; exit 2; }

bench_setup() {
  if [ -n "${TRACKD_BIN:-}" ]; then
    bin=$TRACKD_BIN # another build, to compare (the same rounds, the same machine)
  else
    cargo build --release -q
    bin=target/release/trackd
  fi
  work=$(mktemp -d "$PWD/target/bench.XXXXXX")
  pid=
  trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
}

bench_start() {
  local data=$1 log=$2
  shift 2
  token=$("$bin" project create bench --data-dir "$data" --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["tracking_token"])')
  bench_serve "$data" "$log" "$@"
}

bench_serve() {
  local data=$1 log=$2
  shift 2
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  ${serve_wrap:-} "$bin" serve --data-dir "$data" --listen "127.0.0.1:$port" "$@" >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
  export WRK_PATH="/api/v2/events/track?auth_token=$token"
}
