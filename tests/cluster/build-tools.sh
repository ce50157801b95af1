#!/usr/bin/env bash
# Builds this repository's cairn-cluster-tools crate (cairn-oci-image, pg-smoke) in release mode
# with the normal workspace target dir, and prints the directory holding the binaries.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Escape hatch for debugging: use binaries built elsewhere (e.g. a separate cargo target dir).
if [[ -n "${CAIRN_CLUSTER_TOOLS_DIR:-}" ]]; then echo "$CAIRN_CLUSTER_TOOLS_DIR"; exit 0; fi
command -v cargo >/dev/null || die "cargo not found"
target="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
# Quiet unless it fails; cargo's own output goes to stderr.
(cd "$REPO_ROOT" && cargo build -q -p cairn-cluster-tools --release --bins) >&2 \
    || die "cargo build -p cairn-cluster-tools failed"
[[ -x "$target/release/cairn-oci-image" ]] || die "built, but $target/release/cairn-oci-image is missing"
echo "$target/release"
