#!/usr/bin/env bash
# Deletes the kind cluster(s) test/kind/up.sh made.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

ensure_kind
while read -r cluster; do
  log "deleting kind cluster $cluster"
  kind delete cluster --name "$cluster"
done < <(clusters)
