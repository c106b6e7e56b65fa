#!/usr/bin/env python3
"""An order client written with Python's `websockets` and its defaults (it offers
permessage-deflate), asking for the `orders.v1` subprotocol.

    ws_orders_client.py URL NAME [--rate PER_SECOND]

Places orders `{"id": "NAME-<n>"}` at `--rate` on a WebSocket to URL (`{name}` in it is
replaced by NAME, e.g. for a sticky query parameter). Whenever the socket
ends it reconnects and first resends every order not acked yet, in order. On stdout, one
line per event, for the test that runs it:

    open <Sec-WebSocket-Extensions or -> | <subprotocol>
    ack <id> <version>        the first ack of an order
    dup <id>                  an order acked again
    close <code>              how a session ended (1006: no close frame)
    done <json>               after `stop` on stdin: {"sent": n, "unacked": [...]}

`stop` (or the end of stdin) ends new orders; the client then keeps reconnecting and resending
until every order is acked, for at most 30 s.
"""

import argparse
import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def run(args):
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    unacked = {}  # id -> message, in insertion (sequence) order
    acked = set()
    sent = 0

    async def watch_stdin():
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line or line.strip() == b"stop":
                stopping.set()
                return

    asyncio.create_task(watch_stdin())

    async def session():
        nonlocal sent
        async with connect(args.url.replace("{name}", args.name), subprotocols=["orders.v1"], open_timeout=5) as ws:
            ext = ws.response.headers.get("Sec-WebSocket-Extensions", "-")
            say(f"open {ext} | {ws.subprotocol}")

            async def receive():
                async for message in ws:
                    reply = json.loads(message)
                    order_id = reply.get("id")
                    if "version" not in reply:
                        continue
                    if order_id in acked:
                        say(f"dup {order_id}")
                    else:
                        acked.add(order_id)
                        unacked.pop(order_id, None)
                        say(f"ack {order_id} {reply['version']}")

            receiver = asyncio.create_task(receive())
            try:
                for message in list(unacked.values()):
                    await ws.send(message)
                while not receiver.done():
                    if stopping.is_set():
                        if not unacked:
                            await ws.close()
                            break
                    else:
                        sent += 1
                        order_id = f"{args.name}-{sent}"
                        message = json.dumps({"id": order_id})
                        unacked[order_id] = message
                        await ws.send(message)
                    await asyncio.sleep(1 / args.rate)
            except ConnectionClosed:
                pass
            try:
                await receiver
            except ConnectionClosed:
                pass
        return ws.close_code

    deadline = None
    while True:
        try:
            code = await session()
            say(f"close {code if code is not None else 1006}")
        except (OSError, asyncio.TimeoutError, ConnectionClosed) as e:
            say(f"connect-failed {type(e).__name__}")
        except Exception as e:  # a refused handshake (InvalidStatus): retried
            say(f"connect-failed {type(e).__name__} {e}")
        if stopping.is_set():
            deadline = deadline or loop.time() + 30
            if not unacked or loop.time() > deadline:
                break
        await asyncio.sleep(0.05)
    say("done " + json.dumps({"sent": sent, "unacked": list(unacked)}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("name")
    p.add_argument("--rate", type=float, default=20.0)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
