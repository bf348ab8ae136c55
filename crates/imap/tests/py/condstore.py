"""CONDSTORE and QRESYNC (RFC 7162) end to end with Python's imaplib, over implicit TLS.

usage: condstore.py PORT USER PASS CAFILE
Prints "ALL OK" and exits 0 when every check passed; raises otherwise.

imaplib has no CONDSTORE support, so commands go through xatom() and a subclass records every
response line in order (VANISHED must come before the FETCH responses, for instance).
"""
import imaplib
import re
import ssl
import sys

port, user, password, cafile = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=cafile)


class Recorder(imaplib.IMAP4_SSL):
    """Keeps every line the server sent since the last run()."""

    def __init__(self, *a, **kw):
        self.lines = []
        super().__init__(*a, **kw)

    def _get_line(self):
        line = super()._get_line()
        self.lines.append(line.decode("utf-8", "replace"))
        return line


def connect():
    M = Recorder("localhost", port, ssl_context=ctx, timeout=15)
    M.login(user, password)
    return M


def run(M, name, args="", expect="OK"):
    """Sends `name args`; returns (tagged line, untagged lines)."""
    M.lines = []
    try:
        typ, _ = M.xatom(name, args) if args else M.xatom(name)
    except imaplib.IMAP4.error as e:
        typ = "BAD"
        if expect != "BAD":
            raise AssertionError("%s %s: %s; lines %r" % (name, args, e, M.lines))
    assert typ == expect, (name, args, typ, M.lines)
    if name in ("SELECT", "EXAMINE") and typ == "OK":
        M.state = "SELECTED"
    untagged = [l for l in M.lines if l.startswith("* ")]
    return M.lines[-1], untagged


def modseq_of(line):
    m = re.search(r"MODSEQ \((\d+)\)", line)
    assert m, line
    return int(m.group(1))


def code(lines, name):
    for l in lines:
        m = re.search(r"\[" + name + r" (\d+)\]", l)
        if m:
            return int(m.group(1))
    raise AssertionError("no %s in %r" % (name, lines))


def fetches(lines):
    return [l for l in lines if re.match(r"\* \d+ FETCH ", l)]


def uid_of(line):
    return int(re.search(r"UID (\d+)", line).group(1))


def msg(i):
    return ("From: a@example.test\r\nSubject: cs %d\r\nMessage-ID: <cs%d@example.test>\r\n\r\nbody %d\r\n" % (i, i, i)).encode()


A = connect()
caps = A.capability()[1][0].decode()
assert "CONDSTORE" in caps and "QRESYNC" in caps, caps
A.create("cs")
for i in range(1, 7):
    assert A.append("cs", None, None, msg(i))[0] == "OK"

# ---- STATUS HIGHESTMODSEQ, SELECT (CONDSTORE)
_, st = run(A, "STATUS", "cs (MESSAGES HIGHESTMODSEQ)")
status_hms = int(re.search(r"HIGHESTMODSEQ (\d+)", st[-1]).group(1))
assert status_hms > 0, st
_, sel = run(A, "SELECT", "cs (CONDSTORE)")
hms = code(sel, "HIGHESTMODSEQ")
assert hms == status_hms, (hms, status_hms)
uidvalidity = code(sel, "UIDVALIDITY")
assert "* 6 EXISTS" in sel, sel

# ---- FETCH MODSEQ, CHANGEDSINCE (0 as iPhones send it, and the current value)
_, f = run(A, "FETCH", "1:* (UID MODSEQ)")
assert len(fetches(f)) == 6, f
assert all(0 < modseq_of(l) <= hms for l in fetches(f)), (f, hms)
_, f = run(A, "UID", "FETCH 1:* (FLAGS) (CHANGEDSINCE 0)")
assert len(fetches(f)) == 6 and all("MODSEQ (" in l and "FLAGS (" in l for l in f), f
_, f = run(A, "UID", "FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % hms)
assert fetches(f) == [], f

# ---- STORE raises MODSEQ; FETCH responses carry MODSEQ once CONDSTORE is on
_, s = run(A, "STORE", "2 +FLAGS (\\Seen)")
assert len(s) == 1 and "MODSEQ (" in s[0] and modseq_of(s[0]) > hms, s
m2 = modseq_of(s[0])
_, f = run(A, "UID", "FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % hms)
assert len(fetches(f)) == 1 and fetches(f)[0].startswith("* 2 FETCH"), f

# ---- STORE (UNCHANGEDSINCE): message 2 changed after `hms`, message 3 did not
t, s = run(A, "STORE", "2:3 (UNCHANGEDSINCE %d) +FLAGS (\\Flagged)" % hms)
assert "[MODIFIED 2]" in t, (t, s)
assert [l.split()[1] for l in fetches(s)] == ["3"], s
assert "\\Flagged" in fetches(s)[0] and modseq_of(fetches(s)[0]) > m2, s
# UNCHANGEDSINCE 0 always fails (RFC 7162 §3.1.3); UID STORE reports UIDs.
_, all_uids = run(A, "UID", "SEARCH ALL")
uids = [int(x) for x in all_uids[0].split()[2:]]
t, s = run(A, "UID", "STORE %d:%d (UNCHANGEDSINCE 0) +FLAGS (\\Answered)" % (uids[0], uids[1]))
assert "[MODIFIED %d:%d]" % (uids[0], uids[1]) in t or "[MODIFIED %d,%d]" % (uids[0], uids[1]) in t, t
assert fetches(s) == [], s
# .SILENT still reports the new MODSEQ.
_, s = run(A, "STORE", "4 (UNCHANGEDSINCE 9223372036854775807) +FLAGS.SILENT (\\Draft)")
assert len(s) == 1 and re.match(r"\* 4 FETCH \(MODSEQ \(\d+\)\)$", s[0]), s

# ---- SEARCH MODSEQ / ESEARCH MODSEQ
_, r = run(A, "SEARCH", "MODSEQ %d" % (hms + 1))
assert re.match(r"\* SEARCH 2 3 4 \(MODSEQ \d+\)$", r[0]), r
top = int(re.search(r"MODSEQ (\d+)", r[0]).group(1))
_, r = run(A, "UID", "SEARCH RETURN (ALL) MODSEQ %d" % (hms + 1))
assert re.search(r"ALL \S+ MODSEQ %d$" % top, r[0]), r

# ---- another session's change: unsolicited FETCH with MODSEQ
B = connect()
run(B, "SELECT", "cs")
run(B, "UID", "STORE %d +FLAGS (\\Flagged)" % uids[4])
_, n = run(A, "NOOP")
assert len(fetches(n)) == 1 and "\\Flagged" in fetches(n)[0] and "MODSEQ (" in fetches(n)[0], n

# ---- EXPUNGE: HIGHESTMODSEQ in the tagged OK
run(A, "STORE", "6 +FLAGS.SILENT (\\Deleted)")
t, e = run(A, "EXPUNGE")
assert "* 6 EXPUNGE" in e, e
after_expunge = code([t], "HIGHESTMODSEQ")
assert after_expunge > top, (t, top)
_, st = run(A, "STATUS", "cs (HIGHESTMODSEQ)")
assert int(re.search(r"HIGHESTMODSEQ (\d+)", st[-1]).group(1)) == after_expunge, st

# ---- QRESYNC needs ENABLE first
run(A, "SELECT", "cs (QRESYNC (%d %d))" % (uidvalidity, hms), expect="BAD")
run(A, "SELECT", "cs")
run(A, "UID", "FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)", expect="BAD")

# ---- QRESYNC: resync from `known` after changes made by B
C = connect()
_, en = run(C, "ENABLE", "QRESYNC")
assert en == ["* ENABLED QRESYNC"], en
_, sel = run(C, "SELECT", "cs")
known = code(sel, "HIGHESTMODSEQ")
assert known == after_expunge, (known, after_expunge)
run(C, "UNSELECT")
uid1, uid3, uid5 = uids[0], uids[2], uids[4]
run(B, "NOOP")
run(B, "UID", "STORE %d +FLAGS (\\Answered)" % uid1)
run(B, "UID", "STORE %d +FLAGS (\\Deleted)" % uid3)
run(B, "UID", "EXPUNGE %d" % uid3)
_, sel = run(C, "SELECT", "cs (QRESYNC (%d %d %d:%d))" % (uidvalidity, known, uid1, uids[5]))
vanished = [l for l in sel if l.startswith("* VANISHED")]
assert vanished == ["* VANISHED (EARLIER) %d" % uid3], sel
f = fetches(sel)
assert len(f) == 1 and uid_of(f[0]) == uid1 and "\\Answered" in f[0] and "MODSEQ (" in f[0], sel
assert sel.index(vanished[0]) < sel.index(f[0]), sel
assert code(sel, "HIGHESTMODSEQ") > known, sel
# Known UIDs restrict the report; a wrong UIDVALIDITY turns it off.
_, sel = run(C, "SELECT", "cs (QRESYNC (%d %d %d))" % (uidvalidity, known, uid1))
assert "* OK [CLOSED] Previous mailbox closed" in sel, sel
assert not [l for l in sel if l.startswith("* VANISHED")] and len(fetches(sel)) == 1, sel
_, sel = run(C, "SELECT", "cs (QRESYNC (%d %d))" % (uidvalidity + 1, known))
assert not [l for l in sel if l.startswith("* VANISHED")] and fetches(sel) == [], sel
# The expunge before `known` (message 6) is not reported again; everything since 1 is.
_, f = run(C, "UID", "FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % known)
assert f[0] == "* VANISHED (EARLIER) %d" % uid3 and len(fetches(f)) == 1, f
_, f = run(C, "UID", "FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")
assert f[0] == "* VANISHED (EARLIER) %d,%d" % (uid3, uids[5]), f
assert len(fetches(f)) == 4 and all("MODSEQ (" in l for l in f[1:]), f

# ---- after ENABLE QRESYNC, expunges arrive as VANISHED, flag changes with UID
run(B, "UID", "STORE %d +FLAGS (\\Deleted \\Seen)" % uid5)
_, n = run(C, "NOOP")
assert len(fetches(n)) == 1 and ("UID %d" % uid5) in fetches(n)[0] and "MODSEQ (" in fetches(n)[0], n
run(B, "EXPUNGE")
_, n = run(C, "NOOP")
assert "* VANISHED %d" % uid5 in n and not [l for l in n if l.endswith(" EXPUNGE")], n
hms_now = code(n, "HIGHESTMODSEQ")
_, st = run(B, "STATUS", "cs (HIGHESTMODSEQ)")
assert int(re.search(r"HIGHESTMODSEQ (\d+)", st[-1]).group(1)) == hms_now, (st, n)
_, sel = run(C, "SELECT", "cs (QRESYNC (%d %d))" % (uidvalidity, hms_now))
assert not [l for l in sel if l.startswith("* VANISHED")] and fetches(sel) == [], sel

for M in (A, B, C):
    M.logout()
print("ALL OK")
