#!/usr/bin/env bash
# The static upstream as an app cutover supervises: `static_upstream.sh PORT FILE [WORKERS]`
# writes an nginx config (bench/nginx_conf.sh's nginx_static_conf) for PORT, serving FILE for
# every path (so `/ready` and `/live` answer 200), and execs nginx in the foreground, so that
# the pid cutover started is nginx's master. bench/run.sh and bench/h2.sh start the peers'
# static upstream the same way.
set -euo pipefail
port=$1 file=$2 workers=${3:-auto}
# shellcheck source=bench/nginx_conf.sh
. "$(cd "$(dirname "$0")" && pwd)/nginx_conf.sh"
# Per port, replaced at each start (bench/run.sh points TMPDIR into its own temporary directory).
dir="${TMPDIR:-/tmp}/cutover-static-$port"
rm -rf "$dir"
nginx_static_conf "$dir" "$workers" "$port" "$file"
exec "$(command -v nginx || echo /usr/sbin/nginx)" -c "$dir/nginx.conf" -e "$dir/error.log"
