# Shared by the benchmark scripts (sourced, not run): starting and stopping the
# release server by PID, and medians. The caller sets server_bin, PORT and OUT,
# and calls stop_server from its EXIT trap when server_pid is set.

log() { echo "== $*" >&2; }

server_pid=""

# start_server [VAR=VALUE...]: the server on 127.0.0.1:$PORT, its state in
# memory unless a REGISTRY_STORAGE__* setting says otherwise (benchmarks never
# write data/), its log appended to $OUT/server.log; returns once it is ready.
start_server() {
    env REGISTRY_STORAGE__ENGINE=memory RUST_LOG=warn "$@" \
        "$server_bin" --bind "127.0.0.1:$PORT" >>"$OUT/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do
        curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && return
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "the server did not start; see $OUT/server.log" >&2
    exit 1
}

# stop_server: SIGTERM, up to 30 s for a clean stop (the embedded engine
# compacts its file), then SIGKILL.
stop_server() {
    local pid=$server_pid
    server_pid=""
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    echo "the server ($pid) did not stop in 30 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# median: of the numbers on standard input, one a line.
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
