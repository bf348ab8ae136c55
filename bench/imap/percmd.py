#!/usr/bin/env python3
"""Per-command latency and server CPU of one IMAP session (blocking socket, no asyncio).

usage:
  percmd.py cmds PORT USER PASSWORD N PID   each command of load.py's client round N times
  percmd.py cold PORT USER PASSWORD PID     LOGIN, then the time of the first SELECT INBOX

`cmds` selects INBOX, then runs each command type of bench/imap/load.py's round (UID FETCH
1:* (FLAGS), UID FETCH BODY.PEEK[], UID SEARCH SUBJECT, UID STORE \\Seen, and the trio
APPEND, UID STORE \\Deleted, UID EXPUNGE) N times in a row. For each it prints p50 and mean
wall time per command and the server's CPU time per command (run time of every thread of PID
from /proc/PID/task/*/schedstat, in ns; threads that exited meanwhile in clock ticks). One JSON object on stdout. Every socket read has a timeout.
"""
import json
import os
import random
import re
import socket
import statistics
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def cpu_ms(pid):
    """CPU time of the process so far: the run time of its live threads from schedstat (ns),
    plus what its exited threads used (/proc/PID/stat counts those, in clock ticks)."""
    live = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                live += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime+stime of the whole process minus the live threads' share is the exited threads'.
    total_ticks_ms = (int(fields[11]) + int(fields[12])) * 1000.0 / TICK
    live_ticks_ms = 0.0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                t = f.read().rsplit(")", 1)[1].split()
            live_ticks_ms += (int(t[11]) + int(t[12])) * 1000.0 / TICK
        except (FileNotFoundError, ProcessLookupError):
            pass
    return live / 1e6 + max(0.0, total_ticks_ms - live_ticks_ms)


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buf = b""
        self.n = 0
        self.line()

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line + b"\r\n"

    def exactly(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def cmd(self, text, literal=None):
        self.n += 1
        tag = b"t%d" % self.n
        if literal is None:
            self.s.sendall(tag + b" " + text.encode() + b"\r\n")
        else:
            self.s.sendall(tag + b" " + text.encode() + b" {%d}\r\n" % len(literal))
            cont = self.line()
            if not cont.startswith(b"+"):
                raise RuntimeError("no continuation: %r" % cont)
            self.s.sendall(literal + b"\r\n")
        lines = []
        while True:
            line = self.line()
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if m:
                line += self.exactly(int(m.group(1)))
                line += self.line()
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError("%s: %r" % (text, line))
                return lines, line
            lines.append(line)


def new_message(i):
    return ("From: load@example.test\r\nTo: user@bench.test\r\nSubject: appended %d\r\n"
            "Message-ID: <append-%d-%f@example.test>\r\n\r\nAppended by the load client.\r\n"
            % (i, i, random.random())).encode()


def summary(times, cpu):
    return {"p50_ms": round(statistics.median(times), 3), "mean_ms": round(statistics.mean(times), 3),
            "cpu_ms_per_cmd": round(cpu / len(times), 3), "n": len(times)}


def cmds(port, user, password, n, pid):
    rng = random.Random(4)
    c = Conn(port)
    c.cmd('LOGIN %s "%s"' % (user, password))
    c.cmd("SELECT INBOX")
    lines, _ = c.cmd("UID FETCH 1:* (FLAGS)")
    uids = [int(m.group(1)) for m in (re.search(rb"UID (\d+)", l) for l in lines) if m]
    out = {}

    def run(name, make):
        times = []
        c0 = cpu_ms(pid)
        for i in range(n):
            text, literal = make(i)
            t = time.perf_counter()
            c.cmd(text, literal)
            times.append((time.perf_counter() - t) * 1000)
        out[name] = summary(times, cpu_ms(pid) - c0)

    run("UID FETCH 1:* (FLAGS)", lambda i: ("UID FETCH 1:* (FLAGS)", None))
    run("UID FETCH BODY.PEEK[]", lambda i: ("UID FETCH %d BODY.PEEK[]" % rng.choice(uids), None))
    run("UID SEARCH SUBJECT", lambda i: ("UID SEARCH SUBJECT topic-%d" % rng.randint(0, 99), None))
    run("UID STORE \\Seen", lambda i: ("UID STORE %d %sFLAGS.SILENT (\\Seen)" % (rng.choice(uids), "+-"[i % 2]), None))
    # APPEND, UID STORE \Deleted, UID EXPUNGE: each one timed on its own.
    times = {"APPEND": [], "UID STORE \\Deleted": [], "UID EXPUNGE": []}
    cpu = dict.fromkeys(times, 0.0)
    for i in range(n):
        c0 = cpu_ms(pid)
        t = time.perf_counter()
        _, ok = c.cmd("APPEND INBOX", new_message(i))
        times["APPEND"].append((time.perf_counter() - t) * 1000)
        c1 = cpu_ms(pid)
        cpu["APPEND"] += c1 - c0
        new = int(re.search(rb"APPENDUID \d+ (\d+)", ok).group(1))
        t = time.perf_counter()
        c.cmd("UID STORE %d +FLAGS.SILENT (\\Deleted)" % new)
        times["UID STORE \\Deleted"].append((time.perf_counter() - t) * 1000)
        c2 = cpu_ms(pid)
        cpu["UID STORE \\Deleted"] += c2 - c1
        t = time.perf_counter()
        c.cmd("UID EXPUNGE %d" % new)
        times["UID EXPUNGE"].append((time.perf_counter() - t) * 1000)
        cpu["UID EXPUNGE"] += cpu_ms(pid) - c2
    for k in times:
        out[k] = summary(times[k], cpu[k])
    c.cmd("LOGOUT")
    return out


def cold(port, user, password, pid):
    c = Conn(port)
    c.cmd('LOGIN %s "%s"' % (user, password))
    c0 = cpu_ms(pid)
    t = time.perf_counter()
    lines, _ = c.cmd("SELECT INBOX")
    ms = (time.perf_counter() - t) * 1000
    cpu = cpu_ms(pid) - c0
    exists = next(int(l.split()[1]) for l in lines if l.endswith(b"EXISTS\r\n"))
    t = time.perf_counter()
    c.cmd("SELECT INBOX")
    warm = (time.perf_counter() - t) * 1000
    c.cmd("LOGOUT")
    return {"first_select_ms": round(ms, 2), "first_select_cpu_ms": round(cpu, 1),
            "second_select_ms": round(warm, 2), "messages": exists}


def main():
    mode = sys.argv[1]
    if mode == "cmds":
        port, user, password, n, pid = sys.argv[2:7]
        res = cmds(int(port), user, password, int(n), int(pid))
    elif mode == "cold":
        port, user, password, pid = sys.argv[2:6]
        res = cold(int(port), user, password, int(pid))
    else:
        sys.exit(__doc__)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
