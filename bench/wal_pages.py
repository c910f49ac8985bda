#!/usr/bin/env python3
"""Which B-trees the WAL frames of a run belong to.

    bench/wal_pages.py STRACE_LOG DATABASE EVENTS [COMMITS]

STRACE_LOG is `strace -f --seccomp-bpf -e trace=pwrite64 -o STRACE_LOG` of a trackd process
(bench/wal_pages.sh makes one); every WAL frame is written as a 24-byte header, whose first
four bytes are the page number, then the page. DATABASE is the database afterwards: its
`dbstat` names the B-tree that owns each page (a page freed and reused in between is
counted under its last owner). Prints frames, and frames per event, by B-tree, most first.
"""
import collections
import re
import sqlite3
import sys

log, database, events = sys.argv[1], sys.argv[2], int(sys.argv[3])
commits = int(sys.argv[4]) if len(sys.argv) > 4 else 0

db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
owner = {pageno: name for name, pageno in db.execute("SELECT name, pageno FROM dbstat")}
page_size = db.execute("PRAGMA page_size").fetchone()[0]

# pwrite64(FD, "escaped bytes", 24, OFFSET) = 24: a frame header. strace escapes bytes as
# \n, \t, \", \\, \ooo (octal) or \xhh; the first four are the page number, big-endian.
header = re.compile(r'pwrite64\((\d+), "((?:[^"\\]|\\.)*)"(?:\.\.\.)?, 24, \d+\) = 24')
escape = re.compile(rb"\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)")
named = {b"n": 10, b"t": 9, b"r": 13, b"v": 11, b"f": 12, b'"': 34, b"\\": 92}


def unescape(text: str) -> bytes:
    def one(m):
        e = m.group(1)
        if e[:1] == b"x":
            return bytes([int(e[1:], 16)])
        if e[:1].isdigit():
            return bytes([int(e, 8)])
        return bytes([named.get(e, e[0])])

    return escape.sub(one, text.encode("latin-1"))


frames = collections.Counter()
for line in open(log, encoding="latin-1"):
    m = header.search(line)
    if m:
        page = int.from_bytes(unescape(m.group(2))[:4], "big")
        frames[owner.get(page, "(a page freed since)")] += 1

total = sum(frames.values())
if total == 0:
    sys.exit("no WAL frame headers in the log: was it written by strace -e trace=pwrite64?")
print(f"{total} WAL frames of {page_size + 24} bytes for {events} events: "
      f"{total / events:.3f} frames, {total * (page_size + 24) / events:.0f} bytes an event"
      + (f"; {commits} commits: {total / commits:.1f} frames and {events / commits:.1f} "
         f"events a commit" if commits else ""))
for name, n in frames.most_common():
    print(f"  {name:28} {n:9}  {n / events:7.3f} an event  {100 * n / total:5.1f}%")
