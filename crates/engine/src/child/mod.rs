//! The setup process: what the re-executed engine binary runs.
//!
//! [`run`] is entered in a fresh, single-threaded process whose fd 3 is the
//! sync socket to the engine. It receives the [`Setup`], joins and creates
//! namespaces, forks the container process (so that a new pid namespace
//! applies to it; not needed when the engine started this process in the
//! container's pid namespace already) and exits; the container process finishes the setup, tells
//! the engine it is ready and then waits for start (init) or execs at once.
//! See `docs/engine.md` for the order of the steps.

mod rootfs;
mod seccomp;

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxCapabilities, LinuxNamespaceType, Process};

use crate::setup::{Kind, Setup};
use crate::sync::{recv, send, ToChild, ToParent};

/// Environment variable naming the sync socket fd (default 3).
pub const SYNC_FD_ENV: &str = "_ENGINE_SYNC_FD";

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Entry point of the re-executed binary. Never returns: the process either
/// becomes the container process (exec) or exits.
pub fn run() -> ! {
    let fd = std::env::var(SYNC_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(3);
    // Nothing inherited from the engine may leak into the container.
    // SAFETY: close_range only changes fd flags.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    // SAFETY: the engine passes the sync socket at this fd; we own it from here.
    let mut sock = unsafe { UnixStream::from_raw_fd(fd) };
    // The console socket of a terminal process (see crate::console); owned from here too.
    let mut console = std::env::var(crate::console::CONSOLE_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|fd| *fd > 2 && *fd != sock.as_raw_fd())
        // SAFETY: the engine passes the console socket at this fd and nothing else uses it.
        .map(|fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
    // A spare (started ahead of need) gets its stdio and console socket when it is used.
    if std::env::var_os(crate::container::SPARE_ENV).is_some() {
        match receive_stdio(&sock) {
            Ok(c) => console = c,
            Err(_) => exit(1),
        }
    }
    let setup = match recv::<ToChild>(&mut sock) {
        Ok(Some(ToChild::Setup(s))) => *s,
        _ => exit(1),
    };
    let cgroups = match stage1(&mut sock, &setup) {
        Ok(Some(c)) => c,
        Ok(None) => exit(0),
        Err(e) => fail(&mut sock, e),
    };
    let exec = match stage2(&mut sock, &setup, &cgroups, console) {
        Ok(x) => x,
        Err(e) => fail(&mut sock, e),
    };
    drop(sock);
    exec.run()
}

/// A spare's stdio: one byte carrying stdin, stdout, stderr and maybe the console socket, put on
/// 0-2 (the console socket stays where it arrived, close-on-exec). Blocks until the engine uses
/// this process; the end of the socket (the engine gave it up or died) ends it.
fn receive_stdio(sock: &UnixStream) -> Result<Option<std::os::fd::OwnedFd>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let msg = loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r?,
        }
    };
    if msg.bytes != 1 {
        bail!("the engine went away");
    }
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(list) = c {
            // SAFETY: the kernel installed these descriptors for this process only.
            fds.extend(
                list.into_iter()
                    .map(|fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if fds.len() < 3 {
        bail!("the engine sent {} descriptors for the stdio", fds.len());
    }
    let console = if fds.len() > 3 { fds.pop() } else { None };
    for (target, fd) in fds.iter().enumerate() {
        nix::unistd::dup2(fd.as_raw_fd(), target as i32).context("cannot place the stdio")?;
    }
    Ok(console)
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit is always safe; skips atexit handlers of the engine binary.
    unsafe { libc::_exit(code) }
}

fn fail(sock: &mut UnixStream, e: anyhow::Error) -> ! {
    let _ = send(sock, &ToParent::Error(format!("{e:#}")));
    exit(1)
}

fn expect_ok(sock: &mut UnixStream) -> Result<()> {
    match recv::<ToChild>(sock).context("the engine went away")? {
        Some(ToChild::Ok) => Ok(()),
        Some(ToChild::Abort(m)) => Err(anyhow!(m)),
        _ => bail!("the engine went away"),
    }
}

/// The clone flag of a namespace type (the OCI type's value is the flag). Kept as is: nix's
/// `CloneFlags` has no `CLONE_NEWTIME`, and truncating would turn a time namespace into none.
fn ns_flag(t: LinuxNamespaceType) -> CloneFlags {
    CloneFlags::from_bits_retain(t as i32)
}

fn ns_file(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

fn same_ns(fd: &File, t: LinuxNamespaceType) -> bool {
    let own = std::fs::metadata(format!("/proc/self/ns/{}", ns_file(t)));
    match (fd.metadata(), own) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// Intermediate process: limits, namespaces, fork (only when the pid namespace of its children
/// changed). Returns `None` in the intermediate (which then exits) and the cgroup dirs in the
/// container process.
fn stage1(sock: &mut UnixStream, setup: &Setup) -> Result<Option<Vec<rootfs::CgroupDir>>> {
    let p = &setup.process;
    if let Some(adj) = p.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .context("cannot set oom_score_adj")?;
    }
    for rl in p.rlimits().iter().flatten() {
        let name = serde_json::to_value(rl.typ())?
            .as_str()
            .unwrap_or_default()
            .to_string();
        let res = rlimit_resource(&name).ok_or_else(|| anyhow!("unknown rlimit {name}"))?;
        let lim = libc::rlimit {
            rlim_cur: rl.soft(),
            rlim_max: rl.hard(),
        };
        // SAFETY: setrlimit with a valid struct.
        if unsafe { libc::setrlimit(res as _, &lim) } != 0 {
            bail!("cannot set {name}: {}", std::io::Error::last_os_error());
        }
    }
    // Keeps other processes of the container from ptrace-ing or opening
    // /proc/<pid>/exe of this process while it still has the engine's view.
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };

    let cgroups = if setup.kind == Kind::Init {
        rootfs::cgroup_v1_dirs()
    } else {
        Vec::new()
    };

    // Open every namespace to join first: joining the mount namespace changes
    // how the remaining paths resolve.
    let mut join = Vec::new();
    for ns in &setup.namespaces {
        if let Some(path) = &ns.path {
            let f = File::open(path)
                .with_context(|| format!("cannot open the namespace {}", path.display()))?;
            join.push((ns.typ, f));
        }
    }
    let order = [
        LinuxNamespaceType::User,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Cgroup,
        LinuxNamespaceType::Time,
        LinuxNamespaceType::Mount,
    ];
    let mut userns = false;
    // Whether this process changed a namespace that applies to its children only (pid): then only
    // a child of it is where the container process belongs. (A time namespace applies to
    // children too, but setns(2) moves the caller itself into one: see below.)
    let mut for_children = false;
    for t in order {
        if t == LinuxNamespaceType::User && setup.creates(t) {
            nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
                .context("cannot create a user namespace")?;
            send(sock, &ToParent::NeedIdMaps)?;
            expect_ok(sock)?;
            userns = true;
        }
        for (typ, f) in join.iter().filter(|(typ, _)| *typ == t) {
            if same_ns(f, *typ) {
                continue;
            }
            nix::sched::setns(f, ns_flag(*typ))
                .with_context(|| format!("cannot join the {} namespace", ns_file(*typ)))?;
            userns |= *typ == LinuxNamespaceType::User;
            for_children |= *typ == LinuxNamespaceType::Pid;
        }
        if userns && t == LinuxNamespaceType::User {
            // Become root of the user namespace (needs uid/gid 0 to be mapped).
            nix::unistd::setresgid(0.into(), 0.into(), 0.into())
                .context("cannot become gid 0 in the user namespace")?;
            nix::unistd::setresuid(0.into(), 0.into(), 0.into())
                .context("cannot become uid 0 in the user namespace")?;
        }
    }
    let mut flags = CloneFlags::empty();
    for ns in &setup.namespaces {
        if ns.path.is_none() && ns.typ != LinuxNamespaceType::User {
            flags |= ns_flag(ns.typ);
        }
    }
    // Pid 1 already: the engine started this process in a new pid namespace of its own (only it
    // can have, as it is this process's parent in an older one).
    if nix::unistd::getpid().as_raw() == 1 {
        flags.remove(CloneFlags::CLONE_NEWPID);
    }
    if !flags.is_empty() {
        nix::sched::unshare(flags).context("cannot create the namespaces")?;
    }
    let new_time = CloneFlags::from_bits_retain(libc::CLONE_NEWTIME);
    if flags.contains(new_time) {
        // unshare(2) made the time namespace for this process's children; joining it moves this
        // (single-threaded) process in as well, so no fork is needed for it. That matters when
        // this process is already pid 1 of the container's new pid namespace: a child of it
        // would die with it.
        let f = File::open("/proc/self/ns/time_for_children")
            .context("cannot open the new time namespace")?;
        nix::sched::setns(&f, new_time).context("cannot enter the new time namespace")?;
    }
    for_children |= flags.contains(CloneFlags::CLONE_NEWPID);
    if !for_children {
        // Already in the container's pid namespace (the engine started this process there, or
        // the container has none of its own): this process becomes the container process.
        send(sock, &ToParent::NoFork)?;
        return Ok(Some(cgroups));
    }
    // SAFETY: this process is single-threaded (a fresh exec that started no threads).
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => Ok(Some(cgroups)),
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            send(sock, &ToParent::Pid(child.as_raw()))?;
            Ok(None)
        }
        Err(nix::errno::Errno::ENOMEM) if setup.kind == Kind::Exec => {
            bail!("the container's pid namespace has no init process any more")
        }
        Err(e) => Err(e).context("cannot fork the container process"),
    }
}

/// Everything left to do after the sync socket is closed.
struct Exec {
    path: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    /// Init only: the read side of the start FIFO (opened non-blocking).
    fifo: Option<File>,
    start_hooks: Vec<oci_spec::runtime::Hook>,
    state: Vec<u8>,
    /// Loaded right before exec (no_new_privileges set).
    late_seccomp: Option<libseccomp::ScmpFilterContext>,
}

impl Exec {
    fn run(self) -> ! {
        if let Some(fifo) = &self.fifo {
            wait_for_start(fifo);
            if let Err(e) = crate::hooks::run_in_child(&self.start_hooks, &self.state) {
                die(&format!("startContainer hook failed: {e:#}"));
            }
        }
        drop(self.fifo);
        if let Some(f) = &self.late_seccomp {
            if let Err(e) = f.load() {
                die(&format!("cannot load the seccomp filter: {e}"));
            }
        }
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.env.iter().map(|a| a.as_ptr()).collect();
        envp.push(std::ptr::null());
        // SAFETY: NULL-terminated arrays of valid C strings that outlive the call.
        unsafe { libc::execve(self.path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(1);
        exit(errno)
    }
}

/// Blocks until StartContainer writes its byte. Until a writer has come and
/// gone, Linux reports no hang-up on a FIFO's read side, so poll waits for
/// the byte (or for a writer that closed without writing: then give up).
fn wait_for_start(fifo: &File) {
    let mut pfd = libc::pollfd {
        fd: fifo.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: poll on one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            die("cannot wait on the start FIFO");
        }
        let mut b = [0u8; 1];
        match (&*fifo).read(&mut b) {
            Ok(1) => return,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            _ => exit(1),
        }
    }
}

fn die(msg: &str) -> ! {
    let _ = nix::unistd::write(std::io::stderr(), format!("{msg}\n").as_bytes());
    exit(1)
}

/// The container process: rootfs, hooks, identity, security, then ready.
fn stage2(
    sock: &mut UnixStream,
    setup: &Setup,
    cgroups: &[rootfs::CgroupDir],
    console: Option<std::os::fd::OwnedFd>,
) -> Result<Exec> {
    expect_ok(sock)?;
    let spec = &setup.spec;
    let p = &setup.process;
    let init = setup.kind == Kind::Init;

    if init && setup.creates(LinuxNamespaceType::Uts) {
        if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
            nix::unistd::sethostname(h).context("cannot set the hostname")?;
        }
        if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
            // SAFETY: pointer and length of a live byte string.
            if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
                bail!(
                    "cannot set the domainname: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }

    let rootfs_path = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .ok_or_else(|| anyhow!("the spec has no root"))?;
    let new_mnt = init && setup.creates(LinuxNamespaceType::Mount);
    let prepared = if new_mnt {
        Some(rootfs::prepare(setup, &rootfs_path, cgroups)?)
    } else {
        None
    };

    let mut fifo = None;
    if init {
        // Opened now (a non-blocking open of the read side succeeds without a
        // writer), so that StartContainer finds a reader from the moment the
        // engine hears "ready", and fails fast once the reader is gone.
        let path = setup.bundle.join("exec.fifo");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .with_context(|| format!("cannot open the start FIFO {}", path.display()))?;
        fifo = Some(f);
        send(sock, &ToParent::RunHooks)?;
        expect_ok(sock)?;
        let state = crate::hooks::state_json(
            spec,
            &setup.id,
            "created",
            std::process::id() as i32,
            &setup.bundle,
        );
        if let Some(hooks) = spec
            .hooks()
            .as_ref()
            .and_then(|h| h.create_container().clone())
        {
            crate::hooks::run_in_child(&hooks, &state).context("a createContainer hook failed")?;
        }
    }

    if let Some(prepared) = &prepared {
        rootfs::pivot(&rootfs_path, setup.no_pivot)?;
        rootfs::finish(setup, prepared, p.cwd())?;
    }

    let umask = p.user().umask().unwrap_or(0o022);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask as _));

    let cwd = p.cwd();
    if !cwd.as_os_str().is_empty() {
        nix::unistd::chdir(cwd)
            .with_context(|| format!("cannot change to the working directory {}", cwd.display()))?;
        let now = std::env::current_dir().unwrap_or_default();
        if !now.is_absolute() || now.starts_with("(unreachable)") {
            bail!(
                "the working directory {} is outside the container root",
                cwd.display()
            );
        }
    }

    if p.terminal().unwrap_or(false) {
        // The pty comes from this root's /dev/ptmx (the container's devpts), not the engine's.
        let console =
            console.ok_or_else(|| anyhow!("a terminal process needs a console socket"))?;
        let size = p.console_size().as_ref().map(|b| (b.height(), b.width()));
        crate::console::attach_in_child(console, size).context("cannot set up the terminal")?;
    }
    nix::unistd::setsid().context("cannot create a session")?;
    if p.terminal().unwrap_or(false) {
        // SAFETY: ioctl on fd 0 with an integer argument.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
            bail!(
                "cannot make the terminal the controlling terminal: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    let user = p.user();
    if user.uid() != 0 {
        for fd in 0..3 {
            if !is_dev_null(fd) {
                // Best effort: the process must be able to reopen its stdio.
                // SAFETY: fchown on a standard fd.
                unsafe { libc::fchown(fd, user.uid(), user.gid()) };
            }
        }
    }

    let nnp = p.no_new_privileges().unwrap_or(false);
    let filter = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(profile) => Some(seccomp::build(profile)?),
        None => None,
    };

    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    let gids: Vec<nix::unistd::Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    if let Err(e) = nix::unistd::setgroups(&gids) {
        // A user namespace with setgroups denied cannot do it; only a real
        // list of groups makes that an error.
        if !gids.is_empty() || e != nix::errno::Errno::EPERM {
            return Err(e).context("cannot set the supplementary groups");
        }
    }
    let gid = nix::unistd::Gid::from_raw(user.gid());
    let uid = nix::unistd::Uid::from_raw(user.uid());
    nix::unistd::setresgid(gid, gid, gid).with_context(|| format!("cannot switch to gid {gid}"))?;
    nix::unistd::setresuid(uid, uid, uid).with_context(|| format!("cannot switch to uid {uid}"))?;
    if user.uid() != 0 {
        // setuid cleared the effective set; the remaining steps need it.
        let permitted = caps::read(None, caps::CapSet::Permitted)?;
        caps::set(None, caps::CapSet::Effective, &permitted)?;
    }
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };

    if nnp {
        // SAFETY: plain prctl.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            bail!(
                "cannot set no_new_privs: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let empty = LinuxCapabilities::default();
    let c = p.capabilities().as_ref().unwrap_or(&empty);
    let none = p.capabilities().is_none();
    let set_of = |s: &Option<oci_spec::runtime::Capabilities>| -> caps::CapsHashSet {
        if none {
            return caps::CapsHashSet::new();
        }
        s.iter()
            .flatten()
            .filter_map(|c| {
                let name = serde_json::to_value(c).ok()?.as_str()?.to_string();
                caps::Capability::from_str(&name).ok()
            })
            .collect()
    };
    let supported = caps::runtime::thread_all_supported();
    let bounding = set_of(c.bounding());
    for cap in &supported {
        if !bounding.contains(cap) {
            caps::drop(None, caps::CapSet::Bounding, *cap)
                .with_context(|| format!("cannot drop {cap} from the bounding set"))?;
        }
    }
    let mut late_seccomp = None;
    if let Some(f) = filter {
        if nnp {
            late_seccomp = Some(f);
        } else {
            f.load().context("cannot load the seccomp filter")?;
        }
    }
    let keep = |s| -> caps::CapsHashSet { set_of(s).intersection(&supported).copied().collect() };
    caps::set(None, caps::CapSet::Inheritable, &keep(c.inheritable()))
        .context("cannot set the inheritable capabilities")?;
    caps::set(None, caps::CapSet::Effective, &keep(c.effective()))
        .context("cannot set the effective capabilities")?;
    caps::set(None, caps::CapSet::Permitted, &keep(c.permitted()))
        .context("cannot set the permitted capabilities")?;
    let _ = caps::clear(None, caps::CapSet::Ambient);
    for cap in keep(c.ambient()) {
        // Ambient capabilities must also be permitted and inheritable; skip the rest.
        let _ = caps::raise(None, caps::CapSet::Ambient, cap);
    }

    let env = build_env(p);
    let args = p.args().clone().unwrap_or_default();
    let arg0 = args
        .first()
        .ok_or_else(|| anyhow!("the process has no arguments"))?;
    let path =
        find_executable(arg0, &env).ok_or_else(|| anyhow!("the file {arg0} was not found"))?;

    let state = crate::hooks::state_json(
        spec,
        &setup.id,
        "created",
        std::process::id() as i32,
        &setup.bundle,
    );
    let start_hooks = if init {
        spec.hooks()
            .as_ref()
            .and_then(|h| h.start_container().clone())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    send(sock, &ToParent::Ready)?;
    Ok(Exec {
        path: CString::new(path.as_os_str().as_bytes())?,
        argv: args
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()?,
        env: env
            .into_iter()
            .map(|(k, v)| CString::new(format!("{k}={v}")))
            .collect::<Result<_, _>>()?,
        fifo,
        start_hooks,
        state,
        late_seccomp,
    })
}

fn is_dev_null(fd: i32) -> bool {
    let Ok(st) = nix::sys::stat::fstat(fd) else {
        return true;
    };
    let Ok(null) = nix::sys::stat::stat("/dev/null") else {
        return false;
    };
    st.st_rdev == null.st_rdev && (st.st_mode & libc::S_IFMT) == libc::S_IFCHR
}

/// The process environment: exactly `process.env` (entries without `=`, with
/// an empty key or a NUL are skipped), plus `HOME` when missing.
fn build_env(p: &Process) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for kv in p.env().iter().flatten() {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        if k.is_empty() || kv.contains('\0') {
            continue;
        }
        if let Some(e) = env.iter_mut().find(|(ek, _)| ek == k) {
            e.1 = v.to_string();
        } else {
            env.push((k.to_string(), v.to_string()));
        }
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        let home = passwd_home(p.user().uid()).unwrap_or_else(|| "/".to_string());
        env.push(("HOME".to_string(), home));
    }
    env
}

fn passwd_home(uid: u32) -> Option<String> {
    let text = read_account_file(Path::new("/etc/passwd"))?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[5].to_string())
    })
}

/// Largest account database (`/etc/passwd`, `/etc/group`) read.
const MAX_ACCOUNT_FILE: u64 = 4 << 20;

/// Reads an account database of the image without ever blocking on it: the file is opened
/// non-blocking, without following a final symlink and without becoming a controlling terminal,
/// and anything but a regular file (a FIFO, a device, a socket) is refused, as is a file larger
/// than [`MAX_ACCOUNT_FILE`].
fn read_account_file(path: &Path) -> Option<String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let meta = f.metadata().ok()?;
    if !meta.file_type().is_file() || meta.len() > MAX_ACCOUNT_FILE {
        return None;
    }
    let mut text = String::new();
    f.take(MAX_ACCOUNT_FILE).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Resolves `arg0` like execvp, with the PATH of the new environment.
fn find_executable(arg0: &str, env: &[(String, String)]) -> Option<PathBuf> {
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        return p.exists().then_some(p);
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .map(|d| Path::new(if d.is_empty() { "." } else { d }).join(OsStr::new(arg0)))
        .find(|c| {
            std::fs::metadata(c)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment() {
        let mut p = Process::default();
        p.set_env(Some(vec![
            "A=1".into(),
            "B".into(),
            "=x".into(),
            "A=2".into(),
            "HOME=/h".into(),
            "C=a=b".into(),
        ]));
        let env = build_env(&p);
        assert_eq!(
            env,
            vec![
                ("A".to_string(), "2".to_string()),
                ("HOME".to_string(), "/h".to_string()),
                ("C".to_string(), "a=b".to_string())
            ]
        );
    }

    #[test]
    fn account_files_never_block_and_must_be_regular() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("passwd");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        // A FIFO without a writer would block a plain open forever.
        assert_eq!(read_account_file(&fifo), None);
        let link = dir.path().join("link");
        let real = dir.path().join("real");
        std::fs::write(&real, "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(read_account_file(&link), None);
        assert!(read_account_file(&real).unwrap().contains("/root"));
        assert_eq!(read_account_file(Path::new("/dev/zero")), None);
    }

    #[test]
    fn executable_lookup() {
        let env = vec![("PATH".to_string(), "/nonexistent:/bin".to_string())];
        assert_eq!(find_executable("sh", &env), Some(PathBuf::from("/bin/sh")));
        assert_eq!(find_executable("no-such-binary-x", &env), None);
        assert_eq!(
            find_executable("/bin/sh", &[]),
            Some(PathBuf::from("/bin/sh"))
        );
    }

    #[test]
    fn rlimit_names() {
        let n = serde_json::to_value(oci_spec::runtime::PosixRlimitType::RlimitNofile).unwrap();
        assert_eq!(
            rlimit_resource(n.as_str().unwrap()),
            Some(libc::RLIMIT_NOFILE)
        );
    }
}
