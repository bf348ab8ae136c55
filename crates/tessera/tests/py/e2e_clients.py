"""End to end through `tessera serve` with Python's standard clients.

Usage: e2e_clients.py CA SMTP SUBMISSION SUBMISSIONS IMAP IMAPS POP3 POP3S HTTP HTTPS
(ports on 127.0.0.1). Users alice@example.org and bob@example.org exist with the
passwords 'alice password' and 'bob password'. Exits non-zero on the first failure.
"""
import imaplib
import poplib
import smtplib
import socket
import ssl
import sys
import urllib.request
import uuid
import xml.etree.ElementTree as ET

ca, smtp, sub, subs, imap, imaps, pop3, pop3s, http, https = sys.argv[1], *map(int, sys.argv[2:11])
HOST = "mail.example.org"
ctx = ssl.create_default_context(cafile=ca)  # verifies chain and host name


def check(cond, what):
    if not cond:
        print("FAILED:", what, file=sys.stderr)
        sys.exit(1)
    print("ok:", what)


class SMTPS(smtplib.SMTP_SSL):
    def _get_socket(self, host, port, timeout):
        return ctx.wrap_socket(socket.create_connection((host, port), timeout), server_hostname=HOST)


class SMTPStarttls(smtplib.SMTP):
    def starttls_host(self):
        # smtplib uses self._host as SNI; connect by address, verify the mail host name.
        self._host = HOST
        return self.starttls(context=ctx)


class IMAPS(imaplib.IMAP4_SSL):
    def _create_socket(self, timeout):
        return ctx.wrap_socket(socket.create_connection((self.host, self.port), timeout), server_hostname=HOST)


class IMAPStarttls(imaplib.IMAP4):
    def starttls_host(self):
        # imaplib passes self.host as server_hostname.
        self.host = HOST
        return self.starttls(ssl_context=ctx)


class POP3S(poplib.POP3_SSL):
    def _create_socket(self, timeout):
        return ctx.wrap_socket(socket.create_connection((self.host, self.port), timeout), server_hostname=HOST)


tag = uuid.uuid4().hex
# 1. Incoming mail (MX, port 25) for alice, over STARTTLS.
mx = SMTPStarttls("127.0.0.1", smtp, local_hostname="sender.example.net", timeout=30)
mx.ehlo()
check("starttls" in mx.esmtp_features and "auth" not in mx.esmtp_features, "MX offers STARTTLS, no AUTH")
mx.starttls_host()
mx.ehlo()
incoming = f"From: Someone <someone@sender.example.net>\r\nTo: alice@example.org\r\nSubject: incoming {tag}\r\nMessage-ID: <{tag}@sender.example.net>\r\n\r\nHello Alice,\r\n.leading dot line\r\n".encode()
refused = mx.sendmail("someone@sender.example.net", ["alice@example.org"], incoming)
check(refused == {}, "MX accepted mail for alice")
try:
    mx.sendmail("someone@sender.example.net", ["victim@elsewhere.example"], incoming)
    check(False, "MX refuses relaying")
except smtplib.SMTPRecipientsRefused as e:
    code = e.recipients["victim@elsewhere.example"][0]
    check(code == 550, "MX refuses relaying with 550")
mx.quit()

# 2. Submission on 587 (STARTTLS + AUTH LOGIN) from alice to bob.
s = SMTPStarttls("127.0.0.1", sub, local_hostname="alice-laptop", timeout=30)
s.ehlo()
check("auth" not in s.esmtp_features, "submission hides AUTH before TLS")
s.starttls_host()
s.ehlo()
s.login("alice@example.org", "alice password")
note = f"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: note {tag}\r\n\r\nHi Bob.\r\n".encode()
check(s.sendmail("alice@example.org", ["bob@example.org"], note) == {}, "submission 587 delivered to bob")
outbound = f"From: alice@example.org\r\nTo: carol@remote.example\r\nSubject: out {tag}\r\n\r\nHi Carol.\r\n".encode()
check(s.sendmail("alice@example.org", ["carol@remote.example"], outbound) == {}, "submission queued mail for a remote domain")
try:
    s.sendmail("mallory@example.org", ["bob@example.org"], note)
    check(False, "submission refuses a foreign sender")
except smtplib.SMTPSenderRefused as e:
    check(e.smtp_code == 553, "submission refuses a foreign envelope sender with 553")
s.quit()

# 3. Submission on 465 (implicit TLS + AUTH PLAIN) from bob to alice.
s = SMTPS("127.0.0.1", subs, local_hostname="bob-phone", timeout=30)
s.ehlo()
s.login("bob@example.org", "bob password")
reply = f"From: bob@example.org\r\nTo: alice@example.org\r\nSubject: reply {tag}\r\n\r\nHi Alice.\r\n".encode()
check(s.sendmail("bob@example.org", ["alice@example.org"], reply) == {}, "submission 465 delivered to alice")
s.quit()

# 4. Bob reads his mail over IMAP 143 with STARTTLS: the body is byte-exact.
m = IMAPStarttls("127.0.0.1", imap, timeout=30)
check("LOGINDISABLED" in m.capabilities, "IMAP 143 advertises LOGINDISABLED before TLS")
m.starttls_host()
m.login("bob@example.org", "bob password")
typ, data = m.select("INBOX")
check(typ == "OK" and int(data[0]) == 1, "bob's INBOX holds one message")
typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[TEXT] BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
parts = [p for p in data if isinstance(p, tuple)]
check(any(p[1] == b"Hi Bob.\r\n" for p in parts), "IMAP body byte-exact")
check(any(f"note {tag}".encode() in p[1] for p in parts), "IMAP subject")
m.logout()

# 5. Alice reads over IMAPS: two messages, with the trace headers added on receipt.
m = IMAPS("127.0.0.1", imaps, timeout=30)
m.login("alice@example.org", "alice password")
typ, data = m.select("INBOX")
check(int(data[0]) == 2, "alice's INBOX holds two messages")
typ, data = m.fetch("1", "(BODY.PEEK[])")
raw = data[0][1]
check(raw.endswith(incoming), "MX message stored byte-exact after the added headers")
check(b"Received: from sender.example.net" in raw and b"Authentication-Results:" in raw, "Received and Authentication-Results added")
m.logout()

# 6. Alice fetches and deletes over POP3 (110 with STLS), and IMAP sees the expunge.
p = poplib.POP3("127.0.0.1", pop3, timeout=30)
try:
    p.user("alice@example.org")
    check(False, "POP3 refuses USER before STLS")
except poplib.error_proto:
    pass
p.host = HOST  # poplib verifies self.host after STLS
p.stls(context=ctx)
p.user("alice@example.org")
p.pass_("alice password")
check(p.stat()[0] == 2, "POP3 over STLS sees two messages")
p.quit()
# An IMAP session stays open on alice's INBOX while POP3 deletes.
watcher = IMAPS("127.0.0.1", imaps, timeout=30)
watcher.login("alice@example.org", "alice password")
typ, data = watcher.select("INBOX")
check(int(data[0]) == 2, "IMAP session open on alice's INBOX during POP3")
p = POP3S("127.0.0.1", pop3s, timeout=30)
p.user("alice@example.org")
p.pass_("alice password")
count, size = p.stat()
check(count == 2, "POP3 maildrop has two messages")
resp, lines, octets = p.retr(1)
check(b"\r\n".join(lines) + b"\r\n" == raw, "POP3 RETR byte-exact with IMAP")
p.dele(1)
p.dele(2)
p.quit()
watcher.noop()
expunged = watcher.untagged_responses.get("EXPUNGE", [])
check(len(expunged) == 2, f"the open IMAP session sees both POP3 deletions as EXPUNGE ({expunged})")
watcher.logout()
m = IMAPS("127.0.0.1", imaps, timeout=30)
m.login("alice", "alice password")  # bare local part: unique across domains
typ, data = m.select("INBOX")
check(int(data[0]) == 0, "POP3 deletions are expunged for IMAP")
m.logout()

# 7. Wrong passwords are refused everywhere.
try:
    IMAPS("127.0.0.1", imaps, timeout=30).login("alice@example.org", "wrong")
    check(False, "IMAP refuses a wrong password")
except imaplib.IMAP4.error:
    print("ok: IMAP refuses a wrong password")
# 8. Autoconfig over HTTPS (SNI autoconfig.example.org, verified against the CA) advertises
# the ports this server really listens on.
conn = socket.create_connection(("127.0.0.1", https), 30)
tls = ctx.wrap_socket(conn, server_hostname="autoconfig.example.org")
tls.sendall(b"GET /mail/config-v1.1.xml?emailaddress=alice@example.org HTTP/1.1\r\nHost: autoconfig.example.org\r\nConnection: close\r\n\r\n")
response = b""
while chunk := tls.recv(65536):
    response += chunk
head, _, body = response.partition(b"\r\n\r\n")
check(head.startswith(b"HTTP/1.1 200"), "autoconfig answers over HTTPS")
doc = ET.fromstring(body)
servers = [(s.get("type"), int(s.findtext("port"))) for s in doc.iter() if s.tag in ("incomingServer", "outgoingServer")]
check(("imap", imaps) in servers and ("smtp", subs) in servers, "autoconfig advertises the configured ports")
print("all end-to-end checks passed")
