#!/usr/bin/env bash
# Shared by the kind scripts: pinned versions, tools, logging. Sourced, not run.
# shellcheck shell=bash

# Pinned versions of what the scripts install.
KIND_VERSION="${KIND_VERSION:-v0.33.0}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-}" # empty: kind's default for its version
SNAPSHOTTER_VERSION="${SNAPSHOTTER_VERSION:-v8.3.0}"
HOSTPATH_VERSION="${HOSTPATH_VERSION:-v1.17.0}"

# Cluster names: one cluster by default; FERRY_KIND_CLUSTERS=2 makes a
# source and a destination cluster.
SOURCE_CLUSTER="${SOURCE_CLUSTER:-ferry-source}"
DEST_CLUSTER="${DEST_CLUSTER:-ferry-dest}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="$ROOT/bin"
export PATH="$BIN:$PATH"

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# need fails unless each named command exists.
need() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null || die "$c is required (see README: Running on kind)"
  done
}

# ensure_kind installs kind at the pinned version into bin/ when missing.
ensure_kind() {
  if ! command -v kind >/dev/null; then
    need go
    log "installing kind $KIND_VERSION into bin/"
    GOBIN="$BIN" go install "sigs.k8s.io/kind@$KIND_VERSION"
  fi
}

# clusters lists the kind clusters the scripts use.
clusters() {
  if [ "${FERRY_KIND_CLUSTERS:-1}" = 2 ]; then
    printf '%s\n' "$SOURCE_CLUSTER" "$DEST_CLUSTER"
  else
    printf '%s\n' "$SOURCE_CLUSTER"
  fi
}

# context is the kubectl context of a kind cluster.
context() { printf 'kind-%s' "$1"; }

# kc runs kubectl against a kind cluster.
kc() {
  local cluster="$1"
  shift
  kubectl --context "$(context "$cluster")" "$@"
}

# wait_for polls a command until it succeeds or the timeout (seconds)
# passes.
wait_for() {
  local timeout="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${timeout}s waiting for $what"
    sleep 2
  done
}
