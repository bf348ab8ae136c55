#!/usr/bin/env python3
"""Drives Tessera's SMTP server with Python's smtplib (a client nobody on the team wrote).

Prints `key: value` lines the Rust test checks:
  features-before-tls: <EHLO keywords before STARTTLS>
  features: <EHLO keywords in effect when mail is sent>
  auth: <code>
  mail: <code> / rcpt <addr>: <code> / data: <code> <text>
Exits non-zero on an unexpected exception.
"""

import argparse
import smtplib
import socket
import ssl
import sys

SNI = "mail.example.test"


class SMTPS(smtplib.SMTP_SSL):
    """SMTP_SSL that verifies the certificate for SNI while connecting to 127.0.0.1."""

    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection((host, port), timeout, self.source_address)
        return self.context.wrap_socket(sock, server_hostname=SNI)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=["plain", "starttls", "ssl"], required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--mech", choices=["PLAIN", "PLAIN-CHALLENGE", "LOGIN", "LOGIN-IR"], default="PLAIN")
    p.add_argument("--sender", required=True)
    p.add_argument("--to", action="append", required=True)
    p.add_argument("--message", required=True, help="file with the raw message (CRLF)")
    p.add_argument("--bdat", type=int, default=0, help="send by BDAT in chunks of this size")
    args = p.parse_args()

    ctx = ssl.create_default_context(cafile=args.ca)
    if args.mode == "ssl":
        s = SMTPS("127.0.0.1", args.port, local_hostname="client.sender.test", context=ctx, timeout=20)
    else:
        s = smtplib.SMTP("127.0.0.1", args.port, local_hostname="client.sender.test", timeout=20)
    s.ehlo()
    print("features-before-tls: " + " ".join(sorted(s.esmtp_features)))
    if args.mode == "starttls":
        s._host = SNI  # the name STARTTLS verifies the certificate for
        code, _ = s.starttls(context=ctx)
        print(f"starttls: {code}")
        s.ehlo()
    print("features: " + " ".join(sorted(s.esmtp_features)))
    for k in ("auth", "size"):
        if k in s.esmtp_features:
            print(f"feature-{k}: {s.esmtp_features[k].strip()}")

    if args.user:
        s.user, s.password = args.user, args.password
        try:
            if args.mech == "PLAIN":
                code, _ = s.auth("PLAIN", s.auth_plain, initial_response_ok=True)
            elif args.mech == "PLAIN-CHALLENGE":
                code, _ = s.auth("PLAIN", s.auth_plain, initial_response_ok=False)
            elif args.mech == "LOGIN-IR":
                code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=True)
            else:
                code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        except smtplib.SMTPAuthenticationError as e:
            code = e.smtp_code
        print(f"auth: {code}")
        if code != 235:
            s.quit()
            return

    with open(args.message, "rb") as f:
        message = f.read()

    code, text = s.mail(args.sender)
    print(f"mail: {code} {text.decode(errors='replace')}")
    if code != 250:
        s.quit()
        return
    accepted = 0
    for rcpt in args.to:
        code, text = s.rcpt(rcpt)
        print(f"rcpt {rcpt}: {code} {text.decode(errors='replace')}")
        accepted += code == 250
    if not accepted:
        s.quit()
        return
    if args.bdat:
        # smtplib has no BDAT: send RFC 3030 chunks by hand.
        chunks = [message[i:i + args.bdat] for i in range(0, len(message), args.bdat)] or [b""]
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            s.send(f"BDAT {len(chunk)}{' LAST' if last else ''}\r\n".encode() + chunk)
            code, text = s.getreply()
            print(f"bdat{i}: {code} {text.decode(errors='replace')}")
        print(f"data: {code} {text.decode(errors='replace')}")
    else:
        code, text = s.data(message)
        print(f"data: {code} {text.decode(errors='replace')}")
    s.quit()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # report, and fail the test
        print(f"error: {type(e).__name__}: {e}")
        sys.exit(1)
