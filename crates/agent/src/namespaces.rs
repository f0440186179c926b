//! The sandbox's persistent IPC and UTS namespaces.
//!
//! CreateSandbox makes one IPC and one UTS namespace that every container of the sandbox joins. They
//! are created on a short-lived thread (IPC and UTS may be unshared per thread, even in a
//! multi-threaded process), and kept alive by bind-mounting the thread's namespace files onto plain
//! files in the sandbox namespace directory.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use tracing::warn;

use crate::error::{AgentError, Result};

/// Paths of the bind-mounted namespace files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedNamespaces {
    pub ipc: PathBuf,
    pub uts: PathBuf,
}

impl SharedNamespaces {
    /// Creates fresh IPC and UTS namespaces below `dir`, with `hostname` set in the UTS one.
    pub fn create(dir: &Path, hostname: &str) -> Result<SharedNamespaces> {
        std::fs::create_dir_all(dir)
            .map_err(|e| AgentError::internal(format!("cannot create {}: {e}", dir.display())))?;
        let ns = SharedNamespaces {
            ipc: dir.join("ipc"),
            uts: dir.join("uts"),
        };
        // Leftovers of an earlier agent (e.g. after a crash) are replaced.
        ns.remove();
        for path in [&ns.ipc, &ns.uts] {
            // A new, empty file, never through a symlink.
            engine::fsutil::write_file_nofollow(path, b"", 0o644, true).map_err(|e| {
                AgentError::internal(format!("cannot create {}: {e}", path.display()))
            })?;
        }
        let (ipc, uts) = (ns.ipc.clone(), ns.uts.clone());
        let hostname = hostname.to_string();
        let result = std::thread::spawn(move || -> std::result::Result<(), String> {
            unshare(CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
                .map_err(|e| format!("cannot create the shared IPC and UTS namespaces: {e}"))?;
            if !hostname.is_empty() {
                nix::unistd::sethostname(&hostname)
                    .map_err(|e| format!("cannot set the sandbox hostname {hostname:?}: {e}"))?;
            }
            let tid = nix::unistd::gettid();
            for (kind, target) in [("ipc", &ipc), ("uts", &uts)] {
                let source = format!("/proc/self/task/{tid}/ns/{kind}");
                mount(
                    Some(source.as_str()),
                    target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| format!("cannot pin the {kind} namespace: {e}"))?;
            }
            Ok(())
        })
        .join()
        .map_err(|_| "the namespace thread panicked".to_string())
        .and_then(|r| r);
        if let Err(e) = result {
            ns.remove();
            return Err(AgentError::internal(e));
        }
        Ok(ns)
    }

    /// Sets the hostname inside the shared UTS namespace.
    pub fn set_hostname(&self, hostname: &str) -> Result<()> {
        if hostname.is_empty() {
            return Ok(());
        }
        let file = File::open(&self.uts).map_err(|e| {
            AgentError::internal(format!("cannot open {}: {e}", self.uts.display()))
        })?;
        let hostname = hostname.to_string();
        std::thread::spawn(move || -> std::result::Result<(), String> {
            // Only this short-lived thread moves into the namespace.
            setns(file.as_fd(), CloneFlags::CLONE_NEWUTS).map_err(|e| e.to_string())?;
            nix::unistd::sethostname(&hostname).map_err(|e| e.to_string())
        })
        .join()
        .map_err(|_| AgentError::internal("the namespace thread panicked"))?
        .map_err(|e| AgentError::internal(format!("cannot set the sandbox hostname: {e}")))
    }

    /// Unmounts and removes the namespace files; errors are only logged.
    pub fn remove(&self) {
        for path in [&self.ipc, &self.uts] {
            // The file may be mounted more than once by an earlier crashed agent.
            while umount2(path, MntFlags::MNT_DETACH).is_ok() {}
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(subsystem = "sandbox", path = %path.display(), error = %e, "cannot remove namespace file");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns_id(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn creates_distinct_namespaces_and_removes_them() {
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ns = SharedNamespaces::create(dir.path(), "sandbox-host").unwrap();
        assert_ne!(ns_id(&ns.uts), ns_id(Path::new("/proc/self/ns/uts")));
        assert_ne!(ns_id(&ns.ipc), ns_id(Path::new("/proc/self/ns/ipc")));
        ns.set_hostname("renamed").unwrap();
        ns.remove();
        assert!(!ns.uts.exists() && !ns.ipc.exists());
    }
}
