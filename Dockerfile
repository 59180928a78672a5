# Handset container image: a Rust builder stage and a small Debian runtime stage.
#
#   docker build -t handset:0.1.0 --build-arg HANDSET_BUILD_COMMIT=$(git rev-parse --short HEAD) .
#   docker run --rm -p 127.0.0.1:3000:3000 --stop-timeout 930 handset:0.1.0
#
# Needs BuildKit (Docker 23+ uses it by default) or Podman/Buildah for the cache mounts. There is
# deliberately no `# syntax=` line: that would pull the Dockerfile frontend image from a
# registry, and the built-in frontend understands everything used here.
#
# Build arguments:
#   RUST_IMAGE           the builder's base (default rust:1-slim-bookworm).
#   RUNTIME_BASE         the runtime's base (default debian:bookworm-slim). Any Debian bookworm
#                        root file system with bash, coreutils and passwd will do, for example a
#                        local image made with debootstrap (scripts/container-smoke.sh).
#   BINARY_SOURCE        the stage or image the binary is copied from, at /out/handset (default
#                        `builder`, the stage below). Point it at an image that already holds a
#                        binary built for bookworm's glibc to skip the Rust build.
#   HANDSET_BUILD_COMMIT the commit `/version` reports (compiled in; empty leaves it to the
#                        BUILD_COMMIT variable at run time).
#
# `docker stop` waits only 10 s before SIGKILL; Handset drains live calls for up to
# DRAIN_TIMEOUT (900 s by default), so stop it with `docker stop -t 930` or run it with
# `--stop-timeout 930` (Kubernetes: terminationGracePeriodSeconds, see deploy/kubernetes/).

ARG RUST_IMAGE=rust:1-slim-bookworm
ARG RUNTIME_BASE=debian:bookworm-slim
ARG BINARY_SOURCE=builder

# ---------------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# Only what the workspace needs to build: the root package declares the tests, benches and
# examples (cargo reads their paths), and the simulator embeds tests/data/hello-world.ulaw.
COPY Cargo.toml Cargo.lock ./
COPY engine engine
COPY shell shell
COPY tests tests
COPY benches benches
COPY examples examples
ARG HANDSET_BUILD_COMMIT=""
# The registry and target directories are cache mounts, so a rebuild after a source change
# recompiles only Handset's own crates. The binary is copied out of the cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eu; \
    if [ -z "${HANDSET_BUILD_COMMIT}" ]; then unset HANDSET_BUILD_COMMIT; fi; \
    cargo build --release --locked -p handset-shell; \
    mkdir -p /out; \
    cp target/release/handset /out/handset

# The binary's source: `builder` unless BINARY_SOURCE names another stage or image.
FROM ${BINARY_SOURCE} AS binary

# ---------------------------------------------------------------------------------------------
FROM ${RUNTIME_BASE} AS runtime
# A fixed numeric user, so Kubernetes' runAsNonRoot can check it without a user database.
# /data is DATA_DIR (the embedded SQLite database and the event logs) and belongs to that user.
RUN set -eu; \
    groupadd --gid 10001 handset; \
    useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin handset; \
    mkdir -p /data; \
    chown 10001:10001 /data; \
    chmod 0750 /data
COPY --from=binary /out/handset /usr/local/bin/handset

ENV PORT=3000 \
    BIND=0.0.0.0 \
    DATA_DIR=/data
EXPOSE 3000
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001

# Liveness without curl: bash's /dev/tcp sends a plain HTTP/1.0 request to /healthz on the
# loopback address and the check passes on a 200 status line. (It needs BIND to cover
# 127.0.0.1, as the default 0.0.0.0 does.) /healthz stays 200 while the server drains after
# SIGTERM, so a draining container is not reported unhealthy; readiness (/readyz) is for load
# balancers, not for this check.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PORT:-3000} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r _ status _ <&3 && [ \"$status\" = 200 ]"]

# SIGTERM starts the drain: /readyz turns 503, new streams are refused, live calls go on until
# they end or DRAIN_TIMEOUT passes, then the process exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/handset"]
CMD ["serve"]
