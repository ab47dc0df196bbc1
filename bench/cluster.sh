#!/usr/bin/env bash
# Replicas on Redis under load (SPEC 9), on this machine: per run, its own
# redis-server (on a free port, with the settings docs/replicas.md recommends:
# appendonly, appendfsync always, maxmemory-policy noeviction), REPLICAS
# release servers on free ports sharing it, and the load generator
# (`loadgen cluster`), which spreads AGENTS agents over the replicas as a
# round-robin balancer would (registration and stream of agent i through
# replica i mod REPLICAS; its streams held by child processes of at most
# 9,500 each, as every process here may open 20,000 files), then measures:
#   - fleet commands (PUSHES, each through the next replica): time to 100 %
#     of the streams, p50, p99;
#   - heartbeats per second through the cluster: wrk on every replica at once;
#   - Redis's own memory per agent (INFO memory used_memory) and per command;
#   - failover: SIGKILL of the last replica, and the time until every stream
#     it held is open again through the others (each agent waits the
#     `retry:` its stream sent, SPEC 10's jitter included), then one more
#     fleet command, which must reach every agent.
# Agents do not heartbeat during the pushes (heartbeats are measured on their
# own), so the replicas run with lifecycle.stale_after = 1h to keep them LIVE,
# and commands.expiry = 10m so that no expiry lands inside a measurement.
# Prints a markdown table of medians over the runs (`loadgen cluster-report`)
# and keeps every log and raw result under $OUT.
#
#   bash bench/cluster.sh             100,000 agents over 7 replicas, 3 runs
#   QUICK=1 bash bench/cluster.sh     a smoke run: 600 agents over 2 replicas, 1 run (under a minute once built)
#
# Why 7: a replica here holds at most 19,313 streams (server.max_streams, from
# the 20,000 open files a process may have), so 6 replicas hold 100,000
# streams (16,667 each) but 5 cannot take them back when one dies
# (5 x 19,313 < 100,000): the seventh is the spare a failover needs.
#
# A replica that cannot join (a build that serves one replica per prefix exits
# 2) leaves the smoke run with the replicas that did start; with a single one,
# the failover is its SIGKILL and restart (agents come back to it). A full run
# needs every replica (100,000 streams do not fit in one process).
#
# Knobs (environment): AGENTS, REPLICAS, RUNS, PUSHES, WRK_SECONDS,
# WRK_CONNECTIONS, FAILOVER (0: no kill), SERVER_BIN (the replicas' binary, for A/B
# runs), APPENDFSYNC (always), SSE_RETRY (the
# replicas' sse.retry, default theirs: 5s), REPLICA_ENV (more VAR=VALUE
# settings for the replicas), OUT, KEEP_REDIS (1: keep each run's
# append-only file). Needs redis-server on PATH and wrk (installed with
# apt-get when missing; without it, no heartbeat figure). Everything it
# starts it stops, by PID, also when interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    AGENTS=${AGENTS:-600} REPLICAS=${REPLICAS:-2} RUNS=${RUNS:-1} PUSHES=${PUSHES:-2}
    WRK_SECONDS=${WRK_SECONDS:-2} SETTLE_MS=${SETTLE_MS:-200} SSE_RETRY=${SSE_RETRY:-1s}
else
    AGENTS=${AGENTS:-100000} REPLICAS=${REPLICAS:-7} RUNS=${RUNS:-3} PUSHES=${PUSHES:-3}
    WRK_SECONDS=${WRK_SECONDS:-10} SETTLE_MS=${SETTLE_MS:-2000} SSE_RETRY=${SSE_RETRY:-}
fi
WRK_CONNECTIONS=${WRK_CONNECTIONS:-64}
FAILOVER=${FAILOVER:-1}
APPENDFSYNC=${APPENDFSYNC:-always}
KEEP_REDIS=${KEEP_REDIS:-0}
read -r -a replica_env <<<"${REPLICA_ENV:-}"
OUT=${OUT:-$root/target/bench-cluster/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
server_bin=${SERVER_BIN:-$root/target/release/registry-server}
loadgen=$root/target/release/loadgen

source "$root/bench/lib.sh"

# Every process a run starts has its PID in a file under the run's folder, so
# that cleanup finds them all, a replica restarted by the watcher included.
run_dir=""
watcher_pid=""
cleanup() {
    if [[ -n $watcher_pid ]]; then
        kill "$watcher_pid" 2>/dev/null || true
        watcher_pid=""
    fi
    if [[ -z $run_dir ]]; then
        return 0
    fi
    local file
    for file in "$run_dir"/replica-*.pid "$run_dir"/redis.pid; do
        if [[ -f $file ]]; then
            stop_pid "$(cat "$file")"
            rm -f "$file"
        fi
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# running PID: the process exists and is not a zombie (Redis is this shell's
# child, and stays one until waited for).
running() { [[ -e /proc/$1 ]] && ! grep -q ') Z ' "/proc/$1/stat" 2>/dev/null; }

# stop_pid PID: SIGTERM, up to 30 s, then SIGKILL.
stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 300); do
        running "$pid" || break
        sleep 0.1
    done
    if running "$pid"; then
        echo "process $pid did not stop in 30 s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# start_redis: redis-server on a free port (below the ephemeral range, retried
# if taken), its files in $run_dir/redis; sets redis_port.
start_redis() {
    mkdir -p "$run_dir/redis"
    for _ in $(seq 20); do
        redis_port=$((20000 + RANDOM % 12000))
        redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$run_dir/redis" \
            --appendonly yes --appendfsync "$APPENDFSYNC" --save "" \
            --maxmemory-policy noeviction --logfile "$run_dir/redis.log" </dev/null >/dev/null 2>&1 &
        echo $! >"$run_dir/redis.pid"
        for _ in $(seq 50); do
            if redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG; then
                return 0
            fi
            running "$(cat "$run_dir/redis.pid")" || break
            sleep 0.1
        done
        stop_pid "$(cat "$run_dir/redis.pid")"
    done
    echo "redis-server did not start; see $run_dir/redis.log" >&2
    exit 1
}

# start_replica INDEX [PORT]: a replica on PORT (default: a free one, which it
# logs), its log appended to $run_dir/replica-INDEX.log; prints its base URL
# once it is ready, or nothing if it exited (it could not join).
start_replica() {
    local index=$1 port=${2:-0} log=$run_dir/replica-$1.log pid url="" logged
    # Only this start's lines: a log appended to (a restart, or a run folder
    # used again) holds an earlier address, which would never answer.
    logged=0
    if [[ -f $log ]]; then logged=$(wc -l <"$log"); fi
    env REGISTRY_STORAGE__ENGINE=redis \
        REGISTRY_STORAGE__REDIS_URL="redis://127.0.0.1:$redis_port/0" \
        REGISTRY_STORAGE__REDIS_PREFIX=bench: \
        REGISTRY_COMMANDS__EXPIRY=10m REGISTRY_LIFECYCLE__STALE_AFTER=1h \
        ${SSE_RETRY:+REGISTRY_SSE__RETRY=$SSE_RETRY} \
        NO_COLOR=1 RUST_LOG=warn,registry_server=info "${replica_env[@]}" \
        "$server_bin" --bind "127.0.0.1:$port" </dev/null >>"$log" 2>&1 &
    pid=$!
    echo "$pid" >"$run_dir/replica-$index.pid"
    for _ in $(seq 600); do
        if [[ -z $url ]]; then
            url=$(tail -n +"$((logged + 1))" "$log" | grep -o 'listening on http://[0-9.:]*' |
                tail -n 1 | sed 's/^listening on //' || true)
        fi
        if [[ -n $url ]] && curl -sf -o /dev/null "$url/readyz"; then
            echo "$url"
            return 0
        fi
        if ! running "$pid"; then
            wait "$pid" 2>/dev/null || true
            rm -f "$run_dir/replica-$index.pid"
            return 0
        fi
        sleep 0.1
    done
    echo "replica $index did not get ready in 60 s; see $log" >&2
    exit 1
}

# watch_and_restart INDEX URL: when the replica dies (the failover's SIGKILL),
# starts it again on the same port: with one replica, the agents have nowhere
# else to go. Runs in the background.
watch_and_restart() {
    local index=$1 url=$2 pid
    pid=$(cat "$run_dir/replica-$index.pid")
    while running "$pid"; do sleep 0.02; done
    echo "== the only replica died: starting it again on ${url##*:}" >&2
    start_replica "$index" "${url##*:}" >/dev/null
}

command -v redis-server >/dev/null || {
    echo "redis-server is needed on PATH (apt-get install redis-server)" >&2
    exit 1
}
if [[ $WRK_SECONDS -gt 0 ]] && ! command -v wrk >/dev/null; then
    log "installing wrk"
    if ! { apt-get install -y -qq wrk >&2 || { apt-get update -qq >&2 && apt-get install -y -qq wrk >&2; }; }; then
        log "wrk could not be installed: heartbeats are not measured"
        WRK_SECONDS=0
    fi
fi
log "building the release server and load generator"
cargo build --release -q -p registry-server -p registry-bench

failures=0
for run in $(seq "$RUNS"); do
    run_dir=$OUT/run-$run
    mkdir -p "$run_dir"
    start_redis
    log "run $run of $RUNS: Redis on port $redis_port (appendfsync $APPENDFSYNC), starting $REPLICAS replicas"
    urls=() pids=()
    for index in $(seq 0 $((REPLICAS - 1))); do
        url=$(start_replica "$index")
        if [[ -z $url ]]; then
            log "replica $index could not join (it exited; see $run_dir/replica-$index.log):"
            grep -m1 -i 'error' "$run_dir/replica-$index.log" >&2 || true
            if [[ $QUICK != 1 ]]; then
                echo "every replica is needed for the full run" >&2
                exit 1
            fi
            continue
        fi
        urls+=("$url")
        pids+=("$(cat "$run_dir/replica-$index.pid")")
    done
    [[ ${#urls[@]} -gt 0 ]] || { echo "no replica started" >&2; exit 1; }
    log "replicas: ${urls[*]}"
    kill_args=()
    if [[ $FAILOVER == 1 ]]; then
        kill_args=(--kill $((${#urls[@]} - 1)))
        if [[ ${#urls[@]} == 1 ]]; then
            watch_and_restart 0 "${urls[0]}" &
            watcher_pid=$!
        fi
    fi
    if ! timeout --kill-after=10 1800 "$loadgen" cluster \
        --url "$(IFS=,; echo "${urls[*]}")" --replica-pid "$(IFS=,; echo "${pids[*]}")" \
        --redis "127.0.0.1:$redis_port" -n "$AGENTS" --pushes "$PUSHES" \
        --push-timeout-s 60 --settle-ms "$SETTLE_MS" \
        --wrk-seconds "$WRK_SECONDS" --wrk-connections "$WRK_CONNECTIONS" \
        --wrk-script "$root/bench/wrk/heartbeat.lua" "${kill_args[@]}" \
        --out "$OUT/cluster-$run.json" \
        2> >(tee "$run_dir/loadgen.log" >&2) >/dev/null; then
        log "run $run failed; see $run_dir"
        failures=$((failures + 1))
    fi
    if grep -l "panicked at" "$run_dir"/replica-*.log 2>/dev/null; then
        log "a replica panicked (the files above)"
        failures=$((failures + 1))
    fi
    cleanup
    [[ $KEEP_REDIS == 1 ]] || rm -rf "$run_dir/redis"
done
run_dir=""

"$loadgen" cluster-report "$OUT" | tee "$OUT/table.md"
log "settings: ${#urls[@]} replica(s), sse.retry ${SSE_RETRY:-5s (default)}, appendfsync $APPENDFSYNC, commands.expiry 10m, lifecycle.stale_after 1h; raw results: $OUT"
[[ $failures == 0 ]] || exit 1
