#!/usr/bin/env bash
# Starts and stops nginx with the nchan module on loopback, with its own
# configuration and directory (never the system's nginx):
#   bench/nchan/nginx.sh install           apt-get installs nginx-light and libnginx-mod-nchan if missing
#   bench/nchan/nginx.sh start PORT DIR    renders nginx.conf.template into DIR, starts nginx, prints the master's PID
#   bench/nchan/nginx.sh stop PID          asks that master to quit, and kills it after 10 s
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
module=/usr/lib/nginx/modules/ngx_nchan_module.so

install() {
    if command -v nginx >/dev/null && [[ -f $module ]]; then
        return
    fi
    echo "installing nginx-light and libnginx-mod-nchan" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq nginx-light libnginx-mod-nchan >&2
}

start() {
    local port=$1 dir=$2
    install
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    sed -e "s|@PORT@|$port|g" -e "s|@PREFIX@|$dir|g" "$here/nginx.conf.template" >"$dir/nginx.conf"
    rm -f "$dir/nginx.pid"
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
    for _ in $(seq 100); do
        if [[ -s $dir/nginx.pid ]] && curl -s -o /dev/null "http://127.0.0.1:$port/204"; then
            cat "$dir/nginx.pid"
            return
        fi
        sleep 0.1
    done
    echo "nginx did not start; see $dir/error.log" >&2
    exit 1
}

stop() {
    local pid=$1
    kill -QUIT "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "nginx $pid did not quit in 10 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

case "${1:-}" in
install) install ;;
start) start "$2" "$3" ;;
stop) stop "$2" ;;
*)
    echo "usage: $0 install | start PORT DIR | stop PID" >&2
    exit 2
    ;;
esac
