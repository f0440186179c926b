//! Setting a container process up: the setup process is started from the sealed copy of the
//! program and driven through the sync protocol (`docs/engine.md`); every process it starts is
//! tracked by the call's [`Cancel`].

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Hook, LinuxNamespaceType, Spec};

use super::{cgroup_err, hooks_of, kill, other, CONSOLE_WAIT, ROLLBACK_WAIT, SETUP_TIMEOUT};
use super::{spare, vspawn};
use crate::cancel::Cancel;
use crate::cgroups::Cgroup;
use crate::reaper::{self, ExitWatch};
use crate::setup::Setup;
use crate::sync::{recv, send, ToChild, ToParent};
use crate::{Error, Result, Stdio};

/// Poststart hooks of a started container, run by [`PostStart::run`] outside any lock.
#[derive(Debug)]
pub struct PostStart {
    pub(super) id: String,
    pub(super) hooks: Vec<Hook>,
    pub(super) state: Vec<u8>,
}

impl PostStart {
    /// Runs the hooks; a failure is logged (the container runs on, as the OCI spec says).
    pub fn run(self) {
        if let Err(e) = crate::hooks::run_in_engine(&self.hooks, &self.state) {
            tracing::warn!("container {}: poststart hook failed: {e:#}", self.id);
        }
    }
}

/// An exec, prepared by [`Container::prepare_exec`]: owns everything the set-up needs.
#[derive(Debug)]
pub struct ExecPlan {
    pub(super) exe: PathBuf,
    pub(super) args: Vec<String>,
    pub(super) setup: Setup,
    pub(super) cgroup: Cgroup,
    pub(super) bundle: PathBuf,
    /// Namespace descriptors named by `setup.namespaces` (as `/proc/<pid>/fd/<n>`).
    pub(super) _pinned: Vec<File>,
}

impl ExecPlan {
    /// Sets the process up and returns once it is about to exec. `cancel` abandons the set-up
    /// (its processes are killed and the call fails).
    pub fn spawn(self, stdio: Stdio, cancel: &Cancel) -> Result<(i32, ExitWatch, Option<OwnedFd>)> {
        // The container's pid namespace: the setup process is started in it, so it becomes the
        // container process itself (no fork, one process image fewer per exec).
        let pid_ns = match self
            .setup
            .namespaces
            .iter()
            .position(|n| n.typ == LinuxNamespaceType::Pid)
            .and_then(|i| self._pinned.get(i))
        {
            Some(f) => PidNs::Join(f),
            None => PidNs::Same,
        };
        let cgroup = self.cgroup.clone();
        spawn(
            &self.exe,
            &self.args,
            &self.setup,
            SpawnIo { stdio, pid_ns },
            move || Ok(cgroup),
            &self.setup.spec,
            &self.bundle,
            cancel,
        )
        .map(|(pid, exit, master, _)| (pid, exit, master))
    }
}

/// What the setup process is started with besides its program.
pub(super) struct SpawnIo<'a> {
    /// The container's stdio.
    pub(super) stdio: Stdio,
    /// The pid namespace it is born in.
    pub(super) pid_ns: PidNs<'a>,
}

/// Where the setup process is born. Born where the container process belongs, it becomes the
/// container process itself instead of forking it (one process image fewer per container).
pub(super) enum PidNs<'a> {
    /// The agent's (the setup process forks if the container needs another).
    Same,
    /// An existing one (an exec into a container).
    Join(&'a File),
    /// A new one, with the setup process as its pid 1 (a container with a pid namespace of its
    /// own and no user namespace, which would have to own it).
    New,
}

/// Runs `spawn` on a thread of its own that first changes the pid namespace of its children
/// (`setns`/`unshare` with `CLONE_NEWPID` change only where the caller's future children are
/// born), so that the process it starts is born there. The thread ends with the spawn, so no
/// agent thread is left starting processes there; its child is then the agent's like any other.
fn in_pid_ns<T: Send>(
    ns: &PidNs<'_>,
    spawn: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    let enter = || match ns {
        PidNs::Same => Ok(()),
        PidNs::Join(f) => nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWPID).map_err(|e| {
            std::io::Error::other(format!("cannot enter the container's pid namespace: {e}"))
        }),
        PidNs::New => nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID).map_err(|e| {
            std::io::Error::other(format!("cannot create the container's pid namespace: {e}"))
        }),
    };
    if matches!(ns, PidNs::Same) {
        return spawn();
    }
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("spawn-in-pidns".into())
            .spawn_scoped(s, || {
                enter()?;
                spawn().map_err(|e| match e.raw_os_error() {
                    // clone(2) into a pid namespace whose init is gone.
                    Some(libc::ENOMEM) => std::io::Error::other(
                        "the container's pid namespace has no init process any more",
                    ),
                    _ => e,
                })
            })?
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the spawning thread panicked")))
    })
}

/// Starts the setup process from `sealed`: the container's stdio on 0-2 (`/dev/null` where a
/// stream is not given), the sync socket on 3, the console socket (if any) on
/// [`crate::console::CONSOLE_FD`]. Returns its pid, already watched by the reaper.
fn spawn_setup(
    sealed: &Path,
    args: &[String],
    io: SpawnIo<'_>,
    sync_fd: RawFd,
    console_fd: Option<RawFd>,
) -> std::io::Result<(i32, ExitWatch)> {
    let SpawnIo { stdio, pid_ns } = io;
    let (std_fds, _null) = stdio_fds(&stdio)?;
    let mut fds = vec![
        (std_fds[0], 0),
        (std_fds[1], 1),
        (std_fds[2], 2),
        (sync_fd, 3),
    ];
    let mut env = vec![(crate::child::SYNC_FD_ENV, "3".to_string())];
    if let Some(fd) = console_fd {
        fds.push((fd, crate::console::CONSOLE_FD));
        env.push((
            crate::console::CONSOLE_FD_ENV,
            crate::console::CONSOLE_FD.to_string(),
        ));
    }
    // Registered with the reaper under its lock, so an immediate exit is not reaped unwatched.
    let _g = reaper::guard();
    let pid = in_pid_ns(&pid_ns, || vspawn::spawn(sealed, args, &env, &fds))?;
    Ok((pid, reaper::watch_new(pid)))
}

/// Starts a setup process with its sync socket and console socket in place; returns it and the
/// engine's end of the sync socket.
fn start_fresh(
    sealed: &Path,
    args: &[String],
    io: SpawnIo<'_>,
    console: Option<RawFd>,
) -> std::io::Result<(i32, ExitWatch, UnixStream)> {
    let (parent, child) = UnixStream::pair()?;
    // Close-on-exec and away from the low numbers the setup process gets.
    let dup_high = |fd: RawFd| -> std::io::Result<OwnedFd> {
        let n = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))?;
        // SAFETY: n was just duplicated for us and is owned by nothing else.
        Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n) })
    };
    let child_fd = dup_high(child.as_raw_fd())?;
    drop(child);
    let console_fd = console.map(dup_high).transpose()?;
    let (pid, exit) = spawn_setup(
        sealed,
        args,
        io,
        child_fd.as_raw_fd(),
        console_fd.as_ref().map(AsRawFd::as_raw_fd),
    )?;
    Ok((pid, exit, parent))
}

/// Gives a spare setup process the stdio of the process it is to become (`/dev/null` where a
/// stream is not given) and the console socket, if any.
fn hand_to_spare(sp: &spare::Spare, stdio: &Stdio, console: Option<RawFd>) -> std::io::Result<()> {
    let (std_fds, _null) = stdio_fds(stdio)?;
    let mut fds = std_fds.to_vec();
    fds.extend(console);
    spare::hand_over(&sp.sock, &fds)
}

/// The descriptors a process gets as stdin, stdout and stderr: the given streams, `/dev/null`
/// for those not given (the returned descriptor, kept open until they are passed on).
fn stdio_fds(stdio: &Stdio) -> std::io::Result<([RawFd; 3], Option<OwnedFd>)> {
    let null = match (&stdio.stdin, &stdio.stdout, &stdio.stderr) {
        (Some(_), Some(_), Some(_)) => None,
        _ => Some(OwnedFd::from(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?,
        )),
    };
    let pick = |fd: &Option<OwnedFd>| {
        fd.as_ref()
            .or(null.as_ref())
            .map(AsRawFd::as_raw_fd)
            .unwrap_or(-1)
    };
    Ok((
        [pick(&stdio.stdin), pick(&stdio.stdout), pick(&stdio.stderr)],
        null,
    ))
}

/// Writes `/proc/<pid>/{uid,gid}_map` from the spec.
fn write_id_maps(pid: i32, spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    for (file, maps) in [
        ("uid_map", linux.and_then(|l| l.uid_mappings().clone())),
        ("gid_map", linux.and_then(|l| l.gid_mappings().clone())),
    ] {
        let text: String = maps
            .unwrap_or_default()
            .iter()
            .filter(|m| m.size() > 0)
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect();
        std::fs::write(format!("/proc/{pid}/{file}"), text)
            .map_err(|e| other(format!("cannot write the {file} of the container: {e}")))?;
    }
    Ok(())
}

/// Starts a setup process for `setup` and drives the sync protocol until the
/// container process is ready. On failure (or cancellation) every process started is killed.
///
/// `cgroup` gives the container's cgroup. It runs once the setup process is started, while that
/// process is still starting up (the exec of a fresh program costs about half a millisecond on
/// a small VM), so that what it has to do (create the cgroup) is off the critical path; the
/// setup process is added to the cgroup before it is told to go on.
#[allow(clippy::too_many_arguments)]
pub(super) fn spawn(
    exe: &Path,
    args: &[String],
    setup: &Setup,
    io: SpawnIo<'_>,
    cgroup: impl FnOnce() -> Result<Cgroup>,
    spec: &Spec,
    bundle: &Path,
    cancel: &Cancel,
) -> Result<(i32, ExitWatch, Option<OwnedFd>, Cgroup)> {
    reaper::start();
    cancel.check()?;
    // Never the program's own file: a container must not reach it (CVE-2019-5736).
    let sealed = crate::selfexe::sealed_path(exe)?;
    // A terminal process sends its pty master back on a socket of its own (fd 4).
    let terminal = setup.process.terminal().unwrap_or(false);
    let console = if terminal {
        Some(
            crate::console::socket_pair()
                .map_err(|e| other(format!("cannot create the console socket: {e}")))?,
        )
    } else {
        None
    };
    let theirs = console.as_ref().map(|c| c.1.as_raw_fd());
    // Spares serve execs only: a container's set-up takes the fresh path, which starts its
    // setup process in the new pid namespace directly.
    let exec = setup.kind == crate::setup::Kind::Exec;
    let spare = if exec {
        spare::take(&sealed, args)
    } else {
        None
    };
    let started = match spare {
        Some(sp) => match hand_to_spare(&sp, &io.stdio, theirs) {
            Ok(()) => {
                tracing::debug!(setup_pid = sp.pid, "exec served by the spare setup process");
                Ok((sp.pid, sp.exit.clone(), sp.sock))
            }
            Err(e) => {
                tracing::debug!("the spare setup process was not usable: {e}");
                let _ = kill(sp.pid, libc::SIGKILL);
                start_fresh(&sealed, args, io, theirs)
            }
        },
        None => start_fresh(&sealed, args, io, theirs),
    };
    // Only the setup process needed its end of the console socket.
    let console = console.map(|(ours, _theirs)| ours);
    let (mid_pid, mid_exit, mut parent) =
        started.map_err(|e| other(format!("cannot start {}: {e}", exe.display())))?;
    // The next exec finds a spare waiting (if one is wanted).
    if exec {
        spare::refill(&sealed, args);
    }
    cancel.track(&mid_exit);

    let cgroup = match cgroup() {
        Ok(c) => c,
        Err(e) => {
            let _ = kill(mid_pid, libc::SIGKILL);
            let _ = mid_exit.wait_timeout(ROLLBACK_WAIT);
            cancel.untrack(mid_pid);
            return Err(e);
        }
    };
    let mut grandchild: Option<(i32, ExitWatch)> = None;
    let result = drive(
        &mut parent,
        (mid_pid, &mid_exit),
        setup,
        &cgroup,
        spec,
        bundle,
        &mut grandchild,
        cancel,
    )
    .and_then(|()| match &console {
        // Sent before "ready": already queued, or the container process is gone.
        Some(sock) => crate::console::recv_master(sock.as_fd(), CONSOLE_WAIT)
            .map(Some)
            .map_err(|e| other(format!("cannot receive the terminal: {e}"))),
        None => Ok(None),
    });
    // A cancelled set-up fails whatever it reports: its processes are (being) killed.
    let result = match (result, cancel.is_cancelled()) {
        (_, true) => Err(cancel.error()),
        (r, false) => r,
    };
    match result {
        Ok(master) => match grandchild {
            // No fork: the setup process is the container process.
            Some(g) if g.0 == mid_pid => {
                cancel.untrack(mid_pid);
                Ok((g.0, g.1, master, cgroup))
            }
            Some(g) => {
                cancel.untrack(mid_pid);
                cancel.untrack(g.0);
                // The intermediate has reported everything and exits; reap it before returning
                // so that no exec leaves a zombie or an exit record behind.
                let _ = mid_exit.wait_timeout(ROLLBACK_WAIT);
                Ok((g.0, g.1, master, cgroup))
            }
            None => {
                let _ = kill(mid_pid, libc::SIGKILL);
                let _ = mid_exit.wait_timeout(ROLLBACK_WAIT);
                Err(other(
                    "the setup process never reported the container process",
                ))
            }
        },
        Err(e) => {
            let _ = kill(mid_pid, libc::SIGKILL);
            if let Some((pid, exit)) = grandchild.as_ref().filter(|g| g.0 != mid_pid) {
                let _ = kill(*pid, libc::SIGKILL);
                let _ = exit.wait_timeout(ROLLBACK_WAIT);
            }
            let _ = mid_exit.wait_timeout(ROLLBACK_WAIT);
            cancel.untrack(mid_pid);
            if let Some((pid, _)) = grandchild.as_ref().filter(|g| g.0 != mid_pid) {
                cancel.untrack(*pid);
            }
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn drive(
    sock: &mut UnixStream,
    (mid_pid, mid_exit): (i32, &ExitWatch),
    setup: &Setup,
    cgroup: &Cgroup,
    spec: &Spec,
    bundle: &Path,
    grandchild: &mut Option<(i32, ExitWatch)>,
    cancel: &Cancel,
) -> Result<()> {
    cgroup.add_pid(mid_pid).map_err(cgroup_err)?;
    sock.set_read_timeout(Some(SETUP_TIMEOUT)).map_err(other)?;
    send(sock, &ToChild::Setup(Box::new(setup.clone())))
        .map_err(|e| other(format!("cannot send the setup data: {e}")))?;
    loop {
        let msg = recv::<ToParent>(sock)
            .map_err(|e| other(format!("the setup of the container process failed: {e}")))?;
        match msg {
            None => {
                return Err(other(
                    "the container process exited during setup without reporting an error",
                ));
            }
            Some(ToParent::Error(m)) => return Err(Error::Other(m)),
            Some(ToParent::NeedIdMaps) => {
                let reply = match write_id_maps(mid_pid, spec) {
                    Ok(()) => ToChild::Ok,
                    Err(e) => {
                        let _ = send(sock, &ToChild::Abort(e.to_string()));
                        return Err(e);
                    }
                };
                send(sock, &reply).map_err(other)?;
            }
            Some(ToParent::Pid(pid)) => {
                let watch = reaper::watch(pid);
                *grandchild = Some((pid, watch.clone()));
                if !cancel.track(&watch) {
                    return Err(cancel.error());
                }
                send(sock, &ToChild::Ok).map_err(other)?;
            }
            Some(ToParent::NoFork) => {
                *grandchild = Some((mid_pid, mid_exit.clone()));
                send(sock, &ToChild::Ok).map_err(other)?;
            }
            Some(ToParent::RunHooks) => {
                let pid = grandchild.as_ref().map(|g| g.0).unwrap_or(0);
                let state = crate::hooks::state_json(spec, &setup.id, "created", pid, bundle);
                #[allow(deprecated)]
                let mut hooks = hooks_of(spec, |h| h.prestart());
                hooks.extend(hooks_of(spec, |h| h.create_runtime()));
                if let Err(e) =
                    crate::hooks::run_in_engine_cancellable(&hooks, &state, Some(cancel))
                {
                    let msg = format!("a prestart or createRuntime hook failed: {e:#}");
                    let _ = send(sock, &ToChild::Abort(msg.clone()));
                    return Err(Error::Other(msg));
                }
                send(sock, &ToChild::Ok).map_err(other)?;
            }
            Some(ToParent::Ready) => return Ok(()),
        }
    }
}
