#!/usr/bin/env bash
# Connection flood against a release `handset` server: memory before, during and after, what
# MAX_CONNECTIONS refused, and whether a healthy call works afterwards. Not part of `cargo
# test` (it needs tens of thousands of descriptors and takes about a minute).
#
# It builds release, starts the server (JSON logs, defaults otherwise: MAX_CONNECTIONS is
# derived from the open-files limit), and then, twice in a row:
#   - opens FLOOD_CONNECTIONS TCP connections at once and holds them FLOOD_HOLD seconds, each
#     idle (FLOOD_MODE=idle) or having sent the first bytes of a request head and nothing more
#     (FLOOD_MODE=partial, which makes the server build its HTTP connection state);
#   - samples the server's VmRSS before, at the peak of the flood and FLOOD_SETTLE seconds
#     after the client closed everything; counts the connections answered 503;
# then runs one echo call with `handset-sim`, scrapes /metrics and stops the server.
# The client needs FLOOD_CONNECTIONS descriptors: the script raises `ulimit -n` to the hard
# limit. Prints one line per phase and the refusal counters; exit status 0 when the call
# after the floods succeeded.
#
# Knobs (environment): FLOOD_CONNECTIONS (15000), FLOOD_MODE (idle), FLOOD_HOLD (5 s),
# FLOOD_SETTLE (15 s: past the 10 s header timeout), FLOOD_PORT (3218), FLOOD_OUT
# (flood-report), CARGO_TARGET_DIR (target); any server variable (MAX_CONNECTIONS,
# MALLOC_ARENA_MAX, ...) is passed through.
set -euo pipefail

N=${FLOOD_CONNECTIONS:-15000}
MODE=${FLOOD_MODE:-idle}
HOLD=${FLOOD_HOLD:-5}
SETTLE=${FLOOD_SETTLE:-15}
PORT=${FLOOD_PORT:-3218}
OUT=${FLOOD_OUT:-flood-report}
TOKEN=flood-token

cd "$(dirname "$0")/.."
cargo build --release --locked -p handset-shell -p handset-sim --bin handset --bin handset-sim
BIN="${CARGO_TARGET_DIR:-target}/release/handset"
SIM="${CARGO_TARGET_DIR:-target}/release/handset-sim"
ulimit -n "$(ulimit -Hn)"

rm -rf "$OUT"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

TWILIO_AUTH_TOKEN=$TOKEN PORT=$PORT BIND=127.0.0.1 PUBLIC_URL="http://127.0.0.1:$PORT" \
  DATA_DIR="$OUT/data" LOG_FORMAT=json DRAIN_TIMEOUT=5 \
  "$BIN" >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT

for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null
grep -o '"max_connections":[0-9]*' "$OUT/server.log" || true

python3 - "$SERVER" "$PORT" "$N" "$MODE" "$HOLD" "$SETTLE" <<'EOF'
import os, socket, sys, time, selectors
pid, port, n, mode, hold, settle = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5]), float(sys.argv[6])

def rss_mib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")

def fds():
    return len(os.listdir(f"/proc/{pid}/fd"))

def healthz():
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    s.close()
    return data.split(b"\r\n", 1)[0].decode()

# Warm up: a few requests so the runtime's threads and buffers exist before "before".
for _ in range(20):
    healthz()
time.sleep(1)
before = rss_mib()
print(f"before: RSS {before:.1f} MiB, {fds()} open files")
for round_ in (1, 2):
    socks = []
    t0 = time.monotonic()
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
    # Wait until every connect completed (writable), then send the partial head if asked.
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_WRITE)
    pending = len(socks)
    while pending and time.monotonic() - t0 < 30:
        for key, _ in sel.select(timeout=1):
            sel.unregister(key.fileobj)
            pending -= 1
            if mode == "partial":
                try:
                    key.fileobj.send(b"GET /healthz HTTP/1.1\r\n")
                except OSError:
                    pass
    sel.close()
    opened = time.monotonic() - t0
    peak, peak_fds = rss_mib(), fds()
    deadline = time.monotonic() + hold
    while time.monotonic() < deadline:
        peak, peak_fds = max(peak, rss_mib()), max(peak_fds, fds())
        time.sleep(0.2)
    # Count the connections the server answered 503 (refused) or closed.
    refused = closed = 0
    for s in socks:
        try:
            data = s.recv(64)
            if data.startswith(b"HTTP/1.1 503"):
                refused += 1
            elif data == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    for s in socks:
        s.close()
    time.sleep(settle)
    after = rss_mib()
    print(f"flood {round_}: {n} connections ({mode}) opened in {opened:.1f} s; refused 503: {refused}, "
          f"closed otherwise: {closed}; peak: RSS {peak:.1f} MiB, {peak_fds} open files; {settle:.0f} s after: RSS {after:.1f} MiB, {fds()} open files; "
          f"/healthz: {healthz()}")
EOF

SIM_STATUS=0
TWILIO_AUTH_TOKEN=$TOKEN "$SIM" \
  --target "handset=http://127.0.0.1:$PORT/webhook/incoming_call" \
  --scenario single --duration 6 --out "$OUT/sim" >"$OUT/sim.txt" 2>&1 || SIM_STATUS=$?
echo "call after the floods: sim exit status $SIM_STATUS (details in $OUT/sim.txt)"
curl -fsS "http://127.0.0.1:$PORT/metrics" | grep -E '^handset_(open_connections|connections_refused_total|accept_errors_total|calls_started_total) '
echo "accept-failure log lines: $(grep -c 'accept failed' "$OUT/server.log" || true), refusal log lines: $(grep -c 'refusing connections' "$OUT/server.log" || true)"
kill -TERM "$SERVER"
wait "$SERVER" || true
trap - EXIT
exit "$SIM_STATUS"
