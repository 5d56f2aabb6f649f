#!/usr/bin/env bash
# Builds the real Kubernetes pieces the tests run against, from the Go module
# proxy, into $BIN_DIR/testenv (default bin/testenv): kube-apiserver,
# kube-controller-manager, kube-scheduler, kube-proxy, kubectl (k8s.io/kubernetes) and
# etcd (go.etcd.io/etcd/server/v3). Each binary is rebuilt only when missing or
# built at another version (a NAME.version file beside it records which).
#
# Cold on 2 cores: the four Kubernetes binaries ~13 min, etcd ~2 min; with a
# warm Go build cache they only relink.
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

k8s_bins=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl)
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
echo ">> testenv binaries in $OUT"
