"""Clients for outbound_e2e.rs: submission with STARTTLS, and IMAP reading an INBOX.

Usage:
  outbound_clients.py submit CA HOSTNAME IP PORT USER PASSWORD FROM TO MESSAGE_FILE
  outbound_clients.py fetch CA HOSTNAME IP PORT USER PASSWORD OUT_DIR

`submit` sends MESSAGE_FILE (bytes as they are) over STARTTLS, verifying HOSTNAME's
certificate against CA. `fetch` logs in over IMAP STARTTLS and writes every INBOX message
to OUT_DIR/N.eml (byte-exact RFC822), printing the count. Exits non-zero on failure.
"""
import imaplib
import os
import smtplib
import ssl
import sys

mode, ca, host, ip, port, user, password = sys.argv[1:8]
port = int(port)
ctx = ssl.create_default_context(cafile=ca)

if mode == "submit":
    sender, rcpt, path = sys.argv[8:11]
    with open(path, "rb") as f:
        message = f.read()
    s = smtplib.SMTP(ip, port, local_hostname="alice-laptop", timeout=30)
    s._host = host  # smtplib uses it as SNI and for the host-name check
    s.ehlo()
    s.starttls(context=ctx)
    s.ehlo()
    s.login(user, password)
    refused = s.sendmail(sender, [rcpt], message)
    if refused:
        print("refused:", refused, file=sys.stderr)
        sys.exit(1)
    s.quit()
    print("submitted")
elif mode == "fetch":
    out = sys.argv[8]
    m = imaplib.IMAP4(ip, port, timeout=30)
    m.host = host  # imaplib passes it as server_hostname
    m.starttls(ssl_context=ctx)
    m.login(user, password)
    typ, data = m.select("INBOX", readonly=True)
    assert typ == "OK", data
    typ, data = m.uid("SEARCH", None, "ALL")
    assert typ == "OK", data
    uids = data[0].split()
    for i, uid in enumerate(uids, 1):
        typ, parts = m.uid("FETCH", uid, "(BODY.PEEK[])")
        assert typ == "OK", parts
        with open(os.path.join(out, f"{i}.eml"), "wb") as f:
            f.write(parts[0][1])
    m.logout()
    print(len(uids))
else:
    sys.exit(f"unknown mode {mode}")
