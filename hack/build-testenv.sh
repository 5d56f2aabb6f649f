#!/usr/bin/env bash
# Builds the real Kubernetes pieces the tests run against, from the Go module
# proxy, into $BIN_DIR/testenv (default bin/testenv): kube-apiserver,
# kube-controller-manager, kube-scheduler, kube-proxy, kubectl (k8s.io/kubernetes) and
# etcd (go.etcd.io/etcd/server/v3). Each binary is rebuilt only when missing or
# built at another version (a NAME.version file beside it records which).
#
# Also the CSI sidecars (external-provisioner, external-snapshotter's
# snapshot-controller and csi-snapshotter, external-attacher), the
# VolumeSnapshot CRDs, and what real nodes run: kubelet, containerd 2 (with
# ctr and its runc shim) and runc (cgo, with libseccomp).
#
# Cold on 2 cores: the Kubernetes binaries ~15 min, etcd ~2 min, the
# sidecars ~12 min, containerd ~2 min, runc ~20 s; with a warm Go build
# cache they only relink.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN_DIR=${BIN_DIR:-$ROOT/bin}
OUT=$BIN_DIR/testenv
WORK=$BIN_DIR/.wrappers
K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
mkdir -p "$OUT" "$WORK"

# fresh NAME VERSION: true when $OUT/NAME exists and was built at VERSION.
fresh() { [ -x "$OUT/$1" ] && [ "$(cat "$OUT/$1.version" 2>/dev/null)" = "$2" ]; }
stamp() { for b in "${@:2}"; do echo "$1" > "$OUT/$b.version"; done; }

k8s_bins=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl kubelet)
need=()
for b in "${k8s_bins[@]}"; do fresh "$b" "$K8S_VERSION" || need+=("$b"); done
if [ ${#need[@]} -gt 0 ]; then
  echo ">> building ${need[*]} $K8S_VERSION (cold: ~13 min on 2 cores)"
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  pkgs=(); for b in "${k8s_bins[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  go run "$ROOT/hack/wrapmod" -dir "$WORK/kubernetes" -module k8s.io/kubernetes \
    -version "$K8S_VERSION" -local-version "v0.${K8S_VERSION#v1.}" "${pkgs[@]}"
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
  build=(); for b in "${need[@]}"; do build+=("k8s.io/kubernetes/cmd/$b"); done
  (cd "$WORK/kubernetes" && go build -ldflags "$ldflags" -o "$OUT/" "${build[@]}")
  stamp "$K8S_VERSION" "${need[@]}"
fi

if ! fresh etcd "$ETCD_VERSION"; then
  echo ">> building etcd $ETCD_VERSION (cold: ~2 min)"
  go run "$ROOT/hack/wrapmod" -dir "$WORK/etcd" -module go.etcd.io/etcd/server/v3 \
    -version "$ETCD_VERSION" go.etcd.io/etcd/server/v3
  (cd "$WORK/etcd" && go build -ldflags "-s -w" -o "$OUT/etcd" go.etcd.io/etcd/server/v3)
  stamp "$ETCD_VERSION" etcd
fi
# wrapped NAME VERSION MODULE PKG...: build the programs PKG of MODULE at
# VERSION through a wrapper module (their go.mod has replace directives).
wrapped() {
  local version=$1 module=$2; shift 2
  local need=()
  for p in "$@"; do fresh "$(basename "$p")" "$version" || need+=("$p"); done
  [ ${#need[@]} -eq 0 ] && return 0
  echo ">> building ${need[*]##*/} $version"
  local dir="$WORK/${module//\//_}"
  go run "$ROOT/hack/wrapmod" -dir "$dir" -module "$module" -version "$version" "$@"
  (cd "$dir" && go build -tags "${BUILD_TAGS:-}" -ldflags "-s -w" -o "$OUT/" "${need[@]}")
  for p in "${need[@]}"; do stamp "$version" "$(basename "$p")"; done
}

# The CSI sidecars, run as processes against the test apiserver (cold: ~12 min).
SNAPSHOTTER_VERSION=${SNAPSHOTTER_VERSION:-v8.7.0}
PROVISIONER_VERSION=${PROVISIONER_VERSION:-v6.4.0}
ATTACHER_VERSION=${ATTACHER_VERSION:-v4.13.0}
wrapped "$PROVISIONER_VERSION" github.com/kubernetes-csi/external-provisioner/v6 \
  github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner
wrapped "$SNAPSHOTTER_VERSION" github.com/kubernetes-csi/external-snapshotter/v8 \
  github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller \
  github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter
wrapped "$ATTACHER_VERSION" github.com/kubernetes-csi/external-attacher/v4 \
  github.com/kubernetes-csi/external-attacher/v4/cmd/csi-attacher

# Real nodes: containerd without the snapshotters that need C libraries,
# and runc with seccomp (RuntimeDefault profiles need it).
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
RUNC_VERSION=${RUNC_VERSION:-v1.5.3}
BUILD_TAGS="no_btrfs no_devmapper no_zfs" wrapped "$CONTAINERD_VERSION" github.com/containerd/containerd/v2 \
  github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/ctr \
  github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
CGO_ENABLED=1 BUILD_TAGS=seccomp wrapped "$RUNC_VERSION" github.com/opencontainers/runc github.com/opencontainers/runc

# The VolumeSnapshot CRDs ship in the snapshotter's client module: all of
# them, group snapshots too, or the snapshot-controller stalls looking.
crds="$OUT/snapshot-crds"
if [ "$(cat "$crds/.version" 2>/dev/null)" != "$SNAPSHOTTER_VERSION" ]; then
  mod=github.com/kubernetes-csi/external-snapshotter/client/v8
  dir=$(go mod download -json "$mod@$SNAPSHOTTER_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
  rm -rf "$crds" && mkdir -p "$crds"
  cp "$dir"/config/crd/*storage.k8s.io_*.yaml "$crds/"
  chmod 644 "$crds"/*.yaml
  echo "$SNAPSHOTTER_VERSION" > "$crds/.version"
fi
echo ">> testenv binaries in $OUT"
