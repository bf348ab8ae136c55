#!/usr/bin/env python3
"""The retrieval client of the POP3 benchmark: the same code against every server.

For each server: one warm-up session (not counted: it lets Dovecot build its index and both
servers fill the page cache), then RUNS measured sessions, alternating between the servers. A session connects with implicit
TLS, logs in with USER/PASS, reads STAT, then RETRs every message one after another, each
request waiting for its full response (no pipelining), as a mail client does. Only the RETR
loop is timed; login is reported separately because the two servers hash passwords
differently (Argon2id in Tessera, PLAIN in this Dovecot set-up).

Usage: retrieve.py --ca CA --user U --password P --runs 3 NAME=PORT [NAME=PORT ...]
Prints a table: messages/s and MB/s (median of the runs) and the ratio to the last server.
"""

import argparse
import json
import socket
import ssl
import statistics
import time

TERMINATOR = b"\r\n.\r\n"


class Pop3:
    def __init__(self, port, ca):
        context = ssl.create_default_context(cafile=ca)
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.buf = bytearray()
        self.cipher = self.sock.cipher()[0]
        self.status()

    def fill(self):
        chunk = self.sock.recv(262144)
        if not chunk:
            raise EOFError("server closed the connection")
        self.buf += chunk

    def status(self):
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[:end + 2]
                if not line.startswith(b"+OK"):
                    raise RuntimeError(line.decode(errors="replace"))
                return line
            self.fill()

    def cmd(self, line):
        self.sock.sendall(line.encode() + b"\r\n")
        return self.status()

    def multiline(self):
        """Returns the stuffed body length of a multi-line response (terminator excluded)."""
        if self.buf.startswith(b".\r\n"):
            del self.buf[:3]
            return 0
        start = 0
        while True:
            end = self.buf.find(TERMINATOR, start)
            if end >= 0:
                size = end + 2
                del self.buf[:end + len(TERMINATOR)]
                return size
            start = max(len(self.buf) - len(TERMINATOR), 0)
            self.fill()


def session(port, args):
    t0 = time.perf_counter()
    p = Pop3(port, args.ca)
    p.cmd(f"USER {args.user}")
    p.cmd(f"PASS {args.password}")
    login = time.perf_counter() - t0
    count, octets = (int(x) for x in p.cmd("STAT").split()[1:3])
    received = 0
    t1 = time.perf_counter()
    for n in range(1, count + 1):
        p.cmd(f"RETR {n}")
        received += p.multiline()
    elapsed = time.perf_counter() - t1
    p.cmd("QUIT")
    return {"count": count, "octets": octets, "received": received, "seconds": elapsed,
            "login": login, "cipher": p.cipher}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ca", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", help="also write the summary as JSON to this file")
    ap.add_argument("servers", nargs="+", help="NAME=PORT")
    args = ap.parse_args()

    servers = [(name, int(port)) for name, port in (spec.split("=") for spec in args.servers)]
    for _, port in servers:
        session(port, args)  # warm-up
    # Runs alternate between the servers, so a burst of load on this shared machine hits both.
    results = {name: [] for name, _ in servers}
    for i in range(1, args.runs + 1):
        for name, port in servers:
            r = session(port, args)
            results[name].append(r)
            print(f"{name:>8} run {i}: {r['count']} msgs, {r['octets']} octets (STAT), "
                  f"{r['received']} received, {r['seconds']:.3f} s, login {r['login'] * 1000:.0f} ms, "
                  f"{r['cipher']}")

    summary = {}
    for name, runs in results.items():
        med = statistics.median(r["seconds"] for r in runs)
        summary[name] = {
            "count": runs[0]["count"],
            "octets": runs[0]["octets"],
            "rate": runs[0]["count"] / med,
            "mbs": runs[0]["octets"] / med / 1e6,
            "login": statistics.median(r["login"] for r in runs) * 1000,
        }
    reference = list(summary)[-1]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": args.runs, "servers": summary}, f, indent=1)
    print()
    print(f"median of {args.runs} runs; ratio = server / {reference}")
    print(f"{'server':>8} | {'messages':>8} | {'MB':>6} | {'msgs/s':>8} | {'MB/s':>7} | "
          f"{'login ms':>8} | ratio")
    print("-" * 70)
    for name, s in summary.items():
        ratio = s["rate"] / summary[reference]["rate"]
        print(f"{name:>8} | {s['count']:>8} | {s['octets'] / 1e6:>6.1f} | {s['rate']:>8.0f} | "
              f"{s['mbs']:>7.1f} | {s['login']:>8.0f} | {ratio:.2f}")

if __name__ == "__main__":
    main()
