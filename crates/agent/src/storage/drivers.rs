//! The storage drivers: what each `Storage.driver` mounts or creates, and what undoes it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::mount::MsFlags;
use tracing::info;

use super::confine::{clean_absolute, fd_path, Reserved, Resolved, Root};
use super::fsgroup;
use super::mount::{mount_at, mount_on};
use super::options::{self, MountOptions};
use super::{Cleanup, Driver, Request};
use crate::device::{pci::DevTreePath, Devices};
use crate::error::{AgentError, Result};

/// Option marking the rw form of an overlayfs storage.
pub const OVERLAY_RW: &str = "io.katacontainers.fs-opt.overlay-rw";
/// Driver option asking for a directory before an overlay is mounted.
pub const OVERLAY_CREATE_DIR: &str = "io.katacontainers.volume.overlayfs.create_directory=";
/// The virtio-fs tag of the sandbox share.
pub const KATA_SHARED: &str = "kataShared";
/// How long mkfs may run.
const MKFS_TIMEOUT: Duration = Duration::from_secs(300);

/// What the drivers need from the agent.
pub struct Ctx<'a> {
    pub root: &'a Root,
    pub reserved: &'a Reserved,
    pub devices: &'a Devices,
    pub hotplug_timeout: Duration,
    pub sysfs: &'a Path,
    pub container_id: Option<&'a str>,
    pub watcher: &'a super::watcher::BindWatcher,
}

/// Where a mount's source comes from.
enum Source {
    /// Not a path: a virtio-fs tag, `tmpfs`, `overlay`...
    Tag(String),
    /// A checked block device node.
    Device(PathBuf),
    /// A bind source, resolved below the storage root.
    Path(Resolved),
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AgentError::internal(format!("storage task failed: {e}")))?
}

/// Runs the driver of `req`.
pub async fn create(ctx: &Ctx<'_>, req: &Request) -> Result<Cleanup> {
    tracing::debug!(subsystem = "storage", driver = %req.driver_name, source = %req.source, fstype = %req.fstype, options = ?req.options, mount_point = %req.mount_point.display(), "setting up storage");
    check_fstype(req)?;
    let root = ctx.root.clone();
    let reserved = ctx.reserved.clone();
    let r = req.clone();
    let t = ctx.hotplug_timeout;
    match req.driver {
        Driver::Blk => {
            let dev = if req.source.starts_with("/dev") {
                existing_block_node(ctx.devices, &req.source)?
            } else {
                let path: DevTreePath = req.source.parse()?;
                ctx.devices.virtio_blk_pci(&path, t).await?
            };
            blocking(move || block(&root, &r, dev)).await
        }
        Driver::MmioBlk => {
            if !req.source.starts_with("/dev/") {
                return Err(AgentError::invalid_argument(format!(
                    "the source of an mmioblk storage must be a /dev path, got {:?}",
                    req.source
                )));
            }
            let dev = ctx.devices.block_by_name(&req.source, t, false).await?;
            blocking(move || block(&root, &r, dev)).await
        }
        Driver::Scsi => {
            let dev = ctx.devices.scsi(&req.source, t).await?;
            blocking(move || block(&root, &r, dev)).await
        }
        Driver::Nvdimm => {
            let dev = ctx.devices.block_by_name(&req.source, t, true).await?;
            blocking(move || {
                let opts = options::parse(&r.options)?;
                common_mount(&root, Source::Device(dev), &r, &r.fstype, &opts)
            })
            .await
        }
        Driver::VirtioFs | Driver::NineP => {
            blocking(move || {
                let opts = options::parse(&r.options)?;
                let source = bind_or_tag(&root, &reserved, &r, &opts)?;
                common_mount(&root, source, &r, &r.fstype, &opts)
            })
            .await
        }
        Driver::Overlayfs => {
            let cid = ctx.container_id.map(str::to_string);
            blocking(move || overlay(&root, &reserved, &r, cid.as_deref())).await
        }
        Driver::Ephemeral => {
            let sysfs = ctx.sysfs.to_path_buf();
            blocking(move || ephemeral(&root, &r, &sysfs)).await
        }
        Driver::Local => blocking(move || local(&root, &r)).await,
        Driver::WatchableBind => {
            let Some(cid) = ctx.container_id else {
                info!(subsystem = "storage", mount_point = %req.mount_point.display(), "watchable-bind storage of the sandbox ignored (only containers use it)");
                return Ok(Cleanup::default());
            };
            let source = clean_absolute("watchable source", &req.source)?;
            ctx.reserved.check("watchable source", &source)?;
            let watcher = ctx.watcher.clone();
            let cid = cid.to_string();
            blocking(move || {
                watcher.add(&root, &cid, &source, &r.mount_point)?;
                Ok(Cleanup {
                    watch: Some((cid, r.mount_point.clone())),
                    ..Default::default()
                })
            })
            .await
        }
    }
}

/// A `/dev/...` source that must already exist and be a block device.
fn existing_block_node(devices: &Devices, source: &str) -> Result<PathBuf> {
    let node = devices.dev_path("storage source", source)?;
    let real = std::fs::canonicalize(&node).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            AgentError::not_found(format!("block device {source} does not exist"))
        } else {
            AgentError::internal(format!("cannot resolve {source}: {e}"))
        }
    })?;
    let dev_root = std::fs::canonicalize(devices.dev_root()).unwrap_or(devices.dev_root().into());
    if !real.starts_with(&dev_root) {
        return Err(AgentError::invalid_argument(format!(
            "storage source {source} resolves outside {}",
            devices.dev_root().display()
        )));
    }
    if !crate::device::is_block_device(&real) {
        return Err(AgentError::invalid_argument(format!(
            "storage source {source} is not a block device"
        )));
    }
    Ok(real)
}

/// A bind mount's source must be a path below the storage root; anything else is a tag.
fn bind_or_tag(
    root: &Root,
    reserved: &Reserved,
    req: &Request,
    opts: &MountOptions,
) -> Result<Source> {
    if opts.flags.contains(MsFlags::MS_BIND) || req.fstype == "bind" {
        let src = clean_absolute("bind source", &req.source)?;
        reserved.check("bind source", &src)?;
        let r = root.resolve("bind source", &src)?;
        // A symlink inside the root may still lead to one of the agent's own files.
        reserved.check("bind source", &r.real)?;
        return Ok(Source::Path(r));
    }
    Ok(Source::Tag(req.source.clone()))
}

/// File systems a block storage may hold.
const BLOCK_FSTYPES: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "f2fs", "erofs", "squashfs", "iso9660",
];

/// Each driver mounts only its own kind of file system: a block device only through the block
/// drivers (and only with a disk file system), a bind mount only from a confined path (virtio-fs
/// and 9p shares), memory file systems for `ephemeral`. `tmpfs` is accepted by the share drivers
/// as a stand-in share (it takes no source, so it reaches nothing).
pub fn check_fstype(req: &Request) -> Result<()> {
    let opts = options::parse(&req.options)?;
    let bind_opt = opts.flags.contains(MsFlags::MS_BIND);
    let fstype = req.fstype.as_str();
    let (allowed, bind_ok): (&[&str], bool) = match req.driver {
        Driver::VirtioFs => (&["virtiofs", "bind", "tmpfs"], true),
        Driver::NineP => (&["9p", "bind", "tmpfs"], true),
        Driver::Blk | Driver::MmioBlk | Driver::Scsi | Driver::Nvdimm => (BLOCK_FSTYPES, false),
        Driver::Ephemeral => (&["", "tmpfs", "hugetlbfs"], false),
        Driver::Overlayfs => (&["", "overlay"], false),
        // No mount of the request's fstype: `local` makes a directory, `watchable-bind` copies.
        Driver::Local | Driver::WatchableBind => return Ok(()),
    };
    if !allowed.contains(&fstype) {
        return Err(AgentError::invalid_argument(format!(
            "a {} storage cannot mount fstype {fstype:?} (allowed: {})",
            req.driver_name,
            allowed
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if bind_opt && !bind_ok {
        return Err(AgentError::invalid_argument(format!(
            "a {} storage cannot be a bind mount (option bind/rbind)",
            req.driver_name
        )));
    }
    if matches!(req.driver, Driver::VirtioFs | Driver::NineP)
        && fstype != "bind"
        && !bind_opt
        && req.source.starts_with('/')
    {
        return Err(AgentError::invalid_argument(format!(
            "the source of a {} share is a tag, not a path ({:?}); a path needs fstype bind",
            req.driver_name, req.source
        )));
    }
    Ok(())
}

/// Block storages: optionally make an ext4 file system, then mount.
fn block(root: &Root, req: &Request, dev: PathBuf) -> Result<Cleanup> {
    if req
        .driver_options
        .iter()
        .any(|o| o.starts_with("encryption_key="))
    {
        return Err(AgentError::unimplemented(
            "encrypted block storages (encryption_key=...) need the confidential-computing data hub, which this agent does not have",
        ));
    }
    let opts = options::parse(&req.options)?;
    let create_fs = req
        .driver_options
        .iter()
        .any(|o| o == "create_filesystem" || o == "create_filesystem=true");
    if create_fs && mount_at(&req_real(root, &req.mount_point)).is_none() {
        if req.fstype != "ext4" {
            return Err(AgentError::invalid_argument(format!(
                "creating a {:?} file system for a block storage is not supported (only ext4)",
                req.fstype
            )));
        }
        mkfs_ext4(&dev)?;
    }
    common_mount(root, Source::Device(dev), req, &req.fstype, &opts)
}

/// Best guess of the real path of a request path (for the mount table), without creating it.
fn req_real(root: &Root, path: &Path) -> PathBuf {
    root.resolve("mount point", path)
        .map(|r| r.real)
        .unwrap_or_else(|_| path.to_path_buf())
}

fn mkfs_ext4(dev: &Path) -> Result<()> {
    let tool = find_tool("mkfs.ext4").ok_or_else(|| {
        AgentError::failed_precondition(
            "cannot create an ext4 file system: mkfs.ext4 is not installed in the guest",
        )
    })?;
    let mut cmd = Command::new(tool);
    cmd.args([
        "-F",
        "-O",
        "^has_journal",
        "-m",
        "0",
        "-i",
        "163840",
        "-I",
        "128",
    ])
    .arg(dev);
    let out = engine::reaper::run_command(&mut cmd, None, Some(MKFS_TIMEOUT))
        .map_err(|e| AgentError::internal(format!("cannot run mkfs.ext4: {e}")))?;
    if out.timed_out || out.code != 0 {
        return Err(AgentError::internal(format!(
            "mkfs.ext4 {} failed (status {}{}): {}{}",
            dev.display(),
            out.code,
            if out.timed_out { ", timed out" } else { "" },
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    info!(subsystem = "storage", device = %dev.display(), "ext4 file system created");
    Ok(())
}

/// Looks a tool up in the usual system directories and `PATH`.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["/sbin", "/usr/sbin", "/bin", "/usr/bin"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// The common mount step: create the mount point, mount (unless the same file system is already
/// there), then apply `fs_group`. On failure, what this call created is removed.
fn common_mount(
    root: &Root,
    source: Source,
    req: &Request,
    fstype: &str,
    opts: &MountOptions,
) -> Result<Cleanup> {
    let file_target = matches!(&source, Source::Path(r) if !std::fs::metadata(fd_path(&r.fd)).map(|m| m.is_dir()).unwrap_or(true));
    let (target, created) = if file_target {
        root.create_file("mount point", &req.mount_point, 0o644)?
    } else {
        root.mkdir_all("mount point", &req.mount_point, 0o755)?
    };
    let mut cleanup = Cleanup {
        created,
        ..Default::default()
    };
    let undo = |c: &Cleanup| {
        for p in c.created.iter().rev() {
            let _ = root.remove(p, false);
        }
    };
    if let Some(existing) = mount_at(&target.real) {
        let tag_is_shared = matches!(&source, Source::Tag(t) if t == KATA_SHARED);
        let same = existing.fstype == fstype
            || (fstype == "bind" || opts.flags.contains(MsFlags::MS_BIND));
        if tag_is_shared || (same && !opts.flags.contains(MsFlags::MS_REMOUNT)) {
            info!(subsystem = "storage", mount_point = %target.real.display(), "already mounted; nothing to do");
            return Ok(cleanup);
        }
    }
    let src_path: Option<PathBuf> = match &source {
        Source::Tag(t) if t.is_empty() => None,
        Source::Tag(t) => Some(PathBuf::from(t)),
        Source::Device(d) => Some(d.clone()),
        Source::Path(r) => Some(fd_path(&r.fd)),
    };
    let fstype_arg = if fstype == "bind" { None } else { Some(fstype) };
    let mut first = opts.clone();
    if fstype == "bind" {
        first.flags |= MsFlags::MS_BIND;
    }
    // With fs_group on a read-only storage, mount writable, fix ownership, then remount.
    let ro_later = req.fs_group.is_some() && first.read_only();
    if ro_later {
        first.flags &= !MsFlags::MS_RDONLY;
    }
    if let Err(e) = mount_on(root, src_path.as_deref(), &target, fstype_arg, &first) {
        undo(&cleanup);
        return Err(e);
    }
    cleanup.mounts.push(req.mount_point.clone());
    let result = (|| {
        if let Some(group) = req.fs_group {
            let top = root.reopen("mount point", &target)?;
            fsgroup::apply_fd(&top.fd, group, opts.read_only())?;
            if ro_later {
                let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                if first.flags.contains(MsFlags::MS_BIND) {
                    flags |= MsFlags::MS_BIND;
                }
                nix::mount::mount(
                    None::<&str>,
                    &fd_path(&top.fd),
                    None::<&str>,
                    flags,
                    None::<&str>,
                )
                .map_err(|e| {
                    AgentError::internal(format!(
                        "cannot remount {} read-only: {e}",
                        target.real.display()
                    ))
                })?;
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        super::clean(root, &cleanup, None);
        return Err(e);
    }
    Ok(cleanup)
}

/// overlayfs, including the rw form whose upper and work directories belong to the container.
fn overlay(root: &Root, reserved: &Reserved, req: &Request, cid: Option<&str>) -> Result<Cleanup> {
    let mut cleanup = Cleanup::default();
    let undo = |c: &Cleanup| super::clean(root, c, None);
    for d in &req.driver_options {
        if let Some(dir) = d.strip_prefix(OVERLAY_CREATE_DIR) {
            let dir = clean_absolute("overlay directory", dir)?;
            match root.mkdir_all("overlay directory", &dir, 0o755) {
                Ok((_, created)) => cleanup.created.extend(created),
                Err(e) => {
                    undo(&cleanup);
                    return Err(e);
                }
            }
        }
    }
    let mut opts_list: Vec<String> = req
        .options
        .iter()
        .filter(|o| o.as_str() != OVERLAY_RW)
        .cloned()
        .collect();
    let rw = req.options.iter().any(|o| o == OVERLAY_RW);
    let mut fstype = if req.fstype.is_empty() {
        "overlay".to_string()
    } else {
        req.fstype.clone()
    };
    if rw {
        let Some(cid) = cid else {
            undo(&cleanup);
            return Err(AgentError::invalid_argument(
                "a rw overlay storage needs a container: it cannot be sent with CreateSandbox",
            ));
        };
        fstype = "overlay".into();
        for (key, sub) in [("upperdir", "upper"), ("workdir", "work")] {
            let dir = root.path.join(cid).join(sub);
            match root.mkdir_all("overlay directory", &dir, 0o755) {
                Ok((r, created)) => {
                    if created.iter().any(|c| c == &dir) {
                        cleanup.trees.push(dir.clone());
                    }
                    cleanup.created.extend(created);
                    opts_list.push(format!("{key}={}", r.real.display()));
                }
                Err(e) => {
                    undo(&cleanup);
                    return Err(e);
                }
            }
        }
    }
    // The layers are paths too: keep them below the storage root.
    let mut checked = Vec::with_capacity(opts_list.len());
    for o in opts_list {
        match confine_layer_option(root, reserved, &o) {
            Ok(o) => checked.push(o),
            Err(e) => {
                undo(&cleanup);
                return Err(e);
            }
        }
    }
    let opts = match options::parse(&checked) {
        Ok(o) => o,
        Err(e) => {
            undo(&cleanup);
            return Err(e);
        }
    };
    let source = if req.source.is_empty() {
        "overlay".to_string()
    } else {
        req.source.clone()
    };
    match common_mount(root, Source::Tag(source), req, &fstype, &opts) {
        Ok(c) => {
            cleanup.mounts.extend(c.mounts);
            cleanup.created.extend(c.created);
            Ok(cleanup)
        }
        Err(e) => {
            undo(&cleanup);
            Err(e)
        }
    }
}

/// `lowerdir=`, `upperdir=`, `workdir=`: every path must exist below the storage root; the option
/// is rewritten with the resolved paths.
fn confine_layer_option(root: &Root, reserved: &Reserved, opt: &str) -> Result<String> {
    let Some((key, value)) = opt.split_once('=') else {
        return Ok(opt.to_string());
    };
    if !matches!(key, "lowerdir" | "upperdir" | "workdir") {
        return Ok(opt.to_string());
    }
    if value.contains('\\') {
        return Err(AgentError::invalid_argument(format!(
            "overlay option {key} with escaped characters is not supported"
        )));
    }
    let mut out = Vec::new();
    for part in value.split(':') {
        let p = clean_absolute(&format!("overlay {key}"), part)?;
        let r = root.resolve(&format!("overlay {key}"), &p)?;
        // An upper layer in one of the agent's directories would let the container write there.
        reserved.check(&format!("overlay {key}"), &r.real)?;
        out.push(r.real.display().to_string());
    }
    Ok(format!("{key}={}", out.join(":")))
}

/// ephemeral: tmpfs-like file systems (hugetlbfs with its page reservation).
fn ephemeral(root: &Root, req: &Request, sysfs: &Path) -> Result<Cleanup> {
    let fstype = if req.fstype.is_empty() {
        "tmpfs"
    } else {
        req.fstype.as_str()
    };
    let kv = options::key_values(&req.options);
    if fstype == "hugetlbfs" {
        reserve_hugepages(sysfs, &kv)?;
        let opts = options::parse(&req.options)?;
        return common_mount(root, Source::Tag(req.source.clone()), req, fstype, &opts);
    }
    let fsgid = match kv.get("fsgid") {
        Some(g) => Some(g.parse::<u32>().map_err(|_| {
            AgentError::invalid_argument(format!(
                "invalid fsgid {g:?} in ephemeral storage options"
            ))
        })?),
        None => None,
    };
    let rest: Vec<String> = req
        .options
        .iter()
        .filter(|o| !o.starts_with("fsgid="))
        .cloned()
        .collect();
    let opts = options::parse(&rest)?;
    let source = if req.source.is_empty() {
        fstype.to_string()
    } else {
        req.source.clone()
    };
    let cleanup = common_mount(root, Source::Tag(source), req, fstype, &opts)?;
    if let Some(gid) = fsgid {
        let res = (|| {
            let r = root.resolve("mount point", &req.mount_point)?;
            chgrp_setgid(&fd_path(&r.fd), gid, None)
        })();
        if let Err(e) = res {
            super::clean(root, &cleanup, None);
            return Err(e);
        }
    }
    Ok(cleanup)
}

fn chgrp_setgid(path: &Path, gid: u32, mode: Option<u32>) -> Result<()> {
    std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| {
        AgentError::internal(format!("cannot change the group of the storage: {e}"))
    })?;
    let current = std::fs::metadata(path)
        .map_err(|e| AgentError::internal(format!("cannot stat the storage: {e}")))?
        .permissions()
        .mode();
    let mode = mode.unwrap_or(current & 0o7777) | 0o2000;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| AgentError::internal(format!("cannot set the mode of the storage: {e}")))
}

fn reserve_hugepages(sysfs: &Path, kv: &std::collections::BTreeMap<String, String>) -> Result<()> {
    let num = |key: &str| -> Result<u64> {
        let v = kv.get(key).ok_or_else(|| {
            AgentError::invalid_argument(format!(
                "a hugetlbfs storage needs the option {key}=<bytes>"
            ))
        })?;
        v.parse::<u64>().map_err(|_| {
            AgentError::invalid_argument(format!(
                "invalid {key} {v:?} for hugetlbfs (decimal bytes)"
            ))
        })
    };
    let pagesize = num("pagesize")?;
    let size = num("size")?;
    if pagesize < 1024 || pagesize % 1024 != 0 {
        return Err(AgentError::invalid_argument(format!(
            "invalid hugetlbfs pagesize {pagesize}"
        )));
    }
    let pages = size / pagesize;
    let file = sysfs
        .join("kernel/mm/hugepages")
        .join(format!("hugepages-{}kB", pagesize / 1024))
        .join("nr_hugepages");
    let read = || -> Result<u64> {
        std::fs::read_to_string(&file)
            .map_err(|e| AgentError::internal(format!("cannot read {}: {e}", file.display())))?
            .trim()
            .parse::<u64>()
            .map_err(|e| AgentError::internal(format!("cannot parse {}: {e}", file.display())))
    };
    if read()? >= pages {
        return Ok(());
    }
    std::fs::write(&file, pages.to_string())
        .map_err(|e| AgentError::internal(format!("cannot write {}: {e}", file.display())))?;
    let got = read()?;
    if got < pages {
        return Err(AgentError::new(
            ttrpc::Code::RESOURCE_EXHAUSTED,
            format!("only {got} of {pages} hugepages of {pagesize} bytes could be allocated"),
        ));
    }
    Ok(())
}

/// local: a plain directory (emptyDir on the guest's disk), no mount.
fn local(root: &Root, req: &Request) -> Result<Cleanup> {
    let kv = options::key_values(&req.options);
    let mode = match kv.get("mode") {
        Some(m) => Some(u32::from_str_radix(m, 8).map_err(|_| {
            AgentError::invalid_argument(format!(
                "invalid mode {m:?} in local storage options (octal)"
            ))
        })?),
        None => None,
    };
    let fsgid = match kv.get("fsgid") {
        Some(g) => Some(g.parse::<u32>().map_err(|_| {
            AgentError::invalid_argument(format!("invalid fsgid {g:?} in local storage options"))
        })?),
        None => None,
    };
    let (dir, created) = root.mkdir_all("mount point", &req.mount_point, 0o755)?;
    let mut cleanup = Cleanup::default();
    if created.iter().any(|c| c == &req.mount_point) {
        cleanup.trees.push(req.mount_point.clone());
    }
    cleanup.created = created;
    let res = (|| {
        let p = fd_path(&dir.fd);
        match (fsgid, mode) {
            (Some(gid), m) => chgrp_setgid(&p, gid, m)?,
            (None, Some(m)) => std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m))
                .map_err(|e| {
                    AgentError::internal(format!(
                        "cannot set the mode of {}: {e}",
                        req.mount_point.display()
                    ))
                })?,
            (None, None) => {}
        }
        Ok(())
    })();
    if let Err(e) = res {
        super::clean(root, &cleanup, None);
        return Err(e);
    }
    Ok(cleanup)
}

/// UpdateEphemeralMounts on an existing mount: mount again with the new options (a remount when
/// the mount is already there).
pub fn update_ephemeral(root: &Root, req: &Request) -> Result<()> {
    check_fstype(req)?;
    let (target, _) = root.mkdir_all("mount point", &req.mount_point, 0o755)?;
    if req.options.is_empty() {
        return Ok(());
    }
    let rest: Vec<String> = req
        .options
        .iter()
        .filter(|o| !o.starts_with("fsgid="))
        .cloned()
        .collect();
    let mut opts = options::parse(&rest)?;
    let top = if mount_at(&target.real).is_some() {
        opts.flags |= MsFlags::MS_REMOUNT;
        root.reopen("mount point", &target)?
    } else {
        target
    };
    let fstype = if req.fstype.is_empty() {
        "tmpfs"
    } else {
        req.fstype.as_str()
    };
    let source = if req.source.is_empty() {
        fstype
    } else {
        req.source.as_str()
    };
    mount_on(root, Some(Path::new(source)), &top, Some(fstype), &opts)?;
    info!(subsystem = "storage", mount_point = %req.mount_point.display(), "ephemeral mount updated");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(driver: &str, source: &str, fstype: &str, options: &[&str]) -> Request {
        Request {
            driver: Driver::from_name(driver).unwrap(),
            driver_name: driver.into(),
            driver_options: vec![],
            source: source.into(),
            fstype: fstype.into(),
            options: options.iter().map(|o| o.to_string()).collect(),
            mount_point: PathBuf::from("/run/k/sandbox/x"),
            fs_group: None,
            shared: false,
        }
    }

    #[test]
    fn each_driver_mounts_only_its_own_fstypes() {
        for (d, src, fs, opts) in [
            ("ephemeral", "/", "bind", &[][..]),
            ("ephemeral", "/", "tmpfs", &["rbind"][..]),
            ("ephemeral", "/dev/vda", "ext4", &[][..]),
            ("virtio-fs", "/dev/vda", "ext4", &[][..]),
            ("virtio-fs", "/", "virtiofs", &[][..]),
            ("9p", "/dev/vda", "ext4", &[][..]),
            ("overlayfs", "/", "bind", &[][..]),
            ("blk", "/dev/vda", "bind", &[][..]),
            ("scsi", "0:0", "ext4", &["bind"][..]),
            ("nvdimm", "/dev/pmem0", "tmpfs", &[][..]),
        ] {
            let e = check_fstype(&req(d, src, fs, opts)).unwrap_err();
            assert_eq!(e.code, ttrpc::Code::INVALID_ARGUMENT, "{d} {fs} {opts:?}");
        }
        for (d, src, fs, opts) in [
            ("ephemeral", "tmpfs", "tmpfs", &[][..]),
            ("ephemeral", "nodev", "hugetlbfs", &[][..]),
            ("virtio-fs", "kataShared", "virtiofs", &[][..]),
            ("virtio-fs", "/run/k/shared/x", "bind", &["bind"][..]),
            ("9p", "kataShared", "9p", &["trans=virtio"][..]),
            ("overlayfs", "overlay", "overlay", &[][..]),
            ("blk", "/dev/vda", "ext4", &["ro"][..]),
            ("local", "", "", &[][..]),
        ] {
            check_fstype(&req(d, src, fs, opts)).unwrap();
        }
    }
}
