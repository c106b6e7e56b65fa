#!/usr/bin/env bash
# Flat CPU profile of cutover's proxy under the benchmark load (needs `perf`; apt-get install
# linux-perf). Assumes bench/run.sh has built the binaries (default target dir below).
# Usage: bench/profile.sh [body_size]   -> prints the top symbols of the cutover process.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
T=${BENCH_TARGET:-/tmp/cutover-bench-target}/release
BODY=${1:-100}
D=$(mktemp -d /tmp/cutover-prof.XXXXXX)
cat >"$D/cutover.toml" <<TOML
[service]
name = "bench"
listen = "127.0.0.1:18083"
state_dir = "state"
[admin]
listen = "127.0.0.1:18093"
[app]
command = ["$T/demo-app", "--port", "{port}", "--version", "{version}", "--body-size", "$BODY"]
instances = 1
[metrics]
path = ""
[log]
level = "warn"
TOML
"$T/cutover" run -c "$D/cutover.toml" >"$D/out.log" 2>&1 &
CP=$!
trap 'kill $CP 2>/dev/null || true; sleep 1; kill -9 $CP 2>/dev/null || true; rm -rf "$D"' EXIT
for i in $(seq 100); do "$T/cutover" -c "$D/cutover.toml" deploy v1 >/dev/null 2>&1 && break; sleep 0.2; done
for i in $(seq 100); do [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18083/)" = 200 ] && break; sleep 0.1; done
wrk -t2 -c64 -d14s http://127.0.0.1:18083/ >"$D/wrk.txt" &
W=$!
sleep 3
cs0=$(awk '/ctxt_switches/ {s+=$2} END {print s}' /proc/$CP/task/*/status)
perf record -F 1999 -o "$D/perf.data" -p "$CP" -- sleep 8 2>/dev/null
cs1=$(awk '/ctxt_switches/ {s+=$2} END {print s}' /proc/$CP/task/*/status)
echo "context switches of cutover in 8 s: $((cs1 - cs0))"
wait $W
grep -E "Requests/sec" "$D/wrk.txt"
perf report -i "$D/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -v "^#" | grep -v "^$" | head -8
perf report -i "$D/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null | grep -v "^#" | grep -v "^$" | head -${TOP:-45}
