//! The container engine: takes an OCI runtime spec and runs it as a container.
//!
//! The engine is synchronous; callers in an async context use `spawn_blocking`.
//! Every child process of the hosting program must be waited for through
//! [`reaper`], which owns `waitpid(-1)`.
//!
//! Container processes are created by re-executing [`EngineConfig::init_exe`]
//! with [`EngineConfig::init_args`]; that program must call [`child::run`]
//! first thing in `main`, before it starts any thread.

mod cancel;
pub mod cgroups;
pub mod child;
mod console;
mod container;
pub mod fsutil;
mod hooks;
pub mod reaper;
mod selfexe;
mod setup;
mod sync;
mod validate;

use std::os::fd::OwnedFd;
use std::path::PathBuf;

pub use cancel::Cancel;
pub use container::{clear_spare, keep_spare, Container, ExecPlan, PostStart, Status};
pub use reaper::{CommandOutput, ExitWatch};
pub use validate::validate_container_id;

/// Errors of the engine. Messages are complete sentences meant for the caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad container id, spec, path or argument.
    #[error("{0}")]
    InvalidArgument(String),
    /// The container (or something it needs exclusively) already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// Something named by the caller does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The set-up was abandoned through its [`Cancel`] handle (and rolled back).
    #[error("{0}")]
    Cancelled(String),
    /// Any other failure.
    #[error("{0}")]
    Other(String),
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        Error::Other(format!("{e:#}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Other(e.to_string())
    }
}

/// Result type of the engine.
pub type Result<T> = std::result::Result<T, Error>;

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Bundles live in `run_dir/<container id>` (default `/run/kata-containers`).
    pub run_dir: PathBuf,
    /// Program re-executed to set up container processes (default `/proc/self/exe`). It is run
    /// from a sealed in-memory copy, never from its file (see `selfexe.rs`).
    pub init_exe: PathBuf,
    /// Arguments that make `init_exe` call [`child::run`] (default `["init"]`).
    pub init_args: Vec<String>,
    /// Cgroup layout.
    pub cgroups: cgroups::CgroupConfig,
    /// Use `MS_MOVE` + `chroot` instead of `pivot_root` (for an initramfs root).
    pub no_pivot_root: bool,
    /// The hosting program is PID 1 (it then need not become a child subreaper).
    pub agent_pid_is_1: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            run_dir: PathBuf::from("/run/kata-containers"),
            init_exe: PathBuf::from("/proc/self/exe"),
            init_args: vec!["init".to_string()],
            cgroups: cgroups::CgroupConfig::default(),
            no_pivot_root: false,
            agent_pid_is_1: std::process::id() == 1,
        }
    }
}

/// Child-side standard streams of a container process. `None` means `/dev/null`.
///
/// A terminal process (`process.terminal`) gets none of these: its pty is opened inside the
/// container and the engine hands back the master ([`Container::take_console`] for the init,
/// the third value of [`Container::exec`] for another process); pass `Stdio::default()`.
#[derive(Debug, Default)]
pub struct Stdio {
    /// Becomes fd 0.
    pub stdin: Option<OwnedFd>,
    /// Becomes fd 1.
    pub stdout: Option<OwnedFd>,
    /// Becomes fd 2.
    pub stderr: Option<OwnedFd>,
}
