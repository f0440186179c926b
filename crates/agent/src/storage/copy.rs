//! CopyFile: the host copies files into the shared containers directory, in chunks.
//!
//! Every path must lie below `<run_dir>/shared/containers/`; it is resolved without leaving that
//! directory (no `..`, no symlink out of it), and a hostile path is INVALID_ARGUMENT before
//! anything is written. Regular files and symlinks are created under a temporary name next to the
//! target and renamed over it once complete, so a reader sees the old file or the new one, never
//! a half-written one.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use protocols::agent::CopyFileRequest;

use super::confine::{clean_absolute, fd_path, remove_at, remove_error, Root};
use crate::error::{AgentError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    Symlink,
    File,
}

fn kind_of(mode: u32) -> Result<Kind> {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => Ok(Kind::Dir),
        libc::S_IFLNK => Ok(Kind::Symlink),
        0 | libc::S_IFREG => Ok(Kind::File),
        other => Err(AgentError::invalid_argument(format!(
            "file_mode {mode:#o} has an unsupported file type {other:#o} (only files, directories and symlinks)"
        ))),
    }
}

fn c(name: &std::ffi::OsStr) -> Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| AgentError::invalid_argument("path contains a NUL byte"))
}

fn os_err(what: &str, path: &Path) -> AgentError {
    let e = std::io::Error::last_os_error();
    AgentError::internal(format!("cannot {what} {}: {e}", path.display()))
}

/// The name of the temporary file of a target.
pub fn temp_name(name: &std::ffi::OsStr) -> std::ffi::OsString {
    let mut t = std::ffi::OsString::from(".");
    t.push(name);
    t.push(".kata-copy.tmp");
    t
}

/// What exists at `name` in `dir` (not following symlinks).
fn existing(dir: &OwnedFd, name: &std::ffi::OsStr) -> Option<u32> {
    nix::sys::stat::fstatat(
        Some(dir.as_raw_fd()),
        name,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .ok()
    .map(|st| st.st_mode & libc::S_IFMT)
}

/// Removes whatever is at `name` in `dir` (recursively for a directory).
/// Symlinks are not followed and mount points are not entered: replacing a directory that is or
/// holds a mount (a container's rootfs) is PERMISSION_DENIED and leaves it untouched.
fn remove_entry(dir: &OwnedFd, name: &std::ffi::OsStr, shown: &Path) -> Result<()> {
    remove_at(dir.as_raw_fd(), name, true).map_err(|e| remove_error(shown, e))
}

fn chown_fd(fd: &OwnedFd, uid: i32, gid: i32, shown: &Path) -> Result<()> {
    // -1 (u32::MAX) leaves the id unchanged.
    // SAFETY: fchown on a descriptor we own.
    if unsafe { libc::fchown(fd.as_raw_fd(), uid as libc::uid_t, gid as libc::gid_t) } != 0 {
        return Err(os_err("change the owner of", shown));
    }
    Ok(())
}

fn chmod_fd(fd: &OwnedFd, mode: u32, shown: &Path) -> Result<()> {
    // SAFETY: fchmod on a descriptor we own.
    if unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) } != 0 {
        return Err(os_err("change the mode of", shown));
    }
    Ok(())
}

fn rename_into_place(
    dir: &OwnedFd,
    tmp: &std::ffi::OsStr,
    name: &std::ffi::OsStr,
    shown: &Path,
) -> Result<()> {
    if existing(dir, name) == Some(libc::S_IFDIR) {
        remove_entry(dir, name, shown)?;
    }
    let (ct, cn) = (c(tmp)?, c(name)?);
    // SAFETY: renameat within one directory descriptor we own.
    if unsafe { libc::renameat(dir.as_raw_fd(), ct.as_ptr(), dir.as_raw_fd(), cn.as_ptr()) } != 0 {
        return Err(os_err("rename into", shown));
    }
    Ok(())
}

/// Handles one CopyFile request below `shared` (`<run_dir>/shared/containers`).
pub fn copy_file(shared: &Path, req: &CopyFileRequest) -> Result<()> {
    let path = clean_absolute("path", &req.path)?;
    let root = Root::new(shared);
    let rel = root.relative(&path).ok_or_else(|| {
        AgentError::invalid_argument(format!("path {} is outside {}", req.path, shared.display()))
    })?;
    if rel.as_os_str().is_empty() {
        return Err(AgentError::invalid_argument(format!(
            "path {} names the shared directory itself",
            req.path
        )));
    }
    if req.offset < 0 || req.file_size < 0 {
        return Err(AgentError::invalid_argument(format!(
            "negative offset ({}) or file_size ({})",
            req.offset, req.file_size
        )));
    }
    let end = u64::try_from(req.data.len())
        .ok()
        .and_then(|len| (req.offset as u64).checked_add(len));
    if !matches!(end, Some(end) if end <= req.file_size as u64)
        && kind_of(req.file_mode)? == Kind::File
    {
        return Err(AgentError::invalid_argument(format!(
            "chunk of {} bytes at offset {} goes past file_size {}",
            req.data.len(),
            req.offset,
            req.file_size
        )));
    }
    let kind = kind_of(req.file_mode)?;
    let name = path
        .file_name()
        .expect("non-empty relative part")
        .to_os_string();
    if name.as_bytes().starts_with(b".") && name.as_bytes().ends_with(b".kata-copy.tmp") {
        return Err(AgentError::invalid_argument(format!(
            "path {} uses the agent's temporary file names",
            req.path
        )));
    }
    if kind == Kind::Symlink && (req.data.is_empty() || req.data.contains(&0)) {
        return Err(AgentError::invalid_argument(
            "a symlink needs a target in data (without NUL bytes)",
        ));
    }
    let parent = path.parent().expect("below the root");
    let dir_mode = match req.dir_mode & 0o777 {
        0 => 0o755,
        m => m,
    };
    let (dir, created) = root.mkdir_all("path", parent, dir_mode)?;
    if created.last().map(|p| p.as_path()) == Some(parent) {
        let d = std::fs::File::open(fd_path(&dir.fd))
            .map(OwnedFd::from)
            .map_err(|e| AgentError::internal(format!("cannot open {}: {e}", parent.display())))?;
        chown_fd(&d, req.uid, req.gid, parent)?;
    }
    // A real directory descriptor for the *at calls below.
    let dirfd = std::fs::File::open(fd_path(&dir.fd))
        .map(OwnedFd::from)
        .map_err(|e| AgentError::internal(format!("cannot open {}: {e}", parent.display())))?;
    match kind {
        Kind::Dir => copy_dir(&dirfd, &name, &path, req),
        Kind::Symlink => copy_symlink(&dirfd, &name, &path, req),
        Kind::File => copy_regular(&dirfd, &name, &path, req),
    }
}

fn copy_dir(
    dir: &OwnedFd,
    name: &std::ffi::OsStr,
    shown: &Path,
    req: &CopyFileRequest,
) -> Result<()> {
    match existing(dir, name) {
        Some(libc::S_IFDIR) => {}
        Some(_) => remove_entry(dir, name, shown)?,
        None => {}
    }
    if existing(dir, name).is_none() {
        let cn = c(name)?;
        // SAFETY: mkdirat relative to a directory descriptor we own.
        if unsafe { libc::mkdirat(dir.as_raw_fd(), cn.as_ptr(), req.file_mode & 0o777) } != 0 {
            return Err(os_err("create directory", shown));
        }
    }
    let cn = c(name)?;
    // SAFETY: openat relative to a directory descriptor we own; O_NOFOLLOW refuses a symlink.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            cn.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(os_err("open", shown));
    }
    // SAFETY: the kernel just returned this descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    chmod_fd(&fd, req.file_mode & 0o7777, shown)?;
    chown_fd(&fd, req.uid, req.gid, shown)
}

fn copy_symlink(
    dir: &OwnedFd,
    name: &std::ffi::OsStr,
    shown: &Path,
    req: &CopyFileRequest,
) -> Result<()> {
    let tmp = temp_name(name);
    let _ = remove_entry(dir, &tmp, shown);
    let target = CString::new(req.data.clone())
        .map_err(|_| AgentError::invalid_argument("symlink target contains a NUL byte"))?;
    let ct = c(&tmp)?;
    // SAFETY: symlinkat relative to a directory descriptor we own.
    if unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), ct.as_ptr()) } != 0 {
        return Err(os_err("create symlink", shown));
    }
    let done = (|| {
        // SAFETY: fchownat on a name in a directory we own, not following the link.
        if unsafe {
            libc::fchownat(
                dir.as_raw_fd(),
                ct.as_ptr(),
                req.uid as libc::uid_t,
                req.gid as libc::gid_t,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        } != 0
        {
            return Err(os_err("change the owner of", shown));
        }
        rename_into_place(dir, &tmp, name, shown)
    })();
    if done.is_err() {
        let _ = remove_entry(dir, &tmp, shown);
    }
    done
}

fn copy_regular(
    dir: &OwnedFd,
    name: &std::ffi::OsStr,
    shown: &Path,
    req: &CopyFileRequest,
) -> Result<()> {
    let tmp = temp_name(name);
    let ct = c(&tmp)?;
    let mut flags = libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    if req.offset == 0 {
        flags |= libc::O_CREAT | libc::O_TRUNC;
    }
    // SAFETY: openat relative to a directory descriptor we own.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), ct.as_ptr(), flags, req.file_mode & 0o7777) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Err(AgentError::invalid_argument(format!(
                "chunk at offset {} of {} without the chunks before it",
                req.offset, req.path
            )));
        }
        return Err(AgentError::internal(format!(
            "cannot open the temporary file of {}: {e}",
            shown.display()
        )));
    }
    // SAFETY: the kernel just returned this descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = std::fs::File::from(fd);
    let size = file
        .metadata()
        .map_err(|e| AgentError::internal(format!("cannot stat the temporary file: {e}")))?
        .len();
    if req.offset as u64 > size {
        return Err(AgentError::invalid_argument(format!(
            "chunk at offset {} of {}, but only {size} bytes were received",
            req.offset, req.path
        )));
    }
    let abandon = |e: AgentError| {
        let _ = remove_entry(dir, &tmp, shown);
        e
    };
    use std::os::unix::fs::FileExt;
    file.write_all_at(&req.data, req.offset as u64)
        .map_err(|e| {
            abandon(AgentError::internal(format!(
                "cannot write {}: {e}",
                shown.display()
            )))
        })?;
    let size = file
        .metadata()
        .map_err(|e| {
            abandon(AgentError::internal(format!(
                "cannot stat the temporary file: {e}"
            )))
        })?
        .len();
    if size > req.file_size as u64 {
        return Err(abandon(AgentError::invalid_argument(format!(
            "{} bytes received for {}, more than its file_size {}",
            size, req.path, req.file_size
        ))));
    }
    if size < req.file_size as u64 {
        return Ok(()); // more chunks to come
    }
    let fd = OwnedFd::from(file);
    chmod_fd(&fd, req.file_mode & 0o7777, shown).map_err(abandon)?;
    chown_fd(&fd, req.uid, req.gid, shown).map_err(abandon)?;
    drop(fd);
    rename_into_place(dir, &tmp, name, shown).map_err(abandon)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn req(path: &Path, mode: u32, size: i64, offset: i64, data: &[u8]) -> CopyFileRequest {
        let mut r = CopyFileRequest::new();
        r.path = path.display().to_string();
        r.file_mode = mode;
        r.dir_mode = 0o750;
        r.file_size = size;
        r.offset = offset;
        r.data = data.to_vec();
        r.uid = -1;
        r.gid = -1;
        r
    }

    #[test]
    fn chunks_dirs_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        let f = shared.join("c1/etc/hosts");
        copy_file(&shared, &req(&f, 0o100640, 6, 0, b"abc")).unwrap();
        assert!(!f.exists());
        copy_file(&shared, &req(&f, 0o100640, 6, 3, b"def")).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"abcdef");
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(
            std::fs::metadata(shared.join("c1"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o750
        );
        let l = shared.join("c1/link");
        copy_file(&shared, &req(&l, libc::S_IFLNK | 0o777, 0, 0, b"etc/hosts")).unwrap();
        assert_eq!(std::fs::read_link(&l).unwrap(), Path::new("etc/hosts"));
        let d = shared.join("c1/d");
        copy_file(&shared, &req(&d, libc::S_IFDIR | 0o2750, 0, 0, b"")).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o7777, 0o2750);
        // A gap is refused.
        let g = shared.join("c1/gap");
        copy_file(&shared, &req(&g, 0o100644, 10, 0, b"ab")).unwrap();
        assert!(copy_file(&shared, &req(&g, 0o100644, 10, 5, b"x")).is_err());
        // Too much data is refused.
        let e =
            copy_file(&shared, &req(&shared.join("c1/big"), 0o100644, 1, 0, b"ab")).unwrap_err();
        assert_eq!(e.code, ttrpc::Code::INVALID_ARGUMENT);
    }

    #[test]
    fn hostile_paths() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, shared.join("abs")).unwrap();
        std::os::unix::fs::symlink("../outside", shared.join("rel")).unwrap();
        let bad = [
            "relative/x".to_string(),
            format!("{}/../outside/x", shared.display()),
            format!("{}/x", outside.display()),
            format!("{}x/y", shared.display()),
            format!("{}", shared.display()),
            format!("{}/abs/x", shared.display()),
            format!("{}/rel/x", shared.display()),
            format!("{}/rel/new/x", shared.display()),
        ];
        for p in bad {
            let mut r = req(Path::new(&p), 0o100644, 1, 0, b"x");
            r.path = p.clone();
            let e = copy_file(&shared, &r).unwrap_err();
            assert_eq!(e.code, ttrpc::Code::INVALID_ARGUMENT, "{p}: {e}");
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }
}
