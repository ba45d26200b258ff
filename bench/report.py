#!/usr/bin/env python3
"""Helper of bench/compare.sh: parses wrk output, prints the tables of medians and
ratios, and splices generated text into a Markdown file between markers.

    report.py parse SCENARIO WORKERS ROUND PROXY < wrk-output   -> one TSV line
    report.py table RESULTS.tsv IDLE.tsv --machine M --command C -> Markdown
    report.py splice FILE NAME < text   (between <!-- BEGIN NAME --> and <!-- END NAME -->)
"""
import argparse
import re
import statistics
import sys

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
PROXIES = ["direct", "nginx", "haproxy", "switchyard"]
TITLES = {
    "defaults": "Defaults: small GET, keep-alive, `switchyard proxy --to` with nothing tuned",
    "get": "Small GET, keep-alive",
    "get-capped": "Small GET, keep-alive, each proxy held to the same CPU quota (requests/s per core of proxy)",
    "64k": "64 KiB responses, keep-alive",
    "upload": "1 MiB uploads (POST), keep-alive",
    "close": "New connection per request (`Connection: close`)",
    "tls-handshake": "New TLS connection per request (`Connection: close` over HTTPS; req/s = TLS handshakes/s)",
    "tls-keepalive": "TLS, keep-alive (HTTPS, small GET)",
    "flip": "switchyard, one of two servers flipped down/up every 100 ms through the admin API",
    "cold": "Cold start: small GET, the first traffic each freshly started proxy gets",
    "c1000": "Small GET, keep-alive, 1,000 clients",
    "many-rr": "Small GET, keep-alive, 100 servers in the upstream, round robin",
    "many-lc": "Small GET, keep-alive, 100 servers in the upstream, least connections",
}
# Rows whose switchyard req/s is held against its own small-GET row of the
# same run (no cliff as the work grows).
AGAINST_GET = ("c1000", "many-rr", "many-lc")


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * UNITS_MS[m.group(2)] if m else float("nan")


def parse(args):
    out = sys.stdin.read()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    if not rps:
        errors = -1  # wrk failed
    total = re.search(r"(\d+) requests in", out)
    cpu_us = args.cpu_ns / 1000 / int(total.group(1)) if total and int(total.group(1)) else float("nan")
    fields = [
        args.scenario,
        args.workers,
        args.round,
        args.proxy,
        f"{float(rps.group(1)):.0f}" if rps else "0",
        f"{to_ms(p50.group(1)):.3f}" if p50 else "nan",
        f"{to_ms(p99.group(1)):.3f}" if p99 else "nan",
        str(errors),
        f"{cpu_us:.2f}",
    ]
    print("\t".join(fields))


def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def fmt_ratio(x):
    return f"{x:.2f}×" if x == x else "–"


def table(args):
    rows = [line.rstrip("\n").split("\t") for line in open(args.results) if line.strip()]
    runs = {}
    order = []
    for sc, w, r, p, rps, p50, p99, err, cpu in rows:
        key = (sc, w)
        if key not in runs:
            runs[key] = {}
            order.append(key)
        runs[key].setdefault(p, []).append((int(r), float(rps), float(p50), float(p99), int(err), float(cpu)))
    out = []
    out.append(f"Machine: {args.machine}.  ")
    out.append(f"Command: `{args.command}` (commit {args.commit}, {args.elapsed} s in all).  ")
    out.append(
        "Each cell is the median over the rounds; rounds ran interleaved (direct, nginx, "
        "HAProxy, switchyard, then again). `direct` is wrk against the backend alone, the "
        "bound for any proxy. Errors: wrk's socket errors plus non-2xx answers, summed over "
        "the rounds. CPU µs/request: the proxy's own CPU time (all its threads and worker "
        "processes, from /proc/*/task/*/schedstat) over the run divided by wrk's request count; "
        "it moves far less than req/s when other work shares the machine."
    )
    out.append("")
    summary = []
    for sc, w in order:
        by = runs[(sc, w)]
        out.append(f"### {TITLES.get(sc, sc)}: {w} worker(s)")
        out.append("")
        if sc == "flip":
            base = by.get("base", [])
            flip = by.get("flipping", [])
            out.append("| run | req/s (median) | p50 ms | p99 ms | errors | req/s per round |")
            out.append("|---|---:|---:|---:|---:|---|")
            for name, rs in (("no flips", base), ("flipping", flip)):
                out.append(
                    f"| {name} | {med([x[1] for x in rs]):.0f} | {med([x[2] for x in rs]):.3f} | "
                    f"{med([x[3] for x in rs]):.3f} | {sum(x[4] for x in rs)} | "
                    f"{', '.join(f'{x[1]:.0f}' for x in sorted(rs))} |"
                )
            # The dip: how much lower req/s is while flipping (negative: higher).
            dips = [1 - f[1] / b[1] for b, f in zip(sorted(base), sorted(flip)) if b[1]]
            dip = 1 - med([x[1] for x in flip]) / med([x[1] for x in base]) if base and flip else float("nan")
            out.append("")
            out.append(
                f"Dip (1 − flipping/no flips; negative: no dip, flipping ran faster): per round {', '.join(f'{d * 100:+.1f}%' for d in dips)}; "
                f"median {dip * 100:+.1f}%. Errors while flipping: {sum(x[4] for x in flip)}."
            )
            summary.append(f"| flip dip, {w} worker(s) | {dip * 100:+.1f}% | ≤ 5%, 0 errors ({sum(x[4] for x in flip)} errors) |")
            out.append("")
            continue
        out.append("| proxy | req/s | p50 ms | p99 ms | errors | CPU µs/request | req/s per round |")
        out.append("|---|---:|---:|---:|---:|---:|---|")
        meds = {}
        for p in PROXIES:
            rs = sorted(by.get(p, []))
            if not rs:
                continue
            meds[p] = (med([x[1] for x in rs]), med([x[2] for x in rs]), med([x[3] for x in rs]), med([x[5] for x in rs]))
            errs = sum(x[4] for x in rs)
            out.append(
                f"| {p} | {meds[p][0]:.0f} | {meds[p][1]:.3f} | {meds[p][2]:.3f} | {errs} | {meds[p][3]:.1f} | "
                f"{', '.join(f'{x[1]:.0f}' for x in rs)} |"
            )
        out.append("")
        sy = {x[0]: x[1] for x in by.get("switchyard", [])}
        for other in ("nginx", "haproxy"):
            o = {x[0]: x[1] for x in by.get(other, [])}
            per = [sy[r] / o[r] for r in sorted(sy) if r in o and o[r]]
            m = med(per)
            out.append(
                f"switchyard/{other}: per round {', '.join(fmt_ratio(x) for x in per)}; "
                f"**median {fmt_ratio(m)}**.  "
            )
            summary.append(f"| {sc}, {w} worker(s): switchyard/{other} req/s | {fmt_ratio(m)} | " + {"defaults": "≥ 1.10×", "get": "≥ 1.10×", "get-capped": "≥ 1.10× (proxy-bound)", "upload": "≥ 1.00×" if other == "nginx" else "(no target)"}.get(sc, "(no target)") + " |")
        if "switchyard" in meds and "nginx" in meds:
            summary.append(
                f"| {sc}, {w} worker(s): CPU per request, switchyard/nginx (lower is better) | "
                f"{meds['switchyard'][3] / meds['nginx'][3]:.2f}× ({meds['switchyard'][3]:.1f} vs {meds['nginx'][3]:.1f} µs) | (diagnostic) |"
            )
            summary.append(
                f"| {sc}, {w} worker(s): p99 switchyard vs nginx | {meds['switchyard'][2]:.3f} ms vs {meds['nginx'][2]:.3f} ms | "
                + ("≤ nginx" if sc in ("get", "defaults", "cold", "c1000", "many-rr", "many-lc") else "(no target)") + " |"
            )
        if sc in AGAINST_GET and (sc and ("get", w) in runs):
            for p in ("switchyard", "nginx", "haproxy"):
                base = med([x[1] for x in runs[("get", w)].get(p, [])] or [float("nan")])
                if p in meds and base == base:
                    summary.append(
                        f"| {sc}, {w} worker(s): {p} req/s / its own 64-client, 1-server small GET | "
                        f"{fmt_ratio(meds[p][0] / base)} | " + ("≥ 0.90× (no cliff)" if p == "switchyard" else "(for comparison)") + " |"
                    )
        out.append("")
    idle = [line.rstrip("\n").split("\t") for line in open(args.idle) if line.strip()] if args.idle else []
    if idle:
        ws = sorted({x[1] for x in idle})
        for w in ws:
            out.append(f"### {idle[0][7]} idle keep-alive client connections: {w} worker(s)")
            out.append("")
            out.append("| proxy | RSS before (KiB) | RSS with idle connections (KiB) | growth per connection (bytes) | connections open |")
            out.append("|---|---:|---:|---:|---:|")
            rss = {}
            for sc, ww, _, p, before, after, open_, n in idle:
                if ww != w:
                    continue
                before, after, open_ = int(before), int(after), int(open_)
                rss[p] = after
                per = (after - before) * 1024 / open_ if open_ else float("nan")
                out.append(f"| {p} | {before} | {after} | {per:.0f} | {open_} |")
            out.append("")
            if "switchyard" in rss and "nginx" in rss:
                summary.append(f"| idle RSS, {w} worker(s): switchyard/nginx | {rss['switchyard'] / rss['nginx']:.2f}× | ≤ 1.00× |")
    if summary:
        out.insert(4, "| measure | result | target |\n|---|---|---|\n" + "\n".join(summary) + "\n")
    print("\n".join(out))


def splice(args):
    text = sys.stdin.read().rstrip("\n")
    begin, end = f"<!-- BEGIN {args.name} (generated by bench/; do not edit) -->", f"<!-- END {args.name} -->"
    try:
        doc = open(args.file).read()
    except FileNotFoundError:
        doc = ""
    block = f"{begin}\n{text}\n{end}"
    pat = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pat.search(doc):
        doc = pat.sub(lambda _: block, doc)
    else:
        doc = doc.rstrip("\n") + ("\n\n" if doc else "") + block + "\n"
    open(args.file, "w").write(doc)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("parse")
    for f in ("scenario", "workers", "round", "proxy"):
        p.add_argument(f)
    p.add_argument("--cpu-ns", type=int, default=0)
    t = sub.add_parser("table")
    t.add_argument("results")
    t.add_argument("idle", nargs="?")
    t.add_argument("--machine", default="?")
    t.add_argument("--command", default="?")
    t.add_argument("--elapsed", default="?")
    t.add_argument("--commit", default="?")
    s = sub.add_parser("splice")
    s.add_argument("file")
    s.add_argument("name")
    args = ap.parse_args()
    {"parse": parse, "table": table, "splice": splice}[args.cmd](args)


if __name__ == "__main__":
    main()
