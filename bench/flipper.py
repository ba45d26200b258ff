#!/usr/bin/env python3
"""Flips one server of an upstream down and up through switchyard's admin API.

    python3 bench/flipper.py ADMIN_ADDR UPSTREAM SERVER_ID PERIOD_S [up]

Every PERIOD_S seconds it PATCHes /api/v1/upstreams/UPSTREAM/servers/SERVER_ID with
{"state": "down"} then {"state": "up"}, alternately, until killed (on SIGTERM it
leaves the server up). With `up` it sets the state to up once and exits. Prints how
many changes were answered 200 and how many were not.
"""
import http.client
import json
import signal
import sys
import time

admin, upstream, server, period = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
once_up = len(sys.argv) > 5 and sys.argv[5] == "up"
host, port = admin.rsplit(":", 1)
conn = http.client.HTTPConnection(host, int(port), timeout=5)
path = f"/api/v1/upstreams/{upstream}/servers/{server}"
ok = bad = 0


def patch(state):
    global ok, bad, conn
    try:
        conn.request("PATCH", path, json.dumps({"state": state}), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        if resp.status == 200:
            ok += 1
        else:
            bad += 1
    except (OSError, http.client.HTTPException):
        bad += 1
        conn = http.client.HTTPConnection(host, int(port), timeout=5)


def stop(*_):
    patch("up")
    print(f"{ok} changes answered 200, {bad} not", flush=True)
    sys.exit(0)


if once_up:
    patch("up")
    sys.exit(0 if bad == 0 else 1)
signal.signal(signal.SIGTERM, stop)
state = "down"
next_at = time.monotonic()
while True:
    patch(state)
    state = "up" if state == "down" else "down"
    next_at += period
    time.sleep(max(0.0, next_at - time.monotonic()))
