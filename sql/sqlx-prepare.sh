#!/usr/bin/env bash
# Regenerates .sqlx/, the offline data sqlx checks the engine's queries against at compile time:
# a throwaway Postgres (from the installed server binaries), the migrations applied, then the
# engine crate compiled online with SQLX_OFFLINE_DIR pointing at .sqlx/. Needs no sqlx-cli.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_BIN="$(printf "%s\n" /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
dir="$(mktemp -d /tmp/cairn-sqlx-prepare.XXXXXX)"
run_pg() { if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[[ $EUID -eq 0 ]] && chown postgres "$dir"
cleanup() { run_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT

run_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust >/dev/null
run_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-p 5499 -k $dir -c listen_addresses=''" start >/dev/null
files=()
for migration in sql/migrations/*.sql; do files+=(-f "$migration"); done
"$PG_BIN/psql" -h "$dir" -p 5499 -U postgres -q -v ON_ERROR_STOP=1 -c 'CREATE SCHEMA cairn' "${files[@]}"
rm -f .sqlx/query-*.json
cargo clean -p cairn-engine
DATABASE_URL="postgres://postgres@localhost:5499/postgres?host=$dir" SQLX_OFFLINE=false \
    SQLX_OFFLINE_DIR="$PWD/.sqlx" cargo check -p cairn-engine --all-features --tests
queries=(.sqlx/query-*.json)
echo "sqlx-prepare: ${#queries[@]} queries in .sqlx/"
