//! `fs_group`: give a volume's files to the pod's supplementary group (Kubernetes `fsGroup`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::confine::{fd_path, fstat, lstat_at, open_no_symlinks};

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

/// Most directory levels the walk descends (each level holds one descriptor).
const MAX_DEPTH: u32 = 512;

/// Applies the group to the tree at `root`: every file and directory (symlinks are skipped) gets
/// group `gid`, `ug+r` (read-only) or `ug+rw`; directories also `ug+x` and setgid.
///
/// The walk goes through descriptors: each directory is opened from its parent without
/// following a symlink, and ownership and modes are changed on the opened object, so a tree
/// changed by the host during the walk cannot redirect it outside.
#[cfg(test)]
pub fn apply(root: &Path, group: FsGroup, read_only: bool) -> Result<()> {
    let top = std::fs::File::open(root)
        .map(OwnedFd::from)
        .map_err(|e| AgentError::internal(format!("cannot open {}: {e}", root.display())))?;
    apply_fd(&top, group, read_only)
}

/// [`apply`] on an open volume root (any descriptor, `O_PATH` included).
pub fn apply_fd(top: &OwnedFd, group: FsGroup, read_only: bool) -> Result<()> {
    let bits = wanted_bits(read_only);
    if group.policy == Policy::OnRootMismatch {
        let st = fstat(top.as_raw_fd())
            .map_err(|e| AgentError::internal(format!("cannot stat the volume: {e}")))?;
        let want = bits | 0o110 | SETGID;
        if st.st_gid == group.gid && st.st_mode & want == want {
            return Ok(());
        }
    }
    let st = fstat(top.as_raw_fd())
        .map_err(|e| AgentError::internal(format!("cannot stat the volume: {e}")))?;
    let fmt = st.st_mode & libc::S_IFMT;
    if fmt != libc::S_IFDIR {
        return fix(
            top,
            st.st_mode,
            fmt,
            group.gid,
            bits,
            Path::new("the volume"),
        );
    }
    let dir = open_no_symlinks(
        top.as_raw_fd(),
        Path::new(""),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )
    .map_err(|e| AgentError::internal(format!("cannot open the volume: {e}")))?;
    walk(&dir, Path::new("."), group.gid, bits, 0)
}

fn err(what: &str, shown: &Path, e: impl std::fmt::Display) -> AgentError {
    AgentError::internal(format!("cannot {what} {}: {e}", shown.display()))
}

/// Sets group and mode of the open object `fd` (of type `fmt`).
fn fix(fd: &OwnedFd, mode: u32, fmt: u32, gid: u32, bits: u32, shown: &Path) -> Result<()> {
    nix::unistd::fchownat(
        Some(fd.as_raw_fd()),
        "",
        None,
        Some(nix::unistd::Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_EMPTY_PATH,
    )
    .map_err(|e| err("change the group of", shown, e))?;
    let mut mode = mode & 0o7777 | bits;
    if fmt == libc::S_IFDIR {
        mode |= 0o110 | SETGID;
    }
    // The descriptor may be O_PATH: chmod through its /proc link reaches exactly this inode.
    std::fs::set_permissions(fd_path(fd), std::fs::Permissions::from_mode(mode))
        .map_err(|e| err("change the mode of", shown, e))
}

fn walk(dir: &OwnedFd, shown: &Path, gid: u32, bits: u32, depth: u32) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(AgentError::internal(format!(
            "{} is nested too deeply",
            shown.display()
        )));
    }
    let st = fstat(dir.as_raw_fd()).map_err(|e| err("stat", shown, e))?;
    fix(dir, st.st_mode, libc::S_IFDIR, gid, bits, shown)?;
    let mut names = Vec::new();
    for entry in std::fs::read_dir(fd_path(dir)).map_err(|e| err("list", shown, e))? {
        names.push(entry.map_err(|e| err("list", shown, e))?.file_name());
    }
    for name in names {
        let path = shown.join(&name);
        let st = match lstat_at(dir.as_raw_fd(), &name) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(err("stat", &path, e)),
        };
        match st.st_mode & libc::S_IFMT {
            libc::S_IFLNK => continue,
            libc::S_IFDIR => {
                let sub = open_no_symlinks(
                    dir.as_raw_fd(),
                    Path::new(&name),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )
                .map_err(|e| err("open", &path, e))?;
                walk(&sub, &path, gid, bits, depth + 1)?;
            }
            _ => {
                let fd = open_no_symlinks(
                    dir.as_raw_fd(),
                    Path::new(&name),
                    libc::O_PATH | libc::O_NOFOLLOW,
                    0,
                )
                .map_err(|e| err("open", &path, e))?;
                let st = fstat(fd.as_raw_fd()).map_err(|e| err("stat", &path, e))?;
                let fmt = st.st_mode & libc::S_IFMT;
                if fmt == libc::S_IFLNK || fmt == libc::S_IFDIR {
                    continue; // swapped since it was listed: skip it
                }
                fix(&fd, st.st_mode, fmt, gid, bits, &path)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

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
