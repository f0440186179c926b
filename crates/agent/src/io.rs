//! Process stdio on the agent's side: pipes or a pty, and the read/write semantics of the
//! ReadStdout / ReadStderr / WriteStdin / CloseStdin / TtyWinResize RPCs.
//!
//! The agent never copies a process's output anywhere: the bytes stay in the pipe (or pty) until a
//! client reads them. A client that never reads only ever blocks the writing process, never the
//! agent. Reads are non-blocking on the agent side (tokio `AsyncFd`), so a pending read holds no
//! lock and stalls no other request.
//!
//! End of stream: a read returns empty data once every writer is gone (EOF), or once the process
//! has exited and the stream is drained — so a daemon that inherited the pipe cannot keep a client
//! waiting forever, and nothing the process wrote before exiting is lost.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::sync::Mutex;

use crate::error::{AgentError, Result};

/// How long a read that finds an empty stream after the process exited keeps waiting for late
/// bytes (for example from a child that still holds the pipe) before reporting end of stream.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(100);

/// The child's ends of its stdio, handed to the engine.
pub struct ChildStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// The agent's ends of a process's stdio.
pub struct ParentStdio {
    pub stdin: Option<Arc<StreamWriter>>,
    pub stdout: Option<Arc<StreamReader>>,
    pub stderr: Option<Arc<StreamReader>>,
    /// The pty master of a terminal process (also reachable as stdin/stdout).
    pub pty: Option<Arc<OwnedFd>>,
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// Creates the stdio of a process: three pipes, or nothing yet for a terminal process.
///
/// A terminal process opens its pty inside the container (its own devpts) and the engine hands
/// the master back once the process exists: [`attach_console`] then turns it into the streams.
/// `pipe_size` (> 0) resizes the stdout and stderr pipes, as `agent.container_pipe_size` asks.
pub fn create_stdio(terminal: bool, pipe_size: i32) -> Result<(ParentStdio, ChildStdio)> {
    let io_err =
        |what: &str, e: io::Error| AgentError::internal(format!("cannot create {what}: {e}"));
    if terminal {
        let parent = ParentStdio {
            stdin: None,
            stdout: None,
            stderr: None,
            pty: None,
        };
        let child = ChildStdio {
            stdin: None,
            stdout: None,
            stderr: None,
        };
        return Ok((parent, child));
    }
    let (in_r, in_w) = pipe().map_err(|e| io_err("the stdin pipe", e))?;
    let (out_r, out_w) = pipe().map_err(|e| io_err("the stdout pipe", e))?;
    let (err_r, err_w) = pipe().map_err(|e| io_err("the stderr pipe", e))?;
    if pipe_size > 0 {
        for fd in [&out_r, &err_r] {
            fcntl(fd.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(pipe_size)).map_err(|e| {
                AgentError::internal(format!(
                    "cannot set the pipe size to {pipe_size} bytes: {e}"
                ))
            })?;
        }
    }
    for fd in [&in_w, &out_r, &err_r] {
        set_nonblocking(fd).map_err(|e| io_err("a pipe", e))?;
    }
    let parent = ParentStdio {
        stdin: Some(Arc::new(StreamWriter::new(Arc::new(in_w))?)),
        stdout: Some(Arc::new(StreamReader::new(Arc::new(out_r), false)?)),
        stderr: Some(Arc::new(StreamReader::new(Arc::new(err_r), false)?)),
        pty: None,
    };
    let child = ChildStdio {
        stdin: Some(in_r),
        stdout: Some(out_w),
        stderr: Some(err_w),
    };
    Ok((parent, child))
}

/// The stdio of a process once the engine has started it: with a pty master (a terminal
/// process) the streams read and write the master; without, `parent` as it was.
pub fn attach_console(parent: ParentStdio, master: Option<OwnedFd>) -> Result<ParentStdio> {
    match master {
        Some(master) => pty_stdio(master),
        None => Ok(parent),
    }
}

/// Streams over a pty master: stdout and stderr read it (a terminal has one output stream),
/// stdin writes it.
fn pty_stdio(master: OwnedFd) -> Result<ParentStdio> {
    let err = |e: io::Error| AgentError::internal(format!("cannot use the terminal: {e}"));
    set_cloexec(&master).map_err(err)?;
    set_nonblocking(&master).map_err(err)?;
    // The writer gets its own descriptor: one fd cannot be registered with the reactor twice.
    let writer_fd = Arc::new(master.try_clone().map_err(err)?);
    let master = Arc::new(master);
    let reader = Arc::new(StreamReader::new(master.clone(), true)?);
    Ok(ParentStdio {
        stdin: Some(Arc::new(StreamWriter::new(writer_fd)?)),
        stdout: Some(reader.clone()),
        stderr: Some(reader),
        pty: Some(master),
    })
}

fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    Ok(())
}

/// A borrowed fd wrapper so that several owners can register the same fd with tokio.
struct FdRef(Arc<OwnedFd>);

impl AsRawFd for FdRef {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The agent's read end of stdout, stderr or a pty master.
pub struct StreamReader {
    fd: AsyncFd<FdRef>,
    is_pty: bool,
    /// Serialises reads of one stream and remembers when the end was reached.
    state: Mutex<ReaderState>,
}

#[derive(Default)]
struct ReaderState {
    eof: bool,
}

impl StreamReader {
    fn new(fd: Arc<OwnedFd>, is_pty: bool) -> Result<StreamReader> {
        Ok(StreamReader {
            // SAFETY: FdRef owns (a share of) the descriptor, so it stays open and
            // unchanged for as long as the AsyncFd holds it.
            fd: unsafe {
                AsyncFd::register_with_interest(FdRef(fd), tokio::io::Interest::READABLE)
            }
            .map_err(|e| {
                AgentError::internal(format!("cannot watch a stream: {}", e.into_parts().1))
            })?,
            is_pty,
            state: Mutex::new(ReaderState::default()),
        })
    }

    /// Whether end of stream has been returned already.
    #[allow(dead_code)]
    pub async fn at_eof(&self) -> bool {
        self.state.lock().await.eof
    }

    /// Whether a read has returned end of stream already (never waits: false while a read runs).
    pub fn eof_returned(&self) -> bool {
        self.state.try_lock().is_ok_and(|s| s.eof)
    }

    /// Whether nothing is left to read right now: end of stream was returned already, or no
    /// byte is buffered. Never waits (a stream being read counts as not spent).
    pub fn is_spent(&self) -> bool {
        match self.state.try_lock() {
            Ok(state) if state.eof => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD stores the number of queued bytes into the int we pass.
        let rc =
            unsafe { libc::ioctl(self.fd.get_ref().0.as_raw_fd(), libc::FIONREAD, &mut queued) };
        rc == 0 && queued == 0
    }

    /// Reads up to `len` bytes: waits until some are available, then returns what is there (filling
    /// the buffer with as many reads as do not block). Empty data means end of stream.
    ///
    /// `exited` resolves once the process has exited; after that, an empty stream is reported as
    /// end of stream after a short drain window even if some other process still holds a writer.
    pub async fn read<F>(&self, len: usize, exited: F) -> Result<Vec<u8>>
    where
        F: std::future::Future<Output = ()>,
    {
        let mut state = self.state.lock().await;
        if state.eof {
            return Ok(Vec::new());
        }
        if len == 0 {
            // Nothing can be returned; wait for readability like upstream does.
            let _ = self.fd.readable().await;
            return Ok(Vec::new());
        }
        // Sized by what is ready (not by `len`): a 1 MiB request for 64 KiB of output must not
        // allocate, zero and fault in a whole megabyte.
        let mut buf = Vec::new();
        tokio::pin!(exited);
        let mut exited_done = false;
        loop {
            let want = len.min(self.ready_bytes().max(PROBE_READ));
            buf.resize(want, 0);
            match self.fill(&mut buf) {
                Ok(0) => {
                    state.eof = true;
                    return Ok(Vec::new());
                }
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // A pty master reports EIO once the last slave fd is closed: end of stream.
                Err(e) if self.is_pty && e.raw_os_error() == Some(libc::EIO) => {
                    state.eof = true;
                    return Ok(Vec::new());
                }
                Err(e) => {
                    return Err(AgentError::internal(format!("cannot read the stream: {e}")));
                }
            }
            if exited_done {
                // The process is gone and the stream is empty: give late bytes a short window.
                match tokio::time::timeout(DRAIN_AFTER_EXIT, self.wait_readable()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(AgentError::internal(e.to_string())),
                    Err(_) => {
                        state.eof = true;
                        return Ok(Vec::new());
                    }
                }
                continue;
            }
            tokio::select! {
                ready = self.wait_readable() => {
                    ready.map_err(|e| AgentError::internal(e.to_string()))?;
                }
                _ = &mut exited => exited_done = true,
            }
        }
    }

    /// Bytes that can be read right now without blocking (FIONREAD; 0 when unknown).
    fn ready_bytes(&self) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through the valid pointer.
        let rc = unsafe { libc::ioctl(self.fd.get_ref().0.as_raw_fd(), libc::FIONREAD, &mut n) };
        if rc == 0 && n > 0 {
            n as usize
        } else {
            0
        }
    }

    /// Moves the whole stream into `out` (a non-blocking socket), with `splice(2)` where the
    /// stream is a pipe, until end of stream; `exited` has the meaning it has for [`Self::read`].
    /// If the peer goes away, the rest is read and dropped, so that the process never blocks on a
    /// full pipe. Returns the bytes delivered.
    pub async fn copy_to<F>(&self, out: &AsyncFd<OwnedFd>, exited: F) -> io::Result<u64>
    where
        F: std::future::Future<Output = ()>,
    {
        let mut state = self.state.lock().await;
        if state.eof {
            return Ok(0);
        }
        let src = self.fd.get_ref().0.as_raw_fd();
        let dst = out.as_raw_fd();
        if !self.is_pty {
            // A larger pipe lets the process run further ahead of the copy (fewer wake-ups).
            let _ = fcntl(src, FcntlArg::F_SETPIPE_SZ(STREAM_PIPE_SIZE));
        }
        // Not into vsock: a splice to an AF_VSOCK socket is one sendmsg, hence one vsock packet,
        // per page (the socket has no sendpage), where a write of a large buffer is cut into
        // 64 KiB packets. In a VM the cost per packet dominates: read/write moved 1.5x more
        // (docs/benchmarks.md).
        let mut use_splice = !self.is_pty && !is_vsock(dst);
        let mut peer_gone = false;
        let mut buf: Vec<u8> = Vec::new();
        let (mut pending_at, mut pending_len) = (0usize, 0usize);
        let mut total = 0u64;
        tokio::pin!(exited);
        let mut exited_done = false;
        loop {
            // One step: Some(true) = progress, Some(false) = the source is empty, None = the
            // destination is full.
            let step: io::Result<Option<bool>> = if pending_len > 0 && !peer_gone {
                match write_fd(dst, &buf[pending_at..pending_at + pending_len]) {
                    Ok(n) => {
                        pending_at += n;
                        pending_len -= n;
                        total += n as u64;
                        Ok(Some(true))
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Some(true)),
                    Err(_) => {
                        peer_gone = true;
                        Ok(Some(true))
                    }
                }
            } else if use_splice && !peer_gone {
                // SAFETY: splice between two valid descriptors, no offsets.
                let n = unsafe {
                    libc::splice(
                        src,
                        std::ptr::null_mut(),
                        dst,
                        std::ptr::null_mut(),
                        1 << 20,
                        libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
                    )
                };
                if n > 0 {
                    total += n as u64;
                    Ok(Some(true))
                } else if n == 0 {
                    state.eof = true;
                    return Ok(total);
                } else {
                    let e = io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EAGAIN) => Ok(if poll_in(src) { None } else { Some(false) }),
                        Some(libc::EINTR) => Ok(Some(true)),
                        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {
                            use_splice = false;
                            Ok(Some(true))
                        }
                        Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN) => {
                            peer_gone = true;
                            Ok(Some(true))
                        }
                        _ => Err(e),
                    }
                }
            } else {
                if buf.is_empty() {
                    buf.resize(64 << 10, 0);
                }
                match nix::unistd::read(src, &mut buf) {
                    Ok(0) => {
                        state.eof = true;
                        return Ok(total);
                    }
                    Ok(n) => {
                        (pending_at, pending_len) = (0, if peer_gone { 0 } else { n });
                        Ok(Some(true))
                    }
                    Err(nix::errno::Errno::EAGAIN) => Ok(Some(false)),
                    Err(nix::errno::Errno::EINTR) => Ok(Some(true)),
                    Err(nix::errno::Errno::EIO) if self.is_pty => {
                        state.eof = true;
                        return Ok(total);
                    }
                    Err(e) => Err(e.into()),
                }
            };
            match step? {
                Some(true) => {}
                None => {
                    // Destination full: all output must be delivered, so only wait. Readiness is
                    // cleared only when the socket is really full now (a stale clear would lose
                    // the wake-up of a socket that drained in between).
                    let mut g = out.writable().await?;
                    let now = revents(dst, libc::POLLOUT);
                    if now & libc::POLLOUT == 0 {
                        let hung_up = g.ready().is_write_closed();
                        g.clear_ready();
                        if hung_up {
                            // The peer is gone for good if it still says so; else the hang-up
                            // is stale and readiness cannot be waited for.
                            if now & (libc::POLLHUP | libc::POLLERR) != 0 {
                                peer_gone = true;
                            } else {
                                drop(g);
                                tokio::time::sleep(STALE_HANGUP_PAUSE).await;
                            }
                        }
                    }
                }
                Some(false) if exited_done => {
                    match tokio::time::timeout(DRAIN_AFTER_EXIT, self.wait_readable()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(_) => {
                            state.eof = true;
                            return Ok(total);
                        }
                    }
                }
                Some(false) => {
                    tokio::select! {
                        ready = self.wait_readable() => ready?,
                        _ = &mut exited => exited_done = true,
                    }
                }
            }
        }
    }

    /// After a read found the stream empty: waits until it may have more. Readiness is cleared
    /// only when the stream is really empty now (a stale clear would lose the wake-up of bytes
    /// that arrived in between); a hang-up that tokio keeps from earlier is not waited on (see
    /// [`STALE_HANGUP_PAUSE`]).
    async fn wait_readable(&self) -> io::Result<()> {
        let src = self.fd.get_ref().0.as_raw_fd();
        let mut g = self.fd.readable().await?;
        if !poll_in(src) {
            let hung_up = g.ready().is_read_closed();
            g.clear_ready();
            drop(g);
            if hung_up {
                tokio::time::sleep(STALE_HANGUP_PAUSE).await;
            }
        }
        Ok(())
    }

    /// Non-blocking reads into `buf` until it is full or the stream has nothing more right now.
    fn fill(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match nix::unistd::read(self.fd.get_ref().0.as_raw_fd(), &mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    if filled > 0 {
                        break;
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(filled)
    }
}

/// Most stdin bytes that may wait for a process to read them (across queued WriteStdin calls,
/// the one being written included). Past it, WriteStdin is RESOURCE_EXHAUSTED.
pub const MAX_QUEUED_STDIN: usize = 8 << 20;
/// Most WriteStdin calls that may wait for one process at a time.
pub const MAX_QUEUED_WRITES: usize = 64;

/// Pipe size of an output that is copied to a pass-fd stream.
const STREAM_PIPE_SIZE: i32 = 1 << 20;

/// First read of a request when nothing is known to be ready (EOF or a racing writer).
const PROBE_READ: usize = 16 << 10;

/// Whether `fd` is an AF_VSOCK socket.
fn is_vsock(fd: RawFd) -> bool {
    // SAFETY: an all-zero sockaddr_storage is valid; getsockname fills at most `len` bytes.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid out-pointers of the given length.
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    rc == 0 && addr.ss_family as libc::c_int == libc::AF_VSOCK
}

fn write_fd(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: writing from a valid buffer of the given length.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Whether `fd` is readable (or at its end) right now.
fn poll_in(fd: RawFd) -> bool {
    poll_fd(fd, libc::POLLIN)
}

/// Whether `fd` has `events` (or an error/hang-up, which the next operation reports) right now.
fn poll_fd(fd: RawFd, events: libc::c_short) -> bool {
    revents(fd, events) & (events | libc::POLLHUP | libc::POLLERR) != 0
}

/// What `fd` reports right now for `events` (plus hang-up and error), without waiting.
fn revents(fd: RawFd, events: libc::c_short) -> libc::c_short {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n > 0 {
        pfd.revents
    } else {
        0
    }
}

/// Tokio keeps a hang-up it has seen on a descriptor for good (it never clears the closed part of
/// a readiness), so a readiness that carried one is set from then on. A pty master sees a
/// hang-up whenever the last descriptor of its slave closes, yet writes to it still block once
/// its buffer is full, and the slave can be opened again. When a read or write would block
/// although the readiness carried a hang-up, waiting for readiness would return at once, for
/// ever, and the loop would never yield: it polls again after this pause instead.
const STALE_HANGUP_PAUSE: Duration = Duration::from_millis(10);

/// The agent's write end of stdin (a pipe or the pty master).
pub struct StreamWriter {
    fd: AsyncFd<FdRef>,
    lock: Mutex<()>,
    /// Bytes and calls waiting or being written (bounded by the constants above).
    queued: std::sync::Mutex<(usize, usize)>,
}

/// Gives back a write's share of the queue however the write ends (cancellation included).
struct Queued<'a> {
    writer: &'a StreamWriter,
    len: usize,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let mut q = self.writer.queued.lock().unwrap();
        q.0 -= self.len;
        q.1 -= 1;
    }
}

impl StreamWriter {
    fn new(fd: Arc<OwnedFd>) -> Result<StreamWriter> {
        Ok(StreamWriter {
            // SAFETY: as for StreamReader::new.
            fd: unsafe {
                AsyncFd::register_with_interest(FdRef(fd), tokio::io::Interest::WRITABLE)
            }
            .map_err(|e| {
                AgentError::internal(format!("cannot watch stdin: {}", e.into_parts().1))
            })?,
            lock: Mutex::new(()),
            queued: std::sync::Mutex::new((0, 0)),
        })
    }

    fn enqueue(&self, len: usize) -> Result<Queued<'_>> {
        let mut q = self.queued.lock().unwrap();
        let bytes = q.0.saturating_add(len);
        if bytes > MAX_QUEUED_STDIN || q.1 >= MAX_QUEUED_WRITES {
            return Err(AgentError::new(
                ttrpc::Code::RESOURCE_EXHAUSTED,
                format!(
                    "stdin is full: {} bytes in {} writes already wait for the process to read \
                     them (at most {MAX_QUEUED_STDIN} bytes in {MAX_QUEUED_WRITES} writes)",
                    q.0, q.1
                ),
            ));
        }
        *q = (bytes, q.1 + 1);
        Ok(Queued { writer: self, len })
    }

    /// Writes all of `data`, waiting (without blocking the agent) while the pipe is full. Writes
    /// queue behind each other up to [`MAX_QUEUED_STDIN`] bytes and [`MAX_QUEUED_WRITES`] calls.
    pub async fn write_all(&self, data: &[u8]) -> Result<()> {
        let _queued = self.enqueue(data.len())?;
        let _serial = self.lock.lock().await;
        let mut done = 0;
        while done < data.len() {
            let mut guard = self
                .fd
                .writable()
                .await
                .map_err(|e| AgentError::internal(format!("cannot write stdin: {e}")))?;
            // Taken now: a write that would block clears the guard's readiness.
            let hung_up = guard.ready().is_write_closed();
            match guard.try_io(|inner| {
                nix::unistd::write(inner.get_ref().0.as_fd(), &data[done..])
                    .map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => done += n,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(AgentError::internal(format!("cannot write stdin: {e}"))),
                Err(_would_block) if hung_up => {
                    // A hung-up pty master (its process and every other holder of the slave
                    // are gone) takes a few KiB and then blocks for ever: nothing will read more.
                    drop(guard);
                    let now = revents(self.fd.get_ref().0.as_raw_fd(), libc::POLLOUT);
                    if now & libc::POLLOUT == 0 {
                        if now & (libc::POLLHUP | libc::POLLERR) != 0 {
                            return Err(AgentError::internal(
                                "cannot write stdin: the terminal of the process is closed",
                            ));
                        }
                        tokio::time::sleep(STALE_HANGUP_PAUSE).await;
                    }
                }
                Err(_would_block) => {}
            }
        }
        Ok(())
    }
}

/// Sets the window size of a pty.
pub fn resize_pty(master: &OwnedFd, rows: u32, cols: u32) -> Result<()> {
    let ws = libc::winsize {
        ws_row: rows.min(u16::MAX as u32) as u16,
        ws_col: cols.min(u16::MAX as u32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct from the pointer, which is valid.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc != 0 {
        return Err(AgentError::internal(format!(
            "cannot resize the terminal: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Opens `/dev/null` for a stdio slot nobody asked for.
#[allow(dead_code)]
pub fn dev_null() -> io::Result<OwnedFd> {
    let fd = nix::fcntl::open(
        "/dev/null",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: open returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests;
