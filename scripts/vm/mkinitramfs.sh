#!/usr/bin/env bash
# Builds the guest image: an initramfs whose /init loads the kernel modules the agent needs and then
# execs our statically linked kata-agent, so that the agent is PID 1 of the guest.
#
# Usage: scripts/vm/mkinitramfs.sh OUTPUT [AGENT]
#   OUTPUT  the initramfs to write (a newc cpio archive, gzip -1)
#   AGENT   the static kata-agent (default: target/release/kata-agent, from scripts/build-static.sh)
#
# Contents: /init, /usr/bin/kata-agent, a static busybox with one link per applet in /bin, the
# modules below (and what they depend on, resolved with modprobe against the cached kernel) in
# /lib/modules, /dev/console, a minimal /etc. Kernel from scripts/vm/setup.sh ($KATA_VM_CACHE).
#
# /init passes <module>.<param>=<value> options of the kernel command line to insmod (as modprobe
# does for loadable modules), e.g. virtio_net.napi_tx=0. Its own options (the agent ignores them):
#   vmtest.9p=TAG:/guest/path   mount the virtio-9p share TAG at /guest/path before the agent starts
#   vmtest.orphan=/guest/file   leave an orphan (named vmtest-orphan) for the agent to inherit as
#                               PID 1; it exits once /guest/file exists (reaping test)
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
cache="${KATA_VM_CACHE:-$repo/build/vm}"
out=${1:?usage: mkinitramfs.sh OUTPUT [AGENT]}
agent=${2:-$repo/target/release/kata-agent}
busybox=/bin/busybox
kroot="$cache/kernel/current"

fail() {
    echo "mkinitramfs: $*" >&2
    exit 1
}
[ -e "$kroot/vmlinuz" ] || fail "no kernel in $kroot: run scripts/vm/setup.sh"
[ -x "$agent" ] || fail "no agent binary at $agent: run scripts/build-static.sh"
if file -L "$agent" 2>/dev/null | grep -q "dynamically linked"; then
    fail "$agent is dynamically linked; the guest has no libc: run scripts/build-static.sh"
fi
[ -x "$busybox" ] || fail "$busybox is missing: run scripts/vm/setup.sh"
version=$(cat "$kroot/version")

# virtio transport, vsock (the agent's API), block and network devices (hot-plug scenarios), 9p
# and virtio-fs (shared directories; virtiofs needs fuse, virtio and virtio_ring per modules.dep,
# which modprobe orders first), overlay (container rootfs layers), ext4 (block storages).
modules=(virtio_pci vmw_vsock_virtio_transport virtio_blk virtio_net 9pnet_virtio 9p overlay fuse virtiofs ext4)

stage=$(mktemp -d "${TMPDIR:-/tmp}/kata-initramfs.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc,dev,proc,sys,run,tmp,mnt,root,lib/modules}
chmod 1777 "$stage/tmp"
mknod -m 600 "$stage/dev/console" c 5 1
mknod -m 666 "$stage/dev/null" c 1 3

cp "$busybox" "$stage/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$stage/bin/$applet"
done
cp "$agent" "$stage/usr/bin/kata-agent"

# modprobe prints the insmod commands in load order (dependencies first).
: > "$stage/etc/modules.load"
modprobe -a -d "$kroot" -S "$version" --show-depends "${modules[@]}" |
    while read -r verb path _; do
        [ "$verb" = insmod ] || continue # "builtin <name>": nothing to load
        rel=${path#"$kroot"/}
        dest="$stage/$rel"
        if [ ! -e "$dest" ]; then
            mkdir -p "$(dirname "$dest")"
            cp "$path" "$dest"
            echo "/$rel" >> "$stage/etc/modules.load"
        fi
    done
[ -s "$stage/etc/modules.load" ] || fail "modprobe resolved no module for ${modules[*]} in $kroot"

cat > "$stage/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat > "$stage/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
echo "kata-vm" > "$stage/etc/hostname"
: > "$stage/etc/resolv.conf"

cat > "$stage/init" <<'EOF'
#!/bin/sh
# Loads the modules the agent needs, mounts a 9p share if asked to, then becomes the agent (PID 1).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc -o nosuid,nodev,noexec proc /proc
cmdline=$(cat /proc/cmdline)
while read -r m; do
    # Options for the module on the kernel command line (<module>.<param>=<value>), as modprobe
    # would pass them: insmod does not read the command line itself.
    name=${m##*/}
    name=${name%.ko}
    params=""
    for opt in $cmdline; do
        case "$opt" in
        "$name".*=*) params="$params ${opt#"$name".}" ;;
        esac
    done
    # shellcheck disable=SC2086 # one word per option
    insmod "$m" $params || echo "init: cannot load $m$params" >&2
done < /etc/modules.load
for opt in $cmdline; do
    case "$opt" in
    vmtest.9p=*:*)
        spec=${opt#vmtest.9p=}
        tag=${spec%%:*}
        dir=${spec#*:}
        mkdir -p "$dir" && mount -t 9p -o trans=virtio,version=9p2000.L,cache=mmap,msize=262144 "$tag" "$dir" ||
            echo "init: cannot mount the 9p share $tag on $dir" >&2
        ;;
    vmtest.orphan=*)
        # A test process that the agent, as PID 1, inherits: it is re-parented to PID 1 when the
        # subshell exits, and exits itself once the given file exists; the agent must reap it.
        marker=${opt#vmtest.orphan=}
        (sh -c 'while [ ! -e "$1" ]; do sleep 0.2; done' vmtest-orphan "$marker" &)
        ;;
    esac
done
exec /usr/bin/kata-agent
EOF
chmod 755 "$stage/init"

mkdir -p "$(dirname "$out")"
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -1) > "$out.tmp.$$"
mv "$out.tmp.$$" "$out"
echo "mkinitramfs: $out ($(du -h "$out" | cut -f1), kernel $version, $(wc -l < "$stage/etc/modules.load") modules)"
