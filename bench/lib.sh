# shellcheck shell=bash
# What bench/run.sh and bench/h2.sh share: process bookkeeping and /proc readings. Sourced
# after the caller has set TMP (its scratch directory), PIDS=() (what cleanup stops) and log().

cleanup() { # on EXIT: stop every process in PIDS, then remove TMP (unless KEEP_TMP=1)
  local p
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  [ "${KEEP_TMP:-0}" = 1 ] || rm -rf "$TMP"
}

stop_pid() { # stop_pid pid: TERM, wait up to 10 s, KILL; forgets it in PIDS
  local p=$1 i
  kill "$p" 2>/dev/null || return 0
  for i in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  local keep=() q
  for q in "${PIDS[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
  PIDS=("${keep[@]}")
}

wait_http() { # wait_http url [curl args]: until it answers 200 (30 s)
  local url=$1 i; shift
  for i in $(seq 300); do
    [ "$(curl -sk -o /dev/null -w '%{http_code}' "$@" "$url" || true)" = 200 ] && return 0
    sleep 0.1
  done
  log "timeout waiting for $url"; return 1
}

children() { # children pid: the pid and its children (nginx: the master and its workers)
  echo "$1" $(pgrep -P "$1" || true)
}

HZ=$(getconf CLK_TCK)
ticks() { # ticks pid...: utime+stime of the processes, in clock ticks (HZ per second)
  local t=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    t=$((t + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat")))
  done
  echo "$t"
}

rss_kb() { # rss_kb field pid...: sum of VmHWM / VmRSS (kB)
  local f=$1 t=0 p; shift
  for p in "$@"; do
    t=$((t + $(awk -v f="$f:" '$1 == f { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  echo "$t"
}

csw() { # csw pid...: context switches (voluntary + involuntary) of all their threads
  local t=0 p
  for p in "$@"; do
    t=$((t + $(cat /proc/"$p"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { s += $2 } END { print s + 0 }')))
  done
  echo "$t"
}

body_file() { # body_file size: a file of that many bytes in TMP, for the static upstream
  local f="$TMP/body-$1"
  [ -f "$f" ] || head -c "$1" /dev/zero | tr '\0' x >"$f"
  echo "$f"
}
