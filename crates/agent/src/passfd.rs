//! Pass-fd stdio: a process's stdin/stdout/stderr carried by dedicated connections instead of
//! WriteStdin/ReadStdout/ReadStderr requests (the protocol runtime-rs uses with Dragonball).
//!
//! The agent listens on `vsock://-1:<agent.passfd_listener_port>` (or `KATA_AGENT_PASSFD_ADDR`).
//! The host opens one connection per stream before it sends CreateContainer/ExecProcess, and names
//! each connection in the request's `stdin_port`/`stdout_port`/`stderr_port` (0 = that stream stays
//! on the RPCs). A connection is named by:
//!
//! * vsock: its peer port, i.e. the host-side port of the connection (with hybrid vsock, the port
//!   of the host's `OK <port>` reply);
//! * unix socket (standalone tests): the first line the client writes, `<port>\n` with a decimal
//!   number 1..=4294967295 of its choosing; nothing else is read before the request takes the
//!   stream.
//!
//! A request waits at most [`STREAM_WAIT`] for a named connection to arrive (the connection and
//! the request race each other), then fails with NOT_FOUND and creates nothing. Connections that
//! are never claimed are bounded ([`MAX_PENDING`], oldest dropped first).
//!
//! Once attached, the agent moves bytes between the process's pipes and the connections directly
//! (`splice(2)` from the stdout/stderr pipes into unix sockets, read/write into vsock ones; no
//! request per chunk). End of output is a half-close (`shutdown(SHUT_WR)`) of the connection; end
//! of input is the host's half-close, which closes the process's stdin. WaitProcess answers only
//! after every output stream was written out.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use crate::config::AgentConfig;
use crate::endpoint::{Endpoint, StdListener};
use crate::error::{AgentError, Result};
use crate::io::{StreamReader, StreamWriter};

/// How long a request waits for a connection it names.
pub const STREAM_WAIT: Duration = Duration::from_secs(5);
/// Connections accepted but not (yet) claimed by a request.
const MAX_PENDING: usize = 256;
/// Unix connections whose id line is still being read.
const MAX_HANDSHAKES: usize = 64;
/// How long a unix client has to send its id line.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest id line accepted (`4294967295\n` is 11 bytes).
const MAX_ID_LINE: usize = 16;

/// An accepted stream connection (non-blocking, registered with the runtime).
pub type Conn = AsyncFd<OwnedFd>;

struct Registry {
    pending: StdMutex<VecDeque<(u32, Conn)>>,
    arrived: Notify,
}

static REGISTRY: OnceLock<Registry> = OnceLock::new();

impl Registry {
    fn insert(&self, port: u32, conn: Conn) {
        let mut p = self.pending.lock().unwrap();
        // A newer connection with the same name replaces the older one.
        p.retain(|(k, _)| *k != port);
        if p.len() >= MAX_PENDING {
            if let Some((old, _)) = p.pop_front() {
                warn!(
                    subsystem = "passfd",
                    port = old,
                    "unclaimed stream dropped: {MAX_PENDING} streams are waiting"
                );
            }
        }
        p.push_back((port, conn));
        drop(p);
        self.arrived.notify_waiters();
    }

    fn remove(&self, port: u32) -> Option<Conn> {
        let mut p = self.pending.lock().unwrap();
        let at = p.iter().position(|(k, _)| *k == port)?;
        p.remove(at).map(|(_, c)| c)
    }
}

/// Where the pass-fd listener is: `KATA_AGENT_PASSFD_ADDR`, else `agent.passfd_listener_port`,
/// else nowhere.
pub fn endpoint(cfg: &AgentConfig) -> anyhow::Result<Option<Endpoint>> {
    match cfg.passfd_addr.as_deref() {
        Some(addr) => Endpoint::parse(addr).map(Some),
        None if cfg.passfd_listener_port > 0 => {
            Ok(Some(Endpoint::vsock_any(cfg.passfd_listener_port)))
        }
        None => Ok(None),
    }
}

/// Binds the listener (when configured) and accepts streams in a task. Needs the runtime.
pub fn start(cfg: &AgentConfig) -> anyhow::Result<()> {
    let Some(ep) = endpoint(cfg)? else {
        return Ok(());
    };
    let (fd, vsock): (OwnedFd, bool) = match ep.listen_std()? {
        StdListener::Unix(l) => {
            l.set_nonblocking(true)?;
            (l.into(), false)
        }
        StdListener::Vsock(l) => {
            l.set_nonblocking(true)?;
            // SAFETY: into_raw_fd hands over sole ownership of the listening socket.
            (unsafe { OwnedFd::from_raw_fd(l.into_raw_fd()) }, true)
        }
    };
    let listener = register(fd, Interest::READABLE)?;
    let registry = REGISTRY.get_or_init(|| Registry {
        pending: StdMutex::new(VecDeque::new()),
        arrived: Notify::new(),
    });
    info!(subsystem = "passfd", address = %ep, "pass-fd stream listener ready");
    tokio::spawn(accept_loop(listener, vsock, registry));
    Ok(())
}

async fn accept_loop(listener: AsyncFd<OwnedFd>, vsock: bool, registry: &'static Registry) {
    let handshakes = Arc::new(AtomicUsize::new(0));
    loop {
        let mut guard = match listener.readable().await {
            Ok(g) => g,
            Err(e) => {
                warn!(subsystem = "passfd", error = %e, "the pass-fd listener stopped");
                return;
            }
        };
        // SAFETY: an all-zero sockaddr_storage is valid; accept4 fills at most `len` bytes.
        let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: valid listening fd and out-pointers.
        let raw = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                (&mut addr as *mut libc::sockaddr_storage).cast(),
                &mut len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if raw < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EAGAIN) => guard.clear_ready(),
                Some(libc::EINTR) | Some(libc::ECONNABORTED) => {}
                _ => {
                    // Out of descriptors or similar: back off instead of spinning.
                    warn!(subsystem = "passfd", error = %err, "cannot accept a stream");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            continue;
        }
        // SAFETY: accept4 returned a new descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let conn = match register(fd, Interest::READABLE | Interest::WRITABLE) {
            Ok(c) => c,
            Err(e) => {
                warn!(subsystem = "passfd", error = %e, "cannot watch a stream");
                continue;
            }
        };
        if vsock {
            // SAFETY: the peer address of a vsock socket is a sockaddr_vm.
            let port = unsafe {
                (*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_vm>()).svm_port
            };
            debug!(subsystem = "passfd", port, "stream connected");
            registry.insert(port, conn);
            continue;
        }
        if handshakes.load(Ordering::Relaxed) >= MAX_HANDSHAKES {
            warn!(
                subsystem = "passfd",
                "stream refused: {MAX_HANDSHAKES} connections have not named themselves yet"
            );
            continue;
        }
        handshakes.fetch_add(1, Ordering::Relaxed);
        let handshakes = handshakes.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_id_line(&conn)).await {
                Ok(Ok(port)) => {
                    debug!(subsystem = "passfd", port, "stream connected");
                    registry.insert(port, conn);
                }
                Ok(Err(e)) => warn!(subsystem = "passfd", error = %e, "stream refused"),
                Err(_) => warn!(
                    subsystem = "passfd",
                    "stream refused: no id line within {HANDSHAKE_TIMEOUT:?}"
                ),
            }
            handshakes.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the descriptor, so it stays open and unchanged while registered.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

/// Reads `<port>\n` one byte at a time (what follows belongs to the stream).
async fn read_id_line(conn: &Conn) -> io::Result<u32> {
    let mut line = Vec::with_capacity(MAX_ID_LINE);
    loop {
        let mut byte = [0u8; 1];
        let n = read_some(conn, &mut byte).await?;
        if n == 0 {
            return Err(io::Error::other("closed before its id line"));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > MAX_ID_LINE {
            return Err(io::Error::other("id line too long"));
        }
    }
    std::str::from_utf8(&line)
        .ok()
        .map(|s| s.trim_end_matches('\r'))
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            io::Error::other(format!(
                "bad id line {:?} (expected a port number)",
                String::from_utf8_lossy(&line)
            ))
        })
}

/// One non-blocking read, waiting for readability.
async fn read_some(conn: &Conn, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = conn.readable().await?;
        match guard.try_io(|c| {
            // SAFETY: reading into a valid buffer of the given length.
            let n = unsafe { libc::read(c.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }) {
            Ok(Ok(n)) => return Ok(n),
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
}

/// The connections named by one request.
#[derive(Default)]
pub struct Streams {
    pub stdin: Option<Conn>,
    pub stdout: Option<Conn>,
    pub stderr: Option<Conn>,
}

impl Streams {
    pub fn is_empty(&self) -> bool {
        self.stdin.is_none() && self.stdout.is_none() && self.stderr.is_none()
    }
}

/// Takes the connections a request names (0 = none), waiting at most [`STREAM_WAIT`] overall.
pub async fn take_streams(stdin: u32, stdout: u32, stderr: u32) -> Result<Streams> {
    let mut streams = Streams::default();
    if stdin == 0 && stdout == 0 && stderr == 0 {
        return Ok(streams);
    }
    let named: Vec<u32> = [stdin, stdout, stderr]
        .into_iter()
        .filter(|p| *p != 0)
        .collect();
    if named
        .iter()
        .enumerate()
        .any(|(i, p)| named[..i].contains(p))
    {
        return Err(AgentError::invalid_argument(format!(
            "stdin_port {stdin}, stdout_port {stdout} and stderr_port {stderr} must name \
             different streams"
        )));
    }
    let Some(registry) = REGISTRY.get() else {
        return Err(AgentError::failed_precondition(
            "the request names pass-fd streams, but no pass-fd listener is configured \
             (agent.passfd_listener_port)",
        ));
    };
    let deadline = Instant::now() + STREAM_WAIT;
    for (port, slot, name) in [
        (stdin, &mut streams.stdin, "stdin_port"),
        (stdout, &mut streams.stdout, "stdout_port"),
        (stderr, &mut streams.stderr, "stderr_port"),
    ] {
        if port == 0 {
            continue;
        }
        *slot = Some(take(registry, port, deadline).await.ok_or_else(|| {
            AgentError::not_found(format!(
                "{name} {port}: no pass-fd stream with that port arrived within {} s",
                STREAM_WAIT.as_secs()
            ))
        })?);
    }
    Ok(streams)
}

async fn take(registry: &Registry, port: u32, deadline: Instant) -> Option<Conn> {
    loop {
        let notified = registry.arrived.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(c) = registry.remove(port) {
            return Some(c);
        }
        if tokio::time::timeout_at(deadline.into(), notified)
            .await
            .is_err()
        {
            return registry.remove(port);
        }
    }
}

/// Completion of one output copy: WaitProcess waits for it after the exit.
#[derive(Clone)]
pub struct CopyDone(watch::Receiver<bool>);

impl CopyDone {
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|done| *done).await;
    }
}

/// Starts the copies for the streams that were given; returns the completions of the output
/// copies. `exited` resolves when the process has exited.
pub fn start_copies<F>(
    streams: Streams,
    stdin: Option<Arc<StreamWriter>>,
    stdout: Option<Arc<StreamReader>>,
    stderr: Option<Arc<StreamReader>>,
    terminal: bool,
    exited: impl Fn() -> F,
) -> Vec<CopyDone>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut done = Vec::new();
    for (conn, reader) in [(streams.stdout, stdout), (streams.stderr, stderr)] {
        let Some(conn) = conn else { continue };
        let (tx, rx) = watch::channel(false);
        done.push(CopyDone(rx));
        let ex = exited();
        tokio::spawn(async move {
            if let Some(reader) = reader {
                if let Err(e) = reader.copy_to(&conn, ex).await {
                    warn!(subsystem = "passfd", error = %e, "output stream copy failed");
                }
            }
            // SAFETY: shutdown on a valid socket.
            unsafe { libc::shutdown(conn.as_raw_fd(), libc::SHUT_WR) };
            drop(conn);
            let _ = tx.send(true);
        });
    }
    if let (Some(conn), Some(writer)) = (streams.stdin, stdin) {
        let ex = exited();
        tokio::spawn(copy_in(conn, writer, terminal, ex));
    }
    done
}

/// Host → process: everything read from the connection goes to stdin; the host's half-close
/// closes stdin (a terminal gets ^D). Ends with the process.
async fn copy_in<F>(conn: Conn, writer: Arc<StreamWriter>, terminal: bool, exited: F)
where
    F: std::future::Future<Output = ()>,
{
    tokio::pin!(exited);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = tokio::select! {
            r = read_some(&conn, &mut buf) => r.unwrap_or_default(),
            _ = &mut exited => return,
        };
        if n == 0 {
            if terminal {
                let _ = writer.write_all(&[4]).await;
            }
            return;
        }
        if writer.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
