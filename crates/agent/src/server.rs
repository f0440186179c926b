//! The ttRPC listener: binds the configured address, serves the agent and health services, and stops
//! on DestroySandbox or (standalone mode) SIGTERM/SIGINT.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::agent::{Agent, Shutdown};
use crate::rpc;

/// Why [`serve`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    SandboxDestroyed,
    Signal(i32),
}

/// Prepares the filesystem side of a `unix://` address: the parent directory must exist and a stale
/// socket file left by an earlier agent is removed (a live one is an error: two agents must not
/// share an address).
fn prepare_unix_address(addr: &str) -> Result<()> {
    let Some(path) = addr.strip_prefix("unix://") else {
        return Ok(());
    };
    if path.starts_with('@') {
        return Ok(()); // abstract: nothing on disk
    }
    let path = Path::new(path);
    if !path.is_absolute() {
        bail!("the unix socket path {} is not absolute", path.display());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("{} exists and is not a socket", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another process is already serving on {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    Ok(())
}

/// Serves until the sandbox is destroyed or, outside init mode, SIGTERM/SIGINT arrives.
pub async fn serve(agent: Arc<Agent>, addr: &str) -> Result<StopReason> {
    prepare_unix_address(addr)?;
    // Watched before the socket exists: a signal sent as soon as a client can connect must stop
    // the agent cleanly, not kill it with the default action.
    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut server = ttrpc::r#async::Server::new()
        .bind(addr)
        .with_context(|| format!("cannot listen on {addr}"))?;
    for service in rpc::services(agent.clone()) {
        server = server.register_service(service);
    }
    server
        .start()
        .await
        .with_context(|| format!("cannot start serving on {addr}"))?;
    info!(subsystem = "rpc", address = addr, "ttRPC server listening");

    let mut shutdown = agent.shutdown_signal();
    let standalone = !agent.init_mode;
    let reason = loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() == Shutdown::SandboxDestroyed {
                    break StopReason::SandboxDestroyed;
                }
            }
            _ = sigterm.recv(), if standalone => break StopReason::Signal(libc::SIGTERM),
            _ = sigint.recv(), if standalone => break StopReason::Signal(libc::SIGINT),
        }
    };
    info!(subsystem = "rpc", reason = ?reason, "stopping the ttRPC server");
    if reason == StopReason::SandboxDestroyed {
        // Give the DestroySandbox reply a moment to reach the client before connections close.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .is_err()
    {
        warn!(subsystem = "rpc", "connections did not close within 10 s");
    }
    if let Some(path) = addr.strip_prefix("unix://") {
        if !path.starts_with('@') {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_socket_is_removed_and_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/agent.sock");
        let addr = format!("unix://{}", path.display());
        prepare_unix_address(&addr).unwrap();
        assert!(path.parent().unwrap().is_dir());
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(prepare_unix_address(&addr).is_err());
        drop(listener);
        prepare_unix_address(&addr).unwrap();
        assert!(!path.exists());
        std::fs::write(&path, "x").unwrap();
        assert!(prepare_unix_address(&addr).is_err());
        assert!(prepare_unix_address("unix://relative").is_err());
        prepare_unix_address("unix://@abstract-name").unwrap();
        prepare_unix_address("vsock://-1:1024").unwrap();
    }
}
