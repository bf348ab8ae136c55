"""A scripted remote SMTP server for the SIGKILL-mid-delivery test (outbound_e2e.rs).

Usage: slow_remote.py IP PORT DIR SLEEP_SECS

Listens on IP:PORT. Every message is committed (written to DIR/msg-N.eml) as soon as its
final "." arrives, the way a real MTA writes its queue file before replying. On the first
message only it then sleeps SLEEP_SECS before replying 250, so the test can SIGKILL the
sender meanwhile. DIR/events.log gets one line per step: "ready", "data N" (message N
committed), "reply N ok" / "reply N failed: ..." (whether the 250 reached the peer).
Serves until killed. No PIPELINING, no STARTTLS: one command at a time.
"""
import asyncio
import os
import sys

ip, port, out, sleep_secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
count = 0


def event(line):
    with open(os.path.join(out, "events.log"), "a") as f:
        f.write(line + "\n")
        f.flush()


async def session(reader, writer):
    global count

    async def reply(text):
        writer.write(text.encode() + b"\r\n")
        await writer.drain()

    try:
        await reply("220 remote.test ESMTP scripted")
        while True:
            line = await reader.readline()
            if not line:
                return
            verb = line.decode("latin-1").strip().split(" ", 1)[0].upper()
            if verb == "EHLO":
                await reply("250-remote.test\r\n250-8BITMIME\r\n250 SIZE 10000000")
            elif verb == "HELO":
                await reply("250 remote.test")
            elif verb in ("MAIL", "RCPT", "RSET", "NOOP"):
                await reply("250 2.0.0 ok")
            elif verb == "QUIT":
                await reply("221 2.0.0 bye")
                return
            elif verb == "DATA":
                await reply("354 go ahead")
                data = bytearray()
                while True:
                    l = await reader.readline()
                    if not l:
                        return  # connection lost before the end of data: nothing committed
                    if l == b".\r\n":
                        break
                    if l.startswith(b"."):
                        l = l[1:]  # RFC 5321 §4.5.2
                    data += l
                count += 1
                n = count
                with open(os.path.join(out, f"msg-{n}.eml"), "wb") as f:
                    f.write(data)
                event(f"data {n}")
                if n == 1:
                    await asyncio.sleep(sleep_secs)
                try:
                    await reply(f"250 2.0.0 queued as {n}")
                    event(f"reply {n} ok")
                except Exception as e:  # the sender is gone
                    event(f"reply {n} failed: {e!r}")
                    return
            else:
                await reply("502 5.5.1 not implemented")
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(session, ip, port)
    event("ready")
    async with server:
        await server.serve_forever()


asyncio.run(main())
