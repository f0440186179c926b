//! What the engine hands to the setup process.

use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};
use serde::{Deserialize, Serialize};

/// Which kind of process is being set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// The container's init: builds the rootfs, waits on the start barrier.
    Init,
    /// A process joining an existing container.
    Exec,
}

/// One namespace: created when `path` is `None`, joined otherwise.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Namespace {
    /// Namespace kind.
    pub typ: LinuxNamespaceType,
    /// Namespace file to join.
    pub path: Option<PathBuf>,
}

/// The setup data (first message of the sync protocol).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setup {
    /// Init or exec.
    pub kind: Kind,
    /// Container id.
    pub id: String,
    /// The container spec; `root.path` is the bundle rootfs.
    pub spec: Spec,
    /// The process to run.
    pub process: Process,
    /// The bundle directory (holds `exec.fifo`).
    pub bundle: PathBuf,
    /// Namespaces to create or join, already ordered and deduplicated.
    pub namespaces: Vec<Namespace>,
    /// `MS_MOVE` + `chroot` instead of `pivot_root`.
    pub no_pivot: bool,
}

impl Setup {
    /// Whether a namespace of this type is created (not joined).
    pub fn creates(&self, typ: LinuxNamespaceType) -> bool {
        self.namespaces
            .iter()
            .any(|n| n.typ == typ && n.path.is_none())
    }

    /// Whether the process runs in a user namespace other than the engine's.
    pub fn in_userns(&self) -> bool {
        self.namespaces
            .iter()
            .any(|n| n.typ == LinuxNamespaceType::User)
    }
}
