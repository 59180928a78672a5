#!/usr/bin/env bash
# Builds the release binary, starts a fresh Handset server (echo agent), runs
# `handset-sim --scenario capacity` against it and prints the summary. The server and the
# simulator both run under `chrt -f 10` (SCHED_FIFO; needs root or CAP_SYS_NICE) when
# available, as in benches/README.md; set CHRT= to run them under the default scheduler.
# The server runs differently: its engine threads under SCHED_FIFO 20 and its socket writer at
# 19 (ENGINE_REALTIME_PRIORITY=20), the rest (socket reads, HTTP, the store) on the default
# scheduler, as in production. Running the whole server real-time instead lets a busy second
# (a ramp of new calls) spend the kernel's real-time budget (95 % of each second), after which
# every real-time thread on that core is stopped for the rest of the second: a 50 ms hole in
# every call's audio. Set ENGINE_RT=0 to run the whole server under CHRT instead. The server
# also holds the CPUs out of deep idle (ENGINE_CPU_LATENCY_US=0): on this kind of virtual
# machine a halted vCPU takes up to several milliseconds to wake (cyclictest shows it).
# SERVER_CPUS and SIM_CPUS pin each process to a CPU list (taskset); pinned to one CPU, the
# server runs one engine worker and one tokio worker (both follow the CPUs it may use).
#
# Usage: scripts/capacity.sh [extra `handset-sim` flags...]
# Environment (all optional):
#   SCENARIO=capacity                                   another scenario runs against the same
#                                                         server set-up, e.g. SCENARIO=barge-in
#                                                         with --calls-each 400
#   START=200 STEP=200 MAX=1400 HOLD=8 RAMP_RATE=100   the capacity steps
#   PORT=3117 OUT=cap-report                            server port, report directory
#   CARGO_TARGET_DIR                                    where the release binary is built
#   CHRT="chrt -f 10"                                   priority wrapper for both processes
#   SERVER_ENV="ENGINE_WORKERS=2"                       extra environment for the server
#   SERVER_CPUS=0 SIM_CPUS=1                            pin the server / simulator (taskset -c)
#   CPU_LATENCY_US=0                                    the server's ENGINE_CPU_LATENCY_US
#                                                         (CPU_LATENCY_US= for the kernel's idle)
#   ENGINE_RT=20                                        engine SCHED_FIFO priority (0 = off:
#                                                         the whole server under CHRT)
#   NO_BUILD=1                                          skip the release build
# The load average is printed before and after, since the machine may be shared.
set -euo pipefail
cd "$(dirname "$0")/.."

START=${START:-200}
STEP=${STEP:-200}
MAX=${MAX:-1400}
HOLD=${HOLD:-8}
RAMP_RATE=${RAMP_RATE:-100}
PORT=${PORT:-3117}
OUT=${OUT:-cap-report}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
if [ -z "${CHRT+x}" ]; then
    if chrt -f 10 true 2>/dev/null; then CHRT="chrt -f 10"; else CHRT=""; fi
fi
ENGINE_RT=${ENGINE_RT:-20}
CPU_LATENCY_US=${CPU_LATENCY_US-0}
SERVER_PIN=""
SIM_PIN=""
[ -z "${SERVER_CPUS:-}" ] || SERVER_PIN="taskset -c $SERVER_CPUS"
[ -z "${SIM_CPUS:-}" ] || SIM_PIN="taskset -c $SIM_CPUS"
if [ "$ENGINE_RT" -gt 0 ]; then SERVER_CHRT=""; else SERVER_CHRT=$CHRT; fi

# NO_BUILD=1 uses the binary already built.
[ -n "${NO_BUILD:-}" ] || cargo build --release --locked -p handset-shell -p handset-sim
BIN="$TARGET_DIR/release/handset"
SIM="$TARGET_DIR/release/handset-sim"
DATA=$(mktemp -d)
# Many sockets: two per call on the server side and the simulator's side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (dirty)')"
echo "before: $(uptime)"
echo "server: cpus ${SERVER_CPUS:-any}, engine SCHED_FIFO ${ENGINE_RT}, rest ${SERVER_CHRT:-default scheduler}, CPU wake-up latency ${CPU_LATENCY_US:-kernel default} us; simulator: cpus ${SIM_CPUS:-any}, ${CHRT:-default scheduler}"
# shellcheck disable=SC2086
env PUBLIC_URL="http://127.0.0.1:$PORT" TWILIO_AUTH_TOKEN=simtoken DATA_DIR="$DATA" RUST_LOG=warn \
    ENGINE_REALTIME_PRIORITY="$ENGINE_RT" ENGINE_CPU_LATENCY_US="$CPU_LATENCY_US" ${SERVER_ENV:-} $SERVER_PIN $SERVER_CHRT "$BIN" serve --port "$PORT" --bind 127.0.0.1 >"$DATA/server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
    sleep 0.1
done

# shellcheck disable=SC2086
TWILIO_AUTH_TOKEN=simtoken $SIM_PIN $CHRT "$SIM" \
    --target "handset=http://127.0.0.1:$PORT/webhook/incoming_call" --server-pid "$SERVER" \
    --scenario "${SCENARIO:-capacity}" --capacity-start "$START" --capacity-step "$STEP" --capacity-max "$MAX" \
    --capacity-hold "$HOLD" --ramp-rate "$RAMP_RATE" --out "$OUT" "$@"
echo "after: $(uptime)"
# Where a late frame lost its time, over the whole run (cumulative buckets, seconds): the
# engine's release after the pacer deadline, then the bytes handed to the kernel; and how long
# each engine wake-up worked.
if command -v curl >/dev/null 2>&1; then
    curl -fsS "http://127.0.0.1:$PORT/metrics" |
        grep -E '^handset_(outbound_(write_)?lateness|engine_wakeup_busy)_seconds_(bucket|count)' || true
fi
echo "report: $OUT/report.md, server log: $DATA/server.log"
