#!/usr/bin/env bash
# Growth of the state database per minute of rollout (docs/audit.md, "Growth per minute of
# rollout"): demo-app v1 stable, v2 rolling out under RATE requests/s (default 200) for MINUTES,
# evaluated every INTERVAL over a 5 s window; then the rollout is aborted (which packs the rest
# of its recording) and the figures are printed:
#   events/min, the recording as full JSON/min (what one row per event held), as stored/min
#   (blocks and rows), and the database file's growth/min (after a WAL checkpoint).
#
#   bench/state-growth.sh 250ms 2      # interval, minutes
#   BIN=target/release bench/state-growth.sh 5s 6
#   KEEP=1 ...: keep the state dir (its path is printed), e.g. to export the recording.
set -euo pipefail
INTERVAL=${1:-5s}
MINUTES=${2:-3}
RATE=${RATE:-200}
BIN=$(cd "${BIN:-target/debug}" && pwd)
dir=$(mktemp -d)
cleanup() {
    [ -n "${load:-}" ] && kill "$load" 2>/dev/null || true
    [ -n "${run:-}" ] && kill "$run" 2>/dev/null && wait "$run" 2>/dev/null || true
    [ -n "${KEEP:-}" ] && echo "state kept in $dir" >&2 || rm -rf "$dir"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
proxy=$(port)
admin=$(port)
cat >"$dir/cutover.toml" <<EOF
[service]
name = "shop"
listen = "127.0.0.1:$proxy"
state_dir = "state"

[admin]
listen = "127.0.0.1:$admin"

[app]
command = ["$BIN/demo-app", "--port", "{port}", "--version", "{version}"]
instances = 2

[app.readiness]
path = "/ready"
interval = "200ms"

[rollout]
schedule = "double"
step_interval = "60s"              # 7 steps: still progressing after 6 minutes
interval = "$INTERVAL"
window = "5s"
min_samples = 10                 # 2 % of 200 requests/s is 20 in a window: the canary progresses
EOF
cd "$dir"
"$BIN/cutover" run -c cutover.toml >run.log 2>&1 &
run=$!
for _ in $(seq 100); do "$BIN/cutover" status >/dev/null 2>&1 && break; sleep 0.2; done
"$BIN/cutover" deploy v1 --wait >/dev/null
# RATE requests/s over 20 paced keep-alive connections, each request from a new client id (so
# the sticky hash gives the canary its weight's share).
python3 - "$proxy" "$RATE" <<'PY' &
import http.client, random, sys, threading, time
port, rate = int(sys.argv[1]), int(sys.argv[2])
clients = 20
def client(i):
    c = None
    period = clients / rate
    nxt = time.monotonic() + i * period / clients
    while True:
        time.sleep(max(0.0, nxt - time.monotonic()))
        nxt += period
        try:
            if c is None:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/", headers={"x-client-id": str(random.random())})
            c.getresponse().read()
        except Exception:
            c = None
for i in range(clients):
    threading.Thread(target=client, args=(i,), daemon=True).start()
while True:
    time.sleep(3600)
PY
load=$!
sleep 5
checkpoint() {
    python3 - state/cutover.db <<'PY'
import os, sqlite3, sys
c = sqlite3.connect(sys.argv[1]); c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
print(c.execute("PRAGMA page_count").fetchone()[0] * c.execute("PRAGMA page_size").fetchone()[0])
PY
}
before=$(checkpoint)
"$BIN/cutover" deploy v2 >/dev/null
sleep $((MINUTES * 60))
"$BIN/cutover" abort --reason "end of the measurement" >/dev/null
sleep 2
after=$(checkpoint)
python3 - state/cutover.db "$MINUTES" "$before" "$after" "$INTERVAL" <<'PY'
import json, sqlite3, sys, zlib
db, minutes, before, after, interval = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
c = sqlite3.connect(db)
rid = c.execute("SELECT MAX(id) FROM rollouts").fetchone()[0]
full = rows = 0
n = 0
# A cutover from before blocks (to measure the "before" column) has no event_blocks table.
blocks = c.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'event_blocks'").fetchone()[0]
for (data,) in c.execute("SELECT data FROM event_blocks WHERE rollout_id = ?", (rid,)) if blocks else []:
    for line in zlib.decompress(data).decode().splitlines():
        v = json.loads(line)
        full += len(json.dumps(v[2], separators=(",", ":")))
        n += 1
for (ev,) in c.execute("SELECT event_json FROM events WHERE rollout_id = ?", (rid,)):
    full += len(ev); rows += len(ev); n += 1
stored = rows + (c.execute("SELECT COALESCE(SUM(length(data)), 0) FROM event_blocks WHERE rollout_id = ?", (rid,)).fetchone()[0] if blocks else 0)
decisions = c.execute("SELECT COUNT(*) FROM decisions WHERE rollout_id = ?", (rid,)).fetchone()[0]
print(f"interval {interval}: {n/minutes:.0f} events/min, {decisions/minutes:.1f} decisions/min; "
      f"recording as full JSON {full/minutes/1000:.1f} KB/min ({full/max(n,1):.0f} B/event), "
      f"as stored {stored/minutes/1000:.1f} KB/min ({stored/max(n,1):.0f} B/event); "
      f"database file {(after-before)/minutes/1000:.1f} KB/min")
PY
