//! Addresses of the agent's side channels (log stream, debug console, trace export) and the
//! sockets behind them.
//!
//! In a VM these are vsock ports; for development and tests every one of them also accepts a unix
//! socket address. Forms: `vsock://<cid>:<port>` (cid `-1` = any), `unix:///absolute/path`,
//! `unix://@abstract-name`.
//!
//! Two flavours of sockets are provided: blocking ones (std) for the log and trace threads, which
//! must work before and after the async runtime exists, and tokio ones for the debug console.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `VMADDR_CID_ANY`.
pub const CID_ANY: u32 = u32::MAX;
/// The host's CID.
pub const CID_HOST: u32 = 2;
/// Port the host's trace forwarder listens on.
pub const DEFAULT_TRACE_PORT: u32 = 10240;

/// A parsed side-channel address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket on the filesystem.
    Unix(PathBuf),
    /// An abstract unix socket (Linux), without the leading `@`.
    Abstract(String),
    /// A vsock address.
    Vsock { cid: u32, port: u32 },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Abstract(n) => write!(f, "unix://@{n}"),
            Endpoint::Vsock { cid, port } if *cid == CID_ANY => write!(f, "vsock://-1:{port}"),
            Endpoint::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
        }
    }
}

impl Endpoint {
    /// Parses `vsock://<cid>:<port>`, `unix:///path` or `unix://@name`.
    pub fn parse(addr: &str) -> Result<Endpoint> {
        if let Some(rest) = addr.strip_prefix("vsock://") {
            let (cid, port) = rest
                .split_once(':')
                .ok_or_else(|| anyhow!("{addr:?}: expected vsock://<cid>:<port>"))?;
            let cid = match cid {
                "-1" | "" => CID_ANY,
                c => c
                    .parse::<u32>()
                    .map_err(|_| anyhow!("{addr:?}: {c:?} is not a vsock CID"))?,
            };
            let port = port
                .parse::<u32>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| anyhow!("{addr:?}: {port:?} is not a vsock port"))?;
            return Ok(Endpoint::Vsock { cid, port });
        }
        if let Some(rest) = addr.strip_prefix("unix://") {
            if let Some(name) = rest.strip_prefix('@') {
                if name.is_empty() {
                    bail!("{addr:?}: empty abstract socket name");
                }
                return Ok(Endpoint::Abstract(name.to_string()));
            }
            if !rest.starts_with('/') {
                bail!("{addr:?}: the unix socket path must be absolute");
            }
            return Ok(Endpoint::Unix(PathBuf::from(rest)));
        }
        bail!("{addr:?}: expected vsock://<cid>:<port>, unix:///path or unix://@name")
    }

    /// A listening vsock port on any CID.
    pub fn vsock_any(port: u32) -> Endpoint {
        Endpoint::Vsock { cid: CID_ANY, port }
    }

    /// Binds a blocking listener.
    pub fn listen_std(&self) -> io::Result<StdListener> {
        match self {
            Endpoint::Unix(path) => {
                remove_stale_socket(path)?;
                Ok(StdListener::Unix(UnixListener::bind(path)?))
            }
            Endpoint::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
                Ok(StdListener::Unix(UnixListener::bind_addr(&addr)?))
            }
            Endpoint::Vsock { cid, port } => Ok(StdListener::Vsock(
                vsock::VsockListener::bind_with_cid_port(*cid, *port)?,
            )),
        }
    }

    /// Binds a tokio listener (needs a runtime).
    pub fn listen(&self) -> io::Result<Listener> {
        if let Endpoint::Vsock { cid, port } = self {
            let addr = tokio_vsock::VsockAddr::new(*cid, *port);
            return Ok(Listener::Vsock(tokio_vsock::VsockListener::bind(addr)?));
        }
        match self.listen_std()? {
            StdListener::Unix(l) => {
                l.set_nonblocking(true)?;
                Ok(Listener::Unix(tokio::net::UnixListener::from_std(l)?))
            }
            StdListener::Vsock(_) => Err(io::Error::other("vsock endpoints are bound above")),
        }
    }

    /// Connects a blocking stream. Neither unix nor vsock connects wait long: a unix connect to a
    /// socket without listener fails at once, and the kernel bounds vsock connects.
    pub fn connect_std(&self) -> io::Result<StdStream> {
        match self {
            Endpoint::Unix(path) => Ok(StdStream::Unix(UnixStream::connect(path)?)),
            Endpoint::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
                Ok(StdStream::Unix(UnixStream::connect_addr(&addr)?))
            }
            // The kernel bounds a vsock connect (2 s by default, SO_VM_SOCKETS_CONNECT_TIMEOUT).
            Endpoint::Vsock { cid, port } => Ok(StdStream::Vsock(
                vsock::VsockStream::connect_with_cid_port(*cid, *port)?,
            )),
        }
    }
}

/// A stale socket file left by an earlier run is replaced; anything else in the way is an error.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(_) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            Ok(())
        }
    }
}

/// A blocking listener.
pub enum StdListener {
    Unix(UnixListener),
    Vsock(vsock::VsockListener),
}

impl StdListener {
    /// Waits for the next connection.
    pub fn accept(&self) -> io::Result<StdStream> {
        match self {
            StdListener::Unix(l) => l.accept().map(|(s, _)| StdStream::Unix(s)),
            StdListener::Vsock(l) => l.accept().map(|(s, _)| StdStream::Vsock(s)),
        }
    }
}

/// A blocking stream.
pub enum StdStream {
    Unix(UnixStream),
    Vsock(vsock::VsockStream),
}

impl fmt::Debug for StdStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StdStream::Unix(_) => f.write_str("StdStream::Unix"),
            StdStream::Vsock(_) => f.write_str("StdStream::Vsock"),
        }
    }
}

impl StdStream {
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            StdStream::Unix(s) => s.shutdown(how),
            StdStream::Vsock(s) => s.shutdown(how),
        }
    }

    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            StdStream::Unix(s) => s.set_write_timeout(t),
            StdStream::Vsock(s) => s.set_write_timeout(t),
        }
    }
}

impl Read for &StdStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            StdStream::Unix(s) => (&*s).read(buf),
            StdStream::Vsock(s) => (&*s).read(buf),
        }
    }
}

impl Write for &StdStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            StdStream::Unix(s) => (&*s).write(buf),
            StdStream::Vsock(s) => (&*s).write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A tokio listener.
pub enum Listener {
    Unix(tokio::net::UnixListener),
    Vsock(tokio_vsock::VsockListener),
}

impl Listener {
    /// Waits for the next connection.
    pub async fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Unix(l) => l.accept().await.map(|(s, _)| Stream::Unix(s)),
            Listener::Vsock(l) => l.accept().await.map(|(s, _)| Stream::Vsock(s)),
        }
    }
}

/// A tokio stream.
pub enum Stream {
    Unix(tokio::net::UnixStream),
    Vsock(tokio_vsock::VsockStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Vsock(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Vsock(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Vsock(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Vsock(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_forms() {
        assert_eq!(
            Endpoint::parse("vsock://-1:1026").unwrap(),
            Endpoint::vsock_any(1026)
        );
        assert_eq!(
            Endpoint::parse("vsock://2:10240").unwrap(),
            Endpoint::Vsock {
                cid: 2,
                port: 10240
            }
        );
        assert_eq!(
            Endpoint::parse("unix:///run/x.sock").unwrap(),
            Endpoint::Unix("/run/x.sock".into())
        );
        assert_eq!(
            Endpoint::parse("unix://@name").unwrap(),
            Endpoint::Abstract("name".into())
        );
        for bad in [
            "vsock://1024",
            "vsock://x:1",
            "vsock://2:0",
            "vsock://2:-5",
            "unix://rel",
            "unix://@",
            "tcp://1.2.3.4:5",
            "",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        for s in [
            "vsock://-1:1026",
            "vsock://2:10240",
            "unix:///a/b",
            "unix://@n",
        ] {
            assert_eq!(Endpoint::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn unix_listen_and_connect() {
        let dir = tempfile::tempdir().unwrap();
        let ep = Endpoint::Unix(dir.path().join("sub/s.sock"));
        let l = ep.listen_std().unwrap();
        let c = ep.connect_std().unwrap();
        let s = l.accept().unwrap();
        (&c).write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        (&s).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        drop(l);
        // A stale socket file is replaced on the next bind.
        let _l = ep.listen_std().unwrap();
    }
}
