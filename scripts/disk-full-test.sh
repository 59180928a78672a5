#!/usr/bin/env bash
# The disk-full test: the real `handset` binary with DATA_DIR on a small tmpfs that fills up and
# is freed again (tests/disk_full.rs says what is checked: 500 and nothing torn while full,
# /healthz and /readyz degraded, recovery on its own, every acknowledged callback stored after
# a SIGKILL and a restart).
#
#   bash scripts/disk-full-test.sh
#
# In order:
#   1. builds `handset` (debug) and the test;
#   2. mounts a 16 MiB tmpfs on a fresh temporary directory: with `mount -t tmpfs` as root, else
#      in a user and mount namespace of its own (`unshare -rm`, for a user who is not root), else
#      stops with a message saying what is missing;
#   3. runs `cargo test --test disk_full -- --ignored` with DISK_FULL_DIR (the mount point) and
#      HANDSET_BIN; the test prints what it measured (acknowledged, refused, stored, time to
#      recover);
#   4. always unmounts and removes the mount point (trap; a namespace's mount goes with it).
#
# Nothing is written inside the git tree but cargo's target directory. Takes under a minute
# after the build. DISK_FULL_SIZE (default 16m, at least 8m: the test leaves 6 MiB free) sets
# the tmpfs size.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
size=${DISK_FULL_SIZE:-16m}
say() { echo "disk-full-test: $*" >&2; }

say "building handset and the test"
handset_bin="$(cargo build --locked -p handset-shell --bin handset --message-format=json-render-diagnostics |
  sed -n 's/.*"executable":"\([^"]*\/handset\)".*/\1/p' | tail -n 1)"
if [ ! -x "$handset_bin" ]; then
  say "cannot find the built handset binary"
  exit 1
fi
cargo test --locked --test disk_full --no-run

mnt="$(mktemp -d /tmp/handset-disk-full.XXXXXX)"
mounted=""
cleanup() {
  local status=$?
  if [ -n "$mounted" ]; then
    umount "$mnt" || say "cannot unmount $mnt"
  fi
  rmdir "$mnt" 2>/dev/null || true
  if [ "$status" = 0 ]; then
    say "passed in $((SECONDS - started)) s"
  else
    say "FAILED (exit $status) after $((SECONDS - started)) s"
  fi
  exit "$status"
}
trap cleanup EXIT

test_cmd=(cargo test --locked --test disk_full -- --ignored --nocapture --test-threads=1)

if [ "$(id -u)" = 0 ] && mount -t tmpfs -o "size=$size,mode=0700" handset-disk-full "$mnt" 2>/dev/null; then
  mounted=1
  say "tmpfs of $size on $mnt"
  DISK_FULL_DIR="$mnt" HANDSET_BIN="$handset_bin" "${test_cmd[@]}"
elif unshare -rm true 2>/dev/null; then
  say "tmpfs of $size on $mnt, in a user and mount namespace (unshare -rm)"
  # The mount lives and dies with the namespace: nothing to unmount afterwards.
  DISK_FULL_DIR="$mnt" HANDSET_BIN="$handset_bin" DISK_FULL_SIZE="$size" \
    unshare -rm bash -c 'mount -t tmpfs -o "size=$DISK_FULL_SIZE,mode=0700" handset-disk-full "$DISK_FULL_DIR" && exec "$@"' \
    disk-full "${test_cmd[@]}"
else
  say "cannot mount a tmpfs: run as root (mount -t tmpfs), or allow unprivileged user namespaces (unshare -rm; e.g. sysctl kernel.unprivileged_userns_clone=1 or kernel.apparmor_restrict_unprivileged_userns=0)"
  exit 1
fi
