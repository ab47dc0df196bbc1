# Sourced by the test scripts that drive the built server from outside
# (tests/schemathesis.sh, tests/interop/run.sh): the binary started on a free
# loopback port, its address read from its log, stopped on exit, and its log
# checked for panics afterwards.

# serve_registry BIN LOG [VAR=VALUE...] [-- ARG...]: starts BIN with the
# settings in its environment and the arguments after `--`, binding port 0 (the
# kernel picks a free port, the server logs which). Sets SERVER_PID and BASE
# (http://127.0.0.1:PORT); stops the server when the script exits.
serve_registry() {
    local bin=$1 log=$2
    shift 2
    local settings=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do
        settings+=("$1")
        shift
    done
    [ $# -gt 0 ] && shift
    env NO_COLOR=1 RUST_LOG="${RUST_LOG:-info}" "${settings[@]}" \
        "$bin" --bind 127.0.0.1:0 "$@" >"$log" 2>&1 &
    SERVER_PID=$!
    trap stop_registry EXIT

    BASE=""
    for _ in $(seq 100); do
        BASE=$(grep -o 'listening on http://[0-9.:]*' "$log" | head -n 1 | sed 's/^listening on //' || true)
        [ -n "$BASE" ] && break
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "the server exited at start:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
    if [ -z "$BASE" ]; then
        echo "the server did not start listening within 10 s:" >&2
        cat "$log" >&2
        exit 1
    fi
    echo "server at $BASE (pid $SERVER_PID, log $log)"
}

stop_registry() {
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID"
        wait "$SERVER_PID" || true
    fi
}

# registry_panicked LOG: true, with the panic printed, when the server's log shows one.
registry_panicked() {
    if grep -q "thread '.*' panicked at" "$1"; then
        echo "the server panicked during the run:" >&2
        grep -A5 'panicked' "$1" >&2
        return 0
    fi
    return 1
}
