#!/usr/bin/env bash
# Runs a busybox container in the VM started by scripts/vm/boot.sh, through kata-agent-ctl over
# hybrid vsock: health check, guest details, sandbox, a container that prints a greeting, an exec
# into it, then DestroySandbox, which powers the guest off. Usage: scripts/vm/demo.sh [HVSOCK]
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
hvsock=${1:-build/vm/run/hvsock}
[ -S "$hvsock" ] || { echo "vm demo: no VM socket at $hvsock: start scripts/vm/boot.sh first" >&2; exit 1; }
[ -x target/debug/kata-agent-ctl ] || cargo build -q -p kata-agent-ctl

ctl() { target/debug/kata-agent-ctl connect --hybrid-vsock --server-address "unix://$hvsock" -c "$@"; }
# ReadStdout answers {"data":[bytes...]}: print those bytes as text.
text() {
    local nums
    nums=$(sed -n 's/.*"data":\[\([0-9,]*\)\].*/\1/p')
    [ -n "$nums" ] || return 0
    local IFS=,
    for n in $nums; do printf "\\$(printf '%03o' "$n")"; done
}
step() { printf '\n== %s\n' "$*"; }

step "health check, version and guest details (the agent is PID 1: init_daemon)"
ctl Check Version GetGuestDetails

step "create the sandbox"
ctl "CreateSandbox sandbox_id=vmdemo hostname=kata-vm-demo"

step "create and start a busybox container from the 9p share (/mnt/shared/rootfs in the guest)"
ctl "CreateContainer id=demo1 rootfs=/mnt/shared/rootfs args='sh -c \"echo hello from container \$(hostname) in kernel \$(uname -r); exec sleep 1000\"'" \
    "StartContainer id=demo1"
printf 'container stdout: '
ctl "ReadStdout id=demo1 len=4096" | text

step "exec into the running container"
ctl "ExecProcess cid=demo1 exec_id=ps1 args='sh -c \"ps; echo I am \$(id -un) on \$(hostname)\"'" \
    "WaitProcess cid=demo1 exec_id=ps1"
ctl "ReadStdout cid=demo1 exec_id=ps1 len=65536" | text

step "stop, remove, and DestroySandbox (the guest powers off)"
ctl "SignalProcess id=demo1 signal=SIGKILL" "WaitProcess id=demo1" "RemoveContainer id=demo1" DestroySandbox
echo "vm demo: done"
