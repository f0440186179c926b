//! `watchable-bind` storages: copies of small files from the shared file system that follow
//! their source (Kubernetes ConfigMaps and Secrets, whose updates inotify cannot see through
//! virtio-fs).
//!
//! The first watchable storage mounts a tmpfs on its parent directory (one of the two allowed
//! `.../shared/containers/[passthrough/]watchable` directories). Each storage's source is copied
//! below it, then rescanned every 2 seconds by a background thread: new or newer files and
//! symlinks are copied (through a temporary name and a rename, so readers never see half a
//! file), vanished ones deleted. A source with more than 16 entries (directories included) or
//! more than 1 MiB of data is bind-mounted instead of copied.
//!
//! The source tree belongs to the host: it is read without following any symlink (symlinks are
//! copied as symlinks). Targets are written through a descriptor of the tmpfs root, never by
//! looking the shared path up again.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex as StdMutex};
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags};
use tracing::{debug, info, warn};

use super::confine::{fd_path, lstat_at, open_no_symlinks, remove_at, Root};
use crate::error::{AgentError, Result};

/// How often sources are rescanned.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(2);
/// Most entries (directories included) a copied source may have.
pub const MAX_ENTRIES: usize = 16;
/// Most bytes (files and symlink targets) a copied source may hold.
pub const MAX_SIZE: u64 = 1 << 20;

/// The directories a watchable mount point may sit in, relative to the run dir.
pub const PARENTS: &[&str] = &[
    "shared/containers/watchable",
    "shared/containers/passthrough/watchable",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
}

#[derive(Debug, Clone)]
struct Item {
    rel: PathBuf,
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
}

struct Watched {
    cid: String,
    /// Source (request path, below the root).
    source: PathBuf,
    /// Target name inside the watchable directory.
    name: PathBuf,
    known: HashMap<PathBuf, Item>,
    bind_mounted: bool,
}

#[derive(Default)]
struct State {
    root: Option<Root>,
    /// The watchable directory (request path) and a descriptor of the tmpfs mounted on it.
    parent: Option<PathBuf>,
    tmpfs: Option<OwnedFd>,
    created: Vec<PathBuf>,
    entries: Vec<Watched>,
    stop: Option<mpsc::Sender<()>>,
}

/// The watcher of the agent (one tmpfs, one thread, many storages).
#[derive(Default, Clone)]
pub struct BindWatcher {
    state: Arc<StdMutex<State>>,
}

enum ScanError {
    TooBig(String),
    Other(AgentError),
}

impl From<AgentError> for ScanError {
    fn from(e: AgentError) -> Self {
        ScanError::Other(e)
    }
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> AgentError {
    AgentError::internal(format!("cannot {what} {}: {e}", path.display()))
}

/// Lists the source tree (pre-order, root first) without following symlinks.
fn collect(src: &OwnedFd, is_dir: bool) -> std::result::Result<Vec<Item>, ScanError> {
    let mut items = Vec::new();
    let mut size = 0u64;
    let meta =
        std::fs::metadata(fd_path(src)).map_err(|e| io_err("stat", Path::new("source"), e))?;
    let root_item = Item {
        rel: PathBuf::new(),
        kind: if is_dir { Kind::Dir } else { Kind::File },
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
    };
    if !is_dir {
        if meta.len() > MAX_SIZE {
            return Err(ScanError::TooBig(format!("{} bytes", meta.len())));
        }
        items.push(root_item);
        return Ok(items);
    }
    items.push(root_item);
    let mut stack = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        let fd = open_no_symlinks(src.as_raw_fd(), &dir, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|e| io_err("open", &dir, e))?;
        let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(fd_path(&fd))
            .map_err(|e| io_err("list", &dir, e))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for name in names {
            let rel = dir.join(&name);
            let st = nix::sys::stat::fstatat(
                Some(fd.as_raw_fd()),
                name.as_os_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_err("stat", &rel, e))?;
            let fmt = st.st_mode & libc::S_IFMT;
            let kind = match fmt {
                libc::S_IFDIR => Kind::Dir,
                libc::S_IFREG => Kind::File,
                libc::S_IFLNK => Kind::Symlink,
                _ => continue, // sockets, fifos, devices are not copied
            };
            if kind != Kind::Dir {
                // Sizes come from the host's file system: never wrap.
                size = size.saturating_add(u64::try_from(st.st_size).unwrap_or(u64::MAX));
            }
            items.push(Item {
                rel: rel.clone(),
                kind,
                mode: st.st_mode & 0o7777,
                uid: st.st_uid,
                gid: st.st_gid,
                mtime: (st.st_mtime, st.st_mtime_nsec),
            });
            if items.len() > MAX_ENTRIES {
                return Err(ScanError::TooBig(format!(
                    "more than {MAX_ENTRIES} entries"
                )));
            }
            if size > MAX_SIZE {
                return Err(ScanError::TooBig(format!("more than {MAX_SIZE} bytes")));
            }
            if kind == Kind::Dir {
                stack.push(rel);
            }
        }
    }
    Ok(items)
}

fn newer(a: (i64, i64), b: (i64, i64)) -> bool {
    a > b
}

impl Watched {
    /// One scan: copy what is new or newer, delete what vanished. `tmpfs` is the watchable
    /// directory (the tmpfs root). Every write goes through a directory descriptor of the copy,
    /// opened without following any symlink: a symlink copied from the host is never traversed.
    fn scan(&mut self, root: &Root, tmpfs: &OwnedFd) -> Result<()> {
        if self.bind_mounted {
            return Ok(());
        }
        let src = root.resolve("watchable source", &self.source)?;
        let is_dir = std::fs::metadata(fd_path(&src.fd))
            .map_err(|e| io_err("stat", &self.source, e))?
            .is_dir();
        let items = match collect(&src.fd, is_dir) {
            Ok(items) => items,
            Err(ScanError::TooBig(why)) => {
                return self.bind_instead(&src.fd, tmpfs, is_dir, &why);
            }
            Err(ScanError::Other(e)) => return Err(e),
        };
        let current: HashMap<PathBuf, Item> =
            items.iter().map(|i| (i.rel.clone(), i.clone())).collect();
        // Deepest first so that a vanished directory goes after its children.
        let mut vanished: Vec<&PathBuf> = self
            .known
            .keys()
            .filter(|k| !current.contains_key(*k))
            .collect();
        vanished.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for rel in vanished {
            let t = self.name.join(rel);
            // A parent that is no longer a directory (or is a symlink now) went with it.
            let Ok((dir, name)) = parent_of(tmpfs, &t) else {
                continue;
            };
            if let Err(e) = remove_at(dir.as_raw_fd(), &name, true) {
                warn!(subsystem = "watcher", path = %t.display(), error = %e, "cannot delete a vanished entry");
            }
        }
        for item in &items {
            let changed = match self.known.get(&item.rel) {
                None => true,
                Some(old) => old.kind != item.kind || newer(item.mtime, old.mtime),
            };
            let dst = if item.rel.as_os_str().is_empty() {
                self.name.clone()
            } else {
                self.name.join(&item.rel)
            };
            let (dir, name) = parent_of(tmpfs, &dst).map_err(|e| io_err("open", &dst, e))?;
            match item.kind {
                Kind::Dir => {
                    let is_dir = lstat_at(dir.as_raw_fd(), &name)
                        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
                    if !is_dir {
                        remove_at(dir.as_raw_fd(), &name, true)
                            .map_err(|e| io_err("replace", &dst, e))?;
                        nix::sys::stat::mkdirat(
                            Some(dir.as_raw_fd()),
                            name.as_os_str(),
                            nix::sys::stat::Mode::from_bits_truncate(0o700),
                        )
                        .map_err(|e| io_err("create", &dst, e))?;
                    }
                    if changed || !is_dir {
                        let fd = open_no_symlinks(
                            dir.as_raw_fd(),
                            Path::new(&name),
                            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                            0,
                        )
                        .map_err(|e| io_err("open", &dst, e))?;
                        set_owner_mode(&fd, item, &dst)?;
                    }
                }
                Kind::File if changed => {
                    let data = read_source(&src.fd, &item.rel, is_dir)?;
                    let tmp = temp_name(&name);
                    remove_at(dir.as_raw_fd(), &tmp, true).map_err(|e| io_err("clear", &dst, e))?;
                    let fd = create_at(&dir, &tmp).map_err(|e| io_err("create", &dst, e))?;
                    let mut f = std::fs::File::from(fd);
                    std::io::Write::write_all(&mut f, &data)
                        .map_err(|e| io_err("write", &dst, e))?;
                    set_owner_mode(&OwnedFd::from(f), item, &dst)?;
                    replace(&dir, &tmp, &name, &dst)?;
                }
                Kind::Symlink if changed => {
                    let dir_fd = open_no_symlinks(
                        src.fd.as_raw_fd(),
                        item.rel.parent().unwrap_or(Path::new("")),
                        libc::O_PATH | libc::O_DIRECTORY,
                        0,
                    )
                    .map_err(|e| io_err("open", &item.rel, e))?;
                    let link = nix::fcntl::readlinkat(
                        Some(dir_fd.as_raw_fd()),
                        item.rel.file_name().unwrap_or_default(),
                    )
                    .map_err(|e| io_err("read link", &item.rel, e))?;
                    let tmp = temp_name(&name);
                    remove_at(dir.as_raw_fd(), &tmp, true).map_err(|e| io_err("clear", &dst, e))?;
                    nix::unistd::symlinkat(
                        link.as_os_str(),
                        Some(dir.as_raw_fd()),
                        tmp.as_os_str(),
                    )
                    .map_err(|e| io_err("create", &dst, e))?;
                    nix::unistd::fchownat(
                        Some(dir.as_raw_fd()),
                        tmp.as_os_str(),
                        Some(nix::unistd::Uid::from_raw(item.uid)),
                        Some(nix::unistd::Gid::from_raw(item.gid)),
                        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| io_err("change the owner of", &dst, e))?;
                    replace(&dir, &tmp, &name, &dst)?;
                }
                _ => {}
            }
        }
        self.known = current;
        Ok(())
    }

    /// Too much to copy: bind-mount the source on the target instead.
    fn bind_instead(
        &mut self,
        src: &OwnedFd,
        tmpfs: &OwnedFd,
        is_dir: bool,
        why: &str,
    ) -> Result<()> {
        info!(subsystem = "watcher", source = %self.source.display(), reason = why, "source too big to copy; bind-mounting it");
        let (dir, name) =
            parent_of(tmpfs, &self.name).map_err(|e| io_err("open", &self.name, e))?;
        let st = lstat_at(dir.as_raw_fd(), &name).ok();
        let kind = st.map(|st| st.st_mode & libc::S_IFMT);
        let fits = if is_dir {
            kind == Some(libc::S_IFDIR)
        } else {
            kind == Some(libc::S_IFREG)
        };
        if !fits {
            remove_at(dir.as_raw_fd(), &name, true)
                .map_err(|e| io_err("replace", &self.name, e))?;
            if is_dir {
                nix::sys::stat::mkdirat(
                    Some(dir.as_raw_fd()),
                    name.as_os_str(),
                    nix::sys::stat::Mode::from_bits_truncate(0o755),
                )
                .map_err(|e| io_err("create", &self.name, e))?;
            } else {
                drop(create_at(&dir, &name).map_err(|e| io_err("create", &self.name, e))?);
            }
        }
        let target = open_no_symlinks(
            dir.as_raw_fd(),
            Path::new(&name),
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
        )
        .map_err(|e| io_err("open", &self.name, e))?;
        match nix::mount::mount(
            Some(&fd_path(src)),
            &fd_path(&target),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => {
                self.bind_mounted = true;
                self.known.clear();
                Ok(())
            }
            Err(e) => {
                // Keep watching: the next scan tries again.
                warn!(subsystem = "watcher", source = %self.source.display(), error = %e, "cannot bind-mount the source");
                Ok(())
            }
        }
    }

    /// Removes the copy (or the bind mount) from the watchable directory.
    fn remove(&self, tmpfs: &OwnedFd) {
        if self.bind_mounted {
            let target = fd_path(tmpfs).join(&self.name);
            if let Err(e) = nix::mount::umount2(&target, MntFlags::MNT_DETACH) {
                warn!(subsystem = "watcher", target = %self.name.display(), error = %e, "cannot unmount");
            }
        }
        if let Err(e) = remove_at(tmpfs.as_raw_fd(), self.name.as_os_str(), true) {
            warn!(subsystem = "watcher", target = %self.name.display(), error = %e, "cannot delete the copy");
        }
    }
}

/// The directory holding `path` (relative to the tmpfs), opened without following any
/// symlink, and the last component.
fn parent_of(tmpfs: &OwnedFd, path: &Path) -> std::io::Result<(OwnedFd, OsString)> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?
        .to_os_string();
    let parent = path.parent().unwrap_or(Path::new(""));
    let dir = open_no_symlinks(
        tmpfs.as_raw_fd(),
        parent,
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )?;
    Ok((dir, name))
}

/// Creates a new regular file `name` in `dir` (never through a symlink), for writing.
fn create_at(dir: &OwnedFd, name: &OsStr) -> std::io::Result<OwnedFd> {
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        nix::fcntl::OFlag::O_WRONLY
            | nix::fcntl::OFlag::O_CREAT
            | nix::fcntl::OFlag::O_EXCL
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )?;
    // SAFETY: openat just returned this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn temp_name(name: &OsStr) -> OsString {
    let mut t = OsString::from(".");
    t.push(name);
    t.push(".kata-watch.tmp");
    t
}

/// Renames `tmp` over `name` in `dir`; a directory in the way is removed first (without
/// following symlinks or entering mounts).
fn replace(dir: &OwnedFd, tmp: &OsStr, name: &OsStr, shown: &Path) -> Result<()> {
    if lstat_at(dir.as_raw_fd(), name).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR) {
        remove_at(dir.as_raw_fd(), name, true).map_err(|e| io_err("replace", shown, e))?;
    }
    nix::fcntl::renameat(Some(dir.as_raw_fd()), tmp, Some(dir.as_raw_fd()), name)
        .map_err(|e| io_err("rename into", shown, e))
}

fn read_source(src: &OwnedFd, rel: &Path, is_dir: bool) -> Result<Vec<u8>> {
    use std::io::Read;
    let fd = if is_dir {
        open_no_symlinks(src.as_raw_fd(), rel, libc::O_RDONLY | libc::O_NOFOLLOW, 0)
    } else {
        // The source itself is the file: reopen it for reading.
        open_no_symlinks(src.as_raw_fd(), Path::new(""), libc::O_RDONLY, 0)
    }
    .map_err(|e| io_err("open", rel, e))?;
    let mut data = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_SIZE + 1)
        .read_to_end(&mut data)
        .map_err(|e| io_err("read", rel, e))?;
    Ok(data)
}

fn set_owner_mode(fd: &OwnedFd, item: &Item, shown: &Path) -> Result<()> {
    nix::unistd::fchown(
        fd.as_raw_fd(),
        Some(nix::unistd::Uid::from_raw(item.uid)),
        Some(nix::unistd::Gid::from_raw(item.gid)),
    )
    .map_err(|e| io_err("change the owner of", shown, e))?;
    nix::sys::stat::fchmod(
        fd.as_raw_fd(),
        nix::sys::stat::Mode::from_bits_truncate(item.mode),
    )
    .map_err(|e| io_err("change the mode of", shown, e))
}

impl BindWatcher {
    /// Starts watching `source` for container `cid`, copying it to `target`.
    pub fn add(&self, root: &Root, cid: &str, source: &Path, target: &Path) -> Result<()> {
        let parent = target
            .parent()
            .ok_or_else(|| AgentError::invalid_argument("a watchable mount point has no parent"))?;
        let allowed: Vec<PathBuf> = PARENTS.iter().map(|p| root.path.join(p)).collect();
        if !allowed.iter().any(|a| a == parent) {
            return Err(AgentError::invalid_argument(format!(
                "watchable mount point {} must be directly in {}",
                target.display(),
                allowed
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        }
        let name = PathBuf::from(target.file_name().unwrap_or_default());
        let mut st = self.state.lock().unwrap();
        match &st.parent {
            Some(p) if p != parent => {
                return Err(AgentError::invalid_argument(format!(
                    "watchable mount point {} is not in {}, the watchable directory already in use",
                    target.display(),
                    p.display()
                )))
            }
            Some(_) => {}
            None => self.start(&mut st, root, parent)?,
        }
        if st.entries.iter().any(|w| w.name == name) {
            return Err(AgentError::already_exists(format!(
                "{} is already being watched",
                target.display()
            )));
        }
        let tmpfs = st.tmpfs.as_ref().expect("started");
        let mut w = Watched {
            cid: cid.to_string(),
            source: source.to_path_buf(),
            name,
            known: HashMap::new(),
            bind_mounted: false,
        };
        if let Err(e) = w.scan(root, tmpfs) {
            w.remove(tmpfs);
            return Err(e);
        }
        debug!(subsystem = "watcher", source = %source.display(), target = %target.display(), "watching");
        st.entries.push(w);
        Ok(())
    }

    /// First use: the tmpfs on the watchable directory and the scanning thread.
    fn start(&self, st: &mut State, root: &Root, parent: &Path) -> Result<()> {
        let (dir, created) = root.mkdir_all("watchable directory", parent, 0o755)?;
        let undo = |created: &[PathBuf]| {
            for p in created.iter().rev() {
                let _ = root.remove(p, false);
            }
        };
        if let Err(e) = nix::mount::mount(
            Some("tmpfs"),
            &fd_path(&dir.fd),
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        ) {
            undo(&created);
            return Err(AgentError::internal(format!(
                "cannot mount a tmpfs on {}: {e}",
                parent.display()
            )));
        }
        let top = match root.reopen("watchable directory", &dir) {
            Ok(t) => t,
            Err(e) => {
                let _ = nix::mount::umount2(&fd_path(&dir.fd), MntFlags::MNT_DETACH);
                undo(&created);
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::channel::<()>();
        let state = self.state.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("bind-watcher".into())
            .spawn(move || loop {
                match rx.recv_timeout(SCAN_INTERVAL) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let mut st = state.lock().unwrap();
                let st = &mut *st;
                let (Some(root), Some(tmpfs)) = (st.root.as_ref(), st.tmpfs.as_ref()) else {
                    return;
                };
                for w in st.entries.iter_mut() {
                    if let Err(e) = w.scan(root, tmpfs) {
                        warn!(subsystem = "watcher", source = %w.source.display(), error = %e, "scan failed");
                    }
                }
            })
        {
            let _ = nix::mount::umount2(&fd_path(&top.fd), MntFlags::MNT_DETACH);
            undo(&created);
            return Err(AgentError::internal(format!(
                "cannot start the watcher thread: {e}"
            )));
        }
        st.root = Some(root.clone());
        st.parent = Some(parent.to_path_buf());
        st.tmpfs = Some(top.fd);
        st.created = created;
        st.stop = Some(tx);
        info!(subsystem = "watcher", dir = %parent.display(), "watchable directory mounted");
        Ok(())
    }

    /// Stops watching the target of container `cid` and deletes its copy.
    pub fn remove(&self, cid: &str, target: &Path) {
        let name = PathBuf::from(target.file_name().unwrap_or_default());
        let mut st = self.state.lock().unwrap();
        let st = &mut *st;
        let Some(tmpfs) = st.tmpfs.as_ref() else {
            return;
        };
        st.entries.retain(|w| {
            if w.cid == cid && w.name == name {
                w.remove(tmpfs);
                false
            } else {
                true
            }
        });
    }

    /// Stops everything and unmounts the tmpfs (DestroySandbox).
    pub fn shutdown(&self) {
        let mut st = self.state.lock().unwrap();
        let st = &mut *st;
        st.stop.take();
        if let Some(tmpfs) = st.tmpfs.as_ref() {
            for w in st.entries.drain(..) {
                w.remove(tmpfs);
            }
        }
        st.tmpfs.take();
        if let (Some(root), Some(parent)) = (st.root.as_ref(), st.parent.take()) {
            if let Err(e) = super::mount::unmount_beneath(root, &parent) {
                warn!(subsystem = "watcher", error = %e, "cannot unmount the watchable directory");
            }
            for p in st.created.drain(..).rev() {
                let _ = root.remove(&p, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn collect_limits() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a"), "1").unwrap();
        std::os::unix::fs::symlink("a", src.join("l")).unwrap();
        let fd = OwnedFd::from(std::fs::File::open(&src).unwrap());
        let items = collect(&fd, true).ok().unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!(items[0].rel, PathBuf::new());
        assert!(items.iter().any(|i| i.kind == Kind::Symlink));
        for i in 0..13 {
            std::fs::write(src.join(format!("f{i}")), "x").unwrap();
        }
        // root + sub + a + l + 13 = 17 entries
        assert!(matches!(collect(&fd, true), Err(ScanError::TooBig(_))));
    }

    #[test]
    fn a_copied_symlink_turned_directory_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path().join("run"));
        root.fd().unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o700)).unwrap();
        let src = root.path.join("src");
        std::fs::create_dir(&src).unwrap();
        std::os::unix::fs::symlink(&victim, src.join("a")).unwrap();
        let copy = dir.path().join("copy");
        std::fs::create_dir(&copy).unwrap();
        let tmpfs = OwnedFd::from(std::fs::File::open(&copy).unwrap());
        let mut w = Watched {
            cid: "c".into(),
            source: src.clone(),
            name: PathBuf::from("t"),
            known: HashMap::new(),
            bind_mounted: false,
        };
        w.scan(&root, &tmpfs).unwrap();
        assert_eq!(std::fs::read_link(copy.join("t/a")).unwrap(), victim);
        std::fs::remove_file(src.join("a")).unwrap();
        std::fs::create_dir(src.join("a")).unwrap();
        std::fs::write(src.join("a/passwd"), "x").unwrap();
        std::fs::set_permissions(src.join("a"), std::fs::Permissions::from_mode(0o777)).unwrap();
        w.scan(&root, &tmpfs).unwrap();
        assert!(copy.join("t/a/passwd").is_file());
        assert!(!std::fs::symlink_metadata(copy.join("t/a"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Back to a symlink, then gone: nothing deleted through it.
        std::fs::write(victim.join("keep"), "k").unwrap();
        std::fs::remove_dir_all(src.join("a")).unwrap();
        std::os::unix::fs::symlink(&victim, src.join("a")).unwrap();
        w.scan(&root, &tmpfs).unwrap();
        std::fs::remove_file(src.join("a")).unwrap();
        w.scan(&root, &tmpfs).unwrap();
        assert!(std::fs::symlink_metadata(copy.join("t/a")).is_err());
        assert!(victim.join("keep").exists());
    }
}
