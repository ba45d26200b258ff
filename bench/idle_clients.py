#!/usr/bin/env python3
"""Opens N keep-alive connections to HOST:PORT, sends one GET on each, reads the
answer, then holds them all idle. Writes how many are open to READY_FILE once done,
and keeps them until killed.

    python3 bench/idle_clients.py 127.0.0.1 19004 10000 /tmp/ready
"""
import asyncio
import resource
import sys


async def one(host, port, sem, conns):
    async with sem:
        try:
            r, w = await asyncio.open_connection(host, port)
            w.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            await w.drain()
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await r.read(4096)
                if not chunk:
                    return
                data += chunk
            conns.append((r, w))
        except OSError:
            pass


async def main():
    host, port, n, ready = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    conns = []
    sem = asyncio.Semaphore(256)
    await asyncio.gather(*(one(host, port, sem, conns) for _ in range(n)))
    with open(ready, "w") as f:
        f.write(str(len(conns)))
    print(f"{len(conns)} of {n} connections open", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
