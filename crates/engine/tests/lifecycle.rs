//! End-to-end tests of the engine with real namespaces, mounts and cgroups
//! (run as root). This binary has its own `main`: when re-executed with
//! `init` it becomes the engine's setup process, like the agent binary does.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use engine::{Container, EngineConfig, Error, Stdio};
use oci_spec::runtime::{
    HookBuilder, HooksBuilder, LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder, Mount,
    MountBuilder, Process, Spec,
};

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "true", "false", "sleep", "ls", "id", "touch", "mkdir", "env", "grep",
    "test", "stat", "readlink", "head", "kill", "pwd", "hostname", "ps",
];

static COUNTER: AtomicUsize = AtomicUsize::new(0);

struct Env {
    _dir: tempfile::TempDir,
    base: PathBuf,
    rootfs: PathBuf,
    cfg: EngineConfig,
}

impl Env {
    fn new() -> Result<Env> {
        let dir = tempfile::Builder::new().prefix("engine-test").tempdir()?;
        let base = dir.path().canonicalize()?;
        let rootfs = base.join("rootfs");
        for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .context("busybox-static is needed: apt-get install busybox-static")?;
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a))?;
        }
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
        )?;
        let cfg = EngineConfig {
            run_dir: base.join("run"),
            init_exe: std::env::current_exe()?,
            init_args: vec!["init".into()],
            ..Default::default()
        };
        Ok(Env {
            _dir: dir,
            base,
            rootfs,
            cfg,
        })
    }

    fn spec(&self, args: &[&str]) -> Spec {
        let mut spec = Spec::default();
        let mut root = spec.root().clone().unwrap();
        root.set_path(self.rootfs.clone());
        root.set_readonly(Some(false));
        spec.set_root(Some(root));
        spec.set_hostname(Some("ctr".into()));
        let mut p = spec.process().clone().unwrap();
        p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        p.set_env(Some(vec!["PATH=/bin".into(), "FOO=bar".into()]));
        p.set_no_new_privileges(Some(false));
        p.set_terminal(Some(false));
        spec.set_process(Some(p));
        let mut linux = spec.linux().clone().unwrap();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        linux.set_cgroups_path(Some(
            format!("/kata-engine-test-{}-{n}", std::process::id()).into(),
        ));
        spec.set_linux(Some(linux));
        spec
    }
}

/// Destroys the container when dropped (also when a test fails).
struct Guard(Option<Container>);

impl Guard {
    fn c(&mut self) -> &mut Container {
        self.0.as_mut().unwrap()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            if let Err(e) = c.destroy(Duration::from_secs(10)) {
                eprintln!("cleanup of {} failed: {e}", c.id());
            }
        }
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe().unwrap()
}

/// stdio with stdout and stderr captured; returns the read ends.
fn captured() -> (Stdio, OwnedFd, OwnedFd) {
    let (or, ow) = pipe();
    let (er, ew) = pipe();
    (
        Stdio {
            stdin: None,
            stdout: Some(ow),
            stderr: Some(ew),
        },
        or,
        er,
    )
}

fn read_all(fd: OwnedFd) -> String {
    let mut f = std::fs::File::from(fd);
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s
}

fn create(env: &Env, id: &str, spec: Spec, stdio: Stdio) -> Result<Guard> {
    Ok(Guard(Some(Container::create(&env.cfg, id, spec, stdio)?)))
}

fn wait(c: &Container) -> Result<i32> {
    c.init_exit()
        .wait_timeout(Duration::from_secs(20))
        .context("the container did not exit in time")
}

fn mounts_under(p: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|m| Path::new(m).starts_with(p))
        })
        .map(str::to_string)
        .collect()
}

fn cgroup_dir(spec: &Spec) -> PathBuf {
    let p = spec
        .linux()
        .as_ref()
        .unwrap()
        .cgroups_path()
        .clone()
        .unwrap();
    Path::new("/sys/fs/cgroup/freezer").join(p.strip_prefix("/").unwrap())
}

fn run_to_end(env: &Env, id: &str, spec: Spec) -> Result<(i32, String, String)> {
    let (stdio, out, err) = captured();
    let mut g = create(env, id, spec, stdio)?;
    g.c().start()?;
    let code = wait(g.c())?;
    Ok((code, read_all(out), read_all(err)))
}

fn test_exit_codes_and_output(env: &Env) -> Result<()> {
    let (code, out, _) = run_to_end(
        env,
        "c-ok",
        env.spec(&["sh", "-c", "echo hello; echo $FOO; hostname"]),
    )?;
    ensure!(code == 0, "exit code {code}");
    ensure!(out == "hello\nbar\nctr\n", "output {out:?}");
    let (code, _, err) = run_to_end(
        env,
        "c-three",
        env.spec(&["sh", "-c", "echo oops >&2; exit 3"]),
    )?;
    ensure!(code == 3, "exit code {code}");
    ensure!(err == "oops\n", "stderr {err:?}");
    Ok(())
}

fn test_created_state_and_start_twice(env: &Env) -> Result<()> {
    let (stdio, out, _) = captured();
    let spec = env.spec(&["echo", "started"]);
    let cg = cgroup_dir(&spec);
    let mut g = create(env, "c-start", spec, stdio)?;
    ensure!(g.c().status() == engine::Status::Created);
    ensure!(cg.is_dir(), "cgroup {} missing", cg.display());
    ensure!(g.c().init_exit().try_get().is_none());
    g.c().start()?;
    // At once, before the init can have consumed the start byte.
    ensure!(
        g.c().start().is_err(),
        "an immediate second start succeeded"
    );
    ensure!(wait(g.c())? == 0);
    ensure!(read_all(out) == "started\n");
    // A second start must fail at once, not hang.
    let t0 = std::time::Instant::now();
    ensure!(g.c().start().is_err(), "second start succeeded");
    ensure!(t0.elapsed() < Duration::from_secs(2));
    ensure!(g.c().status() == engine::Status::Stopped);
    Ok(())
}

fn test_exec_and_kill(env: &Env) -> Result<()> {
    let mut g = create(
        env,
        "c-exec",
        env.spec(&["sleep", "1000"]),
        Stdio::default(),
    )?;
    g.c().start()?;
    let mut p = Process::default();
    p.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "echo $$ $FOO; id -u; cat /proc/1/cmdline".into(),
    ]));
    p.set_env(Some(vec!["PATH=/bin".into(), "FOO=exec".into()]));
    p.set_no_new_privileges(Some(false));
    p.user_mut().set_uid(1000);
    p.user_mut().set_gid(1000);
    let (stdio, out, _) = captured();
    let (_pid, exit, _) = g.c().exec(&p, stdio)?;
    ensure!(exit.wait_timeout(Duration::from_secs(10)) == Some(0));
    let out = read_all(out);
    let lines: Vec<&str> = out.lines().collect();
    ensure!(lines.len() == 3, "output {out:?}");
    ensure!(lines[0].ends_with(" exec"), "output {out:?}");
    ensure!(lines[1] == "1000", "output {out:?}");
    ensure!(lines[2].starts_with("sleep"), "output {out:?}");

    // An exec of a missing binary is an error of the call.
    let mut bad = p.clone();
    bad.set_args(Some(vec!["no-such-binary".into()]));
    match g.c().exec(&bad, Stdio::default()) {
        Err(e) => ensure!(
            e.to_string().contains("no-such-binary was not found"),
            "{e}"
        ),
        Ok(_) => bail!("exec of a missing binary succeeded"),
    }

    let init = g.c().init_pid();
    g.c().signal(init, libc::SIGKILL)?;
    ensure!(wait(g.c())? == 137);
    Ok(())
}

fn test_sigterm_to_init_without_handler(env: &Env) -> Result<()> {
    let mut g = create(
        env,
        "c-term",
        env.spec(&["sleep", "1000"]),
        Stdio::default(),
    )?;
    g.c().start()?;
    std::thread::sleep(Duration::from_millis(100));
    let init = g.c().init_pid();
    g.c().signal(init, libc::SIGTERM)?;
    ensure!(wait(g.c())? == 137);
    Ok(())
}

/// Everything a pty master yields until the last slave is gone (EIO).
fn read_pty(master: OwnedFd) -> String {
    let mut f = std::fs::File::from(master);
    let mut buf = vec![0u8; 4096];
    let mut out = String::new();
    // Reading the master after the slave is closed ends with EIO.
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    out
}

fn test_tty(env: &Env) -> Result<()> {
    let script = "test -t 0 && echo is-a-tty; echo via-dev-tty > /dev/tty; tty; stty size";
    let mut spec = env.spec(&["sh", "-c", script]);
    let mut p = spec.process().clone().unwrap();
    p.set_terminal(Some(true));
    p.set_console_size(Some(
        oci_spec::runtime::BoxBuilder::default()
            .height(21u64)
            .width(97u64)
            .build()?,
    ));
    spec.set_process(Some(p.clone()));
    let mut g = create(env, "c-tty", spec, Stdio::default())?;
    let master = g
        .c()
        .take_console()
        .context("no pty master for a terminal init")?;
    ensure!(
        g.c().take_console().is_none(),
        "the master is handed out once"
    );
    let flags = nix::fcntl::fcntl(master.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD)?;
    ensure!(
        flags & libc::FD_CLOEXEC != 0,
        "the master must be close-on-exec"
    );
    // The pty belongs to the container's own devpts instance, not the host's.
    let host_pts = std::fs::metadata("/dev/pts")?.dev();
    let ours = std::fs::metadata(format!("/proc/{}/fd/0", g.c().init_pid()))?;
    ensure!(
        ours.dev() != host_pts,
        "the pty comes from the host's devpts"
    );
    g.c().start()?;
    ensure!(wait(g.c())? == 0);
    let out = read_pty(master);
    ensure!(
        out.contains("is-a-tty") && out.contains("via-dev-tty"),
        "tty output {out:?}"
    );
    // A new devpts instance: the first pty is number 0.
    ensure!(out.contains("/dev/pts/0"), "tty output {out:?}");
    ensure!(out.contains("21 97"), "tty output {out:?}");

    // A terminal exec gets a pty of the container too, with its own initial size.
    let mut g = create(
        env,
        "c-tty2",
        env.spec(&["sleep", "1000"]),
        Stdio::default(),
    )?;
    ensure!(g.c().take_console().is_none());
    g.c().start()?;
    let mut p = p.clone();
    p.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "tty; stty size".into(),
    ]));
    p.set_console_size(Some(
        oci_spec::runtime::BoxBuilder::default()
            .height(5u64)
            .width(6u64)
            .build()?,
    ));
    let (_, exit, master) = g.c().exec(&p, Stdio::default())?;
    let master = master.context("no pty master for a terminal exec")?;
    ensure!(exit.wait_timeout(Duration::from_secs(20)) == Some(0));
    let out = read_pty(master);
    ensure!(out.contains("/dev/pts/0"), "exec tty output {out:?}");
    ensure!(out.contains("5 6"), "exec tty output {out:?}");
    Ok(())
}

fn test_readonly_rootfs_and_dev(env: &Env) -> Result<()> {
    let mut spec = env.spec(&[
        "sh",
        "-c",
        "touch /x 2>/dev/null && echo wrote; touch /tmp/y 2>/dev/null && echo wrote-tmp; \
         ls /dev; readlink /dev/ptmx; echo hi > /dev/null && echo null-ok",
    ]);
    let mut root = spec.root().clone().unwrap();
    root.set_readonly(Some(true));
    spec.set_root(Some(root));
    let mut mounts = spec.mounts().clone().unwrap();
    mounts.push(tmpfs("/tmp"));
    spec.set_mounts(Some(mounts));
    let (code, out, err) = run_to_end(env, "c-ro", spec)?;
    ensure!(code == 0, "code {code} {err}");
    ensure!(
        !out.contains("wrote\n"),
        "a read-only rootfs accepted a write: {out:?}"
    );
    ensure!(out.contains("wrote-tmp"), "tmpfs not writable: {out:?}");
    for d in [
        "null", "zero", "full", "tty", "urandom", "random", "fd", "stdin", "pts", "shm", "mqueue",
        "pts/ptmx",
    ] {
        ensure!(out.contains(d), "/dev lacks {d}: {out:?}");
    }
    ensure!(out.contains("null-ok"));
    ensure!(!env.rootfs.join("x").exists());
    Ok(())
}

fn tmpfs(dest: &str) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ("tmpfs")
        .source("tmpfs")
        .options(vec!["nosuid".to_string(), "size=1m".to_string()])
        .build()
        .unwrap()
}

fn test_hostile_mount_destinations(env: &Env) -> Result<()> {
    // `..` in a destination is refused up front.
    let mut spec = env.spec(&["true"]);
    let mut mounts = spec.mounts().clone().unwrap();
    mounts.push(tmpfs("/../../etc"));
    spec.set_mounts(Some(mounts));
    match Container::create(&env.cfg, "c-dotdot", spec, Stdio::default()) {
        Err(Error::InvalidArgument(_)) => {}
        other => bail!("a '..' destination was not refused: {other:?}"),
    }
    // A symlink pointing out of the rootfs resolves inside it.
    let escape = env.base.join("escape-target");
    std::fs::create_dir_all(&escape)?;
    std::os::unix::fs::symlink("/", env.rootfs.join("up"))?;
    std::os::unix::fs::symlink(&escape, env.rootfs.join("abs"))?;
    std::os::unix::fs::symlink("../../../../../../..", env.rootfs.join("rel"))?;
    let mut spec = env.spec(&["sh", "-c", "grep -c '/confined[123] ' /proc/self/mountinfo"]);
    let mut mounts = spec.mounts().clone().unwrap();
    mounts.push(tmpfs("/up/confined1"));
    mounts.push(tmpfs("/rel/confined2"));
    mounts.push(tmpfs("/abs/confined3"));
    spec.set_mounts(Some(mounts));
    let res = run_to_end(env, "c-escape", spec);
    for p in ["/confined1", "/confined2"] {
        ensure!(!Path::new(p).exists(), "{p} was created on the host");
    }
    ensure!(
        !escape.join("confined3").exists(),
        "the absolute symlink escaped"
    );
    ensure!(
        env.rootfs
            .join(escape.strip_prefix("/")?)
            .join("confined3")
            .is_dir(),
        "the absolute symlink was not followed inside the rootfs"
    );
    let (code, out, err) = res?;
    ensure!(
        code == 0 && out.trim() == "3",
        "code {code} out {out:?} err {err:?}"
    );
    let _ = std::fs::remove_file(env.rootfs.join("up"));
    let _ = std::fs::remove_file(env.rootfs.join("abs"));
    let _ = std::fs::remove_file(env.rootfs.join("rel"));
    for d in ["confined1", "confined2"] {
        let _ = std::fs::remove_dir(env.rootfs.join(d));
    }
    let first = env.base.components().nth(1).unwrap();
    let _ = std::fs::remove_dir_all(env.rootfs.join(first));
    Ok(())
}

fn test_duplicate_id(env: &Env) -> Result<()> {
    let mut g = create(env, "c-dup", env.spec(&["sleep", "1000"]), Stdio::default())?;
    g.c().start()?;
    match Container::create(&env.cfg, "c-dup", env.spec(&["true"]), Stdio::default()) {
        Err(Error::AlreadyExists(_)) => {}
        other => bail!("a duplicate id was not refused: {other:?}"),
    }
    ensure!(
        g.c().init_exit().try_get().is_none(),
        "the first container died"
    );
    ensure!(
        env.cfg.run_dir.join("c-dup/exec.fifo").exists(),
        "the first bundle was touched"
    );
    let mut p = Process::default();
    p.set_args(Some(vec!["true".into()]));
    p.set_env(Some(vec!["PATH=/bin".into()]));
    let (_, exit, _) = g.c().exec(&p, Stdio::default())?;
    ensure!(exit.wait_timeout(Duration::from_secs(10)) == Some(0));
    Ok(())
}

fn assert_nothing_left(env: &Env, id: &str, spec: &Spec) -> Result<()> {
    ensure!(
        !env.cfg.run_dir.join(id).exists(),
        "the bundle of {id} is left behind"
    );
    ensure!(
        !cgroup_dir(spec).exists(),
        "the cgroup of {id} is left behind"
    );
    let m = mounts_under(&env.base);
    ensure!(m.is_empty(), "mounts left behind: {m:?}");
    Ok(())
}

fn test_bad_specs_leave_nothing(env: &Env) -> Result<()> {
    // Rejected by validation.
    let mut spec = env.spec(&["true"]);
    let mut linux = spec.linux().clone().unwrap();
    linux.set_namespaces(Some(
        oci_spec::runtime::get_default_namespaces()
            .into_iter()
            .filter(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Uts)
            .collect(),
    ));
    spec.set_linux(Some(linux));
    match Container::create(&env.cfg, "c-bad1", spec.clone(), Stdio::default()) {
        Err(Error::InvalidArgument(m)) => ensure!(m.contains("uts"), "{m}"),
        other => bail!("a hostname without uts namespace was accepted: {other:?}"),
    }
    assert_nothing_left(env, "c-bad1", &spec)?;
    // Bad id.
    ensure!(matches!(
        Container::create(&env.cfg, "-x", env.spec(&["true"]), Stdio::default()),
        Err(Error::InvalidArgument(_))
    ));
    // Fails inside the setup process (after cgroup, bundle and mounts exist).
    let spec = env.spec(&["no-such-binary"]);
    match Container::create(&env.cfg, "c-bad2", spec.clone(), Stdio::default()) {
        Err(e) => ensure!(
            e.to_string() == "the file no-such-binary was not found",
            "{e}"
        ),
        Ok(_) => bail!("a missing binary was accepted"),
    }
    assert_nothing_left(env, "c-bad2", &spec)?;
    // A mount that cannot be done.
    let mut spec = env.spec(&["true"]);
    let mut mounts = spec.mounts().clone().unwrap();
    mounts.push(
        MountBuilder::default()
            .destination("/bad")
            .typ("no-such-fs")
            .source("none")
            .build()?,
    );
    spec.set_mounts(Some(mounts));
    match Container::create(&env.cfg, "c-bad3", spec.clone(), Stdio::default()) {
        Err(e) => ensure!(e.to_string().contains("/bad"), "{e}"),
        Ok(_) => bail!("an impossible mount was accepted"),
    }
    assert_nothing_left(env, "c-bad3", &spec)?;
    let _ = std::fs::remove_dir(env.rootfs.join("bad"));
    Ok(())
}

fn test_seccomp_errno(env: &Env) -> Result<()> {
    for nnp in [false, true] {
        let mut spec = env.spec(&["sh", "-c", "mkdir /tmp/d; echo rc=$?"]);
        let mut linux = spec.linux().clone().unwrap();
        linux.set_seccomp(Some(
            LinuxSeccompBuilder::default()
                .default_action(LinuxSeccompAction::ScmpActAllow)
                .syscalls(vec![LinuxSyscallBuilder::default()
                    .names(vec!["mkdir".to_string(), "mkdirat".to_string()])
                    .action(LinuxSeccompAction::ScmpActErrno)
                    .errno_ret(libc::ENOSPC as u32)
                    .build()?])
                .build()?,
        ));
        spec.set_linux(Some(linux));
        let mut p = spec.process().clone().unwrap();
        p.set_no_new_privileges(Some(nnp));
        spec.set_process(Some(p));
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.push(tmpfs("/tmp"));
        spec.set_mounts(Some(mounts));
        let (code, out, err) = run_to_end(env, &format!("c-seccomp-{nnp}"), spec)?;
        ensure!(code == 0, "code {code}");
        ensure!(
            out.contains("rc=1"),
            "mkdir was not denied: {out:?} {err:?}"
        );
        ensure!(
            err.contains("No space left on device"),
            "wrong errno: {err:?}"
        );
    }
    Ok(())
}

fn test_hooks_in_order(env: &Env) -> Result<()> {
    let log_dir = env.base.join("hooklog");
    std::fs::create_dir_all(&log_dir)?;
    let log = log_dir.join("log");
    let host_hook = |name: &str| {
        HookBuilder::default()
            .path("/bin/sh")
            .args(vec![
                "sh".to_string(),
                "-c".to_string(),
                format!(
                    "read -r state; echo {name} >> {}; echo \"$state\" > {}/{name}.json",
                    log.display(),
                    log_dir.display()
                ),
            ])
            .build()
            .unwrap()
    };
    let ctr_hook = HookBuilder::default()
        .path("/bin/sh")
        .args(vec![
            "sh".to_string(),
            "-c".to_string(),
            "echo startContainer >> /hooklog/log".to_string(),
        ])
        .build()?;
    #[allow(deprecated)]
    let hooks = HooksBuilder::default()
        .prestart(vec![host_hook("prestart")])
        .create_runtime(vec![host_hook("createRuntime")])
        .create_container(vec![host_hook("createContainer")])
        .start_container(vec![ctr_hook])
        .poststart(vec![host_hook("poststart")])
        .poststop(vec![host_hook("poststop")])
        .build()?;
    let mut spec = env.spec(&["sh", "-c", "sleep 0.2; echo process >> /hooklog/log"]);
    spec.set_hooks(Some(hooks));
    spec.set_annotations(Some(HashMap::from([(
        "a.b/c".to_string(),
        "d".to_string(),
    )])));
    let mut mounts = spec.mounts().clone().unwrap();
    mounts.push(
        MountBuilder::default()
            .destination("/hooklog")
            .typ("bind")
            .source(&log_dir)
            .options(vec!["rbind".to_string(), "rw".to_string()])
            .build()?,
    );
    spec.set_mounts(Some(mounts));
    let mut g = create(env, "c-hooks", spec, Stdio::default())?;
    g.c().start()?;
    ensure!(wait(g.c())? == 0);
    g.c().destroy(Duration::from_secs(10))?;
    let text = std::fs::read_to_string(&log)?;
    let lines: Vec<&str> = text.lines().collect();
    let pos = |n: &str| lines.iter().position(|l| *l == n);
    for n in [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "process",
        "poststop",
    ] {
        ensure!(pos(n).is_some(), "hook {n} did not run: {lines:?}");
    }
    ensure!(
        pos("prestart") < pos("createRuntime")
            && pos("createRuntime") < pos("createContainer")
            && pos("createContainer") < pos("startContainer")
            && pos("startContainer") < pos("process")
            && pos("createContainer") < pos("poststart")
            && pos("process") < pos("poststop"),
        "hooks out of order: {lines:?}"
    );
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(log_dir.join("prestart.json"))?)?;
    ensure!(
        state["id"] == "c-hooks" && state["status"] == "created",
        "{state}"
    );
    ensure!(state["pid"].as_i64().unwrap_or(0) > 1, "{state}");
    ensure!(state["annotations"]["a.b/c"] == "d", "{state}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(log_dir.join("poststop.json"))?)?;
    ensure!(state["status"] == "stopped", "{state}");
    Ok(())
}

fn test_failing_prestart_hook_rolls_back(env: &Env) -> Result<()> {
    let mut spec = env.spec(&["true"]);
    #[allow(deprecated)]
    let hooks = HooksBuilder::default()
        .prestart(vec![HookBuilder::default()
            .path("/bin/sh")
            .args(vec![
                "sh".to_string(),
                "-c".to_string(),
                "echo nope >&2; exit 4".to_string(),
            ])
            .build()?])
        .build()?;
    spec.set_hooks(Some(hooks));
    match Container::create(&env.cfg, "c-hookfail", spec.clone(), Stdio::default()) {
        Err(e) => ensure!(e.to_string().contains("nope"), "{e}"),
        Ok(_) => bail!("a failing prestart hook was ignored"),
    }
    assert_nothing_left(env, "c-hookfail", &spec)
}

fn test_destroy_leaves_nothing(env: &Env) -> Result<()> {
    let spec = env.spec(&["sh", "-c", "sleep 1000 & sleep 1000 & wait"]);
    let mut g = create(env, "c-destroy", spec.clone(), Stdio::default())?;
    g.c().start()?;
    let mut p = Process::default();
    p.set_args(Some(vec!["sleep".into(), "1000".into()]));
    p.set_env(Some(vec!["PATH=/bin".into()]));
    let (exec_pid, exec_exit, _) = g.c().exec(&p, Stdio::default())?;
    std::thread::sleep(Duration::from_millis(200));
    let pids = std::fs::read_to_string(cgroup_dir(&spec).join("cgroup.procs"))?;
    ensure!(pids.lines().count() >= 4, "expected 4 processes: {pids:?}");
    g.c().pause()?;
    ensure!(g.c().status() == engine::Status::Paused);
    let init = g.c().init_pid();
    g.c().destroy(Duration::from_secs(10))?;
    g.c().destroy(Duration::from_secs(10))?; // idempotent
    ensure!(exec_exit.wait_timeout(Duration::from_secs(5)) == Some(137));
    ensure!(g.c().init_exit().wait_timeout(Duration::from_secs(5)) == Some(137));
    for pid in pids
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .chain([init, exec_pid])
    {
        ensure!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} survived"
        );
    }
    ensure!(g.c().status() == engine::Status::Stopped);
    assert_nothing_left(env, "c-destroy", &spec)?;
    ensure!(g.c().exec(&p, Stdio::default()).is_err());
    Ok(())
}

fn test_user_caps_env_cwd(env: &Env) -> Result<()> {
    let mut spec = env.spec(&["sh", "-c", "id -u; id -G; grep -E '^Cap(Eff|Bnd)' /proc/self/status; pwd; env | grep -v '^PWD=\\|^SHLVL=\\|^_=' | sort"]);
    let mut p = spec.process().clone().unwrap();
    p.user_mut().set_uid(1000);
    p.user_mut().set_gid(1000);
    p.user_mut().set_additional_gids(Some(vec![5, 6]));
    p.set_cwd("/work/dir".into());
    spec.set_process(Some(p));
    let (code, out, err) = run_to_end(env, "c-user", spec)?;
    ensure!(code == 0, "code {code}: {err}");
    let lines: Vec<&str> = out.lines().collect();
    ensure!(lines[0] == "1000", "{out}");
    ensure!(lines[1] == "1000 5 6", "{out}");
    // The default OCI capability set: AUDIT_WRITE(29), KILL(5), NET_BIND_SERVICE(10),
    // also ambient, so a non-root user keeps them effective across exec.
    let want = format!("{:016x}", (1u64 << 29) | (1 << 5) | (1 << 10));
    ensure!(lines[2] == format!("CapEff:\t{want}"), "{out}");
    ensure!(lines[3] == format!("CapBnd:\t{want}"), "{out}");
    ensure!(lines[4] == "/work/dir", "{out}");
    ensure!(
        lines[5..] == ["FOO=bar", "HOME=/home/user", "PATH=/bin"],
        "{out}"
    );
    Ok(())
}

fn test_masked_readonly_sysctl_rlimits(env: &Env) -> Result<()> {
    let mut spec = env.spec(&[
        "sh",
        "-c",
        "cat /proc/kcore | head -c 1 | grep -c . ; ls /proc/acpi 2>/dev/null | grep -c .; \
         echo 1 > /proc/sys/kernel/domainname 2>/dev/null && echo wrote; \
         cat /proc/sys/net/ipv4/ip_forward; ulimit -n; cat /proc/self/oom_score_adj",
    ]);
    let mut linux = spec.linux().clone().unwrap();
    linux.set_sysctl(Some(HashMap::from([(
        "net.ipv4.ip_forward".to_string(),
        "1".to_string(),
    )])));
    spec.set_linux(Some(linux));
    let mut p = spec.process().clone().unwrap();
    p.set_rlimits(Some(vec![oci_spec::runtime::PosixRlimitBuilder::default()
        .typ(oci_spec::runtime::PosixRlimitType::RlimitNofile)
        .soft(123u64)
        .hard(456u64)
        .build()?]));
    p.set_oom_score_adj(Some(100));
    spec.set_process(Some(p));
    let (code, out, err) = run_to_end(env, "c-masked", spec)?;
    ensure!(code == 0, "code {code}: {err}");
    let lines: Vec<&str> = out.lines().collect();
    ensure!(lines == ["0", "0", "1", "123", "100"], "{out:?} {err:?}");
    Ok(())
}

fn test_update_stats_pause(env: &Env) -> Result<()> {
    let mut g = create(
        env,
        "c-update",
        env.spec(&["sleep", "1000"]),
        Stdio::default(),
    )?;
    g.c().start()?;
    g.c().pause()?;
    g.c().resume()?;
    ensure!(g.c().status() == engine::Status::Running);
    let res = oci_spec::runtime::LinuxResourcesBuilder::default()
        .pids(
            oci_spec::runtime::LinuxPidsBuilder::default()
                .limit(64i64)
                .build()?,
        )
        .build()?;
    g.c().update(&res)?;
    let _ = g.c().stats()?;
    g.c().signal_all(libc::SIGKILL)?;
    ensure!(wait(g.c())? == 137);
    Ok(())
}

fn test_user_namespace(env: &Env) -> Result<()> {
    let mut spec = env.spec(&[
        "sh",
        "-c",
        "cat /proc/self/uid_map; id -u; echo x > /dev/null && echo null-ok; sleep 1000",
    ]);
    let mut linux = spec.linux().clone().unwrap();
    let mut nss = linux.namespaces().clone().unwrap();
    nss.push(
        oci_spec::runtime::LinuxNamespaceBuilder::default()
            .typ(oci_spec::runtime::LinuxNamespaceType::User)
            .build()?,
    );
    linux.set_namespaces(Some(nss));
    let map = oci_spec::runtime::LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(200_000u32)
        .size(65_536u32)
        .build()?;
    linux.set_uid_mappings(Some(vec![map]));
    linux.set_gid_mappings(Some(vec![map]));
    spec.set_linux(Some(linux));
    let (stdio, out, err) = captured();
    let mut g = create(env, "c-userns", spec, stdio)?;
    g.c().start()?;
    let mut p = Process::default();
    p.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "cat /proc/self/uid_map; id -u".into(),
    ]));
    p.set_env(Some(vec!["PATH=/bin".into()]));
    let (estdio, eout, _) = captured();
    let (_, exit, _) = g.c().exec(&p, estdio)?;
    ensure!(exit.wait_timeout(Duration::from_secs(10)) == Some(0));
    let eout = read_all(eout);
    ensure!(
        eout.split_whitespace().collect::<Vec<_>>() == ["0", "200000", "65536", "0"],
        "exec output {eout:?}"
    );
    let init = g.c().init_pid();
    g.c().signal(init, libc::SIGKILL)?;
    ensure!(wait(g.c())? == 137);
    drop(g);
    let out = read_all(out);
    ensure!(
        out.split_whitespace().collect::<Vec<_>>() == ["0", "200000", "65536", "0", "null-ok"],
        "output {out:?} {}",
        read_all(err)
    );
    Ok(())
}

fn test_shared_pid_namespace(env: &Env) -> Result<()> {
    let mut first = create(
        env,
        "c-pidns1",
        env.spec(&["sleep", "1000"]),
        Stdio::default(),
    )?;
    first.c().start()?;
    let mut spec = env.spec(&["sh", "-c", "cat /proc/1/cmdline; echo; echo $$"]);
    let mut linux = spec.linux().clone().unwrap();
    let nss = linux
        .namespaces()
        .clone()
        .unwrap()
        .into_iter()
        .map(|mut n| {
            if n.typ() == oci_spec::runtime::LinuxNamespaceType::Pid {
                n.set_path(Some(
                    format!("/proc/{}/ns/pid", first.c().init_pid()).into(),
                ));
            }
            n
        })
        .collect();
    linux.set_namespaces(Some(nss));
    spec.set_linux(Some(linux));
    let (code, out, err) = run_to_end(env, "c-pidns2", spec)?;
    ensure!(code == 0, "code {code}: {err}");
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        lines.len() == 2 && lines[0].starts_with("sleep") && lines[1] != "1",
        "{out:?}"
    );
    Ok(())
}

type Test = fn(&Env) -> Result<()>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("init") {
        engine::child::run();
    }
    let tests: &[(&str, Test)] = &[
        ("exit_codes_and_output", test_exit_codes_and_output),
        (
            "created_state_and_start_twice",
            test_created_state_and_start_twice,
        ),
        ("exec_and_kill", test_exec_and_kill),
        (
            "sigterm_to_init_without_handler",
            test_sigterm_to_init_without_handler,
        ),
        ("tty", test_tty),
        ("readonly_rootfs_and_dev", test_readonly_rootfs_and_dev),
        (
            "hostile_mount_destinations",
            test_hostile_mount_destinations,
        ),
        ("duplicate_id", test_duplicate_id),
        ("bad_specs_leave_nothing", test_bad_specs_leave_nothing),
        ("seccomp_errno", test_seccomp_errno),
        ("hooks_in_order", test_hooks_in_order),
        (
            "failing_prestart_hook_rolls_back",
            test_failing_prestart_hook_rolls_back,
        ),
        ("destroy_leaves_nothing", test_destroy_leaves_nothing),
        ("user_caps_env_cwd", test_user_caps_env_cwd),
        (
            "masked_readonly_sysctl_rlimits",
            test_masked_readonly_sysctl_rlimits,
        ),
        ("update_stats_pause", test_update_stats_pause),
        ("user_namespace", test_user_namespace),
        ("shared_pid_namespace", test_shared_pid_namespace),
    ];
    if !nix::unistd::geteuid().is_root() {
        println!("engine lifecycle tests skipped: they need root");
        return;
    }
    let filter = args.iter().skip(1).find(|a| !a.starts_with('-')).cloned();
    let env = Env::new().expect("cannot build the test rootfs");
    let mut failed = 0;
    let mut ran = 0;
    for (name, t) in tests {
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        ran += 1;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t(&env)));
        match r {
            Ok(Ok(())) => println!("test {name} ... ok"),
            Ok(Err(e)) => {
                failed += 1;
                println!("test {name} ... FAILED: {e:#}");
            }
            Err(_) => {
                failed += 1;
                println!("test {name} ... FAILED (panic)");
            }
        }
    }
    let left = mounts_under(&env.base);
    if !left.is_empty() {
        failed += 1;
        println!("mounts left behind: {left:?}");
    }
    println!("{ran} tests, {failed} failed");
    drop(env);
    if failed > 0 {
        std::process::exit(1);
    }
}
