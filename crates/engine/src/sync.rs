//! Messages between the engine (parent) and the re-executed setup process
//! (child): a 4-byte big-endian length followed by that many bytes of JSON.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::setup::Setup;

/// Largest message accepted (a spec with a big seccomp profile is well below).
const MAX_MSG: usize = 64 << 20;

/// Parent → child.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToChild {
    /// Everything the child needs; the first message.
    Setup(Box<Setup>),
    /// The requested step is done; carry on.
    Ok,
    /// The requested step failed; give up.
    Abort(String),
}

/// Child → parent.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToParent {
    /// A new user namespace exists: write the id maps of this (intermediate) process.
    NeedIdMaps,
    /// The container process was forked; its pid in the engine's pid namespace.
    Pid(i32),
    /// No fork was needed (the setup process was born in the pid namespace the container
    /// process belongs in): the setup process goes on as the container process.
    NoFork,
    /// Rootfs is mounted, not yet pivoted: run prestart and createRuntime hooks.
    RunHooks,
    /// Setup is complete; the process is about to wait for start (init) or exec.
    Ready,
    /// Setup failed.
    Error(String),
}

/// Writes one message.
pub fn send<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let mut buf = Vec::with_capacity(body.len() + 4);
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)
}

/// Reads one message; `Ok(None)` on a clean end of stream.
pub fn recv<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MSG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a setup message of {len} bytes is too large"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        send(&mut buf, &ToParent::Pid(42)).unwrap();
        send(&mut buf, &ToParent::Error("boom".into())).unwrap();
        let mut r = &buf[..];
        assert!(matches!(recv(&mut r).unwrap(), Some(ToParent::Pid(42))));
        assert!(matches!(recv(&mut r).unwrap(), Some(ToParent::Error(m)) if m == "boom"));
        assert!(recv::<ToParent>(&mut r).unwrap().is_none());
    }
}
