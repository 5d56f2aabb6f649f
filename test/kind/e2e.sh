#!/usr/bin/env bash
# The spec's flow on the kind cluster(s) test/kind/up.sh made, through
# kubectl only: the examples in examples/volsync/ applied as written (only
# address and the Secret come from the destination's status), data written
# by a pod in the source, a sync triggered, and a claim restored from
# latestImage checked to hold exactly the source's files (a checksum
# listing of both, compared). Then a change, and a second sync.
#   test/kind/e2e.sh                       one cluster (namespaces source, dest)
#   FERRY_KIND_CLUSTERS=2 test/kind/e2e.sh   across two clusters: needs a
#       LoadBalancer implementation reachable between them (cloud-provider-kind)
# KEEP=1 leaves the namespaces for a look afterwards.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

need kubectl
SRC="$SOURCE_CLUSTER"
DST="$SOURCE_CLUSTER"
if [ "${FERRY_KIND_CLUSTERS:-1}" = 2 ]; then
  DST="$DEST_CLUSTER"
fi
EXAMPLES="$ROOT/examples/volsync"
BUSYBOX="${BUSYBOX:-busybox:1.36}"

cleanup() {
  if [ "${KEEP:-0}" != 1 ]; then
    kc "$SRC" delete namespace source --ignore-not-found --wait=false >/dev/null
    kc "$DST" delete namespace dest --ignore-not-found --wait=false >/dev/null
  fi
}
trap cleanup EXIT

# run_pod runs a one-shot busybox pod with a claim at /data and prints its
# output.
run_pod() {
  local cluster="$1" ns="$2" name="$3" claim="$4" script="$5"
  kc "$cluster" -n "$ns" apply -f - >/dev/null <<POD
apiVersion: v1
kind: Pod
metadata:
  name: $name
spec:
  restartPolicy: Never
  containers:
    - name: main
      image: $BUSYBOX
      command: ["sh", "-c", "$script"]
      volumeMounts:
        - name: data
          mountPath: /data
  volumes:
    - name: data
      persistentVolumeClaim:
        claimName: $claim
POD
  wait_for 300 "pod $ns/$name to finish" pod_done "$cluster" "$ns" "$name"
  [ "$(kc "$cluster" -n "$ns" get pod "$name" -o jsonpath='{.status.phase}')" = Succeeded ] ||
    die "pod $ns/$name failed: $(kc "$cluster" -n "$ns" logs "$name")"
  kc "$cluster" -n "$ns" logs "$name"
  kc "$cluster" -n "$ns" delete pod "$name" --wait >/dev/null
}

pod_done() {
  local phase
  phase="$(kc "$1" -n "$2" get pod "$3" -o jsonpath='{.status.phase}')"
  [ "$phase" = Succeeded ] || [ "$phase" = Failed ]
}

# checksums lists every file under /data with its checksum, for comparing
# two volumes (the volume root's lost+found aside).
CHECKSUMS='cd /data && find . -path ./lost+found -prune -o -type f -print | sort | xargs md5sum'

# sync_once triggers a manual sync with value and waits for it.
sync_once() {
  local value="$1"
  kc "$SRC" -n source patch replicationsource database-source --type merge \
    -p "{\"spec\":{\"trigger\":{\"manual\":\"$value\"}}}" >/dev/null
  wait_for 600 "manual sync $value" has_synced "$value"
  [ "$(kc "$SRC" -n source get replicationsource database-source -o jsonpath='{.status.latestMoverStatus.result}')" = Successful ] ||
    die "sync $value failed: $(kc "$SRC" -n source get replicationsource database-source -o jsonpath='{.status.latestMoverStatus.logs}')"
}

has_synced() {
  [ "$(kc "$SRC" -n source get replicationsource database-source -o jsonpath='{.status.lastManualSync}')" = "$1" ]
}

# latest_image waits until the destination names an image other than $1
# and prints it.
latest_image() {
  local prev="$1" img deadline=$((SECONDS + 300))
  while :; do
    img="$(kc "$DST" -n dest get replicationdestination database-destination -o jsonpath='{.status.latestImage.name}')"
    if [ -n "$img" ] && [ "$img" != "$prev" ]; then
      printf '%s' "$img"
      return
    fi
    [ "$SECONDS" -lt "$deadline" ] || die "no new latestImage after 300s"
    sleep 2
  done
}

# verify restores image into a claim and compares its checksums with want.
verify() {
  local img="$1" want="$2" got
  kc "$DST" -n dest apply -f - >/dev/null <<CLAIM
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: restore-$img
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 2Gi
  dataSource:
    apiGroup: snapshot.storage.k8s.io
    kind: VolumeSnapshot
    name: $img
CLAIM
  got="$(run_pod "$DST" dest "check-$img" "restore-$img" "$CHECKSUMS")"
  if [ "$got" != "$want" ]; then
    diff <(printf '%s\n' "$want") <(printf '%s\n' "$got") || true
    die "the claim restored from $img differs from the source"
  fi
  echo "the claim restored from $img holds exactly the source's $(printf '%s\n' "$got" | wc -l) files"
}

log "namespaces source and dest, annotated for privileged movers"
kc "$SRC" create namespace source
kc "$DST" create namespace dest
kc "$SRC" annotate namespace source volsync.backube/privileged-movers=true
kc "$DST" annotate namespace dest volsync.backube/privileged-movers=true

log "the source's data: mysql-pv-claim, written by a pod"
kc "$SRC" -n source apply -f - <<CLAIM
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: mysql-pv-claim
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 2Gi
CLAIM
run_pod "$SRC" source writer mysql-pv-claim \
  'mkdir -p /data/db/logs && echo 1 > /data/db/config && ln /data/db/config /data/db/config.link && ln -s config /data/db/current && head -c 16777216 /dev/urandom > /data/db/table.ibd && echo entry > /data/db/logs/binlog.000001' >/dev/null
want="$(run_pod "$SRC" source checksum mysql-pv-claim "$CHECKSUMS")"

log "the destination: $EXAMPLES/destination.yaml, as written"
if [ "$DST" != "$SRC" ]; then
  sed 's/serviceType: ClusterIP/serviceType: LoadBalancer/' "$EXAMPLES/destination.yaml" | kc "$DST" apply -f -
else
  kc "$DST" apply -f "$EXAMPLES/destination.yaml"
fi
address=""
deadline=$((SECONDS + 300))
until [ -n "$address" ]; do
  address="$(kc "$DST" -n dest get replicationdestination database-destination -o jsonpath='{.status.rsync.address}')"
  [ -n "$address" ] || { [ "$SECONDS" -lt "$deadline" ] || die "no address in the destination's status"; sleep 2; }
done
keys="$(kc "$DST" -n dest get replicationdestination database-destination -o jsonpath='{.status.rsync.sshKeys}')"
echo "status.rsync.address=$address status.rsync.sshKeys=$keys"

log "copying the SSH key Secret as the spec's \"Copying the SSH key secret\" does"
# shellcheck disable=SC2016 # a go-template, not shell
kc "$DST" -n dest get secret "$keys" -o go-template='apiVersion: v1
kind: Secret
metadata:
  name: {{.metadata.name}}
type: {{.type}}
data:
{{range $k, $v := .data}}  {{$k}}: {{$v}}
{{end}}' | kc "$SRC" -n source apply -f -

log "the source: $EXAMPLES/source.yaml with address from the destination"
sed "s/address: .*/address: $address/" "$EXAMPLES/source.yaml" | kc "$SRC" apply -f -
sync_once e2e-1
img="$(latest_image "")"
kc "$SRC" -n source get replicationsource -o wide
kc "$DST" -n dest get replicationdestination -o wide
kc "$SRC" -n source describe replicationsource database-source | sed -n '/^Events:/,$p'
verify "$img" "$want"

log "a change, and the next sync"
run_pod "$SRC" source writer2 mysql-pv-claim 'echo 2 > /data/db/config && echo entry >> /data/db/logs/binlog.000001' >/dev/null
want="$(run_pod "$SRC" source checksum2 mysql-pv-claim "$CHECKSUMS")"
sync_once e2e-2
verify "$(latest_image "$img")" "$want"
log "e2e passed"
