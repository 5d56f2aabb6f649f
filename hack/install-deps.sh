#!/usr/bin/env bash
# Installs the Debian packages Ferry's tests use, when any is missing:
# rsync and OpenSSH (the data plane and its interop peers), acl and attr
# (fidelity checks), e2fsprogs and util-linux (loop-device filesystems for the
# CSI driver), iproute2 and nftables (node network namespaces, kube-proxy),
# for real nodes Debian's CNI plugins, libseccomp (runc is built with it)
# and mmdebstrap (the images' root filesystems), and the kind scripts'
# linter (they cannot run here, so they are checked).
set -euo pipefail
pkgs=(rsync openssh-client openssh-server acl attr e2fsprogs util-linux iproute2 nftables iptables kmod shellcheck
  containernetworking-plugins libseccomp-dev mmdebstrap)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The agent refuses rsync older than 3.5.0 (it fixes receiver heap writes
# a hostile peer can reach); Debian 12 serves 3.5.0 from bookworm-security.
if command -v rsync >/dev/null && ! rsync --version | awk 'NR==1 { split($3, v, "."); exit !(v[1] > 3 || (v[1] == 3 && v[2] >= 5)) }'; then
  missing+=(rsync)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing packages: ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
  exit 1
fi
echo ">> installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
