#!/usr/bin/env bash
# Churn and stalled-reader figures: builds the release server and the churn
# client, starts the server on a free loopback port, runs 10,000 stream cycles
# and 10,000 register-command-delete cycles, then a reader that stops reading,
# and prints the server's resident memory and what was left behind. Stops the
# server by its PID. Usage: bash bench/churn.sh [CYCLES]
set -euo pipefail
cd "$(dirname "$0")/.."

cycles=${1:-10000}
cargo build --release -q -p registry-server -p registry-bench --bin registry-server --bin churn
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
RUST_LOG=warn REGISTRY_STORAGE__ENGINE=memory target/release/registry-server --bind "127.0.0.1:$port" &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do sleep 0.05; done
target/release/churn --server "127.0.0.1:$port" --pid "$server" --cycles "$cycles"
