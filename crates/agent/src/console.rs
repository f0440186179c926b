//! The debug console (`agent.debug_console`): a root shell in the guest's own namespaces, outside
//! every container.
//!
//! * **Serial mode** (no vport): an interactive shell on the console device (`/dev/console`, or
//!   `console_path`), restarted whenever it exits so that a developer can always get back in.
//! * **Listener mode** (`agent.debug_console_vport=N`, or `KATA_AGENT_DEBUG_CONSOLE_ADDR`): every
//!   connection gets its own shell on its own pty; the session ends when the shell exits, and the
//!   shell is killed when the host disconnects.
//!
//! The shell is the first of `/run/kata-extensions/devkit/bin/devkit-sh`, `/bin/bash`,
//! `/bin/sh` that exists, run as `<shell> -i` in a new session with the terminal as its
//! controlling tty. Its exit status is collected by the engine's reaper (the agent never waits
//! for children on its own). Everything stops when [`DebugConsole::stop`] is called at shutdown.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::pin::{pin, Pin};
use std::process::{Command, Stdio};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::config::AgentConfig;
use crate::endpoint::{Listener, Stream};

/// Shells tried in order.
pub const SHELLS: [&str; 3] = [
    "/run/kata-extensions/devkit/bin/devkit-sh",
    "/bin/bash",
    "/bin/sh",
];
const SUBSYSTEM: &str = "debug-console";
/// A serial shell that lived shorter than this counts as a failed start (restart backs off).
const QUICK_EXIT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a session still forwards output after its shell exited (background jobs may keep the
/// pty open).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// The running console; stop it at shutdown.
pub struct DebugConsole {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl DebugConsole {
    /// Kills every console shell and waits (at most `timeout`) for the console tasks to end.
    pub async fn stop(self, timeout: Duration) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(timeout, self.task).await;
    }
}

/// The first shell that exists below `root` (`/` in the agent).
pub fn find_shell(root: &Path) -> Option<PathBuf> {
    SHELLS
        .iter()
        .map(|s| root.join(s.trim_start_matches('/')))
        .find(|p| p.exists())
}

/// Starts the debug console if the configuration asks for it. Must run inside the runtime.
pub fn start(cfg: &AgentConfig) -> anyhow::Result<Option<DebugConsole>> {
    if !cfg.debug_console {
        return Ok(None);
    }
    let Some(shell) = find_shell(Path::new("/")) else {
        error!(
            subsystem = SUBSYSTEM,
            "no shell found to launch debug console"
        );
        return Ok(None);
    };
    let (stop, stop_rx) = watch::channel(false);
    let task = match cfg.debug_console_endpoint()? {
        Some(endpoint) => {
            let listener = endpoint.listen().map_err(|e| {
                anyhow::anyhow!("cannot listen for the debug console on {endpoint}: {e}")
            })?;
            info!(subsystem = SUBSYSTEM, address = %endpoint, shell = %shell.display(), "debug console listening");
            tokio::spawn(serve(listener, shell, stop_rx))
        }
        None => {
            info!(subsystem = SUBSYSTEM, console = %cfg.console_path.display(), shell = %shell.display(), "debug console on the serial console");
            tokio::spawn(serial(cfg.console_path.clone(), shell, stop_rx))
        }
    };
    Ok(Some(DebugConsole { stop, task }))
}

/// Starts `<shell> -i` in a new session with `tty` as stdin/stdout/stderr and controlling tty.
fn spawn_shell(shell: &Path, tty: OwnedFd) -> io::Result<engine::ExitWatch> {
    let mut cmd = Command::new(shell);
    cmd.arg("-i")
        .current_dir("/")
        .stdin(Stdio::from(tty.try_clone()?))
        .stdout(Stdio::from(tty.try_clone()?))
        .stderr(Stdio::from(tty));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // Steal the terminal if another session holds it (the agent's own console in init
            // mode); failure leaves a shell without job control, still usable.
            libc::ioctl(0, libc::TIOCSCTTY as _, 1);
            Ok(())
        });
    }
    engine::reaper::start();
    let _guard = engine::reaper::guard();
    let child = cmd.spawn()?;
    let watch = engine::reaper::watch_new(child.id() as i32);
    // `child` is dropped without waiting: the reaper owns its exit status.
    Ok(watch)
}

fn kill(pid: i32) {
    // SAFETY: plain kill(2); the pid is not reaped yet (we still watch it), so it is ours.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Serial mode: a shell on the console device, restarted whenever it exits.
async fn serial(console: PathBuf, shell: PathBuf, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::ZERO;
    let mut reported = false;
    loop {
        if !backoff.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped(&mut stop) => return,
            }
        }
        if *stop.borrow() {
            return;
        }
        let started = Instant::now();
        let opened = nix::fcntl::open(
            &console,
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .map_err(io::Error::from)
        .and_then(|tty| spawn_shell(&shell, tty));
        let watch = match opened {
            Ok(w) => {
                reported = false;
                w
            }
            Err(e) => {
                if !reported {
                    warn!(subsystem = SUBSYSTEM, console = %console.display(), error = %e, "cannot start the debug console shell; retrying");
                    reported = true;
                }
                backoff = (backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                continue;
            }
        };
        let pid = watch.pid();
        info!(subsystem = SUBSYSTEM, pid, "debug console shell started");
        tokio::select! {
            code = watch.wait() => {
                info!(subsystem = SUBSYSTEM, pid, code, "debug console shell exited; starting a new one");
            }
            _ = stopped(&mut stop) => {
                kill(pid);
                watch.wait().await;
                return;
            }
        }
        backoff = if started.elapsed() < QUICK_EXIT {
            (backoff * 2).clamp(Duration::from_millis(500), MAX_BACKOFF)
        } else {
            Duration::ZERO
        };
    }
}

/// Listener mode: one shell per connection.
async fn serve(listener: Listener, shell: PathBuf, mut stop: watch::Receiver<bool>) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok(stream) => {
                    sessions.spawn(session(stream, shell.clone(), stop.clone()));
                }
                Err(e) => {
                    warn!(subsystem = SUBSYSTEM, error = %e, "debug console accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    while sessions.join_next().await.is_some() {}
}

fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    let pty = nix::pty::openpty(None, None)?;
    for fd in [&pty.master, &pty.slave] {
        let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFD)?;
        fcntl(
            fd.as_raw_fd(),
            FcntlArg::F_SETFD(
                nix::fcntl::FdFlag::from_bits_truncate(flags) | nix::fcntl::FdFlag::FD_CLOEXEC,
            ),
        )?;
    }
    let flags = OFlag::from_bits_truncate(fcntl(pty.master.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(
        pty.master.as_raw_fd(),
        FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
    )?;
    Ok((pty.master, pty.slave))
}

async fn session(stream: Stream, shell: PathBuf, mut stop: watch::Receiver<bool>) {
    let started = open_pty().and_then(|(master, slave)| {
        let watch = spawn_shell(&shell, slave)?;
        Ok((PtyMaster::new(master)?, watch))
    });
    let (master, watch) = match started {
        Ok(s) => s,
        Err(e) => {
            warn!(subsystem = SUBSYSTEM, error = %e, "cannot start a debug console session");
            return;
        }
    };
    let pid = watch.pid();
    info!(subsystem = SUBSYSTEM, pid, "debug console session started");
    let (mut sock_rd, mut sock_wr) = tokio::io::split(stream);
    let (mut pty_rd, mut pty_wr) = tokio::io::split(master);
    {
        let mut from_shell = pin!(tokio::io::copy(&mut pty_rd, &mut sock_wr));
        let to_shell = tokio::io::copy(&mut sock_rd, &mut pty_wr);
        tokio::select! {
            _ = &mut from_shell => {}
            _ = to_shell => {} // the host hung up
            _ = watch.wait() => {
                let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, &mut from_shell).await;
            }
            _ = stopped(&mut stop) => {}
        }
    }
    if watch.try_get().is_none() {
        kill(pid);
    }
    let code = watch.wait().await;
    info!(
        subsystem = SUBSYSTEM,
        pid, code, "debug console session ended"
    );
}

/// The agent's end of a pty, readable and writable through the runtime. A read after the last
/// slave descriptor closed (EIO) is end of stream.
struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

impl PtyMaster {
    fn new(fd: OwnedFd) -> io::Result<PtyMaster> {
        // SAFETY: the OwnedFd stays open and unchanged for as long as the AsyncFd owns it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(PtyMaster { fd })
    }
}

impl AsyncRead for PtyMaster {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let result = guard.try_io(|fd| {
                // SAFETY: reading into a valid, initialised buffer of the given length.
                let n = unsafe {
                    libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyMaster {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            let result = guard.try_io(|fd| {
                // SAFETY: writing from a valid buffer of the given length.
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_preference() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(find_shell(root.path()), None);
        std::fs::create_dir_all(root.path().join("bin")).unwrap();
        std::fs::write(root.path().join("bin/sh"), "").unwrap();
        assert_eq!(find_shell(root.path()), Some(root.path().join("bin/sh")));
        std::fs::write(root.path().join("bin/bash"), "").unwrap();
        assert_eq!(find_shell(root.path()), Some(root.path().join("bin/bash")));
        let devkit = root.path().join("run/kata-extensions/devkit/bin");
        std::fs::create_dir_all(&devkit).unwrap();
        std::fs::write(devkit.join("devkit-sh"), "").unwrap();
        assert_eq!(find_shell(root.path()), Some(devkit.join("devkit-sh")));
    }

    #[tokio::test]
    async fn disabled_without_the_flag() {
        assert!(start(&AgentConfig::default()).unwrap().is_none());
    }
}
