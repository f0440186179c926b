#!/usr/bin/env bash
# Builds the default container rootfs from Debian's busybox-static: a static busybox with one link
# per applet, plus the few files a container expects. No image is pulled from the network.
# Usage: scripts/mkrootfs.sh [DEST]   (default: build/rootfs)
set -euo pipefail

dest=${1:-"$(cd "$(dirname "$0")/.." && pwd)/build/rootfs"}
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "mkrootfs: $busybox is missing; run scripts/setup.sh" >&2; exit 1; }
if [ -x "$dest/bin/busybox" ] && cmp -s "$busybox" "$dest/bin/busybox"; then
    exit 0 # already built from this busybox
fi

tmp="$dest.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,root,run,var/tmp}
chmod 1777 "$tmp/tmp" "$tmp/var/tmp"
cp "$busybox" "$tmp/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] && continue
    ln -sf busybox "$tmp/bin/$applet"
done
cat > "$tmp/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PW
cat > "$tmp/etc/group" <<'GR'
root:x:0:
nogroup:x:65534:
GR
echo "kata-demo" > "$tmp/etc/hostname"
: > "$tmp/etc/resolv.conf"
rm -rf "$dest"
mv "$tmp" "$dest"
echo "mkrootfs: busybox rootfs ready in $dest"
