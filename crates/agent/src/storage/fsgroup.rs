//! `fs_group`: give a volume's files to the pod's supplementary group (Kubernetes `fsGroup`).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::error::{AgentError, Result};

/// When the ownership walk happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Always walk the whole tree.
    Always,
    /// Skip the walk when the root already has the group and the wanted mode bits.
    OnRootMismatch,
}

/// Group id and policy of a storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsGroup {
    pub gid: u32,
    pub policy: Policy,
}

const SETGID: u32 = 0o2000;

fn wanted_bits(read_only: bool) -> u32 {
    if read_only {
        0o440
    } else {
        0o660
    }
}

/// Applies the group to the tree at `root`: every file and directory (symlinks are skipped) gets
/// group `gid`, `ug+r` (read-only) or `ug+rw`; directories also `ug+x` and setgid.
pub fn apply(root: &Path, group: FsGroup, read_only: bool) -> Result<()> {
    let bits = wanted_bits(read_only);
    if group.policy == Policy::OnRootMismatch {
        let meta = std::fs::metadata(root)
            .map_err(|e| AgentError::internal(format!("cannot stat {}: {e}", root.display())))?;
        let want = bits | 0o110 | SETGID;
        if meta.gid() == group.gid && meta.mode() & want == want {
            return Ok(());
        }
    }
    walk(root, group.gid, bits, 0)
}

fn walk(path: &Path, gid: u32, bits: u32, depth: u32) -> Result<()> {
    if depth > 4096 {
        return Err(AgentError::internal(format!(
            "{} is nested too deeply",
            path.display()
        )));
    }
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| AgentError::internal(format!("cannot stat {}: {e}", path.display())))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, None, Some(gid)).map_err(|e| {
        AgentError::internal(format!(
            "cannot change the group of {}: {e}",
            path.display()
        ))
    })?;
    let mut mode = meta.mode() & 0o7777 | bits;
    if meta.is_dir() {
        mode |= 0o110 | SETGID;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        AgentError::internal(format!("cannot change the mode of {}: {e}", path.display()))
    })?;
    if meta.is_dir() {
        let entries = std::fs::read_dir(path)
            .map_err(|e| AgentError::internal(format!("cannot list {}: {e}", path.display())))?;
        for entry in entries {
            let entry = entry.map_err(|e| {
                AgentError::internal(format!("cannot list {}: {e}", path.display()))
            })?;
            walk(&entry.path(), gid, bits, depth + 1)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_sets_group_and_bits() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vol");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/f"), "x").unwrap();
        std::fs::set_permissions(root.join("sub/f"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let g = FsGroup {
            gid: 4321,
            policy: Policy::Always,
        };
        apply(&root, g, false).unwrap();
        let f = std::fs::metadata(root.join("sub/f")).unwrap();
        assert_eq!(f.gid(), 4321);
        assert_eq!(f.mode() & 0o7777, 0o660);
        let d = std::fs::metadata(root.join("sub")).unwrap();
        assert_eq!(d.mode() & SETGID, SETGID);
        assert_eq!(d.mode() & 0o770, 0o770);
        // The symlink's target is untouched.
        assert_ne!(std::fs::metadata("/etc/passwd").unwrap().gid(), 4321);

        // OnRootMismatch: a matching root skips the walk.
        std::fs::set_permissions(root.join("sub/f"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        apply(
            &root,
            FsGroup {
                gid: 4321,
                policy: Policy::OnRootMismatch,
            },
            false,
        )
        .unwrap();
        let f = std::fs::metadata(root.join("sub/f")).unwrap();
        assert_eq!(f.mode() & 0o777, 0o600);
        // A different group on the root triggers the walk.
        apply(
            &root,
            FsGroup {
                gid: 4322,
                policy: Policy::OnRootMismatch,
            },
            true,
        )
        .unwrap();
        let f = std::fs::metadata(root.join("sub/f")).unwrap();
        assert_eq!(f.gid(), 4322);
        assert_eq!(f.mode() & 0o777, 0o640);
    }
}
