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

echo "== soak (small): execs and container cycles leave the agent's resources at their baseline"
cargo run -q -p bench -- soak --agent target/release/kata-agent --rootfs "$KATA_TEST_ROOTFS" --execs 500 --cycles 100
