#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: cutover against the bare hyper floor
# (bench/hyper-floor) and nginx (Debian's, configured as bench/run.sh does), under the same
# light load (wrk -t1 -c8, BODY-byte responses from demo-app, one worker each since valgrind
# runs one thread at a time); HAProxy too with HAPROXY=1. They count user space only: the
# kernel's share of a request (about three quarters of nginx's CPU time here) is not in them.
#
# Unlike requests/s on a shared 2-core machine, an instruction count barely moves from run
# to run, so it shows a change of a few percent in cutover's own per-request work that
# bench/run.sh cannot resolve. It does not see cache misses, and it counts a `rep movsb` copy
# per byte, so it is a guide to where the work is, not a second benchmark.
#
# Usage: bench/instructions.sh            (after bench/run.sh has built the binaries)
# Knobs: DURATION=15s BENCH_TARGET=/tmp/cutover-bench-target BODY=100 HAPROXY=1 TOP=25
#        (cutover's heaviest functions, inclusive, per request) KEEP=<dir> (keep the profiles)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
T=${BENCH_TARGET:-/tmp/cutover-bench-target}
DURATION=${DURATION:-15s}
BODY=${BODY:-100}
APP_PORT=18180 NGINX_PORT=18181 HAPROXY_PORT=18182 CUTOVER_PORT=18183 FLOOR_PORT=18184 ADMIN_PORT=18193

need=()
command -v valgrind >/dev/null || need+=(valgrind)
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
for b in "$T/release/cutover" "$T/release/demo-app" "$T/hyper-floor/release/hyper-floor"; do
  [ -x "$b" ] || { echo "missing $b: run bench/run.sh first (or set BENCH_TARGET)" >&2; exit 1; }
done

D=$(mktemp -d /tmp/cutover-instr.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  # KEEP=dir: keep the callgrind profiles there (callgrind_annotate them, or diff two builds').
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$D"/*.out.1 "$KEEP"/ 2>/dev/null || true; fi
  rm -rf "$D"
}
trap cleanup EXIT

"$T/release/demo-app" --port $APP_PORT --version v1 --body-size "$BODY" >"$D/app.log" 2>&1 &
pids+=($!)

# Runs `$@` under callgrind, loads it through port $1 once warm, and prints instructions per
# request; the profile is left in $D/$name.out.1.
measure() {
  local name=$1 port=$2; shift 2
  valgrind --tool=callgrind --callgrind-out-file="$D/$name.out" "$@" >"$D/$name.log" 2>&1 &
  local p=$!
  pids+=($p)
  if [ "$name" = cutover ]; then
    for _ in $(seq 200); do
      "$T/release/cutover" -c "$D/cutover.toml" deploy v1 >/dev/null 2>&1 && break
      sleep 0.5
    done
  fi
  for _ in $(seq 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/")" = 200 ] && break
    sleep 0.5
  done
  wrk -t1 -c8 -d3s "http://127.0.0.1:$port/" >/dev/null
  callgrind_control -z $p >/dev/null 2>&1
  wrk -t1 -c8 -d"$DURATION" "http://127.0.0.1:$port/" >"$D/$name.wrk"
  callgrind_control -d $p >/dev/null 2>&1
  for _ in $(seq 100); do [ -s "$D/$name.out.1" ] && break; sleep 0.2; done
  sleep 1
  kill $p 2>/dev/null || true
  local reqs total
  reqs=$(awk '/requests in/ {print $1}' "$D/$name.wrk")
  total=$(awk '/^totals:/ {print $2}' "$D/$name.out.1")
  echo $((total / reqs))
}

cat >"$D/cutover.toml" <<TOML
[service]
name = "instructions"
listen = "127.0.0.1:$CUTOVER_PORT"
state_dir = "state"
workers = 1
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[app]
command = ["$T/release/demo-app", "--port", "{port}", "--version", "{version}", "--body-size", "$BODY"]
instances = 1
start_timeout = "60s"
[metrics]
path = ""
[log]
level = "warn"
TOML

# As bench/run.sh's nginx, with one worker and no master process, in the foreground.
# shellcheck source=bench/nginx_conf.sh
. "$ROOT/bench/nginx_conf.sh"
# shellcheck source=bench/haproxy_conf.sh
. "$ROOT/bench/haproxy_conf.sh"
nginx_conf "$D/nginx" 1 $NGINX_PORT $APP_PORT 1024 off

rev=$(cat "$T/.bench-revision" 2>/dev/null || echo unknown)
haproxy=–
if [ "${HAPROXY:-0}" = 1 ]; then
  haproxy_conf "$D/haproxy.cfg" 1 $HAPROXY_PORT $APP_PORT
  haproxy=$(measure haproxy $HAPROXY_PORT "$(command -v haproxy || echo /usr/sbin/haproxy)" -db -f "$D/haproxy.cfg")
fi
cut=$(measure cutover $CUTOVER_PORT "$T/release/cutover" run -c "$D/cutover.toml")
floor=$(measure floor $FLOOR_PORT "$T/hyper-floor/release/hyper-floor" \
  127.0.0.1:$FLOOR_PORT 127.0.0.1:$APP_PORT 1)
nginx=$(measure nginx $NGINX_PORT "$(command -v nginx || echo /usr/sbin/nginx)" \
  -c "$D/nginx/nginx.conf" -e "$D/nginx/error.log")
echo "| revision | body | cutover instructions/request | floor | nginx | HAProxy | cutover / floor | cutover / nginx |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
echo "| \`${rev:0:7}\` | $BODY B | $cut | $floor | $nginx | $haproxy | $(python3 -c "print(f'{$cut/$floor:.2f} | {$cut/$nginx:.2f}')") |"
echo
echo "cutover's heaviest functions (inclusive instructions per request):"
reqs=$(awk '/requests in/ {print $1}' "$D/cutover.wrk")
callgrind_annotate --inclusive=yes --auto=no "$D/cutover.out.1" 2>/dev/null |
  grep -E '^ *[0-9,]+ \(' | grep -E 'cutover_' |
  python3 -c "
import re, sys
seen = set()
for line in sys.stdin:
    m = re.match(r'\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)', line)
    # 'file:function [binary]'; inlined code repeats a function under its callers' files.
    name = m.group(2).split(' [')[0].split(':', 1)[-1]
    if name in seen:
        continue
    seen.add(name)
    print(f'{int(m.group(1).replace(\",\", \"\")) / $reqs:8.0f}  {name[:110]}')
    if len(seen) >= ${TOP:-20}:
        break
"
