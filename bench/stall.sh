#!/usr/bin/env bash
# Stalls (SPEC 13): heartbeat and /livez latency, p50, p99 and max, from a
# steady prober while the release server lists 100,000 agents, pushes a fleet
# command to them, and expires a million commands at once. Builds the release
# server and bench/src/bin/stall.rs, which starts a fresh server per scenario
# on a free loopback port, and stops it, by PID.
#
#   bash bench/stall.sh                        100,000 agents, 3 runs, memory engine (~3 minutes)
#   ENGINE=embedded bash bench/stall.sh        the same with the redb engine (files under target/)
#   AGENTS=10000 RUNS=1 bash bench/stall.sh    a quick look
#
# More flags go to stall (e.g. --scenarios list,push); prints a markdown table
# of medians, and keeps it with the per-run lines under target/bench-stall/.
set -euo pipefail
cd "$(dirname "$0")/.."

AGENTS=${AGENTS:-100000} RUNS=${RUNS:-3} ENGINE=${ENGINE:-memory}
out=target/bench-stall/$(date +%Y%m%d-%H%M%S)-$ENGINE
mkdir -p "$out"
cargo build --release -q -p registry-server -p registry-bench --bin registry-server --bin stall
echo "load before: $(uptime)" | tee "$out/runs.txt"
target/release/stall --server target/release/registry-server --agents "$AGENTS" --runs "$RUNS" \
    --engine "$ENGINE" --data "$out" "$@" 2>>"$out/runs.txt" | tee "$out/table.md"
echo "load after: $(uptime)" | tee -a "$out/runs.txt"
