#!/usr/bin/env bash
# Installs what a make target needs on a fresh Debian machine, when it is missing:
#   test: the Postgres server binaries (the tests start their own servers from them),
#         PgBouncer (tests/pooler.rs) and s3s-fs, the S3 server of the artifact tests (built
#         from crates.io into ~/.cache/cairn, once);
#         and the official MCP Python SDK (from PyPI, in a virtual environment under
#         ~/.cache/cairn), the client of the `cairn mcp` tests;
#   s3: s3s-fs alone (the test cluster's object store); prints its path;
#   otelcol: an OpenTelemetry Collector with an OTLP receiver and a file exporter, the trace
#         tests' receiver (built through the Go module proxy into ~/.cache/cairn, once); prints
#         its path;
#   static: what the images need (make static-bins, tests/cluster/image.sh): Rust's musl target,
#         musl-gcc (ring's C code) and buildah, the OCI image builder;
#   lint: shellcheck, cargo-deny (built from crates.io into ~/.cargo/bin, once), checkov (from
#         PyPI, in a virtual environment under ~/.cache/cairn) and actionlint (a Go module, built
#         through the Go module proxy into ~/.cache/cairn/bin), and helm for checkov's input when
#         none is there yet; the versions are pinned below.
# Needs root for apt-get; says what to install otherwise.
set -euo pipefail
target="${1:-test}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/cairn"
checkov_version=3.3.30
actionlint_version=v1.7.12
helm_version=v3.22.0   # the test cluster's (tests/cluster/build-binaries.sh)
# apt_install PACKAGE...: installs the Debian packages (as root), or says what is missing.
# With APT_LEAN=1, without the packages they only recommend.
apt_install() {
    [[ $# -eq 0 ]] && return 0
    if [[ $EUID -ne 0 ]]; then
        echo "make $target needs: $* (apt-get install $*, as root)" >&2
        exit 1
    fi
    echo "installing $*" >&2
    export DEBIAN_FRONTEND=noninteractive
    local lean=()
    [[ -n "${APT_LEAN:-}" ]] && lean=(--no-install-recommends)
    apt-get update -q >/dev/null
    apt-get install -y -q "${lean[@]}" "$@" >/dev/null
}
# The artifact tests (tests/durable/artifacts.rs, tests/harness/s3.rs) and the test cluster
# (tests/cluster/up.sh) need a real S3-compatible server: s3s-fs is one, pure Rust and on
# crates.io, so cargo builds it with no Go toolchain or container (about 3 minutes, once per
# machine). Pinned (the directory tests/harness/s3.rs looks in names it): 0.15 and later need
# rustc 1.96, newer than ours. Prints the binary's path.
install_s3s_fs() {
    local version=0.14.1
    local root="$cache/s3s-fs-$version"
    if [[ ! -x "$root/bin/s3s-fs" ]]; then
        echo "building s3s-fs $version into $root (once per machine)" >&2
        cargo install --locked --quiet --root "$root" "s3s-fs@$version" --features binary >&2
    fi
    echo "$root/bin/s3s-fs"
}
# The trace tests (tests/durable/traces.rs) need a real OTLP receiver. The OpenTelemetry
# Collector is the reference one; its builder (ocb) makes a collector of just the two parts
# needed, from the Go module proxy (about 3 minutes, once per machine). Prints the binary's path.
install_otelcol() {
    local version=0.161.0
    local root="$cache/otelcol-$version"
    if [[ ! -x "$root/otelcol-cairn" ]]; then
        command -v go >/dev/null ||
            { echo "the collector is built with Go: install Go 1.24 or later (https://go.dev/dl/)" >&2; exit 1; }
        echo "building the OpenTelemetry Collector $version into $root (once per machine)" >&2
        mkdir -p "$root"
        GOBIN="$root" go install "go.opentelemetry.io/collector/cmd/builder@v$version" >&2
        cat >"$root/manifest.yaml" <<MANIFEST
dist:
  name: otelcol-cairn
  description: OTLP in, JSON lines out, for Cairn's trace tests
  output_path: $root
receivers:
  - gomod: go.opentelemetry.io/collector/receiver/otlpreceiver v$version
exporters:
  - gomod: github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter v$version
MANIFEST
        "$root/builder" --config "$root/manifest.yaml" >&2
    fi
    echo "$root/otelcol-cairn"
}
# The `cairn mcp` tests (tests/mcp.rs) drive it with a real MCP client nobody here wrote: the
# official Python SDK, pinned in tests/mcp/requirements.txt. Prints the interpreter's path.
install_mcp_client() {
    local venv="$cache/mcp-client-2.3.0"
    local requirements
    requirements="$(dirname "$0")/mcp/requirements.txt"
    if ! "$venv/bin/python" -c 'import mcp' 2>/dev/null; then
        echo "installing the MCP Python SDK into $venv (once per machine)" >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
    fi
    echo "$venv/bin/python"
}
missing=()
case "$target" in
test)
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
    command -v pgbouncer >/dev/null || [[ -x /usr/sbin/pgbouncer ]] || missing+=(pgbouncer)
    python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
    apt_install "${missing[@]}"
    # The web console's browser test (tests/console.rs): Debian's Chromium, its WebDriver, and
    # fonts that make screenshots the same everywhere; 26 packages lean, 131 with recommends.
    browser=()
    [[ -x /usr/lib/chromium/chromium ]] || browser+=(chromium)
    command -v chromedriver >/dev/null || browser+=(chromium-driver)
    [[ -d /usr/share/fonts/truetype/liberation ]] || browser+=(fonts-liberation)
    APT_LEAN=1 apt_install "${browser[@]}"
    install_s3s_fs >/dev/null
    install_otelcol >/dev/null
    install_mcp_client >/dev/null
    ;;
static)
    command -v musl-gcc >/dev/null || missing+=(musl-tools)
    command -v buildah >/dev/null || missing+=(buildah)
    apt_install "${missing[@]}"
    musl="$(uname -m)-unknown-linux-musl"
    rustup target list --installed 2>/dev/null | grep -qx "$musl" || rustup target add "$musl"
    ;;
lint)
    command -v shellcheck >/dev/null || missing+=(shellcheck)
    # Debian's python3 leaves venv (ensurepip) to a package of its own.
    python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
    apt_install "${missing[@]}"
    if ! cargo deny --version >/dev/null 2>&1; then
        echo "building cargo-deny (once per machine)" >&2
        cargo install --locked --quiet cargo-deny
    fi
    venv="$cache/checkov-venv"
    if [[ "$("$venv/bin/checkov" --version 2>/dev/null)" != "$checkov_version" ]]; then
        echo "installing checkov $checkov_version into $venv (once per machine)" >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "checkov==$checkov_version"
    fi
    if [[ "$("$cache/bin/actionlint" -version 2>/dev/null | head -1)" != "$actionlint_version" ]]; then
        command -v go >/dev/null ||
            { echo "actionlint is built with Go: install Go 1.24 or later (https://go.dev/dl/)" >&2; exit 1; }
        echo "building actionlint $actionlint_version into $cache/bin (once per machine)" >&2
        GOBIN="$cache/bin" go install "github.com/rhysd/actionlint/cmd/actionlint@$actionlint_version"
    fi
    # checkov scans `helm template` output: any helm will do, the cluster's if it was built.
    if ! command -v helm >/dev/null && ! compgen -G "$cache/cluster/helm-*/helm" >/dev/null &&
        [[ ! -x "$cache/bin/helm" ]]; then
        echo "building helm $helm_version into $cache/bin (once per machine)" >&2
        CGO_ENABLED=0 GOBIN="$cache/bin" go install "helm.sh/helm/v3/cmd/helm@$helm_version"
    fi
    ;;
s3)
    install_s3s_fs
    ;;
otelcol)
    install_otelcol
    ;;
mcp-client)
    install_mcp_client
    ;;
*)
    echo "usage: $0 test|static|lint|s3|otelcol|mcp-client" >&2
    exit 2
    ;;
esac
