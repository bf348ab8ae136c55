"""A minimal authoritative DNS server for tests: answers every query with NXDOMAIN.

Usage: nxdns.py PORTFILE — binds UDP 127.0.0.1:0, writes the port to PORTFILE, serves
until killed. Tessera's sender checks (SPF, DKIM, DMARC, iprev) then see "no records"
quickly instead of waiting on a resolver the test machine does not have.
"""
import socket
import struct
import sys

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
with open(sys.argv[1], "w") as f:
    f.write(str(sock.getsockname()[1]))
while True:
    data, peer = sock.recvfrom(4096)
    if len(data) < 12:
        continue
    ident, flags, qd = struct.unpack("!HHH", data[:6])
    # Echo the question section; QR=1, opcode copied, AA=1, RD copied, RA=1, RCODE=3.
    end = 12
    while end < len(data) and data[end] != 0:
        end += data[end] + 1
    question = data[12:end + 5]
    rflags = 0x8000 | (flags & 0x7900) | 0x0400 | 0x0080 | 3
    sock.sendto(struct.pack("!HHHHHH", ident, rflags, 1 if qd else 0, 0, 0, 0) + question, peer)
