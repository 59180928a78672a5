#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on loopback, for the store tests and the fleet test.
#
#   eval "$(bash scripts/postgres.sh start [DIR] [PORT])"   # exports DATABASE_URL and PGCLUSTER_DIR
#   bash scripts/postgres.sh stop DIR
#
# Installs Debian's postgresql if no server binaries are found. The cluster runs as the
# `postgres` system user (the server refuses root), trusts loopback connections, keeps no
# data anywhere but DIR (default: a new temporary directory), and listens only on 127.0.0.1.
set -euo pipefail

find_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/initdb" ]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

cmd="${1:-}"
case "$cmd" in
  start)
    if ! bin="$(find_bin)"; then
      echo "postgres.sh: installing Debian's postgresql" >&2
      if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >&2; then
        echo "postgres.sh: cannot install postgresql; install Debian's postgresql package (apt-get install postgresql) and rerun" >&2
        exit 1
      fi
      bin="$(find_bin)"
    fi
    dir="${2:-$(mktemp -d /tmp/handset-pg.XXXXXX)}"
    port="${3:-55432}"
    mkdir -p "$dir"
    chown postgres: "$dir"
    chmod 700 "$dir"
    as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
    as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 || {
      cat "$dir/initdb.log" >&2
      exit 1
    }
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200 -c fsync=on" start >&2 || {
      cat "$dir/server.log" >&2
      exit 1
    }
    as_pg "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -qc "CREATE DATABASE handset" >&2
    echo "export PGCLUSTER_DIR=$dir"
    echo "export DATABASE_URL=postgres://postgres@127.0.0.1:$port/handset"
    ;;
  stop)
    dir="${2:?usage: postgres.sh stop DIR}"
    bin="$(find_bin)"
    if [ -d "$dir/data" ]; then
      if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
      else
        "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
      fi
    fi
    rm -rf "$dir"
    ;;
  *)
    echo "usage: postgres.sh start [DIR] [PORT] | stop DIR" >&2
    exit 2
    ;;
esac
