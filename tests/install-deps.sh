#!/usr/bin/env bash
# Installs what a make target needs on a fresh Debian machine, when it is missing:
#   test: the Postgres server binaries (the tests start their own servers from them) and
#         PgBouncer (tests/pooler.rs);
#   lint: shellcheck, and cargo-deny (built from crates.io into ~/.cargo/bin, once).
# Needs root for apt-get; says what to install otherwise.
set -euo pipefail
target="${1:-test}"
missing=()
case "$target" in
test)
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
    command -v pgbouncer >/dev/null || [[ -x /usr/sbin/pgbouncer ]] || missing+=(pgbouncer)
    ;;
lint)
    command -v shellcheck >/dev/null || missing+=(shellcheck)
    if ! cargo deny --version >/dev/null 2>&1; then
        echo "building cargo-deny (once per machine)" >&2
        cargo install --locked --quiet cargo-deny
    fi
    ;;
*)
    echo "usage: $0 test|lint" >&2
    exit 2
    ;;
esac
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $EUID -ne 0 ]]; then
    echo "make $target needs: ${missing[*]} (apt-get install ${missing[*]}, as root)" >&2
    exit 1
fi
echo "installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q "${missing[@]}" >/dev/null
