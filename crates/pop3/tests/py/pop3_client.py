#!/usr/bin/env python3
"""Drives a POP3 server with Python's stdlib poplib and prints what it saw as JSON.

The Rust end-to-end tests run this and make the assertions; this script only plays the
client. Modes: `stls` (plain connection upgraded with STLS, RFC 2595) and `ssl` (implicit TLS,
POP3_SSL). Certificates are verified against --ca with --servername as the expected host name.
"""

import argparse
import base64
import json
import poplib
import ssl
import sys


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class POP3SSLNamed(poplib.POP3_SSL):
    """POP3_SSL that verifies the certificate against a given name, not the IP connected to."""

    servername = None

    def _create_socket(self, timeout):
        sock = poplib.POP3._create_socket(self, timeout)
        return self.context.wrap_socket(sock, server_hostname=self.servername)


def error_text(call):
    """Runs `call`, which must fail with a POP3 -ERR; returns the server's text."""
    try:
        call()
    except poplib.error_proto as err:
        return err.args[0].decode("utf-8", "replace") if isinstance(err.args[0], bytes) else str(err)
    raise SystemExit("expected -ERR, got +OK")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=["stls", "ssl"], required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--servername", default="mail.example.test")
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--auth", choices=["user", "plain"], default="user")
    ap.add_argument("--delete", default="", help="comma-separated message numbers, or 'all'")
    ap.add_argument("--top", type=int, default=None, help="also run TOP n <this> on each message")
    ap.add_argument("--pre-stls-login", action="store_true",
                    help="stls mode: try USER and PASS before STLS and record the errors")
    args = ap.parse_args()

    context = ssl.create_default_context(cafile=args.ca)
    out = {}
    if args.mode == "ssl":
        POP3SSLNamed.servername = args.servername
        p = POP3SSLNamed(args.host, args.port, context=context, timeout=10)
    else:
        p = poplib.POP3(args.host, args.port, timeout=10)
        out["capa_before_tls"] = sorted(p.capa().keys())
        if args.pre_stls_login:
            out["user_before_tls"] = error_text(lambda: p.user(args.user))
            out["pass_before_tls"] = error_text(lambda: p.pass_(args.password))
        # poplib verifies against self.host; the certificate names the mail host, not the IP.
        p.host = args.servername
        out["stls"] = p.stls(context).decode()
    out["welcome"] = p.getwelcome().decode()
    out["capa"] = sorted(k + (" " + " ".join(v) if v else "") for k, v in p.capa().items())

    if args.auth == "user":
        p.user(args.user)
        out["login"] = p.pass_(args.password).decode()
    else:
        token = base64.b64encode(b"\0" + args.user.encode() + b"\0" + args.password.encode())
        out["login"] = p._shortcmd("AUTH PLAIN " + token.decode()).decode()

    out["stat"] = list(p.stat())
    _, listing, _ = p.list()
    out["list"] = [[int(x) for x in line.split()] for line in listing]
    _, uidls, _ = p.uidl()
    out["uidl"] = [[int(n), uid.decode()] for n, uid in (line.split() for line in uidls)]

    out["messages"] = {}
    out["top"] = {}
    for n, _size in out["list"]:
        resp, lines, octets = p.retr(n)
        # poplib strips line endings and un-stuffs; the stored messages use CRLF throughout.
        out["messages"][str(n)] = b64(b"".join(line + b"\r\n" for line in lines))
        if args.top is not None:
            _, lines, _ = p.top(n, args.top)
            out["top"][str(n)] = b64(b"".join(line + b"\r\n" for line in lines))

    if args.delete == "all":
        to_delete = [n for n, _ in out["list"]]
    else:
        to_delete = [int(n) for n in args.delete.split(",") if n]
    out["deleted"] = [p.dele(n).decode() for n in to_delete]
    out["quit"] = p.quit().decode()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
