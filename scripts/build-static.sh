#!/usr/bin/env bash
# Builds kata-agent as a statically linked release binary (glibc with crt-static; musl where its
# target is installed), so that it can run as init of a minimal guest image.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-gnu
if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
    target=x86_64-unknown-linux-musl
fi
# libseccomp is linked from its static archive.
export LIBSECCOMP_LINK_TYPE=static
export LIBSECCOMP_LIB_PATH=${LIBSECCOMP_LIB_PATH:-/usr/lib/x86_64-linux-gnu}
# Non-PIE: a static-pie binary relocates itself at every start (the agent re-executes itself for
# every container process), dirtying its relocated data pages; a fixed-address one does not.
# Code layout: the functions that run from start-up to the first requests are placed together
# (crates/agent/text-order.txt, made by scripts/text-order.sh), so that an idle agent maps a small
# part of its code instead of pieces all over it. Needs gold (Debian's binutils has it); without
# it the default linker is used and only the layout differs.
layout=""
order="$PWD/crates/agent/text-order.txt"
if command -v ld.gold >/dev/null && [ -s "$order" ]; then
    layout="-C symbol-mangling-version=v0 -C link-arg=-fuse-ld=gold -C link-arg=-Wl,--section-ordering-file=$order"
else
    echo "build-static: ld.gold or $order missing: default code layout" >&2
fi
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static $layout" \
    cargo build --release --target "$target" -p kata-agent --features agent-policy
mkdir -p target/release
cp "target/$target/release/kata-agent" target/release/kata-agent
if file target/release/kata-agent 2>/dev/null | grep -q "dynamically linked"; then
    echo "build-static: kata-agent is not static" >&2
    exit 1
fi
ls -l target/release/kata-agent
