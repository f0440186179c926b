//! Client side of the Kata agent API: opens ttRPC connections to an agent.
//!
//! Supported addresses:
//!
//! * `unix:///path/to/socket` – a unix socket on the filesystem;
//! * `unix://@name` – a socket in the abstract namespace;
//! * `vsock://CID:PORT` – a vsock address (a CID of `-1` or an empty CID means `VMADDR_CID_ANY`);
//! * `tcp://HOST:PORT` – plain TCP (handled by the ttrpc crate).
//!
//! With [`ConnectOptions::hybrid_vsock`] the unix socket is the host end of a hypervisor's
//! "hybrid vsock" (Firecracker, Cloud Hypervisor): after connecting, the client writes
//! `CONNECT <port>\n` and the hypervisor answers with a line that starts with `OK` once it has
//! connected the stream to the guest port.

use std::os::unix::net::{SocketAddr, UnixStream as StdUnixStream};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::health_ttrpc::HealthClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use ttrpc::r#async::transport::Socket;

/// Default guest port of the agent, also the default hybrid-vsock port.
pub const DEFAULT_AGENT_PORT: u32 = 1024;

/// Longest reply line accepted from a hybrid-vsock `CONNECT` handshake.
const MAX_HANDSHAKE_LINE: usize = 1024;

/// How to reach the agent.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Treat a `unix://` address as a hypervisor hybrid-vsock socket.
    pub hybrid_vsock: bool,
    /// Guest port named in the hybrid-vsock `CONNECT` line.
    pub hybrid_vsock_port: u32,
    /// Number of connection attempts before giving up (at least one is always made).
    pub retries: u32,
    /// Pause between two connection attempts.
    pub retry_delay: Duration,
    /// Upper bound on one hybrid-vsock handshake (sending `CONNECT`, reading the reply).
    pub handshake_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            hybrid_vsock: false,
            hybrid_vsock_port: DEFAULT_AGENT_PORT,
            retries: 300,
            retry_delay: Duration::from_millis(10),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// A parsed agent address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A filesystem unix socket path.
    Unix(String),
    /// An abstract unix socket name (without the leading `@`).
    AbstractUnix(String),
    /// A vsock CID and port.
    Vsock { cid: u32, port: u32 },
    /// A TCP `host:port`.
    Tcp(String),
}

impl Address {
    /// Parses one of the address forms listed in the crate documentation.
    pub fn parse(addr: &str) -> Result<Address> {
        if let Some(rest) = addr.strip_prefix("unix://") {
            if let Some(name) = rest.strip_prefix('@') {
                if name.is_empty() {
                    bail!("the abstract unix socket address {addr:?} has no name");
                }
                return Ok(Address::AbstractUnix(name.to_string()));
            }
            if rest.is_empty() {
                bail!("the unix socket address {addr:?} has no path");
            }
            return Ok(Address::Unix(rest.to_string()));
        }
        if let Some(rest) = addr.strip_prefix("vsock://") {
            let (cid, port) = rest.rsplit_once(':').ok_or_else(|| {
                anyhow!("the vsock address {addr:?} is not of the form vsock://CID:PORT")
            })?;
            let cid = match cid.trim() {
                "" | "-1" => libc::VMADDR_CID_ANY,
                c => c
                    .parse::<u32>()
                    .map_err(|_| anyhow!("the vsock CID {c:?} in {addr:?} is not a number"))?,
            };
            let port = port
                .trim()
                .parse::<u32>()
                .map_err(|_| anyhow!("the vsock port {port:?} in {addr:?} is not a number"))?;
            return Ok(Address::Vsock { cid, port });
        }
        if let Some(rest) = addr.strip_prefix("tcp://") {
            if rest.is_empty() {
                bail!("the tcp address {addr:?} has no host and port");
            }
            return Ok(Address::Tcp(rest.to_string()));
        }
        bail!("unsupported agent address {addr:?}: expected unix:///path, unix://@name, vsock://CID:PORT or tcp://HOST:PORT")
    }

    fn is_unix(&self) -> bool {
        matches!(self, Address::Unix(_) | Address::AbstractUnix(_))
    }
}

/// Connects to the agent at `addr` and returns a ttRPC client for that one connection.
///
/// Connecting is retried `opts.retries` times, `opts.retry_delay` apart, so that an agent
/// which is still starting is reached. With `opts.hybrid_vsock` a failed handshake is retried
/// too, since hypervisors refuse the connection until the guest listens on the port.
pub async fn connect(addr: &str, opts: &ConnectOptions) -> Result<ttrpc::r#async::Client> {
    let address = Address::parse(addr)?;
    if opts.hybrid_vsock && !address.is_unix() {
        bail!("hybrid vsock needs a unix:// address, not {addr:?}");
    }
    let attempts = opts.retries.max(1);
    let mut last_err = None;
    for attempt in 0..attempts {
        if attempt > 0 {
            tokio::time::sleep(opts.retry_delay).await;
        }
        match connect_once(&address, opts).await {
            Ok(socket) => return Ok(ttrpc::r#async::Client::new(socket)),
            Err(e) => last_err = Some(e),
        }
    }
    let err = last_err.unwrap_or_else(|| anyhow!("no connection attempt was made"));
    Err(err.context(format!(
        "cannot connect to the agent at {addr} ({attempts} attempt(s))"
    )))
}

/// One connection attempt, including the hybrid-vsock handshake when asked for.
async fn connect_once(address: &Address, opts: &ConnectOptions) -> Result<Socket> {
    match address {
        Address::Unix(_) | Address::AbstractUnix(_) => {
            let mut stream = connect_unix(address)?;
            if opts.hybrid_vsock {
                tokio::time::timeout(
                    opts.handshake_timeout,
                    hybrid_vsock_handshake(&mut stream, opts.hybrid_vsock_port),
                )
                .await
                .map_err(|_| anyhow!("the hybrid vsock handshake timed out"))??;
            }
            Ok(Socket::from(stream))
        }
        Address::Vsock { cid, port } => {
            // The ttrpc transport maps "-1" to VMADDR_CID_ANY itself.
            let cid = if *cid == libc::VMADDR_CID_ANY {
                "-1".to_string()
            } else {
                cid.to_string()
            };
            Socket::connect_vsock(format!("{cid}:{port}"))
                .await
                .context("vsock connect failed")
        }
        Address::Tcp(hostport) => Socket::connect_tcp(hostport)
            .await
            .context("tcp connect failed"),
    }
}

/// Connects a unix stream socket; the std API is used because it knows abstract addresses.
fn connect_unix(address: &Address) -> Result<UnixStream> {
    let sockaddr = match address {
        Address::Unix(path) => SocketAddr::from_pathname(path)
            .with_context(|| format!("invalid unix socket path {path:?}"))?,
        Address::AbstractUnix(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)
                .with_context(|| format!("invalid abstract socket name {name:?}"))?
        }
        _ => unreachable!("connect_unix is only called for unix addresses"),
    };
    let std_stream =
        StdUnixStream::connect_addr(&sockaddr).context("unix socket connect failed")?;
    std_stream.set_nonblocking(true)?;
    Ok(UnixStream::from_std(std_stream)?)
}

/// Runs the hybrid-vsock handshake on a freshly connected stream.
///
/// The reply is read one byte at a time so that nothing after the newline (which would belong
/// to the ttRPC stream) is consumed.
pub async fn hybrid_vsock_handshake(stream: &mut UnixStream, port: u32) -> Result<()> {
    hybrid_vsock_connect(stream, port).await.map(|_| ())
}

/// Like [`hybrid_vsock_handshake`], and returns the host-side port of the connection from the
/// `OK <port>` reply (0 when the reply has none). That port names a pass-fd stream in the
/// `stdin_port`/`stdout_port`/`stderr_port` fields of CreateContainer/ExecProcess, since the
/// agent sees it as the connection's peer port.
pub async fn hybrid_vsock_connect(stream: &mut UnixStream, port: u32) -> Result<u32> {
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .context("cannot send the hybrid vsock CONNECT line")?;
    let mut line = Vec::new();
    loop {
        let mut byte = [0u8; 1];
        let n = stream
            .read(&mut byte)
            .await
            .context("cannot read the hybrid vsock reply")?;
        if n == 0 {
            bail!("the hybrid vsock socket closed the connection before answering CONNECT {port}");
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > MAX_HANDSHAKE_LINE {
            bail!("the hybrid vsock reply is longer than {MAX_HANDSHAKE_LINE} bytes");
        }
    }
    if !line.starts_with(b"OK") {
        bail!(
            "the hybrid vsock socket refused CONNECT {port}: {:?}",
            String::from_utf8_lossy(&line)
        );
    }
    Ok(std::str::from_utf8(&line[2..])
        .ok()
        .and_then(|rest| rest.trim().parse::<u32>().ok())
        .unwrap_or(0))
}

/// Opens a pass-fd stream on the unix-socket form of the agent's listener
/// (`KATA_AGENT_PASSFD_ADDR=unix:///path`) and names it `port` (its first line, `<port>\n`).
pub fn passfd_connect_unix(
    path: &std::path::Path,
    port: u32,
) -> Result<std::os::unix::net::UnixStream> {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("cannot connect to the pass-fd listener {}", path.display()))?;
    writeln!(s, "{port}").context("cannot name the pass-fd stream")?;
    Ok(s)
}

/// Builds a request context; `None` or a zero duration means no timeout.
pub fn ctx(timeout: Option<Duration>) -> ttrpc::context::Context {
    match timeout {
        Some(t) => ttrpc::context::with_duration(t),
        None => ttrpc::context::Context::default(),
    }
}

/// Clients for both agent services.
///
/// Like upstream `kata-agent-ctl`, two separate connections are opened: one carries the
/// AgentService and the other the Health service.
#[derive(Clone)]
pub struct Agent {
    /// The `grpc.AgentService` client.
    pub agent: AgentServiceClient,
    /// The `grpc.Health` client.
    pub health: HealthClient,
}

impl Agent {
    /// Opens the two connections to the agent at `addr`.
    pub async fn connect(addr: &str, opts: &ConnectOptions) -> Result<Agent> {
        let agent = AgentServiceClient::new(connect(addr, opts).await?);
        let health = HealthClient::new(connect(addr, opts).await?);
        Ok(Agent { agent, health })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    fn quick(hybrid: bool) -> ConnectOptions {
        ConnectOptions {
            hybrid_vsock: hybrid,
            hybrid_vsock_port: 1024,
            retries: 3,
            retry_delay: Duration::from_millis(5),
            handshake_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn parses_addresses() {
        assert_eq!(
            Address::parse("unix:///run/a.sock").unwrap(),
            Address::Unix("/run/a.sock".into())
        );
        assert_eq!(
            Address::parse("unix://@agent").unwrap(),
            Address::AbstractUnix("agent".into())
        );
        assert_eq!(
            Address::parse("vsock://3:1024").unwrap(),
            Address::Vsock { cid: 3, port: 1024 }
        );
        assert_eq!(
            Address::parse("vsock://-1:1024").unwrap(),
            Address::Vsock {
                cid: libc::VMADDR_CID_ANY,
                port: 1024
            }
        );
        assert_eq!(
            Address::parse("vsock://:7").unwrap(),
            Address::Vsock {
                cid: libc::VMADDR_CID_ANY,
                port: 7
            }
        );
        assert_eq!(
            Address::parse("tcp://127.0.0.1:80").unwrap(),
            Address::Tcp("127.0.0.1:80".into())
        );
        for bad in [
            "",
            "unix://",
            "unix://@",
            "vsock://3",
            "vsock://x:1",
            "vsock://3:y",
            "http://a",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn ctx_timeout() {
        assert_eq!(ctx(None).timeout_nano, 0);
        assert_eq!(
            ctx(Some(Duration::from_millis(1500))).timeout_nano,
            1_500_000_000
        );
    }

    #[tokio::test]
    async fn hybrid_vsock_ok_then_bytes_flow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hvsock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).await.unwrap() == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            assert_eq!(line, b"CONNECT 2048");
            // The reply and the first payload bytes arrive together: the client must not
            // swallow the payload while reading the reply line.
            s.write_all(b"OK 1073741824\nfrom-guest").await.unwrap();
            let mut buf = [0u8; 9];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"from-host");
        });
        let addr = Address::Unix(path.to_str().unwrap().to_string());
        let mut stream = connect_unix(&addr).unwrap();
        // The host-side port of the connection names pass-fd streams.
        assert_eq!(
            hybrid_vsock_connect(&mut stream, 2048).await.unwrap(),
            1073741824
        );
        let mut buf = [0u8; 10];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"from-guest");
        stream.write_all(b"from-host").await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn hybrid_vsock_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hvsock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            // Answer every attempt with a refusal.
            for _ in 0..3 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut b = [0u8; 1];
                while s.read(&mut b).await.unwrap() == 1 && b[0] != b'\n' {}
                s.write_all(b"FAILURE no listener\n").await.unwrap();
            }
        });
        let addr = format!("unix://{}", path.display());
        let err = connect(&addr, &quick(true)).await.err().expect("must fail");
        let text = format!("{err:#}");
        assert!(text.contains("refused CONNECT 1024"), "{text}");
        assert!(text.contains("3 attempt(s)"), "{text}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn hybrid_vsock_closed_without_reply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hvsock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..3 {
                let (mut s, _) = listener.accept().await.unwrap();
                // Read the CONNECT line first: closing with unread data would reset the
                // connection instead of signalling end of file.
                let mut b = [0u8; 1];
                while s.read(&mut b).await.unwrap() == 1 && b[0] != b'\n' {}
                drop(s);
            }
        });
        let addr = format!("unix://{}", path.display());
        let err = connect(&addr, &quick(true)).await.err().expect("must fail");
        assert!(
            format!("{err:#}").contains("closed the connection"),
            "{err:#}"
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn hybrid_vsock_needs_unix() {
        let err = connect("vsock://3:1024", &quick(true)).await.err().unwrap();
        assert!(err.to_string().contains("needs a unix:// address"));
    }

    #[tokio::test]
    async fn retries_until_the_socket_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("late.sock");
        let p2 = path.clone();
        let server = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let listener = UnixListener::bind(&p2).unwrap();
            let (_s, _) = listener.accept().await.unwrap();
        });
        let opts = ConnectOptions {
            retries: 300,
            ..ConnectOptions::default()
        };
        connect(&format!("unix://{}", path.display()), &opts)
            .await
            .unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn missing_socket_fails_after_retries() {
        let err = connect("unix:///nonexistent/agent.sock", &quick(false))
            .await
            .err()
            .unwrap();
        let text = format!("{err:#}");
        assert!(text.contains("cannot connect to the agent"), "{text}");
        assert!(text.contains("3 attempt(s)"), "{text}");
    }

    #[tokio::test]
    async fn abstract_socket() {
        let name = format!("agent-client-test-{}", std::process::id());
        let sockaddr = {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&name).unwrap()
        };
        let std_listener = std::os::unix::net::UnixListener::bind_addr(&sockaddr).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let listener = UnixListener::from_std(std_listener).unwrap();
        let server = tokio::spawn(async move {
            let (_s, _) = listener.accept().await.unwrap();
        });
        connect(&format!("unix://@{name}"), &quick(false))
            .await
            .unwrap();
        server.await.unwrap();
    }
}
