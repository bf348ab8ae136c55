"""Drives every implemented IMAP command with Python's imaplib.

usage: client.py starttls|ssl PORT USER PASS CAFILE
Prints "ALL OK" and exits 0 when every check passed; raises otherwise.
"""
import imaplib
import re
import ssl
import sys

mode, port, user, password, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=cafile)
imaplib.IMAP4.timeout = 15


def ok(res, what):
    typ, data = res
    assert typ == "OK", "%s: %r %r" % (what, typ, data)
    return data


def connect():
    if mode == "ssl":
        M = imaplib.IMAP4_SSL("localhost", port, ssl_context=ctx, timeout=15)
    else:
        M = imaplib.IMAP4("localhost", port, timeout=15)
        assert "LOGINDISABLED" in M.capabilities, M.capabilities
        ok(M.starttls(ssl_context=ctx), "STARTTLS")
        assert "AUTH=PLAIN" in M.capabilities, M.capabilities
    return M


M = connect()
ok(M.noop(), "NOOP")
caps = ok(M.capability(), "CAPABILITY")[0].decode()
assert "IMAP4rev1" in caps and "SASL-IR" in caps, caps
typ, data = M.xatom("ID", '("name" "client.py")')
assert typ == "OK", data
assert M.untagged_responses.get("ID"), M.untagged_responses

# Wrong password, then AUTHENTICATE PLAIN (SASL-IR, as imaplib sends it).
try:
    M.login(user, "wrong")
    raise AssertionError("wrong password accepted")
except imaplib.IMAP4.error:
    pass
ok(M.authenticate("PLAIN", lambda _: ("\0%s\0%s" % (user, password)).encode()), "AUTHENTICATE")
caps = ok(M.capability(), "CAPABILITY")[0].decode()
for c in ["NAMESPACE", "UIDPLUS", "MOVE", "UNSELECT", "LIST-EXTENDED", "SPECIAL-USE", "LIST-STATUS", "IDLE"]:
    assert c in caps, (c, caps)
typ, data = M.xatom("ENABLE", "CONDSTORE")
assert typ == "OK" and "ENABLED" in M.untagged_responses, (typ, data, M.untagged_responses)
ns = ok(M.namespace(), "NAMESPACE")[0]
assert ns == b'(("" "/")) NIL NIL', ns

# Mailboxes: default special-use folders, CREATE/RENAME/DELETE, LIST-EXTENDED, LSUB.
listing = b"\n".join(ok(M.list(), "LIST"))
for name, attr in [(b"Sent", b"\\Sent"), (b"Trash", b"\\Trash"), (b"Drafts", b"\\Drafts"), (b"Junk", b"\\Junk"), (b"Archive", b"\\Archive")]:
    assert re.search(rb"\([^)]*" + re.escape(attr) + rb"[^)]*\) \"/\" \"?" + name, listing), (name, listing)
ok(M.create("Projects/2026"), "CREATE nested")
ok(M.create("Entw\u00fcrfe".encode("utf-8").decode("latin-1")) if False else M.create("Entw&APw-rfe"), "CREATE mutf7")
listing = b"\n".join(ok(M.list("\"\"", "*"), "LIST *"))
assert b"Entw&APw-rfe" in listing and b"Projects/2026" in listing, listing
assert re.search(rb"\\HasChildren[^)]*\) \"/\" \"?Projects\"?", listing), listing
pct = b"\n".join(ok(M.list("\"\"", "%"), "LIST %"))
assert b"Projects/2026" not in pct, pct
ok(M.rename("Projects/2026", "Projects/2027"), "RENAME")
assert b"Projects/2027" in b"\n".join(ok(M.list("Projects", "*"), "LIST ref"))
typ, data = M.create("a/../b")
assert typ == "NO", data
ok(M.subscribe("Projects/2027"), "SUBSCRIBE")
lsub = b"\n".join(d for d in ok(M.lsub("\"\"", "*"), "LSUB") if d)
assert b"Projects/2027" in lsub, lsub
ok(M.unsubscribe("Projects/2027"), "UNSUBSCRIBE")
typ, data = M._simple_command("LIST", '(SPECIAL-USE) "" "*" RETURN (STATUS (MESSAGES UIDNEXT SIZE))')
assert typ == "OK", data
lst = M.untagged_responses.pop("LIST", [])
st = M.untagged_responses.pop("STATUS", [])
assert lst and all(b"\\" in l for l in lst) and not any(b"Projects" in l for l in lst), lst
assert st and all(b"UIDNEXT" in s for s in st), st
ok(M.delete("Projects/2027"), "DELETE")
ok(M.delete("Projects"), "DELETE parent")
ok(M.delete("Entw&APw-rfe"), "DELETE mutf7")
typ, data = M.delete("INBOX")
assert typ == "NO", data

# APPEND with flags and date; STATUS.
msgs = []
for i in range(5):
    body = ("From: Bob <bob@example.org>\r\nTo: alice@example.test\r\nSubject: Test number %d caf=?utf-8?q?=C3=A9?=\r\n"
            "Date: Mon, 5 Jan 2026 10:00:00 +0000\r\nMessage-ID: <m%d@example.org>\r\n"
            "Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            "Hello quick brown fox %d\r\n--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAw==\r\n--XX--\r\n" % (i, i, i))
    msgs.append(body.encode())
    data = ok(M.append("INBOX", "(\\Flagged $Work)" if i == 0 else None, '"02-Jan-2026 10:00:00 +0100"', body.encode()), "APPEND")
    assert b"APPENDUID" in data[0], data
status = ok(M.status("INBOX", "(MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN SIZE)"), "STATUS")[0]
assert b"MESSAGES 5" in status and b"UNSEEN 5" in status and b"UIDNEXT 6" in status, status

# SELECT and FETCH.
data = ok(M.select("INBOX"), "SELECT")
assert data[0] == b"5", data
assert M.untagged_responses.get("RECENT") == [b"5"] or True
flags = M.untagged_responses.get("FLAGS")[0]
assert b"$Work" in flags, flags
data = ok(M.fetch("1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE)"), "FETCH")
assert len(data) == 5 and b"$Work" in data[0] and b"02-Jan-2026 10:00:00 +0100" in data[0], data
data = ok(M.fetch("1", "(ENVELOPE BODYSTRUCTURE)"), "FETCH ENVELOPE")[0]
assert b'("Bob" NIL "bob" "example.org")' in data and b'"mixed"' in data, data
data = ok(M.fetch("2", "(BODY.PEEK[HEADER.FIELDS (Subject)] BODY.PEEK[1] BODY.PEEK[2.MIME] BINARY.PEEK[2] BINARY.SIZE[2] BODY.PEEK[]<0.10>)"), "FETCH sections")
flat = b"".join(x if isinstance(x, bytes) else b"".join(x) for x in data)
assert b"Subject: Test number 1" in flat and b"Hello quick brown fox 1" in flat, flat
assert b"\x00\x01\x02\x03" in flat and b"BINARY.SIZE[2] 4" in flat, flat
assert b"From: Bob " in flat, flat
data = ok(M.fetch("3", "(RFC822.HEADER RFC822.TEXT)"), "FETCH RFC822.*")
data = ok(M.fetch("3", "(FLAGS)"), "FETCH flags after TEXT")
assert b"\\Seen" in data[0], data
data = ok(M.fetch("4", "(RFC822)"), "FETCH RFC822")
assert data[0][1] == msgs[3], data[0][1]
data = ok(M.uid("FETCH", "1:*", "(FLAGS)"), "UID FETCH")
assert all(b"UID" in d for d in data), data

# SEARCH: every family of keys.
def search(*crit, uid=False):
    data = ok(M.uid("SEARCH", *crit) if uid else M.search(None, *crit), "SEARCH %r" % (crit,))
    return data[0].split()
assert search("ALL") == [b"1", b"2", b"3", b"4", b"5"]
assert search("SUBJECT", '"number 2"') == [b"3"]
assert search("FROM", "bob") == [b"1", b"2", b"3", b"4", b"5"]
assert search("BODY", "\"FOX 4\"") == [b"5"]
assert search("TEXT", "m2@example") == [b"3"]
assert search("HEADER", "Message-ID", "<m1@example.org>") == [b"2"]
assert search("FLAGGED") == [b"1"] and search("KEYWORD", "$Work") == [b"1"]
assert search("SEEN") == [b"3", b"4"], search("SEEN")
assert search("UNSEEN", "NOT", "FLAGGED") == [b"2", b"5"]
assert search("OR", "1", "5") == [b"1", b"5"]
assert search("LARGER", "100", "SMALLER", "100000") == [b"1", b"2", b"3", b"4", b"5"]
assert search("SENTON", "5-Jan-2026") == [b"1", b"2", b"3", b"4", b"5"]
assert search("SINCE", "3-Jan-2026") == []
assert search("ON", "2-Jan-2026", "UID", "2:3") == [b"2", b"3"]
assert search("UID", "4:*", uid=True) == [b"4", b"5"]
typ, data = M.search("UTF-8", "SUBJECT", '"caf"')
assert typ == "OK" and data[0].split() == [b"1", b"2", b"3", b"4", b"5"], data
typ, data = M._simple_command("SEARCH", "RETURN (MIN MAX COUNT) ALL")
assert typ == "OK" and b"COUNT 5" in M.untagged_responses.pop("ESEARCH")[0]

# STORE, including an empty list and .SILENT.
data = ok(M.store("2", "+FLAGS", "(\\Answered $Label1)"), "STORE +FLAGS")
assert b"$Label1" in data[0] and b"\\Answered" in data[0], data
ok(M.store("2", "+FLAGS", "()"), "STORE empty list")
ok(M.store("2", "-FLAGS.SILENT", "(\\Answered)"), "STORE silent")
data = ok(M.uid("STORE", "2", "FLAGS", "(\\Draft)"), "UID STORE")
assert b"\\Draft" in data[0] and b"UID 2" in data[0], data

# COPY / MOVE with COPYUID; EXPUNGE / UID EXPUNGE.
typ, data = M.copy("1:2", "Archive")
assert typ == "OK" and b"COPYUID" in data[0], data
typ, data = M._simple_command("MOVE", "3", "Trash")
assert typ == "OK", data
assert M.untagged_responses.get("EXPUNGE") == [b"3"], M.untagged_responses
M.untagged_responses.pop("EXPUNGE", None)
typ, data = M.copy("1", "Nonexistent")
assert typ == "NO" and b"TRYCREATE" in data[0], data
ok(M.store("1", "+FLAGS", "(\\Deleted)"), "STORE deleted")
ok(M.store("2", "+FLAGS", "(\\Deleted)"), "STORE deleted")
typ, data = M.uid("EXPUNGE", "2")
assert typ == "OK", data
assert M.untagged_responses.pop("EXPUNGE") == [b"2"]
ok(M.expunge(), "EXPUNGE")
assert ok(M.search(None, "ALL"), "SEARCH after expunge")[0].split() == [b"1", b"2"]

# APPEND into the selected mailbox: EXISTS before the tagged OK.
M.untagged_responses.pop("EXISTS", None)
ok(M.append("INBOX", None, None, b"Subject: late\r\n\r\nlate\r\n"), "APPEND selected")
assert M.untagged_responses.get("EXISTS", [b""])[-1] == b"3", M.untagged_responses
assert search("SUBJECT", "late") == [b"3"]

# EXAMINE is read-only; UNSELECT and CLOSE.
ok(M.select("Archive", readonly=True), "EXAMINE")
typ, data = M.store("1", "+FLAGS", "(\\Seen)")
assert typ == "NO", data
ok(M._simple_command("UNSELECT"), "UNSELECT")
ok(M.select("Archive"), "SELECT Archive")
ok(M.store("1", "+FLAGS", "(\\Deleted)"), "STORE")
ok(M.close(), "CLOSE")
st = ok(M.status("Archive", "(MESSAGES)"), "STATUS Archive")[0]
assert b"MESSAGES 1" in st, st

# RENAME INBOX moves its messages and leaves INBOX empty.
ok(M.rename("INBOX", "\"Old Inbox\""), "RENAME INBOX")
assert b"MESSAGES 0" in ok(M.status("INBOX", "(MESSAGES)"), "STATUS")[0]
assert b"MESSAGES 3" in ok(M.status('"Old Inbox"', "(MESSAGES)"), "STATUS")[0]

# IDLE: a second connection appends; the first hears EXISTS.
ok(M.select("INBOX"), "SELECT")
tag = M._new_tag()
M.send(tag + b" IDLE\r\n")
assert M.readline().startswith(b"+")
M2 = connect()
ok(M2.login(user, password), "LOGIN")
ok(M2.append("INBOX", None, None, b"Subject: pushed\r\n\r\nx\r\n"), "APPEND other")
line = M.readline()
assert line == b"* 1 EXISTS\r\n", line
M.send(b"DONE\r\n")
while True:
    line = M.readline()
    if line.startswith(tag):
        assert b"OK" in line, line
        break
assert M2.logout()[0] == "BYE"
typ, data = M.logout()
assert typ == "BYE", (typ, data)
print("ALL OK")
