//! Helpers shared by the end-to-end tests: start the real `kata-agent` binary on a private unix
//! socket with all its state in a temporary directory, talk to it through ttRPC or through the real
//! `kata-agent-ctl`, and make sure nothing it started outlives the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use protocols::agent_ttrpc::AgentServiceClient;
use protocols::health_ttrpc::HealthClient;

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate sits in the workspace")
        .to_path_buf()
}

/// The directory cargo puts binaries of this profile in.
fn target_bin_dir() -> PathBuf {
    // The test executable lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target profile directory")
        .to_path_buf()
}

/// Path of a workspace binary, building the agent and the control tool once if needed.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "kata-agent", "-p", "kata-agent-ctl"])
            .args(["--features", "kata-agent/agent-policy"])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "building kata-agent and kata-agent-ctl failed"
        );
    });
    let path = target_bin_dir().join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// The busybox rootfs made by `scripts/mkrootfs.sh` (built on first use).
pub fn rootfs() -> PathBuf {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS
        .get_or_init(|| {
            if let Ok(p) = std::env::var("KATA_TEST_ROOTFS") {
                return PathBuf::from(p);
            }
            let dest = workspace_root().join("build/rootfs");
            let status = Command::new(workspace_root().join("scripts/mkrootfs.sh"))
                .arg(&dest)
                .status()
                .expect("run scripts/mkrootfs.sh");
            assert!(status.success(), "scripts/mkrootfs.sh failed");
            dest
        })
        .clone()
}

/// A host directory to share with a VM: `rootfs/` in it is a copy of the busybox rootfs.
pub fn vm_share() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("kata-vm-share-")
        .tempdir()
        .expect("create the share directory");
    let status = Command::new("cp")
        .arg("-a")
        .arg(rootfs())
        .arg(dir.path().join("rootfs"))
        .status()
        .expect("run cp");
    assert!(status.success(), "cannot copy the busybox rootfs");
    dir
}

/// A deterministic byte sequence covering every byte value (xorshift), for checking that streams
/// deliver exactly what was written.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 4096 < 256 {
                (i % 4096) as u8
            } else {
                x as u8
            }
        })
        .collect()
}

/// A running agent with its own socket and state directory.
pub struct TestAgent {
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub run_dir: PathBuf,
    pub resolv_conf: PathBuf,
    pub stderr_log: PathBuf,
    child: Option<Child>,
}

/// Options of [`TestAgent::start_with`].
#[derive(Default)]
pub struct AgentOptions<'a> {
    /// Extra environment variables.
    pub env: Vec<(&'a str, String)>,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Kernel command line seen by the agent (default: empty).
    pub cmdline: Option<String>,
    /// Use an abstract unix socket instead of a path.
    pub abstract_socket: bool,
    /// Start the agent inside this network namespace (a bind-mounted namespace file such as
    /// `/run/netns/NAME`, see [`NetNs`]).
    pub netns: Option<PathBuf>,
    /// Start the agent in a mount namespace of its own (a slave of the test's) with a fresh
    /// devpts instance on `/dev/pts`, so that every pty the agent itself opens shows up there.
    pub private_devpts: bool,
}

impl TestAgent {
    pub fn start() -> TestAgent {
        Self::start_with(AgentOptions::default())
    }

    pub fn start_with(opts: AgentOptions<'_>) -> TestAgent {
        let dir = tempfile::Builder::new()
            .prefix("kata-e2e-")
            .tempdir()
            .expect("temp dir");
        let addr = if opts.abstract_socket {
            format!(
                "unix://@kata-e2e-{}-{}",
                std::process::id(),
                dir.path().file_name().unwrap().to_string_lossy()
            )
        } else {
            format!("unix://{}", dir.path().join("agent.sock").display())
        };
        let run_dir = dir.path().join("run");
        let resolv_conf = dir.path().join("resolv.conf");
        std::fs::write(&resolv_conf, "nameserver 127.0.0.53\n").unwrap();
        let cmdline = dir.path().join("cmdline");
        std::fs::write(&cmdline, opts.cmdline.as_deref().unwrap_or("")).unwrap();
        let stderr_log = dir.path().join("agent.log");
        let mut cmd = Command::new(binary("kata-agent"));
        cmd.args(&opts.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KATA_AGENT_SERVER_ADDR", &addr)
            .env("KATA_AGENT_RUN_DIR", &run_dir)
            .env("KATA_AGENT_SANDBOX_NS_DIR", dir.path().join("sandbox-ns"))
            .env("KATA_AGENT_RESOLV_CONF", &resolv_conf)
            .env("KATA_AGENT_CMDLINE", &cmdline)
            .env("KATA_AGENT_LOG_LEVEL", "debug")
            .env("KATA_AGENT_POLICY_LOG", dir.path().join("policy.jsonl"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_log).unwrap());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        // Kept open until the spawn is done; the child joins the namespace before exec.
        let _netns_file = opts.netns.as_ref().map(|ns| {
            let file = std::fs::File::open(ns)
                .unwrap_or_else(|e| panic!("open network namespace {}: {e}", ns.display()));
            let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
            // SAFETY: setns(2) is async-signal-safe; fd stays open until after the spawn.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            file
        });
        if opts.private_devpts {
            // SAFETY: only unshare(2) and mount(2) with static C strings: async-signal-safe.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                    let check = |rc: libc::c_int| {
                        if rc != 0 {
                            Err(std::io::Error::last_os_error())
                        } else {
                            Ok(())
                        }
                    };
                    check(libc::unshare(libc::CLONE_NEWNS))?;
                    check(libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_SLAVE,
                        std::ptr::null(),
                    ))?;
                    check(libc::mount(
                        c"devpts".as_ptr(),
                        c"/dev/pts".as_ptr(),
                        c"devpts".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NOEXEC,
                        c"newinstance,ptmxmode=0666,mode=0620".as_ptr().cast(),
                    ))
                });
            }
        }
        let child = cmd.spawn().expect("start kata-agent");
        let mut agent = TestAgent {
            dir,
            addr,
            run_dir,
            resolv_conf,
            stderr_log,
            child: Some(child),
        };
        agent.wait_ready();
        agent
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "kata-agent exited during start-up ({status}):\n{}",
                    self.log()
                );
            }
            if self.socket_accepts() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kata-agent did not listen within 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn socket_accepts(&self) -> bool {
        let path = self.addr.trim_start_matches("unix://");
        if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(name) else {
                return false;
            };
            return std::os::unix::net::UnixStream::connect_addr(&addr).is_ok();
        }
        std::os::unix::net::UnixStream::connect(path).is_ok()
    }

    /// What the agent wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// A fresh ttRPC connection.
    pub async fn connect(&self) -> ttrpc::r#async::Client {
        ttrpc::r#async::Client::connect(&self.addr)
            .await
            .expect("connect to the agent")
    }

    /// Clients of both services over one connection.
    pub async fn clients(&self) -> (AgentServiceClient, HealthClient) {
        let c = self.connect().await;
        (AgentServiceClient::new(c.clone()), HealthClient::new(c))
    }

    /// Runs `kata-agent-ctl connect --server-address <addr> <args...>`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(binary("kata-agent-ctl"))
            .args(["connect", "--server-address", &self.addr])
            .args(args)
            .output()
            .expect("run kata-agent-ctl")
    }

    /// Sends `signal` and waits (at most 20 s) for the agent to exit.
    pub fn stop_with(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent running");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        wait_timeout(&mut child, Duration::from_secs(20)).unwrap_or_else(|| {
            let _ = child.kill();
            panic!(
                "kata-agent did not exit after signal {signal}:\n{}",
                self.log()
            );
        })
    }

    /// Waits for the agent to exit by itself (after DestroySandbox).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let status = wait_timeout(self.child.as_mut().expect("agent running"), timeout);
        if status.is_some() {
            self.child = None;
        }
        status
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM lets the agent tear its containers down; SIGKILL if it does not.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if wait_timeout(&mut child, Duration::from_secs(20)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Anything still mounted below the test directory would make the removal fail.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            let root = self.dir.path().to_string_lossy().to_string();
            let mut points: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(4))
                .filter(|p| p.starts_with(&root))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A ttRPC context with a deadline (so a hung agent fails the test instead of hanging it).
pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(30).as_nanos() as i64)
}

/// The mount points currently below `dir` (from /proc/self/mountinfo).
pub fn mounts_below(dir: &Path) -> Vec<String> {
    let root = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|p| p.starts_with(&root))
        .collect()
}

/// A network namespace made with `ip netns add` for one test, deleted (with everything in it) when
/// dropped, also when the test fails.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// Creates `kata-e2e-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> NetNs {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("kata-e2e-{tag}-{}-{n}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        NetNs { name }
    }

    /// The namespace file, for [`AgentOptions::netns`].
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `cmd args...` inside the namespace (`ip netns exec`).
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }

    /// Like [`NetNs::exec`], panicking with the command's stderr when it fails; returns stdout.
    pub fn run(&self, cmd: &str, args: &[&str]) -> String {
        let out = self.exec(cmd, args);
        assert!(
            out.status.success(),
            "{cmd} {args:?} in netns {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
