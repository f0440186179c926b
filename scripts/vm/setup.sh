#!/usr/bin/env bash
# Installs and caches what the VM harness needs (run as root on Debian; idempotent, quick once done):
#   * Debian packages: qemu-system-x86, cpio, kmod, busybox-static, e2fsprogs (test disk images);
#   * a Debian kernel (vmlinuz + modules), unpacked under $KATA_VM_CACHE/kernel/<version>/;
#   * vhost-device-vsock from crates.io (hybrid vsock for QEMU), under $KATA_VM_CACHE/cargo/bin/,
#     its `OK` reply changed to carry the host-side port (see below);
#   * virtiofsd from crates.io (the virtio-fs device), beside it (needs libcap-ng-dev and
#     libseccomp-dev, installed here).
# The cache defaults to build/vm (gitignored). Prints nothing but progress; exits non-zero with a
# message that names what is missing when a download or build fails.
#
# Environment:
#   KATA_VM_CACHE        cache directory (default: <repo>/build/vm)
#   KATA_VM_KERNEL_PKG   kernel package to use (default: what linux-image-amd64 depends on; the
#                        generic flavour, because Debian's cloud kernel has no 9p file system)
#   KATA_VM_VSOCK_VERSION  vhost-device-vsock version (default: 0.3.0)
#   KATA_VM_VIRTIOFSD_VERSION  virtiofsd version (default: 1.14.0)
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
cache="${KATA_VM_CACHE:-$repo/build/vm}"
vsock_version="${KATA_VM_VSOCK_VERSION:-0.3.0}"
virtiofsd_version="${KATA_VM_VIRTIOFSD_VERSION:-1.14.0}"
mkdir -p "$cache"

fail() {
    echo "vm setup: $*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || fail "run me as root (apt-get, and the VM tests need root anyway)"

apt_updated=""
apt_update() {
    if [ -z "$apt_updated" ]; then
        apt-get update -qq || fail "apt-get update failed (no network?)"
        apt_updated=1
    fi
}

# --- Debian packages -------------------------------------------------------------------------
# libcap-ng-dev, libseccomp-dev and pkg-config: to build virtiofsd (it links both libraries).
packages=(qemu-system-x86 cpio kmod busybox-static e2fsprogs libcap-ng-dev libseccomp-dev pkg-config)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "vm setup: installing ${missing[*]}"
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        >/dev/null || fail "cannot install the Debian packages ${missing[*]} (no network?)"
fi

# --- kernel ----------------------------------------------------------------------------------
kdir="$cache/kernel"
mkdir -p "$kdir"
if [ ! -e "$kdir/current/vmlinuz" ] || [ -n "${KATA_VM_KERNEL_PKG:-}" ]; then
    pkg="${KATA_VM_KERNEL_PKG:-}"
    if [ -z "$pkg" ]; then
        pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n1)
        if [ -z "$pkg" ]; then
            apt_update
            pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n1)
        fi
        [ -n "$pkg" ] || fail "cannot find a kernel package: apt-cache knows no linux-image-amd64 (run apt-get update; network?)"
    fi
    version="${pkg#linux-image-}"
    version="${version%-unsigned}"
    if [ ! -e "$kdir/$version/vmlinuz" ]; then
        echo "vm setup: downloading the kernel package $pkg"
        tmp="$kdir/dl.$$"
        rm -rf "$tmp"
        mkdir -p "$tmp"
        # apt's sandbox user cannot write here; as root apt falls back to an unsandboxed download.
        if ! (cd "$tmp" && apt-get download -q "$pkg" >/dev/null 2>"$tmp/apt.err"); then
            apt_update
            (cd "$tmp" && apt-get download -q "$pkg" >/dev/null 2>"$tmp/apt.err") ||
                fail "cannot download the kernel package $pkg: $(grep -v '^W:' "$tmp/apt.err" | tail -n 3) (no network?)"
        fi
        dpkg-deb -x "$tmp"/*.deb "$tmp/x" || fail "cannot unpack $(ls "$tmp"/*.deb)"
        [ -e "$tmp/x/boot/vmlinuz-$version" ] || fail "the package $pkg has no /boot/vmlinuz-$version"
        rm -rf "$kdir/$version"
        mkdir -p "$kdir/$version/lib"
        mv "$tmp/x/boot/vmlinuz-$version" "$kdir/$version/vmlinuz"
        mv "$tmp/x/boot/config-$version" "$kdir/$version/config" 2>/dev/null || true
        mv "$tmp/x/lib/modules" "$kdir/$version/lib/modules"
        # The package leaves modules.dep to its postinst: make it, so modprobe can resolve deps.
        depmod -b "$kdir/$version" "$version" || fail "depmod failed for $version"
        echo "$version" > "$kdir/$version/version"
        rm -rf "$tmp"
    fi
    ln -sfn "$version" "$kdir/current"
fi

# --- vhost-device-vsock ----------------------------------------------------------------------
# Built from its crates.io source with one change: the reply to a host's `CONNECT <port>` is
# `OK <host-side port>` (the hybrid-vsock protocol of Firecracker, Cloud Hypervisor and Dragonball:
# the port the guest sees as the connection's peer port). vhost-device-vsock itself answers with
# the guest port it was asked for, so a host could not name its pass-fd stdio connections
# (`stdout_port` etc.). The stamp file records that the binary is the changed build.
vsock_bin="$cache/cargo/bin/vhost-device-vsock"
vsock_stamp="$cache/cargo/vhost-device-vsock.ok-host-port"
if [ ! -x "$vsock_bin" ] || [ ! -e "$vsock_stamp" ] ||
    ! "$vsock_bin" --version 2>/dev/null | grep -q " $vsock_version\$"; then
    echo "vm setup: building vhost-device-vsock $vsock_version from crates.io (takes a few minutes)"
    log="$cache/vhost-device-vsock-build.log"
    src="$cache/src"
    rm -rf "$src/fetch" "$src/vhost-device-vsock-$vsock_version"
    mkdir -p "$src/fetch/src"
    # A throw-away manifest that depends on the crate: `cargo fetch` puts its .crate file in
    # cargo's registry cache, where it is unpacked from.
    cat >"$src/fetch/Cargo.toml" <<TOML
[package]
name = "fetch-vhost-device-vsock"
version = "0.0.0"
edition = "2021"
[dependencies]
vhost-device-vsock = "=$vsock_version"
[workspace]
TOML
    : >"$src/fetch/src/lib.rs"
    (cd "$src/fetch" && cargo fetch --quiet) >"$log" 2>&1 ||
        { tail -n 20 "$log" >&2; fail "cannot download vhost-device-vsock $vsock_version (no network? see $log)"; }
    crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"vhost-device-vsock-$vsock_version.crate" 2>/dev/null | head -n1)
    [ -n "$crate" ] || fail "cargo fetch left no vhost-device-vsock-$vsock_version.crate in the registry cache"
    tar -xzf "$crate" -C "$src" || fail "cannot unpack $crate"
    conn="$src/vhost-device-vsock-$vsock_version/src/vsock_conn.rs"
    grep -q 'format!("OK {}\\n", self.peer_port)' "$conn" ||
        fail "vhost-device-vsock $vsock_version: the CONNECT reply is not where scripts/vm/setup.sh expects it"
    sed -i 's/format!("OK {}\\n", self.peer_port)/format!("OK {}\\n", self.local_port)/' "$conn"
    # Unpacked below the repository: keep it out of our cargo workspace.
    printf '\n[workspace]\n' >>"$src/vhost-device-vsock-$vsock_version/Cargo.toml"
    if ! cargo install --locked --quiet --force --path "$src/vhost-device-vsock-$vsock_version" \
        --root "$cache/cargo" >>"$log" 2>&1; then
        tail -n 20 "$log" >&2
        fail "cannot build vhost-device-vsock $vsock_version with cargo install (see $log)"
    fi
    rm -rf "$src/fetch" "$src/vhost-device-vsock-$vsock_version/target"
    touch "$vsock_stamp"
fi

# --- virtiofsd --------------------------------------------------------------------------------
# The virtio-fs device's vhost-user back end (QEMU's vhost-user-fs-pci). About 1.5 min to build.
virtiofsd_bin="$cache/cargo/bin/virtiofsd"
if [ ! -x "$virtiofsd_bin" ] || ! "$virtiofsd_bin" --version 2>/dev/null | grep -q " $virtiofsd_version\$"; then
    echo "vm setup: building virtiofsd $virtiofsd_version from crates.io (takes a minute or two)"
    log="$cache/virtiofsd-build.log"
    if ! cargo install --locked --quiet --version "$virtiofsd_version" virtiofsd \
        --root "$cache/cargo" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        fail "cannot build virtiofsd $virtiofsd_version with cargo install (needs libcap-ng-dev and libseccomp-dev; no network? see $log); the virtio-fs scenarios need it"
    fi
fi

echo "vm setup: ready (kernel $(cat "$kdir/current/version"), $("$vsock_bin" --version), $("$virtiofsd_bin" --version))"
