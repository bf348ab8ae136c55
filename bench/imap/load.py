#!/usr/bin/env python3
"""IMAP load client for bench/imap/run (asyncio, raw protocol, plaintext on loopback).

  load.py load  PORT USER PASS SESSIONS SECONDS [STYLE]
                                                  -> JSON: ops/s, errors, p50/p99 ms per command
        STYLE "long" (default): each session logs in once and loops the client round until the
        deadline; "login": one login per session, i.e. connect, LOGIN, SELECT, one round, LOGOUT,
        and again (how phones and webmail that poll behave).
  load.py idle  PORT USER PASS SESSIONS PID       -> JSON: RSS/PSS growth per IDLE session
  load.py big   PORT USER PASS                    -> JSON: latencies on a large INBOX

Every wait has a timeout and every loop a bound (deadline or count).
"""
import asyncio
import json
import os
import random
import re
import statistics
import sys
import time

LIT = re.compile(rb"\{(\d+)\}\r\n$")
TIMEOUT = 120


class ProtoError(Exception):
    """A tagged NO/BAD (or an unusable answer): counted as a protocol error, never hidden."""


class Conn:
    """One IMAP connection. Responses are read in large chunks and framed with one regular
    expression search per chunk (literals skipped by their length), not a Python step per
    line, so the client is not the bottleneck of a 1,000-line FETCH on either server."""

    async def open(self, port):
        self.r, self.w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, limit=1 << 24), TIMEOUT)
        self.n = 0
        self.buf = bytearray()
        self.pos = 0
        greeting = await self.read_line()
        assert greeting.startswith(b"* OK"), greeting
        return self

    async def fill(self):
        data = await asyncio.wait_for(self.r.read(1 << 20), TIMEOUT)
        if not data:
            raise ConnectionError("closed")
        self.buf += data

    def compact(self):
        """Drops what was consumed, keeping the CRLF that ended the last line (`cmd` searches
        for its tagged line as CRLF + tag)."""
        if self.pos > 2 and self.pos > len(self.buf) // 2:
            del self.buf[:self.pos - 2]
            self.pos = 2

    async def read_line(self):
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                line = bytes(self.buf[self.pos:i + 2])
                self.pos = i + 2
                return line
            await self.fill()

    async def read_exactly(self, n):
        while len(self.buf) - self.pos < n:
            await self.fill()
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    async def read_response(self):
        """One response line with any literals folded in."""
        line = await self.read_line()
        while True:
            m = LIT.search(line)
            if not m:
                return line
            line += await self.read_exactly(int(m.group(1)))
            line += await self.read_line()

    async def cmd(self, text, literal=None):
        """Sends one command; returns (untagged lines, tagged line). The lines are the
        untagged responses split at line ends (a literal's content is not kept whole)."""
        self.compact()
        self.n += 1
        tag = b"t%d" % self.n
        if literal is None:
            self.w.write(tag + b" " + text.encode() + b"\r\n")
        else:
            self.w.write(tag + b" " + text.encode() + b" {%d}\r\n" % len(literal))
            await self.w.drain()
            cont = await self.read_response()
            assert cont.startswith(b"+"), cont
            self.compact()
            self.w.write(literal + b"\r\n")
        await self.w.drain()
        # A literal marker, or the tagged line (always after a CRLF: the previous line's).
        pat = re.compile(rb"\{(\d+)\}\r\n|\r\n(" + tag + rb" [^\r\n]*\r\n)")
        start = self.pos
        scan = start - 2
        while True:
            m = pat.search(self.buf, scan)
            if m is None:
                # Resume at the last line end: a tagged line or a literal marker not yet
                # complete starts after it.
                scan = max(scan, self.buf.rfind(b"\r\n", scan))
                await self.fill()
                continue
            if m.group(1) is not None:
                end = m.end() + int(m.group(1))
                while len(self.buf) < end:
                    await self.fill()
                scan = end
                continue
            tagged = bytes(m.group(2))
            body = bytes(self.buf[start:m.start(2)])
            self.pos = m.end()
            if not tagged.startswith(tag + b" OK"):
                raise ProtoError("%s -> %r" % (text, tagged[:200]))
            return body.splitlines(keepends=True), tagged

    def close(self):
        self.w.close()


class Stats:
    def __init__(self):
        self.lat = {}
        self.errors = 0
        self.first_error = None

    async def timed(self, name, coro):
        t = time.perf_counter()
        out = await coro
        self.lat.setdefault(name, []).append(time.perf_counter() - t)
        return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def new_message(i):
    return ("From: load@example.test\r\nTo: user@bench.test\r\nSubject: appended %d\r\n"
            "Message-ID: <append-%d-%f@example.test>\r\n\r\nAppended by the load client.\r\n" % (i, i, random.random())).encode()


async def client_round(c, stats, rng):
    """What a client does on a selected INBOX, once: 7 commands."""
    lines, _ = await stats.timed("UID FETCH 1:* (FLAGS)", c.cmd("UID FETCH 1:* (FLAGS)"))
    uids = [int(m.group(1)) for m in (re.search(rb"UID (\d+)", l) for l in lines) if m]
    if not uids:
        raise ProtoError("UID FETCH 1:* returned no UIDs")
    uid = rng.choice(uids)
    await stats.timed("UID FETCH BODY.PEEK[]", c.cmd("UID FETCH %d BODY.PEEK[]" % uid))
    await stats.timed("UID SEARCH SUBJECT", c.cmd("UID SEARCH SUBJECT topic-%d" % rng.randint(0, 99)))
    sign = rng.choice("+-")
    await stats.timed("UID STORE", c.cmd("UID STORE %d %sFLAGS.SILENT (\\Seen)" % (uid, sign)))
    _, ok = await stats.timed("APPEND", c.cmd("APPEND INBOX", new_message(uid)))
    m = re.search(rb"APPENDUID \d+ (\d+)", ok)
    if not m:
        raise ProtoError("APPEND without APPENDUID: %r" % ok)
    new = int(m.group(1))
    await stats.timed("UID STORE", c.cmd("UID STORE %d +FLAGS.SILENT (\\Deleted)" % new))
    await stats.timed("UID EXPUNGE", c.cmd("UID EXPUNGE %d" % new))


async def session(port, user, password, deadline, stats, rng, style):
    while time.monotonic() < deadline:
        c = await Conn().open(port)
        try:
            await stats.timed("LOGIN", c.cmd('LOGIN %s "%s"' % (user, password)))
            await stats.timed("SELECT", c.cmd("SELECT INBOX"))
            while True:
                await client_round(c, stats, rng)
                if style == "login" or time.monotonic() >= deadline:
                    break
            await c.cmd("LOGOUT")
        except ProtoError as e:
            stats.errors += 1
            stats.first_error = stats.first_error or str(e)
        finally:
            c.close()


async def load(port, user, password, sessions, seconds, style):
    stats = Stats()
    start = time.monotonic()
    deadline = start + seconds
    await asyncio.gather(*(session(port, user, password, deadline, stats, random.Random(i), style)
                           for i in range(sessions)))
    elapsed = time.monotonic() - start
    total = sum(len(v) for v in stats.lat.values())
    return {
        "sessions": sessions,
        "style": style,
        "ops_per_s": total / elapsed,
        "errors": stats.errors,
        "first_error": stats.first_error,
        "commands": {k: {"n": len(v), "p50_ms": pct(v, 0.5) * 1000, "p99_ms": pct(v, 0.99) * 1000}
                     for k, v in sorted(stats.lat.items())},
    }


def tree(pid):
    """pid and all its descendants."""
    children = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open("/proc/%s/stat" % p) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(p))
            except OSError:
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def memory(pid):
    rss = pss = 0
    for p in tree(pid):
        try:
            with open("/proc/%d/smaps_rollup" % p) as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss, len(tree(pid))


async def idle(port, user, password, sessions, pid):
    # Warm-up: one session logs in, selects and leaves before the baseline, so one-off costs
    # (Tessera: one Argon2id working area of 19 MiB; Dovecot: auth and index processes) are
    # not divided among the idle sessions.
    w = await Conn().open(port)
    await w.cmd('LOGIN %s "%s"' % (user, password))
    await w.cmd("SELECT INBOX")
    await w.cmd("LOGOUT")
    w.close()
    await asyncio.sleep(1)
    rss0, pss0, procs0 = memory(pid)
    conns = []

    async def one():
        c = await Conn().open(port)
        await c.cmd('LOGIN %s "%s"' % (user, password))
        await c.cmd("SELECT INBOX")
        c.n += 1
        c.w.write(b"t%d IDLE\r\n" % c.n)
        await c.w.drain()
        line = await c.read_response()
        assert line.startswith(b"+"), line
        conns.append(c)

    for i in range(0, sessions, 50):
        await asyncio.gather(*(one() for _ in range(min(50, sessions - i))))
    await asyncio.sleep(2)
    rss1, pss1, procs1 = memory(pid)
    for c in conns:
        c.close()
    return {
        "sessions": len(conns),
        "processes": [procs0, procs1],
        "rss_kib": [rss0, rss1],
        "pss_kib": [pss0, pss1],
        "rss_per_session_kib": (rss1 - rss0) / len(conns),
        "pss_per_session_kib": (pss1 - pss0) / len(conns),
    }


async def big(port, user, password):
    c = await Conn().open(port)
    await c.cmd('LOGIN %s "%s"' % (user, password))
    res = {}
    # The first SELECT after the server started (Tessera reads the whole mailbox from its
    # store; Dovecot builds its index here) is reported on its own, then it is the warm-up.
    t = time.perf_counter()
    lines, _ = await c.cmd("SELECT INBOX")
    res["first SELECT after start"] = {"median_ms": (time.perf_counter() - t) * 1000, "runs": 1}
    exists = int(next(re.search(rb"(\d+) EXISTS", l).group(1) for l in lines if l.endswith(b"EXISTS\r\n")))
    await c.cmd("UID FETCH 1:* (FLAGS)")
    plan = [
        ("SELECT INBOX", "SELECT INBOX", 3),
        ("UID FETCH 1:* (FLAGS)", "UID FETCH 1:* (FLAGS)", 3),
        ("UID SEARCH HEADER Subject", "UID SEARCH HEADER Subject needle", 3),
        ("UID SEARCH BODY", "UID SEARCH BODY needle", 2),
        ("FETCH ENVELOPE last 500", "FETCH %d:%d (ENVELOPE)" % (max(1, exists - 499), exists), 3),
    ]
    for name, text, runs in plan:
        times = []
        hits = None
        for _ in range(runs):
            t = time.perf_counter()
            lines, _ = await c.cmd(text)
            times.append((time.perf_counter() - t) * 1000)
            if "SEARCH" in name:
                hits = sum(len(l.split()) - 2 for l in lines if l.startswith(b"* SEARCH"))
        res[name] = {"median_ms": statistics.median(times), "runs": runs}
        if hits is not None:
            res[name]["hits"] = hits
    res["messages"] = exists
    await c.cmd("LOGOUT")
    c.close()
    return res


def main():
    mode, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if mode == "load":
        style = sys.argv[7] if len(sys.argv) > 7 else "long"
        if style not in ("long", "login"):
            sys.exit("style must be long or login")
        out = asyncio.run(load(port, user, password, int(sys.argv[5]), float(sys.argv[6]), style))
    elif mode == "idle":
        out = asyncio.run(idle(port, user, password, int(sys.argv[5]), int(sys.argv[6])))
    else:
        out = asyncio.run(big(port, user, password))
    print(json.dumps(out))


main()
