//! A setup process started ahead of need.
//!
//! Every exec'd image pays the C library's start-up before its first system call, half a
//! millisecond on a small VM (glibc reads the cache geometry with `cpuid`, a VM exit each; see
//! `docs/benchmarks.md`). An exec pays it twice: for the setup process and for the command. The
//! spare takes the first one off the critical path: it is started (fresh exec of the sealed copy,
//! single-threaded, as any setup process) once a container exists, and waits on its sync socket.
//! An exec then hands it the process's stdio (and console socket) with `SCM_RIGHTS`, then the
//! `Setup`; being born in the agent's pid namespace, it forks into the container's, as a setup
//! process that was not started there always did.
//!
//! The spare is the engine's child like any setup process, in no container's cgroup or namespace
//! until it is used, and it serves execs only. [`keep`] allows one (once a container exists); each
//! exec then starts the spare for the next one (a container that is only created, run and removed
//! never gets one);
//! [`clear`] kills it (when the last container is gone, so that nothing of the engine outlives its
//! containers); a spare whose agent dies sees its sync socket close and exits.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use super::{kill, vspawn, ROLLBACK_WAIT};
use crate::reaper::{self, ExitWatch};

/// Environment variable that tells a setup process to receive its stdio over the sync socket.
pub const SPARE_ENV: &str = "_ENGINE_SPARE";

/// A waiting setup process.
pub(super) struct Spare {
    pub(super) pid: i32,
    pub(super) exit: ExitWatch,
    pub(super) sock: UnixStream,
    /// The program and arguments it was started with.
    key: (PathBuf, Vec<String>),
}

struct Slot {
    /// Whether a spare is wanted (some container exists).
    wanted: bool,
    spare: Option<Spare>,
}

static SLOT: Mutex<Slot> = Mutex::new(Slot {
    wanted: false,
    spare: None,
});

fn slot() -> std::sync::MutexGuard<'static, Slot> {
    SLOT.lock().unwrap_or_else(|e| e.into_inner())
}

/// The spare started from `sealed` with `args`, if one is waiting and alive.
pub(super) fn take(sealed: &Path, args: &[String]) -> Option<Spare> {
    let mut s = slot();
    let spare = s.spare.take()?;
    if spare.key.0 != sealed || spare.key.1 != args || spare.exit.try_get().is_some() {
        drop(s);
        discard(spare);
        return None;
    }
    Some(spare)
}

/// Starts a spare from `sealed` with `args` on a short-lived thread, unless one is waiting or
/// none is wanted any more.
pub(super) fn refill(sealed: &Path, args: &[String]) {
    let key = (sealed.to_path_buf(), args.to_vec());
    {
        let s = slot();
        if !s.wanted || s.spare.is_some() {
            return;
        }
    }
    let spawned = std::thread::Builder::new()
        .name("spare-setup".into())
        .stack_size(256 << 10)
        .spawn(move || {
            let mut s = slot();
            if !s.wanted || s.spare.is_some() {
                return;
            }
            match start(&key.0, &key.1) {
                Ok((pid, exit, sock)) => {
                    s.spare = Some(Spare {
                        pid,
                        exit,
                        sock,
                        key,
                    })
                }
                Err(e) => tracing::debug!("no spare setup process: {e}"),
            }
        });
    if let Err(e) = spawned {
        tracing::debug!("no spare setup process: {e}");
    }
}

/// Wants a spare from now on (a container exists); the next exec starts one for the one after.
pub fn keep() {
    slot().wanted = true;
}

/// Wants no spare any more and ends the waiting one (the last container is gone).
pub fn clear() {
    let spare = {
        let mut s = slot();
        s.wanted = false;
        s.spare.take()
    };
    if let Some(spare) = spare {
        discard(spare);
    }
}

fn discard(spare: Spare) {
    drop(spare.sock);
    let _ = kill(spare.pid, libc::SIGKILL);
    let _ = spare.exit.wait_timeout(ROLLBACK_WAIT);
}

/// Starts a setup process with `/dev/null` as its stdio, waiting for them on its sync socket.
fn start(sealed: &Path, args: &[String]) -> std::io::Result<(i32, ExitWatch, UnixStream)> {
    let null = OwnedFd::from(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")?,
    );
    let (parent, child) = UnixStream::pair()?;
    let child_fd = nix::fcntl::fcntl(child.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))?;
    drop(child);
    // SAFETY: child_fd was just duplicated for us and is owned by nothing else.
    let child_fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(child_fd) };
    let n = null.as_raw_fd();
    let fds = [(n, 0), (n, 1), (n, 2), (child_fd.as_raw_fd(), 3)];
    let env = [
        (crate::child::SYNC_FD_ENV, "3".to_string()),
        (SPARE_ENV, "1".to_string()),
    ];
    let _g = reaper::guard();
    let pid = vspawn::spawn(sealed, args, &env, &fds)?;
    Ok((pid, reaper::watch_new(pid), parent))
}

/// Hands a spare the stdio of its process (`fds`: stdin, stdout, stderr, then the console
/// socket if any), as one byte carrying the descriptors.
pub(super) fn hand_over(sock: &UnixStream, fds: &[RawFd]) -> std::io::Result<()> {
    let count = [fds.len() as u8];
    let iov = [std::io::IoSlice::new(&count)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}
