//! The sandbox: agent-wide state and the CreateSandbox / DestroySandbox life cycle.
//!
//! One [`Agent`] exists for the life of the process. It owns the configuration, the paths every
//! module works under (all below a configurable run directory, so that tests can run in parallel),
//! the sandbox state created by CreateSandbox, and the shutdown trigger.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::sync::{watch, Mutex};
use tracing::{info, warn};

use crate::config::AgentConfig;
use crate::container::Containers;
use crate::error::{AgentError, Result};
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

/// OCI hooks found below CreateSandbox's `guest_hook_path`, merged into container specs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestHooks {
    pub prestart: Vec<oci_spec::runtime::Hook>,
    pub poststart: Vec<oci_spec::runtime::Hook>,
    pub poststop: Vec<oci_spec::runtime::Hook>,
}

impl GuestHooks {
    pub fn is_empty(&self) -> bool {
        self.prestart.is_empty() && self.poststart.is_empty() && self.poststop.is_empty()
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

    /// The engine settings containers are created with.
    pub fn engine_config(&self) -> engine::EngineConfig {
        self.engine.clone()
    }

    /// A receiver that changes once the agent must stop.
    pub fn shutdown_signal(&self) -> watch::Receiver<Shutdown> {
        self.shutdown_tx.subscribe()
    }

    fn trigger_shutdown(&self) {
        let _ = self.shutdown_tx.send(Shutdown::SandboxDestroyed);
    }
}

/// The parts of a CreateSandbox request this module acts on (decoupled from the protobuf type).
#[derive(Debug, Default, Clone)]
pub struct CreateSandboxParams {
    pub hostname: String,
    pub dns: Vec<String>,
    pub sandbox_id: String,
    pub guest_hook_path: String,
    pub kernel_modules: Vec<(String, Vec<String>)>,
}

/// CreateSandbox: kernel modules, shared IPC/UTS namespaces, guest hooks, DNS.
///
/// Everything is validated before anything is changed; a failure part-way undoes what this call did.
/// A repeated call updates the hostname and DNS of the existing sandbox without stacking mounts.
pub async fn create(agent: &Agent, params: CreateSandboxParams) -> Result<()> {
    for (name, _) in &params.kernel_modules {
        if name.trim().is_empty() {
            return Err(AgentError::invalid_argument(
                "a kernel module in the request has an empty name",
            ));
        }
    }
    for entry in &params.dns {
        if entry.contains('\0') {
            return Err(AgentError::invalid_argument(
                "a DNS entry in the request contains a NUL byte",
            ));
        }
    }
    if !params.guest_hook_path.is_empty() && !Path::new(&params.guest_hook_path).is_absolute() {
        return Err(AgentError::invalid_argument(format!(
            "guest_hook_path {:?} is not an absolute path",
            params.guest_hook_path
        )));
    }

    let mut state = agent.sandbox.lock().await;
    if state.destroyed {
        return Err(AgentError::failed_precondition(
            "the sandbox has been destroyed; the agent is shutting down",
        ));
    }

    std::fs::create_dir_all(&agent.paths.run_dir).map_err(|e| {
        AgentError::internal(format!(
            "cannot create the run directory {}: {e}",
            agent.paths.run_dir.display()
        ))
    })?;

    for (name, params) in &params.kernel_modules {
        load_kernel_module(name, params).await?;
    }

    // The shared namespaces are created once and kept for the life of the sandbox; a repeated call
    // only changes the hostname inside the UTS namespace.
    let mut new_ns = None;
    match &state.shared_ns {
        Some(ns) => ns.set_hostname(&params.hostname)?,
        None => {
            let dir = agent.paths.sandbox_ns_dir.clone();
            let hostname = params.hostname.clone();
            let ns = tokio::task::spawn_blocking(move || SharedNamespaces::create(&dir, &hostname))
                .await
                .map_err(|e| AgentError::internal(format!("namespace setup task failed: {e}")))??;
            new_ns = Some(ns);
        }
    }

    let hooks = if params.guest_hook_path.is_empty() {
        GuestHooks::default()
    } else {
        scan_guest_hooks(Path::new(&params.guest_hook_path))
    };

    if let Err(e) = apply_dns(agent, &mut state, &params.dns) {
        if let Some(ns) = new_ns {
            ns.remove();
        }
        return Err(e);
    }

    if let Some(ns) = new_ns {
        state.shared_ns = Some(ns);
    }
    state.created = true;
    state.hostname = params.hostname;
    if !params.sandbox_id.is_empty() {
        state.id = params.sandbox_id;
    }
    state.hooks = hooks;
    info!(subsystem = "sandbox", sandbox_id = %state.id, "sandbox created");
    Ok(())
}

/// DestroySandbox: undo what CreateSandbox did, then stop the agent.
///
/// `destroy_containers` tears down every container first (it is supplied by the container module so
/// that this module does not depend on it).
pub async fn destroy<F, Fut>(agent: &Agent, destroy_containers: F) -> Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    {
        let state = agent.sandbox.lock().await;
        if state.destroyed {
            return Err(AgentError::failed_precondition(
                "the sandbox has already been destroyed",
            ));
        }
    }
    destroy_containers().await?;

    let mut state = agent.sandbox.lock().await;
    if state.dns_mounted {
        match nix::mount::umount2(&agent.paths.resolv_conf, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => state.dns_mounted = false,
            Err(e) => warn!(subsystem = "sandbox", error = %e, "cannot unmount resolv.conf"),
        }
    }
    if let Some(ns) = state.shared_ns.take() {
        ns.remove();
    }
    let _ = std::fs::remove_dir_all(&agent.paths.sandbox_dir);
    state.destroyed = true;
    state.created = false;
    info!(subsystem = "sandbox", sandbox_id = %state.id, "sandbox destroyed");
    drop(state);
    agent.trigger_shutdown();
    Ok(())
}

/// Runs `modprobe -v <name> <params...>` and fails with its output when it fails.
async fn load_kernel_module(name: &str, params: &[String]) -> Result<()> {
    let modprobe = ["/sbin/modprobe", "/usr/sbin/modprobe", "/bin/modprobe"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| {
            AgentError::failed_precondition(format!(
                "cannot load kernel module {name}: modprobe is not installed in the guest"
            ))
        })?;
    let mut cmd = std::process::Command::new(modprobe);
    cmd.arg("-v").arg(name).args(params);
    let name = name.to_string();
    let out = tokio::task::spawn_blocking(move || {
        engine::reaper::run_command(&mut cmd, None, Some(Duration::from_secs(60)))
    })
    .await
    .map_err(|e| AgentError::internal(format!("modprobe task failed: {e}")))?
    .map_err(|e| AgentError::internal(format!("cannot run modprobe for {name}: {e}")))?;
    if out.timed_out {
        return Err(AgentError::deadline_exceeded(format!(
            "modprobe {name} did not finish within 60 seconds"
        )));
    }
    if out.code != 0 {
        return Err(AgentError::internal(format!(
            "cannot load kernel module {name}: modprobe exited with {}: {}",
            out.code,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Writes the DNS entries and bind-mounts them over the guest's resolv.conf (once).
fn apply_dns(agent: &Agent, state: &mut SandboxState, dns: &[String]) -> Result<()> {
    if dns.is_empty() {
        return Ok(());
    }
    let target = &agent.paths.resolv_conf;
    let meta = match std::fs::metadata(target) {
        Ok(m) => m,
        Err(_) => {
            // A guest without resolv.conf gets none, as upstream does.
            warn!(subsystem = "sandbox", path = %target.display(), "no resolv.conf in the guest; DNS entries ignored");
            return Ok(());
        }
    };
    if meta.is_dir() {
        return Err(AgentError::failed_precondition(format!(
            "{} is a directory, cannot write DNS entries to it",
            target.display()
        )));
    }
    std::fs::create_dir_all(&agent.paths.sandbox_dir)
        .with_context(|| format!("cannot create {}", agent.paths.sandbox_dir.display()))
        .map_err(AgentError::from)?;
    let source = agent.paths.sandbox_dir.join("resolv.conf");
    let mut content = dns.iter().map(|l| l.trim()).collect::<Vec<_>>().join("\n");
    content.push('\n');
    // Before the bind mount exists, write through a temporary file so that a reader
    // never sees a half-written file. Once mounted, the mount pins the inode, so the
    // file must be rewritten in place (a rename would leave the mount on the old one).
    // Never through a symlink: O_NOFOLLOW, and O_EXCL for the new temporary file.
    let written = if state.dns_mounted {
        engine::fsutil::write_file_nofollow(&source, content.as_bytes(), 0o644, false)
    } else {
        let tmp = agent.paths.sandbox_dir.join(".resolv.conf.tmp");
        let _ = std::fs::remove_file(&tmp);
        engine::fsutil::write_file_nofollow(&tmp, content.as_bytes(), 0o644, true)
            .and_then(|_| std::fs::rename(&tmp, &source))
    };
    written.map_err(|e| AgentError::internal(format!("cannot write {}: {e}", source.display())))?;
    if !state.dns_mounted {
        nix::mount::mount(
            Some(&source),
            target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            AgentError::internal(format!(
                "cannot bind-mount {} over {}: {e}",
                source.display(),
                target.display()
            ))
        })?;
        state.dns_mounted = true;
    }
    state.dns = dns.to_vec();
    Ok(())
}

/// Scans `<path>/{prestart,poststart,poststop}` for executable regular files.
pub fn scan_guest_hooks(path: &Path) -> GuestHooks {
    let mut hooks = GuestHooks::default();
    for (kind, list) in [
        ("prestart", &mut hooks.prestart),
        ("poststart", &mut hooks.poststart),
        ("poststop", &mut hooks.poststop),
    ] {
        let dir = path.join(kind);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(_) => continue,
        };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| {
                use std::os::unix::fs::PermissionsExt;
                // symlink_metadata: a symlink is never taken as a hook.
                e.path()
                    .symlink_metadata()
                    .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
            })
            .map(|e| e.path())
            .collect();
        found.sort();
        for file in found {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match oci_spec::runtime::HookBuilder::default()
                .path(file.clone())
                .args(vec![name, kind.to_string()])
                .build()
            {
                Ok(hook) => list.push(hook),
                Err(e) => warn!(subsystem = "sandbox", error = %e, "skipping guest hook"),
            }
        }
    }
    hooks
}

/// Ids of the sandbox's shared namespaces, for the container module.
#[allow(dead_code)]
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
    let _ = anyhow!("unused");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn guest_hooks_are_executable_regular_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let pre = dir.path().join("prestart");
        std::fs::create_dir(&pre).unwrap();
        let exe = pre.join("b-hook");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe2 = pre.join("a-hook");
        std::fs::write(&exe2, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe2, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(pre.join("not-exec"), "x").unwrap();
        std::os::unix::fs::symlink(&exe, pre.join("link")).unwrap();
        let hooks = scan_guest_hooks(dir.path());
        assert_eq!(hooks.prestart.len(), 2);
        assert_eq!(hooks.prestart[0].path(), &exe2);
        assert_eq!(
            hooks.prestart[1].args().as_ref().unwrap(),
            &vec!["b-hook".to_string(), "prestart".to_string()]
        );
        assert!(hooks.poststart.is_empty() && hooks.poststop.is_empty());
    }
}
