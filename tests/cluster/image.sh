#!/usr/bin/env bash
# Builds a container image from the repository's Dockerfiles, as users build theirs, and imports
# it into the test cluster's containerd (namespace k8s.io) under a fully qualified tag.
#
#   tests/cluster/image.sh NAME:TAG BINARY [--label KEY=VALUE ...]
#   e.g. tests/cluster/image.sh localhost/cairn-agent:dev "$(static_bin_dir)/agent"
#
# BINARY must be statically linked (the images are FROM scratch): the musl builds `make
# static-bins` makes. A binary named `cairn` goes into the operator's image (./Dockerfile); any
# other into the flow image template (examples/agent/Dockerfile, BIN=its name). Both are built
# from their `prebuilt` stage by buildah (Debian's package; vfs storage, chroot isolation: no
# daemon, no nested namespaces). Another label gives another digest for the same binary.
#
# Importing another image under the same tag moves the tag; pods already created keep the digest
# they started with. Prints name= and manifest_digest= lines; the image is also named
# NAME@MANIFEST_DIGEST, which pods' status imageID then shows. Needs the cluster up (up.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -ge 2 ]] || die "usage: $0 NAME:TAG BINARY [--label KEY=VALUE ...]"
name="$1" binary="$2"; shift 2
[[ -f "$binary" ]] || die "no such binary: $binary"
# ldd lists "lib => path" lines only for a dynamically linked binary.
if ldd "$binary" 2>/dev/null | grep -q '=>'; then
    die "$binary is dynamically linked; the images hold nothing but the binary: build it for \
x86_64-unknown-linux-musl (make static-bins)"
fi
pid_alive containerd || die "the cluster's containerd is not running; run tests/cluster/up.sh first"
command -v buildah >/dev/null || die "buildah is missing: apt-get install buildah (tests/install-deps.sh test does)"

bin_name="$(basename "$binary")"
arch="$(dpkg --print-architecture)"
if [[ "$bin_name" == cairn ]]; then
    dockerfile="$REPO_ROOT/Dockerfile" build_args=()
else
    dockerfile="$REPO_ROOT/examples/agent/Dockerfile" build_args=(--build-arg "BIN=$bin_name")
fi

# The build context: only what the prebuilt stage copies (dist/linux-<arch>/<binary>).
mkdir -p "$STATE_DIR/images"
work="$(mktemp -d "$STATE_DIR/images/build-XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/context/dist/linux-$arch"
cp "$binary" "$work/context/dist/linux-$arch/$bin_name"

# Storage of our own under the cluster's state directory, so nothing is left in the host's
# /var/lib/containers; the image is removed from it once containerd has it.
buildah=(buildah --root "$STATE_DIR/buildah/storage" --runroot "$STATE_DIR/buildah/run" --storage-driver vfs)
"${buildah[@]}" build --quiet --isolation chroot --target prebuilt --build-arg "TARGETARCH=$arch" \
    "${build_args[@]}" "$@" -f "$dockerfile" -t "$name" "$work/context" >/dev/null
"${buildah[@]}" push --quiet --digestfile "$work/digest" "$name" "oci-archive:$work/image.tar:$name" >/dev/null
"${buildah[@]}" rmi "$name" >/dev/null 2>&1 || true
manifest="$(cat "$work/digest")"
/usr/bin/ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$work/image.tar" >&2
# Also name the image by its manifest digest (repo@sha256:...), as a registry pull would: the
# kubelet then reports that repo digest as the pod's imageID, and the digest keeps naming this
# image after the tag moves on, so a run pinned to it can still start pods.
/usr/bin/ctr --address "$CONTAINERD_SOCK" -n k8s.io images tag --force "$name" "${name%:*}@$manifest" >/dev/null
echo "name=$name"
echo "manifest_digest=$manifest"
