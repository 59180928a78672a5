#!/usr/bin/env bash
# Builds the release binary, starts a fresh Handset server (echo agent), runs
# `handset sim --scenario capacity` against it and prints the summary. The server and the
# simulator both run under `chrt -f 10` (SCHED_FIFO; needs root or CAP_SYS_NICE) when
# available, as in benches/README.md; set CHRT= to run them under the default scheduler.
#
# Usage: scripts/capacity.sh [extra `handset sim` flags...]
# Environment (all optional):
#   START=200 STEP=200 MAX=1400 HOLD=8 RAMP_RATE=100   the capacity steps
#   PORT=3117 OUT=cap-report                            server port, report directory
#   CARGO_TARGET_DIR                                    where the release binary is built
#   CHRT="chrt -f 10"                                   priority wrapper for both processes
#   SERVER_ENV="ENGINE_WORKERS=2"                       extra environment for the server
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

# NO_BUILD=1 uses the binary already built.
[ -n "${NO_BUILD:-}" ] || cargo build --release --locked -p handset-shell
BIN="$TARGET_DIR/release/handset"
DATA=$(mktemp -d)
# Many sockets: two per call on the server side and the simulator's side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (dirty)')"
echo "before: $(uptime)"
# shellcheck disable=SC2086
env PUBLIC_URL="http://127.0.0.1:$PORT" TWILIO_AUTH_TOKEN=simtoken DATA_DIR="$DATA" RUST_LOG=warn \
    ${SERVER_ENV:-} $CHRT "$BIN" serve --port "$PORT" --bind 127.0.0.1 >"$DATA/server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
    sleep 0.1
done

# shellcheck disable=SC2086
TWILIO_AUTH_TOKEN=simtoken $CHRT "$BIN" sim \
    --target "handset=http://127.0.0.1:$PORT/webhook/incoming_call" --server-pid "$SERVER" \
    --scenario capacity --capacity-start "$START" --capacity-step "$STEP" --capacity-max "$MAX" \
    --capacity-hold "$HOLD" --ramp-rate "$RAMP_RATE" --out "$OUT" "$@"
echo "after: $(uptime)"
echo "report: $OUT/report.md, server log: $DATA/server.log"
