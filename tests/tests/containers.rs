//! End-to-end tests of containers through the real `kata-agent` binary: the container and process
//! RPCs, stdio, signals, cgroups, hooks, security settings and the behaviour on bad input.
//!
//! Every test starts its own agent (private run directory and socket), names its cgroups
//! `kata-e2e-<test pid>-<test>-<container>` and ends with [`Fx::finish`], which checks that the
//! agent left no bundle, mount, cgroup, child process or zombie behind. Containers run the busybox
//! rootfs of `scripts/mkrootfs.sh` read-only (writes go to a tmpfs on `/tmp`), so tests can share it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use e2e::{ctx, mounts_below, rootfs, AgentOptions, TestAgent};
use protobuf::well_known_types::empty::Empty;
use protobuf::MessageField;
use protocols::agent;
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::oci;

const PATH_ENV: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";
/// The capabilities container runtimes give by default.
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];
/// Read size of the Kata shim.
const READ_LEN: u32 = 32 * 1024;
const TEN_MIB: usize = 10 << 20;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn status_of<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> (ttrpc::Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected an RPC status error, got {other:?}"),
    }
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(r: ttrpc::Result<T>, code: ttrpc::Code) -> String {
    let (got, msg) = status_of(r);
    assert_eq!(got, code, "unexpected status code; message: {msg}");
    assert!(!msg.is_empty(), "errors must say what went wrong");
    msg
}

fn caps(list: &[&str]) -> oci::LinuxCapabilities {
    let mut c = oci::LinuxCapabilities::new();
    c.Bounding = strs(list);
    c.Effective = strs(list);
    c.Permitted = strs(list);
    c
}

/// A root process running `args` with the default capabilities.
fn process(args: &[&str]) -> oci::Process {
    let mut p = oci::Process::new();
    p.Args = strs(args);
    p.Env = strs(&[PATH_ENV, "TERM=xterm"]);
    p.Cwd = "/".into();
    p.User = MessageField::some(oci::User::new());
    p.Capabilities = MessageField::some(caps(DEFAULT_CAPS));
    p.NoNewPrivileges = true;
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

fn bind(src: &Path, dest: &str, ro: bool) -> oci::Mount {
    let mut opts = vec!["rbind"];
    if ro {
        opts.push("ro");
    }
    mount(dest, "bind", &src.display().to_string(), &opts)
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

/// Deterministic pseudo-random bytes (xorshift), different for each seed.
fn blob(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Pids of the processes whose parent is `pid`, with their state letter.
fn children_of(pid: u32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may contain spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        if f.next().and_then(|s| s.parse::<u32>().ok()) == Some(pid) {
            out.push((p, state));
        }
    }
    out
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn fd_targets(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .map(|e| {
                    format!(
                        "{} -> {}",
                        e.file_name().to_string_lossy(),
                        std::fs::read_link(e.path())
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn ns_inode(pid: i32, ns: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/{ns}"))
        .unwrap_or_else(|e| panic!("cannot stat the {ns} namespace of {pid}: {e}"))
        .ino()
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `secs` seconds.
async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if cond() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One test's agent, client and bookkeeping.
struct Fx {
    agent: TestAgent,
    c: AgentServiceClient,
    tag: String,
    rootfs: PathBuf,
    v2: bool,
    cgroups: Mutex<Vec<String>>,
}

const V2_ROOT: &str = "/sys/fs/cgroup/unified";

impl Fx {
    async fn new(tag: &str) -> Fx {
        Self::with(tag, AgentOptions::default(), false).await
    }

    async fn with(tag: &str, opts: AgentOptions<'_>, v2: bool) -> Fx {
        let rootfs = rootfs().canonicalize().expect("the busybox rootfs exists");
        let agent = TestAgent::start_with(opts);
        let (c, _) = agent.clients().await;
        Fx {
            agent,
            c,
            tag: tag.to_string(),
            rootfs,
            v2,
            cgroups: Mutex::new(Vec::new()),
        }
    }

    /// A directory private to this test (inside the agent's temporary directory).
    fn dir(&self, name: &str) -> PathBuf {
        let d = self.agent.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d.canonicalize().unwrap()
    }

    /// The (unique) cgroup path of container `cid`; remembered for the final check.
    fn cgroup(&self, cid: &str) -> String {
        let p = format!("kata-e2e-{}-{}-{cid}", std::process::id(), self.tag);
        let mut list = self.cgroups.lock().unwrap();
        if !list.contains(&p) {
            list.push(p.clone());
        }
        p
    }

    fn cgroup_dirs(&self, path: &str) -> Vec<PathBuf> {
        if self.v2 {
            return vec![Path::new(V2_ROOT).join(path)];
        }
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

    /// A controller file of the container's cgroup (`freezer/freezer.state`, or on v2 a file name).
    fn cg_file(&self, cid: &str, file: &str) -> PathBuf {
        let base = if self.v2 {
            PathBuf::from(V2_ROOT)
        } else {
            PathBuf::from("/sys/fs/cgroup")
        };
        match file.split_once('/') {
            Some((ctrl, f)) if !self.v2 => base.join(ctrl).join(self.cgroup(cid)).join(f),
            _ => base
                .join(self.cgroup(cid))
                .join(file.rsplit('/').next().unwrap()),
        }
    }

    fn cg_read(&self, cid: &str, file: &str) -> String {
        let p = self.cg_file(cid, file);
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
            .trim()
            .to_string()
    }

    /// Pids in the container's cgroup.
    fn cg_pids(&self, cid: &str) -> Vec<i32> {
        let file = if self.v2 {
            "cgroup.procs"
        } else {
            "freezer/cgroup.procs"
        };
        std::fs::read_to_string(self.cg_file(cid, file))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// The default spec: busybox rootfs read-only, tmpfs on /tmp, new mount/ipc/uts namespaces.
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
            mount(
                "/dev",
                "tmpfs",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            ),
            mount(
                "/dev/pts",
                "devpts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                ],
            ),
            mount(
                "/dev/shm",
                "tmpfs",
                "shm",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            ),
            mount(
                "/dev/mqueue",
                "mqueue",
                "mqueue",
                &["nosuid", "noexec", "nodev"],
            ),
            mount(
                "/sys",
                "sysfs",
                "sysfs",
                &["nosuid", "noexec", "nodev", "ro"],
            ),
            mount("/tmp", "tmpfs", "tmpfs", &["nosuid", "nodev", "mode=1777"]),
        ];
        let mut l = oci::Linux::new();
        l.Namespaces = vec![namespace("mount"), namespace("ipc"), namespace("uts")];
        l.CgroupsPath = self.cgroup(cid);
        l.Resources = MessageField::some(oci::LinuxResources::new());
        l.MaskedPaths = strs(&[
            "/proc/kcore",
            "/proc/keys",
            "/proc/timer_list",
            "/sys/firmware",
        ]);
        l.ReadonlyPaths = strs(&["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"]);
        s.Linux = MessageField::some(l);
        s
    }

    async fn create_req(&self, req: agent::CreateContainerRequest) -> ttrpc::Result<Empty> {
        self.c.create_container(ctx(), &req).await
    }

    async fn try_create(&self, cid: &str, spec: oci::Spec) -> ttrpc::Result<Empty> {
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = cid.into();
        req.OCI = MessageField::some(spec);
        self.create_req(req).await
    }

    async fn create(&self, cid: &str, spec: oci::Spec) {
        self.try_create(cid, spec)
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {cid}: {e:?}\n{}", self.agent.log()));
    }

    async fn try_start(&self, cid: &str) -> ttrpc::Result<Empty> {
        let mut req = agent::StartContainerRequest::new();
        req.container_id = cid.into();
        self.c.start_container(ctx(), &req).await
    }

    async fn start(&self, cid: &str) {
        self.try_start(cid)
            .await
            .unwrap_or_else(|e| panic!("StartContainer {cid}: {e:?}"));
    }

    /// Create + start.
    async fn run(&self, cid: &str, spec: oci::Spec) {
        self.create(cid, spec).await;
        self.start(cid).await;
    }

    async fn try_remove(&self, cid: &str, timeout: u32) -> ttrpc::Result<Empty> {
        let mut req = agent::RemoveContainerRequest::new();
        req.container_id = cid.into();
        req.timeout = timeout;
        self.c.remove_container(ctx(), &req).await
    }

    async fn remove(&self, cid: &str) {
        self.try_remove(cid, 0)
            .await
            .unwrap_or_else(|e| panic!("RemoveContainer {cid}: {e:?}"));
        assert!(
            !self.agent.run_dir.join(cid).exists(),
            "the bundle of {cid} outlived RemoveContainer"
        );
        assert!(
            !self.cgroup_exists(cid),
            "the cgroup of {cid} outlived RemoveContainer"
        );
    }

    async fn try_exec(&self, cid: &str, exec_id: &str, p: oci::Process) -> ttrpc::Result<Empty> {
        let mut req = agent::ExecProcessRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        req.process = MessageField::some(p);
        self.c.exec_process(ctx(), &req).await
    }

    async fn exec(&self, cid: &str, exec_id: &str, p: oci::Process) {
        self.try_exec(cid, exec_id, p)
            .await
            .unwrap_or_else(|e| panic!("ExecProcess {cid}/{exec_id}: {e:?}"));
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

    async fn try_signal(&self, cid: &str, exec_id: &str, sig: u32) -> ttrpc::Result<Empty> {
        let mut req = agent::SignalProcessRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        req.signal = sig;
        self.c.signal_process(ctx(), &req).await
    }

    async fn signal(&self, cid: &str, exec_id: &str, sig: u32) {
        self.try_signal(cid, exec_id, sig)
            .await
            .unwrap_or_else(|e| panic!("SignalProcess {cid}/{exec_id} {sig}: {e:?}"));
    }

    async fn try_write(&self, cid: &str, exec_id: &str, data: &[u8]) -> ttrpc::Result<u32> {
        write_stdin(&self.c, cid, exec_id, data).await
    }

    async fn close_stdin(&self, cid: &str, exec_id: &str) {
        let mut req = agent::CloseStdinRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        self.c.close_stdin(ctx(), &req).await.unwrap();
    }

    async fn read_all(&self, cid: &str, exec_id: &str, stderr: bool) -> Vec<u8> {
        read_all(&self.c, cid, exec_id, stderr).await
    }

    /// Reads stdout until `needle` has appeared; returns everything read.
    async fn read_until(&self, cid: &str, exec_id: &str, needle: &str) -> String {
        let mut out = Vec::new();
        loop {
            let data = read(&self.c, cid, exec_id, false, READ_LEN)
                .await
                .unwrap_or_else(|e| panic!("ReadStdout {cid}/{exec_id}: {e:?}"));
            assert!(
                !data.is_empty(),
                "end of stream before {needle:?}; got {:?}",
                String::from_utf8_lossy(&out)
            );
            out.extend_from_slice(&data);
            let s = String::from_utf8_lossy(&out);
            if s.contains(needle) {
                return s.into_owned();
            }
        }
    }

    /// Runs the container to its end: start, read stdout and stderr to EOF, wait, remove.
    async fn run_to_end(&self, cid: &str, spec: oci::Spec) -> (i32, String, String) {
        self.run(cid, spec).await;
        let (out, err) = tokio::join!(self.read_all(cid, "", false), self.read_all(cid, "", true));
        let code = self.wait(cid, "").await;
        self.remove(cid).await;
        (
            code,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    }

    /// Runs an exec to its end: output of stdout and stderr and the exit status.
    async fn exec_to_end(
        &self,
        cid: &str,
        exec_id: &str,
        p: oci::Process,
    ) -> (i32, String, String) {
        self.exec(cid, exec_id, p).await;
        let (out, err) = tokio::join!(
            self.read_all(cid, exec_id, false),
            self.read_all(cid, exec_id, true)
        );
        let code = self.wait(cid, exec_id).await;
        (
            code,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    }

    /// Asserts that nothing of container `cid` exists: bundle, cgroup, mounts.
    fn assert_no_trace(&self, cid: &str) {
        assert!(
            !self.agent.run_dir.join(cid).exists(),
            "a bundle of {cid} was left in {}",
            self.agent.run_dir.display()
        );
        assert!(!self.cgroup_exists(cid), "a cgroup of {cid} was left");
        let mounts = mounts_below(&self.agent.run_dir);
        assert!(
            mounts.is_empty(),
            "mounts left below the run dir: {mounts:?}"
        );
    }

    /// Waits until the agent has no child process left (no container process, no zombie).
    async fn assert_no_children(&self) {
        let pid = self.agent.pid();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let kids = children_of(pid);
            if kids.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the agent still has children (pid, state): {kids:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The end of every test: no bundle, mount, cgroup, process or zombie is left.
    async fn finish(self) {
        if std::env::var_os("E2E_SHOW_WARNINGS").is_some() {
            for l in self.agent.log().lines() {
                if l.contains("\"level\":\"WARN") || l.contains("\"level\":\"ERROR") {
                    eprintln!("[{}] {l}", self.tag);
                }
            }
        }
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

async fn read(
    c: &AgentServiceClient,
    cid: &str,
    exec_id: &str,
    stderr: bool,
    len: u32,
) -> ttrpc::Result<Vec<u8>> {
    let mut req = agent::ReadStreamRequest::new();
    req.container_id = cid.into();
    req.exec_id = exec_id.into();
    req.len = len;
    let resp = if stderr {
        c.read_stderr(ctx(), &req).await?
    } else {
        c.read_stdout(ctx(), &req).await?
    };
    Ok(resp.data)
}

async fn read_all(c: &AgentServiceClient, cid: &str, exec_id: &str, stderr: bool) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let data = read(c, cid, exec_id, stderr, READ_LEN)
            .await
            .unwrap_or_else(|e| panic!("reading {cid}/{exec_id} (stderr: {stderr}): {e:?}"));
        if data.is_empty() {
            return out;
        }
        out.extend_from_slice(&data);
    }
}

async fn write_stdin(
    c: &AgentServiceClient,
    cid: &str,
    exec_id: &str,
    data: &[u8],
) -> ttrpc::Result<u32> {
    let mut req = agent::WriteStreamRequest::new();
    req.container_id = cid.into();
    req.exec_id = exec_id.into();
    req.data = data.to_vec();
    c.write_stdin(ctx(), &req).await.map(|r| r.len)
}

// ---------------------------------------------------------------------------------------------
// Life cycle

#[test]
fn life_cycle_and_exit_codes() {
    rt().block_on(async {
        let fx = Fx::new("life").await;
        // Exit 0, output read after the exit (and after WaitProcess) is complete.
        fx.run("c0", fx.spec("c0", sh("echo hello; echo to-stderr >&2")))
            .await;
        assert!(fx.agent.run_dir.join("c0/config.json").exists());
        assert!(fx.cgroup_exists("c0"));
        assert_eq!(fx.wait("c0", "").await, 0);
        assert_eq!(fx.read_all("c0", "", false).await, b"hello\n");
        assert_eq!(fx.read_all("c0", "", true).await, b"to-stderr\n");
        // WaitProcess forgets the process: a second wait is NOT_FOUND.
        assert_code(fx.try_wait("c0", "").await, ttrpc::Code::NOT_FOUND);
        fx.remove("c0").await;

        let (code, out, err) = fx
            .run_to_end("c3", fx.spec("c3", sh("echo three >&2; exit 3")))
            .await;
        assert_eq!((code, out.as_str(), err.as_str()), (3, "", "three\n"));

        // 128 + signal: SIGKILL gives 137.
        fx.run("c9", fx.spec("c9", process(&["sleep", "1000"])))
            .await;
        fx.signal("c9", "", libc::SIGKILL as u32).await;
        assert_eq!(fx.wait("c9", "").await, 137);
        fx.remove("c9").await;

        // A container that is removed without ever being started.
        fx.create("cx", fx.spec("cx", process(&["true"]))).await;
        fx.remove("cx").await;
        fx.finish().await;
    });
}

#[test]
fn second_start_and_start_of_a_dead_container_fail_fast() {
    rt().block_on(async {
        let fx = Fx::new("start").await;
        fx.run("s1", fx.spec("s1", process(&["sleep", "1000"])))
            .await;
        let t0 = Instant::now();
        let (code, msg) = status_of(fx.try_start("s1").await);
        assert_ne!(code, ttrpc::Code::DEADLINE_EXCEEDED, "{msg}");
        assert_ne!(code, ttrpc::Code::OK);
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the second start hung"
        );

        // The init of a created container dies before start: start fails, never hangs.
        fx.create("s2", fx.spec("s2", process(&["sleep", "1000"])))
            .await;
        fx.signal("s2", "", libc::SIGKILL as u32).await;
        assert_eq!(fx.wait("s2", "").await, 137);
        let (code, msg) = status_of(fx.try_start("s2").await);
        assert_ne!(code, ttrpc::Code::DEADLINE_EXCEEDED, "{msg}");
        // The first container is unaffected.
        let (code, out, _) = fx
            .exec_to_end("s1", "e1", process(&["echo", "alive"]))
            .await;
        assert_eq!((code, out.as_str()), (0, "alive\n"));
        fx.remove("s1").await;
        fx.remove("s2").await;
        fx.finish().await;
    });
}

// ---------------------------------------------------------------------------------------------
// Processes and I/O

#[test]
fn exec_without_and_with_a_tty() {
    rt().block_on(async {
        let fx = Fx::new("exec").await;
        fx.run("x1", fx.spec("x1", process(&["sleep", "1000"])))
            .await;

        let (code, out, err) = fx
            .exec_to_end("x1", "plain", sh("echo out; echo err >&2; exit 5"))
            .await;
        assert_eq!((code, out.as_str(), err.as_str()), (5, "out\n", "err\n"));

        // A terminal: the pty is the controlling tty, and its size follows TtyWinResize.
        let mut p = process(&["sh"]);
        p.Terminal = true;
        fx.exec("x1", "tty", p).await;
        let mut req = agent::TtyWinResizeRequest::new();
        req.container_id = "x1".into();
        req.exec_id = "tty".into();
        req.row = 33;
        req.column = 111;
        fx.c.tty_win_resize(ctx(), &req).await.unwrap();
        fx.try_write("x1", "tty", b"stty size; exit 7\n")
            .await
            .unwrap();
        // stty only works on a terminal.
        fx.read_until("x1", "tty", "33 111").await;
        // The rest of the output, then end of stream.
        let _ = fx.read_all("x1", "tty", false).await;
        assert_eq!(fx.wait("x1", "tty").await, 7);

        // TtyWinResize on a process without a terminal is UNAVAILABLE.
        fx.exec("x1", "notty", process(&["sleep", "1000"])).await;
        let mut req = agent::TtyWinResizeRequest::new();
        req.container_id = "x1".into();
        req.exec_id = "notty".into();
        req.row = 1;
        req.column = 1;
        assert_code(
            fx.c.tty_win_resize(ctx(), &req).await,
            ttrpc::Code::UNAVAILABLE,
        );
        fx.signal("x1", "notty", libc::SIGKILL as u32).await;
        assert_eq!(fx.wait("x1", "notty").await, 137);

        // Exec processes share the container's namespaces.
        let host_uts = ns_inode(std::process::id() as i32, "uts");
        let (_, out, _) = fx.exec_to_end("x1", "host", process(&["hostname"])).await;
        assert_eq!(out, "ctr\n");
        let init = fx.cg_pids("x1")[0];
        assert_ne!(ns_inode(init, "uts"), host_uts);
        fx.remove("x1").await;
        fx.finish().await;
    });
}

/// A container asking for a time namespace gets one of its own (the setup process forks into it,
/// as the namespace applies to children only), and an exec joins it.
#[test]
fn time_namespace_of_its_own() {
    rt().block_on(async {
        let fx = Fx::new("timens").await;
        let mut s = fx.spec("t1", process(&["sleep", "1000"]));
        s.Linux.as_mut().unwrap().Namespaces.push(namespace("time"));
        fx.run("t1", s).await;
        let init = fx.cg_pids("t1")[0];
        let own = ns_inode(init, "time");
        assert_ne!(own, ns_inode(std::process::id() as i32, "time"));
        fx.exec("t1", "e1", process(&["sleep", "1000"])).await;
        let exec = fx
            .cg_pids("t1")
            .into_iter()
            .find(|p| *p != init)
            .expect("the exec'd process is in the container's cgroup");
        assert_eq!(ns_inode(exec, "time"), own);
        fx.signal("t1", "e1", libc::SIGKILL as u32).await;
        assert_eq!(fx.wait("t1", "e1").await, 137);
        fx.remove("t1").await;
        fx.finish().await;
    });
}

#[test]
fn stdin_round_trip_through_cat() {
    rt().block_on(async {
        let fx = Fx::new("stdin").await;
        // The init reads its stdin.
        fx.run("i1", fx.spec("i1", process(&["cat"]))).await;
        assert_eq!(fx.try_write("i1", "", b"hello\n").await.unwrap(), 6);
        assert_eq!(fx.read_until("i1", "", "hello\n").await, "hello\n");
        fx.close_stdin("i1", "").await;
        assert!(fx.read_all("i1", "", false).await.is_empty());
        assert_eq!(fx.wait("i1", "").await, 0);
        fx.remove("i1").await;

        // An exec'd cat: 1 MiB (more than any pipe buffer) written while it is read.
        let data = blob(1 << 20, 7);
        fx.run("i1", fx.spec("i1", process(&["sleep", "1000"])))
            .await;
        fx.exec("i1", "cat", process(&["cat"])).await;
        let c = fx.c.clone();
        let (written, out) = tokio::join!(
            async {
                let mut n = 0;
                for chunk in data.chunks(256 * 1024) {
                    n += write_stdin(&c, "i1", "cat", chunk).await.unwrap();
                }
                let mut req = agent::CloseStdinRequest::new();
                req.container_id = "i1".into();
                req.exec_id = "cat".into();
                c.close_stdin(ctx(), &req).await.unwrap();
                n
            },
            fx.read_all("i1", "cat", false)
        );
        assert_eq!(written as usize, data.len());
        assert!(out == data, "cat echoed {} bytes, not the same", out.len());
        assert_eq!(fx.wait("i1", "cat").await, 0);
        fx.remove("i1").await;
        fx.finish().await;
    });
}

/// A spec whose process finds two 10 MiB files in /data.
fn big_data(fx: &Fx) -> (oci::Mount, Vec<u8>, Vec<u8>) {
    let dir = fx.dir("data");
    let (out, err) = (blob(TEN_MIB, 1), blob(TEN_MIB, 2));
    std::fs::write(dir.join("out"), &out).unwrap();
    std::fs::write(dir.join("err"), &err).unwrap();
    (bind(&dir, "/data", true), out, err)
}

#[test]
fn ten_mib_on_stdout_and_stderr_read_while_running() {
    rt().block_on(async {
        let fx = Fx::new("big").await;
        let (m, out, err) = big_data(&fx);
        let mut spec = fx.spec("b1", process(&["sleep", "1000"]));
        spec.Mounts.push(m);
        fx.run("b1", spec).await;
        fx.exec("b1", "cat", sh("cat /data/err >&2 & cat /data/out; wait"))
            .await;
        let (got_out, got_err) = tokio::join!(
            fx.read_all("b1", "cat", false),
            fx.read_all("b1", "cat", true)
        );
        assert_eq!(fx.wait("b1", "cat").await, 0);
        assert_eq!(got_out.len(), TEN_MIB);
        assert!(got_out == out, "stdout differs");
        assert_eq!(got_err.len(), TEN_MIB);
        assert!(got_err == err, "stderr differs");
        fx.remove("b1").await;
        fx.finish().await;
    });
}

#[test]
fn output_written_before_the_exit_is_all_readable_after_it() {
    rt().block_on(async {
        // Pipes of 1 MiB (agent.container_pipe_size; more needs CAP_SYS_RESOURCE), so that the
        // process can write nearly that much to each stream and exit before anything is read.
        let fx = Fx::with(
            "exited",
            AgentOptions {
                cmdline: Some("agent.container_pipe_size=1048576".into()),
                ..Default::default()
            },
            false,
        )
        .await;
        const SIZE: usize = 1000 * 1024;
        let dir = fx.dir("data");
        let (out, err) = (blob(SIZE, 3), blob(SIZE, 4));
        std::fs::write(dir.join("out"), &out).unwrap();
        std::fs::write(dir.join("err"), &err).unwrap();
        let data = bind(&dir, "/data", true);

        // WaitProcess first, then read everything: nothing is lost, then end of stream.
        let mut spec = fx.spec("w1", sh("cat /data/out; cat /data/err >&2"));
        spec.Mounts.push(data.clone());
        fx.run("w1", spec).await;
        assert_eq!(fx.wait("w1", "").await, 0);
        let got = fx.read_all("w1", "", false).await;
        assert!(got == out, "stdout after the exit: {} bytes", got.len());
        let got = fx.read_all("w1", "", true).await;
        assert!(got == err, "stderr after the exit: {} bytes", got.len());
        fx.remove("w1").await;

        // The process exits (nobody waits, nobody reads); the output is read afterwards.
        let mut spec = fx.spec("w2", sh("cat /data/err >&2; cat /data/out"));
        spec.Mounts.push(data);
        fx.run("w2", spec).await;
        eventually(30, "the container process exits", || {
            fx.cg_pids("w2").is_empty()
        })
        .await;
        let (got_out, got_err) =
            tokio::join!(fx.read_all("w2", "", false), fx.read_all("w2", "", true));
        assert!(got_out == out, "stdout: {} bytes", got_out.len());
        assert!(got_err == err, "stderr: {} bytes", got_err.len());
        assert_eq!(fx.wait("w2", "").await, 0);

        // The same for an exec'd process of a running container.
        fx.run("w3", {
            let mut s = fx.spec("w3", process(&["sleep", "1000"]));
            s.Mounts.push(bind(&dir, "/data", true));
            s
        })
        .await;
        fx.exec("w3", "e", sh("cat /data/out; cat /data/err >&2; exit 4"))
            .await;
        assert_eq!(fx.wait("w3", "e").await, 4);
        let (got_out, got_err) =
            tokio::join!(fx.read_all("w3", "e", false), fx.read_all("w3", "e", true));
        assert!(got_out == out, "exec stdout: {} bytes", got_out.len());
        assert!(got_err == err, "exec stderr: {} bytes", got_err.len());
        // Once both streams are at their end, the process is gone for good.
        assert_code(
            read(&fx.c, "w3", "e", false, 10).await,
            ttrpc::Code::NOT_FOUND,
        );
        fx.remove("w2").await;
        fx.remove("w3").await;
        fx.finish().await;
    });
}

#[test]
fn stuck_clients_and_processes_do_not_block_other_containers() {
    rt().block_on(async {
        let fx = Fx::new("stuck").await;
        // Nobody ever reads this container's stdout: `yes` blocks on a full pipe.
        fx.run("aa", fx.spec("aa", process(&["yes"]))).await;
        // A process that never reads stdin, fed more than a pipe holds by a client that waits.
        fx.exec("aa", "deaf", process(&["sleep", "1000"])).await;
        let c = fx.c.clone();
        let writer = tokio::spawn(async move {
            let mut req = agent::WriteStreamRequest::new();
            req.container_id = "aa".into();
            req.exec_id = "deaf".into();
            req.data = vec![b'x'; 2 << 20];
            c.write_stdin(ttrpc::context::with_timeout(120_000_000_000), &req)
                .await
        });
        // A read that has nothing to return for now.
        let c = fx.c.clone();
        let reader = tokio::spawn(async move {
            let mut req = agent::ReadStreamRequest::new();
            req.container_id = "aa".into();
            req.exec_id = "deaf".into();
            req.len = READ_LEN;
            c.read_stdout(ttrpc::context::with_timeout(120_000_000_000), &req)
                .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;

        // Other containers, and other requests on the stuck one, go on.
        let (code, out, _) = fx.run_to_end("bb", fx.spec("bb", sh("echo from-b"))).await;
        assert_eq!((code, out.as_str()), (0, "from-b\n"));
        let (code, out, _) = fx.exec_to_end("aa", "e1", process(&["echo", "in-a"])).await;
        assert_eq!((code, out.as_str()), (0, "in-a\n"));
        let mut req = agent::StatsContainerRequest::new();
        req.container_id = "aa".into();
        fx.c.stats_container(ctx(), &req).await.unwrap();
        // The yes output is there when someone finally reads it.
        let data = read(&fx.c, "aa", "", false, READ_LEN).await.unwrap();
        assert!(data.starts_with(b"y\ny\n"));
        assert!(!writer.is_finished(), "the write cannot have completed");

        // Removal ends the blocked write and read with an answer.
        fx.try_remove("aa", 10).await.unwrap();
        let w = tokio::time::timeout(Duration::from_secs(30), writer)
            .await
            .expect("the pending WriteStdin was answered")
            .unwrap();
        let (code, _) = status_of(w);
        assert_ne!(code, ttrpc::Code::DEADLINE_EXCEEDED);
        let r = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .expect("the pending ReadStdout was answered")
            .unwrap();
        if let Ok(data) = r {
            assert!(
                data.data.is_empty(),
                "a killed process returns end of stream"
            );
        }
        fx.assert_no_trace("aa");
        fx.finish().await;
    });
}

// ---------------------------------------------------------------------------------------------
// Signals

#[test]
fn signals_to_init_exec_and_all_processes() {
    rt().block_on(async {
        let fx = Fx::new("sig").await;
        // An init with a SIGTERM handler gets SIGTERM itself.
        let script =
            r#"trap "echo got-term; exit 42" TERM; echo ready; while :; do sleep 0.1; done"#;
        fx.run("t1", fx.spec("t1", sh(script))).await;
        fx.read_until("t1", "", "ready").await;
        fx.signal("t1", "", libc::SIGTERM as u32).await;
        assert_eq!(fx.wait("t1", "").await, 42);
        fx.remove("t1").await;

        // SIGTERM to a pid-1 without a handler would be ignored: it becomes SIGKILL.
        fx.run("t2", fx.spec("t2", process(&["sleep", "1000"])))
            .await;
        fx.exec("t2", "e1", process(&["sleep", "1000"])).await;
        fx.signal("t2", "e1", libc::SIGUSR1 as u32).await;
        assert_eq!(fx.wait("t2", "e1").await, 128 + libc::SIGUSR1);
        // Signalling a process that was waited for is NOT_FOUND; signal 0 probes.
        assert_code(
            fx.try_signal("t2", "e1", libc::SIGKILL as u32).await,
            ttrpc::Code::NOT_FOUND,
        );
        fx.signal("t2", "", 0).await;
        fx.signal("t2", "", libc::SIGTERM as u32).await;
        assert_eq!(fx.wait("t2", "").await, 137);
        fx.remove("t2").await;

        // exec_id "" with SIGKILL kills every process of the container.
        let script = "sleep 1000 & sleep 1000 & echo ready; wait";
        fx.run("t3", fx.spec("t3", sh(script))).await;
        fx.read_until("t3", "", "ready").await;
        fx.exec("t3", "e1", sh("sleep 1000 & exec sleep 1000"))
            .await;
        eventually(10, "five processes in the container", || {
            fx.cg_pids("t3").len() == 5
        })
        .await;
        fx.signal("t3", "", libc::SIGKILL as u32).await;
        assert_eq!(fx.wait("t3", "").await, 137);
        assert_eq!(fx.wait("t3", "e1").await, 137);
        eventually(10, "the container's cgroup empties", || {
            fx.cg_pids("t3").is_empty()
        })
        .await;
        fx.remove("t3").await;
        fx.finish().await;
    });
}

// ---------------------------------------------------------------------------------------------
// Cgroups

#[test]
fn pause_and_resume_freeze_the_container() {
    rt().block_on(async {
        let fx = Fx::new("pause").await;
        let shared = fx.dir("shared");
        let counter = shared.join("n");
        let mut spec = fx.spec(
            "p1",
            sh("i=0; while :; do i=$((i+1)); echo $i > /shared/n.tmp; mv /shared/n.tmp /shared/n; done"),
        );
        spec.Mounts.push(bind(&shared, "/shared", false));
        fx.run("p1", spec).await;
        let value = || -> u64 {
            std::fs::read_to_string(&counter)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        eventually(20, "the counter runs", || value() > 2).await;

        let mut req = agent::PauseContainerRequest::new();
        req.container_id = "p1".into();
        fx.c.pause_container(ctx(), &req).await.unwrap();
        assert_eq!(fx.cg_read("p1", "freezer/freezer.state"), "FROZEN");
        let frozen_at = value();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(value(), frozen_at, "a paused container made progress");
        // A process cannot join a frozen container: a prompt error, not a hang.
        let t0 = Instant::now();
        let (code, msg) = status_of(fx.try_exec("p1", "e1", process(&["true"])).await);
        assert_ne!(code, ttrpc::Code::DEADLINE_EXCEEDED, "{msg}");
        assert!(msg.contains("paused"), "{msg}");
        assert!(t0.elapsed() < Duration::from_secs(10));
        let mut req = agent::StatsContainerRequest::new();
        req.container_id = "p1".into();
        fx.c.stats_container(ctx(), &req).await.unwrap();

        let mut req = agent::ResumeContainerRequest::new();
        req.container_id = "p1".into();
        fx.c.resume_container(ctx(), &req).await.unwrap();
        assert_eq!(fx.cg_read("p1", "freezer/freezer.state"), "THAWED");
        eventually(20, "the counter runs again", || value() > frozen_at).await;

        // A paused container can be removed.
        let mut req = agent::PauseContainerRequest::new();
        req.container_id = "p1".into();
        fx.c.pause_container(ctx(), &req).await.unwrap();
        fx.remove("p1").await;
        fx.finish().await;
    });
}

fn memory(limit: i64) -> oci::LinuxMemory {
    let mut m = oci::LinuxMemory::new();
    m.Limit = limit;
    m
}

fn pids(limit: i64) -> oci::LinuxPids {
    let mut p = oci::LinuxPids::new();
    p.Limit = limit;
    p
}

const BUSY: &str =
    "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo busy-done; exec sleep 1000";

#[test]
fn update_and_stats_on_cgroup_v1() {
    rt().block_on(async {
        let fx = Fx::new("upd").await;
        let mut spec = fx.spec("u1", sh(BUSY));
        let mut res = oci::LinuxResources::new();
        res.Memory = MessageField::some(memory(64 << 20));
        res.Pids = MessageField::some(pids(64));
        let mut cpu = oci::LinuxCPU::new();
        cpu.Shares = 512;
        res.CPU = MessageField::some(cpu);
        spec.Linux.as_mut().unwrap().Resources = MessageField::some(res);
        fx.run("u1", spec).await;
        assert_eq!(
            fx.cg_read("u1", "memory/memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert_eq!(fx.cg_read("u1", "pids/pids.max"), "64");
        assert_eq!(fx.cg_read("u1", "cpu/cpu.shares"), "512");

        let update = |res: oci::LinuxResources| {
            let mut req = agent::UpdateContainerRequest::new();
            req.container_id = "u1".into();
            req.resources = MessageField::some(res);
            req
        };
        let mut res = oci::LinuxResources::new();
        res.Memory = MessageField::some(memory(128 << 20));
        fx.c.update_container(ctx(), &update(res)).await.unwrap();
        assert_eq!(
            fx.cg_read("u1", "memory/memory.limit_in_bytes"),
            (128u64 << 20).to_string()
        );
        // -1 is "unlimited".
        let mut res = oci::LinuxResources::new();
        res.Memory = MessageField::some(memory(-1));
        res.Pids = MessageField::some(pids(-1));
        fx.c.update_container(ctx(), &update(res)).await.unwrap();
        let unlimited: u64 = fx
            .cg_read("u1", "memory/memory.limit_in_bytes")
            .parse()
            .unwrap();
        assert!(
            unlimited > 1 << 60,
            "memory limit {unlimited} is not unlimited"
        );
        assert_eq!(fx.cg_read("u1", "pids/pids.max"), "max");
        // No resources: nothing to do.
        let mut req = agent::UpdateContainerRequest::new();
        req.container_id = "u1".into();
        fx.c.update_container(ctx(), &req).await.unwrap();
        let mut res = oci::LinuxResources::new();
        res.Pids = MessageField::some(pids(32));
        fx.c.update_container(ctx(), &update(res)).await.unwrap();
        assert_eq!(fx.cg_read("u1", "pids/pids.max"), "32");

        fx.read_until("u1", "", "busy-done").await;
        let mut req = agent::StatsContainerRequest::new();
        req.container_id = "u1".into();
        let stats = fx.c.stats_container(ctx(), &req).await.unwrap();
        let cg = stats.cgroup_stats.as_ref().expect("cgroup stats");
        let cpu = cg.cpu_stats.cpu_usage.as_ref().expect("cpu usage");
        assert!(cpu.total_usage > 0, "cpu usage {cpu:?}");
        assert!(!cpu.percpu_usage.is_empty());
        assert!(cpu.percpu_usage.iter().sum::<u64>() > 0);
        let mem = cg.memory_stats.as_ref().expect("memory stats");
        let usage = mem.usage.as_ref().unwrap();
        assert!(
            usage.usage > 0 && usage.max_usage >= usage.usage,
            "{usage:?}"
        );
        assert!(usage.limit > 1 << 60);
        assert!(!mem.stats.is_empty());
        let p = cg.pids_stats.as_ref().expect("pids stats");
        assert_eq!((p.current, p.limit), (1, 32));
        fx.remove("u1").await;
        fx.finish().await;
    });
}

#[test]
fn pause_stats_and_update_on_cgroup_v2() {
    rt().block_on(async {
        assert!(
            e2e_cgroup2_available(),
            "{V2_ROOT} must be a cgroup2 mount for this test"
        );
        let fx = Fx::with(
            "v2",
            AgentOptions {
                env: vec![("KATA_AGENT_CGROUP_ROOT", V2_ROOT.to_string())],
                cmdline: Some("agent.unified_cgroup_hierarchy=1".into()),
                ..Default::default()
            },
            true,
        )
        .await;
        fx.run("v1", fx.spec("v1", sh(BUSY))).await;
        let dir = Path::new(V2_ROOT).join(fx.cgroup("v1"));
        assert!(dir.is_dir(), "no v2 cgroup at {}", dir.display());
        fx.read_until("v1", "", "busy-done").await;
        assert_eq!(fx.cg_pids("v1").len(), 1);

        let mut req = agent::PauseContainerRequest::new();
        req.container_id = "v1".into();
        fx.c.pause_container(ctx(), &req).await.unwrap();
        assert_eq!(fx.cg_read("v1", "cgroup.freeze"), "1");
        assert!(fx.cg_read("v1", "cgroup.events").contains("frozen 1"));
        let mut req = agent::ResumeContainerRequest::new();
        req.container_id = "v1".into();
        fx.c.resume_container(ctx(), &req).await.unwrap();
        assert!(fx.cg_read("v1", "cgroup.events").contains("frozen 0"));

        let mut req = agent::StatsContainerRequest::new();
        req.container_id = "v1".into();
        let stats = fx.c.stats_container(ctx(), &req).await.unwrap();
        let cpu = stats
            .cgroup_stats
            .cpu_stats
            .cpu_usage
            .as_ref()
            .expect("cpu usage on v2");
        assert!(cpu.total_usage > 0, "{cpu:?}");

        // This hierarchy has no memory controller: a clear error, nothing changed.
        let mut req = agent::UpdateContainerRequest::new();
        req.container_id = "v1".into();
        let mut res = oci::LinuxResources::new();
        res.Memory = MessageField::some(memory(64 << 20));
        req.resources = MessageField::some(res);
        let (code, msg) = status_of(fx.c.update_container(ctx(), &req).await);
        assert_ne!(code, ttrpc::Code::OK, "{msg}");
        assert!(msg.contains("memory"), "{msg}");

        fx.remove("v1").await;
        assert!(!dir.exists());
        fx.finish().await;
    });
}

fn e2e_cgroup2_available() -> bool {
    nix::sys::statfs::statfs(V2_ROOT)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

#[test]
fn oom_event_for_a_container_over_its_memory_limit() {
    rt().block_on(async {
        let fx = Fx::new("oom").await;
        let mut spec = fx.spec(
            "o1",
            sh("dd if=/dev/zero of=/dev/null bs=64M count=1; echo dd=$?"),
        );
        let mut res = oci::LinuxResources::new();
        res.Memory = MessageField::some(memory(24 << 20));
        spec.Linux.as_mut().unwrap().Resources = MessageField::some(res);
        fx.run("o1", spec).await;
        let out = fx.read_all("o1", "", false).await;
        assert_eq!(String::from_utf8_lossy(&out), "dd=137\n");
        assert_eq!(fx.wait("o1", "").await, 0);
        let oom =
            fx.c.get_oom_event(ctx(), &agent::GetOOMEventRequest::new())
                .await
                .expect("an OOM event");
        assert_eq!(oom.container_id, "o1");
        fx.remove("o1").await;
        fx.finish().await;
    });
}

// ---------------------------------------------------------------------------------------------
// Namespaces

#[test]
fn shared_pid_namespace_of_the_sandbox() {
    rt().block_on(async {
        let fx = Fx::new("pidns").await;
        // The first container defines the sandbox's pid namespace.
        fx.run("sb", fx.spec("sb", process(&["sleep", "1000"])))
            .await;
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = "shared".into();
        req.OCI = MessageField::some(fx.spec("shared", process(&["sleep", "2000"])));
        req.sandbox_pidns = true;
        fx.create_req(req).await.unwrap();
        fx.start("shared").await;
        fx.run("own", fx.spec("own", process(&["sleep", "3000"])))
            .await;

        let pid_of = |cid: &str| {
            let p = fx.cg_pids(cid);
            assert_eq!(p.len(), 1, "{cid}: {p:?}");
            p[0]
        };
        let (sb, shared, own) = (pid_of("sb"), pid_of("shared"), pid_of("own"));
        assert_eq!(ns_inode(sb, "pid"), ns_inode(shared, "pid"));
        assert_ne!(ns_inode(sb, "pid"), ns_inode(own, "pid"));

        let (code, out, _) = fx.exec_to_end("shared", "ps", sh("ps; echo me=$$")).await;
        assert_eq!(code, 0);
        assert!(
            out.contains("sleep 1000") && out.contains("sleep 2000"),
            "{out}"
        );
        assert!(!out.contains("sleep 3000"), "{out}");
        assert!(!out.contains("me=1\n"), "{out}");
        let (_, out, _) = fx.exec_to_end("own", "ps", process(&["ps"])).await;
        assert!(
            !out.contains("sleep 1000") && out.contains("sleep 3000"),
            "{out}"
        );

        for cid in ["own", "shared", "sb"] {
            fx.remove(cid).await;
        }
        fx.finish().await;
    });
}

// ---------------------------------------------------------------------------------------------
// Hooks and security

#[test]
fn hooks_run_in_order() {
    rt().block_on(async {
        let fx = Fx::new("hooks").await;
        let dir = fx.dir("hooks");
        let log = dir.join("log");
        let host_log = log.display().to_string();
        let append = |word: &str| format!("echo {word} >> {host_log}");
        let mut hooks = oci::Hooks::new();
        let mut pre = hook(
            "/bin/sh",
            &["sh", "-c", &format!("echo \"prestart $WHO\" >> {host_log}")],
        );
        pre.Env = strs(&["WHO=env-ok"]);
        hooks.Prestart = vec![pre];
        hooks.CreateRuntime = vec![hook(
            "/bin/sh",
            &[
                "sh",
                "-c",
                &format!("s=$(cat); echo \"createRuntime $s\" >> {host_log}"),
            ],
        )];
        hooks.CreateContainer = vec![hook("/bin/sh", &["sh", "-c", &append("createContainer")])];
        // Runs inside the container, after pivot_root: container paths.
        hooks.StartContainer = vec![hook(
            "/bin/sh",
            &["sh", "-c", "echo startContainer >> /hooks/log"],
        )];
        hooks.Poststart = vec![hook("/bin/sh", &["sh", "-c", &append("poststart")])];
        hooks.Poststop = vec![hook("/bin/sh", &["sh", "-c", &append("poststop")])];
        let mut spec = fx.spec("h1", sh("echo main >> /hooks/log"));
        spec.Mounts.push(bind(&dir, "/hooks", false));
        spec.Hooks = MessageField::some(hooks);

        let lines = || -> Vec<String> {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect()
        };
        let words = || -> Vec<String> {
            lines()
                .iter()
                .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
                .collect()
        };
        fx.create("h1", spec).await;
        assert_eq!(words(), ["prestart", "createRuntime", "createContainer"]);
        let l = lines();
        assert_eq!(l[0], "prestart env-ok");
        assert!(
            l[1].contains("\"id\":\"h1\"") && l[1].contains("\"status\":\"created\""),
            "state on the hook's stdin: {}",
            l[1]
        );
        fx.start("h1").await;
        assert_eq!(fx.wait("h1", "").await, 0);
        let w = words();
        assert_eq!(w.len(), 6, "{w:?}");
        let pos = |x: &str| w.iter().position(|y| y == x).unwrap_or(usize::MAX);
        assert!(pos("startContainer") < pos("main"), "{w:?}");
        assert!(pos("poststart") < 6, "{w:?}");
        fx.remove("h1").await;
        let w = words();
        assert_eq!(w.last().map(String::as_str), Some("poststop"), "{w:?}");
        assert_eq!(w.iter().filter(|x| *x == "poststart").count(), 1, "{w:?}");
        assert_eq!(w.len(), 7, "{w:?}");
        fx.finish().await;
    });
}

#[test]
fn seccomp_denies_with_its_errno_and_kills() {
    rt().block_on(async {
        let fx = Fx::new("seccomp").await;
        let mut sc = oci::LinuxSeccomp::new();
        sc.DefaultAction = "SCMP_ACT_ALLOW".into();
        let mut mkdir = oci::LinuxSyscall::new();
        mkdir.Names = strs(&["mkdir", "mkdirat"]);
        mkdir.Action = "SCMP_ACT_ERRNO".into();
        mkdir.set_errnoret(libc::EXDEV as u32);
        let mut chmod = oci::LinuxSyscall::new();
        chmod.Names = strs(&["chmod", "fchmod", "fchmodat", "fchmodat2"]);
        chmod.Action = "SCMP_ACT_ERRNO".into(); // no errnoRet: EPERM
        let mut sync = oci::LinuxSyscall::new();
        sync.Names = strs(&["sync"]);
        sync.Action = "SCMP_ACT_KILL_PROCESS".into();
        sc.Syscalls = vec![mkdir, chmod, sync];
        let mut spec = fx.spec(
            "s1",
            sh("mkdir /tmp/x; chmod 700 /tmp; echo survived; exec sleep 1000"),
        );
        spec.Linux.as_mut().unwrap().Seccomp = MessageField::some(sc);
        fx.run("s1", spec).await;
        fx.read_until("s1", "", "survived").await;
        let (code, _, err) = fx
            .exec_to_end("s1", "mk", process(&["mkdir", "/tmp/y"]))
            .await;
        assert_eq!(code, 1);
        assert!(err.contains("Invalid cross-device link"), "{err}");
        let (code, _, err) = fx
            .exec_to_end("s1", "chmod", process(&["chmod", "700", "/tmp"]))
            .await;
        assert_eq!(code, 1);
        assert!(err.contains("Operation not permitted"), "{err}");
        let (code, _, _) = fx.exec_to_end("s1", "sync", process(&["sync"])).await;
        assert_eq!(code, 128 + libc::SIGSYS);
        // Allowed syscalls work.
        let (code, out, _) = fx
            .exec_to_end("s1", "ok", sh("echo fine > /tmp/f; cat /tmp/f"))
            .await;
        assert_eq!((code, out.as_str()), (0, "fine\n"));
        fx.remove("s1").await;
        fx.finish().await;
    });
}

#[test]
fn read_only_rootfs_refuses_writes() {
    rt().block_on(async {
        let fx = Fx::new("ro").await;
        let script =
            "touch /newfile || echo refused; grep ' / ' /proc/mounts; touch /tmp/ok && echo tmp-ok";
        let (code, out, err) = fx.run_to_end("r1", fx.spec("r1", sh(script))).await;
        assert_eq!(code, 0);
        assert!(out.contains("refused") && out.contains("tmp-ok"), "{out}");
        assert!(err.contains("Read-only file system"), "{err}");
        let root_line = out.lines().find(|l| l.contains(" / ")).unwrap();
        assert!(
            root_line.contains(" ro,") || root_line.contains(" ro "),
            "{root_line}"
        );
        assert!(!fx.rootfs.join("newfile").exists());
        fx.finish().await;
    });
}

#[test]
fn user_groups_umask_cwd_env_rlimits_and_capabilities() {
    rt().block_on(async {
        let fx = Fx::new("ident").await;
        let script = "id; pwd; umask; echo FOO=$FOO; echo HOME=$HOME; ulimit -n; ulimit -Hn; \
                      grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs)' /proc/self/status; \
                      cat /proc/self/oom_score_adj; hostname";
        let mut p = sh(script);
        p.Env = strs(&[PATH_ENV, "FOO=bar baz"]);
        p.Cwd = "/tmp".into();
        let mut user = oci::User::new();
        user.UID = 1000;
        user.GID = 1001;
        user.AdditionalGids = vec![10, 20];
        p.User = MessageField::some(user);
        let mut rl = oci::POSIXRlimit::new();
        rl.Type = "RLIMIT_NOFILE".into();
        rl.Soft = 1234;
        rl.Hard = 2345;
        p.Rlimits = vec![rl];
        let mut c = oci::LinuxCapabilities::new();
        c.Bounding = strs(&["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
        c.Permitted = strs(&["CAP_KILL", "CAP_NET_BIND_SERVICE"]);
        c.Effective = strs(&["CAP_NET_BIND_SERVICE"]);
        c.Inheritable = strs(&["CAP_NET_BIND_SERVICE"]);
        c.Ambient = strs(&["CAP_NET_BIND_SERVICE"]);
        p.Capabilities = MessageField::some(c);
        p.OOMScoreAdj = 123;
        let mut spec = fx.spec("u1", p);
        spec.Hostname = "ident-host".into();
        let (code, out, err) = fx.run_to_end("u1", spec).await;
        assert_eq!(code, 0, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        let id = lines[0];
        assert!(id.contains("uid=1000") && id.contains("gid=1001"), "{id}");
        assert!(
            id.contains("groups=") && id.contains("10") && id.contains("20"),
            "{id}"
        );
        assert_eq!(
            &lines[1..7],
            ["/tmp", "0022", "FOO=bar baz", "HOME=/", "1234", "2345"]
        );
        let field = |k: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(k))
                .map(str::trim)
                .unwrap_or_else(|| panic!("no {k} in {out}"))
        };
        // CAP_CHOWN = 0, CAP_KILL = 5, CAP_NET_BIND_SERVICE = 10.
        assert_eq!(field("CapBnd:"), "0000000000000421");
        assert_eq!(field("CapInh:"), "0000000000000400");
        assert_eq!(field("CapAmb:"), "0000000000000400");
        assert_eq!(field("CapPrm:"), "0000000000000400");
        assert_eq!(field("CapEff:"), "0000000000000400");
        assert_eq!(field("NoNewPrivs:"), "1");
        assert_eq!(lines[lines.len() - 2], "123");
        assert_eq!(lines[lines.len() - 1], "ident-host");

        // Root with a reduced bounding set; an exec as another user.
        let mut p = sh("grep -E '^Cap(Bnd|Eff)' /proc/self/status; exec sleep 1000");
        p.Capabilities = MessageField::some(caps(&["CAP_KILL", "CAP_NET_BIND_SERVICE"]));
        fx.run("u2", fx.spec("u2", p)).await;
        let out = fx.read_until("u2", "", "CapEff").await;
        assert!(out.contains("CapBnd:\t0000000000000420"), "{out}");
        assert!(out.contains("CapEff:\t0000000000000420"), "{out}");
        let mut p = sh("id -u; id -g");
        let mut user = oci::User::new();
        user.UID = 65534;
        user.GID = 65534;
        p.User = MessageField::some(user);
        let (code, out, _) = fx.exec_to_end("u2", "nobody", p).await;
        assert_eq!((code, out.as_str()), (0, "65534\n65534\n"));
        fx.remove("u2").await;
        fx.finish().await;
    });
}

#[test]
fn diagnostic_data_returns_the_termination_message() {
    rt().block_on(async {
        let fx = Fx::new("diag").await;
        // The message file must be below the shared directory.
        let shared = fx.agent.run_dir.join("shared/containers");
        std::fs::create_dir_all(&shared).unwrap();
        let term = shared.canonicalize().unwrap().join("d1-termination-log");
        std::fs::write(&term, "").unwrap();
        let mut spec = fx.spec("d1", sh("echo bye > /dev/termination-log"));
        spec.Mounts.push(mount(
            "/dev/termination-log",
            "bind",
            &term.display().to_string(),
            &["bind"],
        ));
        spec.Annotations.insert(
            "io.kubernetes.container.terminationMessagePath".into(),
            "/dev/termination-log".into(),
        );
        fx.run("d1", spec).await;
        assert_eq!(fx.wait("d1", "").await, 0);
        let mut req = agent::GetDiagnosticDataRequest::new();
        req.container_id = "d1".into();
        req.log_type = "termination_log".into();
        let resp = fx.c.get_diagnostic_data(ctx(), &req).await.unwrap();
        assert_eq!(resp.data, "bye\n");
        req.log_type = "kernel".into();
        assert_code(
            fx.c.get_diagnostic_data(ctx(), &req).await,
            ttrpc::Code::INVALID_ARGUMENT,
        );
        fx.remove("d1").await;
        std::fs::remove_dir_all(fx.agent.run_dir.join("shared")).unwrap();
        fx.finish().await;
    });
}

// ---------------------------------------------------------------------------------------------
// Bad input and clean-up

#[test]
fn duplicate_id_is_rejected_before_anything_is_touched() {
    rt().block_on(async {
        let fx = Fx::new("dup").await;
        fx.run("d1", fx.spec("d1", process(&["sleep", "1000"])))
            .await;
        let pid = fx.cg_pids("d1");
        // Another spec with the same id, even with another cgroup path.
        let mut other = fx.spec("d1", process(&["true"]));
        other.Linux.as_mut().unwrap().CgroupsPath = fx.cgroup("d1-other");
        assert_code(
            fx.try_create("d1", other).await,
            ttrpc::Code::ALREADY_EXISTS,
        );
        assert!(!fx.cgroup_exists("d1-other"));
        assert_eq!(fx.cg_pids("d1"), pid, "the existing container was touched");
        assert!(fx.agent.run_dir.join("d1/exec.fifo").exists());
        let (code, out, _) = fx.exec_to_end("d1", "e", process(&["echo", "ok"])).await;
        assert_eq!((code, out.as_str()), (0, "ok\n"));

        // Two concurrent creates of one new id: exactly one wins.
        let (a, b) = tokio::join!(
            fx.try_create("d2", fx.spec("d2", process(&["sleep", "1000"]))),
            fx.try_create("d2", fx.spec("d2", process(&["sleep", "1000"])))
        );
        let oks = [a.is_ok(), b.is_ok()].iter().filter(|x| **x).count();
        assert_eq!(oks, 1, "{a:?} {b:?}");
        let err = if a.is_err() { a } else { b };
        assert_code(err, ttrpc::Code::ALREADY_EXISTS);

        // ExecProcess with an exec id in use (the init's is the container id).
        assert_code(
            fx.try_exec("d1", "d1", process(&["true"])).await,
            ttrpc::Code::ALREADY_EXISTS,
        );
        fx.exec("d1", "twice", process(&["sleep", "1000"])).await;
        assert_code(
            fx.try_exec("d1", "twice", process(&["true"])).await,
            ttrpc::Code::ALREADY_EXISTS,
        );
        fx.remove("d1").await;
        fx.remove("d2").await;
        fx.finish().await;
    });
}

#[test]
fn invalid_ids_and_specs_are_rejected_and_leave_nothing() {
    rt().block_on(async {
        let fx = Fx::new("inval").await;
        for bad in ["", "a", "-ab", "../etc", "a/b", "a b", ".hidden"] {
            let msg = assert_code(
                fx.try_create(bad, fx.spec("idcheck", process(&["true"])))
                    .await,
                ttrpc::Code::INVALID_ARGUMENT,
            );
            assert!(msg.contains("id"), "{msg}");
        }
        assert!(!fx.cgroup_exists("idcheck"));

        let dir = fx.dir("inval");
        let link = dir.join("rootfs-link");
        std::os::unix::fs::symlink(&fx.rootfs, &link).unwrap();
        type Edit = Box<dyn Fn(&mut oci::Spec)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("no root", Box::new(|s| s.Root = MessageField::none())),
            ("no process", Box::new(|s| s.Process = MessageField::none())),
            (
                "no args",
                Box::new(|s| s.Process.as_mut().unwrap().Args.clear()),
            ),
            (
                "relative root",
                Box::new(|s| s.Root.as_mut().unwrap().Path = "rootfs".into()),
            ),
            (
                "missing root",
                Box::new(|s| s.Root.as_mut().unwrap().Path = "/nonexistent/rootfs".into()),
            ),
            (
                "root through a symlink",
                Box::new(move |s| s.Root.as_mut().unwrap().Path = link.display().to_string()),
            ),
            (
                "mount destination with ..",
                Box::new(|s| s.Mounts.push(mount("/../../etc", "tmpfs", "tmpfs", &[]))),
            ),
            (
                "bind source missing",
                Box::new(|s| {
                    s.Mounts
                        .push(mount("/x", "bind", "/nonexistent", &["bind"]))
                }),
            ),
            (
                "bind into /proc",
                Box::new(|s| {
                    s.Mounts
                        .push(mount("/proc/sys/kernel", "bind", "/tmp", &["bind"]))
                }),
            ),
            (
                "unknown capability",
                Box::new(|s| {
                    s.Process.as_mut().unwrap().Capabilities =
                        MessageField::some(caps(&["CAP_NOPE"]))
                }),
            ),
            (
                "unknown rlimit",
                Box::new(|s| {
                    let mut rl = oci::POSIXRlimit::new();
                    rl.Type = "RLIMIT_NOPE".into();
                    s.Process.as_mut().unwrap().Rlimits = vec![rl];
                }),
            ),
            (
                "unknown namespace",
                Box::new(|s| {
                    s.Linux
                        .as_mut()
                        .unwrap()
                        .Namespaces
                        .push(namespace("bogus"))
                }),
            ),
            (
                "no mount namespace",
                Box::new(|s| {
                    s.Linux.as_mut().unwrap().Namespaces = vec![namespace("uts"), namespace("ipc")]
                }),
            ),
            (
                "hostname without uts namespace",
                Box::new(|s| {
                    s.Linux.as_mut().unwrap().Namespaces = vec![namespace("mount")];
                }),
            ),
            (
                "namespace path missing",
                Box::new(|s| {
                    let mut n = namespace("network");
                    n.Path = "/proc/no/such/ns".into();
                    s.Linux.as_mut().unwrap().Namespaces.push(n);
                }),
            ),
            (
                "forbidden sysctl",
                Box::new(|s| {
                    s.Linux
                        .as_mut()
                        .unwrap()
                        .Sysctl
                        .insert("kernel.pid_max".into(), "100".into());
                }),
            ),
            (
                "unknown seccomp action",
                Box::new(|s| {
                    let mut sc = oci::LinuxSeccomp::new();
                    sc.DefaultAction = "SCMP_ACT_NOPE".into();
                    s.Linux.as_mut().unwrap().Seccomp = MessageField::some(sc);
                }),
            ),
            (
                "unknown device type",
                Box::new(|s| {
                    let mut d = oci::LinuxDevice::new();
                    d.Path = "/dev/x".into();
                    d.Type = "x".into();
                    s.Linux.as_mut().unwrap().Devices = vec![d];
                }),
            ),
            (
                "device outside /dev",
                Box::new(|s| {
                    let mut d = oci::LinuxDevice::new();
                    d.Path = "/etc/passwd".into();
                    d.Type = "c".into();
                    d.Major = 1;
                    d.Minor = 3;
                    s.Linux.as_mut().unwrap().Devices = vec![d];
                }),
            ),
            (
                "relative masked path",
                Box::new(|s| {
                    s.Linux
                        .as_mut()
                        .unwrap()
                        .MaskedPaths
                        .push("proc/kcore".into())
                }),
            ),
            (
                "cgroup path escaping the hierarchy",
                Box::new(|s| s.Linux.as_mut().unwrap().CgroupsPath = "../../escape".into()),
            ),
            (
                "relative hook path",
                Box::new(|s| {
                    let mut h = oci::Hooks::new();
                    h.Prestart = vec![hook("true", &["true"])];
                    s.Hooks = MessageField::some(h);
                }),
            ),
        ];
        for (i, (what, edit)) in cases.iter().enumerate() {
            let cid = format!("bad{i}");
            let mut spec = fx.spec(&cid, process(&["true"]));
            edit(&mut spec);
            let (code, msg) = status_of(fx.try_create(&cid, spec).await);
            assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{what}: {msg}");
            fx.assert_no_trace(&cid);
        }
        assert!(!Path::new("/sys/fs/cgroup/escape").exists());
        // No OCI spec at all.
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = "nooci".into();
        assert_code(fx.create_req(req).await, ttrpc::Code::INVALID_ARGUMENT);
        fx.assert_no_trace("nooci");
        fx.finish().await;
    });
}

#[test]
fn failed_create_rolls_back_everything() {
    rt().block_on(async {
        let fx = Fx::new("rollback").await;
        let failing_hook = |args: &[&str], timeout: i64| {
            let mut h = oci::Hooks::new();
            let mut hk = hook("/bin/sh", args);
            hk.Timeout = timeout;
            h.Prestart = vec![hk];
            MessageField::some(h)
        };
        let cases: Vec<(&str, oci::Spec)> = vec![
            (
                "missing binary",
                fx.spec("f1", process(&["/bin/no-such-binary"])),
            ),
            ("failing prestart hook", {
                let mut s = fx.spec("f1", process(&["true"]));
                s.Hooks = failing_hook(&["sh", "-c", "echo hook-broke >&2; exit 1"], 0);
                s
            }),
            ("prestart hook past its timeout", {
                let mut s = fx.spec("f1", process(&["true"]));
                s.Hooks = failing_hook(&["sh", "-c", "exec sleep 60"], 1);
                s
            }),
            ("unknown filesystem type", {
                let mut s = fx.spec("f1", process(&["true"]));
                s.Mounts.push(mount("/mnt", "no-such-fs", "none", &[]));
                s
            }),
            ("working directory that is a file", {
                let mut p = process(&["true"]);
                p.Cwd = "/bin/busybox".into();
                fx.spec("f1", p)
            }),
        ];
        for (what, spec) in cases {
            let t0 = Instant::now();
            let (code, msg) = status_of(fx.try_create("f1", spec).await);
            assert_ne!(code, ttrpc::Code::OK);
            assert_ne!(code, ttrpc::Code::DEADLINE_EXCEEDED, "{what}: {msg}");
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{what} took too long"
            );
            match what {
                "missing binary" => assert!(msg.contains("no-such-binary"), "{msg}"),
                "failing prestart hook" => assert!(msg.contains("hook-broke"), "{msg}"),
                _ => {}
            }
            fx.assert_no_trace("f1");
            fx.assert_no_children().await;
            // Start, wait and friends know nothing of it.
            assert_code(fx.try_start("f1").await, ttrpc::Code::NOT_FOUND);
        }
        // The id is free again.
        let (code, out, _) = fx.run_to_end("f1", fx.spec("f1", sh("echo fine"))).await;
        assert_eq!((code, out.as_str()), (0, "fine\n"));
        fx.finish().await;
    });
}

#[test]
fn unknown_containers_and_processes_get_the_documented_codes() {
    rt().block_on(async {
        use ttrpc::Code;
        let fx = Fx::new("codes").await;
        // StartContainer, RemoveContainer, ExecProcess: NOT_FOUND.
        assert_code(fx.try_start("nope").await, Code::NOT_FOUND);
        assert_code(fx.try_remove("nope", 0).await, Code::NOT_FOUND);
        assert_code(
            fx.try_exec("nope", "e", process(&["true"])).await,
            Code::NOT_FOUND,
        );
        // The process family, and Pause/Resume/Update/Stats: INVALID_ARGUMENT (as upstream).
        assert_code(fx.try_wait("nope", "").await, Code::INVALID_ARGUMENT);
        assert_code(fx.try_signal("nope", "", 15).await, Code::INVALID_ARGUMENT);
        assert_code(fx.try_signal("nope", "", 9).await, Code::INVALID_ARGUMENT);
        assert_code(
            read(&fx.c, "nope", "", false, 10).await,
            Code::INVALID_ARGUMENT,
        );
        assert_code(
            read(&fx.c, "nope", "", true, 10).await,
            Code::INVALID_ARGUMENT,
        );
        assert_code(fx.try_write("nope", "", b"x").await, Code::INVALID_ARGUMENT);
        let mut req = agent::StatsContainerRequest::new();
        req.container_id = "nope".into();
        assert_code(
            fx.c.stats_container(ctx(), &req).await,
            Code::INVALID_ARGUMENT,
        );
        let mut req = agent::PauseContainerRequest::new();
        req.container_id = "nope".into();
        assert_code(
            fx.c.pause_container(ctx(), &req).await,
            Code::INVALID_ARGUMENT,
        );
        let mut req = agent::ResumeContainerRequest::new();
        req.container_id = "nope".into();
        assert_code(
            fx.c.resume_container(ctx(), &req).await,
            Code::INVALID_ARGUMENT,
        );
        let mut req = agent::UpdateContainerRequest::new();
        req.container_id = "nope".into();
        assert_code(
            fx.c.update_container(ctx(), &req).await,
            Code::INVALID_ARGUMENT,
        );

        // A known container, an unknown process: NOT_FOUND everywhere.
        fx.run("k1", fx.spec("k1", process(&["sleep", "1000"])))
            .await;
        assert_code(fx.try_wait("k1", "ghost").await, Code::NOT_FOUND);
        assert_code(fx.try_signal("k1", "ghost", 15).await, Code::NOT_FOUND);
        assert_code(read(&fx.c, "k1", "ghost", false, 10).await, Code::NOT_FOUND);
        assert_code(read(&fx.c, "k1", "ghost", true, 10).await, Code::NOT_FOUND);
        assert_code(fx.try_write("k1", "ghost", b"x").await, Code::NOT_FOUND);
        let mut req = agent::CloseStdinRequest::new();
        req.container_id = "k1".into();
        req.exec_id = "ghost".into();
        assert_code(fx.c.close_stdin(ctx(), &req).await, Code::NOT_FOUND);
        let mut req = agent::TtyWinResizeRequest::new();
        req.container_id = "k1".into();
        req.exec_id = "ghost".into();
        assert_code(fx.c.tty_win_resize(ctx(), &req).await, Code::NOT_FOUND);
        // A signal number that does not exist.
        assert_code(fx.try_signal("k1", "", 1000).await, Code::INVALID_ARGUMENT);
        // An exec without a process.
        let mut req = agent::ExecProcessRequest::new();
        req.container_id = "k1".into();
        req.exec_id = "noproc".into();
        assert_code(fx.c.exec_process(ctx(), &req).await, Code::INVALID_ARGUMENT);
        // An exec whose binary is missing fails the call.
        let msg = assert_code(
            fx.try_exec("k1", "missing", process(&["no-such-cmd"]))
                .await,
            Code::INTERNAL,
        );
        assert!(msg.contains("no-such-cmd"), "{msg}");
        fx.remove("k1").await;
        // After removal the container is unknown.
        assert_code(fx.try_wait("k1", "").await, Code::INVALID_ARGUMENT);
        fx.finish().await;
    });
}

#[test]
fn remove_with_timeout_kills_and_reaps_everything() {
    rt().block_on(async {
        let fx = Fx::new("remove").await;
        let script = "sleep 1000 & sleep 1000 & echo ready; wait";
        fx.run("r1", fx.spec("r1", sh(script))).await;
        fx.read_until("r1", "", "ready").await;
        // An exec leaves daemons behind in the container.
        let (code, out, _) = fx
            .exec_to_end(
                "r1",
                "daemons",
                sh("sleep 1000 >/dev/null 2>&1 & sleep 1000 >/dev/null 2>&1 & echo started"),
            )
            .await;
        assert_eq!((code, out.as_str()), (0, "started\n"));
        fx.exec("r1", "fg", process(&["sleep", "1000"])).await;
        eventually(10, "six processes in the container", || {
            fx.cg_pids("r1").len() == 6
        })
        .await;
        let pids = fx.cg_pids("r1");
        fx.try_remove("r1", 10).await.unwrap();
        fx.assert_no_trace("r1");
        for p in pids {
            assert!(
                !Path::new(&format!("/proc/{p}")).exists(),
                "process {p} survived RemoveContainer"
            );
        }
        assert_code(fx.try_wait("r1", "fg").await, ttrpc::Code::INVALID_ARGUMENT);
        fx.finish().await;
    });
}

#[test]
fn hostile_mount_paths_stay_inside_the_rootfs() {
    rt().block_on(async {
        let fx = Fx::new("hostile").await;
        // A private rootfs (writable) with symlinks that point out of it.
        let root = fx.dir("hostile-root");
        let host_target = fx.dir("host-target");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        for d in ["proc", "dev", "sys", "tmp"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy(fx.rootfs.join("bin/busybox"), root.join("bin/busybox")).unwrap();
        for a in ["sh", "cat", "echo", "ls"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
        }
        std::os::unix::fs::symlink(&host_target, root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../../../../..", root.join("up")).unwrap();
        let rel_target = host_target.strip_prefix("/").unwrap().display().to_string();

        let mut spec = fx.spec(
            "h1",
            sh(&format!(
                "echo a > /abs/file && echo b > /up/{rel_target}/x/file && cat /abs/file /up/{rel_target}/x/file"
            )),
        );
        spec.Root.as_mut().unwrap().Path = root.display().to_string();
        spec.Root.as_mut().unwrap().Readonly = false;
        spec.Mounts.push(mount("/abs", "tmpfs", "tmpfs", &[]));
        spec.Mounts.push(mount(
            &format!("/up/{rel_target}/x"),
            "tmpfs",
            "tmpfs",
            &[],
        ));
        let (code, out, err) = fx.run_to_end("h1", spec).await;
        assert_eq!((code, out.as_str()), (0, "a\nb\n"), "{err}");
        // Nothing reached the host directory the symlinks point to.
        let entries: Vec<_> = std::fs::read_dir(&host_target).unwrap().flatten().collect();
        assert!(entries.is_empty(), "the host target was written: {entries:?}");
        assert!(mounts_below(&host_target).is_empty());
        fx.finish().await;
    });
}

#[test]
fn sandbox_namespaces_and_destroy_sandbox_tear_everything_down() {
    rt().block_on(async {
        let mut fx = Fx::new("sandbox").await;
        let mut req = agent::CreateSandboxRequest::new();
        req.sandbox_id = "sb".into();
        req.hostname = "sandbox-host".into();
        fx.c.create_sandbox(ctx(), &req).await.unwrap();
        // Containers join the sandbox's IPC and UTS namespaces.
        fx.run("c1", fx.spec("c1", process(&["sleep", "1000"])))
            .await;
        fx.run("c2", fx.spec("c2", sh("sleep 1000 & exec sleep 1000")))
            .await;
        fx.exec("c2", "e", process(&["sleep", "1000"])).await;
        let (_, out, _) = fx.exec_to_end("c1", "h", process(&["hostname"])).await;
        assert_eq!(out, "sandbox-host\n");
        eventually(10, "three processes in c2", || fx.cg_pids("c2").len() == 3).await;
        let (p1, p2) = (fx.cg_pids("c1"), fx.cg_pids("c2"));
        for ns in ["ipc", "uts"] {
            assert_eq!(ns_inode(p1[0], ns), ns_inode(p2[0], ns), "{ns}");
            assert_ne!(
                ns_inode(p1[0], ns),
                ns_inode(std::process::id() as i32, ns),
                "{ns}"
            );
        }
        fx.c.destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
            .await
            .unwrap();
        assert!(
            fx.agent.wait_exit(Duration::from_secs(20)).is_some(),
            "the agent did not exit after DestroySandbox"
        );
        for p in p1.iter().chain(&p2) {
            assert!(
                !Path::new(&format!("/proc/{p}")).exists(),
                "process {p} survived"
            );
        }
        for cid in ["c1", "c2"] {
            fx.assert_no_trace(cid);
        }
        assert!(mounts_below(fx.agent.dir.path()).is_empty());
    });
}

/// Runs last in spirit: many containers through one agent, then the agent must hold exactly the
/// descriptors, mounts and children it had before.
#[test]
fn agent_leaks_no_fds_mounts_or_zombies() {
    rt().block_on(async {
        let fx = Fx::new("leaks").await;
        let round = |n: usize| {
            let fx = &fx;
            async move {
                let cid = format!("l{n}");
                fx.run(&cid, fx.spec(&cid, sh("echo up; exec sleep 1000")))
                    .await;
                fx.read_until(&cid, "", "up").await;
                let (code, out, _) = fx.exec_to_end(&cid, "e", sh("echo x; echo y >&2")).await;
                assert_eq!((code, out.as_str()), (0, "x\n"));
                let mut p = process(&["sh"]);
                p.Terminal = true;
                fx.exec(&cid, "tty", p).await;
                fx.try_write(&cid, "tty", b"exit 3\n").await.unwrap();
                let _ = fx.read_all(&cid, "tty", false).await;
                assert_eq!(fx.wait(&cid, "tty").await, 3);
                fx.exec(&cid, "left", process(&["sleep", "1000"])).await;
                let _ = fx
                    .try_create("bad", fx.spec("bad", process(&["/nope"])))
                    .await;
                fx.signal(&cid, "", 9).await;
                assert_eq!(fx.wait(&cid, "").await, 137);
                fx.remove(&cid).await;
            }
        };
        round(0).await;
        fx.assert_no_children().await;
        let pid = fx.agent.pid();
        let before = fd_targets(pid);
        for n in 1..6 {
            round(n).await;
        }
        fx.assert_no_children().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while fd_count(pid) > before.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let after = fd_targets(pid);
        let (b, a): (HashSet<_>, HashSet<_>) = (before.iter().collect(), after.iter().collect());
        // Fewer is fine: a removed container's pinned namespaces are closed off the
        // RemoveContainer path, so the first figure may still count some.
        assert!(
            after.len() <= before.len() && a.difference(&b).next().is_none(),
            "fd leak; new: {:?}, gone: {:?}",
            a.difference(&b).collect::<Vec<_>>(),
            b.difference(&a).collect::<Vec<_>>()
        );
        assert!(mounts_below(fx.agent.dir.path()).is_empty());
        fx.finish().await;
    });
}
