#!/usr/bin/env bash
# System calls per proxied request, counted by `strace -c -f`: cutover, the bare hyper floor,
# nginx and HAProxy, one worker each, in front of the same static upstream (nginx serving the
# body from memory), under the same light load (wrk -t1 -c8). Like bench/instructions.sh it
# measures work per request rather than speed, so it holds on a busy machine — but strace
# slows the traced process several times, which lets more requests gather per `epoll_wait`
# than at full speed: compare the proxies with each other, not with an untraced run.
#
# Usage: bench/syscalls.sh            (after bench/run.sh has built the binaries)
# Knobs: BODY=16384 DURATION=5s BENCH_TARGET=/tmp/cutover-bench-target
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
T=${BENCH_TARGET:-/tmp/cutover-bench-target}
BODY=${BODY:-16384}
DURATION=${DURATION:-5s}
APP_PORT=18380 NGINX_PORT=18381 HAPROXY_PORT=18382 CUTOVER_PORT=18383 FLOOR_PORT=18384 ADMIN_PORT=18393

need=()
command -v strace >/dev/null || need+=(strace)
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin:/sbin"
for b in "$T/release/cutover" "$T/hyper-floor/release/hyper-floor"; do
  [ -x "$b" ] || { echo "missing $b: run bench/run.sh first (or set BENCH_TARGET)" >&2; exit 1; }
done

D=$(mktemp -d /tmp/cutover-sys.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$D"
}
trap cleanup EXIT
wait_200() {
  for _ in $(seq 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/")" = 200 ] && return 0
    sleep 0.2
  done
  return 1
}

# shellcheck source=bench/nginx_conf.sh
. "$ROOT/bench/nginx_conf.sh"
# shellcheck source=bench/haproxy_conf.sh
. "$ROOT/bench/haproxy_conf.sh"
head -c "$BODY" /dev/zero | tr '\0' x >"$D/body"
TMPDIR="$D" "$ROOT/bench/static_upstream.sh" $APP_PORT "$D/body" 1 >"$D/app.log" 2>&1 &
pids+=($!)
wait_200 $APP_PORT

# measure name port pid...: syscalls per request of those processes (and their threads).
measure() {
  local name=$1 port=$2; shift 2
  wait_200 "$port"
  wrk -t1 -c8 -d2s "http://127.0.0.1:$port/" >/dev/null
  local args=() p
  for p in "$@"; do args+=(-p "$p"); done
  strace -c -f -o "$D/$name.strace" "${args[@]}" 2>/dev/null &
  local s=$!
  sleep 1
  wrk -t1 -c8 -d"$DURATION" "http://127.0.0.1:$port/" >"$D/$name.wrk"
  kill -INT $s; wait $s 2>/dev/null || true
  local reqs
  reqs=$(awk '/requests in/ {print $1}' "$D/$name.wrk")
  python3 - "$name" "$reqs" "$D/$name.strace" <<'PY'
import re, sys
name, reqs, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
calls = {}
for line in open(path):
    f = line.split()
    # % time, seconds, usecs/call, calls, [errors], syscall
    if len(f) >= 5 and re.match(r"[\d.]+$", f[0]) and f[-1] != "total":
        calls[f[-1]] = int(f[3])
total = sum(calls.values())
top = ", ".join(f"{k} {v / reqs:.2f}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1])[:6])
print(f"| {name} | {total / reqs:.2f} | {top} |")
PY
}

cat >"$D/cutover.toml" <<TOML
[service]
name = "syscalls"
listen = "127.0.0.1:$CUTOVER_PORT"
state_dir = "state"
workers = 1
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[app]
command = ["$ROOT/bench/static_upstream.sh", "{port}", "$D/body", "1"]
env = { TMPDIR = "$D" }
instances = 1
[metrics]
path = ""
[log]
level = "warn"
TOML
nginx_conf "$D/nginx" 1 $NGINX_PORT $APP_PORT 1024 off
haproxy_conf "$D/haproxy.cfg" 1 $HAPROXY_PORT $APP_PORT

rev=$(cat "$T/.bench-revision" 2>/dev/null || echo unknown)
echo "body $BODY B, revision ${rev:0:10}, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| proxy (1 worker) | syscalls per request | the most frequent, per request |"
echo "|---|---:|---|"
# cutover's upstream is its own instance of the same static nginx; only cutover is traced.
"$T/release/cutover" run -c "$D/cutover.toml" >"$D/cutover.log" 2>&1 &
cp=$!; pids+=($cp)
for _ in $(seq 100); do "$T/release/cutover" -c "$D/cutover.toml" deploy v1 >/dev/null 2>&1 && break; sleep 0.2; done
measure cutover $CUTOVER_PORT $cp
kill $cp
"$T/hyper-floor/release/hyper-floor" 127.0.0.1:$FLOOR_PORT 127.0.0.1:$APP_PORT 1 >"$D/floor.log" 2>&1 &
fp=$!; pids+=($fp)
measure floor $FLOOR_PORT $fp
nginx -c "$D/nginx/nginx.conf" -e "$D/nginx/error.log" >"$D/nginx.log" 2>&1 &
np=$!; pids+=($np)
measure nginx $NGINX_PORT $np
haproxy -db -f "$D/haproxy.cfg" >"$D/haproxy.log" 2>&1 &
hp=$!; pids+=($hp)
measure haproxy $HAPROXY_PORT $hp
