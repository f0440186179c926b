//! File system helpers: path resolution confined to a root, mount table queries.

use std::ffi::CString;
use std::ffi::OsStr;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::Context;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(2)` resolve flags (linux/openat2.h): never cross a mount point.
pub const RESOLVE_NO_XDEV: u64 = 0x01;
/// Fail on `/proc/self/fd`-style magic links.
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
/// Fail on any symlink.
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;
/// Fail when resolution would leave the starting directory.
pub const RESOLVE_BENEATH: u64 = 0x08;
/// Resolve as if the starting directory were `/`.
pub const RESOLVE_IN_ROOT: u64 = 0x10;

/// A path as a C string; a NUL byte inside is an `InvalidInput` error.
pub fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Opens `path` as if `root` were `/`: absolute symlinks and `..` cannot leave it.
pub fn open_in_root(root: RawFd, path: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    openat2(
        root,
        rel,
        flags,
        mode,
        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    )
}

/// `openat2(dirfd, rel, flags | O_CLOEXEC, mode)` with the given resolve flags; an empty `rel`
/// opens `dirfd` itself. Retries on EAGAIN (a concurrent rename) and EINTR.
pub fn openat2(
    dirfd: RawFd,
    rel: &Path,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let c = cstr(rel)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: mode as u64,
        resolve,
    };
    loop {
        // SAFETY: openat2 with a valid path pointer and a properly sized struct.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel just returned this fd to us.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) && e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// `mkdir -p` of `path` inside `root`, every component resolved inside it.
/// Returns an `O_PATH` fd on the directory.
pub fn mkdir_all_in_root(root: RawFd, path: &Path, mode: u32) -> io::Result<OwnedFd> {
    mkdir_all_depth(root, path, mode, 0)
}

fn mkdir_all_depth(root: RawFd, path: &Path, mode: u32, depth: u32) -> io::Result<OwnedFd> {
    if depth > 40 {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    let mut cur = PathBuf::from("/");
    let mut dir = open_in_root(root, &cur, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    let comps: Vec<Component> = path.components().collect();
    for (i, comp) in comps.iter().enumerate() {
        let name = match *comp {
            Component::Normal(n) => n,
            Component::RootDir | Component::CurDir => continue,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} contains '..'", path.display()),
                ))
            }
        };
        cur.push(name);
        match open_in_root(root, &cur, libc::O_PATH | libc::O_DIRECTORY, 0) {
            Ok(fd) => dir = fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let c = cstr(Path::new(name))?;
                // SAFETY: mkdirat relative to a directory fd we own.
                if unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) } != 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(e);
                    }
                    // A dangling symlink: create its target, read as a path
                    // inside the root, followed by the rest of `path`.
                    if let Ok(target) = nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name) {
                        let target = Path::new(&target);
                        let mut next = if target.is_absolute() {
                            target.to_path_buf()
                        } else {
                            cur.parent().unwrap_or(Path::new("/")).join(target)
                        };
                        for rest in &comps[i + 1..] {
                            next.push(rest);
                        }
                        return mkdir_all_depth(
                            root,
                            &crate::validate::clean(&next),
                            mode,
                            depth + 1,
                        );
                    }
                }
                dir = open_in_root(root, &cur, libc::O_PATH | libc::O_DIRECTORY, 0)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(dir)
}

/// Creates (if missing) a regular file at `path` inside `root`, parents included.
pub fn create_file_in_root(root: RawFd, path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        mkdir_all_in_root(root, parent, 0o755)?;
    }
    match open_in_root(root, path, libc::O_PATH, 0) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            open_in_root(root, path, libc::O_CREAT | libc::O_WRONLY, 0o644).map(drop)
        }
        Err(e) => Err(e),
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn lstat_at(dir: RawFd, name: &OsStr) -> io::Result<libc::stat> {
    let c = cstr(Path::new(name))?;
    // SAFETY: a zeroed stat is a valid output buffer for fstatat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstatat on a directory fd with a NUL-terminated name and a valid buffer.
    if unsafe { libc::fstatat(dir, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// `fstat` of an open descriptor (`O_PATH` descriptors included).
pub fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: a zeroed stat is a valid output buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a descriptor with a valid buffer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Most directory levels [`remove_at`] descends (each level holds one descriptor).
pub const MAX_REMOVE_DEPTH: u32 = 128;

/// Removes `name` in the directory `dir`: a file or symlink is unlinked, a directory removed
/// (with its contents when `recursive`). Symlinks are never followed and no mount point is
/// entered: a directory that is (or holds) a mount point is an `EXDEV` error and what is
/// mounted stays untouched. A missing entry is fine.
pub fn remove_at(dir: RawFd, name: &OsStr, recursive: bool) -> io::Result<()> {
    let is_dir = lstat_at(dir, name).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
    if recursive && is_dir {
        // Refuse up front, before anything is deleted, when the mount table shows a mount at or
        // below the directory (the walk below refuses to enter one in any case).
        if let Ok(parent) = std::fs::read_link(format!("/proc/self/fd/{dir}")) {
            let path = parent.join(name);
            if mountinfo()?
                .iter()
                .any(|m| m.mount_point.starts_with(&path))
            {
                return Err(io::Error::from_raw_os_error(libc::EXDEV));
            }
        }
    }
    remove_depth(dir, name, recursive, 0)
}

fn remove_depth(dir: RawFd, name: &OsStr, recursive: bool, depth: u32) -> io::Result<()> {
    let c = cstr(Path::new(name))?;
    let st = match lstat_at(dir, name) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        // SAFETY: unlinkat relative to a directory fd the caller owns.
        if unsafe { libc::unlinkat(dir, c.as_ptr(), 0) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                return Err(e);
            }
        }
        return Ok(());
    }
    if recursive {
        if depth >= MAX_REMOVE_DEPTH {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        let sub = openat2(
            dir,
            Path::new(name),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
            RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
        )?;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(fd_path(&sub))? {
            names.push(entry?.file_name());
        }
        for n in names {
            remove_depth(sub.as_raw_fd(), &n, true, depth + 1)?;
        }
    }
    // SAFETY: unlinkat relative to a directory fd the caller owns.
    if unsafe { libc::unlinkat(dir, c.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOENT) => {}
            // A mount point cannot be removed: report it like the descent does.
            Some(libc::EBUSY) => return Err(io::Error::from_raw_os_error(libc::EXDEV)),
            _ => return Err(e),
        }
    }
    Ok(())
}

/// Writes `data` to the file `name` in directory `dir`, never through a symlink: the file is
/// created with `O_NOFOLLOW` (and `O_EXCL` when `exclusive`), or truncated in place when it is
/// already a regular file.
pub fn write_file_at(
    dir: RawFd,
    name: &OsStr,
    data: &[u8],
    mode: u32,
    exclusive: bool,
) -> io::Result<()> {
    use std::io::Write;
    let c = cstr(Path::new(name))?;
    let mut flags =
        libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
    if exclusive {
        flags |= libc::O_EXCL;
    }
    // SAFETY: openat relative to a directory fd the caller owns.
    let fd = unsafe { libc::openat(dir, c.as_ptr(), flags, mode) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = fstat(fd.as_raw_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut f = std::fs::File::from(fd);
    f.set_len(0)?;
    f.write_all(data)
}

/// Writes `data` to the file at `path` (absolute), opening its parent directory without
/// following a symlink in the last component and the file itself with `O_NOFOLLOW`; see
/// [`write_file_at`].
pub fn write_file_nofollow(path: &Path, data: &[u8], mode: u32, exclusive: bool) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no file name"));
    };
    let dir = std::fs::File::open(parent)?;
    write_file_at(dir.as_raw_fd(), name, data, mode, exclusive)
}

/// Bind-mounts the object open at `src` onto the object open at `target` with `open_tree(2)`
/// and `move_mount(2)`: neither side is looked up by path (no `/proc` needed either).
pub fn bind_fd(src: &OwnedFd, target: &OwnedFd, recursive: bool) -> io::Result<()> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
    let empty = c"";
    let mut flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: open_tree on a descriptor we own with an empty path.
    let tree =
        unsafe { libc::syscall(libc::SYS_open_tree, src.as_raw_fd(), empty.as_ptr(), flags) };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as RawFd) };
    // SAFETY: move_mount between two descriptors we own, both with empty paths.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            target.as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a bind mount's source (`O_PATH`). Below `run_dir` (the shared volumes, which other
/// containers and the host can change) no symlink may be crossed and the path must stay
/// inside; elsewhere (the guest's own paths) it is resolved once, as it is.
pub fn open_bind_source(run_dir: Option<&Path>, src: &Path) -> anyhow::Result<OwnedFd> {
    let clean = crate::validate::clean(src);
    if let Some(run) = run_dir.filter(|r| clean.starts_with(r) && src.is_absolute()) {
        if src
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            anyhow::bail!("the bind source {} contains \"..\"", src.display());
        }
        let rel = clean.strip_prefix(run).unwrap_or(Path::new(""));
        let dir =
            std::fs::File::open(run).with_context(|| format!("cannot open {}", run.display()))?;
        return openat2(
            dir.as_raw_fd(),
            rel,
            libc::O_PATH,
            0,
            RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::EXDEV) => anyhow::anyhow!(
                "the bind source {} goes through a symlink below {}: refused",
                src.display(),
                run.display()
            ),
            _ => anyhow::anyhow!("cannot open the bind source {}: {e}", src.display()),
        });
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(src)
        .with_context(|| format!("cannot resolve the source {}", src.display()))?;
    Ok(OwnedFd::from(f))
}

/// Whether the open object is the null character device (1:3).
pub fn is_dev_null(fd: &OwnedFd) -> io::Result<bool> {
    let st = fstat(fd.as_raw_fd())?;
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == libc::makedev(1, 3))
}

/// The `/proc/self/fd/N` path naming an open fd (used as a mount target so the
/// kernel uses exactly the inode we resolved).
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// One line of `/proc/<pid>/mountinfo`.
#[derive(Debug, Clone)]
pub struct MountInfo {
    /// Root of the mount within its file system.
    pub root: PathBuf,
    /// Mount point.
    pub mount_point: PathBuf,
    /// Optional fields (e.g. `shared:1`).
    pub optional: String,
    /// File system type.
    pub fstype: String,
    /// Mount source (device, or file system specific), unescaped.
    pub source: String,
    /// Super block options.
    pub super_opts: String,
}

/// Undoes the octal escapes of mountinfo (`\040` for a space, ...).
pub fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn unescape(s: &str) -> PathBuf {
    PathBuf::from(std::ffi::OsString::from_vec(unescape_mountinfo(s)))
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let f: Vec<&str> = pre.split(' ').collect();
            let g: Vec<&str> = post.split(' ').collect();
            if f.len() < 6 || g.len() < 3 {
                return None;
            }
            Some(MountInfo {
                root: unescape(f[3]),
                mount_point: unescape(f[4]),
                optional: f[6..].join(" "),
                fstype: g[0].to_string(),
                source: String::from_utf8_lossy(&unescape_mountinfo(g[1])).into_owned(),
                super_opts: g[2].to_string(),
            })
        })
        .collect()
}

/// The mount table of this process.
pub fn mountinfo() -> io::Result<Vec<MountInfo>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// Detaches every mount at or below `dir` (deepest first).
pub fn unmount_all_under(dir: &Path) -> io::Result<()> {
    for _ in 0..64 {
        let mut points: Vec<PathBuf> = mountinfo()?
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|m| m.starts_with(dir))
            .collect();
        if points.is_empty() {
            return Ok(());
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    Err(io::Error::other(format!(
        "mounts below {} cannot be removed",
        dir.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_anywhere_including_the_end() {
        assert_eq!(unescape_mountinfo("a\\040b"), b"a b");
        assert_eq!(unescape_mountinfo("/mnt/x\\040"), b"/mnt/x ");
        assert_eq!(unescape_mountinfo("\\134"), b"\\");
        assert_eq!(unescape_mountinfo("trailing\\04"), b"trailing\\04");
    }

    #[test]
    fn mountinfo_parsing() {
        let t = "36 35 98:0 /mnt1 /mnt\\0402 rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt 2"));
        assert_eq!(m[0].root, PathBuf::from("/mnt1"));
        assert_eq!(m[0].fstype, "ext3");
        assert!(m[0].optional.contains("shared:2"));
        assert_eq!(m[0].super_opts, "rw,errors=continue");
    }

    #[test]
    fn confined_resolution() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("up")).unwrap();
        std::os::unix::fs::symlink("../../../..", dir.path().join("up2")).unwrap();
        let root = std::fs::File::open(dir.path()).unwrap();
        let fd = mkdir_all_in_root(root.as_raw_fd(), Path::new("/up/up2/made"), 0o755).unwrap();
        drop(fd);
        assert!(dir.path().join("made").is_dir());
        create_file_in_root(root.as_raw_fd(), Path::new("/up/f")).unwrap();
        assert!(dir.path().join("f").is_file());
        assert!(mkdir_all_in_root(root.as_raw_fd(), Path::new("/a/../b"), 0o755).is_err());
    }
}
