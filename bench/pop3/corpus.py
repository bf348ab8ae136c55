#!/usr/bin/env python3
"""Writes a deterministic corpus of N RFC 5322 messages (CRLF) as DIR/00001.eml ...

Sizes follow a log-normal distribution (median about 6 KiB, capped at 1 MiB), a fifth of the
messages carry a base64 attachment, and about one body line in forty starts with a dot, so
byte-stuffing is exercised. Same seed, same bytes, every run.
"""

import base64
import os
import random
import sys

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when if "
    "so no will more what up out who them some could about into than then these only other "
    "mail server message retrieval benchmark tessera dovecot pop3 maildrop octets protocol"
).split()


def text_lines(rng, size):
    out, total = [], 0
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 13)))
        if rng.random() < 0.025:
            line = "." + line
        out.append(line)
        total += len(line) + 2
    return out


def message(rng, i, size):
    headers = [
        f"Return-Path: <sender{i % 37}@example.net>",
        f"From: Sender {i % 37} <sender{i % 37}@example.net>",
        "To: user@bench.test",
        f"Subject: benchmark message {i} " + " ".join(rng.choice(WORDS) for _ in range(4)),
        f"Date: Mon, 1 Jan 2024 {i % 24:02d}:{i % 60:02d}:00 +0000",
        f"Message-ID: <bench-{i}@example.net>",
        "MIME-Version: 1.0",
    ]
    if rng.random() < 0.2:
        boundary = f"=_bench_{i}"
        text = text_lines(rng, min(size // 4, 4000))
        blob = rng.randbytes(max(size - 4000, 256) * 3 // 4)
        encoded = base64.b64encode(blob).decode()
        b64_lines = [encoded[j:j + 76] for j in range(0, len(encoded), 76)]
        body = (
            [f"--{boundary}", "Content-Type: text/plain; charset=us-ascii", ""]
            + text
            + [f"--{boundary}", "Content-Type: application/octet-stream",
               "Content-Transfer-Encoding: base64",
               f'Content-Disposition: attachment; filename="file{i}.bin"', ""]
            + b64_lines
            + [f"--{boundary}--"]
        )
        headers.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
    else:
        headers.append("Content-Type: text/plain; charset=us-ascii")
        body = text_lines(rng, size)
    return ("\r\n".join(headers + [""] + body) + "\r\n").encode()


def main():
    directory, count = sys.argv[1], int(sys.argv[2])
    os.makedirs(directory, exist_ok=True)
    rng = random.Random(1939)
    total = 0
    for i in range(1, count + 1):
        size = int(min(max(rng.lognormvariate(8.7, 1.0), 400), 1 << 20))
        data = message(rng, i, size)
        total += len(data)
        with open(os.path.join(directory, f"{i:05d}.eml"), "wb") as f:
            f.write(data)
    print(f"corpus: {count} messages, {total} octets ({total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
