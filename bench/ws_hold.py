#!/usr/bin/env python3
"""Opens N idle WebSockets to ws://HOST:PORT/ws (raw HTTP/1.1 upgrade, standard library
only), holds them until stdin closes or HOLD seconds pass, then closes them all.

Prints "READY <opened> <failed>" once all handshakes are done, so the caller can sample
memory while the sockets are held. Usage: ws_hold.py HOST PORT N HOLD_SECONDS
"""
import base64, os, resource, selectors, socket, sys, time

host, port, n, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = n + 1024
if soft < want:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard != resource.RLIM_INFINITY else want, hard))

BATCH = 200  # handshakes in flight at once
socks, failed = [], 0
sel = selectors.DefaultSelector()

def request():
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n").encode()

started = time.time()
todo = n
pending = {}
while todo or pending:
    while todo and len(pending) < BATCH:
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(request())
        s.setblocking(False)
        pending[s] = b""
        sel.register(s, selectors.EVENT_READ)
        todo -= 1
    for key, _ in sel.select(timeout=10):
        s = key.fileobj
        try:
            data = s.recv(4096)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        buf = pending[s] + data
        if not data or b"\r\n\r\n" in buf:
            sel.unregister(s)
            del pending[s]
            if data and buf.startswith(b"HTTP/1.1 101"):
                socks.append(s)
            else:
                failed += 1
                s.close()
        else:
            pending[s] = buf
    if time.time() - started > 120:
        failed += len(pending) + todo
        break

print(f"READY {len(socks)} {failed} {time.time() - started:.1f}s", flush=True)
sel2 = selectors.DefaultSelector()
sel2.register(sys.stdin, selectors.EVENT_READ)
sel2.select(timeout=hold)
for s in socks:
    s.close()
print("CLOSED", flush=True)
