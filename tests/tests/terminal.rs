//! End-to-end tests of terminal processes through the real `kata-agent` binary: the pty of a
//! terminal init or exec comes from the container's own devpts (so `tty` names the container's
//! `/dev/pts/N`), its initial size is the process's `ConsoleSize`, TtyWinResize changes it, the
//! agent's own devpts never gets an entry, and the agent's pty descriptors go with the process.
//!
//! The agent runs in a mount namespace of its own with a fresh devpts instance on `/dev/pts`
//! ([`AgentOptions::private_devpts`]), so any pty the agent opened itself would show up there,
//! whatever other tests on the machine do with the host's devpts.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::{ctx, rootfs, AgentOptions, TestAgent};
use protobuf::MessageField;
use protocols::agent;
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::oci;

const READ_LEN: u32 = 32 * 1024;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
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

/// A root process running `args`; a terminal with an initial size when `size` is given.
fn process(args: &[&str], size: Option<(u32, u32)>) -> oci::Process {
    let mut p = oci::Process::new();
    p.Args = strs(args);
    p.Env = strs(&["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"]);
    p.Cwd = "/".into();
    p.User = MessageField::some(oci::User::new());
    if let Some((rows, cols)) = size {
        p.Terminal = true;
        let mut b = oci::Box::new();
        b.Height = rows;
        b.Width = cols;
        p.ConsoleSize = MessageField::some(b);
    }
    p
}

fn ns_inode(pid: i32, ns: &str) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/{ns}"))
        .unwrap_or_else(|e| panic!("cannot stat the {ns} namespace of {pid}: {e}"))
        .ino()
}

/// `st_dev` of the devpts instance on `/dev/pts` as process `pid` sees it.
fn devpts_dev(pid: i32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/root/dev/pts"))
        .unwrap_or_else(|e| panic!("cannot stat /dev/pts of {pid}: {e}"))
        .dev()
}

/// The open descriptors of `pid` that are ptys (masters 5:2, slaves 136-143:N), as
/// (`st_dev`, major) pairs.
fn pty_fds(pid: u32) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(m) = std::fs::metadata(e.path()) else {
            continue;
        };
        if m.mode() & libc::S_IFMT != libc::S_IFCHR {
            continue;
        }
        let major = libc::major(m.rdev());
        let minor = libc::minor(m.rdev());
        if (major == 5 && minor == 2) || (136..=143).contains(&major) {
            out.push((m.dev(), major));
        }
    }
    out
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

struct Fx {
    agent: TestAgent,
    c: AgentServiceClient,
    tag: String,
    rootfs: PathBuf,
    cgroups: Vec<String>,
}

impl Fx {
    async fn new(tag: &str) -> Fx {
        let agent = TestAgent::start_with(AgentOptions {
            private_devpts: true,
            ..Default::default()
        });
        let (c, _) = agent.clients().await;
        Fx {
            agent,
            c,
            tag: tag.to_string(),
            rootfs: rootfs().canonicalize().expect("the busybox rootfs exists"),
            cgroups: Vec::new(),
        }
    }

    fn cgroup(&self, cid: &str) -> String {
        format!("kata-e2e-{}-{}-{cid}", std::process::id(), self.tag)
    }

    /// Pids in the container's cgroup (v1 freezer).
    fn cg_pids(&self, cid: &str) -> Vec<i32> {
        std::fs::read_to_string(
            Path::new("/sys/fs/cgroup/freezer")
                .join(self.cgroup(cid))
                .join("cgroup.procs"),
        )
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
    }

    /// The init of a container that runs nothing else (once its setup process is gone).
    async fn init_pid(&self, cid: &str) -> i32 {
        eventually(10, "the setup process of the init is gone", || {
            self.cg_pids(cid).len() == 1
        })
        .await;
        self.cg_pids(cid)[0]
    }

    /// Busybox rootfs read-only, its own /dev with a new devpts instance, new mount/ipc/uts
    /// namespaces (the agent adds the pid namespace).
    fn spec(&mut self, cid: &str, p: oci::Process) -> oci::Spec {
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
            mount("/tmp", "tmpfs", "tmpfs", &["nosuid", "nodev", "mode=1777"]),
        ];
        let mut l = oci::Linux::new();
        l.Namespaces = vec![namespace("mount"), namespace("ipc"), namespace("uts")];
        l.CgroupsPath = self.cgroup(cid);
        self.cgroups.push(l.CgroupsPath.clone());
        l.Resources = MessageField::some(oci::LinuxResources::new());
        s.Linux = MessageField::some(l);
        s
    }

    async fn run(&self, cid: &str, spec: oci::Spec, sandbox_pidns: bool) {
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = cid.into();
        req.OCI = MessageField::some(spec);
        req.sandbox_pidns = sandbox_pidns;
        self.c
            .create_container(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {cid}: {e:?}\n{}", self.agent.log()));
        let mut req = agent::StartContainerRequest::new();
        req.container_id = cid.into();
        self.c
            .start_container(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("StartContainer {cid}: {e:?}"));
    }

    async fn exec(&self, cid: &str, exec_id: &str, p: oci::Process) {
        let mut req = agent::ExecProcessRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        req.process = MessageField::some(p);
        self.c
            .exec_process(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("ExecProcess {cid}/{exec_id}: {e:?}\n{}", self.agent.log()));
    }

    async fn write(&self, cid: &str, exec_id: &str, data: &str) {
        let mut req = agent::WriteStreamRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        req.data = data.as_bytes().to_vec();
        self.c
            .write_stdin(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("WriteStdin {cid}/{exec_id}: {e:?}"));
    }

    async fn resize(&self, cid: &str, exec_id: &str, rows: u32, cols: u32) {
        let mut req = agent::TtyWinResizeRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        req.row = rows;
        req.column = cols;
        self.c
            .tty_win_resize(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("TtyWinResize {cid}/{exec_id}: {e:?}"));
    }

    async fn read(&self, cid: &str, exec_id: &str) -> Vec<u8> {
        let mut req = agent::ReadStreamRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        req.len = READ_LEN;
        self.c
            .read_stdout(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("ReadStdout {cid}/{exec_id}: {e:?}"))
            .data
    }

    /// Reads the terminal until `needle` has appeared; returns everything read.
    async fn read_until(&self, cid: &str, exec_id: &str, needle: &str) -> String {
        let mut out = Vec::new();
        loop {
            let data = self.read(cid, exec_id).await;
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

    async fn read_to_end(&self, cid: &str, exec_id: &str) {
        while !self.read(cid, exec_id).await.is_empty() {}
    }

    async fn wait(&self, cid: &str, exec_id: &str) -> i32 {
        let mut req = agent::WaitProcessRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        self.c
            .wait_process(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("WaitProcess {cid}/{exec_id}: {e:?}"))
            .status
    }

    async fn remove(&self, cid: &str) {
        let mut req = agent::RemoveContainerRequest::new();
        req.container_id = cid.into();
        self.c
            .remove_container(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("RemoveContainer {cid}: {e:?}"));
    }

    /// The agent's own devpts holds nothing but `ptmx`, and the agent holds no descriptor on it.
    fn assert_agent_devpts_untouched(&self) {
        let agent = self.agent.pid();
        let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{agent}/root/dev/pts"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["ptmx"], "the agent's own /dev/pts got entries");
        let own = devpts_dev(agent as i32);
        let on_own: Vec<_> = pty_fds(agent).into_iter().filter(|f| f.0 == own).collect();
        assert!(
            on_own.is_empty(),
            "the agent holds ptys of its own devpts: {on_own:?}"
        );
    }

    /// Drives the interactive shell of a terminal process: its initial size is `initial`, a
    /// TtyWinResize shows in `stty size`, and `tty` names a `/dev/pts/N` of the container's
    /// devpts that the process really has on its stdio. Returns N.
    async fn check_terminal(
        &self,
        cid: &str,
        exec_id: &str,
        initial: (u32, u32),
        resized: (u32, u32),
    ) -> u32 {
        // The echo of the typed command never contains the output looked for.
        self.write(cid, exec_id, "stty size\n").await;
        self.read_until(cid, exec_id, &format!("{} {}", initial.0, initial.1))
            .await;
        self.resize(cid, exec_id, resized.0, resized.1).await;
        self.write(cid, exec_id, "stty size\n").await;
        self.read_until(cid, exec_id, &format!("{} {}", resized.0, resized.1))
            .await;
        self.write(cid, exec_id, "tty; echo TTY-$((40+2))\n").await;
        let out = self.read_until(cid, exec_id, "TTY-42").await;
        let at = out
            .find("/dev/pts/")
            .unwrap_or_else(|| panic!("tty printed no /dev/pts/N: {out:?}"));
        let digits: String = out[at + "/dev/pts/".len()..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        let n: u32 = digits
            .parse()
            .unwrap_or_else(|_| panic!("tty printed no /dev/pts/N: {out:?}"));

        // Some process of the container has /dev/pts/N as stdin: the node of its own devpts.
        let mut seen = false;
        for pid in self.cg_pids(cid) {
            let fd0 = format!("/proc/{pid}/fd/0");
            if std::fs::read_link(&fd0).ok() != Some(PathBuf::from(format!("/dev/pts/{n}"))) {
                continue;
            }
            let tty = std::fs::metadata(&fd0).unwrap();
            let node = std::fs::metadata(format!("/proc/{pid}/root/dev/pts/{n}"))
                .unwrap_or_else(|e| panic!("/dev/pts/{n} is not in the container: {e}"));
            assert_eq!(
                (tty.dev(), tty.rdev()),
                (node.dev(), node.rdev()),
                "the tty is not the container's /dev/pts/{n}"
            );
            assert_eq!(tty.dev(), devpts_dev(pid));
            assert_ne!(
                tty.dev(),
                devpts_dev(self.agent.pid() as i32),
                "the tty comes from the agent's devpts"
            );
            seen = true;
        }
        assert!(seen, "no process of {cid} has /dev/pts/{n} as stdin");
        n
    }

    /// Ends the shell with `code` and reads its terminal to the end.
    async fn exit_shell(&self, cid: &str, exec_id: &str, code: i32) {
        self.write(cid, exec_id, &format!("exit {code}\n")).await;
        self.read_to_end(cid, exec_id).await;
        assert_eq!(self.wait(cid, exec_id).await, code);
    }

    /// Number of pty masters the agent holds on the devpts with `st_dev` `dev`.
    fn agent_masters_on(&self, dev: u64) -> usize {
        pty_fds(self.agent.pid())
            .into_iter()
            .filter(|(d, major)| *d == dev && *major == 5)
            .count()
    }

    async fn finish(self) {
        let agent = self.agent.pid();
        eventually(10, "the agent holds no pty", || pty_fds(agent).is_empty()).await;
        for cg in &self.cgroups {
            for ctrl in ["freezer", "memory", "pids"] {
                let d = Path::new("/sys/fs/cgroup").join(ctrl).join(cg);
                assert!(!d.exists(), "cgroup {} was left behind", d.display());
            }
        }
    }
}

/// A terminal init and a terminal exec of a container with a pid namespace of its own.
#[test]
fn terminal_init_and_exec_in_a_new_pid_namespace() {
    rt().block_on(async {
        let mut fx = Fx::new("term-own").await;
        let agent = fx.agent.pid();
        assert!(pty_fds(agent).is_empty());
        let spec = fx.spec("t1", process(&["sh"], Some((24, 81))));
        fx.run("t1", spec, false).await;
        let init = fx.init_pid("t1").await;
        assert_ne!(ns_inode(init, "pid"), ns_inode(agent as i32, "pid"));
        let ctr_pts = devpts_dev(init);
        assert_ne!(ctr_pts, devpts_dev(agent as i32));

        // Each terminal process is one master (plus its writer's duplicate) in the agent, on the
        // container's devpts.
        let n_init = fx.check_terminal("t1", "", (24, 81), (33, 111)).await;
        assert_eq!(fx.agent_masters_on(ctr_pts), 2);
        fx.assert_agent_devpts_untouched();

        fx.exec("t1", "e1", process(&["sh"], Some((10, 50)))).await;
        let n_exec = fx.check_terminal("t1", "e1", (10, 50), (44, 132)).await;
        assert_ne!(n_init, n_exec, "two processes share a pty");
        assert_eq!(fx.agent_masters_on(ctr_pts), 4);
        fx.assert_agent_devpts_untouched();

        // A terminal exec without a console size still gets its pty (of size 0x0, which
        // busybox stty refuses to print).
        let mut p = process(&["sh", "-c", "tty; echo DONE-$((1+1))"], Some((0, 0)));
        p.ConsoleSize = MessageField::none();
        fx.exec("t1", "e2", p).await;
        let out = fx.read_until("t1", "e2", "DONE-2").await;
        assert!(out.contains("/dev/pts/"), "{out:?}");
        fx.read_to_end("t1", "e2").await;
        assert_eq!(fx.wait("t1", "e2").await, 0);

        // The exec's master goes once the process has ended and its output is read.
        fx.exit_shell("t1", "e1", 7).await;
        eventually(10, "the exec's pty master is released", || {
            fx.agent_masters_on(ctr_pts) == 2
        })
        .await;
        fx.exit_shell("t1", "", 3).await;
        eventually(10, "the init's pty master is released", || {
            fx.agent_masters_on(ctr_pts) == 0
        })
        .await;
        fx.assert_agent_devpts_untouched();
        fx.remove("t1").await;
        fx.finish().await;
    });
}

/// A terminal init and exec of a container that joins the sandbox's pid namespace.
#[test]
fn terminal_init_and_exec_in_the_sandbox_pid_namespace() {
    rt().block_on(async {
        let mut fx = Fx::new("term-shared").await;
        let agent = fx.agent.pid();
        let spec = fx.spec("s1", process(&["sleep", "1000"], None));
        fx.run("s1", spec, true).await;
        let first = fx.init_pid("s1").await;

        let spec = fx.spec("s2", process(&["sh"], Some((30, 90))));
        fx.run("s2", spec, true).await;
        let init = fx.init_pid("s2").await;
        assert_eq!(
            ns_inode(init, "pid"),
            ns_inode(first, "pid"),
            "the container did not join the sandbox pid namespace"
        );
        let ctr_pts = devpts_dev(init);
        fx.check_terminal("s2", "", (30, 90), (40, 100)).await;
        fx.exec("s2", "e1", process(&["sh"], Some((12, 34)))).await;
        fx.check_terminal("s2", "e1", (12, 34), (56, 78)).await;
        // A terminal exec in the container without a terminal of its own.
        fx.exec("s1", "e1", process(&["sh"], Some((7, 8)))).await;
        fx.check_terminal("s1", "e1", (7, 8), (9, 10)).await;
        assert_eq!(fx.agent_masters_on(ctr_pts), 4);
        fx.assert_agent_devpts_untouched();

        fx.exit_shell("s2", "e1", 5).await;
        fx.exit_shell("s1", "e1", 6).await;
        fx.exit_shell("s2", "", 0).await;
        eventually(10, "the pty masters are released", || {
            pty_fds(agent).is_empty()
        })
        .await;
        fx.remove("s2").await;
        fx.remove("s1").await;
        fx.finish().await;
    });
}

/// A container without a devpts has no pty to give: a terminal init or exec fails with a clear
/// error and leaves no process, descriptor or bundle behind.
#[test]
fn terminal_without_a_devpts_is_a_clear_error() {
    rt().block_on(async {
        let mut fx = Fx::new("term-nopts").await;
        let agent = fx.agent.pid();
        let no_pts = |mut s: oci::Spec| {
            s.Mounts.retain(|m| m.destination != "/dev/pts");
            s
        };

        let spec = no_pts(fx.spec("n1", process(&["sh"], Some((5, 5)))));
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = "n1".into();
        req.OCI = MessageField::some(spec);
        let err =
            fx.c.create_container(ctx(), &req)
                .await
                .expect_err("a terminal init without a devpts was created");
        assert!(format!("{err:?}").contains("/dev/ptmx"), "{err:?}");
        assert!(
            !fx.agent.run_dir.join("n1").exists(),
            "the bundle of n1 was left"
        );

        let spec = no_pts(fx.spec("n2", process(&["sleep", "1000"], None)));
        fx.run("n2", spec, false).await;
        let mut req = agent::ExecProcessRequest::new();
        req.container_id = "n2".into();
        req.exec_id = "e1".into();
        req.process = MessageField::some(process(&["sh"], Some((5, 5))));
        let err =
            fx.c.exec_process(ctx(), &req)
                .await
                .expect_err("a terminal exec without a devpts was started");
        assert!(format!("{err:?}").contains("/dev/ptmx"), "{err:?}");
        assert_eq!(fx.cg_pids("n2").len(), 1, "the failed exec left a process");
        assert!(pty_fds(agent).is_empty());
        fx.assert_agent_devpts_untouched();
        fx.remove("n2").await;
        fx.finish().await;
    });
}
