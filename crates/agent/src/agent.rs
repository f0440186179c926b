//! The agent state: one [`Agent`] exists for the life of the process. It owns the configuration,
//! the paths every module works under (all below a configurable run directory, so that tests can
//! run in parallel), the sandbox state created by CreateSandbox, the containers, storages and
//! devices, and the shutdown trigger. The operations on it live in their own modules (`sandbox`,
//! `container`, `storage`, ...), which this one does not import, except for the types it holds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{watch, Mutex};
use tracing::warn;

use crate::config::AgentConfig;
use crate::container::{ContainerEnv, Containers, GuestHooks};
use crate::namespaces::SharedNamespaces;

/// Paths the agent works under; all derived from the configuration.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Container bundles: `<run_dir>/<cid>`.
    pub run_dir: PathBuf,
    /// Sandbox-level files (resolv.conf copy, ...): `<run_dir>/sandbox`.
    pub sandbox_dir: PathBuf,
    /// Where the persistent IPC and UTS namespaces are bind-mounted.
    pub sandbox_ns_dir: PathBuf,
    /// The guest's resolv.conf that CreateSandbox's DNS entries are mounted over.
    pub resolv_conf: PathBuf,
    /// The sysfs root (`/sys`, or a synthetic tree in tests).
    pub sysfs_root: PathBuf,
    /// Where device nodes live (`/dev`, or a test directory).
    pub dev_root: PathBuf,
    /// The shared containers directory (CopyFile root, shared file system mount point).
    pub shared_dir: PathBuf,
}

impl Paths {
    pub fn from_config(cfg: &AgentConfig) -> Paths {
        Paths {
            run_dir: cfg.run_dir.clone(),
            sandbox_dir: cfg.run_dir.join("sandbox"),
            sandbox_ns_dir: cfg.sandbox_ns_dir.clone(),
            resolv_conf: cfg.resolv_conf.clone(),
            sysfs_root: cfg.sysfs_root.clone(),
            dev_root: cfg.dev_root.clone(),
            shared_dir: cfg.run_dir.join("shared/containers"),
        }
    }
}

/// What CreateSandbox set up, so that DestroySandbox can undo it.
#[derive(Debug, Default)]
pub struct SandboxState {
    pub created: bool,
    pub id: String,
    pub hostname: String,
    pub shared_ns: Option<SharedNamespaces>,
    /// Set while our resolv.conf is bind-mounted over the guest's.
    pub dns_mounted: bool,
    pub dns: Vec<String>,
    pub hooks: GuestHooks,
    pub destroyed: bool,
}

/// Why the agent is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    Running,
    /// DestroySandbox finished.
    SandboxDestroyed,
}

/// The agent-wide state shared by every RPC handler.
pub struct Agent {
    pub config: Arc<AgentConfig>,
    pub paths: Paths,
    pub init_mode: bool,
    pub sandbox: Mutex<SandboxState>,
    pub containers: Containers,
    /// Storages of the sandbox and its containers (refcounted by mount point).
    pub storages: crate::storage::Storages,
    /// Devices seen through uevents, and waiting for hot-plugged ones.
    pub devices: crate::device::Devices,
    engine: engine::EngineConfig,
    shutdown_tx: watch::Sender<Shutdown>,
}

impl Agent {
    pub fn new(config: Arc<AgentConfig>, init_mode: bool) -> Arc<Agent> {
        let paths = Paths::from_config(&config);
        let (shutdown_tx, _) = watch::channel(Shutdown::Running);
        let engine = engine::EngineConfig {
            run_dir: config.run_dir.clone(),
            cgroups: cgroup_config(&config.cgroup_root, config.unified_cgroup_hierarchy),
            no_pivot_root: root_is_initramfs(),
            agent_pid_is_1: init_mode,
            ..Default::default()
        };
        let storages = crate::storage::Storages::new(&paths.run_dir, &paths.sandbox_ns_dir);
        let devices = crate::device::Devices::new(&paths.sysfs_root, &paths.dev_root);
        Arc::new(Agent {
            config,
            paths,
            init_mode,
            sandbox: Mutex::new(SandboxState::default()),
            containers: Containers::default(),
            storages,
            devices,
            engine,
            shutdown_tx,
        })
    }

    /// What a container's set-up takes from the sandbox: engine settings, pipe size, the guest
    /// hooks and the shared namespaces (read under the sandbox lock, which is then released).
    pub async fn container_env(&self) -> ContainerEnv {
        let sandbox = self.sandbox.lock().await;
        ContainerEnv {
            engine: self.engine.clone(),
            pipe_size: self.config.container_pipe_size,
            hooks: sandbox.hooks.clone(),
            shared_ns: shared_namespace_paths(&sandbox),
        }
    }

    /// A receiver that changes once the agent must stop.
    pub fn shutdown_signal(&self) -> watch::Receiver<Shutdown> {
        self.shutdown_tx.subscribe()
    }

    pub(crate) fn trigger_shutdown(&self) {
        let _ = self.shutdown_tx.send(Shutdown::SandboxDestroyed);
    }
}

/// Ids of the sandbox's shared namespaces, for the container module.
pub fn shared_namespace_paths(state: &SandboxState) -> HashMap<&'static str, PathBuf> {
    let mut map = HashMap::new();
    if let Some(ns) = &state.shared_ns {
        map.insert("ipc", ns.ipc.clone());
        map.insert("uts", ns.uts.clone());
    }
    map
}

/// The cgroup layout: v2 when asked for and `root` is a cgroup2 mount, else v1 below `root`.
fn cgroup_config(root: &Path, unified: bool) -> engine::cgroups::CgroupConfig {
    let v2 = unified && engine::cgroups::is_cgroup2_mount(root);
    if unified && !v2 {
        warn!(subsystem = "cgroups", root = %root.display(), "cgroup v2 was requested but the root is not a cgroup2 mount; using v1");
    }
    engine::cgroups::CgroupConfig {
        v2,
        v1_root: root.to_path_buf(),
        v2_root: root.to_path_buf(),
    }
}

/// Whether `/` is an initramfs (`rootfs`), where pivot_root is impossible.
fn root_is_initramfs() -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let mut f = l.split_whitespace();
                let (_src, dst, fstype) = (f.next(), f.next(), f.next());
                dst == Some("/") && fstype == Some("rootfs")
            })
        })
        .unwrap_or(false)
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Agent>();
}
