#!/usr/bin/env bash
# cutover vs nginx vs HAProxy vs direct, and vs a bare hyper proxy of cutover's shape (the floor,
# bench/hyper-floor): HTTP/1.1 throughput and latency with wrk, and RSS while holding 10,000
# idle WebSockets. Results: bench/results/<UTC date-time>.json. See BENCHMARKS.md; HTTP/2 and
# TLS are bench/h2.sh's.
#
# Two upstreams: `static` (nginx serving the body from memory: faster than any proxy in front
# of it, so the proxy is the bottleneck) and `demo` (demo-app, an axum service: the realistic
# one). Each proxy runs with 1 and with 2 workers (cutover `service.workers`, nginx
# `worker_processes`, HAProxy `nbthread`, the floor's worker threads).
#
# Every server of an (upstream, body size, worker count) runs at once, and the cases take
# turns: ROUNDS rounds of DURATION each, in an order that rotates every round, so that a
# neighbour's burst on this shared machine slows a round of every case instead of all of one
# case. A case's figures are the medians of its rounds.
#
# Knobs (env): ROUNDS=3 DURATION=5s WARMUP=3s CONNS=64 THREADS=2 WS_N=10000
#              UPSTREAMS="static demo" WORKERS="1 2" BODIES="100 16384 262144"
#              CASES="direct cutover hyper nginx haproxy" SKIP_BUILD=1 SKIP_WS=1 SKIP_HTTP=1
#              PIN=1 (wrk on CPU 0, upstream + proxy on CPU 1; default: no pinning)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH="$ROOT/bench"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-3s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
BODIES=${BODIES:-"100 16384 262144"}
CASES=${CASES:-"direct cutover hyper nginx haproxy"}
UPSTREAMS=${UPSTREAMS:-"static demo"}
WORKERS=${WORKERS:-"1 2"}
PIN=${PIN:-0}

APP_PORT=18080 NGINX_PORT=18081 HAPROXY_PORT=18082 CUTOVER_PORT=18083 FLOOR_PORT=18084 ADMIN_PORT=18093

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
# shellcheck source=bench/nginx_conf.sh
. "$BENCH/nginx_conf.sh"

# --- prerequisites -------------------------------------------------------------------------
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin:/sbin"
# What is measured: by default the committed revision REV (HEAD), exported with `git archive`
# and built in /tmp with its own target dir, so that a half-edited working tree (or someone
# else's build in target/) neither breaks nor skews the run. SRC=worktree builds the working
# tree in place instead (target/release).
REV=${REV:-HEAD}
if [ "${SRC:-rev}" = worktree ]; then
  SRC_DIR="$ROOT"; TARGET_DIR="$ROOT/target"; REV_ID="worktree:$(git -C "$ROOT" rev-parse --short HEAD)"
else
  REV_ID=$(git -C "$ROOT" rev-parse "$REV")
  SRC_DIR="/tmp/cutover-bench-src"; TARGET_DIR="${BENCH_TARGET:-/tmp/cutover-bench-target}"
  rm -rf "$SRC_DIR"; mkdir -p "$SRC_DIR"
  git -C "$ROOT" archive "$REV_ID" | tar -x -C "$SRC_DIR"
fi
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release ($REV_ID)"
  (cd "$SRC_DIR" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --locked -q -p cutover-cli -p demo-app)
  (cd "$SRC_DIR/bench/hyper-floor" && CARGO_TARGET_DIR="$TARGET_DIR/hyper-floor" cargo build --release --locked -q)
  echo "$REV_ID" >"$TARGET_DIR/.bench-revision"
else
  # The binaries are whatever the last build made: report that revision, not today's HEAD.
  REV_ID=$(cat "$TARGET_DIR/.bench-revision" 2>/dev/null || echo "unknown (SKIP_BUILD=1)")
fi
CUTOVER="$TARGET_DIR/release/cutover"
DEMO="$TARGET_DIR/release/demo-app"
FLOOR="$TARGET_DIR/hyper-floor/release/hyper-floor"
export BENCH_REV="$REV_ID"
[ -x "$CUTOVER" ] && [ -x "$DEMO" ] && [ -x "$FLOOR" ]

# 10k WebSockets through a proxy = 20k descriptors in the proxy.
# The hard limit may be lower than that (a container: 20000 here, not raisable without
# CAP_SYS_RESOURCE); then WS_N defaults to what fits in one proxy process: (limit - 400) / 2.
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
FD_LIMIT=$(ulimit -n)
if [ -z "${WS_N:-}" ]; then WS_N=10000; [ $((2 * WS_N + 400)) -le "$FD_LIMIT" ] || WS_N=$(((FD_LIMIT - 400) / 2)); fi
HAPROXY_MAXCONN=$(( (FD_LIMIT - 100) / 2 ))
export BENCH_FD_LIMIT=$FD_LIMIT

for port in $APP_PORT $NGINX_PORT $HAPROXY_PORT $CUTOVER_PORT $FLOOR_PORT $ADMIN_PORT; do
  if ss -Htln "sport = :$port" | grep -q .; then echo "port $port is in use (a leftover server?)" >&2; exit 1; fi
done

TMP=$(mktemp -d /tmp/cutover-bench.XXXXXX)
OUT="$TMP/cases"; mkdir -p "$OUT"
PIDS=()
# shellcheck source=bench/lib.sh
. "$BENCH/lib.sh"
trap cleanup EXIT

pin() { # pin <cpu> cmd... &: background only (exec keeps $! the server's own pid)
  local cpu=$1; shift
  if [ "$PIN" = 1 ]; then exec taskset -c "$cpu" "$@"; else exec "$@"; fi
}
pin_fg() { # pin_fg <cpu> cmd...: foreground
  local cpu=$1; shift
  if [ "$PIN" = 1 ]; then taskset -c "$cpu" "$@"; else "$@"; fi
}

# --- servers ---------------------------------------------------------------------------------
APP_PID="" APP_PIDS=""
# The peers' upstream runs in a session of its own (`setsid`), as cutover's instances do (its
# supervisor starts each in a new session, to signal its whole process group). It matters:
# with the kernel's autogroup scheduling (`/proc/sys/kernel/sched_autogroup_enabled`, on by
# default in Debian's kernels) CPU time is shared between sessions first, and an upstream in
# the benchmark's own session served the floor 20-30 % faster than the same nginx in a
# session of its own (BENCHMARKS.md, "The 2-worker gap was the benchmark's").
start_app() { # start_app body_size [upstream]: the peers' upstream on APP_PORT; sets APP_PIDS
  if [ "${2:-demo}" = static ]; then
    TMPDIR="$TMP" pin 1 setsid "$BENCH/static_upstream.sh" "$APP_PORT" "$(body_file "$1")" auto >"$TMP/app.log" 2>&1 &
  else
    pin 1 setsid "$DEMO" --port "$APP_PORT" --version v1 --body-size "$1" >"$TMP/app.log" 2>&1 &
  fi
  APP_PID=$!; PIDS+=("$APP_PID")
  wait_http "http://127.0.0.1:$APP_PORT/ready"
  APP_PIDS=$(children "$APP_PID")
}

NGINX_PIDS=()
start_nginx() { # start_nginx workers port: sets NGINX_PIDS (master first)
  local n="$TMP/nginx-$1-$2"
  nginx_conf "$n" "$1" "$2" "$APP_PORT" "$FD_LIMIT"
  pin 1 nginx -c "$n/nginx.conf" -e "$n/error.log" >"$n/out.log" 2>&1 &
  NGINX_PIDS=($!); PIDS+=("$!")
  wait_http "http://127.0.0.1:$2/"
  local w; for w in $(pgrep -P "${NGINX_PIDS[0]}"); do NGINX_PIDS+=("$w"); done
}

HAPROXY_PID=""
start_haproxy() { # start_haproxy threads
  mkdir -p "$TMP/haproxy"
  cat >"$TMP/haproxy/haproxy.cfg" <<HAP
global
  nbthread ${1:-2}
  maxconn $HAPROXY_MAXCONN
defaults
  mode http
  option http-keep-alive
  option forwardfor
  http-reuse always
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
  timeout http-keep-alive 75s
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend app
backend app
  server app1 127.0.0.1:$APP_PORT
HAP
  pin 1 haproxy -db -f "$TMP/haproxy/haproxy.cfg" >"$TMP/haproxy/out.log" 2>&1 &
  HAPROXY_PID=$!; PIDS+=("$HAPROXY_PID")
  wait_http "http://127.0.0.1:$HAPROXY_PORT/"
}

FLOOR_PID=""
start_floor() { # start_floor workers: the bare hyper proxy
  pin 1 "$FLOOR" "127.0.0.1:$FLOOR_PORT" "127.0.0.1:$APP_PORT" "${1:-2}" >"$TMP/floor.log" 2>&1 &
  FLOOR_PID=$!; PIDS+=("$FLOOR_PID")
  wait_http "http://127.0.0.1:$FLOOR_PORT/"
}

CUTOVER_PID="" CUTOVER_APP_PIDS=""
start_cutover() { # start_cutover body_size [workers] [upstream]: cutover supervises its own upstream, same binary and args
  local body=$1 workers=${2:-} upstream=${3:-demo}
  local d="$TMP/cutover-$body-$upstream-${workers:-default}"; rm -rf "$d"; mkdir -p "$d"
  local command workers_line=""
  if [ "$upstream" = static ]; then
    command="[\"$BENCH/static_upstream.sh\", \"{port}\", \"$(body_file "$body")\", \"auto\"]"
  else
    command="[\"$DEMO\", \"--port\", \"{port}\", \"--version\", \"{version}\", \"--body-size\", \"$body\"]"
  fi
  [ -z "$workers" ] || workers_line="workers = $workers"
  cat >"$d/cutover.toml" <<TOML
[service]
name = "bench"
listen = "127.0.0.1:$CUTOVER_PORT"
state_dir = "state"
$workers_line
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[app]
command = $command
env = { TMPDIR = "$TMP" }
instances = 1
start_timeout = "30s"
[metrics]
path = ""
[log]
level = "warn"
TOML
  pin 1 "$CUTOVER" run -c "$d/cutover.toml" >"$d/out.log" 2>&1 &
  CUTOVER_PID=$!; PIDS+=("$CUTOVER_PID")
  local i
  for i in $(seq 100); do
    "$CUTOVER" -c "$d/cutover.toml" deploy v1 >"$d/deploy.log" 2>&1 && break
    sleep 0.2
  done
  wait_http "http://127.0.0.1:$CUTOVER_PORT/"
  CUTOVER_APP_PIDS=$(children "$(pgrep -P "$CUTOVER_PID" | head -1)")
}

# --- one wrk case ----------------------------------------------------------------------------
run_wrk() { # run_wrk name body port "proxy pids" "upstream pids" round upstream workers: $OUT/rounds/<upstream>-<workers>-<name>-<body>-<round>.json
  local name=$1 body=$2 port=$3 ppids=$4 upids=$5 round=$6 upstream=$7 workers=$8
  local url="http://127.0.0.1:$port/" file="$OUT/rounds/$7-$8-$1-$2-$6"
  mkdir -p "$OUT/rounds"
  if [ "$round" = 1 ]; then
    log "$name ($workers workers, $upstream upstream) body=$body: warm-up $WARMUP"
    pin_fg 0 wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" "$url" >/dev/null
  fi
  local load0 p0 u0 c0 t0 load1 p1 u1 c1 t1 json
  load0=$(cut -d' ' -f1-3 /proc/loadavg)
  # shellcheck disable=SC2086
  p0=$(ticks $ppids); u0=$(ticks $upids); c0=$(csw $ppids); t0=$(date +%s.%N)
  pin_fg 0 wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$BENCH/report.lua" "$url" >"$file.txt"
  # shellcheck disable=SC2086
  p1=$(ticks $ppids); u1=$(ticks $upids); c1=$(csw $ppids); t1=$(date +%s.%N)
  load1=$(cut -d' ' -f1-3 /proc/loadavg)
  json=$(sed -n 's/^JSON //p' "$file.txt")
  python3 - "$name" "$body" "$json" "$load0" "$load1" "$((p1 - p0))" "$((u1 - u0))" "$HZ" "$t0" "$t1" \
    "$(rss_kb VmRSS $ppids)" "$((c1 - c0))" "$round" "$upstream" "$workers" >"$file.json" <<'PY'
import json, sys
name, body, js, l0, l1, pt, ut, hz, t0, t1, rss, cs, rnd, upstream, workers = sys.argv[1:]
r = json.loads(js)
wall = float(t1) - float(t0)
pcpu = int(pt) / int(hz); ucpu = int(ut) / int(hz)
r.update(case=name, body_bytes=int(body), round=int(rnd), upstream=upstream,
         workers=int(workers) or None, loadavg_before=l0, loadavg_after=l1,
         proxy_cpu_pct=round(100 * pcpu / wall, 1), upstream_cpu_pct=round(100 * ucpu / wall, 1),
         proxy_cpu_us_per_req=round(1e6 * pcpu / r["requests"], 2) if name != "direct" else None,
         upstream_cpu_us_per_req=round(1e6 * ucpu / r["requests"], 2),
         proxy_rss_kb_after=int(rss) if name != "direct" else None,
         proxy_ctx_switches_per_req=round(int(cs) / r["requests"], 3) if name != "direct" else None)
print(json.dumps(r))
PY
  log "$name ($workers w, $upstream) body=$body round $round/$ROUNDS: $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); l=r["lat_us"]; print("%.0f req/s p50 %sus p99 %sus p99.9 %sus proxy cpu %s%% (%s us/req, %s csw/req) upstream cpu %s%% errors %s load %s" % (r["rps"], l["p50"], l["p99"], l["p999"], r["proxy_cpu_pct"], r["proxy_cpu_us_per_req"], r["proxy_ctx_switches_per_req"], r["upstream_cpu_pct"], r["errors"], r["loadavg_before"]))' "$file.json")"
}

has() { [[ " $CASES " == *" $1 "* ]]; }

# Every server of an (upstream, body, workers) is up while the cases take turns (an idle one
# costs nothing). The upstream is shared by every case but cutover, which supervises its own.
declare -A PORT PPIDS UPIDS
if [ "${SKIP_HTTP:-0}" != 1 ]; then
for upstream in $UPSTREAMS; do
for body in $BODIES; do
  start_app "$body" "$upstream"
  first_workers=1
  for workers in $WORKERS; do
    active=()
    if has direct && [ $first_workers = 1 ]; then
      active+=(direct); PORT[direct]=$APP_PORT; PPIDS[direct]=""; UPIDS[direct]=$APP_PIDS
    fi
    first_workers=0
    if has nginx; then
      start_nginx "$workers" "$NGINX_PORT"; active+=(nginx)
      PORT[nginx]=$NGINX_PORT; PPIDS[nginx]="${NGINX_PIDS[*]}"; UPIDS[nginx]=$APP_PIDS
    fi
    if has haproxy; then
      start_haproxy "$workers"; active+=(haproxy)
      PORT[haproxy]=$HAPROXY_PORT; PPIDS[haproxy]=$HAPROXY_PID; UPIDS[haproxy]=$APP_PIDS
    fi
    if has hyper; then
      start_floor "$workers"; active+=(hyper)
      PORT[hyper]=$FLOOR_PORT; PPIDS[hyper]=$FLOOR_PID; UPIDS[hyper]=$APP_PIDS
    fi
    if has cutover; then
      start_cutover "$body" "$workers" "$upstream"; active+=(cutover)
      PORT[cutover]=$CUTOVER_PORT; PPIDS[cutover]=$CUTOVER_PID; UPIDS[cutover]=$CUTOVER_APP_PIDS
    fi
    n=${#active[@]}
    for round in $(seq "$ROUNDS"); do
      for k in $(seq 0 $((n - 1))); do
        c=${active[$(((k + round - 1) % n))]}
        w=$workers; [ "$c" != direct ] || w=0
        run_wrk "$c" "$body" "${PORT[$c]}" "${PPIDS[$c]}" "${UPIDS[$c]}" "$round" "$upstream" "$w"
      done
    done
    for c in "${active[@]}"; do
      [ "$c" = direct ] || stop_pid "${PPIDS[$c]%% *}"
    done
    # A case's figures: the median of its rounds, with the rounds themselves kept.
    python3 - "$OUT" "$upstream" "$body" "$workers" "${active[@]}" <<'PY'
import glob, json, statistics as st, sys
out, upstream, body, workers, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
for name in names:
    w = "0" if name == "direct" else workers
    rounds = sorted((json.load(open(f)) for f in glob.glob(f"{out}/rounds/{upstream}-{w}-{name}-{body}-*.json")),
                    key=lambda r: r["round"])
    med = lambda f: None if any(f(r) is None for r in rounds) else round(st.median(f(r) for r in rounds), 2)
    first = rounds[0]
    c = dict(first)
    c.update(
        requests=sum(r["requests"] for r in rounds), duration_s=round(sum(r["duration_s"] for r in rounds), 3),
        errors=sum(r["errors"] for r in rounds), non2xx=sum(r["non2xx"] for r in rounds),
        bytes=sum(r["bytes"] for r in rounds), rps=med(lambda r: r["rps"]),
        lat_us={**{k: med(lambda r: r["lat_us"][k]) for k in first["lat_us"]},
                "max": max(r["lat_us"]["max"] for r in rounds)},
        proxy_cpu_pct=med(lambda r: r["proxy_cpu_pct"]), upstream_cpu_pct=med(lambda r: r["upstream_cpu_pct"]),
        proxy_cpu_us_per_req=med(lambda r: r["proxy_cpu_us_per_req"]),
        upstream_cpu_us_per_req=med(lambda r: r["upstream_cpu_us_per_req"]),
        proxy_rss_kb_after=rounds[-1]["proxy_rss_kb_after"],
        proxy_ctx_switches_per_req=med(lambda r: r["proxy_ctx_switches_per_req"]),
        loadavg_after=rounds[-1]["loadavg_after"], rounds=rounds)
    del c["round"]
    json.dump(c, open(f"{out}/{upstream}-{w}-{name}-{body}.json", "w"))
PY
  done
  stop_pid "$APP_PID"
done
done
fi

# --- 10k idle WebSockets: peak RSS of each proxy, fresh process each --------------------------
ws_case() { # ws_case name port "proxy pids" upstream_pid
  local name=$1 port=$2 ppids=$3 upid=$4 base line
  base=$(rss_kb VmRSS $ppids)
  log "$name: opening $WS_N idle WebSockets"
  coproc WS { python3 "$BENCH/ws_hold.py" 127.0.0.1 "$port" "$WS_N" 120; }
  read -r line <&"${WS[0]}"
  sleep 3
  local hwm rss uhwm
  # shellcheck disable=SC2086
  hwm=$(rss_kb VmHWM $ppids); rss=$(rss_kb VmRSS $ppids); uhwm=$(rss_kb VmRSS $upid)
  log "$name: $line; proxy VmHWM ${hwm} kB (idle before: ${base} kB)"
  exec {WS[1]}>&-
  wait "$WS_PID" 2>/dev/null || true
  python3 -c 'import json,sys; a=sys.argv[1:]; n=int(a[7].split()[1]); idle=int(a[2]); hwm=int(a[3]); per=(hwm-idle)/max(n,1); print(json.dumps(dict(case=a[0], websockets=n, handshake=a[1], idle_rss_kb=idle, vmhwm_kb=hwm, vmrss_kb=int(a[4]), upstream_rss_kb=int(a[5]), processes=int(a[6]), kb_per_ws=round(per,2), vmhwm_kb_at_10k=round(idle+per*10000))))' \
    "$name" "$line" "$base" "$hwm" "$rss" "$uhwm" "$(wc -w <<<"$ppids")" "$line" >"$OUT/ws-$name.json"
}

if [ "${SKIP_WS:-0}" != 1 ]; then
  # demo-app's /ws behind every proxy, each proxy with its default worker count (2 here).
  start_app 100
  ws_case direct "$APP_PORT" "$APP_PID" "$APP_PID"; stop_pid "$APP_PID"; start_app 100
  start_nginx auto "$NGINX_PORT"; ws_case nginx "$NGINX_PORT" "${NGINX_PIDS[*]}" "$APP_PID"; stop_pid "${NGINX_PIDS[0]}"
  stop_pid "$APP_PID"; start_app 100
  start_haproxy 2; ws_case haproxy "$HAPROXY_PORT" "$HAPROXY_PID" "$APP_PID"; stop_pid "$HAPROXY_PID"
  stop_pid "$APP_PID"
  start_cutover 100; ws_case cutover "$CUTOVER_PORT" "$CUTOVER_PID" "$CUTOVER_APP_PIDS"; stop_pid "$CUTOVER_PID"
fi

# --- results ---------------------------------------------------------------------------------
mkdir -p "$BENCH/results"
RESULT="$BENCH/results/$(date -u +%Y-%m-%dT%H%M%SZ).json"
python3 - "$OUT" "$RESULT" "$DURATION" "$CONNS" "$THREADS" "$PIN" "$ROUNDS" <<'PY'
import glob, json, os, platform, re, subprocess, sys
out, result, duration, conns, threads, pin, rounds = sys.argv[1:]
def sh(c):
    r = subprocess.run(c + " 2>&1", shell=True, capture_output=True, text=True)
    return r.stdout.strip()
cpu = re.search(r"model name\s*:\s*(.*)", open("/proc/cpuinfo").read())
mem = re.search(r"MemTotal:\s*(\d+)", open("/proc/meminfo").read())
cases = [json.load(open(f)) for f in sorted(glob.glob(out + "/*.json")) if not os.path.basename(f).startswith("ws-")]
ws = [json.load(open(f)) for f in sorted(glob.glob(out + "/ws-*.json"))]
def get(case, upstream, workers, body):
    return next((c for c in cases if c["case"] == case and c["upstream"] == upstream
                 and c["workers"] == workers and c["body_bytes"] == body), None)
# "cutover/<other>@<upstream>/<workers>w/<body>": cutover over the other at the same upstream,
# worker count and body size (direct: the upstream without a proxy).
ratios = {}
for co in (c for c in cases if c["case"] == "cutover"):
    up, w, body = co["upstream"], co["workers"], co["body_bytes"]
    for other in ("nginx", "haproxy", "hyper", "direct"):
        o = get(other, up, None if other == "direct" else w, body)
        if not o: continue
        cpu = (None if o["proxy_cpu_us_per_req"] is None or co["proxy_cpu_us_per_req"] is None
               else round(co["proxy_cpu_us_per_req"] / max(o["proxy_cpu_us_per_req"], 0.01), 3))
        ratios[f"cutover/{other}@{up}/{w}w/{body}"] = {
            "rps": round(co["rps"] / o["rps"], 3),
            **{k: round(co["lat_us"][k] / max(o["lat_us"][k], 1), 3) for k in ("p50", "p99", "p999")},
            "cpu_per_req": cpu}
doc = {
    "kind": "http1",
    "machine": {"nproc": os.cpu_count(), "cpu": cpu.group(1) if cpu else None,
                "mem_kb": int(mem.group(1)) if mem else None, "kernel": platform.release(),
                "nginx": sh("nginx -v"), "haproxy": sh("haproxy -v | head -1"),
                "wrk": sh("wrk -v | head -1"), "rustc": sh("rustc --version"),
                "sched_autogroup": sh("cat /proc/sys/kernel/sched_autogroup_enabled")},
    "revision": os.environ.get("BENCH_REV"),
    "fd_limit": int(os.environ.get("BENCH_FD_LIMIT", "0")),
    "params": {"wrk": f"-t{threads} -c{conns} -d{duration} --latency", "pinned": pin == "1",
               "rounds": int(rounds),
               "figures": "per case, the median of its rounds; the cases take turns in rotating order",
               "workers": "per case: nginx worker_processes, HAProxy nbthread, the floor's and cutover's worker threads",
               "upstreams": {"static": "nginx, the body from memory (open_file_cache, sendfile on), worker_processes auto",
                             "demo": "demo-app --body-size N"},
               "websockets": "each proxy with its default workers (2 here)"},
    "cases": cases, "ratios": ratios, "websockets_10k": ws,
}
json.dump(doc, open(result, "w"), indent=2)
print(result)
PY
log "results: $RESULT"
