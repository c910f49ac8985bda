#!/usr/bin/env python3
"""Slow clients against a real trackd: one address (127.0.0.2) opens ATTACK connections
whose request bodies trickle (a byte every 5 s, no credential), another (127.0.0.3) opens
SILENT connections that send nothing, and a victim (127.0.0.1) sends VICTIM track requests
meanwhile. Prints the victim's answers by status and latency, how the attacker's requests
were answered, and when the server closed the silent connections.

    bench/slow_clients.py [BIN] [ATTACK] [SILENT] [VICTIM]

BIN defaults to target/debug/trackd (this measures admission, not speed). Needs a
`ulimit -n` above ATTACK + SILENT for this process and the server.
"""
import asyncio, json, os, socket, subprocess, sys, tempfile, time, urllib.request

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/debug/trackd"
ATTACK = int(sys.argv[2]) if len(sys.argv) > 2 else 4200
SILENT = int(sys.argv[3]) if len(sys.argv) > 3 else 300
VICTIM = int(sys.argv[4]) if len(sys.argv) > 4 else 40


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def connect_from(local, port):
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((local, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def attacker(port, answers):
    reader, writer = await connect_from("127.0.0.2", port)
    writer.write(b"POST /api/v2/events/track HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    await writer.drain()
    for _ in range(100):
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            status = line.split(b" ")[1].decode() if line.startswith(b"HTTP/1.1 ") else "closed"
            answers[status] = answers.get(status, 0) + 1
            writer.close()
            return
        except asyncio.TimeoutError:
            writer.write(b" ")
            await writer.drain()
        except ConnectionError:
            answers["reset"] = answers.get("reset", 0) + 1
            return


async def silent(port, start, closed_after):
    reader, writer = await connect_from("127.0.0.3", port)
    # From the connection's start (under a burst, a SYN may be retried for seconds).
    connected = time.monotonic()
    try:
        await asyncio.wait_for(reader.read(), 120)
        closed_after.append(time.monotonic() - connected)
    except (asyncio.TimeoutError, ConnectionError):
        closed_after.append(float("inf"))
    writer.close()


def victim_request(port, token, n):
    body = json.dumps({"identity": {"id": "victim"}, "event_name": "v", "data": {"n": n}}).encode()
    url = f"http://127.0.0.1:{port}/api/v2/events/track?auth_token={token}"
    t = time.monotonic()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    except Exception:
        status = "error"
    return status, (time.monotonic() - t) * 1000


async def main():
    data = tempfile.mkdtemp()
    token = json.loads(subprocess.check_output(
        [BIN, "project", "create", "bench", "--data-dir", data, "--json"]))["tracking_token"]
    port = free_port()
    log = open(os.path.join(data, "log"), "w")
    server = subprocess.Popen([BIN, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}"],
                              stdout=log, stderr=log)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        answers, closed_after = {}, []
        start = time.monotonic()
        tasks = [asyncio.create_task(attacker(port, answers)) for _ in range(ATTACK)]
        tasks += [asyncio.create_task(silent(port, start, closed_after)) for _ in range(SILENT)]
        await asyncio.sleep(3)
        results = []
        for n in range(VICTIM):
            results.append(await asyncio.to_thread(victim_request, port, token, n))
            await asyncio.sleep(0.1)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
        in_flight = [l for l in metrics.splitlines() if l.startswith("trackd_http_requests_in_flight ")]
        limited = [l for l in metrics.splitlines() if l.startswith("trackd_rate_limited_total")]
        by_status = {}
        for status, _ in results:
            by_status[status] = by_status.get(status, 0) + 1
        ms = sorted(ms for _, ms in results)
        print(f"victim: {VICTIM} requests from 127.0.0.1: by status {by_status}; "
              f"p50 {ms[len(ms) // 2]:.1f} ms, max {ms[-1]:.1f} ms")
        print(f"during the attack: {in_flight[0] if in_flight else ''}; {'; '.join(limited)}")
        await asyncio.wait(tasks, timeout=70)
        print(f"attacker: {ATTACK} slow bodies from 127.0.0.2, answered: {answers}")
        closed = sorted(c for c in closed_after if c != float("inf"))
        elapsed = time.monotonic() - start
        if closed:
            print(f"silent: {SILENT} connections from 127.0.0.3: {len(closed)} closed by the server, "
                  f"{closed[0]:.1f} s to {closed[-1]:.1f} s after they connected; "
                  f"{SILENT - len(closed)} still open at {elapsed:.0f} s")
        else:
            print(f"silent: {SILENT} connections from 127.0.0.3: none closed in {elapsed:.0f} s")
        for task in tasks:
            task.cancel()
    finally:
        server.terminate()
        server.wait()


asyncio.run(main())
