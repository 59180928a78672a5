#!/usr/bin/env bash
# The fleet test: two `handset` instances sharing one PostgreSQL database behind a real load
# balancer, driven through it the way Twilio drives them (tests/fleet/main.rs says what is checked).
#
#   bash scripts/fleet-test.sh
#
# In order:
#   1. finds haproxy, installing Debian's `haproxy` package if it is missing (and postgresql,
#      through scripts/postgres.sh);
#   2. starts a throwaway PostgreSQL cluster on a free loopback port (scripts/postgres.sh);
#   3. while that cluster is up, runs the store's own tests against PostgreSQL
#      (`cargo test -p handset-shell --lib -- store:: tokens::` with DATABASE_URL set: each test
#      creates a fresh database; without DATABASE_URL they run on SQLite in `cargo test`);
#   4. builds `handset` (debug) and runs `cargo test --test fleet -- --ignored` with
#      FLEET_DATABASE_URL (the cluster), HANDSET_BIN and HAPROXY_BIN. Each of its tests starts
#      two instances (`a`, `b`) and haproxy (round robin, WebSocket upgrades, /readyz checks)
#      on loopback ports: calls whose webhook and stream land on different instances, callbacks
#      stored once, a recording raced by both instances and done once, `kill -9` of the
#      instance holding a recording job, SIGTERM during live calls;
#   5. always stops and removes the cluster (trap) and exits non-zero if any step failed.
#
# Nothing is written inside the git tree but cargo's target directory; the cluster and the
# test's files live in temporary directories (a failed fleet test keeps its logs there and says
# where). Meant for a Debian machine, as root when packages must be installed (the cluster runs
# as the `postgres` system user). Takes 1 to 1.5 minutes after the build on two busy cores,
# most of it real-time calls and the 5 s recording lease. FLEET_SKIP_STORE_TESTS=1 skips step 3.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
say() { echo "fleet-test: $*" >&2; }

find_haproxy() {
  command -v haproxy 2>/dev/null && return 0
  [ -x /usr/sbin/haproxy ] && echo /usr/sbin/haproxy && return 0
  return 1
}

if ! haproxy_bin="$(find_haproxy)"; then
  say "installing Debian's haproxy"
  if [ "$(id -u)" != 0 ] ||
    ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; } >&2; then
    say "cannot install haproxy: install Debian's haproxy package (apt-get install haproxy, as root) and rerun"
    exit 1
  fi
  haproxy_bin="$(find_haproxy)"
fi
say "load balancer: $("$haproxy_bin" -v | head -n 1)"

# A loopback port nothing listens on (bash's /dev/tcp: a refused connect means free).
free_port() {
  local port
  for _ in $(seq 50); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  return 1
}

pgdir=""
cleanup() {
  local status=$?
  if [ -n "$pgdir" ]; then
    bash scripts/postgres.sh stop "$pgdir" || true
  fi
  if [ "$status" = 0 ]; then
    say "passed in $((SECONDS - started)) s"
  else
    say "FAILED (exit $status) after $((SECONDS - started)) s"
  fi
  exit "$status"
}
trap cleanup EXIT

# The cluster: retried on another port if the chosen one was taken meanwhile.
for attempt in 1 2 3; do
  port="$(free_port)"
  pgdir="$(mktemp -d /tmp/handset-fleet-pg.XXXXXX)"
  if exports="$(bash scripts/postgres.sh start "$pgdir" "$port")"; then
    break
  fi
  bash scripts/postgres.sh stop "$pgdir" || true
  pgdir=""
  if [ "$attempt" = 3 ]; then
    say "cannot start PostgreSQL (see above)"
    exit 1
  fi
done
eval "$exports"
say "PostgreSQL on 127.0.0.1:$port ($PGCLUSTER_DIR)"

if [ "${FLEET_SKIP_STORE_TESTS:-0}" != 1 ]; then
  say "the store's tests on PostgreSQL"
  cargo test --locked -p handset-shell --lib -- store:: tokens::
fi

say "building handset"
handset_bin="$(cargo build --locked -p handset-shell --bin handset --message-format=json-render-diagnostics |
  sed -n 's/.*"executable":"\([^"]*\/handset\)".*/\1/p' | tail -n 1)"
if [ ! -x "$handset_bin" ]; then
  say "cannot find the built handset binary"
  exit 1
fi

say "fleet test ($handset_bin)"
FLEET_DATABASE_URL="$DATABASE_URL" HANDSET_BIN="$handset_bin" HAPROXY_BIN="$haproxy_bin" \
  cargo test --locked --test fleet -- --ignored --nocapture --test-threads=1
