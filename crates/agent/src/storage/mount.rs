//! The mount step shared by the storage drivers, and the mount table queries they need.

use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use engine::fsutil::unescape_mountinfo;
use nix::mount::{MntFlags, MsFlags};
use tracing::warn;

use super::confine::{fd_path, Resolved, Root};
use super::options::{MountOptions, PROPAGATION};
use crate::error::{AgentError, Result};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let f: Vec<&str> = pre.split(' ').collect();
            let g: Vec<&str> = post.split(' ').collect();
            if f.len() < 5 || g.len() < 2 {
                return None;
            }
            Some(MountEntry {
                mount_point: PathBuf::from(std::ffi::OsString::from_vec(unescape_mountinfo(f[4]))),
                fstype: g[0].to_string(),
                source: String::from_utf8_lossy(&unescape_mountinfo(g[1])).into_owned(),
            })
        })
        .collect()
}

/// The mount table of the agent.
pub fn mount_table() -> Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| AgentError::internal(format!("cannot read /proc/self/mountinfo: {e}")))?;
    Ok(parse_mountinfo(&text))
}

/// The topmost mount at `path`, if any.
pub fn mount_at(path: &Path) -> Option<MountEntry> {
    mount_table()
        .ok()?
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path)
}

/// Mounts onto an already resolved target.
///
/// Propagation flags are applied in a second call (the kernel ignores every other flag when one
/// is present), and a bind mount with per-mount flags (`ro`, `nosuid`, ...) is remounted so that
/// they take effect (a first bind mount ignores them).
pub fn mount_on(
    root: &Root,
    source: Option<&Path>,
    target: &Resolved,
    fstype: Option<&str>,
    opts: &MountOptions,
) -> Result<()> {
    let mut base = opts.flags & !PROPAGATION;
    if !base.contains(MsFlags::MS_BIND) {
        base &= !MsFlags::MS_REC;
    }
    let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
    let fstype = fstype.filter(|f| !f.is_empty());
    tracing::debug!(subsystem = "storage", source = %source.map(|s| s.display().to_string()).unwrap_or_default(), target = %target.real.display(), fstype = fstype.unwrap_or("none"), flags = ?base, data = data.unwrap_or(""), "mount");
    nix::mount::mount(source, &fd_path(&target.fd), fstype, base, data).map_err(|e| {
        AgentError::internal(format!(
            "cannot mount {} on {} (type {}): {e}",
            source.map(|s| s.display().to_string()).unwrap_or_default(),
            target.real.display(),
            fstype.unwrap_or("none"),
        ))
    })?;
    let per_mount = MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC
        | MsFlags::MS_NOATIME
        | MsFlags::MS_NODIRATIME
        | MsFlags::MS_RELATIME
        | MsFlags::MS_STRICTATIME;
    let remount_bind = base.contains(MsFlags::MS_BIND)
        && !base.contains(MsFlags::MS_REMOUNT)
        && base.intersects(per_mount);
    let prop = opts.flags & PROPAGATION;
    if remount_bind || !prop.is_empty() {
        // Reach the root of the new mount, still confined below the storage root.
        let top = root.reopen("mount point", target)?;
        let undo = |e: AgentError| {
            let _ = nix::mount::umount2(&fd_path(&top.fd), MntFlags::MNT_DETACH);
            e
        };
        if remount_bind {
            let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | (base & per_mount);
            nix::mount::mount(
                None::<&str>,
                &fd_path(&top.fd),
                None::<&str>,
                flags,
                None::<&str>,
            )
            .map_err(|e| {
                undo(AgentError::internal(format!(
                    "cannot apply the flags of the bind mount on {}: {e}",
                    target.real.display()
                )))
            })?;
        }
        if !prop.is_empty() {
            let flags = prop | (opts.flags & MsFlags::MS_REC);
            nix::mount::mount(
                None::<&str>,
                &fd_path(&top.fd),
                None::<&str>,
                flags,
                None::<&str>,
            )
            .map_err(|e| {
                undo(AgentError::internal(format!(
                    "cannot set the propagation of {}: {e}",
                    target.real.display()
                )))
            })?;
        }
    }
    Ok(())
}

/// Unmounts everything stacked on the mount point `rel` below `root` (resolved again, confined).
/// A mount point that no longer exists or is not mounted is fine.
pub fn unmount_beneath(root: &Root, path: &Path) -> Result<()> {
    for _ in 0..16 {
        let r = match root.resolve("mount point", path) {
            Ok(r) => r,
            Err(e) if e.code == ttrpc::Code::NOT_FOUND => return Ok(()),
            Err(e) => return Err(e),
        };
        if mount_at(&r.real).is_none() {
            return Ok(());
        }
        let target = fd_path(&r.fd);
        tracing::debug!(subsystem = "storage", mount_point = %r.real.display(), "unmount");
        match nix::mount::umount2(&target, MntFlags::empty()) {
            Ok(()) => {}
            Err(nix::errno::Errno::EINVAL) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) => {
                warn!(subsystem = "storage", mount_point = %r.real.display(), "mount is busy; detaching it");
                nix::mount::umount2(&target, MntFlags::MNT_DETACH).map_err(|e| {
                    AgentError::internal(format!("cannot unmount {}: {e}", r.real.display()))
                })?;
            }
            Err(e) => {
                return Err(AgentError::internal(format!(
                    "cannot unmount {}: {e}",
                    r.real.display()
                )))
            }
        }
    }
    Err(AgentError::internal(format!(
        "{} is still mounted after 16 unmounts",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let t =
            "36 35 98:0 /mnt1 /mnt\\0402 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                 37 35 0:5 / /run/x rw - tmpfs tmp\\040fs rw\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt 2"));
        assert_eq!(m[0].fstype, "ext3");
        assert_eq!(m[0].source, "/dev/root");
        assert_eq!(m[1].source, "tmp fs");
    }
}
