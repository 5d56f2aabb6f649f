#!/usr/bin/env bash
# Creates kind cluster(s) with csi-driver-host-path (snapshots included)
# and Ferry installed from deploy/ with images built from the Dockerfiles.
#   test/kind/up.sh                      one cluster
#   FERRY_KIND_CLUSTERS=2 test/kind/up.sh   a source and a destination cluster
# Needs docker, kubectl, git and go (for kind, installed into bin/).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

need docker kubectl git
ensure_kind

log "building Ferry's images"
docker build -q -f "$ROOT/Dockerfile.controller" -t ghcr.io/ferrysync/ferry-controller:kind "$ROOT"
docker build -q -f "$ROOT/Dockerfile.nodeagent" -t ghcr.io/ferrysync/ferry-nodeagent:kind "$ROOT"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
log "fetching csi-driver-host-path $HOSTPATH_VERSION"
git clone -q --depth 1 --branch "$HOSTPATH_VERSION" https://github.com/kubernetes-csi/csi-driver-host-path "$work/hostpath"

# An overlay of deploy/ that runs the images just built.
mkdir -p "$work/ferry"
cat >"$work/ferry/kustomization.yaml" <<KUSTOMIZATION
resources:
  - $ROOT/deploy
images:
  - name: ghcr.io/ferrysync/ferry-controller
    newTag: kind
  - name: ghcr.io/ferrysync/ferry-nodeagent
    newTag: kind
KUSTOMIZATION

while read -r cluster; do
  if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
    log "cluster $cluster exists; reusing it"
  else
    log "creating kind cluster $cluster"
    kind create cluster --name "$cluster" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 120s
  fi
  kind load docker-image --name "$cluster" ghcr.io/ferrysync/ferry-controller:kind ghcr.io/ferrysync/ferry-nodeagent:kind

  log "$cluster: VolumeSnapshot CRDs and snapshot-controller $SNAPSHOTTER_VERSION"
  kc "$cluster" apply -k "https://github.com/kubernetes-csi/external-snapshotter/client/config/crd?ref=$SNAPSHOTTER_VERSION"
  kc "$cluster" apply -k "https://github.com/kubernetes-csi/external-snapshotter/deploy/kubernetes/snapshot-controller?ref=$SNAPSHOTTER_VERSION"

  log "$cluster: csi-driver-host-path, its StorageClass (default) and VolumeSnapshotClass"
  kubectl config use-context "$(context "$cluster")" >/dev/null # deploy.sh uses the current context
  (cd "$work/hostpath" && deploy/kubernetes-latest/deploy.sh)
  kc "$cluster" apply -f "$work/hostpath/examples/csi-storageclass.yaml"
  kc "$cluster" annotate storageclass csi-hostpath-sc storageclass.kubernetes.io/is-default-class=true --overwrite
  kc "$cluster" annotate storageclass standard storageclass.kubernetes.io/is-default-class- --overwrite || true
  kc "$cluster" annotate volumesnapshotclass csi-hostpath-snapclass snapshot.storage.kubernetes.io/is-default-class=true --overwrite

  log "$cluster: Ferry from deploy/"
  kc "$cluster" apply -k "$work/ferry"
  kc "$cluster" -n ferry-system rollout status deployment/ferry-controller --timeout=180s
  kc "$cluster" -n ferry-system rollout status daemonset/ferry-nodeagent --timeout=180s
done < <(clusters)

log "ready: $(clusters | tr '\n' ' ')— run test/kind/e2e.sh"
