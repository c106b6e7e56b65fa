# Sourced by bench/run.sh and bench/instructions.sh, so that both measure the same nginx.
#
# nginx_conf DIR WORKERS PORT APP_PORT FD_LIMIT [MASTER] [EXTRA]: writes DIR/nginx.conf, a
# reverse proxy on 127.0.0.1:PORT to 127.0.0.1:APP_PORT with keep-alive on both sides and the
# forwarding fields cutover adds. WORKERS is a number or "auto"; MASTER "off" runs the one
# worker in the foreground without a master process (for valgrind); EXTRA is more directives
# for the server block (bench/h2.sh: its h2c and TLS listeners).
nginx_conf() {
  local dir=$1 workers=$2 port=$3 app_port=$4 fd_limit=$5 master=${6:-on} extra=${7:-}
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<NGX
worker_processes $workers;
worker_rlimit_nofile $fd_limit;
master_process $master;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $fd_limit; }
http {
  access_log off;
  keepalive_requests 1000000;      # the default (1000) would reconnect wrk's connections
  keepalive_timeout 75s;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  upstream app {
    server 127.0.0.1:$app_port;
    keepalive 64;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
  }
  map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
  server {
    listen 127.0.0.1:$port;
$extra
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection \$connection_upgrade;   # "" unless a WebSocket upgrade
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }
  }
}
NGX
}

# nginx_static_conf DIR WORKERS PORT FILE: writes DIR/nginx.conf, an upstream faster than any
# proxy in front of it: every request, whatever its path, is answered with FILE (copied to
# DIR/body) from memory. The open file cache keeps the descriptor and its size, so a request
# opens and stats nothing; `sendfile on` sends the page-cached bytes without copying them
# through nginx (the file is read once, then stays in the page cache). Keep-alive as above.
# The workers run as the invoking user (root's would be `nobody`, who cannot read a private
# temporary directory).
nginx_static_conf() {
  local dir=$1 workers=$2 port=$3 file=$4
  mkdir -p "$dir"
  cp "$file" "$dir/body"
  cat >"$dir/nginx.conf" <<NGX
user $(id -un) $(id -gn);
worker_processes $workers;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  sendfile on;
  tcp_nopush on;
  open_file_cache max=16 inactive=1h;
  open_file_cache_valid 1h;
  default_type application/octet-stream;
  client_body_temp_path $dir/cbody;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  server {
    listen 127.0.0.1:$port;
    root $dir;
    location / { rewrite ^ /body break; }
  }
}
NGX
}
