#!/bin/bash
# Out of file descriptors: trackd BIN (default target/debug/trackd) with `ulimit -n 40`
# (about 20 descriptors free), 100 connections that send nothing held open for 5 s, then
# how long until /healthz is served again (they are still held), and how many
# "accept failed" lines the log got.
#
#   bench/out_of_fds.sh [BIN]
BIN=${1:-target/debug/trackd}; D=$(mktemp -d); P=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(ulimit -n 40; exec "$BIN" serve --data-dir "$D/data" --listen 127.0.0.1:$P >"$D/out" 2>"$D/err") &
PID=$!
for i in $(seq 1 50); do curl -sf -o /dev/null http://127.0.0.1:$P/healthz && break; sleep 0.1; done
python3 - "$P" <<'PY'
import socket, sys, time, urllib.request
port = int(sys.argv[1])
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
start = time.monotonic()
time.sleep(5)
# then: how long until a client is served again, silent connections still held
t = time.monotonic()
while True:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2); break
    except Exception:
        if time.monotonic() - t > 60: print("healthz: not served within 60 s"); break
        time.sleep(0.1)
else:
    pass
print(f"healthz served again {time.monotonic() - t:.1f} s after the 5 s hold" if time.monotonic() - t <= 60 else "")
PY
kill $PID; wait $PID 2>/dev/null
echo "accept failed lines: $(grep -c 'accept failed' $D/err)"
grep 'accept failed' $D/err | head -2
rm -rf "$D"
