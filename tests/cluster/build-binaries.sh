#!/usr/bin/env bash
# Builds Kubernetes (server components + kubectl), helm and CoreDNS from the Go module proxy
# and caches them by version under $CAIRN_CACHE_DIR/cluster (default ~/.cache/cairn/cluster).
# A version already built is not rebuilt. Prints three lines: K8S_BIN=..., HELM_BIN=..., COREDNS_BIN=...
# Called by up.sh; can be run alone to warm the cache.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v go >/dev/null || die "go not found (expected /usr/local/go/bin/go)"
# Build with the installed Go, never download another toolchain.
export GOTOOLCHAIN=local
export CGO_ENABLED=0
mkdir -p "$CLUSTER_CACHE"

K8S_COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

build_kubernetes() {
    local v="$1" out="$CLUSTER_CACHE/kubernetes-$1"
    if [[ -f "$out/.complete" ]]; then echo "$out"; return; fi
    log "building Kubernetes $v from the Go module proxy into $out (cold: tens of minutes on 2 cores)"
    local work="$CLUSTER_CACHE/build/kubernetes-$v" build_log="$CLUSTER_CACHE/build-kubernetes-$v.log"
    rm -rf "$work" "$out" "$out.tmp"; mkdir -p "$work" "$out.tmp"
    log "build output: $build_log"
    # Run in the background and wait: a subshell tested with || would run with `set -e` disabled.
    (
        cd "$work"
        # k8s.io/kubernetes replaces its ~30 staging modules (k8s.io/api, ...) with ./staging paths at
        # v0.0.0, and replace directives only work in the main module. So we make a wrapper main module
        # that requires k8s.io/kubernetes and maps each staging module to its published v0.Y.Z,
        # generated from that release's own go.mod.
        go mod download -json "k8s.io/kubernetes@$v" >download.json || { cat download.json; exit 1; }
        local upstream_mod
        upstream_mod="$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p' download.json)"
        [[ -f "$upstream_mod" ]] || die "could not download k8s.io/kubernetes@$v go.mod"
        local staging_v="v0.${v#v1.}"
        local go_line godebug
        go_line="$(awk '$1 == "go" {print $2; exit}' "$upstream_mod")"
        godebug="$(awk '$1 == "godebug" {print $2; exit}' "$upstream_mod")"
        cat >go.mod <<EOF
module cairn.local/kubernetes-build

go $go_line
EOF
        # godebug settings only apply in the main module; keep upstream's runtime behaviour.
        if [[ -n "$godebug" ]]; then go mod edit -godebug="$godebug"; fi
        go mod edit -require="k8s.io/kubernetes@$v"
        local m
        while read -r m; do
            go mod edit -replace="$m=$m@$staging_v"
        done < <(sed -n 's|^[[:space:]]*\(k8s\.io/[^ ]*\) => \./staging/.*|\1|p' "$upstream_mod")
        # No `go mod tidy`: this module has no .go files and tidy would drop the require.
        local pkgs=() c
        for c in "${K8S_COMPONENTS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
        go get "${pkgs[@]/%/@$v}"
        # Without these, every component reports v0.0.0-master.
        local major minor ldflags="-s -w"
        major="$(echo "${v#v}" | cut -d. -f1)"; minor="$(echo "${v#v}" | cut -d. -f2)"
        local p
        for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
            ldflags+=" -X $p.gitVersion=$v -X $p.gitMajor=$major -X $p.gitMinor=$minor"
            ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
        done
        go build -trimpath -ldflags "$ldflags" -o "$out.tmp/" "${pkgs[@]}"
    ) >"$build_log" 2>&1 &
    wait $! || { tail -n 40 "$build_log" >&2; die "building Kubernetes $v failed (see $build_log)"; }
    touch "$out.tmp/.complete"
    mv "$out.tmp" "$out"
    rm -rf "$work"
    echo "$out"
}

# go install MODULE/PKG@VERSION into the cache (modules without replace directives).
build_go_install() {
    local name="$1" pkg="$2" v="$3" ldflags="$4" out="$CLUSTER_CACHE/$1-$3"
    if [[ -f "$out/.complete" ]]; then echo "$out"; return; fi
    log "building $name $v from the Go module proxy into $out"
    local build_log="$CLUSTER_CACHE/build-$name-$v.log"
    rm -rf "$out" "$out.tmp"; mkdir -p "$out.tmp"
    GOBIN="$out.tmp" go install -trimpath -ldflags "$ldflags" "$pkg@$v" >"$build_log" 2>&1 \
        || { tail -n 40 "$build_log" >&2; die "building $name $v failed (see $build_log)"; }
    touch "$out.tmp/.complete"
    mv "$out.tmp" "$out"
    echo "$out"
}

K8S_VERSION="${K8S_VERSION:-$(latest_version k8s.io/kubernetes "$K8S_SERIES" "$CLUSTER_CACHE/kubernetes-")}"
HELM_VERSION="${HELM_VERSION:-$(latest_version helm.sh/helm/v3 "$HELM_SERIES" "$CLUSTER_CACHE/helm-")}"
COREDNS_VERSION="${COREDNS_VERSION:-$(latest_version github.com/coredns/coredns "$COREDNS_SERIES" "$CLUSTER_CACHE/coredns-")}"

k8s_bin="$(build_kubernetes "$K8S_VERSION")"
helm_bin="$(build_go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" \
    "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean")"
coredns_bin="$(build_go_install coredns github.com/coredns/coredns "$COREDNS_VERSION" "-s -w")"

echo "K8S_BIN=$k8s_bin"
echo "HELM_BIN=$helm_bin"
echo "COREDNS_BIN=$coredns_bin"
