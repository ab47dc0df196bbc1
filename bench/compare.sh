#!/usr/bin/env bash
# The one command that reproduces the performance comparison: our agent
# registry beside nginx+nchan, measured by the same load generator in the same
# run on the same machine, and wrk against our heartbeat route and against
# nginx's `return 204;`. Prints a markdown table (medians, ratios, targets,
# machine) and keeps every raw result under $OUT.
#
#   bench/compare.sh            full: N = 10,000 and 19,000, 3 runs each, a 5-minute
#                               soak of 19,000 streams, wrk 3 x 10 s each (~15 minutes)
#   QUICK=1 bench/compare.sh    smoke test: N = 200, 1 run, a 5 s soak, wrk 1 x 2 s (< 1 minute once built)
#
# Knobs (environment): ENGINE (embedded, the default engine, its file fresh
# under $OUT for every server started; or memory), SIGNING (true, the
# default; false to measure the server without signatures), SIZES, RUNS, PUSHES, SOAK
# (seconds, 0: none), SOAK_AGENTS, WRK_SECONDS, WRK_RUNS, WRK_SETTINGS, PORT,
# NGINX_PORT, OUT. Needs root (or the
# tools already there) to install nginx-light, libnginx-mod-nchan and wrk.
# Everything it starts it stops, by PID, also when interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    SIZES=${SIZES:-200} RUNS=${RUNS:-1} PUSHES=${PUSHES:-3} SOAK=${SOAK:-5}
    SOAK_HEARTBEAT=${SOAK_HEARTBEAT:-1} SOAK_PUSH_EVERY=${SOAK_PUSH_EVERY:-2}
    WRK_SECONDS=${WRK_SECONDS:-2} WRK_RUNS=${WRK_RUNS:-1} SETTLE_MS=${SETTLE_MS:-200}
else
    SIZES=${SIZES:-10000 19000} RUNS=${RUNS:-3} PUSHES=${PUSHES:-3} SOAK=${SOAK:-300}
    SOAK_HEARTBEAT=${SOAK_HEARTBEAT:-30} SOAK_PUSH_EVERY=${SOAK_PUSH_EVERY:-60}
    WRK_SECONDS=${WRK_SECONDS:-10} WRK_RUNS=${WRK_RUNS:-3} SETTLE_MS=${SETTLE_MS:-1000}
fi
ENGINE=${ENGINE:-embedded}
SIGNING=${SIGNING:-true}
largest=$(tr ' ' '\n' <<<"$SIZES" | sort -n | tail -n1)
SOAK_AGENTS=${SOAK_AGENTS:-$largest}
WRK_SETTINGS=${WRK_SETTINGS:--t2 -c64 -d${WRK_SECONDS}s}
PORT=${PORT:-18080}
NGINX_PORT=${NGINX_PORT:-18081}
OUT=${OUT:-$root/target/bench-compare/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
server_bin=$root/target/release/registry-server
loadgen=$root/target/release/loadgen
nginx_sh=$root/bench/nchan/nginx.sh

source "$root/bench/lib.sh"

# The server with signing as SIGNING says (on by default) and the engine
# ENGINE asks for, the embedded engine's file a new one each time.
servers_started=0
start_registry() {
    servers_started=$((servers_started + 1))
    local file=$OUT/registry-$servers_started.redb
    rm -f "$file"
    start_server REGISTRY_STORAGE__ENGINE="$ENGINE" REGISTRY_STORAGE__PATH="$file" \
        REGISTRY_SIGNING__ENABLED="$SIGNING"
}

nginx_pid=""
cleanup() {
    [[ -n $server_pid ]] && stop_server
    [[ -n $nginx_pid ]] && stop_nginx
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_nginx() {
    nginx_pid=$("$nginx_sh" start "$NGINX_PORT" "$OUT/nginx")
}

stop_nginx() {
    local pid=$nginx_pid
    nginx_pid=""
    "$nginx_sh" stop "$pid"
}

# Runs a command for at most $1 seconds, so that the whole comparison ends in
# bounded time. A failure is remembered (the script then exits 1 after
# printing the table of what did succeed) rather than stopping everything.
failures=()
bounded() {
    local seconds=$1
    shift
    if ! timeout --kill-after=10 "$seconds" "$@"; then
        echo "FAILED (or timed out after $seconds s): $*" >&2
        failures+=("$*")
    fi
}

log "installing what is missing (nginx, nchan, wrk)"
peers=1
if ! "$nginx_sh" install || { ! command -v wrk >/dev/null && ! { apt-get install -y -qq wrk >&2 || { apt-get update -qq >&2 && apt-get install -y -qq wrk >&2; }; }; }; then
    if [[ $QUICK == 1 ]]; then
        log "nginx, nchan or wrk could not be installed: the smoke test measures our server only"
        peers=0
    else
        echo "nginx, nchan and wrk are needed (run as root, or install nginx-light libnginx-mod-nchan wrk)" >&2
        exit 1
    fi
fi

log "building the release server and load generator"
cargo build --release -q -p registry-server -p registry-bench

common=(--pushes "$PUSHES" --settle-ms "$SETTLE_MS")
for size in $SIZES; do
    for run in $(seq "$RUNS"); do
        log "N = $size, run $run of $RUNS: registry"
        start_registry
        bounded 600 "$loadgen" registry --url "http://127.0.0.1:$PORT" --server-pid "$server_pid" \
            -n "$size" "${common[@]}" --group-pushes 1 --agent-pushes 1 \
            --out "$OUT/registry-$size-$run.json" >/dev/null
        stop_server
        if [[ $peers == 1 ]]; then
            log "N = $size, run $run of $RUNS: nchan"
            start_nginx
            match=()
            [[ -f $OUT/registry-$size-$run.json ]] && match=(--match-message-of "$OUT/registry-$size-$run.json")
            bounded 600 "$loadgen" nchan --url "http://127.0.0.1:$NGINX_PORT" --nginx-pid "$nginx_pid" \
                -n "$size" "${common[@]}" "${match[@]}" --out "$OUT/nchan-$size-$run.json" >/dev/null
            stop_nginx
        fi
    done
done

if [[ $SOAK -gt 0 ]]; then
    log "soak: $SOAK_AGENTS streams for $SOAK s, heartbeats every $SOAK_HEARTBEAT s, acks"
    start_registry
    bounded $((SOAK + 600)) "$loadgen" registry --url "http://127.0.0.1:$PORT" --server-pid "$server_pid" \
        -n "$SOAK_AGENTS" --pushes 0 --settle-ms "$SETTLE_MS" --soak "$SOAK" \
        --heartbeat-every-s "$SOAK_HEARTBEAT" --soak-push-every-s "$SOAK_PUSH_EVERY" --ack \
        --out "$OUT/soak-$SOAK_AGENTS.json" >/dev/null
    stop_server
fi

if [[ $peers == 1 ]]; then
    log "wrk $WRK_SETTINGS: our heartbeat route and nginx's return 204, $WRK_RUNS run(s) each"
    start_registry
    bounded 60 "$loadgen" register --url "http://127.0.0.1:$PORT" -n 1000 --id-prefix wrk-
    start_nginx
    for run in $(seq "$WRK_RUNS"); do
        for target in registry nginx; do
            port=$PORT
            [[ $target == nginx ]] && port=$NGINX_PORT
            # shellcheck disable=SC2086 # WRK_SETTINGS is a list of options
            bounded $((WRK_SECONDS + 60)) wrk $WRK_SETTINGS -s "$root/bench/wrk/heartbeat.lua" "http://127.0.0.1:$port" \
                >"$OUT/wrk-$target-$run.txt"
            bounded 10 "$loadgen" wrk-result --target "$target" --settings "wrk $WRK_SETTINGS" \
                --out "$OUT/wrk-$target-$run.json" <"$OUT/wrk-$target-$run.txt"
        done
    done
    stop_nginx
    stop_server
fi

{
    echo "Server: storage.engine = $ENGINE, signing.enabled = $SIGNING (defaults: embedded, true; the engine's file under \$OUT)."
    echo
    "$loadgen" report "$OUT"
} | tee "$OUT/table.md"
log "raw results: $OUT"
if [[ ${#failures[@]} -gt 0 ]]; then
    log "${#failures[@]} step(s) failed:"
    printf '   %s\n' "${failures[@]}" >&2
    exit 1
fi
