#!/usr/bin/env bash
# Calibrates `handset-sim --wire-capture`: a server that delays chosen frames by known amounts
# (examples/delay_server.rs) is measured by the simulator while the simulator is stopped for
# 30 ms of every 100 ms (SIGSTOP/SIGCONT), and the checker then requires that every frame's
# wire time lies inside the server's write window (the exact check), that every wire interval
# error equals the injected delay up to where inside their writes the two packets were stamped
# (plus 0.1 ms of the server's own schedule error), and that the simulator's own figures are
# visibly worse. A measurement, not a test: it needs the server to keep its 20 ms schedule
# (more than 5 % of intervals off schedule fails as too busy a machine).
#
# Needs tcpdump and root (or CAP_NET_RAW for tcpdump); as root it installs tcpdump with apt-get
# when missing. When `chrt` works, the simulator runs under SCHED_FIFO 10, the stop/continue
# loop under 20 and the server under 30.
#
# Usage: scripts/wire-calibration.sh
# Environment (all optional):
#   PORT=3190 OUT=wire-calibration     server port, output directory
#   PROFILE=release                     cargo profile for the two binaries (release or dev)
#   STOP_MS=30 PERIOD_MS=100            how long the simulator is stopped, and how often
#   CALLS=1                             concurrent calls
#   CHRT="chrt -f 10"                   priority wrapper
#   NO_BUILD=1                          use the binaries already built
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-3190}
OUT=${OUT:-wire-calibration}
PROFILE=${PROFILE:-release}
STOP_MS=${STOP_MS:-30}
PERIOD_MS=${PERIOD_MS:-100}
CALLS=${CALLS:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
if [ -z "${CHRT+x}" ]; then
    if chrt -f 10 true 2>/dev/null; then CHRT="chrt -f 10"; else CHRT=""; fi
fi

if ! command -v tcpdump >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing tcpdump"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tcpdump >/dev/null
    else
        echo "wire-calibration: tcpdump is missing; install it (apt-get install tcpdump) and run as root or give tcpdump CAP_NET_RAW" >&2
        exit 1
    fi
fi
if [ "$(id -u)" != 0 ] && ! getcap "$(command -v tcpdump)" 2>/dev/null | grep -q cap_net_raw; then
    echo "wire-calibration: tcpdump needs root or CAP_NET_RAW (e.g. sudo setcap cap_net_raw,cap_net_admin+eip $(command -v tcpdump))" >&2
    exit 1
fi

DIR=debug
[ "$PROFILE" = dev ] || DIR=$PROFILE
if [ -z "${NO_BUILD:-}" ]; then
    cargo build --locked --profile "$PROFILE" -p handset-sim
    cargo build --locked --profile "$PROFILE" --example delay_server
fi
SIM="$TARGET_DIR/$DIR/handset-sim"
SERVER_BIN="$TARGET_DIR/$DIR/examples/delay_server"
rm -rf "$OUT"
mkdir -p "$OUT"

echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (dirty)')"
echo "before: $(uptime)"
# The server above the stopper below (which is above the simulator): its schedule is the truth.
SERVER_CHRT=""
[ -z "$CHRT" ] || SERVER_CHRT="chrt -f 30"
# shellcheck disable=SC2086
$SERVER_CHRT "$SERVER_BIN" serve --port "$PORT" --log "$OUT/server.log" 2>"$OUT/server.err" &
SERVER=$!
STOPPER=""
cleanup() {
    [ -z "$STOPPER" ] || kill "$STOPPER" 2>/dev/null || true
    [ -z "${SIMPID:-}" ] || kill -CONT "$SIMPID" 2>/dev/null || true
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
    sleep 0.1
done

# The simulator: one `single` call of 10 s (the server sends 8 s of frames), captured on lo.
# shellcheck disable=SC2086
$CHRT "$SIM" --target "delay=http://127.0.0.1:$PORT/voice" --scenario single \
    --calls-each "$CALLS" --timeline-calls "$CALLS" --duration 10 \
    --wire-capture lo --out "$OUT" >"$OUT/sim.out" 2>"$OUT/sim.err" &
SIMPID=$!
# Starve it: stopped STOP_MS of every PERIOD_MS, from a loop at a higher priority than the
# simulator so the stops are on time. tcpdump is the simulator's child, not stopped.
STOP_S=$(printf '0.%03d' "$STOP_MS")
RUN_S=$(printf '0.%03d' "$((PERIOD_MS - STOP_MS))")
STOP_CHRT=""
[ -z "$CHRT" ] || STOP_CHRT="chrt -f 20"
# shellcheck disable=SC2016,SC2086
$STOP_CHRT bash -c 'while kill -STOP "$0" 2>/dev/null; do sleep "$1"; kill -CONT "$0" 2>/dev/null || exit 0; sleep "$2"; done' \
    "$SIMPID" "$STOP_S" "$RUN_S" &
STOPPER=$!
SIM_STATUS=0
wait "$SIMPID" || SIM_STATUS=$?
kill "$STOPPER" 2>/dev/null || true
kill -CONT "$SIMPID" 2>/dev/null || true
STOPPER=""
echo "after: $(uptime)"
if [ "$SIM_STATUS" != 0 ]; then
    echo "wire-calibration: handset-sim failed (exit $SIM_STATUS):" >&2
    cat "$OUT/sim.err" >&2
    exit 1
fi
grep -E '^\|' "$OUT/sim.out" | head -4
"$SERVER_BIN" check --log "$OUT/server.log" --report "$OUT/report.json"
