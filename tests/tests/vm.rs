//! Real-VM scenarios: our static `kata-agent` as PID 1 of a QEMU guest (Debian kernel, initramfs
//! from `scripts/vm/mkinitramfs.sh`), driven from the host over hybrid vsock with the generated
//! ttRPC clients and with `kata-agent-ctl`. See docs/vm.md.
//!
//! One VM boot per test (a scenario group); every group ends with DestroySandbox and checks that
//! the guest powered off cleanly. Needs root, QEMU, a cached kernel and vhost-device-vsock
//! (installed by `scripts/vm/setup.sh`, which the harness runs). Without them the tests fail
//! saying what is missing, unless `KATA_SKIP_VM_TESTS=1`, which skips them (with a message).

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use e2e::binary;
use protocols::agent::{
    CloseStdinRequest, CreateContainerRequest, CreateSandboxRequest, DestroySandboxRequest,
    ExecProcessRequest, GetOOMEventRequest, GuestDetailsRequest, ReadStreamRequest,
    RemoveContainerRequest, SignalProcessRequest, StartContainerRequest, WaitProcessRequest,
    WriteStreamRequest,
};
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::health::{health_check_response::ServingStatus, CheckRequest};
use serde_json::{json, Value};
use vmtest::{Assets, VirtioFs, Vm, VmConfig, DEFAULT_SHARE_AT};

/// Prints to the real stderr, past the test harness's output capture: skips, boot times and
/// scenario durations show in CI logs.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Upper bound for a boot under TCG on a loaded 2-CPU machine (it usually takes ~10 s).
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// The prepared assets, or `None` when the VM tests are skipped. Panics with what is missing.
fn assets() -> Option<Assets> {
    if vmtest::skip_requested() {
        note!("VM test skipped: {}=1", vmtest::SKIP_ENV);
        return None;
    }
    static ASSETS: OnceLock<Result<Assets, String>> = OnceLock::new();
    match ASSETS.get_or_init(|| Assets::prepare().map_err(|e| format!("{e:#}"))) {
        Ok(a) => Some(a.clone()),
        Err(e) => panic!(
            "the VM tests cannot run: {e}\n(set {}=1 to skip them)",
            vmtest::SKIP_ENV
        ),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

/// A host directory shared with the guest: `rootfs/` is a copy of the busybox rootfs.
struct Share {
    dir: tempfile::TempDir,
}

impl Share {
    fn new() -> Share {
        Share {
            dir: e2e::vm_share(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The guest path of the container rootfs.
    fn guest_rootfs(&self) -> String {
        format!("{DEFAULT_SHARE_AT}/rootfs")
    }
}

/// A booted guest plus its agent clients.
struct Guest {
    vm: Vm,
    client: AgentServiceClient,
    boot: Duration,
}

/// Boots a guest; its clients live on `rt` (ttRPC connections die with their runtime).
fn boot(
    rt: &tokio::runtime::Runtime,
    assets: &Assets,
    name: &str,
    params: &[&str],
    share: &Share,
) -> Guest {
    let mut cfg = VmConfig {
        name: name.into(),
        kernel_params: params.iter().map(|s| s.to_string()).collect(),
        share: Some((
            share.path().to_path_buf(),
            Some(DEFAULT_SHARE_AT.to_string()),
        )),
        ..VmConfig::default()
    };
    cfg.kernel_params.push("agent.log=debug".into());
    let mut vm = Vm::start(assets, cfg).expect("start the VM");
    let boot = rt
        .block_on(vm.wait_ready(BOOT_TIMEOUT))
        .unwrap_or_else(|e| panic!("{e:#}"));
    note!(
        "VM {name}: boot-to-first-Check {:.2} s ({:?})",
        boot.as_secs_f64(),
        vm.accel
    );
    let (client, _) = rt.block_on(vm.clients()).unwrap();
    Guest { vm, client, boot }
}

/// An OCI spec (protobuf shape) for a busybox container on the shared rootfs.
fn spec(rootfs: &str, args: &[&str], extra: impl FnOnce(&mut Value)) -> protocols::oci::Spec {
    let args = args.iter().map(|s| s.to_string()).collect();
    let mut v = kata_agent_ctl::spec::default_spec_json(rootfs, args, false);
    extra(&mut v);
    serde_json::from_value(v).expect("spec JSON matches the protobuf shape")
}

/// Adds read-only bind mounts of the guest's /proc and cgroup tree, so that a container can
/// look at the agent (PID 1 of the guest) and at the cgroups it made.
fn with_guest_views(v: &mut Value) {
    let mounts = v["Mounts"].as_array_mut().unwrap();
    mounts.push(
        json!({"destination": "/guestproc", "source": "/proc", "type": "bind",
                       "options": ["rbind", "ro"]}),
    );
    mounts.push(
        json!({"destination": "/guestcgroup", "source": "/sys/fs/cgroup", "type": "bind",
                       "options": ["rbind", "ro"]}),
    );
}

/// Runs a process in container `cid` and returns (exit status, stdout, stderr).
async fn exec(
    client: &AgentServiceClient,
    cid: &str,
    exec_id: &str,
    args: &[&str],
) -> (i32, Vec<u8>, Vec<u8>) {
    let mut req = ExecProcessRequest::new();
    req.container_id = cid.into();
    req.exec_id = exec_id.into();
    let process = kata_agent_ctl::spec::default_process_json(
        args.iter().map(|s| s.to_string()).collect(),
        false,
    );
    req.process = protobuf::MessageField::some(serde_json::from_value(process).unwrap());
    client
        .exec_process(ctx(), &req)
        .await
        .unwrap_or_else(|e| panic!("ExecProcess {args:?}: {e:?}"));
    let out = read_all(client, cid, exec_id, false).await;
    let err = read_all(client, cid, exec_id, true).await;
    let status = wait(client, cid, exec_id).await;
    (status, out, err)
}

/// Reads a stream until end of file.
async fn read_all(client: &AgentServiceClient, cid: &str, exec_id: &str, stderr: bool) -> Vec<u8> {
    let mut data = Vec::new();
    loop {
        let mut req = ReadStreamRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        req.len = 65536;
        let resp = if stderr {
            client.read_stderr(ctx(), &req).await
        } else {
            client.read_stdout(ctx(), &req).await
        };
        match resp {
            Ok(r) if r.data.is_empty() => return data,
            Ok(r) => data.extend_from_slice(&r.data),
            // Some agents answer a read after EOF with an error rather than empty data.
            Err(_) if !data.is_empty() => return data,
            Err(e) => panic!("read {cid}/{exec_id}: {e:?}"),
        }
    }
}

/// Writes `data` to the stdin of `cid`/`exec_id` in a task (so that the caller can read the
/// output meanwhile), then closes it.
fn feed_stdin(
    client: &AgentServiceClient,
    cid: &str,
    exec_id: &str,
    data: Vec<u8>,
) -> tokio::task::JoinHandle<()> {
    let (c, cid, exec_id) = (client.clone(), cid.to_string(), exec_id.to_string());
    tokio::spawn(async move {
        for chunk in data.chunks(60 * 1024) {
            let mut req = WriteStreamRequest::new();
            req.container_id = cid.clone();
            req.exec_id = exec_id.clone();
            let mut off = 0;
            while off < chunk.len() {
                req.data = chunk[off..].to_vec();
                let n = c.write_stdin(ctx(), &req).await.unwrap().len as usize;
                assert!(n > 0);
                off += n;
            }
        }
        let mut req = CloseStdinRequest::new();
        req.container_id = cid;
        req.exec_id = exec_id;
        c.close_stdin(ctx(), &req).await.unwrap();
    })
}

async fn wait(client: &AgentServiceClient, cid: &str, exec_id: &str) -> i32 {
    let mut req = WaitProcessRequest::new();
    req.container_id = cid.into();
    req.exec_id = exec_id.into();
    client
        .wait_process(ctx(), &req)
        .await
        .unwrap_or_else(|e| panic!("WaitProcess {cid}/{exec_id}: {e:?}"))
        .status
}

async fn create_and_start(client: &AgentServiceClient, cid: &str, spec: protocols::oci::Spec) {
    let mut req = CreateContainerRequest::new();
    req.container_id = cid.into();
    req.exec_id = cid.into();
    req.OCI = protobuf::MessageField::some(spec);
    client
        .create_container(ctx(), &req)
        .await
        .unwrap_or_else(|e| panic!("CreateContainer {cid}: {e:?}"));
    let mut req = StartContainerRequest::new();
    req.container_id = cid.into();
    client
        .start_container(ctx(), &req)
        .await
        .unwrap_or_else(|e| panic!("StartContainer {cid}: {e:?}"));
}

async fn remove(client: &AgentServiceClient, cid: &str) {
    let mut req = RemoveContainerRequest::new();
    req.container_id = cid.into();
    req.timeout = 10;
    client
        .remove_container(ctx(), &req)
        .await
        .unwrap_or_else(|e| panic!("RemoveContainer {cid}: {e:?}"));
}

/// What a runtime does before removing a running container: SIGKILL its init, wait, remove.
async fn stop_and_remove(client: &AgentServiceClient, cid: &str) {
    let mut req = SignalProcessRequest::new();
    req.container_id = cid.into();
    req.signal = libc::SIGKILL as u32;
    client
        .signal_process(ctx(), &req)
        .await
        .unwrap_or_else(|e| panic!("SignalProcess {cid}: {e:?}"));
    assert_eq!(wait(client, cid, "").await, 137);
    remove(client, cid).await;
}

async fn create_sandbox(client: &AgentServiceClient, id: &str) {
    let mut req = CreateSandboxRequest::new();
    req.hostname = "vmtest".into();
    req.sandbox_id = id.into();
    client
        .create_sandbox(ctx(), &req)
        .await
        .unwrap_or_else(|e| panic!("CreateSandbox: {e:?}"));
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `sh -c script` in the probe container and returns its stdout (status must be 0).
async fn sh(client: &AgentServiceClient, cid: &str, script: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let id = format!("sh{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let (status, out, err) = exec(client, cid, &id, &["sh", "-c", script]).await;
    assert_eq!(status, 0, "{script:?} failed: {}{}", text(&out), text(&err));
    text(&out)
}

/// Checks a field of /proc/1/mountinfo (seen as /guestproc/1/mountinfo): a mount of `fstype`
/// on `point` exists.
fn has_mount(mountinfo: &str, point: &str, fstype: &str) -> bool {
    mountinfo.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-");
        matches!(sep, Some(s) if f.len() > s + 1 && f[4] == point && f[s + 1] == fstype)
    })
}

/// The limit line of /proc/1/limits for core files: (soft, hard).
fn core_limit(limits: &str) -> (String, String) {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("a core file size line");
    let f: Vec<&str> = line["Max core file size".len()..]
        .split_whitespace()
        .collect();
    (f[0].to_string(), f[1].to_string())
}

/// DestroySandbox, then the guest must power off by itself: QEMU exits with status 0, the
/// console shows the power-down and no kernel panic (the agent, as PID 1, must not just exit).
async fn destroy_and_expect_poweroff(vm: &mut Vm, client: &AgentServiceClient) {
    client
        .destroy_sandbox(ctx(), &DestroySandboxRequest::new())
        .await
        .unwrap_or_else(|e| panic!("DestroySandbox: {e:?}"));
    let status = vm.wait_exit(Duration::from_secs(120)).unwrap_or_else(|| {
        let state = vm
            .qmp()
            .and_then(|mut q| q.execute("query-status", json!({})))
            .map_or_else(|e| format!("QMP: {e:#}"), |s| s.to_string());
        panic!(
            "the guest did not power off (QEMU state: {state}):\n{}",
            vm.diagnostics()
        )
    });
    let console = vm.console_log();
    assert!(status.success(), "QEMU {status}:\n{console}");
    assert!(
        console.contains("reboot: Power down"),
        "no power-down on the console:\n{console}"
    );
    assert!(
        !console.contains("Kernel panic"),
        "kernel panic:\n{console}"
    );
}

/// PID-1 duties, the API over hybrid vsock (ttRPC and kata-agent-ctl), a busybox container from
/// the 9p share with exec and byte-exact I/O, cgroup v1 memory limit and OOM event, reaping of
/// an orphan inherited by PID 1, and the clean power-off after DestroySandbox.
#[test]
fn vm_init_api_containers_cgroup_v1() {
    let Some(assets) = assets() else { return };
    let started = Instant::now();
    let share = Share::new();
    let orphan_marker = share.path().join("orphan-may-exit");
    let rt = rt();
    let mut guest = boot(
        &rt,
        &assets,
        "v1",
        &[&format!("vmtest.orphan={DEFAULT_SHARE_AT}/orphan-may-exit")],
        &share,
    );
    rt.block_on(async {
        let c = guest.client.clone();

        // --- the API over hybrid vsock
        let (_, health) = guest.vm.clients().await.unwrap();
        let r = health.check(ctx(), &CheckRequest::new()).await.unwrap();
        assert_eq!(r.status.enum_value(), Ok(ServingStatus::SERVING));
        let v = health.version(ctx(), &CheckRequest::new()).await.unwrap();
        assert_eq!(v.agent_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(v.grpc_version, "0.0.1");
        let mut req = GuestDetailsRequest::new();
        req.mem_block_size = true;
        let d = c.get_guest_details(ctx(), &req).await.unwrap();
        let details = d.agent_details.as_ref().unwrap();
        assert!(details.init_daemon, "the agent is PID 1 of the guest");
        assert_eq!(details.version, env!("CARGO_PKG_VERSION"));
        assert!(
            d.mem_block_size_bytes.is_power_of_two(),
            "{}",
            d.mem_block_size_bytes
        );

        // kata-agent-ctl reaches the same agent over hybrid vsock.
        let out = std::process::Command::new(binary("kata-agent-ctl"))
            .args(["connect", "--hybrid-vsock", "--server-address"])
            .arg(guest.vm.agent_addr())
            .args(["-c", "Check", "GetGuestDetails"])
            .output()
            .unwrap();
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
        let lines: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["status"], 1);
        assert_eq!(lines[1]["agent_details"]["init_daemon"], true);

        create_sandbox(&c, "vm-v1").await;

        // --- a probe container that sees the guest's /proc and cgroups
        let rootfs = share.guest_rootfs();
        create_and_start(
            &c,
            "probe",
            spec(&rootfs, &["sleep", "100000"], with_guest_views),
        )
        .await;

        // PID-1 duties: the agent is PID 1 and did the base and cgroup v1 mounts.
        assert_eq!(
            sh(&c, "probe", "cat /guestproc/1/comm").await.trim(),
            "kata-agent"
        );
        let mi = sh(&c, "probe", "cat /guestproc/1/mountinfo").await;
        for (point, fstype) in [
            ("/proc", "proc"),
            ("/sys", "sysfs"),
            ("/dev", "devtmpfs"),
            ("/dev/shm", "tmpfs"),
            ("/dev/pts", "devpts"),
            ("/run", "tmpfs"),
            ("/sys/fs/cgroup", "tmpfs"),
            ("/sys/fs/cgroup/memory", "cgroup"),
            ("/sys/fs/cgroup/cpu", "cgroup"),
            ("/sys/fs/cgroup/devices", "cgroup"),
            ("/sys/fs/cgroup/pids", "cgroup"),
            (DEFAULT_SHARE_AT, "9p"),
        ] {
            assert!(
                has_mount(&mi, point, fstype),
                "no {fstype} on {point}:\n{mi}"
            );
        }
        // Containers share the sandbox's UTS namespace, named by CreateSandbox.
        assert_eq!(sh(&c, "probe", "hostname").await.trim(), "vmtest");
        // Without agent.devmode, core dumps stay off.
        let limits = sh(&c, "probe", "cat /guestproc/1/limits").await;
        assert_eq!(core_limit(&limits).0, "0", "{limits}");

        // Reaping: the orphan /init left behind is now a child of PID 1; once it exits the
        // agent must reap it (a zombie would keep its /proc entry, in state Z).
        let find_orphan = "for d in /guestproc/[0-9]*; do \
             if grep -q 'vmtest-orpha[n]' $d/cmdline 2>/dev/null; then \
               echo $(cut -d' ' -f3,4 $d/stat); fi; done";
        let found = sh(&c, "probe", find_orphan).await;
        let orphans: Vec<&str> = found.lines().collect();
        assert!(
            !orphans.is_empty() && orphans.iter().all(|l| l.ends_with(" 1")),
            "the orphan should be a child of PID 1: {found:?}"
        );
        std::fs::write(&orphan_marker, b"").unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = sh(&c, "probe", find_orphan).await;
            if left.trim().is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the orphan was not reaped by PID 1: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // --- byte-exact I/O: 1 MiB of all byte values through cat's stdin and stdout
        create_and_start(&c, "cat", spec(&rootfs, &["cat"], |_| {})).await;
        let data = e2e::pattern(1 << 20, 7);
        let writer = feed_stdin(&c, "cat", "cat", data.clone());
        let echoed = read_all(&c, "cat", "cat", false).await;
        writer.await.unwrap();
        assert_eq!(wait(&c, "cat", "cat").await, 0);
        assert_eq!(echoed.len(), data.len());
        assert!(echoed == data, "cat's output differs from its input");
        remove(&c, "cat").await;

        // Exec: separate stdout and stderr, exit status.
        let (status, out, err) = exec(
            &c,
            "probe",
            "streams",
            &[
                "sh",
                "-c",
                "printf 'to stdout'; printf 'to stderr' >&2; exit 7",
            ],
        )
        .await;
        assert_eq!(
            (status, text(&out), text(&err)),
            (7, "to stdout".into(), "to stderr".into())
        );

        // The 9p share both ways: a host file read in the container, a container file read on
        // the host, byte for byte.
        let blob = e2e::pattern(300_000, 11);
        std::fs::write(share.path().join("rootfs/from-host.bin"), &blob).unwrap();
        let (status, out, _) = exec(&c, "probe", "read-share", &["cat", "/from-host.bin"]).await;
        assert_eq!(status, 0);
        assert!(
            out == blob,
            "file read over 9p differs ({} bytes)",
            out.len()
        );
        sh(&c, "probe", "cp /from-host.bin /from-guest.bin && sync").await;
        let back = std::fs::read(share.path().join("rootfs/from-guest.bin")).unwrap();
        assert!(back == blob, "file written over 9p differs");

        // --- cgroup v1: memory limit applied, OOM kill reported by GetOOMEvent
        let limit: i64 = 32 << 20;
        create_and_start(
            &c,
            "hog",
            spec(
                &rootfs,
                &[
                    "sh",
                    "-c",
                    "sleep 1; dd if=/dev/zero of=/dev/null bs=96M count=1",
                ],
                |v| {
                    v["Linux"]["Resources"] = json!({"Memory": {"Limit": limit}});
                    v["Linux"]["CgroupsPath"] = json!("/vmtest/hog");
                },
            ),
        )
        .await;
        let knob = sh(
            &c,
            "probe",
            "cat /guestcgroup/memory/vmtest/hog/memory.limit_in_bytes",
        )
        .await;
        assert_eq!(knob.trim(), limit.to_string());
        let ev = c
            .get_oom_event(ctx(), &GetOOMEventRequest::new())
            .await
            .unwrap_or_else(|e| panic!("GetOOMEvent: {e:?}"));
        assert_eq!(ev.container_id, "hog");
        assert_eq!(wait(&c, "hog", "hog").await, 137, "killed by SIGKILL");
        remove(&c, "hog").await;

        // No zombie anywhere in the guest after all this.
        let zombies = sh(
            &c,
            "probe",
            "for d in /guestproc/[0-9]*; do s=$(cut -d' ' -f3 $d/stat 2>/dev/null); \
             [ \"$s\" = Z ] && cat $d/comm; done; true",
        )
        .await;
        assert_eq!(zombies.trim(), "", "zombies in the guest");

        stop_and_remove(&c, "probe").await;
        destroy_and_expect_poweroff(&mut guest.vm, &c).await;
    });
    note!(
        "VM v1: boot {:.2} s, whole scenario group {:.1} s",
        guest.boot.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// cgroup v2 (`agent.unified_cgroup_hierarchy=1`) with a real memory controller and OOM event,
/// and `agent.devmode` visible in the agent's limits (core dumps unlimited).
#[test]
fn vm_cgroup_v2_and_devmode() {
    let Some(assets) = assets() else { return };
    let started = Instant::now();
    let share = Share::new();
    let rt = rt();
    let mut guest = boot(
        &rt,
        &assets,
        "v2",
        &["agent.unified_cgroup_hierarchy=1", "agent.devmode"],
        &share,
    );
    rt.block_on(async {
        let c = guest.client.clone();
        create_sandbox(&c, "vm-v2").await;
        let rootfs = share.guest_rootfs();
        create_and_start(
            &c,
            "probe",
            spec(&rootfs, &["sleep", "100000"], with_guest_views),
        )
        .await;

        let mi = sh(&c, "probe", "cat /guestproc/1/mountinfo").await;
        assert!(has_mount(&mi, "/sys/fs/cgroup", "cgroup2"), "{mi}");
        assert!(!has_mount(&mi, "/sys/fs/cgroup/memory", "cgroup"), "{mi}");
        let controllers = sh(&c, "probe", "cat /guestcgroup/cgroup.controllers").await;
        assert!(
            controllers.split_whitespace().any(|c| c == "memory"),
            "{controllers}"
        );

        // devmode: RLIMIT_CORE unlimited for the agent.
        let limits = sh(&c, "probe", "cat /guestproc/1/limits").await;
        assert_eq!(
            core_limit(&limits),
            ("unlimited".to_string(), "unlimited".to_string()),
            "{limits}"
        );

        let limit: i64 = 32 << 20;
        create_and_start(
            &c,
            "hog",
            spec(
                &rootfs,
                &[
                    "sh",
                    "-c",
                    "sleep 1; dd if=/dev/zero of=/dev/null bs=96M count=1",
                ],
                |v| {
                    v["Linux"]["Resources"] = json!({"Memory": {"Limit": limit}});
                    v["Linux"]["CgroupsPath"] = json!("/vmtest/hog");
                },
            ),
        )
        .await;
        let knob = sh(&c, "probe", "cat /guestcgroup/vmtest/hog/memory.max").await;
        assert_eq!(knob.trim(), limit.to_string());
        let ev = c
            .get_oom_event(ctx(), &GetOOMEventRequest::new())
            .await
            .unwrap_or_else(|e| panic!("GetOOMEvent: {e:?}"));
        assert_eq!(ev.container_id, "hog");
        assert_eq!(wait(&c, "hog", "hog").await, 137, "killed by SIGKILL");
        let events = sh(&c, "probe", "cat /guestcgroup/vmtest/hog/memory.events").await;
        let oom_kills: u64 = events
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        assert!(oom_kills >= 1, "{events}");
        remove(&c, "hog").await;
        // Removing a running container kills it.
        remove(&c, "probe").await;
        destroy_and_expect_poweroff(&mut guest.vm, &c).await;
    });
    note!(
        "VM v2: boot {:.2} s, whole scenario group {:.1} s",
        guest.boot.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// Reads from `stream` until `needle` shows up (or the deadline passes); returns all read.
fn read_until(
    stream: &mut std::os::unix::net::UnixStream,
    needle: &str,
    timeout: Duration,
) -> String {
    use std::io::Read;
    let deadline = Instant::now() + timeout;
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
        if text(&got).contains(needle) {
            break;
        }
    }
    text(&got)
}

/// Reads the log stream line by line until a record mentions `needle`; every line must be one
/// JSON record with `msg` and `level`. Returns the records read.
fn log_lines_until(
    reader: &mut std::io::BufReader<std::os::unix::net::UnixStream>,
    needle: &str,
    timeout: Duration,
) -> Vec<Value> {
    use std::io::BufRead;
    let deadline = Instant::now() + timeout;
    reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut records = Vec::new();
    let mut line: Vec<u8> = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "no log record with {needle:?} within {timeout:?}; got {records:?}"
        );
        // A timed-out read keeps what it got in `line`; the next call appends the rest.
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => panic!("the log stream closed; got {records:?}"),
            Ok(_) if line.ends_with(b"\n") => {
                let record: Value = serde_json::from_slice(&line)
                    .unwrap_or_else(|e| panic!("not a JSON record ({e}): {}", text(&line)));
                assert!(
                    record["msg"].is_string() && record["level"].is_string(),
                    "{record}"
                );
                let hit = text(&line).contains(needle);
                records.push(record);
                line.clear();
                if hit {
                    return records;
                }
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("reading the log stream: {e}"),
        }
    }
}

/// The side channels: the log stream on vsock port 1025 (`agent.log_vport`), the debug console
/// on its vport (`agent.debug_console_vport`), and trace spans exported to the host's port 10240
/// (`agent.trace`), which arrive on `<hvsock>_10240`.
#[test]
fn vm_log_vport_debug_console_and_traces() {
    let Some(assets) = assets() else { return };
    let started = Instant::now();
    let share = Share::new();
    let rt = rt();
    let cfg = VmConfig {
        name: "obs".into(),
        kernel_params: [
            "agent.log=debug",
            "agent.log_vport=1025",
            "agent.debug_console",
            "agent.debug_console_vport=1026",
            "agent.trace",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        share: Some((share.path().to_path_buf(), Some(DEFAULT_SHARE_AT.into()))),
        ..VmConfig::default()
    };
    let mut vm = Vm::start(&assets, cfg).expect("start the VM");
    // The trace collector listens before the guest boots; the agent connects on its first export.
    let collector = vm.listen_port(10240).unwrap();
    let spans = std::thread::spawn(move || {
        use std::io::Read;
        let mut frames: Vec<Value> = Vec::new();
        // The agent reconnects after a failed export: read every connection until power-off
        // closes the last one (the listener is dropped with the thread).
        collector.set_nonblocking(false).unwrap();
        while let Ok((mut s, _)) = collector.accept() {
            loop {
                let mut len = [0u8; 8];
                if s.read_exact(&mut len).is_err() {
                    break;
                }
                let mut body = vec![0u8; u64::from_be_bytes(len) as usize];
                if s.read_exact(&mut body).is_err() {
                    break;
                }
                frames.push(serde_json::from_slice(&body).expect("a span is one JSON object"));
            }
            if frames.iter().any(|f| f["name"] == "root-span") {
                break;
            }
        }
        frames
    });
    let boot = rt
        .block_on(vm.wait_ready(BOOT_TIMEOUT))
        .unwrap_or_else(|e| panic!("{e:#}"));
    note!("VM obs: boot-to-first-Check {:.2} s", boot.as_secs_f64());

    // Log stream: JSON records from the very first one (buffered until the host connected).
    let mut logs = std::io::BufReader::new(vm.connect_port(1025, Duration::from_secs(30)).unwrap());
    let head = log_lines_until(&mut logs, "\"announce\"", Duration::from_secs(30));
    assert!(
        head.last().is_some_and(|r| r["msg"] == "announce"),
        "no announce record in the log stream: {head:?}"
    );

    // Debug console: a root shell in the guest, outside containers.
    let mut console = vm.connect_port(1026, Duration::from_secs(30)).unwrap();
    {
        use std::io::Write;
        console
            .write_all(b"echo vm-console-$((6*7)) $(cat /proc/1/comm)\n")
            .unwrap();
    }
    let answer = read_until(
        &mut console,
        "vm-console-42 kata-agent",
        Duration::from_secs(30),
    );
    assert!(
        answer.contains("vm-console-42 kata-agent"),
        "debug console answered {answer:?}"
    );
    {
        use std::io::Write;
        let _ = console.write_all(b"exit\n");
    }

    rt.block_on(async {
        let (client, _) = vm.clients().await.unwrap();
        create_sandbox(&client, "vm-obs").await;
        client
            .get_guest_details(ctx(), &GuestDetailsRequest::new())
            .await
            .unwrap();
        // The RPCs are logged on the stream, one JSON record per line.
        let more = log_lines_until(&mut logs, "get_guest_details", Duration::from_secs(30));
        assert!(!more.is_empty());
        destroy_and_expect_poweroff(&mut vm, &client).await;
    });
    let frames = spans.join().unwrap();
    let names: Vec<&str> = frames.iter().filter_map(|f| f["name"].as_str()).collect();
    for wanted in ["create_sandbox", "get_guest_details", "root-span"] {
        assert!(names.contains(&wanted), "no {wanted} span among {names:?}");
    }
    let span = frames
        .iter()
        .find(|f| f["name"] == "create_sandbox")
        .unwrap();
    assert_eq!(span["trace_id"].as_str().unwrap().len(), 32, "{span}");
    drop(vm);
    note!(
        "VM obs: whole scenario group {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Makes a small ext4 image holding `marker.txt`.
fn ext4_image(dir: &Path, content: &[u8]) -> std::path::PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("marker.txt"), content).unwrap();
    let img = dir.join("disk.img");
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("16M")
        .output()
        .expect("run mkfs.ext4 (e2fsprogs)");
    assert!(out.status.success(), "mkfs.ext4: {}", text(&out.stderr));
    img
}

/// Hot-plug through QMP: the sandbox share mounted by the agent's `9p` storage driver, a
/// virtio-blk disk found by its PCI path and mounted as a `blk` storage, a missing disk failing
/// after `agent.hotplug_timeout` (a Go duration), a NIC configured by UpdateInterface with its
/// device path, and a CPU onlined by OnlineCPUMem with the container cpusets' parents widened.
/// The same boot also has a virtio-fs device (virtiofsd): a container runs from a rootfs on a
/// `virtio-fs` storage.
#[test]
fn vm_hotplug_disk_nic_cpu() {
    let Some(assets) = assets() else { return };
    let started = Instant::now();
    let share = Share::new();
    // Served by virtiofsd with the same tag as the 9p share (tags are per file system type).
    let vfs_share = Share::new();
    let vfs_in = e2e::pattern(300_000, 13);
    std::fs::write(vfs_share.path().join("rootfs/from-host.bin"), &vfs_in).unwrap();
    let rt = rt();
    let cfg = VmConfig {
        name: "hotplug".into(),
        kernel_params: vec![
            "agent.log=debug".into(),
            "agent.hotplug_timeout=2s".into(),
            // The NIC sits on a hub with no other port. With NAPI TX, the guest's first IPv6
            // (MLD) packets on it sometimes left a kworker spinning in virtio_net's start_xmit
            // under TCG, which hung the power-off; /init passes this to insmod.
            "virtio_net.napi_tx=0".into(),
        ],
        // No /init mount: the agent mounts the share itself (9p storage of CreateSandbox).
        share: Some((share.path().to_path_buf(), None)),
        virtio_fs: Some(VirtioFs::new(vfs_share.path())),
        cpus: 1,
        max_cpus: 2,
        hotplug_ports: 3,
        ..VmConfig::default()
    };
    let mut vm = Vm::start(&assets, cfg).expect("start the VM");
    let boot = rt
        .block_on(vm.wait_ready(BOOT_TIMEOUT))
        .unwrap_or_else(|e| panic!("{e:#}"));
    note!(
        "VM hotplug: boot-to-first-Check {:.2} s",
        boot.as_secs_f64()
    );
    let (disk_path, disk_bus) = {
        let (prefix, bus) = vm.hotplug_port(0);
        (format!("{prefix}/00"), bus)
    };
    let (nic_path, nic_bus) = {
        let (prefix, bus) = vm.hotplug_port(1);
        (format!("{prefix}/00"), bus)
    };
    let missing_path = format!("{}/00", vm.hotplug_port(2).0);
    let disk_dir = tempfile::tempdir().unwrap();
    let disk_marker = e2e::pattern(5000, 3);
    let img = ext4_image(disk_dir.path(), &disk_marker);

    rt.block_on(async {
        let (c, _) = vm.clients().await.unwrap();

        // The sandbox share, mounted by the agent's 9p storage driver.
        let shared = "/run/kata-containers/shared/containers";
        let mut req = CreateSandboxRequest::new();
        req.hostname = "vmtest".into();
        req.sandbox_id = "vm-hotplug".into();
        let mut st = protocols::agent::Storage::new();
        st.driver = "9p".into();
        st.source = vmtest::SHARE_TAG.into();
        st.fstype = "9p".into();
        st.options = ["trans=virtio", "version=9p2000.L", "cache=mmap", "nodev"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        st.mount_point = shared.into();
        req.storages.push(st);
        c.create_sandbox(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("CreateSandbox with a 9p storage: {e:?}"));
        let rootfs = format!("{shared}/rootfs");
        create_and_start(
            &c,
            "probe",
            spec(&rootfs, &["sleep", "100000"], |v| {
                with_guest_views(v);
                v["Mounts"].as_array_mut().unwrap().push(json!({
                    "destination": "/guestsys", "source": "/sys", "type": "bind",
                    "options": ["rbind", "ro"]}));
                v["Linux"]["Resources"] = json!({"CPU": {"Cpus": "0"}});
                v["Linux"]["CgroupsPath"] = json!("/vmtest/probe");
            }),
        )
        .await;

        let napi_tx = sh(
            &c,
            "probe",
            "cat /guestsys/module/virtio_net/parameters/napi_tx",
        )
        .await;
        assert_eq!(
            napi_tx.trim(),
            "N",
            "/init did not pass virtio_net.napi_tx=0"
        );

        // --- virtio-blk disk hot-plugged through QMP, mounted as a blk storage by PCI path.
        {
            let mut qmp = vm.qmp().unwrap();
            qmp.execute(
                "blockdev-add",
                json!({"driver": "raw", "node-name": "disk1",
                       "file": {"driver": "file", "filename": img.to_str().unwrap()}}),
            )
            .unwrap();
            qmp.execute(
                "device_add",
                json!({"driver": "virtio-blk-pci", "id": "blk1", "drive": "disk1",
                       "bus": disk_bus, "addr": "0"}),
            )
            .unwrap();
        }
        let disk_mount = "/run/kata-containers/sandbox/storage/vmtest-disk";
        let mut st = protocols::agent::Storage::new();
        st.driver = "blk".into();
        st.source = disk_path.clone();
        st.fstype = "ext4".into();
        st.mount_point = disk_mount.into();
        let mut req = CreateContainerRequest::new();
        req.container_id = "disk".into();
        req.exec_id = "disk".into();
        req.storages.push(st);
        req.OCI = protobuf::MessageField::some(spec(&rootfs, &["cat", "/disk/marker.txt"], |v| {
            v["Mounts"].as_array_mut().unwrap().push(json!({
                    "destination": "/disk", "source": disk_mount, "type": "bind",
                    "options": ["rbind", "ro"]}));
        }));
        c.create_container(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("CreateContainer with the hot-plugged disk: {e:?}"));
        let mut sreq = StartContainerRequest::new();
        sreq.container_id = "disk".into();
        c.start_container(ctx(), &sreq).await.unwrap();
        let out = read_all(&c, "disk", "disk", false).await;
        assert_eq!(wait(&c, "disk", "disk").await, 0);
        assert!(
            out == disk_marker,
            "the disk's file read in the container differs"
        );
        remove(&c, "disk").await;

        // --- virtio-fs: a container storage (driver virtio-fs, source the tag, fstype virtiofs)
        // below the shared dir; the container runs from a rootfs on it, copies a host file to
        // stdout and 1 MiB of stdin to a file that the host then reads.
        let vfs_mount = format!("{shared}/vmtest-virtiofs");
        let mut st = protocols::agent::Storage::new();
        st.driver = "virtio-fs".into();
        st.source = vmtest::SHARE_TAG.into();
        st.fstype = "virtiofs".into();
        st.options = vec!["nodev".into()];
        st.mount_point = vfs_mount.clone();
        let mut req = CreateContainerRequest::new();
        req.container_id = "vfs".into();
        req.exec_id = "vfs".into();
        req.storages.push(st);
        req.OCI = protobuf::MessageField::some(spec(
            &format!("{vfs_mount}/rootfs"),
            &[
                "sh",
                "-c",
                "cat /from-host.bin && cat > /from-guest.bin && sync",
            ],
            |_| {},
        ));
        c.create_container(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("CreateContainer with a virtio-fs storage: {e:?}"));
        let mountinfo = sh(&c, "probe", "cat /guestproc/1/mountinfo").await;
        assert!(
            has_mount(&mountinfo, &vfs_mount, "virtiofs"),
            "no virtiofs mount on {vfs_mount}:\n{mountinfo}"
        );
        let mut sreq = StartContainerRequest::new();
        sreq.container_id = "vfs".into();
        c.start_container(ctx(), &sreq).await.unwrap();
        let vfs_data = e2e::pattern(1 << 20, 17);
        let writer = feed_stdin(&c, "vfs", "vfs", vfs_data.clone());
        let out = read_all(&c, "vfs", "vfs", false).await;
        writer.await.unwrap();
        assert_eq!(wait(&c, "vfs", "vfs").await, 0);
        assert!(
            out == vfs_in,
            "the host file read over virtio-fs differs ({} bytes)",
            out.len()
        );
        let back = std::fs::read(vfs_share.path().join("rootfs/from-guest.bin")).unwrap();
        assert!(
            back == vfs_data,
            "the file written over virtio-fs differs ({} bytes)",
            back.len()
        );
        remove(&c, "vfs").await;
        // The container's storage went with it.
        let mountinfo = sh(&c, "probe", "cat /guestproc/1/mountinfo").await;
        assert!(
            !has_mount(&mountinfo, &vfs_mount, "virtiofs"),
            "the virtio-fs storage is still mounted after RemoveContainer"
        );
        assert!(
            vm.virtiofsd_running(),
            "virtiofsd exited:\n{}",
            vm.diagnostics()
        );

        // A disk that never arrives: DEADLINE_EXCEEDED after agent.hotplug_timeout=2s.
        let mut st = protocols::agent::Storage::new();
        st.driver = "blk".into();
        st.source = missing_path.clone();
        st.fstype = "ext4".into();
        st.mount_point = "/run/kata-containers/sandbox/storage/vmtest-missing".into();
        let mut req = CreateContainerRequest::new();
        req.container_id = "missing".into();
        req.exec_id = "missing".into();
        req.storages.push(st);
        req.OCI = protobuf::MessageField::some(spec(&rootfs, &["true"], |_| {}));
        match c.create_container(ctx(), &req).await {
            Err(ttrpc::Error::RpcStatus(s)) => {
                assert_eq!(s.code(), ttrpc::Code::DEADLINE_EXCEEDED, "{}", s.message());
                assert!(s.message().contains("hotplug_timeout"), "{}", s.message());
            }
            other => panic!("a missing disk must fail: {other:?}"),
        }

        // --- NIC hot-plugged (on an internal hub: no traffic leaves QEMU), configured by
        // UpdateInterface with its PCI path.
        let mac = "52:54:00:4b:41:01";
        {
            let mut qmp = vm.qmp().unwrap();
            qmp.execute(
                "netdev_add",
                json!({"type": "hubport", "id": "net1", "hubid": 0}),
            )
            .unwrap();
            qmp.execute(
                "device_add",
                json!({"driver": "virtio-net-pci", "id": "nic1", "netdev": "net1",
                       "mac": mac, "bus": nic_bus, "addr": "0", "romfile": ""}),
            )
            .unwrap();
        }
        let mut iface = protocols::types::Interface::new();
        iface.name = "eth1".into();
        iface.hwAddr = mac.into();
        iface.devicePath = nic_path.clone();
        iface.mtu = 1400;
        let mut ip = protocols::types::IPAddress::new();
        ip.address = "10.213.0.2".into();
        ip.mask = "24".into();
        iface.IPAddresses.push(ip);
        let mut req = protocols::agent::UpdateInterfaceRequest::new();
        req.interface = protobuf::MessageField::some(iface);
        let updated = c
            .update_interface(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("UpdateInterface: {e:?}"));
        assert_eq!(updated.name, "eth1");
        let list = c
            .list_interfaces(ctx(), &protocols::agent::ListInterfacesRequest::new())
            .await
            .unwrap();
        let eth1 = list
            .Interfaces
            .iter()
            .find(|i| i.hwAddr.eq_ignore_ascii_case(mac))
            .unwrap_or_else(|| panic!("no NIC with {mac}: {:?}", list.Interfaces));
        assert_eq!(eth1.name, "eth1");
        assert_eq!(eth1.mtu, 1400);
        assert!(
            eth1.IPAddresses
                .iter()
                .any(|a| a.address == "10.213.0.2" && a.mask == "24"),
            "{:?}",
            eth1.IPAddresses
        );

        // --- CPU hot-plug through QMP, onlined by OnlineCPUMem.
        {
            let mut qmp = vm.qmp().unwrap();
            let cpus = qmp.execute("query-hotpluggable-cpus", json!({})).unwrap();
            let free = cpus
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c.get("qom-path").is_none())
                .expect("a free CPU slot")
                .clone();
            let mut args = free["props"].clone();
            args["driver"] = free["type"].clone();
            args["id"] = json!("cpu1");
            qmp.execute("device_add", args).unwrap();
        }
        let mut req = protocols::agent::OnlineCPUMemRequest::new();
        req.wait = true;
        req.nb_cpus = 2;
        req.cpu_only = true;
        c.online_cpu_mem(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("OnlineCPUMem: {e:?}"));
        let online = sh(&c, "probe", "cat /guestsys/devices/system/cpu/online").await;
        assert_eq!(online.trim(), "0-1");
        // The container's parents are widened to every online CPU; its own set stays "0".
        let parent = sh(&c, "probe", "cat /guestcgroup/cpuset/vmtest/cpuset.cpus").await;
        assert_eq!(parent.trim(), "0-1");
        let own = sh(
            &c,
            "probe",
            "cat /guestcgroup/cpuset/vmtest/probe/cpuset.cpus",
        )
        .await;
        assert_eq!(own.trim(), "0");

        stop_and_remove(&c, "probe").await;
        destroy_and_expect_poweroff(&mut vm, &c).await;
    });
    drop(vm);
    note!(
        "VM hotplug: whole scenario group {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
