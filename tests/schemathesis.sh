#!/usr/bin/env bash
# Property-based fuzz run of the HTTP API against its own OpenAPI document
# (GET /api/v1/openapi.json) with schemathesis, as .ci/run calls it: builds the
# server, starts it with its defaults on a free loopback port, runs every
# schemathesis check (no 5xx; status code, content type, headers and body as
# documented; invalid input refused, valid input accepted) for a bounded number
# of examples per operation, stops the server, and exits non-zero on any failure.
#
# Schemathesis is installed from PyPI into a virtualenv under target/ the first
# time (or with `pip install --user` where venv is unavailable).
#
# Environment:
#   SCHEMATHESIS_EXAMPLES  examples per operation and phase (default 100)
#   SCHEMATHESIS_SEED      replay the run that printed this seed
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/serve.sh

SCHEMATHESIS_VERSION="4.32.5"
EXAMPLES="${SCHEMATHESIS_EXAMPLES:-100}"
ROOT=$(pwd)
# Schemathesis keeps its cache (failures to replay first next time) in its working directory.
WORK="$ROOT/target/schemathesis"
VENV="$ROOT/target/schemathesis-venv"
# The stream never ends while it is open; its own run below covers its other answers.
EVENTS="/api/v1/agents/{agent_id}/events"
# The fleet stream is open for any operator, so it has no answer but a stream
# that stays open: tests/api/fleet.rs covers it.
FLEET_EVENTS="/api/v1/events"
mkdir -p "$WORK"

# --- schemathesis -------------------------------------------------------------
st_installed() {
    "$@" --version 2>/dev/null | grep -q "version $SCHEMATHESIS_VERSION\$"
}
if st_installed "$VENV/bin/python" -m schemathesis.cli; then
    ST=("$VENV/bin/python" -m schemathesis.cli)
elif st_installed python3 -m schemathesis.cli; then
    ST=(python3 -m schemathesis.cli)
else
    echo "installing schemathesis $SCHEMATHESIS_VERSION"
    if rm -rf "$VENV" && python3 -m venv "$VENV" 2>"$WORK/venv.log"; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            "schemathesis==$SCHEMATHESIS_VERSION"
        ST=("$VENV/bin/python" -m schemathesis.cli)
    else
        echo "python3 -m venv is unavailable ($(tail -n 1 "$WORK/venv.log")); using pip install --user"
        rm -rf "$VENV"
        python3 -m pip install --quiet --disable-pip-version-check --user \
            "schemathesis==$SCHEMATHESIS_VERSION" ||
            python3 -m pip install --quiet --disable-pip-version-check --user \
                --break-system-packages "schemathesis==$SCHEMATHESIS_VERSION"
        ST=(python3 -m schemathesis.cli)
    fi
fi

# --- the server ---------------------------------------------------------------
cargo build --quiet -p registry-server --bin registry-server
LOG="$WORK/server.log"
serve_registry target/debug/registry-server "$LOG"

# --- the fuzz run -------------------------------------------------------------
SEED_ARGS=()
if [ -n "${SCHEMATHESIS_SEED:-}" ]; then
    SEED_ARGS=(--seed "$SCHEMATHESIS_SEED")
fi
PASSED=0
FAILED=0
# Runs schemathesis with the arguments given, adding its test cases to PASSED and FAILED.
fuzz() {
    local log="$WORK/run-$1.log"
    shift
    local status=0
    # A response that never comes fails the run instead of hanging it.
    (cd "$WORK" && timeout 300 "${ST[@]}" run "$BASE/api/v1/openapi.json" \
        --url "$BASE" \
        --checks all \
        --max-examples "$EXAMPLES" \
        --request-timeout 10 \
        --generation-database none \
        --no-color \
        "${SEED_ARGS[@]}" \
        "$@") 2>&1 | tee "$log" || status=$?
    # Its summary says `N generated, N passed`, or `N generated, K found M unique failures`.
    local cases passed failed
    cases=$(grep -A1 '^Test cases:' "$log" | tail -n 1 || true)
    passed=$(grep -o '[0-9]* passed' <<<"$cases" | grep -o '[0-9]*' || echo 0)
    failed=$(grep -o '[0-9]* unique failure' <<<"$cases" | grep -o '^[0-9]*' || echo 0)
    if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
        failed=1
    fi
    PASSED=$((PASSED + passed))
    FAILED=$((FAILED + failed))
    return "$status"
}
status=0
# First, on the fresh server where no agent exists yet, the stream's route: every
# request to it is then a 400 or 404 problem, never a stream that stays open (and
# no link leads to it, so it has no stateful phase).
echo "== $EVENTS, before any agent exists"
fuzz events --include-path "$EVENTS" --phases examples,coverage,fuzzing || status=1
echo "== every other operation"
fuzz api --exclude-path "$EVENTS" --exclude-path "$FLEET_EVENTS" || status=1

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "the server died during the run:" >&2
    status=1
fi
if registry_panicked "$LOG"; then
    status=1
fi
if [ "$status" -ne 0 ]; then
    echo "server log ($LOG), last lines:" >&2
    tail -n 20 "$LOG" >&2
    [ "$FAILED" -gt 0 ] || FAILED=1
fi
echo "schemathesis: $PASSED passed, $FAILED failed"
exit "$status"
