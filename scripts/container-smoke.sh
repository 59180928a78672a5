#!/usr/bin/env bash
# Builds the Handset container image with Podman from local parts only, runs it, and checks it
# from the outside: /healthz, /readyz and /version answer, the process runs as a non-root user,
# the image's HEALTHCHECK passes, a bad configuration exits 2, and `podman stop` (SIGTERM) with
# two simulated calls live drains them for DRAIN_TIMEOUT and ends with status 0.
#
# Not run by CI (.ci/run): it needs root, Podman, a few minutes and a Debian mirror. Run it by
# hand after changing the Dockerfile:
#
#   apt-get install podman buildah debootstrap      # once
#   bash scripts/container-smoke.sh
#
# No container registry is needed. The Dockerfile's defaults (rust:1-slim-bookworm,
# debian:bookworm-slim) would be pulled from one, so this script substitutes local parts:
#   - the runtime base (RUNTIME_BASE): a Debian bookworm minbase root file system made with
#     debootstrap from the same mirror apt uses, imported as localhost/handset-bookworm-minbase;
#   - the binary (BINARY_SOURCE): `cargo build --release --locked -p handset-shell` on this host
#     (a bookworm host, so the glibc matches), imported as an image holding /out/handset.
# The image is then built from the repository's Dockerfile, runtime stage, unchanged.
#
# Knobs (environment):
#   SMOKE_PORT (3391)       loopback port the container listens on (host network, BIND=127.0.0.1)
#   SMOKE_IMAGE (localhost/handset:smoke)
#   NO_BUILD=1              use the existing $CARGO_TARGET_DIR/release/handset (default target/)
#   SKIP_READYZ=1           do not require GET /readyz = 200 (for a binary from before /readyz)
#   SMOKE_CACHE             where the root file system is kept
#                           (default ${XDG_CACHE_HOME:-$HOME/.cache}/handset-container)
#   DEBIAN_MIRROR           default: the first Debian mirror in /etc/apt/sources.list*
#   SMOKE_RUNTIME           OCI runtime for podman (default: podman's, except runc when the
#                           cgroup v2 half of a hybrid cgroup setup has controllers, which crun
#                           refuses: "cgroups in hybrid mode not supported")
#
# Sandboxes: Podman's default container rlimits (nofile and nproc of about a million) cannot be
# set where the container manager may not raise hard limits ("setrlimit RLIMIT_NOFILE: Operation
# not permitted"), so every build and run here passes explicit --ulimit values of 4096.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${SMOKE_PORT:-3391}
IMAGE=${SMOKE_IMAGE:-localhost/handset:smoke}
CACHE=${SMOKE_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/handset-container}
TARGET=${CARGO_TARGET_DIR:-target}
BASE_IMAGE=localhost/handset-bookworm-minbase:latest
BINARY_IMAGE=localhost/handset-binary:smoke
NAME=handset-smoke-$$

step() { echo "== $*"; }
fail() {
    echo "container-smoke: FAILED: $*" >&2
    exit 1
}
for tool in podman debootstrap curl tar; do
    command -v "$tool" >/dev/null || fail "$tool is missing (apt-get install podman buildah debootstrap curl)"
done
[ "$(id -u)" = 0 ] || fail "run as root (debootstrap and rootful podman)"

RUNTIME=${SMOKE_RUNTIME:-}
if [ -z "$RUNTIME" ] && [ -r /sys/fs/cgroup/unified/cgroup.controllers ] \
    && grep -q . /sys/fs/cgroup/unified/cgroup.controllers; then
    command -v runc >/dev/null \
        || fail "hybrid cgroups with cgroup v2 controllers: crun cannot run here; apt-get install runc"
    RUNTIME=runc
fi
podman() {
    if [ -n "$RUNTIME" ]; then
        command podman --runtime "$RUNTIME" "$@"
    else
        command podman "$@"
    fi
}
ULIMITS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
echo "container-smoke: podman $(command podman --version | awk '{print $3}'), runtime ${RUNTIME:-default}"

cleanup() {
    podman rm -f --time 0 "$NAME" >/dev/null 2>&1 || true
    [ -n "${bindir:-}" ] && rm -rf "$bindir"
}
trap cleanup EXIT

# --- the binary -----------------------------------------------------------------------------------
if [ "${NO_BUILD:-0}" != 1 ]; then
    step "cargo build --release --locked -p handset-shell -p handset-sim"
    HANDSET_BUILD_COMMIT=${HANDSET_BUILD_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || true)} \
        cargo build --release --locked -p handset-shell -p handset-sim
fi
BIN="$TARGET/release/handset"
SIM="$TARGET/release/handset-sim"
[ -x "$BIN" ] || fail "$BIN not found (build it, or unset NO_BUILD)"
[ -x "$SIM" ] || fail "$SIM not found (build it, or unset NO_BUILD)"

# --- the runtime base: Debian bookworm minbase ------------------------------------------------------
if ! podman image exists "$BASE_IMAGE"; then
    if [ ! -f "$CACHE/rootfs/.complete" ]; then
        if [ -z "${DEBIAN_MIRROR:-}" ]; then
            DEBIAN_MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
                /etc/apt/sources.list.d/*.sources 2>/dev/null | sed 's/#.*//' \
                | grep -Eo 'https?://[^ ]+/debian/?' | grep -v security | head -n1 || true)
            DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
        fi
        step "debootstrap --variant=minbase bookworm from $DEBIAN_MIRROR"
        mkdir -p "$CACHE"
        rm -rf "$CACHE/rootfs.tmp"
        debootstrap --variant=minbase bookworm "$CACHE/rootfs.tmp" "$DEBIAN_MIRROR" \
            >"$CACHE/debootstrap.log" 2>&1 || fail "debootstrap failed, see $CACHE/debootstrap.log"
        # What a slim image leaves out: package caches and lists.
        rm -rf "$CACHE/rootfs.tmp"/var/cache/apt/archives/*.deb "$CACHE/rootfs.tmp"/var/lib/apt/lists/*
        rm -rf "$CACHE/rootfs"
        mv "$CACHE/rootfs.tmp" "$CACHE/rootfs"
        touch "$CACHE/rootfs/.complete"
    fi
    step "podman import the root file system as $BASE_IMAGE"
    tar --numeric-owner --exclude=./.complete -C "$CACHE/rootfs" -c . \
        | podman import --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
fi

# --- the binary as an image -------------------------------------------------------------------------
step "podman import $BIN as $BINARY_IMAGE (/out/handset)"
bindir=$(mktemp -d)
mkdir "$bindir/out"
cp "$BIN" "$bindir/out/handset"
tar --numeric-owner --owner=0 --group=0 -C "$bindir" -c out | podman import - "$BINARY_IMAGE" >/dev/null

# --- the image ----------------------------------------------------------------------------------------
step "podman build --target runtime (RUNTIME_BASE=$BASE_IMAGE, BINARY_SOURCE=$BINARY_IMAGE)"
# Docker format keeps HEALTHCHECK (the OCI image format has no field for it).
podman build "${ULIMITS[@]}" --pull=never --format docker --target runtime \
    --build-arg RUNTIME_BASE="$BASE_IMAGE" \
    --build-arg BINARY_SOURCE="$BINARY_IMAGE" \
    -t "$IMAGE" . || fail "podman build failed"
podman image inspect --format 'user={{.Config.User}} healthcheck={{.Config.Healthcheck.Test}} stopsignal={{.Config.StopSignal}} size={{.Size}}' "$IMAGE"

# --- configuration error: exit status 2 ---------------------------------------------------------------
step "bad configuration exits 2"
status=0
podman run "${ULIMITS[@]}" --rm --network none -e PUBLIC_URL=not-a-url "$IMAGE" >/dev/null 2>"$CACHE/bad-config.err" || status=$?
[ "$status" = 2 ] || fail "PUBLIC_URL=not-a-url exited $status, expected 2 ($(cat "$CACHE/bad-config.err"))"
grep -q "configuration error" "$CACHE/bad-config.err" || fail "no configuration error message on stderr"
echo "exit 2: $(grep -m1 "configuration error" "$CACHE/bad-config.err")"

# --- run it the way Kubernetes does: read-only root, tmpfs /tmp, volume on /data ---------------------
step "podman run (host network, 127.0.0.1:$PORT, read-only root file system)"
podman run "${ULIMITS[@]}" -d --name "$NAME" --network host --read-only --tmpfs /tmp \
    -e BIND=127.0.0.1 -e PORT="$PORT" -e DEPLOY_ID=container-smoke -e DRAIN_TIMEOUT=5 \
    "$IMAGE" >/dev/null
url="http://127.0.0.1:$PORT"
for _ in $(seq 1 50); do
    curl -fsS -o /dev/null "$url/healthz" 2>/dev/null && break
    sleep 0.2
done
check_get() { # path, expected status
    local code
    code=$(curl -sS -o "$CACHE/body" -w '%{http_code}' "$url$1") || code=000
    [ "$code" = "$2" ] || { podman logs "$NAME" >&2 || true; fail "GET $1 answered $code, expected $2"; }
    echo "GET $1 -> $code $(head -c 300 "$CACHE/body")"
}
check_get /healthz 200
if [ "${SKIP_READYZ:-0}" = 1 ]; then
    code=$(curl -sS -o /dev/null -w '%{http_code}' "$url/readyz" || true)
    echo "GET /readyz -> $code (not required: SKIP_READYZ=1)"
else
    check_get /readyz 200
fi
check_get /version 200
grep -q '"deploy_id":"container-smoke"' "$CACHE/body" || fail "/version does not show DEPLOY_ID"

uid=$(podman exec "$NAME" id -u)
pid=$(podman inspect --format '{{.State.Pid}}' "$NAME")
host_uid=$(awk '/^Uid:/{print $2}' "/proc/$pid/status")
echo "uid in the container: $uid; the server process (host pid $pid) runs as uid $host_uid"
[ "$uid" != 0 ] && [ "$host_uid" != 0 ] || fail "the server runs as root"
podman exec "$NAME" bash -c 'touch "$DATA_DIR/.w" && rm "$DATA_DIR/.w"' || fail "DATA_DIR is not writable"
if podman exec "$NAME" bash -c 'touch /usr/local/bin/x' 2>/dev/null; then
    fail "the root file system is writable despite --read-only"
fi
echo "DATA_DIR writable, root file system read-only"
podman healthcheck run "$NAME" || fail "the image's HEALTHCHECK failed"
echo "HEALTHCHECK: healthy"

# --- SIGTERM with live calls: drain, then exit 0 ---------------------------------------------------------
# Two simulated Twilio calls (the host's `handset-sim`) are live when `podman stop`
# sends SIGTERM. The server must keep them for DRAIN_TIMEOUT (5 s here), close them, and exit 0
# well before podman's 30 s SIGKILL.
step "podman stop (SIGTERM) with 2 live calls, DRAIN_TIMEOUT=5"
"$SIM" --target "handset=$url/webhook/incoming_call" --scenario long --calls-each 2 \
    --duration 60 --out "$CACHE/sim-report" >"$CACHE/sim.log" 2>&1 &
sim_pid=$!
active=0
for _ in $(seq 1 100); do
    active=$(curl -fsS "$url/healthz" 2>/dev/null | grep -o '"active_calls":[0-9]*' | cut -d: -f2 || true)
    [ "${active:-0}" -ge 2 ] && break
    sleep 0.2
done
[ "${active:-0}" -ge 2 ] || fail "the simulated calls did not start (see $CACHE/sim.log)"
echo "live calls before SIGTERM: $active"
start=$(date +%s%N)
podman stop --time 30 "$NAME" >/dev/null &
stop_pid=$!
if [ "${SKIP_READYZ:-0}" != 1 ]; then
    sleep 1
    code=$(curl -sS -o /dev/null -w '%{http_code}' "$url/readyz" || true)
    [ "$code" = 503 ] || fail "GET /readyz while draining answered $code, expected 503"
    code=$(curl -sS -o /dev/null -w '%{http_code}' "$url/healthz" || true)
    [ "$code" = 200 ] || fail "GET /healthz while draining answered $code, expected 200"
    echo "while draining: /readyz 503, /healthz 200"
fi
wait "$stop_pid"
took_ms=$((($(date +%s%N) - start) / 1000000))
kill "$sim_pid" 2>/dev/null || true
wait "$sim_pid" 2>/dev/null || true
code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
podman logs "$NAME" 2>&1 | grep -E "SIGTERM|drain|stopped|WS stop" | tail -n 8 || true
[ "$code" = 0 ] || fail "exit status after SIGTERM was $code, expected 0"
podman logs "$NAME" 2>&1 | grep -q "SIGTERM received" || fail "the log does not show SIGTERM received"
[ "$took_ms" -ge 4000 ] || fail "stopped after $took_ms ms: the live calls were not drained for DRAIN_TIMEOUT"
[ "$took_ms" -lt 25000 ] || fail "stopped after $took_ms ms: close to podman's SIGKILL"
echo "stopped by SIGTERM in ${took_ms} ms (DRAIN_TIMEOUT 5 s with live calls), exit status 0"
echo "container-smoke: all checks passed ($IMAGE)"
