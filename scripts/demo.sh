#!/usr/bin/env bash
# The main job, end to end: build the agent and its control tool, start the agent standalone on a
# private unix socket, and drive it through kata-agent-ctl: health, version, guest details, a
# sandbox, a busybox container that prints a greeting, an exec into it, then tear-down.
# Run as root on a Debian machine: scripts/demo.sh
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
[ "$(id -u)" -eq 0 ] || { echo "demo: run me as root (the agent creates namespaces, mounts and cgroups)" >&2; exit 1; }

bash scripts/setup.sh
bash scripts/mkrootfs.sh build/rootfs
echo "demo: building kata-agent and kata-agent-ctl"
cargo build -q -p kata-agent -p kata-agent-ctl

work=$(mktemp -d /tmp/kata-demo.XXXXXX)
sock="$work/agent.sock"
agent_pid=""
cleanup() {
    if [ -n "$agent_pid" ] && kill -0 "$agent_pid" 2>/dev/null; then
        kill -TERM "$agent_pid" 2>/dev/null || true
        wait "$agent_pid" 2>/dev/null || true
    fi
    umount -R "$work" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# A private run directory, namespace directory and resolv.conf so that the demo never touches the
# machine's own; an empty kernel command line so that the host's does not configure the agent.
: > "$work/cmdline"
: > "$work/resolv.conf"
KATA_AGENT_SERVER_ADDR="unix://$sock" \
KATA_AGENT_RUN_DIR="$work/run" \
KATA_AGENT_SANDBOX_NS_DIR="$work/ns" \
KATA_AGENT_RESOLV_CONF="$work/resolv.conf" \
KATA_AGENT_CMDLINE="$work/cmdline" \
    target/debug/kata-agent 2>"$work/agent.log" &
agent_pid=$!

ctl() { target/debug/kata-agent-ctl connect --server-address "unix://$sock" -c "$@"; }
# ReadStdout/ReadStderr answer {"data":[bytes...]}: print those bytes as text.
text() {
    local nums
    nums=$(sed -n 's/.*"data":\[\([0-9,]*\)\].*/\1/p')
    [ -n "$nums" ] || return 0
    local IFS=,
    for n in $nums; do printf "\\$(printf '%03o' "$n")"; done
}
step() { printf '\n== %s\n' "$*"; }
# Reads a process's stdout until EOF (a read answering empty data).
read_to_eof() {
    local out
    while out=$(ctl "ReadStdout cid=$1 exec_id=$2 len=65536") && [[ "$out" == *'"data":['[0-9]* ]]; do
        printf '%s\n' "$out" | text
    done
}

step "health check, version and guest details"
ctl Check Version GetGuestDetails

step "create the sandbox"
ctl "CreateSandbox sandbox_id=demo hostname=kata-demo dns='[\"nameserver 10.0.0.53\"]'"

step "create and start a busybox container from $root/build/rootfs"
ctl "CreateContainer id=demo1 rootfs=$root/build/rootfs args='sh -c \"echo hello from container \$(hostname), pid \$\$; exec sleep 1000\"'" \
    "StartContainer id=demo1"
printf 'container stdout: '
ctl "ReadStdout id=demo1 len=4096" | text

step "exec into the running container"
ctl "ExecProcess cid=demo1 exec_id=ps1 args='sh -c \"ps; echo I am \$(id -un) on \$(hostname)\"'"
read_to_eof demo1 ps1
ctl "WaitProcess cid=demo1 exec_id=ps1"

step "stats, then SIGTERM and the exit status (sleep, as pid 1, has no SIGTERM handler: the agent sends SIGKILL, 137)"
stats=$(ctl "StatsContainer id=demo1")
echo "${stats:0:300} ..."
ctl "SignalProcess id=demo1 signal=SIGTERM" "WaitProcess id=demo1"

step "tear down"
ctl "RemoveContainer id=demo1" DestroySandbox
wait "$agent_pid" && echo "agent exited cleanly after DestroySandbox"
agent_pid=""
echo "demo: done"
