# nginx from Debian answering a fixed response, as its docs advise for a fast static answer (a
# worker per core, keep-alive, no access log): the HTTP ceiling of the benchmarks. Sourced by
# benches/side-by-side.sh and benches/tls-bench.sh, not run.

# nginx_start DIR HTTP_PORT BODY [HTTPS_PORT CERT KEY]: starts nginx (installed when missing)
# with its files under DIR; sets NPID to its master's PID.
nginx_start() {
  local dir=$1 http=$2 body=$3 https=${4:-} cert=${5:-} key=${6:-} tls=""
  [[ -x /usr/sbin/nginx ]] || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light ||
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx
  }
  mkdir -p "$dir"
  [[ -n $https ]] && tls="ssl_certificate $cert; ssl_certificate_key $key;"
  cat > "$dir/nginx.conf" <<CONF
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  $tls
  client_body_temp_path $dir;
  proxy_temp_path $dir;
  fastcgi_temp_path $dir;
  uwsgi_temp_path $dir;
  scgi_temp_path $dir;
  server {
    listen 127.0.0.1:$http;
    ${https:+listen 127.0.0.1:$https ssl;}
    location / { default_type application/json; return 200 '$body'; }
  }
}
CONF
  /usr/sbin/nginx -c "$dir/nginx.conf"
  sleep 0.5
  NPID=$(cat "$dir/nginx.pid")
}

# nginx_stop DIR
nginx_stop() { /usr/sbin/nginx -c "$1/nginx.conf" -s stop; }

# tree_ticks PID: CPU clock ticks (utime + stime) of a process and its child processes (nginx's
# workers).
tree_ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    [[ -r /proc/$p/stat ]] || continue
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}
