//! Storages: the volumes the host shares with or hot-plugs into the sandbox.
//!
//! CreateSandbox and CreateContainer carry `Storage` entries; each names a driver that mounts
//! (or creates) something at `mount_point`. Storages are shared by mount point: a second user of
//! the same mount point only takes a reference. Every reference belongs to an owner (the sandbox
//! or a container); RemoveContainer drops the container's references and DestroySandbox all of
//! them, and a storage whose last reference goes is unmounted and what it created is removed —
//! for every driver, `local`, `ephemeral` and `watchable-bind` included. A storage created with
//! `shared = true` outlives its containers and goes with the sandbox. A request that fails
//! releases the references it had taken, in reverse order.
//!
//! Every path of a request is confined below the agent's run directory (see [`confine`]).

pub mod confine;
pub mod copy;
pub mod drivers;
pub mod fsgroup;
pub mod mount;
pub mod options;
pub mod watcher;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use protocols::agent::Storage;
use protocols::types::FSGroupChangePolicy;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::device::Devices;
use crate::error::{AgentError, Result};
use confine::{Reserved, Root};
use fsgroup::{FsGroup, Policy};
use watcher::BindWatcher;

/// Storage drivers this agent handles (reported by GetGuestDetails).
pub const DRIVERS: &[&str] = &[
    "virtio-fs",
    "9p",
    "blk",
    "mmioblk",
    "scsi",
    "nvdimm",
    "ephemeral",
    "local",
    "overlayfs",
    "watchable-bind",
];

/// Drivers of upstream's confidential-computing and s390x paths, known but not provided here.
const UNSUPPORTED: &[&str] = &["image_guest_pull", "erofs.multi-layer", "blk-ccw"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    VirtioFs,
    NineP,
    Blk,
    MmioBlk,
    Scsi,
    Nvdimm,
    Ephemeral,
    Local,
    Overlayfs,
    WatchableBind,
}

impl Driver {
    pub fn from_name(name: &str) -> Result<Driver> {
        Ok(match name {
            "virtio-fs" => Driver::VirtioFs,
            "9p" => Driver::NineP,
            "blk" => Driver::Blk,
            "mmioblk" => Driver::MmioBlk,
            "scsi" => Driver::Scsi,
            "nvdimm" => Driver::Nvdimm,
            "ephemeral" => Driver::Ephemeral,
            "local" => Driver::Local,
            "overlayfs" => Driver::Overlayfs,
            "watchable-bind" => Driver::WatchableBind,
            n if UNSUPPORTED.contains(&n) => {
                return Err(AgentError::unimplemented(format!(
                    "storage driver {n:?} (confidential computing / s390x) is not supported by this agent"
                )))
            }
            n => {
                return Err(AgentError::invalid_argument(format!(
                    "unknown storage driver {n:?}; supported drivers: {}",
                    DRIVERS.join(", ")
                )))
            }
        })
    }
}

/// A checked `Storage` entry.
#[derive(Debug, Clone)]
pub struct Request {
    pub driver: Driver,
    pub driver_name: String,
    pub driver_options: Vec<String>,
    pub source: String,
    pub fstype: String,
    pub options: Vec<String>,
    /// Lexically clean, below the storage root.
    pub mount_point: PathBuf,
    pub fs_group: Option<FsGroup>,
    pub shared: bool,
}

impl Request {
    pub fn from_proto(s: &Storage, root: &Root) -> Result<Request> {
        let driver = Driver::from_name(&s.driver)?;
        let mount_point = confine::clean_absolute("mount point", &s.mount_point)?;
        if !root.contains(&mount_point) {
            return Err(AgentError::invalid_argument(format!(
                "mount point {} is outside the storage root {}",
                s.mount_point,
                root.path.display()
            )));
        }
        for (what, list) in [("option", &s.options), ("driver option", &s.driver_options)] {
            if let Some(bad) = list.iter().find(|o| o.contains('\0')) {
                return Err(AgentError::invalid_argument(format!(
                    "storage {what} {bad:?} contains a NUL byte"
                )));
            }
        }
        if s.source.contains('\0') || s.fstype.contains('\0') {
            return Err(AgentError::invalid_argument(
                "storage source or fstype contains a NUL byte",
            ));
        }
        // Catch bad option words (e.g. "loop") before anything is mounted.
        options::parse(&s.options)?;
        let fs_group = s.fs_group.as_ref().map(|g| FsGroup {
            gid: g.group_id,
            policy: match g.group_change_policy.enum_value() {
                Ok(FSGroupChangePolicy::OnRootMismatch) => Policy::OnRootMismatch,
                _ => Policy::Always,
            },
        });
        Ok(Request {
            driver,
            driver_name: s.driver.clone(),
            driver_options: s.driver_options.clone(),
            source: s.source.clone(),
            fstype: s.fstype.clone(),
            options: s.options.clone(),
            mount_point,
            fs_group,
            shared: s.shared,
        })
    }
}

/// Who holds a reference to a storage.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    Sandbox,
    Container(String),
}

/// What undoes a storage.
#[derive(Debug, Default, Clone)]
pub struct Cleanup {
    /// Mount points (request paths) this storage mounted, in mount order.
    pub mounts: Vec<PathBuf>,
    /// Files and directories it created (outermost first); removed when empty.
    pub created: Vec<PathBuf>,
    /// Directory trees removed whole (local storages, rw overlay layers).
    pub trees: Vec<PathBuf>,
    /// A watched copy (container id, target).
    pub watch: Option<(String, PathBuf)>,
}

/// Undoes a storage: stop watching, unmount, remove what it created. Errors are logged.
pub fn clean(root: &Root, c: &Cleanup, watcher: Option<&BindWatcher>) {
    if let (Some((cid, target)), Some(w)) = (&c.watch, watcher) {
        w.remove(cid, target);
    }
    for m in c.mounts.iter().rev() {
        if let Err(e) = mount::unmount_beneath(root, m) {
            warn!(subsystem = "storage", mount_point = %m.display(), error = %e, "cannot unmount storage");
        }
    }
    for t in c.trees.iter().rev() {
        if let Err(e) = root.remove(t, true) {
            warn!(subsystem = "storage", path = %t.display(), error = %e, "cannot remove storage directory");
        }
    }
    for p in c.created.iter().rev() {
        if let Err(e) = root.remove(p, false) {
            warn!(subsystem = "storage", path = %p.display(), error = %e, "cannot remove storage mount point");
        }
    }
}

struct Entry {
    mount_point: PathBuf,
    driver: String,
    refs: Vec<Owner>,
    shared: bool,
    cleanup: Cleanup,
}

/// The storages of the sandbox.
pub struct Storages {
    inner: Arc<Inner>,
}

struct Inner {
    root: Root,
    reserved: Reserved,
    entries: Mutex<Vec<Entry>>,
    watcher: BindWatcher,
}

/// What a storage request needs besides the entries.
pub struct AddContext<'a> {
    pub devices: &'a Devices,
    pub hotplug_timeout: Duration,
    pub sysfs: &'a Path,
}

impl Storages {
    /// Storages confined below `root` (the agent's run directory); `ns_dir` (the sandbox
    /// namespace directory) is reserved like the agent's own directories below `root`.
    pub fn new(root: &Path, ns_dir: &Path) -> Storages {
        Storages {
            inner: Arc::new(Inner {
                root: Root::new(root),
                reserved: Reserved::new(root, ns_dir),
                entries: Mutex::new(Vec::new()),
                watcher: BindWatcher::default(),
            }),
        }
    }

    pub fn root(&self) -> &Root {
        &self.inner.root
    }

    /// Checks a list of storages without touching anything.
    pub fn check(&self, list: &[Storage]) -> Result<Vec<Request>> {
        self.inner.check(list)
    }

    /// Processes a list of storages for `owner`. Returns the mount points it referenced (in
    /// order), for [`Storages::rollback`]. On failure nothing of this call remains.
    ///
    /// The work runs in a task of its own: a request cancelled while a storage is being mounted
    /// (timeout, closed connection) does not stop it, and what it mounted is recorded (or rolled
    /// back) all the same, so teardown finds it.
    pub async fn add(
        &self,
        ctx: &AddContext<'_>,
        owner: &Owner,
        list: &[Storage],
    ) -> Result<Vec<PathBuf>> {
        let requests = self.check(list)?;
        let inner = self.inner.clone();
        let owned = OwnedContext {
            devices: ctx.devices.clone(),
            hotplug_timeout: ctx.hotplug_timeout,
            sysfs: ctx.sysfs.to_path_buf(),
        };
        let owner = owner.clone();
        tokio::spawn(async move { inner.add(&owned, &owner, requests).await })
            .await
            .map_err(|e| AgentError::internal(format!("storage task failed: {e}")))?
    }

    /// Drops the references `added` took for `owner` (a failed request), newest first; a
    /// storage left without references is cleaned whatever its `shared` flag.
    pub async fn rollback(&self, owner: &Owner, added: &[PathBuf]) {
        let inner = self.inner.clone();
        let (owner, added) = (owner.clone(), added.to_vec());
        let _ = tokio::spawn(async move {
            let mut entries = inner.entries.lock().await;
            inner.rollback_locked(&mut entries, &owner, &added).await;
        })
        .await;
    }
}

/// [`AddContext`] owned by the storage task.
struct OwnedContext {
    devices: Devices,
    hotplug_timeout: Duration,
    sysfs: PathBuf,
}

impl Inner {
    fn check(&self, list: &[Storage]) -> Result<Vec<Request>> {
        list.iter()
            .map(|s| {
                let r = Request::from_proto(s, &self.root)?;
                self.reserved.check("mount point", &r.mount_point)?;
                Ok(r)
            })
            .collect()
    }

    async fn add(
        &self,
        ctx: &OwnedContext,
        owner: &Owner,
        requests: Vec<Request>,
    ) -> Result<Vec<PathBuf>> {
        let cid = match owner {
            Owner::Container(c) => Some(c.as_str()),
            Owner::Sandbox => None,
        };
        let dctx = drivers::Ctx {
            root: &self.root,
            reserved: &self.reserved,
            devices: &ctx.devices,
            hotplug_timeout: ctx.hotplug_timeout,
            sysfs: &ctx.sysfs,
            container_id: cid,
            watcher: &self.watcher,
        };
        let mut entries = self.entries.lock().await;
        let mut added = Vec::new();
        for req in requests {
            if let Some(e) = entries
                .iter_mut()
                .find(|e| e.mount_point == req.mount_point)
            {
                e.refs.push(owner.clone());
                added.push(req.mount_point.clone());
                continue;
            }
            match drivers::create(&dctx, &req).await {
                Ok(cleanup) => {
                    info!(subsystem = "storage", driver = %req.driver_name, mount_point = %req.mount_point.display(), "storage ready");
                    entries.push(Entry {
                        mount_point: req.mount_point.clone(),
                        driver: req.driver_name.clone(),
                        refs: vec![owner.clone()],
                        shared: req.shared,
                        cleanup,
                    });
                    added.push(req.mount_point.clone());
                }
                Err(e) => {
                    self.rollback_locked(&mut entries, owner, &added).await;
                    return Err(AgentError::new(
                        e.code,
                        format!(
                            "storage {} (driver {}): {}",
                            req.mount_point.display(),
                            req.driver_name,
                            e.message
                        ),
                    ));
                }
            }
        }
        Ok(added)
    }

    async fn rollback_locked(&self, entries: &mut Vec<Entry>, owner: &Owner, added: &[PathBuf]) {
        for mp in added.iter().rev() {
            let Some(i) = entries.iter().position(|e| &e.mount_point == mp) else {
                continue;
            };
            if let Some(r) = entries[i].refs.iter().rposition(|o| o == owner) {
                entries[i].refs.remove(r);
            }
            if entries[i].refs.is_empty() {
                let e = entries.remove(i);
                self.clean_entries(vec![e]).await;
            }
        }
    }

    async fn clean_entries(&self, gone: Vec<Entry>) {
        if gone.is_empty() {
            return;
        }
        let root = self.root.clone();
        let watcher = self.watcher.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for e in gone {
                clean(&root, &e.cleanup, Some(&watcher));
                info!(subsystem = "storage", driver = %e.driver, mount_point = %e.mount_point.display(), "storage released");
            }
        })
        .await;
    }
}

impl Storages {
    /// Drops every reference of `owner`. Storages left without references are cleaned, except
    /// `shared` ones left by a container (they stay until the sandbox goes).
    pub async fn release(&self, owner: &Owner) {
        let mut entries = self.inner.entries.lock().await;
        for e in entries.iter_mut() {
            e.refs.retain(|o| o != owner);
        }
        let keep_shared = matches!(owner, Owner::Container(_));
        let mut gone = Vec::new();
        let mut i = entries.len();
        while i > 0 {
            i -= 1;
            if entries[i].refs.is_empty() && !(keep_shared && entries[i].shared) {
                gone.push(entries.remove(i));
            }
        }
        // `gone` is newest first: nested storages go before what they sit on.
        self.inner.clean_entries(gone).await;
    }

    /// Releases every storage whose owning container is not in `alive` (after a container was
    /// removed by other means, such as DestroySandbox).
    pub async fn release_gone_containers(&self, alive: &[String]) {
        let owners: Vec<Owner> = {
            let entries = self.inner.entries.lock().await;
            let set: std::collections::HashSet<Owner> = entries
                .iter()
                .flat_map(|e| e.refs.iter().cloned())
                .filter(|o| matches!(o, Owner::Container(c) if !alive.contains(c)))
                .collect();
            set.into_iter().collect()
        };
        for o in owners {
            self.release(&o).await;
        }
    }

    /// Releases everything (DestroySandbox, shutdown), newest first, then the watcher's tmpfs.
    pub async fn release_all(&self) {
        let mut entries = self.inner.entries.lock().await;
        let gone: Vec<Entry> = entries.drain(..).rev().collect();
        self.inner.clean_entries(gone).await;
        let w = self.inner.watcher.clone();
        let _ = tokio::task::spawn_blocking(move || w.shutdown()).await;
    }

    /// Reference count of a mount point (0 when unknown).
    #[allow(dead_code)]
    pub async fn refcount(&self, mount_point: &Path) -> usize {
        self.inner
            .entries
            .lock()
            .await
            .iter()
            .find(|e| e.mount_point == mount_point)
            .map(|e| e.refs.len())
            .unwrap_or(0)
    }

    /// UpdateEphemeralMounts: every entry must be `ephemeral`. A known storage is mounted again
    /// with the new options; an unknown one is created as a sandbox storage.
    pub async fn update_ephemeral(&self, ctx: &AddContext<'_>, list: &[Storage]) -> Result<()> {
        let requests = self.check(list)?;
        if let Some(r) = requests.iter().find(|r| r.driver != Driver::Ephemeral) {
            return Err(AgentError::invalid_argument(format!(
                "only ephemeral storages can be updated, got driver {:?} for {}",
                r.driver_name,
                r.mount_point.display()
            )));
        }
        for (req, proto) in requests.into_iter().zip(list) {
            let known = self
                .inner
                .entries
                .lock()
                .await
                .iter()
                .any(|e| e.mount_point == req.mount_point);
            if known {
                let root = self.inner.root.clone();
                tokio::task::spawn_blocking(move || drivers::update_ephemeral(&root, &req))
                    .await
                    .map_err(|e| AgentError::internal(format!("storage task failed: {e}")))??;
            } else {
                self.add(ctx, &Owner::Sandbox, std::slice::from_ref(proto))
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(driver: &str, mp: &str) -> Storage {
        let mut s = Storage::new();
        s.driver = driver.into();
        s.mount_point = mp.into();
        s.source = "x".into();
        s
    }

    #[test]
    fn requests_are_checked() {
        let root = Root::new("/run/k");
        let e = Request::from_proto(&storage("zfs", "/run/k/a"), &root).unwrap_err();
        assert_eq!(e.code, ttrpc::Code::INVALID_ARGUMENT);
        assert!(e.message.contains("\"zfs\""), "{e}");
        let e = Request::from_proto(&storage("image_guest_pull", "/run/k/a"), &root).unwrap_err();
        assert_eq!(e.code, ttrpc::Code::UNIMPLEMENTED);
        for mp in ["/etc/x", "/run/k", "/run/k/../x", "run/k/a", "/run/kx/a"] {
            let e = Request::from_proto(&storage("local", mp), &root).unwrap_err();
            assert_eq!(e.code, ttrpc::Code::INVALID_ARGUMENT, "{mp}");
        }
        let mut s = storage("ephemeral", "/run/k/a/");
        s.options = vec!["loop".into()];
        assert!(Request::from_proto(&s, &root).is_err());
        s.options = vec![];
        let r = Request::from_proto(&s, &root).unwrap();
        assert_eq!(r.mount_point, PathBuf::from("/run/k/a"));
    }
}
