# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this file
# Shared settings for the tests/cluster scripts. Source it; do not run it.
# Everything can be overridden from the environment.

# Command substitutions keep `set -e` (bash >= 4.4), so failures inside $(...) stop the scripts too.
shopt -s inherit_errexit

CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CLUSTER_DIR/../.." && pwd)"

# CI may run with a bare environment: the caches below and Go's own need HOME.
if [[ -z "${HOME:-}" ]]; then HOME="$(getent passwd "$(id -u)" | cut -d: -f6)"; export HOME; fi

# Built binaries are cached by version here, outside the repository.
CAIRN_CACHE_DIR="${CAIRN_CACHE_DIR:-$HOME/.cache/cairn}"
CLUSTER_CACHE="$CAIRN_CACHE_DIR/cluster"
# Runtime state (PKI, configs, pid files, logs, etcd and Postgres data).
STATE_DIR="${CAIRN_CLUSTER_STATE:-/var/lib/cairn-cluster}"
RUN_DIR="$STATE_DIR/run"   # pid files
LOG_DIR="$STATE_DIR/logs"  # one log per component
BIN_DIR="$STATE_DIR/bin"   # symlinks: kubectl, helm, ctr wrappers... (tests put this on PATH)

# The images hold one statically linked binary each (FROM scratch, see ./Dockerfile): binaries for
# them are built for musl (`make static-bins`) into static_bin_dir.
STATIC_TARGET="$(uname -m)-unknown-linux-musl"
static_bin_dir() { echo "${CARGO_TARGET_DIR:-$REPO_ROOT/target}/$STATIC_TARGET/release"; }
build_static_bins() { SQLX_OFFLINE="${SQLX_OFFLINE:-true}" make -s -C "$REPO_ROOT" static-bins >&2; }

# Versions. K8S_SERIES picks the latest patch the Go module proxy has, unless
# K8S_VERSION pins one. Same for helm (major v3) and CoreDNS.
K8S_SERIES="${K8S_SERIES:-v1.33}"
HELM_SERIES="${HELM_SERIES:-v3}"
COREDNS_SERIES="${COREDNS_SERIES:-v1.14}"

# Network layout. Everything stays on loopback, the pod bridge and the service range.
NODE_NAME="${NODE_NAME:-cairn-node}"
BRIDGE=cni0
# The bridge's own, fixed MAC (locally administered; see up.sh).
BRIDGE_MAC=02:ca:19:00:00:01
POD_CIDR=10.88.0.0/16
NODE_IP=10.88.0.1
SERVICE_CIDR=10.96.0.0/16
SERVICE_API_IP=10.96.0.1
CLUSTER_DNS_IP=10.88.0.1    # CoreDNS runs on the host, bound to the bridge address
PG_PORT="${CAIRN_CLUSTER_PG_PORT:-5432}"

CONTAINERD_SOCK=/run/cairn-containerd/containerd.sock

export PATH="/usr/local/go/bin:/usr/lib/postgresql/15/bin:$HOME/.cargo/bin:$PATH"

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[cluster] ERROR: %s\n' "$*" >&2; exit 1; }

# Newest version in SERIES (e.g. v1.33) of Go module MOD, from the Go module proxy.
# If the proxy cannot be asked, fall back to the newest version already cached in CACHE_PREFIX*.
latest_version() {
    local mod="$1" series="$2" cache_prefix="$3" v
    # A version prefix query ("mod@v1.33") resolves to the newest release with that prefix.
    v="$(cd /tmp && { GOTOOLCHAIN=local go list -m -f '{{.Version}}' "$mod@$series" 2>/dev/null || true; })"
    if [[ -z "$v" ]]; then
        v="$(printf '%s\n' "${cache_prefix}"v* | sed "s|^${cache_prefix}||" | grep -E "^${series//./\\.}\." | sort -V | tail -1 || true)"
    fi
    [[ -n "$v" ]] || die "cannot find a $series version of $mod (Go module proxy unreachable and nothing cached)"
    echo "$v"
}

# wait_for DESCRIPTION TIMEOUT_SECONDS LOGFILE COMMAND...: poll COMMAND once a second.
wait_for() {
    local what="$1" timeout="$2" logfile="$3"; shift 3
    local i
    for ((i = 0; i < timeout; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    [[ -f "$logfile" ]] && { echo "--- last lines of $logfile ---" >&2; tail -n 25 "$logfile" >&2; }
    die "timed out after ${timeout}s waiting for $what (see $logfile)"
}

pid_alive() { [[ -f "$RUN_DIR/$1.pid" ]] && kill -0 "$(cat "$RUN_DIR/$1.pid")" 2>/dev/null; }

# url_with_database URL NAME: URL (postgres://user:pw@host:port/db?params) naming database NAME.
url_with_database() {
    local base=${1%%\?*}
    echo "${base%/*}/$2${1#"$base"}"
}

# chart_database_args NAMESPACE: the Helm flags that point a release in NAMESPACE at the cluster's
# Postgres (CAIRN_CLUSTER_PG_URL) over verify-full: the CA in a Secret there, which the chart
# mounts next to the URL, and the URL naming it. Sets CHART_DATABASE_URL (the URL as the operator's
# pod sees it) and the array CHART_DATABASE_ARGS.
chart_database_args() {
    kubectl -n "$1" create secret generic cairn-database-ca --from-file=ca.crt="$CAIRN_CLUSTER_PG_CA" \
        --dry-run=client -o yaml | kubectl apply -f - >/dev/null
    # The URL up.sh wrote ends with sslrootcert=<the CA's host path>.
    CHART_DATABASE_URL="${CAIRN_CLUSTER_PG_URL%sslrootcert=*}sslrootcert=/etc/cairn/database/ca.crt"
    CHART_DATABASE_ARGS=(--set-string database.url="$CHART_DATABASE_URL" --set database.caSecret=cairn-database-ca)
}

# own_database NAME: a database of this test's own on the cluster's Postgres, and
# CAIRN_CLUSTER_PG_URL pointed at it: the cluster outlives test runs (and sessions), so a test
# must meet neither another test's rows nor a migration a build from other sources applied.
# drop_own_database: removes it, and the runner login the operator made for it.
own_database() {
    CLUSTER_ADMIN_PG_URL=$CAIRN_CLUSTER_PG_URL
    psql "$CLUSTER_ADMIN_PG_URL" -XqAt -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$1\" OWNER cairn" >/dev/null
    CAIRN_CLUSTER_PG_URL="$(url_with_database "$CLUSTER_ADMIN_PG_URL" "$1")"
    CAIRN_CLUSTER_PG_URL_PLAIN="$(url_with_database "$CAIRN_CLUSTER_PG_URL_PLAIN" "$1")"
    export CAIRN_CLUSTER_PG_URL CAIRN_CLUSTER_PG_URL_PLAIN
}
drop_own_database() {
    [[ -n "${CLUSTER_ADMIN_PG_URL:-}" ]] || return 0
    local name=${CAIRN_CLUSTER_PG_URL%%\?*}
    name=${name##*/}
    psql "$CLUSTER_ADMIN_PG_URL" -XqAt -c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" \
        -c "DROP ROLE IF EXISTS \"${name:0:40}_runner_login\"" >/dev/null 2>&1 || true
}
