#!/usr/bin/env python3
"""Drive Segment's unmodified Python SDK (segment-analytics-python) at a trackd /v1 API.

usage: segment_python.py HOST WRITE_KEY PREFIX     (HOST like http://127.0.0.1:PORT)

Sends identify, track, page, group, an anonymous track, alias, then 1,000 "Bulk" tracks,
waits for delivery (flush + join) and prints one JSON line. Exits 1 if the SDK reported
any delivery error (on_error) or refused to queue a call.
"""
import json
import sys
import time

from segment.analytics import Client
from segment.analytics.version import VERSION

BULK = 1000


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    host, write_key, p = sys.argv[1:4]
    errors, failed_items = [], 0

    def on_error(err, batch):
        nonlocal failed_items
        failed_items += len(batch)
        errors.append(str(err)[:300])

    started = time.monotonic()
    # Only the host and the retry budget differ from the defaults: a failure must surface
    # in seconds, not after Segment's 10 retries / 12 h backoff budget.
    client = Client(
        write_key=write_key,
        host=host,
        on_error=on_error,
        max_retries=2,
        timeout=10,
        max_total_backoff_duration=20,
        max_rate_limit_duration=20,
    )
    results = [
        client.identify(f"{p}-u1", {"email": f"{p}-u1@example.com", "name": "Ann", "plan": "pro"}),
        client.track(f"{p}-u1", "Order Completed", {"order_id": "o-1", "total": 42.5}),
        client.page(f"{p}-u1", name="Pricing", properties={"path": "/pricing"}),
        client.group(f"{p}-u1", "acme", {"name": "Acme Inc"}),
        client.track(event="Viewed Ad", anonymous_id=f"{p}-anon"),
        client.alias(f"{p}-anon", f"{p}-u2"),
    ]
    for i in range(BULK):
        results.append(client.track(f"{p}-bulk", "Bulk", {"i": i}))
    client.flush()
    client.shutdown()
    queued = sum(1 for ok, _ in results if ok)
    summary = {
        "sdk": "segment-analytics-python",
        "version": VERSION,
        "calls": len(results),
        "queued": queued,
        "failed_items": failed_items,
        "errors": errors[:5],
        "seconds": round(time.monotonic() - started, 2),
    }
    summary["ok"] = queued == len(results) and not errors
    print(json.dumps(summary), flush=True)
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
