#!/usr/bin/env bash
# Builds Ferry's container images, and the test images the local clusters'
# real nodes run, without a container engine or a registry, into
# $BIN_DIR/images (default bin/images) as archives `ctr images import` reads.
# Each image is built from its Dockerfile by hack/ociimage: the binaries with
# the Dockerfiles' own go build flags, the Debian root filesystems by
# mmdebstrap (cold: ~45 s each, then cached while the packages are the same).
#
#   IMAGE_REGISTRY (default ghcr.io/ferrysync) and IMAGE_TAG (default dev)
#   name Ferry's two images; push them with any OCI tool, e.g.
#   crane push bin/images/ferry-nodeagent.tar REGISTRY/ferry-nodeagent:TAG
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN_DIR=${BIN_DIR:-$ROOT/bin}
OUT=$BIN_DIR/images
REGISTRY=${IMAGE_REGISTRY:-ghcr.io/ferrysync}
TAG=${IMAGE_TAG:-dev}
mkdir -p "$OUT/out"

echo ">> building the images' binaries"
(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$OUT/out/" \
  ./cmd/controller ./cmd/nodeagent ./cmd/ferry-helper ./test/csidriver ./test/images/pause)
go build -o "$OUT/ociimage" "$ROOT/hack/ociimage"

# image NAME:TAG DOCKERFILE ARCHIVE
image() {
  echo ">> image $1"
  "$OUT/ociimage" -dockerfile "$ROOT/$2" -bin "$OUT/out" -cache "$OUT/rootfs" -tag "$1" -o "$OUT/$3.tar"
}
image "$REGISTRY/ferry-controller:$TAG" Dockerfile.controller ferry-controller
image "$REGISTRY/ferry-nodeagent:$TAG" Dockerfile.nodeagent ferry-nodeagent
image "localhost/ferry-test-csidriver:$TAG" test/images/csidriver/Dockerfile ferry-test-csidriver
image "localhost/ferry-test-app:$TAG" test/images/app/Dockerfile ferry-test-app
image registry.k8s.io/pause:3.10.1 test/images/pause/Dockerfile pause
