#!/usr/bin/env bash
# Third-party EventSource clients against the real server binary, as .ci/run
# calls it: builds the server, installs the clients pinned in
# tests/interop/package-lock.json (`npm ci`, from the npm registry), starts the
# server on a free loopback port with short timings (sse.retry 250ms,
# sse.keepalive 300ms, sse.replay "unacknowledged"), runs interop.mjs, stops
# the server, and exits non-zero on any failure. Needs Node 20 or later.
#
# Environment:
#   FLAP_SECONDS  how long two clients sharing an agentId are watched (default 5)
#   SERVER_BIN    another server binary to run instead of the one built here
#   FLAP_ONLY=1   only count the stream opens of two clients sharing an agentId
#                 (for a server that predates SPEC 10)
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/serve.sh

WORK=target/interop
mkdir -p "$WORK"
RETRY_MS=250
KEEPALIVE_MS=300

# A binary given from elsewhere (an older build, to compare) may not know the
# newer settings: it runs with its built-in defaults (an empty file instead of
# config/registry.toml) but the keepalive.
SETTINGS=("REGISTRY_SSE__KEEPALIVE=${KEEPALIVE_MS}ms")
ARGS=()
if [ -n "${SERVER_BIN:-}" ]; then
    : >"$WORK/empty.toml"
    ARGS+=(--config "$WORK/empty.toml")
else
    cargo build --quiet -p registry-server --bin registry-server
    SERVER_BIN=target/debug/registry-server
    SETTINGS+=(
        REGISTRY_STORAGE__ENGINE=memory
        "REGISTRY_SSE__RETRY=${RETRY_MS}ms"
        REGISTRY_SSE__REPLAY=unacknowledged
    )
fi
(cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)

LOG="$WORK/server.log"
serve_registry "$SERVER_BIN" "$LOG" "${SETTINGS[@]}" -- "${ARGS[@]}"

status=0
REGISTRY_URL="$BASE" RETRY_MS="$RETRY_MS" KEEPALIVE_MS="$KEEPALIVE_MS" \
    FLAP_SECONDS="${FLAP_SECONDS:-5}" FLAP_ONLY="${FLAP_ONLY:-0}" \
    node tests/interop/interop.mjs || status=$?
if registry_panicked "$LOG"; then
    status=1
fi
if [ "$status" -ne 0 ]; then
    echo "server log ($LOG), last lines:" >&2
    tail -n 20 "$LOG" >&2
fi
exit "$status"
