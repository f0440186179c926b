#!/usr/bin/env bash
# Runs every test of the project (as root: the tests create real namespaces, mounts and cgroups).
# Installs what the tests need first. Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "test: the tests need root (namespaces, mounts, cgroups); run: sudo $0" >&2
    exit 1
fi
scripts/setup.sh
scripts/mkrootfs.sh
export KATA_TEST_ROOTFS="$PWD/build/rootfs"

echo "== static release build of the agent"
scripts/build-static.sh
./target/release/kata-agent --version

echo "== cargo test"
cargo test --workspace --no-fail-fast --features kata-agent/agent-policy "$@"
