//! A ttRPC client that frames requests itself.
//!
//! The library client gives up at a request's own deadline, which hides whether the server ever
//! answered; this one waits a grace period past it, so that a server that outlives a deadline is
//! seen. It also writes frames that no well-behaved client would.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use protobuf::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// ttRPC frame types.
pub const TYPE_REQUEST: u8 = 1;
pub const TYPE_RESPONSE: u8 = 2;
/// Largest frame payload the protocol allows.
pub const MAX_FRAME: usize = 4 << 20;

/// What became of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered OK.
    Ok,
    /// Answered with a non-OK status.
    Status(ttrpc::Code),
    /// No answer by the deadline plus the grace period.
    Hang,
    /// The connection broke (the agent closed it, or died).
    Closed(String),
}

impl Outcome {
    /// A short label for the report (`OK`, `INVALID_ARGUMENT`, `HANG`, ...).
    pub fn label(&self) -> String {
        match self {
            Outcome::Ok => "OK".into(),
            Outcome::Status(c) => format!("{c:?}"),
            Outcome::Hang => "HANG".into(),
            Outcome::Closed(_) => "CLOSED".into(),
        }
    }
}

/// One connection; requests on it are sequential.
pub struct Conn {
    stream: UnixStream,
    next_id: u32,
}

/// A frame header: payload length, stream id, type, flags (big-endian).
pub fn header(len: u32, stream_id: u32, typ: u8, flags: u8) -> [u8; 10] {
    let mut h = [0u8; 10];
    h[0..4].copy_from_slice(&len.to_be_bytes());
    h[4..8].copy_from_slice(&stream_id.to_be_bytes());
    h[8] = typ;
    h[9] = flags;
    h
}

impl Conn {
    pub async fn connect(socket: &Path) -> Result<Conn> {
        let stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("connect to {}", socket.display()))?;
        Ok(Conn { stream, next_id: 1 })
    }

    /// Sends `payload` to `service`/`method` with `deadline` as its `timeout_nano`, and waits for
    /// the answer until the deadline plus `grace`.
    pub async fn call(
        &mut self,
        service: &str,
        method: &str,
        payload: Vec<u8>,
        deadline: Duration,
        grace: Duration,
    ) -> Outcome {
        let req = ttrpc::Request {
            service: service.to_string(),
            method: method.to_string(),
            payload,
            timeout_nano: deadline.as_nanos() as i64,
            ..Default::default()
        };
        let body = match req.write_to_bytes() {
            Ok(b) => b,
            Err(e) => return Outcome::Closed(format!("encode: {e}")),
        };
        if body.len() > MAX_FRAME {
            // The client side of the protocol refuses these; the framing cases cover them.
            return Outcome::Status(ttrpc::Code::RESOURCE_EXHAUSTED);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(2);
        let mut frame = header(body.len() as u32, id, TYPE_REQUEST, 0).to_vec();
        frame.extend_from_slice(&body);
        if let Err(e) = self.stream.write_all(&frame).await {
            return Outcome::Closed(format!("write: {e}"));
        }
        match tokio::time::timeout(deadline + grace, self.read_response(id)).await {
            Err(_) => Outcome::Hang,
            Ok(Err(e)) => Outcome::Closed(format!("{e:#}")),
            Ok(Ok(resp)) => match resp.status.as_ref() {
                Some(s) if s.code() != ttrpc::Code::OK => Outcome::Status(s.code()),
                _ => Outcome::Ok,
            },
        }
    }

    /// Writes raw bytes (for malformed frames).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads the next response frame for `id`, skipping others.
    pub async fn read_response(&mut self, id: u32) -> Result<ttrpc::Response> {
        loop {
            let mut h = [0u8; 10];
            self.stream
                .read_exact(&mut h)
                .await
                .context("read header")?;
            let len = u32::from_be_bytes(h[0..4].try_into().unwrap()) as usize;
            let sid = u32::from_be_bytes(h[4..8].try_into().unwrap());
            if len > MAX_FRAME {
                bail!("the agent sent a {len}-byte frame");
            }
            let mut body = vec![0u8; len];
            self.stream
                .read_exact(&mut body)
                .await
                .context("read body")?;
            if h[8] == TYPE_RESPONSE && sid == id {
                return ttrpc::Response::parse_from_bytes(&body).context("decode response");
            }
        }
    }
}
