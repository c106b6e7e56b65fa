#!/usr/bin/env python3
"""An order service written with Python's `websockets`, as users write them: a real app that
negotiates permessage-deflate (the library's default) and the `orders.v1` subprotocol.

    ws_orders.py --port PORT --version VERSION [--state-dir DIR] [--order-delay SECONDS]

- `GET /ready`, `GET /live`: 200 (cutover's probes); `GET /version`: the version.
- `GET /orders` (WebSocket, subprotocol `orders.v1`): each text message is an order
  `{"id": "..."}`. It is executed after `--order-delay` seconds, then acked with
  `{"id": ..., "version": ...}`. Executing appends `<id> <version>` to
  `<state-dir>/executed.log`. An id is executed at most once per process and acked every
  time it is received.
- An order is executed only while its connection is still open: once a close frame arrived
  (cutover's 1001 at the end of a drain) the order is the app's to cancel, and it is neither
  executed nor acked — the client resends it elsewhere. Execution and ack happen in one step
  of the event loop, so an executed order's ack is written before the close reply.
- Every session is recorded as a line `<extensions> | <subprotocol>` in
  `<state-dir>/sessions.log`, so a test can check that compression was negotiated through
  cutover.
- Prints `listening <port>` once it accepts connections (`--port 0` picks a free port).
- SIGTERM stops the server.
"""

import argparse
import asyncio
import http
import json
import os
import signal

from websockets.asyncio.server import serve
from websockets.protocol import State


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--state-dir", default=os.environ.get("ORDERS_STATE_DIR"))
    p.add_argument("--order-delay", type=float, default=0.02)
    args = p.parse_args()
    asyncio.run(run(args))


async def run(args):
    state_dir = args.state_dir or "."
    os.makedirs(state_dir, exist_ok=True)
    executed_log = open(os.path.join(state_dir, "executed.log"), "a", buffering=1)
    sessions_log = open(os.path.join(state_dir, "sessions.log"), "a", buffering=1)
    executed = set()

    def process_request(connection, request):
        path = request.path.split("?", 1)[0]
        if path in ("/ready", "/live"):
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        if path == "/version":
            return connection.respond(http.HTTPStatus.OK, f"{args.version}\n")
        if path != "/orders":
            return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
        return None

    async def execute(ws, order_id):
        await asyncio.sleep(args.order_delay)
        # No await between this check and the ack's write: an order executed here has its
        # ack on the wire before any close reply.
        if ws.state is not State.OPEN:
            return
        if order_id not in executed:
            executed.add(order_id)
            executed_log.write(f"{order_id} {args.version}\n")
        await ws.send(json.dumps({"id": order_id, "version": args.version}))

    async def handler(ws):
        ext = ws.response.headers.get("Sec-WebSocket-Extensions", "-")
        sessions_log.write(f"{ext} | {ws.subprotocol}\n")
        tasks = set()
        try:
            async for message in ws:
                try:
                    order_id = json.loads(message)["id"]
                except (ValueError, KeyError, TypeError):
                    await ws.send(json.dumps({"error": "not an order"}))
                    continue
                t = asyncio.create_task(execute(ws, order_id))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
        except Exception:
            pass
        for t in list(tasks):
            try:
                await t
            except Exception:
                pass

    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(
        handler,
        "127.0.0.1",
        args.port,
        process_request=process_request,
        subprotocols=["orders.v1"],
    ) as server:
        # With --port 0, the test that started it reads the port it got.
        port = server.sockets[0].getsockname()[1]
        print(f"listening {port}", flush=True)
        await stop


if __name__ == "__main__":
    main()
