#!/usr/bin/env bash
# The soak: 200 concurrent echo calls for 10 minutes against a release `handset` server, driven
# by `handset-sim --scenario long` (each caller says "hello world" every 5.3 s and hears it
# echoed). Not part of `cargo test`: it takes the whole 10 minutes and about one core.
#
# It builds release, starts the server (JSON logs), samples the server's RSS from /proc every
# 10 s, runs the simulator with --server-pid, stops the server with SIGTERM, then checks and
# prints:
#   - RSS flat within 5 %: mean of the first minute after the ramp vs mean of the last minute;
#   - zero lost frames: every caller frame the simulator sent reached the engine in time (sum
#     of the server's per-call media_in = the simulator's frames sent; frames that arrive after
#     their playout time are counted `late`, and media_in + late must equal frames sent in any
#     case), no inbound frame dropped ("WS input dropped"), and the callers' playback never
#     underran;
#   - zero call failures (simulator) and as many "WS stop" lines as calls;
#   - zero panics in the server log.
# Exit status 0 only when every check passes.
#
# Knobs (environment): SOAK_CALLS (200), SOAK_DURATION (600 s), SOAK_RAMP (10 s),
# SOAK_PORT (3217), SOAK_OUT (soak-report), CARGO_TARGET_DIR (target).
set -euo pipefail

CALLS=${SOAK_CALLS:-200}
DURATION=${SOAK_DURATION:-600}
RAMP=${SOAK_RAMP:-10}
PORT=${SOAK_PORT:-3217}
OUT=${SOAK_OUT:-soak-report}
TOKEN=soak-token

cd "$(dirname "$0")/.."
cargo build --release --locked -p handset-shell -p handset-sim --bin handset --bin handset-sim
BIN="${CARGO_TARGET_DIR:-target}/release/handset"
SIM="${CARGO_TARGET_DIR:-target}/release/handset-sim"

rm -rf "$OUT"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

TWILIO_AUTH_TOKEN=$TOKEN PORT=$PORT BIND=127.0.0.1 PUBLIC_URL="http://127.0.0.1:$PORT" \
  DATA_DIR="$OUT/data" LOG_FORMAT=json DRAIN_TIMEOUT=5 \
  "$BIN" >"$OUT/server.log" 2>&1 &
SERVER=$!
SAMPLER=
cleanup() {
  [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null || true
  kill "$SERVER" 2>/dev/null || true
}
trap cleanup EXIT

for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null

START=$(date +%s)
(
  while kill -0 "$SERVER" 2>/dev/null; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$SERVER/status" 2>/dev/null || true)
    [ -n "$rss" ] && echo "$(($(date +%s) - START)) $rss" >>"$OUT/rss.txt"
    sleep 10
  done
) &
SAMPLER=$!

echo "soak: $CALLS calls for $DURATION s against pid $SERVER (port $PORT), output in $OUT"
SIM_STATUS=0
TWILIO_AUTH_TOKEN=$TOKEN "$SIM" \
  --target "handset=http://127.0.0.1:$PORT/webhook/incoming_call" --server-pid "$SERVER" \
  --scenario long --calls-each "$CALLS" --duration "$DURATION" --ramp "$RAMP" \
  --timeline-calls 1 --out "$OUT/sim" >"$OUT/sim.txt" 2>&1 || SIM_STATUS=$?

kill "$SAMPLER" 2>/dev/null || true
SAMPLER=
kill -TERM "$SERVER"
SERVER_STATUS=0
wait "$SERVER" || SERVER_STATUS=$?
trap - EXIT

python3 - "$OUT" "$CALLS" "$RAMP" "$DURATION" "$SIM_STATUS" "$SERVER_STATUS" <<'EOF'
import json, sys
out, calls, ramp, duration, sim_status, server_status = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
failures = []
def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)

# RSS: first minute after the ramp vs the last minute of calls.
samples = [tuple(map(float, l.split())) for l in open(f"{out}/rss.txt") if l.strip()]
end = ramp + duration
first = [kib for t, kib in samples if ramp + 10 <= t <= ramp + 70]
last = [kib for t, kib in samples if end - 60 <= t <= end]
if first and last:
    a, b = sum(first) / len(first), sum(last) / len(last)
    change = (b - a) / a * 100
    print(f"RSS first minute {a/1024:.1f} MiB ({len(first)} samples), last minute {b/1024:.1f} MiB ({len(last)} samples), change {change:+.2f} %; min {min(k for _, k in samples)/1024:.1f} max {max(k for _, k in samples)/1024:.1f} MiB")
    check(abs(change) <= 5.0, "RSS flat within 5 %")
else:
    check(False, "RSS samples in the first and last minute")

report = json.load(open(f"{out}/sim/report.json"))
g = report["groups"][0]
print(f"sim: calls {g['calls']}, failed {g['failed']}, frames sent {g['frames_sent']}, skipped {g['frames_skipped']}, send errors {g['send_errors']}, media received {g['media_received']}, underruns {g['underruns']}, malformed {g['malformed']}, interval error p50/p99/max {g['interval_error'].get('p50_ms')}/{g['interval_error'].get('p99_ms')}/{g['interval_error'].get('max_ms')} ms, server CPU {g['server'].get('cpu_percent')} %")
check(sim_status == 0, f"simulator exit status 0 (got {sim_status})")
check(g["calls"] == calls and g["failed"] == 0, "zero call failures")
check(g["underruns"] == 0, "zero playback underruns")
check(g["malformed"] == 0, "zero malformed server messages")
check(g["send_errors"] == 0, "zero simulator send errors")

stops, media_in, concealed, late, dropped_lines, panics, errors = 0, 0, 0, 0, 0, 0, 0
for line in open(f"{out}/server.log", errors="replace"):
    if "panicked" in line:
        panics += 1
    try:
        ev = json.loads(line)
    except ValueError:
        continue
    f = ev.get("fields", ev)
    msg = f.get("message")
    if ev.get("level") == "ERROR":
        errors += 1
    if msg == "WS stop":
        stops += 1
        media_in += int(f.get("media_in", 0))
        concealed += int(f.get("concealed", 0))
        late += int(f.get("late", 0))
    elif msg == "WS input dropped":
        dropped_lines += 1
print(f"server: WS stop {stops}, media_in {media_in}, concealed {concealed}, late {late}, 'WS input dropped' lines {dropped_lines}, ERROR lines {errors}, panics {panics}, exit status {server_status}")
check(stops == calls, f"every call ended on the server ({stops} of {calls})")
check(media_in + late == g["frames_sent"], f"every caller frame accounted for: taken in or counted late ({media_in} + {late} = {g['frames_sent']})")
check(media_in == g["frames_sent"], f"zero lost caller frames, none late (server media_in {media_in} = sim frames sent {g['frames_sent']})")
check(dropped_lines == 0, "no inbound frame dropped by the server")
check(panics == 0, "zero panics in the server log")
check(server_status == 0, "server exited 0 on SIGTERM")
print("SOAK PASSED" if not failures else f"SOAK FAILED: {len(failures)} check(s)")
sys.exit(1 if failures else 0)
EOF
