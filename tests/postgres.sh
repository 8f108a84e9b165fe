#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests, from the machine's own packages (PostgreSQL 15 is
# installed but not running): its data in a temp folder the unprivileged `postgres` user can
# reach (not under root's home), listening on a loopback port only, run as that user.
#
#   eval "$(bash tests/postgres.sh start)"   # exports KDPIPE_TEST_POSTGRES=postgresql://...
#   bash tests/postgres.sh stop "$KDPIPE_TEST_POSTGRES_DIR"
set -euo pipefail
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
# from / : the caller's folder may be private to it (a checkout under mktemp -d is 0700), and
# every path given is absolute
as_postgres() { if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }

if [ "${1:-}" = stop ]; then
  as_postgres "$bin/pg_ctl" -D "$2/data" -m fast stop >/dev/null
  rm -rf "$2"
  exit 0
fi
dir=$(mktemp -d /tmp/kdpipe-pg.XXXXXX)
chmod 755 "$dir"
[ "$(id -u)" = 0 ] && chown postgres "$dir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $port -k $dir" start >/dev/null
as_postgres "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres mlflow
echo "export KDPIPE_TEST_POSTGRES=postgresql://postgres@127.0.0.1:$port/mlflow"
echo "export KDPIPE_TEST_POSTGRES_DIR=$dir"
