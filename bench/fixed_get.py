#!/usr/bin/env python3
"""Sends exactly N small keep-alive GETs to HOST:PORT over C connections (each
connection one request at a time), checks every answer is 200, and exits. For
counting instructions per request (bench/callgrind_get.sh): unlike wrk, the
number of requests is fixed.

    python3 bench/fixed_get.py 127.0.0.1 19051 2000 16
"""
import asyncio
import sys


async def conn(host, port, n, bad):
    r, w = await asyncio.open_connection(host, port)
    req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    for _ in range(n):
        w.write(req)
        head = await r.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            bad.append(head[:40])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await r.readexactly(length)
    w.close()


async def main():
    host, port, n, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    bad = []
    per = [n // c + (1 if i < n % c else 0) for i in range(c)]
    await asyncio.gather(*(conn(host, port, k, bad) for k in per))
    if bad:
        print(f"{len(bad)} non-200 answers, e.g. {bad[0]!r}", file=sys.stderr)
        sys.exit(1)


asyncio.run(main())
