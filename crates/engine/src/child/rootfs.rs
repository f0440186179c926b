//! Root file system of a new mount namespace: mounts, /dev, pivot, finishing touches.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount};

use crate::fsutil::{
    bind_fd, create_file_in_root, fd_path, fstat, is_dev_null, lstat_at, mkdir_all_in_root,
    mountinfo, open_in_root, openat2, RESOLVE_BENEATH, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
};
use crate::setup::Setup;
use crate::validate::bind_kind;

/// A v1 cgroup hierarchy the container is in: mount name (e.g. `cpu,cpuacct`)
/// and the host directory of the container's cgroup in it.
#[derive(Debug, Clone)]
pub struct CgroupDir {
    pub name: String,
    pub host_dir: PathBuf,
}

/// Finds the container's cgroup directory in every v1 hierarchy. Must run
/// before a new cgroup namespace hides the real paths.
pub fn cgroup_v1_dirs() -> Vec<CgroupDir> {
    let Ok(text) = std::fs::read_to_string("/proc/self/cgroup") else {
        return Vec::new();
    };
    let Ok(mounts) = mountinfo() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => continue,
        };
        if ctrls.is_empty() {
            continue; // the v2 line
        }
        let wanted: Vec<&str> = ctrls.split(',').collect();
        let Some(mi) = mounts.iter().find(|m| {
            m.fstype == "cgroup" && {
                let opts: Vec<&str> = m.super_opts.split(',').collect();
                wanted.iter().all(|w| opts.contains(w))
            }
        }) else {
            continue;
        };
        let Ok(rel) = Path::new(path).strip_prefix(&mi.root) else {
            continue;
        };
        let Some(name) = mi.mount_point.file_name() else {
            continue;
        };
        out.push(CgroupDir {
            name: name.to_string_lossy().into_owned(),
            host_dir: mi.mount_point.join(rel),
        });
    }
    out
}

/// Parsed mount options.
#[derive(Debug, PartialEq)]
struct Opts {
    flags: MsFlags,
    propagation: MsFlags,
    data: Vec<String>,
}

fn parse_opts(opts: &[String]) -> Opts {
    let mut o = Opts {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: Vec::new(),
    };
    for opt in opts {
        let (set, clear) = match opt.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "silent" => (MsFlags::MS_SILENT, MsFlags::empty()),
            "loud" => (MsFlags::empty(), MsFlags::MS_SILENT),
            "acl" => (MsFlags::MS_POSIXACL, MsFlags::empty()),
            "noacl" => (MsFlags::empty(), MsFlags::MS_POSIXACL),
            "iversion" => (MsFlags::MS_I_VERSION, MsFlags::empty()),
            "noiversion" => (MsFlags::empty(), MsFlags::MS_I_VERSION),
            "lazytime" => (MsFlags::MS_LAZYTIME, MsFlags::empty()),
            "nolazytime" => (MsFlags::empty(), MsFlags::MS_LAZYTIME),
            p => {
                if let Some(prop) = propagation(p) {
                    o.propagation |= prop;
                } else {
                    o.data.push(p.to_string());
                }
                continue;
            }
        };
        o.flags.insert(set);
        o.flags.remove(clear);
    }
    o
}

fn propagation(word: &str) -> Option<MsFlags> {
    Some(match word {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Remounts a bind mount (or any mount, as a per-mount change) with `flags`.
/// Inside a user namespace the kernel refuses to clear locked flags, so on
/// EPERM the mount's current nosuid/nodev/noexec/atime flags are kept.
fn remount(target: &Path, flags: MsFlags) -> Result<()> {
    let base = MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    let first = mount(
        None::<&str>,
        target,
        None::<&str>,
        base | flags,
        None::<&str>,
    );
    match first {
        Err(nix::errno::Errno::EPERM) => {
            let st = nix::sys::statvfs::statvfs(target)?;
            use nix::sys::statvfs::FsFlags as S;
            let mut keep = MsFlags::empty();
            for (s, m) in [
                (S::ST_NOSUID, MsFlags::MS_NOSUID),
                (S::ST_NODEV, MsFlags::MS_NODEV),
                (S::ST_NOEXEC, MsFlags::MS_NOEXEC),
                (S::ST_NOATIME, MsFlags::MS_NOATIME),
                (S::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
                (S::ST_RELATIME, MsFlags::MS_RELATIME),
            ] {
                if st.flags().contains(s) {
                    keep |= m;
                }
            }
            mount(
                None::<&str>,
                target,
                None::<&str>,
                base | flags | keep,
                None::<&str>,
            )
            .with_context(|| format!("cannot remount {}", target.display()))
        }
        r => r.with_context(|| format!("cannot remount {}", target.display())),
    }
}

/// What `finish` needs to remember from `prepare`.
#[derive(Debug, Default)]
pub struct Prepared {
    dev_ro: bool,
}

/// Sets up the rootfs of a new mount namespace, before pivoting into it.
pub fn prepare(setup: &Setup, rootfs: &Path, cgroups: &[CgroupDir]) -> Result<Prepared> {
    let linux = setup
        .spec
        .linux()
        .as_ref()
        .ok_or_else(|| anyhow!("the spec has no linux section"))?;
    let prop = linux
        .rootfs_propagation()
        .as_deref()
        .and_then(propagation)
        .unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC);
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        prop | MsFlags::MS_REC,
        None::<&str>,
    )
    .context("cannot set the propagation of /")?;
    make_parent_private(rootfs)?;
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("cannot bind-mount the rootfs {}", rootfs.display()))?;
    let root = File::open(rootfs)
        .with_context(|| format!("cannot open the rootfs {}", rootfs.display()))?;
    let rootfd = root.as_raw_fd();
    // The bundle is `<run_dir>/<id>`: bind sources below the run directory (the shared
    // volumes other containers can write) are resolved there without following symlinks.
    let run_dir = setup.bundle.parent().filter(|p| !p.as_os_str().is_empty());

    let mut prepared = Prepared::default();
    let mut dev_provided = false;
    for m in setup.spec.mounts().iter().flatten() {
        let (bind, _) = bind_kind(m);
        if m.destination() == Path::new("/dev") {
            dev_provided |= bind;
        }
        mount_entry(rootfd, m, cgroups, &mut prepared, run_dir)
            .with_context(|| format!("cannot mount {}", m.destination().display()))?;
    }
    if !dev_provided {
        create_devices(
            rootfd,
            linux.devices().as_deref().unwrap_or(&[]),
            setup.in_userns(),
        )
        .context("cannot create the devices in /dev")?;
    }
    Ok(prepared)
}

/// pivot_root fails when the parent mount of the new root is shared.
fn make_parent_private(rootfs: &Path) -> Result<()> {
    let mounts = mountinfo()?;
    let parent = mounts
        .iter()
        .filter(|m| rootfs.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len());
    if let Some(m) = parent {
        if m.optional.split(' ').any(|f| f.starts_with("shared:")) {
            mount(
                None::<&str>,
                &m.mount_point,
                None::<&str>,
                MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .with_context(|| format!("cannot make {} private", m.mount_point.display()))?;
        }
    }
    Ok(())
}

fn mount_entry(
    rootfd: i32,
    m: &Mount,
    cgroups: &[CgroupDir],
    prepared: &mut Prepared,
    run_dir: Option<&Path>,
) -> Result<()> {
    let dest = m.destination();
    let opts = parse_opts(m.options().as_deref().unwrap_or(&[]));
    let (bind, _) = bind_kind(m);
    let typ = m.typ().as_deref().unwrap_or("");
    let mut flags = opts.flags;
    if dest == Path::new("/dev") && flags.contains(MsFlags::MS_RDONLY) {
        // Devices are created first; /dev becomes read-only when finishing.
        prepared.dev_ro = true;
        flags.remove(MsFlags::MS_RDONLY);
    }
    let data = opts.data.join(",");

    if !bind && typ == "cgroup" {
        return mount_cgroup(rootfd, dest, flags, cgroups);
    }
    if bind {
        let src = m
            .source()
            .as_ref()
            .ok_or_else(|| anyhow!("the bind mount has no source"))?;
        // One resolution, held as a descriptor: a symlink swapped in afterwards changes nothing.
        let src_fd = crate::fsutil::open_bind_source(run_dir, src)?;
        let is_dir = fstat(src_fd.as_raw_fd())
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
            .with_context(|| format!("cannot stat the source {}", src.display()))?;
        if is_dir {
            mkdir_all_in_root(rootfd, dest, 0o755)?;
        } else {
            create_file_in_root(rootfd, dest)?;
        }
        let target = open_in_root(rootfd, dest, libc::O_PATH, 0)?;
        mount(
            Some(&fd_path(&src_fd)),
            &fd_path(&target),
            None::<&str>,
            MsFlags::MS_BIND | (flags & MsFlags::MS_REC),
            None::<&str>,
        )
        .with_context(|| format!("cannot bind-mount {}", src.display()))?;
        let extra = flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            let target = open_in_root(rootfd, dest, libc::O_PATH, 0)?;
            remount(&fd_path(&target), extra)?;
        }
    } else {
        mkdir_all_in_root(rootfd, dest, 0o755)?;
        let target = open_in_root(rootfd, dest, libc::O_PATH, 0)?;
        let source = m
            .source()
            .as_ref()
            .map(|s| s.as_os_str().to_owned())
            .unwrap_or_else(|| typ.into());
        let res = mount(
            Some(source.as_os_str()),
            &fd_path(&target),
            Some(typ),
            flags,
            Some(data.as_str()).filter(|d| !d.is_empty()),
        );
        match res {
            Err(nix::errno::Errno::EPERM) if typ == "sysfs" => {
                // Without its own network namespace a user namespace may not
                // mount sysfs: show the engine's one, read-only.
                mount(
                    Some("/sys"),
                    &fd_path(&target),
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .context("cannot bind-mount /sys")?;
                let target = open_in_root(rootfd, dest, libc::O_PATH, 0)?;
                remount(&fd_path(&target), flags | MsFlags::MS_RDONLY)?;
            }
            r => r.with_context(|| format!("cannot mount a {typ} file system"))?,
        }
    }
    if !opts.propagation.is_empty() {
        let target = open_in_root(rootfd, dest, libc::O_PATH, 0)?;
        mount(
            None::<&str>,
            &fd_path(&target),
            None::<&str>,
            opts.propagation,
            None::<&str>,
        )
        .context("cannot set the mount propagation")?;
    }
    Ok(())
}

fn mount_cgroup(rootfd: i32, dest: &Path, flags: MsFlags, cgroups: &[CgroupDir]) -> Result<()> {
    mkdir_all_in_root(rootfd, dest, 0o755)?;
    let target = open_in_root(rootfd, dest, libc::O_PATH, 0)?;
    if crate::cgroups::is_cgroup2_mount(Path::new("/sys/fs/cgroup")) {
        mount(
            Some("cgroup2"),
            &fd_path(&target),
            Some("cgroup2"),
            flags,
            None::<&str>,
        )
        .context("cannot mount cgroup2")?;
        return Ok(());
    }
    let ro = flags.contains(MsFlags::MS_RDONLY);
    let base = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        &fd_path(&target),
        Some("tmpfs"),
        base,
        Some("mode=755"),
    )
    .context("cannot mount the tmpfs for the cgroup hierarchies")?;
    for cg in cgroups {
        let sub = dest.join(&cg.name);
        mkdir_all_in_root(rootfd, &sub, 0o755)?;
        let t = open_in_root(rootfd, &sub, libc::O_PATH, 0)?;
        mount(
            Some(&cg.host_dir),
            &fd_path(&t),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("cannot bind-mount {}", cg.host_dir.display()))?;
        let t = open_in_root(rootfd, &sub, libc::O_PATH, 0)?;
        let mut f = base;
        if ro && cg.name != "systemd" && cg.name != "name=systemd" {
            f |= MsFlags::MS_RDONLY;
        }
        remount(&fd_path(&t), f)?;
        if cg.name.contains(',') {
            let dir = open_in_root(rootfd, dest, libc::O_PATH | libc::O_DIRECTORY, 0)?;
            for part in cg.name.split(',') {
                let _ = nix::unistd::symlinkat(cg.name.as_str(), Some(dir.as_raw_fd()), part);
            }
        }
    }
    if ro {
        let t = open_in_root(rootfd, dest, libc::O_PATH, 0)?;
        remount(&fd_path(&t), base | MsFlags::MS_RDONLY)?;
    }
    Ok(())
}

const DEFAULT_DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("tty", 5, 0),
    ("urandom", 1, 9),
    ("random", 1, 8),
];

fn cpath(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| anyhow!("{s:?} contains a NUL byte"))
}

/// Creates one device node `name` in directory `dir`: mknod, or (user
/// namespace) a bind mount of the engine's node at `host` onto an empty file.
fn make_node(
    dir: &OwnedFd,
    name: &str,
    kind: libc::mode_t,
    mode: u32,
    dev: u64,
    host: &Path,
    userns: bool,
) -> Result<()> {
    let c = cpath(name)?;
    if userns {
        // The engine's node, checked on the opened descriptor to be the very device wanted.
        let host_node = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
            .open(host)
            .with_context(|| format!("cannot open {}", host.display()))?;
        let host_node = OwnedFd::from(host_node);
        let st = fstat(host_node.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT != kind || st.st_rdev != dev {
            bail!(
                "{} is not the device {}:{} it should be",
                host.display(),
                libc::major(dev),
                libc::minor(dev)
            );
        }
        // SAFETY: openat relative to a directory fd we own; the result is closed right away.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                0o644,
            )
        };
        if fd < 0 {
            bail!("cannot create {name}: {}", std::io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by openat.
        unsafe { libc::close(fd) };
        let target = crate::fsutil::openat2(
            dir.as_raw_fd(),
            Path::new(name),
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
            RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS,
        )
        .with_context(|| format!("cannot open {name}"))?;
        mount(
            Some(&fd_path(&host_node)),
            &fd_path(&target),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("cannot bind-mount {}", host.display()))?;
    } else {
        // SAFETY: mknodat relative to a directory fd we own.
        if unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), kind | mode, dev) } != 0 {
            bail!(
                "cannot create the device {name}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

fn exists_at(dir: &OwnedFd, name: &str) -> bool {
    nix::sys::stat::fstatat(
        Some(dir.as_raw_fd()),
        name,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .is_ok()
}

fn create_devices(rootfd: i32, devices: &[LinuxDevice], userns: bool) -> Result<()> {
    let dev = mkdir_all_in_root(rootfd, Path::new("/dev"), 0o755)?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        if !exists_at(&dev, name) {
            symlink_at(&dev, target, name)?;
        }
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let res = (|| -> Result<()> {
        for (name, major, minor) in DEFAULT_DEVICES {
            let devno = libc::makedev(*major as u32, *minor as u32);
            // An image's own entry (a symlink, a file, another device) is replaced: these
            // nodes are used by the engine itself (masked paths bind /dev/null).
            if let Ok(st) = lstat_at(dev.as_raw_fd(), std::ffi::OsStr::new(name)) {
                if st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == devno {
                    continue;
                }
                nix::unistd::unlinkat(
                    Some(dev.as_raw_fd()),
                    *name,
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                )
                .with_context(|| format!("cannot replace the image's /dev/{name}"))?;
            }
            let host = PathBuf::from("/dev").join(name);
            make_node(&dev, name, libc::S_IFCHR, 0o666, devno, &host, userns)?;
        }
        for d in devices {
            let path = d.path();
            let rel = path
                .strip_prefix("/dev")
                .map_err(|_| anyhow!("the device {} is not below /dev", path.display()))?;
            let parent = Path::new("/dev").join(rel.parent().unwrap_or(Path::new("")));
            let dir = mkdir_all_in_root(rootfd, &parent, 0o755)?;
            let name = rel
                .file_name()
                .ok_or_else(|| anyhow!("the device path {} has no file name", path.display()))?
                .to_string_lossy()
                .into_owned();
            if exists_at(&dir, &name) {
                nix::unistd::unlinkat(
                    Some(dir.as_raw_fd()),
                    name.as_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                )
                .with_context(|| format!("cannot replace {}", path.display()))?;
            }
            let kind = match d.typ() {
                LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
                LinuxDeviceType::B => libc::S_IFBLK,
                LinuxDeviceType::P => libc::S_IFIFO,
                LinuxDeviceType::A => bail!(
                    "the device {} has type a, which cannot be created",
                    path.display()
                ),
            };
            let mode = match d.file_mode() {
                Some(m) if m != 0 => m & 0o7777,
                _ => std::fs::metadata(path)
                    .map(|m| m.mode() & 0o7777)
                    .unwrap_or(0o666),
            };
            let devno = libc::makedev(d.major() as u32, d.minor() as u32);
            make_node(&dir, &name, kind, mode, devno, path, userns)?;
            let (uid, gid) = (d.uid(), d.gid());
            if !userns && (uid.is_some() || gid.is_some()) {
                nix::unistd::fchownat(
                    Some(dir.as_raw_fd()),
                    name.as_str(),
                    Some(nix::unistd::Uid::from_raw(uid.unwrap_or(0))),
                    Some(nix::unistd::Gid::from_raw(gid.unwrap_or(0))),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .with_context(|| format!("cannot change the owner of {}", path.display()))?;
            }
        }
        Ok(())
    })();
    nix::sys::stat::umask(old);
    res?;
    if exists_at(&dev, "ptmx") && !is_symlink_to(&dev, "ptmx", "pts/ptmx") {
        let _ = nix::unistd::unlinkat(
            Some(dev.as_raw_fd()),
            "ptmx",
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
    if !exists_at(&dev, "ptmx") {
        symlink_at(&dev, "pts/ptmx", "ptmx")?;
    }
    Ok(())
}

fn is_symlink_to(dir: &OwnedFd, name: &str, target: &str) -> bool {
    nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name).is_ok_and(|t| t == target)
}

/// Creates the symlink `name` -> `target` in `dir`. Without a `/dev` mount of its own, a
/// container's `/dev` is the image's directory, which containers set up at the same time share:
/// the same link made by another one in between is kept.
fn symlink_at(dir: &OwnedFd, target: &str, name: &str) -> Result<()> {
    match nix::unistd::symlinkat(target, Some(dir.as_raw_fd()), name) {
        Err(nix::errno::Errno::EEXIST) if is_symlink_to(dir, name, target) => Ok(()),
        r => r.with_context(|| format!("cannot create the symlink /dev/{name}")),
    }
}

/// Makes `rootfs` the root of this mount namespace.
pub fn pivot(rootfs: &Path, no_pivot: bool) -> Result<()> {
    nix::unistd::chdir(rootfs).with_context(|| format!("cannot enter {}", rootfs.display()))?;
    if no_pivot {
        mount(
            Some(rootfs),
            "/",
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .context("cannot move the rootfs to /")?;
        nix::unistd::chroot(".").context("cannot chroot into the rootfs")?;
    } else {
        nix::unistd::pivot_root(".", ".").context("cannot pivot_root into the rootfs")?;
        // The old root is now stacked on ".": detach it without letting the
        // unmount propagate back to the engine's namespace.
        mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .context("cannot make the old root a slave")?;
        umount2(".", MntFlags::MNT_DETACH).context("cannot detach the old root")?;
    }
    nix::unistd::chdir("/").context("cannot enter the new root")?;
    Ok(())
}

/// Masks paths of the (pivoted) root: a directory gets an empty read-only tmpfs, anything else
/// the container's `/dev/null`, which must be the null device (1:3), checked with `fstat` on the
/// descriptor that is then mounted: an image's `/dev/null` that is a symlink, a file or another
/// device is refused (CVE-2025-31133). Targets are resolved inside the root and mounted through
/// their descriptors.
fn mask_paths(paths: &[String]) -> Result<()> {
    if paths.is_empty() {
        return Ok(());
    }
    let root = File::open("/").context("cannot open the root")?;
    let rootfd = root.as_raw_fd();
    let mut null: Option<OwnedFd> = None;
    let proc_fd = Path::new("/proc/self/fd").is_dir();
    for p in paths {
        let p = Path::new(p);
        let target = match open_in_root(rootfd, p, libc::O_PATH, 0) {
            Ok(t) => t,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(anyhow!("cannot open the masked path {}: {e}", p.display())),
        };
        let st = fstat(target.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            let where_: PathBuf = if proc_fd {
                fd_path(&target)
            } else {
                p.to_path_buf()
            };
            mount(
                Some("tmpfs"),
                &where_,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .with_context(|| format!("cannot mask {}", p.display()))?;
            continue;
        }
        if null.is_none() {
            let fd = openat2(
                rootfd,
                Path::new("dev/null"),
                libc::O_PATH | libc::O_NOFOLLOW,
                0,
                RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
            )
            .map_err(|e| {
                anyhow!("/dev/null of the container (a symlink?) cannot be opened as the null device to mask paths with: {e}")
            })?;
            if !is_dev_null(&fd)? {
                bail!("/dev/null of the container is not the null device (1:3): refusing to mask paths with it");
            }
            null = Some(fd);
        }
        bind_fd(null.as_ref().expect("opened"), &target, false)
            .with_context(|| format!("cannot mask {}", p.display()))?;
    }
    Ok(())
}

/// After the pivot: sysctls, masked and read-only paths, read-only /dev and
/// root, the working directory.
pub fn finish(setup: &Setup, prepared: &Prepared, cwd: &Path) -> Result<()> {
    let linux = setup
        .spec
        .linux()
        .as_ref()
        .ok_or_else(|| anyhow!("the spec has no linux section"))?;
    for (k, v) in linux.sysctl().iter().flatten() {
        let p = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        if p.exists() {
            std::fs::write(&p, v).with_context(|| format!("cannot set the sysctl {k}"))?;
        }
    }
    mask_paths(linux.masked_paths().as_deref().unwrap_or(&[]))?;
    for p in linux.readonly_paths().iter().flatten() {
        let p = Path::new(p);
        if std::fs::symlink_metadata(p).is_err() {
            continue;
        }
        mount(
            Some(p),
            p,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("cannot bind-mount {}", p.display()))?;
        remount(
            p,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        )?;
    }
    if prepared.dev_ro {
        remount(Path::new("/dev"), MsFlags::MS_RDONLY)?;
    }
    if !cwd.as_os_str().is_empty() {
        std::fs::create_dir_all(cwd)
            .with_context(|| format!("cannot create the working directory {}", cwd.display()))?;
    }
    if setup
        .spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        remount(Path::new("/"), MsFlags::MS_RDONLY)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = parse_opts(&[
            "rbind".into(),
            "ro".into(),
            "rslave".into(),
            "mode=755".into(),
            "size=1k".into(),
            "rw".into(),
        ]);
        assert_eq!(o.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(o.propagation, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert_eq!(o.data, vec!["mode=755", "size=1k"]);
    }
}
