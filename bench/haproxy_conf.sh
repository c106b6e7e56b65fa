# shellcheck shell=bash
# haproxy_conf FILE THREADS PORT APP_PORT: HAProxy as bench/instructions.sh and bench/syscalls.sh
# measure it: keep-alive both sides, X-Forwarded-For, one backend (bench/run.sh and bench/h2.sh
# add connection limits, tunnels and TLS to the same settings).
haproxy_conf() {
  cat >"$1" <<HAP
global
  nbthread $2
defaults
  mode http
  option http-keep-alive
  option forwardfor
  http-reuse always
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend fe
  bind 127.0.0.1:$3
  default_backend app
backend app
  server app1 127.0.0.1:$4
HAP
}
