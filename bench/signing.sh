#!/usr/bin/env bash
# What signing costs a fleet push (SPEC 12): the release server with
# signing.enabled = true and = false, run by turns, each time N agents
# registered, N streams opened and PUSHES timed fleet pushes sent, measured by
# the load generator as bench/compare.sh measures them (in memory, never data/).
# Prints, for each, the fleet push's p50, p99 and 100% (all streams reached),
# medians over every push of every run; raw results under $OUT.
#
#   bench/signing.sh              N = 19,000, 3 runs of each, 3 pushes a run (~6 minutes)
#   QUICK=1 bench/signing.sh      N = 500, 1 run of each (< 1 minute once built)
#
# The cost per command, without the network, is the criterion bench:
#   cargo bench -p registry-bench --bench signing
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    AGENTS=${AGENTS:-500} RUNS=${RUNS:-1} PUSHES=${PUSHES:-3} SETTLE_MS=${SETTLE_MS:-200}
else
    AGENTS=${AGENTS:-19000} RUNS=${RUNS:-3} PUSHES=${PUSHES:-3} SETTLE_MS=${SETTLE_MS:-1000}
fi
PAYLOAD_BYTES=${PAYLOAD_BYTES:-128}
PORT=${PORT:-18095}
OUT=${OUT:-$root/target/bench-signing/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/signed" "$OUT/unsigned"
OUT="$(cd "$OUT" && pwd)"
server_bin=$root/target/release/registry-server
loadgen=$root/target/release/loadgen

source "$root/bench/lib.sh"

cleanup() { [[ -n $server_pid ]] && stop_server; return 0; }
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building the release server and load generator"
cargo build --release -q -p registry-server -p registry-bench

for run in $(seq "$RUNS"); do
    # By turns, so that the machine's noise falls on both alike.
    for mode in signed unsigned; do
        enabled=true
        [[ $mode == unsigned ]] && enabled=false
        log "N = $AGENTS, $mode, run $run of $RUNS"
        start_server REGISTRY_SIGNING__ENABLED="$enabled"
        timeout --kill-after=10 600 "$loadgen" registry --url "http://127.0.0.1:$PORT" \
            --server-pid "$server_pid" -n "$AGENTS" --pushes "$PUSHES" --settle-ms "$SETTLE_MS" \
            --payload-bytes "$PAYLOAD_BYTES" --out "$OUT/$mode/run-$run.json" >/dev/null
        stop_server
    done
done

for mode in signed unsigned; do
    echo "### $mode, N = $AGENTS, $RUNS run(s) x $PUSHES fleet pushes, payload $PAYLOAD_BYTES bytes"
    "$loadgen" report "$OUT/$mode" | grep -E "fleet push reaches|arrivals / streams" \
        | cut -d'|' -f2,3
done | tee "$OUT/summary.md"
log "raw results: $OUT"
