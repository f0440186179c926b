#!/usr/bin/env bash
# Boots a guest VM with our kata-agent as PID 1 and keeps it running (Ctrl-C stops it; so does
# DestroySandbox, which powers the guest off). Run as root: scripts/vm/boot.sh [kata-vm options]
#
# First run: installs QEMU, downloads a Debian kernel and builds vhost-device-vsock (a few
# minutes; cached in build/vm), builds the static agent and the initramfs. The busybox rootfs is
# shared with the guest over virtio-9p and appears there as /mnt/shared/rootfs.
# The agent is then served on the hybrid-vsock socket build/vm/run/hvsock: drive it with
# scripts/vm/demo.sh or kata-agent-ctl --hybrid-vsock. Options: target/debug/kata-vm --help
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
[ "$(id -u)" -eq 0 ] || { echo "vm boot: run me as root (QEMU, vsock device, apt-get)" >&2; exit 1; }

bash scripts/setup.sh
bash scripts/mkrootfs.sh build/rootfs
bash scripts/vm/setup.sh
echo "vm boot: building kata-vm and kata-agent-ctl"
cargo build -q -p vmtest -p kata-agent-ctl

share=build/vm/share
rm -rf "$share"
mkdir -p "$share"
cp -a build/rootfs "$share/rootfs"
exec target/debug/kata-vm --share "$share" "$@"
