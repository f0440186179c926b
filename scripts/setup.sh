#!/usr/bin/env bash
# Installs what building and testing the agent needs on a fresh Debian machine (run as root).
# Idempotent: does nothing when everything is already there.
set -euo pipefail

packages=(busybox-static libseccomp-dev pkg-config iproute2 kmod iptables e2fsprogs xfsprogs)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
