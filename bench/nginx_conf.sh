# Sourced by bench/run.sh and bench/instructions.sh, so that both measure the same nginx.
#
# nginx_conf DIR WORKERS PORT APP_PORT FD_LIMIT [MASTER]: writes DIR/nginx.conf, a reverse
# proxy on 127.0.0.1:PORT to 127.0.0.1:APP_PORT with keep-alive on both sides and the
# forwarding fields cutover adds. WORKERS is "1" or "auto"; MASTER "off" runs the one worker
# in the foreground without a master process (for valgrind).
nginx_conf() {
  local dir=$1 workers=$2 port=$3 app_port=$4 fd_limit=$5 master=${6:-on}
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
