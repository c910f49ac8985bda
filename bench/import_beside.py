#!/usr/bin/env python3
"""What a `trackd import` into a served data dir costs the server's writes.

    bench/import_beside.py BIN FILE [IMPORT_ARGS...]

Serves a fresh data dir with BIN, starts `BIN import FILE --data-dir ... IMPORT_ARGS` on
it, and meanwhile sends one track request every 50 ms until the import ends; prints their
status codes and latency (p50, p99, max) and the import's summary line.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    binary, path, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
    with tempfile.TemporaryDirectory(dir=os.path.join(os.path.dirname(__file__), "..", "target")) as work:
        data = os.path.join(work, "data")
        created = subprocess.run([binary, "project", "create", "bench", "--data-dir", data, "--json"],
                                 check=True, capture_output=True, text=True)
        token = json.loads(created.stdout)["tracking_token"]
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        server = subprocess.Popen([binary, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    urllib.request.urlopen(url + "/healthz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            importer = subprocess.Popen([binary, "import", path, "--data-dir", data, "--project", "bench", *extra],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            latencies, codes, i = [], {}, 0
            while importer.poll() is None:
                body = json.dumps({"identity": {"id": f"probe{i}"}, "event_name": "probe", "data": {"i": i}})
                request = urllib.request.Request(f"{url}/api/v2/events/track?auth_token={token}",
                                                 data=body.encode(), headers={"Content-Type": "application/json"})
                start = time.monotonic()
                try:
                    with urllib.request.urlopen(request, timeout=60) as answer:
                        code = answer.status
                except urllib.error.HTTPError as e:
                    code = e.code
                latencies.append(time.monotonic() - start)
                codes[code] = codes.get(code, 0) + 1
                i += 1
                time.sleep(0.05)
            summary = importer.stderr.read().strip().splitlines()
            latencies.sort()
            ms = lambda q: latencies[min(len(latencies) - 1, int(len(latencies) * q))] * 1e3
            print(f"{len(latencies)} track requests during the import: status {codes}, "
                  f"p50 {ms(0.5):.1f} ms, p99 {ms(0.99):.1f} ms, max {latencies[-1] * 1e3:.1f} ms")
            print(summary[-1] if summary else "the import printed nothing")
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
