//! The one place that waits for child processes.
//!
//! A dedicated thread wakes on `SIGCHLD` (and once a second, in case a signal
//! was coalesced away) and reaps every exited child with
//! `waitpid(-1, WNOHANG | __WALL)` while holding a global mutex. Exit codes
//! (`code`, or `128 + signal`) go to whoever [`watch`]es the pid. Exits nobody
//! watches yet are kept for a short while in a bounded table, so a watch
//! registered just after the exit still sees it.
//!
//! To start a process and watch it without a window in which the reaper could
//! take its exit status, hold [`guard`] across the spawn and the [`watch`].

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, Once};
use std::thread;
use std::time::{Duration, Instant};

/// How many unwatched exits are remembered.
const UNCLAIMED_MAX: usize = 256;
/// How long an unwatched exit is remembered.
const UNCLAIMED_TTL: Duration = Duration::from_secs(30);

static REAP_LOCK: Mutex<()> = Mutex::new(());
static START: Once = Once::new();

struct Table {
    watched: HashMap<i32, Arc<Slot>>,
    unclaimed: VecDeque<(i32, i32, Instant)>,
}

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(|| {
    Mutex::new(Table {
        watched: HashMap::new(),
        unclaimed: VecDeque::new(),
    })
});

fn table() -> MutexGuard<'static, Table> {
    TABLE.lock().unwrap_or_else(|e| e.into_inner())
}

struct Slot {
    code: Mutex<Option<i32>>,
    cv: Condvar,
    tx: tokio::sync::watch::Sender<Option<i32>>,
}

impl Slot {
    fn new(code: Option<i32>) -> Arc<Slot> {
        Arc::new(Slot {
            code: Mutex::new(code),
            cv: Condvar::new(),
            tx: tokio::sync::watch::Sender::new(code),
        })
    }

    fn set(&self, code: i32) {
        let mut c = self.code.lock().unwrap_or_else(|e| e.into_inner());
        if c.is_none() {
            *c = Some(code);
            self.cv.notify_all();
            self.tx.send_replace(Some(code));
        }
    }
}

/// A handle on the future exit code of one process. Cheap to clone.
#[derive(Clone)]
pub struct ExitWatch {
    pid: i32,
    slot: Arc<Slot>,
}

impl std::fmt::Debug for ExitWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitWatch")
            .field("pid", &self.pid)
            .field("code", &self.try_get())
            .finish()
    }
}

impl ExitWatch {
    /// The watched pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits (asynchronously) for the exit code.
    pub async fn wait(&self) -> i32 {
        let mut rx = self.slot.tx.subscribe();
        loop {
            if let Some(code) = *rx.borrow_and_update() {
                return code;
            }
            if rx.changed().await.is_err() {
                // The sender lives in the slot we hold, so this cannot happen;
                // fall back to the blocking view.
                if let Some(code) = self.try_get() {
                    return code;
                }
            }
        }
    }

    /// Waits (blocking) at most `timeout` for the exit code.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now().checked_add(timeout);
        let mut code = self.slot.code.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if code.is_some() {
                return *code;
            }
            let left = match deadline {
                Some(d) => d.checked_duration_since(Instant::now())?,
                None => Duration::from_secs(3600),
            };
            code = self
                .slot
                .cv
                .wait_timeout(code, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits (blocking) for the exit code, however long it takes.
    pub fn wait_blocking(&self) -> i32 {
        loop {
            if let Some(c) = self.wait_timeout(Duration::from_secs(3600)) {
                return c;
            }
        }
    }

    /// The exit code if the process has already been reaped.
    pub fn try_get(&self) -> Option<i32> {
        *self.slot.code.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Starts the reaper thread (idempotent) and makes this process a child
/// subreaper, so that orphaned grandchildren (container processes) are
/// re-parented to it.
pub fn start() {
    START.call_once(|| {
        if std::process::id() != 1 {
            // SAFETY: plain prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        }
        let (mut rx, tx) = match UnixStream::pair() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("reaper: cannot create its wake-up socket: {e}");
                return;
            }
        };
        let _ = tx.set_nonblocking(true);
        if let Err(e) = signal_hook::low_level::pipe::register(libc::SIGCHLD, tx) {
            tracing::error!("reaper: cannot install the SIGCHLD handler: {e}");
        }
        let _ = rx.set_read_timeout(Some(Duration::from_secs(1)));
        let spawned = thread::Builder::new().name("reaper".into()).spawn(move || {
            let mut buf = [0u8; 64];
            loop {
                let _ = rx.read(&mut buf);
                reap_all();
            }
        });
        if let Err(e) = spawned {
            tracing::error!("reaper: cannot start its thread: {e}");
        }
    });
}

/// Reaps every exited child now.
fn reap_all() {
    let _g = guard();
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | libc::__WALL) };
        if pid == 0 {
            break;
        }
        if pid < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else if libc::WIFSIGNALED(status) {
            128 + libc::WTERMSIG(status)
        } else {
            continue;
        };
        deliver(pid, code);
    }
}

fn deliver(pid: i32, code: i32) {
    let mut t = table();
    if let Some(slot) = t.watched.remove(&pid) {
        slot.set(code);
        return;
    }
    let now = Instant::now();
    t.unclaimed
        .retain(|(p, _, at)| *p != pid && now.duration_since(*at) < UNCLAIMED_TTL);
    if t.unclaimed.len() >= UNCLAIMED_MAX {
        t.unclaimed.pop_front();
    }
    t.unclaimed.push_back((pid, code, now));
}

/// Holds off the reaper while the guard lives. Keep it across spawning a
/// process and calling [`watch`] on it; never hold it while waiting.
pub fn guard() -> MutexGuard<'static, ()> {
    REAP_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Watches `pid`: the returned handle receives its exit code. If the pid
/// already exited (recently) unwatched, the handle is already complete.
pub fn watch(pid: i32) -> ExitWatch {
    let mut t = table();
    if let Some(slot) = t.watched.get(&pid) {
        return ExitWatch {
            pid,
            slot: slot.clone(),
        };
    }
    let now = Instant::now();
    if let Some(i) = t
        .unclaimed
        .iter()
        .position(|(p, _, at)| *p == pid && now.duration_since(*at) < UNCLAIMED_TTL)
    {
        let (_, code, _) = t.unclaimed.remove(i).unwrap_or((pid, 0, now));
        return ExitWatch {
            pid,
            slot: Slot::new(Some(code)),
        };
    }
    let slot = Slot::new(None);
    t.watched.insert(pid, slot.clone());
    ExitWatch { pid, slot }
}

/// Like [`watch`] for a pid that is known to be alive (a child just spawned
/// under [`guard`]): any remembered exit of an earlier process with the same
/// pid is stale and dropped.
pub fn watch_new(pid: i32) -> ExitWatch {
    table().unclaimed.retain(|(p, _, _)| *p != pid);
    watch(pid)
}

/// Output of [`run_command`].
#[derive(Debug, Clone, Default)]
pub struct CommandOutput {
    /// Exit code, or 128 + signal.
    pub code: i32,
    /// Everything the command wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything the command wrote to stderr.
    pub stderr: Vec<u8>,
    /// The command was killed because it ran past the timeout.
    pub timed_out: bool,
}

/// How long output is still collected after the command exited (a daemon it
/// started may keep the pipes open forever).
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// Runs a command to completion through the reaper: feeds `stdin`, captures
/// stdout and stderr, and kills it (SIGKILL) if it outlives `timeout`.
pub fn run_command(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Option<Duration>,
) -> io::Result<CommandOutput> {
    run_command_cancellable(cmd, stdin, timeout, None)
}

/// [`run_command`] that `cancel` can cut short (the command is then SIGKILLed).
pub fn run_command_cancellable(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Option<Duration>,
    cancel: Option<&crate::Cancel>,
) -> io::Result<CommandOutput> {
    start();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped());
    cmd.stderr(Stdio::piped());
    let (mut child, exit) = {
        let _g = guard();
        let child = cmd.spawn()?;
        let w = watch_new(child.id() as i32);
        (child, w)
    };
    let pid = exit.pid();
    if let Some(c) = cancel {
        c.track(&exit);
    }

    if let (Some(mut pipe), Some(data)) = (child.stdin.take(), stdin) {
        let data = data.to_vec();
        thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let collect = |pipe: Option<Box<dyn Read + Send>>| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut pipe) = pipe {
            let buf = buf.clone();
            let done = done_tx.clone();
            thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                loop {
                    match pipe.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => buf
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                let _ = done.send(());
            });
        } else {
            let _ = done_tx.send(());
        }
        buf
    };
    let out = collect(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = collect(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    drop(done_tx);
    // `child` is dropped without waiting: the reaper owns its exit status.
    drop(child);

    let mut timed_out = false;
    let code = match timeout {
        None => exit.wait_blocking(),
        Some(t) => match exit.wait_timeout(t) {
            Some(c) => c,
            None => {
                timed_out = true;
                // SAFETY: kill with a pid we are still watching (not yet reaped,
                // so it cannot have been reused).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                exit.wait_timeout(Duration::from_secs(10))
                    .unwrap_or(128 + 9)
            }
        },
    };
    let deadline = Instant::now() + OUTPUT_GRACE;
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    if let Some(c) = cancel {
        c.untrack(pid);
    }
    let take =
        |b: &Arc<Mutex<Vec<u8>>>| std::mem::take(&mut *b.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(CommandOutput {
        code,
        stdout: take(&out),
        stderr: take(&err),
        timed_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_command_captures_output_and_code() {
        let out = run_command(
            Command::new("/bin/sh").args(["-c", "cat; echo err >&2; exit 3"]),
            Some(b"hello"),
            Some(Duration::from_secs(10)),
        )
        .unwrap();
        assert_eq!(out.code, 3);
        assert_eq!(out.stdout, b"hello");
        assert_eq!(out.stderr, b"err\n");
        assert!(!out.timed_out);
    }

    #[test]
    fn run_command_kills_on_timeout() {
        let t0 = Instant::now();
        let out = run_command(
            Command::new("/bin/sleep").arg("30"),
            None,
            Some(Duration::from_millis(200)),
        )
        .unwrap();
        assert!(out.timed_out);
        assert_eq!(out.code, 137);
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn run_command_missing_binary_is_an_error() {
        assert!(run_command(&mut Command::new("/nonexistent/x"), None, None).is_err());
    }

    #[test]
    fn watch_after_exit_sees_code() {
        start();
        deliver(999_999, 7);
        assert_eq!(watch(999_999).try_get(), Some(7));
        assert_eq!(watch_new(999_998).try_get(), None);
    }
}
