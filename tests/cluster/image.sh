#!/usr/bin/env bash
# Turns a binary built in this repository into a container image and imports it into the test
# cluster's containerd (namespace k8s.io), under a fully qualified tag.
#
#   tests/cluster/image.sh NAME:TAG BINARY [cairn-oci-image options...]
#   e.g. tests/cluster/image.sh localhost/cairn-agent:dev target/release/cairn-agent
#        tests/cluster/image.sh localhost/cairn-agent:dev target/release/cairn-agent --label variant=2
#
# Importing another image under the same tag moves the tag; pods already created keep the digest
# they started with. Prints name=, manifest_digest=, config_digest= lines; the image is also named
# NAME@MANIFEST_DIGEST, which pods' status imageID then shows. Needs the cluster up (tests/cluster/up.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -ge 2 ]] || die "usage: $0 NAME:TAG BINARY [cairn-oci-image options...]"
name="$1" binary="$2"; shift 2
[[ -f "$binary" ]] || die "no such binary: $binary"
pid_alive containerd || die "the cluster's containerd is not running; run tests/cluster/up.sh first"

# Use the tool up.sh linked, or build it.
tool="$BIN_DIR/cairn-oci-image"
[[ -x "$tool" ]] || tool="$("$CLUSTER_DIR/build-tools.sh")/cairn-oci-image"

mkdir -p "$STATE_DIR/images"
archive="$(mktemp "$STATE_DIR/images/image-XXXXXX.tar")"
trap 'rm -f "$archive"' EXIT
built="$("$tool" --name "$name" --binary "$binary" --output "$archive" "$@" | grep -v '^archive=')"
echo "$built"
/usr/bin/ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$archive" >&2
# Also name the image by its manifest digest (repo@sha256:...), as a registry pull would: the
# kubelet then reports that repo digest as the pod's imageID, and the digest keeps naming this
# image after the tag moves on, so a run pinned to it can still start pods.
manifest="$(sed -n 's/^manifest_digest=//p' <<<"$built")"
/usr/bin/ctr --address "$CONTAINERD_SOCK" -n k8s.io images tag --force "$name" "${name%:*}@$manifest" >/dev/null
