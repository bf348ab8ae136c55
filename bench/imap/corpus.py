#!/usr/bin/env python3
"""Writes N deterministic RFC 5322 messages (CRLF, about 1-3 KiB) as DIR/000001.eml ...

usage: corpus.py DIR N
Every message has a Subject with "topic-<i mod 100>" and a body of words; one in 1,000
carries the marker word "needle" in the Subject header and one in 1,000 (others) in the body,
so header and body SEARCH have a small, known result.
"""
import os
import random
import sys

WORDS = ("the of and to in is that for it as was with be by on not this are or from at which "
         "but have an they you were there been one all we their has would when if so no will "
         "mail server message benchmark tessera dovecot imap mailbox folder flags search").split()


def main():
    out, n = sys.argv[1], int(sys.argv[2])
    os.makedirs(out, exist_ok=True)
    rng = random.Random(7162)
    for i in range(1, n + 1):
        subject = "topic-%d %s" % (i % 100, " ".join(rng.choice(WORDS) for _ in range(5)))
        if i % 1000 == 17:
            subject += " needle"
        lines = []
        for _ in range(rng.randint(10, 40)):
            lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12))))
        if i % 1000 == 523:
            lines.insert(len(lines) // 2, "a line with the needle in the body")
        msg = ("From: Sender %d <sender%d@example.test>\r\n"
               "To: User <user@bench.test>\r\n"
               "Subject: %s\r\n"
               "Date: Mon, 6 May 2024 10:%02d:%02d +0000\r\n"
               "Message-ID: <bench-%d@example.test>\r\n"
               "MIME-Version: 1.0\r\n"
               "Content-Type: text/plain; charset=us-ascii\r\n"
               "\r\n%s\r\n") % (i % 50, i % 50, subject, (i // 60) % 60, i % 60, i, "\r\n".join(lines))
        with open(os.path.join(out, "%06d.eml" % i), "wb") as f:
            f.write(msg.encode())


main()
