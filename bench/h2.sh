#!/usr/bin/env bash
# HTTP/2 and TLS through cutover, nginx and HAProxy: results in bench/results/h2-<UTC date-time>.json
# (bench/summarize.py makes the tables). See BENCHMARKS.md, "HTTP/2 and TLS".
#
# Scenarios, each proxy in front of the same static upstream (nginx serving the body from
# memory over HTTP/1.1 keep-alive, as bench/run.sh's `static`):
#   h2c-m1, h2c-m100    h2load, HTTP/2 with prior knowledge, 1 and 100 streams per connection
#   h2tls-m1, h2tls-m100 h2load over TLS (ALPN h2), 1 and 100 streams per connection
#   h1tls               wrk over TLS, HTTP/1.1 keep-alive: throughput
#   h1tls-new           wrk over TLS with `Connection: close`: every request a new connection
#                       and a full handshake (wrk resumes no session), so req/s = handshakes/s
# Every proxy gets the same certificate (ECDSA P-256, self-signed) and negotiates the same
# TLS 1.3 suite and group (TLS_AES_256_GCM_SHA384, X25519: what OpenSSL clients ask first, and
# the only suite nginx and HAProxy are given; cutover's rustls follows the client's order);
# the script checks each with `openssl s_client` and records what was negotiated.
#
# What is not alike: cutover serves HTTP/1.1 and h2c on one plaintext port (it tells them apart
# by the preface), nginx and HAProxy get an h2c-only port; cutover needs a second process for
# TLS (one listener each), with its own upstream instance.
#
# Binaries: what bench/run.sh built (BENCH_TARGET, default /tmp/cutover-bench-target).
# Knobs (env): ROUNDS=3 DURATION=5 (seconds) WARMUP=2 CONNS=64 CONNS_M100=8 THREADS=2
#              BODIES="100 16384" WORKERS="1 2" CASES="cutover nginx haproxy"
#              SCENARIOS="h2c-m1 h2c-m100 h2tls-m1 h2tls-m100 h1tls h1tls-new"
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH="$ROOT/bench"
T=${BENCH_TARGET:-/tmp/cutover-bench-target}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
DURATION=${DURATION%s}
WARMUP=${WARMUP:-2}
WARMUP=${WARMUP%s}
CONNS=${CONNS:-64}
CONNS_M100=${CONNS_M100:-8}
THREADS=${THREADS:-2}
BODIES=${BODIES:-"100 16384"}
WORKERS=${WORKERS:-"1 2"}
CASES=${CASES:-"cutover nginx haproxy"}
SCENARIOS=${SCENARIOS:-"h2c-m1 h2c-m100 h2tls-m1 h2tls-m100 h1tls h1tls-new"}
SUITE=TLS_AES_256_GCM_SHA384

APP_PORT=18280 NGINX_PORT=18281 NGINX_H2C=18282 NGINX_TLS=18283 HAPROXY_PORT=18284
HAPROXY_H2C=18285 HAPROXY_TLS=18286 CUT_H2C=18287 CUT_TLS=18288 ADMIN_PLAIN=18297 ADMIN_TLS=18298

log() { printf '[h2 %s] %s\n' "$(date +%T)" "$*" >&2; }
# shellcheck source=bench/nginx_conf.sh
. "$BENCH/nginx_conf.sh"

need=()
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin:/sbin"
CUTOVER="$T/release/cutover"
[ -x "$CUTOVER" ] || { echo "missing $CUTOVER: run bench/run.sh first (or set BENCH_TARGET)" >&2; exit 1; }
export BENCH_REV; BENCH_REV=$(cat "$T/.bench-revision" 2>/dev/null || echo unknown)

for port in $APP_PORT $NGINX_PORT $NGINX_H2C $NGINX_TLS $HAPROXY_PORT $HAPROXY_H2C $HAPROXY_TLS \
  $CUT_H2C $CUT_TLS $ADMIN_PLAIN $ADMIN_TLS; do
  if ss -Htln "sport = :$port" | grep -q .; then echo "port $port is in use (a leftover server?)" >&2; exit 1; fi
done

TMP=$(mktemp -d /tmp/cutover-h2.XXXXXX)
OUT="$TMP/cases"; mkdir -p "$OUT"
PIDS=()
# shellcheck source=bench/lib.sh
. "$BENCH/lib.sh"
trap cleanup EXIT

# --- the certificate every proxy serves ------------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
cat "$TMP/cert.pem" "$TMP/key.pem" >"$TMP/both.pem"

# --- servers ---------------------------------------------------------------------------------
APP_PID=""
start_app() { # start_app body
  # In a session of its own, as cutover's instances are (see bench/run.sh's start_app).
  TMPDIR="$TMP" setsid "$BENCH/static_upstream.sh" "$APP_PORT" "$(body_file "$1")" auto >"$TMP/app.log" 2>&1 &
  APP_PID=$!; PIDS+=("$APP_PID")
  wait_http "http://127.0.0.1:$APP_PORT/"
}

start_nginx() { # start_nginx workers: sets NGINX_PID
  local n="$TMP/nginx-$1"
  nginx_conf "$n" "$1" "$NGINX_PORT" "$APP_PORT" 4096 on "    listen 127.0.0.1:$NGINX_H2C http2;
    listen 127.0.0.1:$NGINX_TLS ssl http2;
    ssl_certificate $TMP/cert.pem;
    ssl_certificate_key $TMP/key.pem;
    ssl_protocols TLSv1.3;
    ssl_conf_command Ciphersuites $SUITE;
    ssl_session_cache off;
    ssl_session_tickets off;
    http2_max_concurrent_streams 128;
    keepalive_requests 1000000;"
  nginx -c "$n/nginx.conf" -e "$n/error.log" >"$n/out.log" 2>&1 &
  NGINX_PID=$!; PIDS+=("$NGINX_PID")
  wait_http "http://127.0.0.1:$NGINX_PORT/"
}

start_haproxy() { # start_haproxy threads: sets HAPROXY_PID
  mkdir -p "$TMP/haproxy"
  cat >"$TMP/haproxy/haproxy.cfg" <<HAP
global
  nbthread $1
  maxconn 4096
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-bind-ciphersuites $SUITE
  tune.ssl.cachesize 0
defaults
  mode http
  option http-keep-alive
  option forwardfor
  http-reuse always
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout http-keep-alive 75s
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT
  bind 127.0.0.1:$HAPROXY_H2C proto h2
  bind 127.0.0.1:$HAPROXY_TLS ssl crt $TMP/both.pem alpn h2,http/1.1 no-tls-tickets
  default_backend app
backend app
  server app1 127.0.0.1:$APP_PORT
HAP
  haproxy -db -f "$TMP/haproxy/haproxy.cfg" >"$TMP/haproxy/out.log" 2>&1 &
  HAPROXY_PID=$!; PIDS+=("$HAPROXY_PID")
  wait_http "http://127.0.0.1:$HAPROXY_PORT/"
}

start_cutover() { # start_cutover name port admin_port workers body [tls]: prints the pid
  local name=$1 port=$2 admin=$3 workers=$4 body=$5 tls=${6:-}
  local d="$TMP/cutover-$name"; rm -rf "$d"; mkdir -p "$d"
  {
    printf '[service]\nname = "bench"\nlisten = "127.0.0.1:%s"\nstate_dir = "state"\nworkers = %s\n' "$port" "$workers"
    [ -z "$tls" ] || printf '[service.tls]\ncert = "%s"\nkey = "%s"\n' "$TMP/cert.pem" "$TMP/key.pem"
    printf '[admin]\nlisten = "127.0.0.1:%s"\n' "$admin"
    printf '[app]\ncommand = ["%s", "{port}", "%s", "auto"]\nenv = { TMPDIR = "%s" }\ninstances = 1\nstart_timeout = "30s"\n' \
      "$BENCH/static_upstream.sh" "$(body_file "$body")" "$TMP"
    printf '[metrics]\npath = ""\n[log]\nlevel = "warn"\n'
  } >"$d/cutover.toml"
  "$CUTOVER" run -c "$d/cutover.toml" >"$d/out.log" 2>&1 &
  local pid=$!
  local i
  for i in $(seq 100); do
    "$CUTOVER" -c "$d/cutover.toml" deploy v1 >"$d/deploy.log" 2>&1 && break
    sleep 0.2
  done
  echo "$pid"
}

# --- one load case ---------------------------------------------------------------------------
url_of() { # url_of proxy scenario
  local p=$1 s=$2 h2c tls
  case $p in
    cutover) h2c=$CUT_H2C tls=$CUT_TLS ;;
    nginx) h2c=$NGINX_H2C tls=$NGINX_TLS ;;
    haproxy) h2c=$HAPROXY_H2C tls=$HAPROXY_TLS ;;
  esac
  case $s in
    h2c-*) echo "http://127.0.0.1:$h2c/" ;;
    *) echo "https://127.0.0.1:$tls/" ;;
  esac
}

load() { # load scenario url duration outfile: runs the client, leaves its output in outfile(.log)
  local s=$1 url=$2 d=$3 f=$4
  case $s in
    h2c-m1 | h2tls-m1)
      h2load -c"$CONNS" -m1 -t"$THREADS" -D"$d" --tls13-ciphers=$SUITE --log-file="$f.log" "$url" >"$f" 2>&1 ;;
    h2c-m100 | h2tls-m100)
      h2load -c"$CONNS_M100" -m100 -t"$THREADS" -D"$d" --tls13-ciphers=$SUITE --log-file="$f.log" "$url" >"$f" 2>&1 ;;
    h1tls) wrk -t"$THREADS" -c"$CONNS" -d"${d}s" --latency -s "$BENCH/report.lua" "$url" >"$f" 2>&1 ;;
    h1tls-new)
      wrk -t"$THREADS" -c"$CONNS" -d"${d}s" --latency -H "Connection: close" -s "$BENCH/report.lua" "$url" >"$f" 2>&1 ;;
  esac
}

run_case() { # run_case proxy scenario body workers round "pids"
  local p=$1 s=$2 body=$3 w=$4 round=$5 pids=$6
  local url f="$OUT/rounds/$p-$s-$body-$w-$round"
  url=$(url_of "$p" "$s")
  mkdir -p "$OUT/rounds"
  [ "$round" != 1 ] || load "$s" "$url" "$WARMUP" "$f.warm"
  local l0 p0 t0 p1 t1
  l0=$(cut -d' ' -f1-3 /proc/loadavg)
  # shellcheck disable=SC2086
  p0=$(ticks $pids); t0=$(date +%s.%N)
  load "$s" "$url" "$DURATION" "$f.txt"
  # shellcheck disable=SC2086
  p1=$(ticks $pids); t1=$(date +%s.%N)
  python3 - "$p" "$s" "$body" "$w" "$round" "$f.txt" "$l0" "$((p1 - p0))" "$HZ" "$t0" "$t1" >"$f.json" <<'PY'
import json, re, sys
p, s, body, w, rnd, txt, l0, pt, hz, t0, t1 = sys.argv[1:]
out = open(txt).read()
r = dict(case=p, scenario=s, body_bytes=int(body), workers=int(w), round=int(rnd), loadavg_before=l0)
if s.startswith("h1tls"):
    m = re.search(r"^JSON (.*)$", out, re.M)
    if not m:
        sys.exit(f"{p} {s}: no result in {txt}:\n{out[-2000:]}")
    j = json.loads(m.group(1))
    r.update(requests=j["requests"], rps=j["rps"], errors=j["errors"], non2xx=j["non2xx"], lat_us=j["lat_us"])
else:
    m = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    q = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if not (m and q):
        sys.exit(f"{p} {s}: no result in {txt}:\n{out[-2000:]}")
    done, ok = int(q.group(3)), int(q.group(4))
    lat = sorted(int(l.split()[2]) for l in open(txt + ".log") if len(l.split()) == 3)
    pct = lambda x: lat[min(len(lat) - 1, int(len(lat) * x / 100))] if lat else 0
    r.update(requests=done, rps=float(m.group(1)), errors=done - ok + int(q.group(6)), non2xx=0,
             lat_us={"p50": pct(50), "p90": pct(90), "p99": pct(99), "p999": pct(99.9),
                     "max": lat[-1] if lat else 0})
    tls = re.search(r"Cipher: (\S+)", out); proto = re.search(r"Application protocol: (\S+)", out)
    r.update(cipher=tls.group(1) if tls else None, alpn=proto.group(1) if proto else None)
wall = float(t1) - float(t0)
cpu = int(pt) / int(hz)
r.update(proxy_cpu_pct=round(100 * cpu / wall, 1),
         proxy_cpu_us_per_req=round(1e6 * cpu / max(r["requests"], 1), 2))
print(json.dumps(r))
PY
  log "$p $s body=$body workers=$w round $round: $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); l=r["lat_us"]; print("%.0f req/s p50 %sus p99 %sus cpu %s us/req errors %s load %s" % (r["rps"], l["p50"], l["p99"], r["proxy_cpu_us_per_req"], r["errors"], r["loadavg_before"]))' "$f.json")"
  rm -f "$f.txt.log" "$f.warm.log"
}

has() { [[ " $CASES " == *" $1 "* ]]; }

# What each proxy negotiates over TLS: protocol, suite, group.
negotiated() { # negotiated port alpn
  openssl s_client -connect "127.0.0.1:$1" -alpn "$2" </dev/null 2>/dev/null |
    awk '/^New, / { print $2, $5 } /Server Temp Key/ { sub(/.*: /, ""); print } /^ALPN protocol/ { print $3 }' | paste -sd' '
}

declare -A PPIDS
TLS_SEEN="$OUT/tls.txt"; : >"$TLS_SEEN"
for body in $BODIES; do
  start_app "$body"
  for w in $WORKERS; do
    active=()
    if has nginx; then
      start_nginx "$w"; active+=(nginx); PPIDS[nginx]=$(children "$NGINX_PID")
      echo "nginx $(negotiated $NGINX_TLS h2)" >>"$TLS_SEEN"
    fi
    if has haproxy; then
      start_haproxy "$w"; active+=(haproxy); PPIDS[haproxy]=$HAPROXY_PID
      echo "haproxy $(negotiated $HAPROXY_TLS h2)" >>"$TLS_SEEN"
    fi
    if has cutover; then
      CUT_PLAIN_PID=$(start_cutover plain "$CUT_H2C" "$ADMIN_PLAIN" "$w" "$body"); PIDS+=("$CUT_PLAIN_PID")
      CUT_TLS_PID=$(start_cutover tls "$CUT_TLS" "$ADMIN_TLS" "$w" "$body" tls); PIDS+=("$CUT_TLS_PID")
      wait_http "http://127.0.0.1:$CUT_H2C/"
      wait_http "https://127.0.0.1:$CUT_TLS/"
      active+=(cutover); PPIDS[cutover]="$CUT_PLAIN_PID $CUT_TLS_PID"
      echo "cutover $(negotiated $CUT_TLS h2)" >>"$TLS_SEEN"
    fi
    n=${#active[@]}
    for s in $SCENARIOS; do
      for round in $(seq "$ROUNDS"); do
        for k in $(seq 0 $((n - 1))); do
          p=${active[$(((k + round - 1) % n))]}
          run_case "$p" "$s" "$body" "$w" "$round" "${PPIDS[$p]}"
        done
      done
    done
    has nginx && stop_pid "$NGINX_PID"
    has haproxy && stop_pid "$HAPROXY_PID"
    if has cutover; then stop_pid "$CUT_PLAIN_PID"; stop_pid "$CUT_TLS_PID"; fi
  done
  stop_pid "$APP_PID"
done

mkdir -p "$BENCH/results"
RESULT="$BENCH/results/h2-$(date -u +%Y-%m-%dT%H%M%SZ).json"
python3 - "$OUT" "$RESULT" "$DURATION" "$CONNS" "$CONNS_M100" "$THREADS" "$ROUNDS" "$SUITE" <<'PY'
import glob, json, os, platform, statistics as st, subprocess, sys
out, result, duration, conns, conns100, threads, rounds, suite = sys.argv[1:]
sh = lambda c: subprocess.run(c + " 2>&1", shell=True, capture_output=True, text=True).stdout.strip()
rows = [json.load(open(f)) for f in glob.glob(out + "/rounds/*.json")]
cases = []
for key in sorted({(r["case"], r["scenario"], r["body_bytes"], r["workers"]) for r in rows}):
    rs = sorted((r for r in rows if (r["case"], r["scenario"], r["body_bytes"], r["workers"]) == key),
                key=lambda r: r["round"])
    med = lambda f: round(st.median(f(r) for r in rs), 2)
    cases.append(dict(case=key[0], scenario=key[1], body_bytes=key[2], workers=key[3],
                      rps=med(lambda r: r["rps"]),
                      lat_us={k: med(lambda r, k=k: r["lat_us"][k]) for k in ("p50", "p90", "p99", "p999")},
                      proxy_cpu_us_per_req=med(lambda r: r["proxy_cpu_us_per_req"]),
                      errors=sum(r["errors"] for r in rs), requests=sum(r["requests"] for r in rs),
                      loadavg_before=rs[0]["loadavg_before"], rounds=rs))
ratios = {}
for co in (c for c in cases if c["case"] == "cutover"):
    for other in ("nginx", "haproxy"):
        o = next((c for c in cases if c["case"] == other and all(c[k] == co[k] for k in ("scenario", "body_bytes", "workers"))), None)
        if o:
            ratios[f"cutover/{other}@{co['scenario']}/{co['workers']}w/{co['body_bytes']}"] = {
                "rps": round(co["rps"] / o["rps"], 3),
                **{k: round(co["lat_us"][k] / max(o["lat_us"][k], 1), 3) for k in ("p50", "p99", "p999")},
                "cpu_per_req": round(co["proxy_cpu_us_per_req"] / max(o["proxy_cpu_us_per_req"], 0.01), 3)}
doc = {"kind": "h2", "revision": os.environ.get("BENCH_REV"),
       "machine": {"nproc": os.cpu_count(), "kernel": platform.release(), "nginx": sh("nginx -v"),
                   "haproxy": sh("haproxy -v | head -1"), "h2load": sh("h2load --version"),
                   "wrk": sh("wrk -v | head -1")},
       "params": {"h2load": f"-c{conns} -m1 / -c{conns100} -m100 -t{threads} -D{duration}",
                  "wrk": f"-t{threads} -c{conns} -d{duration}s --latency (h1tls-new: -H 'Connection: close')",
                  "rounds": int(rounds), "tls": f"TLS 1.3, {suite}, ECDSA P-256 certificate",
                  "negotiated": open(out + "/tls.txt").read().splitlines(),
                  "upstream": "nginx static, HTTP/1.1 keep-alive"},
       "cases": cases, "ratios": ratios}
json.dump(doc, open(result, "w"), indent=2)
print(result)
PY
log "results: $RESULT"
