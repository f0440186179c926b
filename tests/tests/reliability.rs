//! Reliability of the container life cycle, tested the way a hostile or unlucky host would hit it:
//! many execs in a row (the agent's descriptors and threads must come back to where they were),
//! requests cut off by their deadline or by a closed connection in the middle of a creation or an
//! exec (nothing half-made may stay, the id must work again at once), an exec stuck in its set-up
//! (the rest of the container's control must still answer), and runc's CVE classes about what a
//! container process can reach of the agent: its binary (CVE-2019-5736) and its descriptors or
//! working directory (CVE-2024-21626).
//!
//! Every test starts its own agent and ends with [`Fx::finish`]: no bundle, mount, cgroup, child
//! process or zombie is left.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::{ctx, mounts_below, rootfs, TestAgent};
use protobuf::well_known_types::empty::Empty;
use protobuf::{Message, MessageField};
use protocols::agent;
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::oci;

const PATH_ENV: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";
const READ_LEN: u32 = 32 * 1024;
const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
];

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(r: ttrpc::Result<T>, code: ttrpc::Code) -> String {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => {
            assert_eq!(
                s.code(),
                code,
                "unexpected status; message: {}",
                s.message()
            );
            s.message().to_string()
        }
        other => panic!("expected status {code:?}, got {other:?}"),
    }
}

fn process(args: &[&str]) -> oci::Process {
    let mut p = oci::Process::new();
    p.Args = strs(args);
    p.Env = strs(&[PATH_ENV]);
    p.Cwd = "/".into();
    p.User = MessageField::some(oci::User::new());
    let mut c = oci::LinuxCapabilities::new();
    c.Bounding = strs(CAPS);
    c.Effective = strs(CAPS);
    c.Permitted = strs(CAPS);
    p.Capabilities = MessageField::some(c);
    p
}

fn sh(script: &str) -> oci::Process {
    process(&["sh", "-c", script])
}

fn mount(dest: &str, typ: &str, src: &str, opts: &[&str]) -> oci::Mount {
    let mut m = oci::Mount::new();
    m.destination = dest.into();
    m.type_ = typ.into();
    m.source = src.into();
    m.options = strs(opts);
    m
}

fn namespace(typ: &str) -> oci::LinuxNamespace {
    let mut n = oci::LinuxNamespace::new();
    n.Type = typ.into();
    n
}

fn hook(path: &str, args: &[&str]) -> oci::Hook {
    let mut h = oci::Hook::new();
    h.Path = path.into();
    h.Args = strs(args);
    h
}

/// Pids of the processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        if rest
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok())
            == Some(pid)
        {
            out.push(p);
        }
    }
    out
}

/// The agent's open descriptors, as `n -> target`, sorted.
fn fd_targets(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                std::fs::read_link(e.path())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )
        })
        .collect();
    v.sort();
    v
}

fn status_field(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

fn threads(pid: u32) -> u64 {
    status_field(pid, "Threads:")
}

/// Waits (at most `secs`) until `cond` holds; returns whether it did.
async fn settles(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A context whose deadline is `ms` milliseconds (the server ends the request with
/// DEADLINE_EXCEEDED when it passes).
fn deadline_ms(ms: u64) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_millis(ms).as_nanos() as i64)
}

/// One test's agent, client and bookkeeping.
struct Fx {
    agent: TestAgent,
    c: AgentServiceClient,
    tag: String,
    rootfs: PathBuf,
    cgroups: std::sync::Mutex<Vec<String>>,
}

impl Fx {
    async fn new(tag: &str) -> Fx {
        let agent = TestAgent::start();
        let (c, _) = agent.clients().await;
        Fx {
            agent,
            c,
            tag: tag.to_string(),
            rootfs: rootfs().canonicalize().expect("the busybox rootfs exists"),
            cgroups: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        let d = self.agent.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d.canonicalize().unwrap()
    }

    fn cgroup(&self, cid: &str) -> String {
        let p = format!("kata-e2e-{}-{}-{cid}", std::process::id(), self.tag);
        let mut list = self.cgroups.lock().unwrap();
        if !list.contains(&p) {
            list.push(p.clone());
        }
        p
    }

    fn cgroup_dirs(&self, path: &str) -> Vec<PathBuf> {
        std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != "unified" && e.path().is_dir())
            .map(|e| e.path().join(path))
            .collect()
    }

    fn cgroup_exists(&self, cid: &str) -> bool {
        self.cgroup_dirs(&self.cgroup(cid))
            .iter()
            .any(|d| d.exists())
    }

    fn freezer_state(&self, cid: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup/freezer")
            .join(self.cgroup(cid))
            .join("freezer.state")
    }

    /// Busybox rootfs read-only, tmpfs on /tmp, new mount/ipc/uts/pid namespaces.
    fn spec(&self, cid: &str, p: oci::Process) -> oci::Spec {
        let mut s = oci::Spec::new();
        s.Version = "1.1.0".into();
        s.Process = MessageField::some(p);
        let mut root = oci::Root::new();
        root.Path = self.rootfs.display().to_string();
        root.Readonly = true;
        s.Root = MessageField::some(root);
        s.Hostname = "ctr".into();
        s.Mounts = vec![
            mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount("/dev", "tmpfs", "tmpfs", &["nosuid", "mode=755"]),
            mount("/tmp", "tmpfs", "tmpfs", &["nosuid", "nodev", "mode=1777"]),
        ];
        let mut l = oci::Linux::new();
        l.Namespaces = vec![
            namespace("mount"),
            namespace("ipc"),
            namespace("uts"),
            namespace("pid"),
        ];
        l.CgroupsPath = self.cgroup(cid);
        l.Resources = MessageField::some(oci::LinuxResources::new());
        s.Linux = MessageField::some(l);
        s
    }

    fn create_req(&self, cid: &str, spec: oci::Spec) -> agent::CreateContainerRequest {
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = cid.into();
        req.OCI = MessageField::some(spec);
        req
    }

    async fn try_create(
        &self,
        cid: &str,
        spec: oci::Spec,
        cx: ttrpc::context::Context,
    ) -> ttrpc::Result<Empty> {
        self.c
            .create_container(cx, &self.create_req(cid, spec))
            .await
    }

    async fn create(&self, cid: &str, spec: oci::Spec) {
        self.try_create(cid, spec, ctx())
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {cid}: {e:?}\n{}", self.agent.log()));
    }

    async fn start(&self, cid: &str) {
        let mut req = agent::StartContainerRequest::new();
        req.container_id = cid.into();
        self.c
            .start_container(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("StartContainer {cid}: {e:?}"));
    }

    async fn run(&self, cid: &str, spec: oci::Spec) {
        self.create(cid, spec).await;
        self.start(cid).await;
    }

    async fn try_remove(&self, cid: &str) -> ttrpc::Result<Empty> {
        let mut req = agent::RemoveContainerRequest::new();
        req.container_id = cid.into();
        self.c.remove_container(ctx(), &req).await
    }

    async fn remove(&self, cid: &str) {
        self.try_remove(cid)
            .await
            .unwrap_or_else(|e| panic!("RemoveContainer {cid}: {e:?}"));
        self.assert_no_trace(cid);
    }

    fn exec_req(&self, cid: &str, exec_id: &str, p: oci::Process) -> agent::ExecProcessRequest {
        let mut req = agent::ExecProcessRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        req.process = MessageField::some(p);
        req
    }

    async fn exec(&self, cid: &str, exec_id: &str, p: oci::Process) {
        self.c
            .exec_process(ctx(), &self.exec_req(cid, exec_id, p))
            .await
            .unwrap_or_else(|e| panic!("ExecProcess {cid}/{exec_id}: {e:?}\n{}", self.agent.log()));
    }

    async fn try_wait(&self, cid: &str, exec_id: &str) -> ttrpc::Result<i32> {
        let mut req = agent::WaitProcessRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        self.c.wait_process(ctx(), &req).await.map(|r| r.status)
    }

    async fn wait(&self, cid: &str, exec_id: &str) -> i32 {
        self.try_wait(cid, exec_id)
            .await
            .unwrap_or_else(|e| panic!("WaitProcess {cid}/{exec_id}: {e:?}"))
    }

    async fn signal(&self, cid: &str, exec_id: &str, sig: u32) -> ttrpc::Result<Empty> {
        let mut req = agent::SignalProcessRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        req.signal = sig;
        self.c.signal_process(ctx(), &req).await
    }

    async fn stats(&self, cid: &str) -> ttrpc::Result<agent::StatsContainerResponse> {
        let mut req = agent::StatsContainerRequest::new();
        req.container_id = cid.into();
        self.c.stats_container(ctx(), &req).await
    }

    async fn read_all(&self, cid: &str, exec_id: &str, stderr: bool) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut req = agent::ReadStreamRequest::new();
            req.container_id = cid.into();
            req.exec_id = exec_id.into();
            req.len = READ_LEN;
            let r = if stderr {
                self.c.read_stderr(ctx(), &req).await
            } else {
                self.c.read_stdout(ctx(), &req).await
            };
            let data = r
                .unwrap_or_else(|e| panic!("reading {cid}/{exec_id} (stderr: {stderr}): {e:?}"))
                .data;
            if data.is_empty() {
                return out;
            }
            out.extend_from_slice(&data);
        }
    }

    /// An exec as the Kata shim runs one: stdout read to its end, then WaitProcess (stderr is
    /// never read). Returns stdout and the status.
    async fn exec_like_shim(&self, cid: &str, exec_id: &str, p: oci::Process) -> (String, i32) {
        self.exec(cid, exec_id, p).await;
        let out = self.read_all(cid, exec_id, false).await;
        let code = self.wait(cid, exec_id).await;
        (String::from_utf8_lossy(&out).into_owned(), code)
    }

    fn assert_no_trace(&self, cid: &str) {
        assert!(
            !self.agent.run_dir.join(cid).exists(),
            "a bundle of {cid} was left"
        );
        assert!(!self.cgroup_exists(cid), "a cgroup of {cid} was left");
        let mounts = mounts_below(&self.agent.run_dir);
        assert!(
            mounts.is_empty(),
            "mounts left below the run dir: {mounts:?}"
        );
    }

    async fn assert_no_children(&self) {
        let pid = self.agent.pid();
        let gone = settles(15, || children_of(pid).is_empty()).await;
        assert!(gone, "the agent still has children: {:?}", children_of(pid));
    }

    async fn finish(self) {
        self.assert_no_children().await;
        let left: Vec<String> = std::fs::read_dir(&self.agent.run_dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "sandbox")
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "bundles left in the run dir: {left:?}");
        let mounts = mounts_below(&self.agent.run_dir);
        assert!(
            mounts.is_empty(),
            "mounts left below the run dir: {mounts:?}"
        );
        for path in self.cgroups.lock().unwrap().iter() {
            for d in self.cgroup_dirs(path) {
                assert!(!d.exists(), "cgroup {} was left behind", d.display());
            }
        }
    }
}

/// What the agent holds, for before/after comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holdings {
    fds: Vec<String>,
    threads: u64,
    children: usize,
}

fn holdings(pid: u32) -> Holdings {
    Holdings {
        fds: fd_targets(pid),
        threads: threads(pid),
        children: children_of(pid)
            .into_iter()
            .filter(|c| !is_spare(*c))
            .count(),
    }
}

/// Whether `pid` is the engine's spare setup process (started ahead of the next exec, see
/// `crates/engine/src/container/spare.rs`): the sealed copy of the agent, waiting for its stdio.
/// It is replaced after every exec, so it is not a leak; it goes with the last container.
fn is_spare(pid: i32) -> bool {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    exe.to_string_lossy().starts_with("/memfd:kata-agent") && wchan.contains("unix_stream_read")
}

/// The targets of `fds` (`n -> target`) without the descriptor numbers, a socket counted as
/// `socket` (the spare setup process's sync socket is a new one after every exec).
fn targets(fds: &[String]) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    for f in fds {
        let t = f.split_once(" -> ").map(|(_, t)| t).unwrap_or(f);
        let t = if t.starts_with("socket:") {
            "socket"
        } else {
            t
        };
        *m.entry(t.to_string()).or_insert(0) += 1;
    }
    m
}

/// Waits until the agent holds no more than `base` (descriptors exactly the same count; threads
/// at most as many: idle blocking-pool threads retire after a while), then compares.
async fn assert_back_to(pid: u32, base: &Holdings, what: &str) {
    settles(30, || {
        let now = holdings(pid);
        now.fds.len() <= base.fds.len()
            && now.threads <= base.threads
            && now.children == base.children
    })
    .await;
    let now = holdings(pid);
    let (b, a) = (targets(&base.fds), targets(&now.fds));
    // Fewer is fine: a container's pinned namespaces are closed off the RemoveContainer path,
    // so a baseline taken right after a removal may still count them.
    let grown: Vec<_> = a
        .iter()
        .filter(|(t, n)| **n > b.get(*t).copied().unwrap_or(0))
        .collect();
    assert!(
        now.fds.len() <= base.fds.len() && grown.is_empty(),
        "{what}: descriptor leak; grown: {grown:?}; before: {:?}, now: {:?}",
        base.fds,
        now.fds
    );
    assert!(
        now.threads <= base.threads,
        "{what}: {} threads, {} before",
        now.threads,
        base.threads
    );
    assert_eq!(now.children, base.children, "{what}: child processes left");
}

// ---------------------------------------------------------------------------------------------
// No growth

/// Execs as the shim runs them (stdout read to EOF, stderr never read, then WaitProcess): after a
/// few hundred of them the agent holds exactly the descriptors and no more threads than before.
#[test]
fn execs_leave_no_descriptor_thread_or_process_behind() {
    rt().block_on(async {
        let fx = Fx::new("execfd").await;
        let pid = fx.agent.pid();
        fx.run("cc", fx.spec("cc", process(&["sleep", "1000"])))
            .await;
        // Warm up (first exec makes the sealed copy of the agent binary, the runtime grows its
        // pools), then take the baseline.
        for i in 0..5 {
            let (out, code) = fx
                .exec_like_shim("cc", &format!("warm{i}"), sh("echo out; echo err >&2"))
                .await;
            assert_eq!((out.as_str(), code), ("out\n", 0));
        }
        settles(20, || holdings(pid).children == 1).await;
        let base = holdings(pid);
        let rss_before = status_field(pid, "VmRSS:");
        // KATA_RELIABILITY_EXECS raises the count for a longer soak.
        let n: usize = std::env::var("KATA_RELIABILITY_EXECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300);
        for i in 0..n {
            let exec_id = format!("e{i}");
            match i % 3 {
                // The shim's way: stdout only, then wait.
                0 => {
                    let (out, code) = fx
                        .exec_like_shim("cc", &exec_id, process(&["echo", "out"]))
                        .await;
                    assert_eq!((out.as_str(), code), ("out\n", 0));
                }
                // Wait first, read afterwards (both streams).
                1 => {
                    fx.exec("cc", &exec_id, sh("echo out; echo err >&2; exit 3"))
                        .await;
                    assert_eq!(fx.wait("cc", &exec_id).await, 3);
                    assert_eq!(fx.read_all("cc", &exec_id, false).await, b"out\n");
                    assert_eq!(fx.read_all("cc", &exec_id, true).await, b"err\n");
                }
                // A failing exec (no such binary).
                _ => {
                    let r =
                        fx.c.exec_process(
                            ctx(),
                            &fx.exec_req("cc", &exec_id, process(&["/nonexistent"])),
                        )
                        .await;
                    assert!(r.is_err(), "exec of a missing binary succeeded");
                }
            }
        }
        assert_back_to(pid, &base, &format!("after {n} execs")).await;
        let now = holdings(pid);
        eprintln!(
            "{n} execs: agent fds {} -> {}, threads {} -> {}, children {} -> {}, RSS {} kB -> {} kB",
            base.fds.len(),
            now.fds.len(),
            base.threads,
            now.threads,
            base.children,
            now.children,
            rss_before,
            status_field(pid, "VmRSS:")
        );
        // The exec ids stay usable: a finished exec's id can be reused.
        let (out, code) = fx
            .exec_like_shim("cc", "e0", process(&["echo", "again"]))
            .await;
        assert_eq!((out.as_str(), code), ("again\n", 0));
        fx.signal("cc", "", 9).await.unwrap();
        assert_eq!(fx.wait("cc", "").await, 137);
        fx.remove("cc").await;
        fx.finish().await;
    });
}

/// Create/start/wait/remove cycles: descriptors, threads, mounts and children come back.
#[test]
fn container_cycles_leave_nothing_behind() {
    rt().block_on(async {
        let fx = Fx::new("cycles").await;
        let pid = fx.agent.pid();
        let cycle = |i: usize| {
            let fx = &fx;
            async move {
                let cid = format!("k{i}");
                fx.run(&cid, fx.spec(&cid, sh("echo hi"))).await;
                assert_eq!(fx.read_all(&cid, "", false).await, b"hi\n");
                assert_eq!(fx.wait(&cid, "").await, 0);
                fx.remove(&cid).await;
            }
        };
        for i in 0..3 {
            cycle(i).await;
        }
        settles(20, || children_of(pid).is_empty()).await;
        let base = holdings(pid);
        let rss_before = status_field(pid, "VmRSS:");
        let n: usize = std::env::var("KATA_RELIABILITY_CYCLES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(37);
        for i in 3..3 + n {
            cycle(i).await;
        }
        assert_back_to(pid, &base, &format!("after {n} container cycles")).await;
        let now = holdings(pid);
        eprintln!(
            "{n} container cycles: agent fds {} -> {}, threads {} -> {}, RSS {} kB -> {} kB",
            base.fds.len(),
            now.fds.len(),
            base.threads,
            now.threads,
            rss_before,
            status_field(pid, "VmRSS:")
        );
        let left = mounts_below(fx.agent.dir.path());
        assert!(left.is_empty(), "mounts were left: {left:?}");
        fx.finish().await;
    });
}

// ---------------------------------------------------------------------------------------------
// Cancellation

/// A prestart hook that announces itself in `marker` and then takes `secs` seconds.
fn slow_hook(marker: &Path, secs: u32) -> oci::Hook {
    hook(
        "/bin/sh",
        &[
            "sh",
            "-c",
            &format!("touch {}; exec sleep {secs}", marker.display()),
        ],
    )
}

fn with_prestart(mut spec: oci::Spec, h: oci::Hook) -> oci::Spec {
    let mut hooks = oci::Hooks::new();
    hooks.Prestart = vec![h];
    spec.Hooks = MessageField::some(hooks);
    spec
}

/// CreateContainer cut off by its timeout_nano while a prestart hook runs: DEADLINE_EXCEEDED,
/// then nothing of it is left (no hook, no init, no cgroup, no bundle) and the same id can be
/// created again at once.
#[test]
fn create_cut_off_by_its_deadline_is_rolled_back() {
    rt().block_on(async {
        let fx = Fx::new("deadline").await;
        let pid = fx.agent.pid();
        let marker = fx.dir("marks").join("hook-ran");
        let spec = with_prestart(fx.spec("dd", process(&["true"])), slow_hook(&marker, 120));
        // The agent's own answer (a client library would give up at the same moment).
        let payload = fx.create_req("dd", spec).write_to_bytes().unwrap();
        let mut sock = raw_request(
            &fx.agent.addr,
            "CreateContainer",
            payload,
            // Long enough for the hook to have started on a loaded machine; the hook runs longer.
            Some(Duration::from_secs(8)),
        );
        let (code, _) = tokio::task::spawn_blocking(move || raw_status(&mut sock))
            .await
            .unwrap();
        assert_eq!(code, ttrpc::Code::DEADLINE_EXCEEDED);
        assert!(marker.exists(), "the prestart hook never ran");
        // Nothing registered under the id.
        assert_code(fx.try_remove("dd").await, ttrpc::Code::NOT_FOUND);
        // The same id works at once (the request waits for the rollback, never ALREADY_EXISTS).
        fx.run("dd", fx.spec("dd", sh("echo second"))).await;
        assert_eq!(fx.read_all("dd", "", false).await, b"second\n");
        assert_eq!(fx.wait("dd", "").await, 0);
        fx.remove("dd").await;
        // The hook and the parked init were killed and reaped.
        assert!(children_of(pid).is_empty(), "left: {:?}", children_of(pid));
        fx.finish().await;
    });
}

/// One ttRPC request written on a raw connection (so that the test can close the connection
/// while the agent works on it, or see the agent's own answer to a deadline).
fn raw_request(
    addr: &str,
    method: &str,
    payload: Vec<u8>,
    timeout: Option<Duration>,
) -> std::os::unix::net::UnixStream {
    let path = addr.trim_start_matches("unix://");
    let mut sock = std::os::unix::net::UnixStream::connect(path).unwrap();
    let mut req = ttrpc::Request::new();
    req.service = "grpc.AgentService".into();
    req.method = method.into();
    req.payload = payload;
    req.timeout_nano = timeout.map(|t| t.as_nanos() as i64).unwrap_or(0);
    let body = req.write_to_bytes().unwrap();
    let header: Vec<u8> = ttrpc::MessageHeader::new_request(1, body.len() as u32).into();
    sock.write_all(&header).unwrap();
    sock.write_all(&body).unwrap();
    sock
}

/// Reads the answer to [`raw_request`]: its status code and message.
fn raw_status(sock: &mut std::os::unix::net::UnixStream) -> (ttrpc::Code, String) {
    use std::io::Read;
    sock.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut header = [0u8; 10];
    sock.read_exact(&mut header).unwrap();
    let len = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len];
    sock.read_exact(&mut body).unwrap();
    let resp = ttrpc::Response::parse_from_bytes(&body).unwrap();
    let status = resp.status.unwrap_or_default();
    (status.code(), status.message().to_string())
}

/// The client's connection closes while CreateContainer runs a slow prestart hook: the creation
/// is rolled back (hook killed, no init, cgroup or bundle left) and the id works again at once.
#[test]
fn connection_closed_mid_create_is_rolled_back() {
    rt().block_on(async {
        let fx = Fx::new("hangup").await;
        let pid = fx.agent.pid();
        let marker = fx.dir("marks").join("hook-ran");
        let spec = with_prestart(fx.spec("hh", process(&["true"])), slow_hook(&marker, 120));
        let payload = fx.create_req("hh", spec).write_to_bytes().unwrap();
        let sock = raw_request(&fx.agent.addr, "CreateContainer", payload, None);
        assert!(
            settles(30, || marker.exists()).await,
            "the prestart hook never ran:\n{}",
            fx.agent.log()
        );
        assert!(
            fx.cgroup_exists("hh"),
            "the creation had not made its cgroup"
        );
        drop(sock);
        // The rollback kills the hook and the parked init.
        assert!(
            settles(20, || children_of(pid).is_empty()).await,
            "processes left after the connection closed: {:?}",
            children_of(pid)
        );
        fx.run("hh", fx.spec("hh", sh("echo again"))).await;
        assert_eq!(fx.read_all("hh", "", false).await, b"again\n");
        assert_eq!(fx.wait("hh", "").await, 0);
        fx.remove("hh").await;
        fx.finish().await;
    });
}

/// An exec whose set-up is stuck (the container's cgroup is frozen under it) holds nothing the
/// rest of the container's control needs: SignalProcess, WaitProcess, StatsContainer answer
/// while it is pending, the exec ends with DEADLINE_EXCEEDED at its own deadline, and
/// RemoveContainer of the container answers and leaves nothing.
#[test]
fn stuck_exec_does_not_hold_up_signal_wait_stats_or_remove() {
    rt().block_on(async {
        let fx = Fx::new("stuck").await;
        fx.run("ss", fx.spec("ss", process(&["sleep", "1000"])))
            .await;
        let (out, code) = fx
            .exec_like_shim("ss", "done", process(&["echo", "ok"]))
            .await;
        assert_eq!((out.as_str(), code), ("ok\n", 0));
        // Exited, not waited for yet.
        fx.exec("ss", "bg", sh("echo bg; exit 7")).await;
        assert_eq!(fx.read_all("ss", "bg", false).await, b"bg\n");
        let freezer = fx.freezer_state("ss");
        std::fs::write(&freezer, "FROZEN").unwrap();

        // 1. An exec cut off by its deadline while stuck.
        let payload = fx
            .exec_req("ss", "stuck1", process(&["true"]))
            .write_to_bytes()
            .unwrap();
        let mut sock = raw_request(
            &fx.agent.addr,
            "ExecProcess",
            payload,
            Some(Duration::from_millis(1500)),
        );
        let (code, _) = tokio::task::spawn_blocking(move || raw_status(&mut sock))
            .await
            .unwrap();
        assert_eq!(code, ttrpc::Code::DEADLINE_EXCEEDED);

        // 2. A stuck exec without a deadline, and control requests meanwhile.
        let c = fx.c.clone();
        let req = fx.exec_req("ss", "stuck2", process(&["true"]));
        let pending = tokio::spawn(async move { c.exec_process(ctx(), &req).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        fx.signal("ss", "", libc::SIGCONT as u32).await.unwrap();
        assert_eq!(fx.wait("ss", "bg").await, 7);
        fx.stats("ss").await.unwrap();
        assert!(!pending.is_finished(), "the frozen exec finished by itself");
        // The same exec id is taken while its set-up is pending.
        let dup =
            fx.c.exec_process(ctx(), &fx.exec_req("ss", "stuck2", process(&["true"])))
                .await;
        assert_code(dup, ttrpc::Code::ALREADY_EXISTS);
        // Removal cancels the stuck set-up and tears everything down.
        fx.remove("ss").await;
        let r = pending.await.unwrap();
        assert!(r.is_err(), "an exec into a removed container succeeded");
        fx.finish().await;
    });
}

/// An image whose /etc/passwd (and /etc/group) is a FIFO: an exec of a user without HOME must not
/// block on it (the look-up refuses special files); it runs with HOME=/, and control requests of
/// the container answer before the exec's deadline.
#[test]
fn fifo_passwd_does_not_block_exec_or_control() {
    rt().block_on(async {
        let fx = Fx::new("fifo").await;
        let dir = fx.dir("fifo");
        let fifo = dir.join("passwd");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let mut spec = fx.spec("ff", process(&["sleep", "1000"]));
        spec.Mounts.push(mount(
            "/etc/passwd",
            "bind",
            &fifo.display().to_string(),
            &["bind", "ro"],
        ));
        spec.Mounts.push(mount(
            "/etc/group",
            "bind",
            &fifo.display().to_string(),
            &["bind", "ro"],
        ));
        fx.run("ff", spec).await;
        let mut p = process(&["env"]);
        p.User.as_mut().unwrap().UID = 1000;
        p.User.as_mut().unwrap().GID = 1000;
        let c = fx.c.clone();
        let req = fx.exec_req("ff", "user", p);
        let exec = tokio::spawn(async move { c.exec_process(deadline_ms(10_000), &req).await });
        // Control answers whatever the exec does.
        fx.signal("ff", "", libc::SIGCONT as u32).await.unwrap();
        fx.stats("ff").await.unwrap();
        let r = exec.await.unwrap();
        assert!(
            r.is_ok(),
            "exec with a FIFO /etc/passwd: {r:?}\n{}",
            fx.agent.log()
        );
        let out = String::from_utf8_lossy(&fx.read_all("ff", "user", false).await).into_owned();
        assert!(out.lines().any(|l| l == "HOME=/"), "{out}");
        assert_eq!(fx.wait("ff", "user").await, 0);
        fx.signal("ff", "", 9).await.unwrap();
        fx.wait("ff", "").await;
        fx.remove("ff").await;
        fx.finish().await;
    });
}

// ---------------------------------------------------------------------------------------------
// runc's CVE classes

/// CVE-2019-5736: a container makes the engine execute a script whose interpreter is
/// `/proc/self/exe`, so that the set-up program runs inside the container; a second process then
/// goes for its binary through `/proc/<pid>/exe`. That must be a sealed in-memory copy, never the
/// agent's file, and writing it must fail; the agent's file stays unchanged.
#[test]
fn agent_binary_cannot_be_reached_through_proc_exe() {
    rt().block_on(async {
        let fx = Fx::new("exe").await;
        let agent_exe = std::fs::read_link(format!("/proc/{}/exe", fx.agent.pid())).unwrap();
        let before = std::fs::read(&agent_exe).unwrap();
        // A private copy of the image, with what the (dynamically linked) agent binary needs to
        // run inside it, and the attacker's script.
        let root = fx.dir("evil-root");
        let cp = std::process::Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", fx.rootfs.display()))
            .arg(&root)
            .status()
            .unwrap();
        assert!(cp.success());
        let ldd = std::process::Command::new("ldd")
            .arg(&agent_exe)
            .output()
            .unwrap();
        for lib in String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let dest = root.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(lib, &dest).unwrap();
        }
        // The script's first line is a TOML comment, so the re-executed agent takes the script
        // as its (empty) configuration and serves on the socket its environment names: it
        // stays alive inside the container.
        let script = root.join("evil");
        std::fs::write(&script, "#!/proc/self/exe -c\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut spec = fx.spec("xx", process(&["sleep", "1000"]));
        spec.Root.as_mut().unwrap().Path = root.display().to_string();
        fx.run("xx", spec).await;
        let mut p = process(&["/evil"]);
        for kv in [
            "KATA_AGENT_SERVER_ADDR=unix:///tmp/evil.sock",
            "KATA_AGENT_RUN_DIR=/tmp/run",
            "KATA_AGENT_SANDBOX_NS_DIR=/tmp/ns",
            "KATA_AGENT_RESOLV_CONF=/tmp/resolv.conf",
            "KATA_AGENT_CMDLINE=/tmp/cmdline",
        ] {
            p.Env.push(kv.into());
        }
        fx.exec("xx", "evil", p).await;
        let probe = r#"
            for p in /proc/[0-9]*; do
                case "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" in
                    "/proc/self/exe -c /evil "*) pid=${p#/proc/} ;;
                esac
            done
            [ -n "$pid" ] || { echo NOPID; exit 1; }
            echo "exe=$(readlink /proc/$pid/exe)"
            if echo pwned >> /proc/$pid/exe; then echo WROTE; else echo REFUSED; fi
            if echo pwned > /proc/$pid/exe; then echo TRUNCATED; else echo REFUSED; fi
        "#;
        let mut found = String::new();
        for attempt in 0..50 {
            let (out, _) = fx
                .exec_like_shim("xx", &format!("probe{attempt}"), sh(probe))
                .await;
            if !out.contains("NOPID") {
                found = out;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!found.is_empty(), "the re-executed process never showed up");
        let exe_line = found.lines().find(|l| l.starts_with("exe=")).unwrap();
        assert!(
            exe_line.starts_with("exe=/memfd:"),
            "the container reaches the set-up program at {exe_line:?}"
        );
        assert!(
            !exe_line.contains(&*agent_exe.to_string_lossy()),
            "the agent's own file is reachable: {exe_line}"
        );
        assert!(
            !found.contains("WROTE") && !found.contains("TRUNCATED"),
            "{found}"
        );
        assert_eq!(found.matches("REFUSED").count(), 2, "{found}");
        assert_eq!(
            std::fs::read(&agent_exe).unwrap(),
            before,
            "the agent binary changed"
        );
        fx.signal("xx", "", 9).await.unwrap();
        fx.wait("xx", "").await;
        fx.remove("xx").await;
        fx.finish().await;
    });
}

/// CVE-2024-21626: no descriptor of the agent and no working directory outside the container
/// reaches a container process: init and exec processes hold only fds 0-2, their working
/// directory is the one asked for, and a working directory naming an inherited descriptor
/// (`/proc/self/fd/<n>`) cannot lead out of the container.
#[test]
fn no_agent_descriptor_or_directory_reaches_container_processes() {
    rt().block_on(async {
        let fx = Fx::new("fds").await;
        // Another process of the container looks at the init (pid 1) and at an exec, both
        // `sleep`: their descriptors and working directories.
        fx.run("ee", fx.spec("ee", process(&["sleep", "1000"]))).await;
        let mut p = process(&["sleep", "1000"]);
        p.Cwd = "/tmp".into();
        fx.exec("ee", "target", p).await;
        let probe = r#"for p in $(pidof sleep); do echo $p: $(ls /proc/$p/fd) $(readlink /proc/$p/cwd); done | sort -n"#;
        let mut out = String::new();
        for attempt in 0..50 {
            out = fx.exec_like_shim("ee", &format!("probe{attempt}"), sh(probe)).await.0;
            if out.lines().count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(lines[0], "1: 0 1 2 /", "the init process holds more: {out}");
        assert!(
            lines[1].ends_with(": 0 1 2 /tmp"),
            "the exec process holds more: {out}"
        );
        // A working directory through a descriptor the set-up might hold.
        for n in 3..16 {
            let mut p = sh("readlink /proc/$$/cwd; ls .. | head -3");
            p.Cwd = format!("/proc/self/fd/{n}");
            let exec_id = format!("cwd{n}");
            let r = fx.c.exec_process(ctx(), &fx.exec_req("ee", &exec_id, p)).await;
            if r.is_err() {
                continue;
            }
            let out = String::from_utf8_lossy(&fx.read_all("ee", &exec_id, false).await).into_owned();
            fx.wait("ee", &exec_id).await;
            let cwd = out.lines().next().unwrap_or_default().to_string();
            assert!(
                cwd.starts_with('/') && !cwd.contains("unreachable") && !cwd.contains("/sys/fs/cgroup"),
                "cwd /proc/self/fd/{n} led to {out:?}"
            );
        }
        fx.signal("ee", "", 9).await.unwrap();
        fx.wait("ee", "").await;
        fx.remove("ee").await;
        // The same for an init process.
        for n in 3..12 {
            let cid = format!("cwd{n}");
            let mut p = sh("readlink /proc/$$/cwd; ls .. | head -3");
            p.Cwd = format!("/proc/self/fd/{n}");
            if fx.try_create(&cid, fx.spec(&cid, p), ctx()).await.is_err() {
                fx.assert_no_trace(&cid);
                continue;
            }
            fx.start(&cid).await;
            let out = String::from_utf8_lossy(&fx.read_all(&cid, "", false).await).into_owned();
            fx.wait(&cid, "").await;
            fx.remove(&cid).await;
            let cwd = out.lines().next().unwrap_or_default().to_string();
            assert!(
                cwd.starts_with('/') && !cwd.contains("unreachable") && !cwd.contains("/sys/fs/cgroup"),
                "init cwd /proc/self/fd/{n} led to {out:?}"
            );
        }
        fx.finish().await;
    });
}
