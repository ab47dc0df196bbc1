#!/usr/bin/env bash
# The storage engines side by side: `embedded` (a redb file in a temporary
# folder, never data/) beside `memory`, on the release server, measuring
#   - registration throughput: N agents registered by 64 concurrent clients;
#   - a fleet command to N agents: the time of the 202 (the command is on disk
#     before it, with embedded);
#   - heartbeats per second: wrk -t2 -c64 over the N agents, as compare.sh does;
# then, with embedded, the file's size after 1,000,000 commands have come and
# gone (1,000 agents, 1,000 fleet commands, each expired and dropped 1 s later):
# while running, and after a clean stop (which compacts it).
#
#   bench/storage.sh               N = 19,000, 3 runs of each engine, wrk 10 s (~5 minutes)
#   QUICK=1 bench/storage.sh       N = 1,000, 1 run, wrk 2 s, 20,000 commands
#
# Prints a markdown table of medians; raw output under $OUT. Everything it
# starts it stops, by PID. Needs wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    AGENTS=${AGENTS:-1000} RUNS=${RUNS:-1} WRK_SECONDS=${WRK_SECONDS:-2}
    CHURN_AGENTS=${CHURN_AGENTS:-100} CHURN_PUSHES=${CHURN_PUSHES:-200}
else
    AGENTS=${AGENTS:-19000} RUNS=${RUNS:-3} WRK_SECONDS=${WRK_SECONDS:-10}
    CHURN_AGENTS=${CHURN_AGENTS:-1000} CHURN_PUSHES=${CHURN_PUSHES:-1000}
fi
PORT=${PORT:-18090}
OUT=${OUT:-$root/target/bench-storage/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
server_bin=$root/target/release/registry-server
loadgen=$root/target/release/loadgen
url=http://127.0.0.1:$PORT

source "$root/bench/lib.sh"

cleanup() { [[ -n $server_pid ]] && stop_server; return 0; }
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v wrk >/dev/null || apt-get install -y -qq wrk >&2
log "building the release server and load generator"
cargo build --release -q -p registry-server -p registry-bench

for engine in memory embedded; do
    for run in $(seq "$RUNS"); do
        log "$engine, run $run of $RUNS"
        file=$OUT/$engine-$run.redb
        start_server REGISTRY_STORAGE__ENGINE="$engine" REGISTRY_STORAGE__PATH="$file"
        # registration: loadgen prints "N registered, 0 failed in S s"
        "$loadgen" register --url "$url" -n "$AGENTS" --id-prefix wrk- 2>"$OUT/register-$engine-$run.txt"
        awk '/registered/ && $(NF-1) > 0 {print $1 / $(NF-1)}' "$OUT/register-$engine-$run.txt" >>"$OUT/register-$engine"
        # a fleet command to every agent, three times; the median of the three
        for _ in 1 2 3; do
            curl -s -o /dev/null -w '%{time_total}\n' -X POST -H 'Content-Type: application/json' \
                -d '{"type": "config-update", "payload": {"level": "debug"}}' "$url/api/v1/agents/commands"
        done | median >>"$OUT/fleet-$engine"
        WRK_AGENTS=$AGENTS wrk -t2 -c64 -d"${WRK_SECONDS}s" -s bench/wrk/heartbeat.lua "$url" \
            >"$OUT/wrk-$engine-$run.txt"
        awk '/Requests\/sec/ {print $2}' "$OUT/wrk-$engine-$run.txt" >>"$OUT/heartbeats-$engine"
        stop_server
    done
done

log "embedded: $((CHURN_AGENTS * CHURN_PUSHES)) commands come and gone"
file=$OUT/churn.redb
start_server REGISTRY_STORAGE__ENGINE=embedded REGISTRY_STORAGE__PATH="$file" REGISTRY_COMMANDS__EXPIRY=1s REGISTRY_COMMANDS__RETENTION=1s
"$loadgen" register --url "$url" -n "$CHURN_AGENTS" --id-prefix churn- 2>>"$OUT/churn.txt"
peak=0
for push in $(seq "$CHURN_PUSHES"); do
    curl -sf -o /dev/null -X POST -H 'Content-Type: application/json' \
        -d '{"type": "config-update", "payload": {"level": "debug", "note": "a command of about a hundred bytes of payload, as a config update might be"}}' \
        "$url/api/v1/agents/commands"
    if ((push % 50 == 0)); then
        size=$(stat -c %s "$file")
        ((size > peak)) && peak=$size
        echo "$push $size" >>"$OUT/churn-sizes"
    fi
done
# every command expired (1 s) and dropped (1 s more), and written behind
until curl -s "$url/api/v1/agents/churn-000000/commands" | grep -qx '\[\]'; do sleep 0.5; done
sleep 1
running=$(stat -c %s "$file")
((running > peak)) && peak=$running
stop_server
stopped=$(stat -c %s "$file")

mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
row() {
    local what=$1 unit=$2 memory embedded
    memory=$(median <"$OUT/$what-memory")
    embedded=$(median <"$OUT/$what-embedded")
    printf '| %s | %s | %s | %s |\n' "$unit" "$memory" "$embedded" \
        "$(awk -v m="$memory" -v e="$embedded" 'BEGIN {printf "%.2fx", e / m}')"
}
{
    echo
    echo "Storage engines, $AGENTS agents, medians of $RUNS runs ($(nproc) cores):"
    echo
    echo "| measure | memory | embedded | embedded / memory |"
    echo "| --- | --- | --- | --- |"
    row register "registrations per second (64 clients)"
    row fleet "fleet command to $AGENTS agents, seconds to the 202"
    row heartbeats "heartbeats per second (wrk -t2 -c64)"
    echo
    echo "File after $((CHURN_AGENTS * CHURN_PUSHES)) commands came and went ($CHURN_AGENTS agents):" \
        "at most $(mib "$peak") while running, $(mib "$running") once all were dropped," \
        "$(mib "$stopped") after a clean stop."
    echo
    # Reuse shows as a file that stops growing once drops keep pace with pushes.
    quarter() { awk -v q="$1" -v n="$CHURN_PUSHES" '$1 >= q * n / 4 {print $2; exit}' "$OUT/churn-sizes"; }
    echo "The file as the commands came and went: $(mib "$(quarter 1)") after a quarter of them," \
        "$(mib "$(quarter 2)") after half, $(mib "$(quarter 3)") after three quarters," \
        "$(mib "$(quarter 4)") after all."
} | tee "$OUT/table.md"
