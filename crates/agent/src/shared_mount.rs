//! The `shared_mounts` of CreateContainer: a mount of one container of the sandbox made visible
//! in another.
//!
//! Each entry names a source container by its name (annotation `io.kubernetes.cri.container-name`,
//! else `io.kubernetes.cri-o.ContainerName`), a path in it, and a path in the new container. As
//! upstream: the source path is waited for (up to 10 s, every 100 ms) until it is a mount point
//! of the source container — its application may mount it late — and an entry whose source
//! container is unknown, or whose path never becomes a mount point, is skipped with a warning;
//! `dst_ctr` is informational. The mount tree at the source path is cloned in the source
//! container's mount namespace and attached in the new container's, at the destination path
//! (directories created where missing).
//!
//! Both paths are the host's: they must be absolute without `..`, and are resolved with openat2
//! beneath the container's root (`/proc/<init>/root`), the mount acting on the descriptors. The
//! work runs on a thread of its own, which alone changes mount namespace and then ends.

use std::collections::HashMap;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::Spec;
use protocols::agent::SharedMount;
use tracing::{info, warn};

use crate::agent::Agent;
use crate::error::{AgentError, Result};
use crate::storage::confine::clean_absolute;

/// Annotations naming a container (CRI-containerd, then CRI-O).
const NAME_ANNOTATIONS: [&str; 2] = [
    "io.kubernetes.cri.container-name",
    "io.kubernetes.cri-o.ContainerName",
];
/// How long a source path may take to become a mount point.
const READY_WAIT: Duration = Duration::from_secs(10);
const READY_POLL: Duration = Duration::from_millis(100);
/// Most shared mounts per request.
const MAX_SHARED_MOUNTS: usize = 64;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// The container's name from its annotations ("" if it has none).
pub fn container_name(spec: &Spec) -> String {
    let Some(a) = spec.annotations().as_ref() else {
        return String::new();
    };
    NAME_ANNOTATIONS
        .iter()
        .find_map(|k| a.get(*k).cloned())
        .unwrap_or_default()
}

/// One checked entry.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    src_ctr: String,
    src_path: PathBuf,
    dst_path: PathBuf,
}

fn check(m: &SharedMount) -> Result<Entry> {
    let what = |f: &str| format!("shared mount {:?}: {f}", m.name);
    if m.src_ctr.is_empty() {
        return Err(AgentError::invalid_argument(what("src_ctr is empty")));
    }
    let src_path = clean_absolute(&what("src_path"), &m.src_path)?;
    let dst_path = clean_absolute(&what("dst_path"), &m.dst_path)?;
    if dst_path == Path::new("/") {
        return Err(AgentError::invalid_argument(what(
            "dst_path must not be the container's root",
        )));
    }
    Ok(Entry {
        name: m.name.clone(),
        src_ctr: m.src_ctr.clone(),
        src_path,
        dst_path,
    })
}

/// Checks the entries before anything is created.
pub fn validate(list: &[SharedMount]) -> Result<()> {
    if list.len() > MAX_SHARED_MOUNTS {
        return Err(AgentError::invalid_argument(format!(
            "more than {MAX_SHARED_MOUNTS} shared mounts"
        )));
    }
    list.iter().try_for_each(|m| check(m).map(|_| ()))
}

/// An entry with its source container's init.
struct Job {
    entry: Entry,
    src_pid: i32,
}

/// Sets up the shared mounts of the just created container `cid` (still in the Created state).
pub async fn setup(agent: &Agent, cid: &str, list: &[SharedMount]) -> Result<()> {
    if list.is_empty() {
        return Ok(());
    }
    let entries = list.iter().map(check).collect::<Result<Vec<_>>>()?;
    let mut sources: HashMap<String, i32> = HashMap::new();
    for id in agent.containers.ids() {
        if id == cid {
            continue;
        }
        let Some(c) = agent.containers.get(&id) else {
            continue;
        };
        let Ok(spec) = c.spec().await else {
            continue;
        };
        let name = container_name(&spec);
        if name.is_empty()
            || sources.contains_key(&name)
            || !entries.iter().any(|e| e.src_ctr == name)
        {
            continue;
        }
        let Ok(init) = c.process("") else {
            continue;
        };
        if init.exit.try_get().is_none() {
            sources.insert(name, init.pid);
        }
    }
    let mut jobs = Vec::new();
    for entry in entries {
        match sources.get(&entry.src_ctr) {
            Some(pid) => jobs.push(Job {
                src_pid: *pid,
                entry,
            }),
            None => warn!(
                subsystem = "container", container_id = %cid, shared_mount = %entry.name,
                "shared mount skipped: no running container is named {:?}", entry.src_ctr
            ),
        }
    }
    if jobs.is_empty() {
        return Ok(());
    }
    let dst_pid = agent.containers.find(cid)?.process("")?.pid;
    let cid = cid.to_string();
    tokio::task::spawn_blocking(move || {
        // setns needs a thread that shares nothing with the others and ends afterwards.
        std::thread::Builder::new()
            .name("shared-mounts".into())
            .spawn(move || mount_all(&cid, dst_pid, jobs))
            .map_err(|e| {
                AgentError::internal(format!("cannot start the shared-mount thread: {e}"))
            })?
            .join()
            .map_err(|_| AgentError::internal("the shared-mount thread panicked"))?
    })
    .await
    .map_err(|e| AgentError::internal(format!("shared-mount task failed: {e}")))?
}

fn open_proc(pid: i32, name: &str, flags: i32) -> Result<OwnedFd> {
    let path = format!("/proc/{pid}/{name}");
    let c = std::ffi::CString::new(path.clone()).expect("no NUL");
    // SAFETY: open(2) of a path we built.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(AgentError::internal(format!(
            "cannot open {path}: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: the kernel just returned this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setns(fd: &OwnedFd, what: &str) -> Result<()> {
    // SAFETY: setns(2) on a namespace fd we own, on this thread only.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
        return Err(AgentError::internal(format!(
            "cannot enter the mount namespace of {what}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

fn is_mount_point(pid: i32, path: &Path) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .map(|t| {
            engine::fsutil::parse_mountinfo(&t)
                .iter()
                .any(|m| m.mount_point == path)
        })
        .unwrap_or(false)
}

/// Runs on its own thread: changes this thread's mount namespace.
fn mount_all(cid: &str, dst_pid: i32, jobs: Vec<Job>) -> Result<()> {
    // Everything named by path is opened before the first setns (after it, "/proc" would be the
    // container's).
    let dst_ns = open_proc(dst_pid, "ns/mnt", libc::O_RDONLY)?;
    let dst_root = open_proc(dst_pid, "root", libc::O_PATH | libc::O_DIRECTORY)?;
    let deadline = Instant::now() + READY_WAIT;
    let mut ready = vec![false; jobs.len()];
    loop {
        for (i, j) in jobs.iter().enumerate() {
            if !ready[i] {
                ready[i] = is_mount_point(j.src_pid, &j.entry.src_path);
            }
        }
        if ready.iter().all(|r| *r) || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(READY_POLL);
    }
    let mut opened = Vec::new();
    for (j, ready) in jobs.iter().zip(ready) {
        if !ready {
            warn!(
                subsystem = "container", container_id = %cid, shared_mount = %j.entry.name,
                "shared mount skipped: {} is not a mount point of container {:?} after {}s",
                j.entry.src_path.display(), j.entry.src_ctr, READY_WAIT.as_secs()
            );
            continue;
        }
        let ns = open_proc(j.src_pid, "ns/mnt", libc::O_RDONLY)?;
        let root = open_proc(j.src_pid, "root", libc::O_PATH | libc::O_DIRECTORY)?;
        opened.push((j, ns, root));
    }
    if opened.is_empty() {
        return Ok(());
    }
    // SAFETY: unshare(2) of this thread's file-system attributes (required by setns).
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        return Err(AgentError::internal(format!(
            "cannot unshare the file-system attributes: {}",
            std::io::Error::last_os_error()
        )));
    }
    for (j, src_ns, src_root) in opened {
        let e = &j.entry;
        setns(&src_ns, &format!("container {:?}", e.src_ctr))?;
        let src = engine::fsutil::open_in_root(src_root.as_raw_fd(), &e.src_path, libc::O_PATH, 0)
            .map_err(|err| {
                AgentError::failed_precondition(format!(
                    "shared mount {:?}: cannot open {} in container {:?}: {err}",
                    e.name,
                    e.src_path.display(),
                    e.src_ctr
                ))
            })?;
        let tree = open_tree(&src).map_err(|err| {
            AgentError::internal(format!(
                "shared mount {:?}: cannot clone the mount at {}: {err}",
                e.name,
                e.src_path.display()
            ))
        })?;
        let is_dir = nix::sys::stat::fstat(tree.as_raw_fd())
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
            .unwrap_or(true);
        setns(&dst_ns, &format!("container {cid}"))?;
        let target = if is_dir {
            engine::fsutil::mkdir_all_in_root(dst_root.as_raw_fd(), &e.dst_path, 0o755)
        } else {
            engine::fsutil::create_file_in_root(dst_root.as_raw_fd(), &e.dst_path).and_then(|()| {
                engine::fsutil::open_in_root(dst_root.as_raw_fd(), &e.dst_path, libc::O_PATH, 0)
            })
        }
        .map_err(|err| {
            AgentError::invalid_argument(format!(
                "shared mount {:?}: cannot create {} in container {cid}: {err}",
                e.name,
                e.dst_path.display()
            ))
        })?;
        move_mount(&tree, &target).map_err(|err| {
            AgentError::internal(format!(
                "shared mount {:?}: cannot attach the mount at {} in container {cid}: {err}",
                e.name,
                e.dst_path.display()
            ))
        })?;
        info!(
            subsystem = "container", container_id = %cid, shared_mount = %e.name,
            src = %e.src_path.display(), dst = %e.dst_path.display(), "shared mount set up"
        );
    }
    Ok(())
}

const EMPTY: &CStr = c"";

/// `open_tree(fd, "", OPEN_TREE_CLONE | AT_RECURSIVE | AT_EMPTY_PATH)`: a detached copy of the
/// mount tree at `fd`.
fn open_tree(fd: &OwnedFd) -> std::io::Result<OwnedFd> {
    let flags = OPEN_TREE_CLONE
        | libc::O_CLOEXEC as libc::c_uint
        | libc::AT_RECURSIVE as libc::c_uint
        | libc::AT_EMPTY_PATH as libc::c_uint;
    // SAFETY: open_tree(2) on an fd we own with an empty path.
    let r = unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), EMPTY.as_ptr(), flags) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// `move_mount(tree, "", target, "", F_EMPTY_PATH | T_EMPTY_PATH)`.
fn move_mount(tree: &OwnedFd, target: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: move_mount(2) between two fds we own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            EMPTY.as_ptr(),
            target.as_raw_fd(),
            EMPTY.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sm(src_ctr: &str, src: &str, dst: &str) -> SharedMount {
        let mut m = SharedMount::new();
        m.name = "m".into();
        m.src_ctr = src_ctr.into();
        m.src_path = src.into();
        m.dst_ctr = "d".into();
        m.dst_path = dst.into();
        m
    }

    #[test]
    fn validation() {
        assert!(validate(&[sm("a", "/x", "/y/z")]).is_ok());
        for bad in [
            sm("", "/x", "/y"),
            sm("a", "x", "/y"),
            sm("a", "/x", "/y/../../etc"),
            sm("a", "/x", ""),
            sm("a", "/x", "/"),
            sm("a", "/x\0", "/y"),
        ] {
            assert_eq!(
                validate(std::slice::from_ref(&bad)).unwrap_err().code,
                ttrpc::Code::INVALID_ARGUMENT,
                "{bad:?}"
            );
        }
    }
}
