#!/usr/bin/env bash
# Installs what `make test-core` needs on a fresh Debian machine, when it is missing: the
# Postgres server binaries (the tests start their own servers from them) and PgBouncer
# (tests/pooler.rs). Needs root for apt-get; says what to install otherwise.
set -euo pipefail
missing=()
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
command -v pgbouncer >/dev/null || [[ -x /usr/sbin/pgbouncer ]] || missing+=(pgbouncer)
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $EUID -ne 0 ]]; then
    echo "the tests need: ${missing[*]} (apt-get install ${missing[*]}, as root)" >&2
    exit 1
fi
echo "installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q "${missing[@]}" >/dev/null
