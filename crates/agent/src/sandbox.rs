//! The sandbox life cycle: CreateSandbox / DestroySandbox on the agent state ([`crate::agent`]),
//! the guest hooks they find, kernel modules and DNS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};

use crate::agent::{Agent, SandboxState};
use crate::container::GuestHooks;
use crate::error::{AgentError, Result};
use crate::namespaces::SharedNamespaces;

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
