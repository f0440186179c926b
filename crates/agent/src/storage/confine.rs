//! Confinement of host-supplied paths to the agent's roots.
//!
//! Every path a request names (mount points, bind sources, CopyFile targets, device nodes) is
//! first checked lexically (absolute, no `..`, no NUL, inside a root), then resolved with
//! `openat2(RESOLVE_BENEATH)` relative to the root: a symlink is followed only while it stays
//! below the root, so an absolute symlink or a `..` escape fails with a clear error instead of
//! reaching a path outside. Work is then done through the resolved file descriptor
//! (`/proc/self/fd/N`), so a path swapped after the check cannot redirect it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};

use crate::error::{AgentError, Result};

pub use engine::fsutil::fd_path;
use engine::fsutil::{cstr, openat2, RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS};
pub use engine::fsutil::{fstat, lstat_at, remove_at};

/// `openat2(dirfd, rel, flags, mode)` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`.
pub fn open_beneath(dirfd: RawFd, rel: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    openat2(
        dirfd,
        rel,
        flags,
        mode,
        RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
    )
}

/// Like [`open_beneath`], but no symlink at all may be crossed (for trees the host controls).
pub fn open_no_symlinks(dirfd: RawFd, rel: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    openat2(
        dirfd,
        rel,
        flags,
        mode,
        RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS,
    )
}

/// The path the kernel reports for an open descriptor.
pub fn real_path(fd: &OwnedFd) -> io::Result<PathBuf> {
    std::fs::read_link(fd_path(fd))
}

pub use crate::hostpath::clean_absolute;

/// A directory that host paths must stay below.
#[derive(Debug, Clone)]
pub struct Root {
    /// The root as configured (host paths are compared against this spelling).
    pub path: PathBuf,
}

/// A path resolved below a [`Root`].
#[derive(Debug)]
pub struct Resolved {
    /// `O_PATH` descriptor of the object.
    pub fd: OwnedFd,
    /// Its path as the kernel reports it (for mount tables and messages).
    pub real: PathBuf,
    /// Its path relative to the root (to resolve it again, e.g. after a mount).
    pub rel: PathBuf,
}

impl Root {
    pub fn new(path: impl Into<PathBuf>) -> Root {
        Root { path: path.into() }
    }

    /// The part of `path` below this root (`None` if `path` is not inside it, component-wise).
    pub fn relative<'a>(&self, path: &'a Path) -> Option<&'a Path> {
        path.strip_prefix(&self.path).ok()
    }

    /// Whether `path` lies strictly below the root.
    pub fn contains(&self, path: &Path) -> bool {
        self.relative(path)
            .is_some_and(|r| !r.as_os_str().is_empty())
    }

    /// Descriptor of the root directory (created if missing). Opened afresh each time, so that
    /// a file system mounted on the root later (the shared directory) is the one used.
    pub fn fd(&self) -> Result<OwnedFd> {
        std::fs::create_dir_all(&self.path).map_err(|e| {
            AgentError::internal(format!("cannot create {}: {e}", self.path.display()))
        })?;
        let file = std::fs::File::open(&self.path).map_err(|e| {
            AgentError::internal(format!("cannot open {}: {e}", self.path.display()))
        })?;
        Ok(OwnedFd::from(file))
    }

    /// The relative part of a (lexically clean) host path, or an INVALID_ARGUMENT error.
    pub fn rel_of<'a>(&self, what: &str, path: &'a Path) -> Result<&'a Path> {
        self.relative(path).ok_or_else(|| {
            AgentError::invalid_argument(format!(
                "{what} {} is outside {}",
                path.display(),
                self.path.display()
            ))
        })
    }

    /// Resolves an existing object below the root.
    pub fn resolve(&self, what: &str, path: &Path) -> Result<Resolved> {
        let rel = self.rel_of(what, path)?.to_path_buf();
        self.resolve_rel(what, path, rel)
    }

    fn resolve_rel(&self, what: &str, shown: &Path, rel: PathBuf) -> Result<Resolved> {
        let fd = open_beneath(self.fd()?.as_raw_fd(), &rel, libc::O_PATH, 0)
            .map_err(|e| resolve_error(what, shown, &self.path, e))?;
        let real = real_path(&fd).map_err(|e| {
            AgentError::internal(format!("cannot read the path of {}: {e}", shown.display()))
        })?;
        Ok(Resolved { fd, real, rel })
    }

    /// Resolves `rel` again (for instance to reach the root of a mount just made on it).
    pub fn reopen(&self, what: &str, r: &Resolved) -> Result<Resolved> {
        self.resolve_rel(what, &r.real, r.rel.clone())
    }

    /// `mkdir -p` below the root. Returns the directory and the directories this call created
    /// (outermost first).
    pub fn mkdir_all(
        &self,
        what: &str,
        path: &Path,
        mode: u32,
    ) -> Result<(Resolved, Vec<PathBuf>)> {
        let rel = self.rel_of(what, path)?.to_path_buf();
        let root_fd = self.fd()?;
        let root = root_fd.as_raw_fd();
        let mut created = Vec::new();
        let mut cur = PathBuf::new();
        let mut dir = open_beneath(root, Path::new(""), libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(|e| resolve_error(what, path, &self.path, e))?;
        for comp in rel.components() {
            let Component::Normal(name) = comp else {
                continue;
            };
            cur.push(name);
            match open_beneath(root, &cur, libc::O_PATH | libc::O_DIRECTORY, 0) {
                Ok(fd) => dir = fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    let c = cstr(Path::new(name)).map_err(|e| {
                        AgentError::invalid_argument(format!("{what} {}: {e}", path.display()))
                    })?;
                    // The parent was resolved beneath the root; a plain name cannot leave it.
                    // SAFETY: mkdirat relative to a descriptor we own.
                    let rc = unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) };
                    let made = rc == 0;
                    if !made {
                        let err = io::Error::last_os_error();
                        if err.raw_os_error() != Some(libc::EEXIST) {
                            return Err(AgentError::internal(format!(
                                "cannot create directory {}: {err}",
                                self.path.join(&cur).display()
                            )));
                        }
                    }
                    dir = open_beneath(root, &cur, libc::O_PATH | libc::O_DIRECTORY, 0)
                        .map_err(|e| resolve_error(what, path, &self.path, e))?;
                    if made {
                        // mkdir honours the umask; set the requested mode exactly.
                        let _ = std::fs::set_permissions(
                            fd_path(&dir),
                            std::os::unix::fs::PermissionsExt::from_mode(mode),
                        );
                        created.push(self.path.join(&cur));
                    }
                }
                Err(e) => return Err(resolve_error(what, path, &self.path, e)),
            }
        }
        let real = real_path(&dir).map_err(|e| {
            AgentError::internal(format!("cannot read the path of {}: {e}", path.display()))
        })?;
        Ok((Resolved { fd: dir, real, rel }, created))
    }

    /// Creates (if missing) an empty regular file below the root, parents included. Returns it
    /// and what this call created (outermost first).
    pub fn create_file(
        &self,
        what: &str,
        path: &Path,
        mode: u32,
    ) -> Result<(Resolved, Vec<PathBuf>)> {
        let rel = self.rel_of(what, path)?.to_path_buf();
        let (name, parent) = match (rel.file_name(), path.parent()) {
            (Some(n), Some(p)) => (n.to_os_string(), p.to_path_buf()),
            _ => {
                return Err(AgentError::invalid_argument(format!(
                    "{what} {} names the root itself",
                    path.display()
                )))
            }
        };
        let (dir, mut created) = self.mkdir_all(what, &parent, 0o755)?;
        let dirfd = open_beneath(
            self.fd()?.as_raw_fd(),
            &dir.rel,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .map_err(|e| resolve_error(what, path, &self.path, e))?;
        let c = cstr(Path::new(&name))
            .map_err(|e| AgentError::invalid_argument(format!("{what}: {e}")))?;
        // SAFETY: openat relative to a descriptor we own; O_NOFOLLOW refuses a symlink.
        let fd = unsafe {
            libc::openat(
                dirfd.as_raw_fd(),
                c.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode,
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel just returned this descriptor.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            created.push(path.to_path_buf());
        } else {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                return Err(AgentError::internal(format!(
                    "cannot create {}: {err}",
                    path.display()
                )));
            }
        }
        let r = self.resolve(what, path)?;
        Ok((r, created))
    }
}

impl Root {
    /// Removes `path` (a file, a symlink, or a directory: empty unless `recursive`), resolving
    /// its parent below the root. A missing path is fine; a non-empty directory without
    /// `recursive` is left in place. A recursive removal never follows a symlink nor enters a
    /// mount point (a tree holding one is a PERMISSION_DENIED error).
    pub fn remove(&self, path: &Path, recursive: bool) -> Result<()> {
        let Some(name) = path.file_name() else {
            return Ok(());
        };
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        let dir = match self.resolve("path", parent) {
            Ok(d) => d,
            Err(e) if e.code == ttrpc::Code::NOT_FOUND => return Ok(()),
            Err(e) => return Err(e),
        };
        let dirfd = open_beneath(
            self.fd()?.as_raw_fd(),
            &dir.rel,
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .map_err(|e| resolve_error("path", parent, &self.path, e))?;
        match remove_at(dirfd.as_raw_fd(), name, recursive) {
            Ok(()) => Ok(()),
            Err(e) if !recursive && e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
            Err(e) => Err(remove_error(path, e)),
        }
    }
}

/// The error of a failed [`remove_at`].
pub fn remove_error(path: &Path, e: io::Error) -> AgentError {
    if e.raw_os_error() == Some(libc::EXDEV) {
        AgentError::new(
            ttrpc::Code::PERMISSION_DENIED,
            format!(
                "cannot remove {}: it is or holds a mount point",
                path.display()
            ),
        )
    } else {
        AgentError::internal(format!("cannot remove {}: {e}", path.display()))
    }
}

/// Paths the agent owns: no storage may be mounted on or above them, nor use them as a bind
/// source (a mount there would let the host swap the files the agent writes, such as a
/// bundle's `config.json` or the sandbox's `resolv.conf`, for symlinks).
///
/// Below the run directory these are every directory directly in it (the container bundles
/// `<run>/<cid>`, `<run>/sandbox`, `<run>/shared`, ...), the files the agent writes in them, and
/// the sandbox namespace directory wherever it is.
#[derive(Debug, Clone)]
pub struct Reserved {
    run: PathBuf,
    ns_dir: PathBuf,
}

/// Files the agent writes in a container bundle.
const BUNDLE_FILES: &[&str] = &["config.json", "exec.fifo"];
/// Files the agent writes in `<run>/sandbox`.
const SANDBOX_FILES: &[&str] = &["resolv.conf", ".resolv.conf.tmp"];

impl Reserved {
    pub fn new(run: impl Into<PathBuf>, ns_dir: impl Into<PathBuf>) -> Reserved {
        Reserved {
            run: run.into(),
            ns_dir: ns_dir.into(),
        }
    }

    /// Why `path` (lexically clean and absolute, or the real path of a resolved descriptor)
    /// is the agent's own, if it is.
    pub fn why(&self, path: &Path) -> Option<String> {
        if self.ns_dir.starts_with(path) || path.starts_with(&self.ns_dir) {
            return Some(format!(
                "the sandbox namespace directory {}",
                self.ns_dir.display()
            ));
        }
        if self.run.starts_with(path) {
            return Some(format!("the run directory {}", self.run.display()));
        }
        let rel = path.strip_prefix(&self.run).ok()?;
        let comps: Vec<&std::ffi::OsStr> = rel.iter().collect();
        match comps.as_slice() {
            [dir] => Some(format!(
                "the agent's directory {}",
                self.run.join(dir).display()
            )),
            [dir, file] if *dir == "sandbox" && SANDBOX_FILES.iter().any(|f| file == f) => {
                Some(format!(
                    "the agent's file {}",
                    self.run.join(dir).join(file).display()
                ))
            }
            [dir, file]
                if *dir != "sandbox"
                    && *dir != "shared"
                    && BUNDLE_FILES.iter().any(|f| file == f) =>
            {
                Some(format!(
                    "the bundle file {}",
                    self.run.join(dir).join(file).display()
                ))
            }
            _ => None,
        }
    }

    /// PERMISSION_DENIED when `path` is one of the agent's own.
    pub fn check(&self, what: &str, path: &Path) -> Result<()> {
        match self.why(path) {
            Some(why) => Err(AgentError::new(
                ttrpc::Code::PERMISSION_DENIED,
                format!(
                    "{what} {} is reserved: it is or contains {why}",
                    path.display()
                ),
            )),
            None => Ok(()),
        }
    }
}

/// Reads at most `limit` bytes of the regular file `path`, which must lie below `root`
/// (resolved with `openat2(RESOLVE_BENEATH)`). The file is opened `O_NONBLOCK` and checked with
/// `fstat` on the opened descriptor: a FIFO, device or socket is INVALID_ARGUMENT, never waited
/// on. A missing file reads as empty.
pub fn read_regular_beneath(root: &Path, what: &str, path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let path = clean_absolute(what, &path.to_string_lossy())?;
    let root = Root::new(root);
    let rel = root.rel_of(what, &path)?;
    let dir = match std::fs::File::open(&root.path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(AgentError::internal(format!(
                "cannot open {}: {e}",
                root.path.display()
            )))
        }
    };
    // O_PATH first: a device node is never opened, a FIFO never waited on.
    let fd = match open_beneath(dir.as_raw_fd(), rel, libc::O_PATH, 0) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(resolve_error(what, &path, &root.path, e)),
    };
    let st = fstat(fd.as_raw_fd())
        .map_err(|e| AgentError::internal(format!("cannot stat {}: {e}", path.display())))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(AgentError::invalid_argument(format!(
            "{what} {} is not a regular file",
            path.display()
        )));
    }
    // Reopen the very inode checked above through its descriptor.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(fd_path(&fd))
        .map_err(|e| AgentError::internal(format!("cannot open {}: {e}", path.display())))?;
    let mut data = Vec::new();
    file.take(limit)
        .read_to_end(&mut data)
        .map_err(|e| AgentError::internal(format!("cannot read {}: {e}", path.display())))?;
    Ok(data)
}

/// Bind sources of a container spec that lie below the run directory (the shared volumes,
/// which the host and other containers can change) may not go through a symlink there: a
/// planted one would bind any guest path into the container (CVE-2021-30465 class). This is
/// the early, clear INVALID_ARGUMENT; the engine resolves each source again the same way when
/// it mounts it, through the descriptor.
pub fn check_bind_sources(run: &Path, spec: &oci_spec::runtime::Spec) -> Result<()> {
    let Ok(dir) = std::fs::File::open(run) else {
        return Ok(());
    };
    for m in spec.mounts().iter().flatten() {
        let opts = m.options().as_deref().unwrap_or(&[]);
        let bind =
            m.typ().as_deref() == Some("bind") || opts.iter().any(|o| o == "bind" || o == "rbind");
        let Some(src) = m.source().as_deref() else {
            continue;
        };
        if !bind || !src.is_absolute() || !src.starts_with(run) {
            continue;
        }
        if src.components().any(|c| c == Component::ParentDir) {
            return Err(AgentError::invalid_argument(format!(
                "bind source {} contains \"..\"",
                src.display()
            )));
        }
        let rel = src.strip_prefix(run).unwrap_or(Path::new(""));
        match open_no_symlinks(dir.as_raw_fd(), rel, libc::O_PATH, 0) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::EXDEV)) => {
                return Err(AgentError::invalid_argument(format!(
                    "bind source {} of {} goes through a symlink below {}: refused",
                    src.display(),
                    m.destination().display(),
                    run.display()
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Turns a resolution failure into a clear error with the right code.
pub fn resolve_error(what: &str, path: &Path, root: &Path, e: io::Error) -> AgentError {
    match e.raw_os_error() {
        Some(libc::EXDEV) | Some(libc::ELOOP) => AgentError::invalid_argument(format!(
            "{what} {} resolves outside {} (symlink escape refused)",
            path.display(),
            root.display()
        )),
        Some(libc::ENOENT) => {
            AgentError::not_found(format!("{what} {} does not exist", path.display()))
        }
        Some(libc::ENOTDIR) => AgentError::invalid_argument(format!(
            "{what} {}: a path component is not a directory",
            path.display()
        )),
        _ => AgentError::internal(format!("cannot resolve {what} {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_checks() {
        assert_eq!(
            clean_absolute("p", "/a//b/./c/").unwrap(),
            PathBuf::from("/a/b/c")
        );
        for bad in ["", "a/b", "/a/../b", "/a/\0"] {
            let e = clean_absolute("p", bad).unwrap_err();
            assert_eq!(e.code, ttrpc::Code::INVALID_ARGUMENT, "{bad:?}");
        }
    }

    #[test]
    fn symlink_escapes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path().join("root"));
        root.fd().unwrap();
        std::os::unix::fs::symlink("/etc", root.path.join("abs")).unwrap();
        std::os::unix::fs::symlink("../..", root.path.join("up")).unwrap();
        std::fs::create_dir(root.path.join("real")).unwrap();
        std::os::unix::fs::symlink("real", root.path.join("inside")).unwrap();
        for p in ["abs/x", "up/x"] {
            let e = root
                .mkdir_all("mount point", &root.path.join(p), 0o755)
                .unwrap_err();
            assert_eq!(e.code, ttrpc::Code::INVALID_ARGUMENT, "{p}: {e}");
            assert!(e.message.contains("outside"), "{e}");
        }
        let (r, created) = root
            .mkdir_all("mount point", &root.path.join("inside/a/b"), 0o750)
            .unwrap();
        assert_eq!(r.real, root.path.join("real/a/b"));
        assert_eq!(
            created,
            vec![root.path.join("inside/a"), root.path.join("inside/a/b")]
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.path.join("real/a/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o750);
        let outside = root.rel_of("p", Path::new("/elsewhere")).unwrap_err();
        assert_eq!(outside.code, ttrpc::Code::INVALID_ARGUMENT);
        let (f, created) = root
            .create_file("file", &root.path.join("real/x/f"), 0o644)
            .unwrap();
        assert_eq!(f.real, root.path.join("real/x/f"));
        assert_eq!(created.len(), 2);
    }

    #[test]
    fn reserved_paths() {
        let r = Reserved::new("/run/k", "/run/k/sandbox-ns");
        for p in [
            "/run",
            "/run/k",
            "/run/k/sandbox",
            "/run/k/c1",
            "/run/k/shared",
            "/run/k/sandbox-ns",
            "/run/k/sandbox-ns/ipc",
            "/run/k/c1/config.json",
            "/run/k/sandbox/resolv.conf",
        ] {
            let e = r.check("mount point", Path::new(p)).unwrap_err();
            assert_eq!(e.code, ttrpc::Code::PERMISSION_DENIED, "{p}");
        }
        for p in [
            "/run/k/c1/rootfs",
            "/run/k/sandbox/storage/x",
            "/run/k/shared/containers",
            "/run/k/shared/containers/config.json",
            "/run/k/sandbox/ephemeral",
        ] {
            r.check("mount point", Path::new(p)).unwrap();
        }
        let r = Reserved::new("/run/k", "/var/run/sandbox-ns");
        assert!(r.check("p", Path::new("/var/run")).is_err());
    }

    #[test]
    fn recursive_removal_stays_out_of_mounts_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path().join("root"));
        root.fd().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(outside.join("keep")).unwrap();
        std::fs::create_dir_all(root.path.join("t/sub")).unwrap();
        std::fs::write(root.path.join("t/sub/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, root.path.join("t/link")).unwrap();
        root.remove(&root.path.join("t"), true).unwrap();
        assert!(!root.path.join("t").exists());
        assert!(outside.join("keep").is_dir());
        // A mounted directory inside the tree: refused, the mount's content untouched.
        std::fs::create_dir_all(root.path.join("m/mnt")).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &root.path.join("m/mnt"),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        std::fs::write(root.path.join("m/mnt/precious"), "x").unwrap();
        let e = root.remove(&root.path.join("m"), true).unwrap_err();
        assert_eq!(e.code, ttrpc::Code::PERMISSION_DENIED, "{e}");
        assert!(root.path.join("m/mnt/precious").exists());
        nix::mount::umount2(&root.path.join("m/mnt"), nix::mount::MntFlags::MNT_DETACH).unwrap();
    }

    #[test]
    fn regular_files_only_below_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("shared");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("log"), "bye\n").unwrap();
        nix::unistd::mkfifo(
            &root.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("out")).unwrap();
        let read = |p: &Path| read_regular_beneath(&root, "log", p, 4096);
        assert_eq!(read(&root.join("log")).unwrap(), b"bye\n");
        assert!(read(&root.join("missing")).unwrap().is_empty());
        for p in [
            root.join("fifo"),
            root.join("out"),
            dir.path().join("secret"),
        ] {
            let e = read(&p).unwrap_err();
            assert_eq!(e.code, ttrpc::Code::INVALID_ARGUMENT, "{p:?}: {e}");
        }
    }
}
