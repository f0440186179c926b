//! Devices: the uevent listener, waiting for hot-plugged devices, and the device nodes they get.
//!
//! A listener thread started at boot receives the kernel's uevents and keeps every `add` event
//! by DEVPATH (a `remove` forgets it). Waiting for a device first looks at the events already
//! seen, then registers a waiter that the listener completes, and also looks at sysfs for a
//! device that was there before the agent started (cold plug). A device that does not appear
//! within the hotplug timeout is DEADLINE_EXCEEDED naming the device and the timeout.
//!
//! The sysfs and /dev roots are configurable (`KATA_AGENT_SYSFS`, `KATA_AGENT_DEV_ROOT`), so tests
//! drive the same code on a synthetic sysfs tree. When a device's node is missing below the /dev
//! root (no devtmpfs), it is created from the MAJOR/MINOR of its event.

pub mod cdi;
pub mod container;
pub mod pci;
pub mod uevent;

use std::collections::HashMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::error::{AgentError, Result};
use uevent::{Uevent, UeventSocket};

/// Device types CreateContainer handles (reported by GetGuestDetails).
pub const DEVICE_HANDLERS: &[&str] = &[
    "blk",
    "mmioblk",
    "scsi",
    "nvdimm",
    "vfio-pci",
    "vfio-pci-gk",
];

/// What a waiter is waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// A virtio-blk disk below a PCI device (`prefix` = its DEVPATH).
    VirtioBlkPci { prefix: String, pci_path: String },
    /// A block device by name (virtio-mmio disks, or any disk such as a loop device).
    BlockName { name: String },
    /// A SCSI disk at `0:0:<id>:<lun>`.
    Scsi { addr: String },
    /// An nvdimm (pmem) disk.
    Pmem { name: String },
    /// A PCI device by DEVPATH.
    PciDevice { devpath: String, pci_path: String },
    /// A VFIO group node.
    VfioGroup { group: String },
}

impl Matcher {
    pub fn matches(&self, ev: &Uevent) -> bool {
        let block = ev.subsystem == "block";
        match self {
            Matcher::VirtioBlkPci { prefix, .. } => {
                if !block || ev.devname.is_empty() {
                    return false;
                }
                let Some(rest) = ev.devpath.strip_prefix(prefix.as_str()) else {
                    return false;
                };
                // /virtio<N>/block/<name>: the whole disk only.
                let mut parts = rest.split('/');
                parts.next() == Some("")
                    && parts.next().is_some_and(|v| {
                        v.strip_prefix("virtio")
                            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    })
                    && parts.next() == Some("block")
                    && parts.next().is_some_and(|n| !n.is_empty())
                    && parts.next().is_none()
            }
            Matcher::BlockName { name } | Matcher::Pmem { name } => {
                if !block || ev.devname != *name {
                    return false;
                }
                if matches!(self, Matcher::Pmem { .. })
                    && !ev.devpath.starts_with("/devices/LNXSYSTM")
                {
                    return false;
                }
                ev.devpath.ends_with(&format!("/block/{name}"))
            }
            Matcher::Scsi { addr } => {
                if !block {
                    return false;
                }
                let Some((prefix, suffix)) = ev.devpath.split_once("/block/") else {
                    return false;
                };
                prefix.ends_with(&format!("/0:0:{addr}"))
                    && !suffix.contains('/')
                    && suffix == ev.devname
            }
            Matcher::PciDevice { devpath, .. } => ev.devpath == *devpath,
            Matcher::VfioGroup { group } => ev.devpath == format!("/devices/virtual/vfio/{group}"),
        }
    }

    /// The device in words, for errors and logs.
    pub fn describe(&self) -> String {
        match self {
            Matcher::VirtioBlkPci { pci_path, .. } => {
                format!("virtio-blk device at PCI path {pci_path}")
            }
            Matcher::BlockName { name } => format!("block device /dev/{name}"),
            Matcher::Scsi { addr } => format!("SCSI device {addr}"),
            Matcher::Pmem { name } => format!("nvdimm device /dev/{name}"),
            Matcher::PciDevice { pci_path, .. } => format!("PCI device {pci_path}"),
            Matcher::VfioGroup { group } => format!("VFIO group {group}"),
        }
    }

    fn is_block(&self) -> bool {
        matches!(
            self,
            Matcher::VirtioBlkPci { .. }
                | Matcher::BlockName { .. }
                | Matcher::Scsi { .. }
                | Matcher::Pmem { .. }
        )
    }
}

/// `500ms`, `3s`, `1.5s`.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if ms >= 1000 {
        format!("{}s", d.as_secs_f64())
    } else {
        format!("{ms}ms")
    }
}

struct Waiter {
    id: u64,
    matcher: Matcher,
    tx: Option<oneshot::Sender<Uevent>>,
}

#[derive(Default)]
struct State {
    events: HashMap<String, Uevent>,
    waiters: Vec<Waiter>,
    next_id: u64,
}

struct Shared {
    sysfs: PathBuf,
    dev: PathBuf,
    state: StdMutex<State>,
    /// Host → guest PCI addresses of each container's devices (for ExecProcess).
    pci_maps: container::PciMaps,
}

/// The device registry of the agent.
#[derive(Clone)]
pub struct Devices {
    shared: Arc<Shared>,
}

/// Removes a waiter when its wait ends, however it ends.
struct WaiterGuard<'a> {
    devices: &'a Devices,
    id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.devices.shared.state.lock().unwrap();
        st.waiters.retain(|w| w.id != self.id);
    }
}

impl Devices {
    pub fn new(sysfs: &Path, dev: &Path) -> Devices {
        Devices {
            shared: Arc::new(Shared {
                sysfs: sysfs.to_path_buf(),
                dev: dev.to_path_buf(),
                state: StdMutex::new(State::default()),
                pci_maps: container::PciMaps::default(),
            }),
        }
    }

    pub fn sysfs(&self) -> &Path {
        &self.shared.sysfs
    }

    pub fn dev_root(&self) -> &Path {
        &self.shared.dev
    }

    /// The PCI address maps of the containers' devices.
    pub fn pci_maps(&self) -> &container::PciMaps {
        &self.shared.pci_maps
    }

    /// Starts the uevent listener thread.
    pub fn start_listener(&self) -> std::io::Result<()> {
        let sock = UeventSocket::open()?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("uevent".into())
            .spawn(move || loop {
                match sock.next() {
                    Ok(ev) => me.handle(ev),
                    Err(e) => {
                        warn!(subsystem = "uevent", error = %e, "the uevent listener stopped");
                        return;
                    }
                }
            })?;
        info!(subsystem = "uevent", "listening for kernel uevents");
        Ok(())
    }

    /// Records one uevent and completes the waiters it matches.
    pub fn handle(&self, ev: Uevent) {
        match ev.action.as_str() {
            "add" => {
                debug!(subsystem = "uevent", devpath = %ev.devpath, devname = %ev.devname, "device added");
                if ev.subsystem == "memory" {
                    self.online_memory_block(&ev.devpath);
                }
                let mut st = self.shared.state.lock().unwrap();
                for w in st.waiters.iter_mut() {
                    if w.tx.is_some() && w.matcher.matches(&ev) {
                        if let Some(tx) = w.tx.take() {
                            let _ = tx.send(ev.clone());
                        }
                    }
                }
                st.waiters.retain(|w| w.tx.is_some());
                st.events.insert(ev.devpath.clone(), ev);
            }
            "remove" => {
                self.shared.state.lock().unwrap().events.remove(&ev.devpath);
            }
            _ => {}
        }
    }

    /// A hot-added memory block that the kernel left offline is brought online.
    fn online_memory_block(&self, devpath: &str) {
        let rel = devpath.trim_start_matches('/');
        if !rel.starts_with("devices/system/memory/") || rel.contains("..") {
            return;
        }
        let online = self.shared.sysfs.join(rel).join("online");
        if std::fs::read_to_string(&online).is_ok_and(|s| s.trim() == "0") {
            if let Err(e) = std::fs::write(&online, "1") {
                warn!(subsystem = "uevent", path = %online.display(), error = %e, "cannot online memory block");
            }
        }
    }

    /// Waits until a device matching `matcher` exists, at most `timeout`.
    pub async fn wait(&self, matcher: Matcher, timeout: Duration) -> Result<Uevent> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.shared.state.lock().unwrap();
            if let Some(ev) = st.events.values().find(|e| matcher.matches(e)) {
                return Ok(ev.clone());
            }
            st.next_id += 1;
            let id = st.next_id;
            st.waiters.push(Waiter {
                id,
                matcher: matcher.clone(),
                tx: Some(tx),
            });
            id
        };
        let _guard = WaiterGuard { devices: self, id };
        // Cold plug: the device may have been there before the agent listened.
        let me = self.clone();
        let m = matcher.clone();
        if let Ok(Some(ev)) = tokio::task::spawn_blocking(move || me.coldplug(&m)).await {
            return Ok(ev);
        }
        debug!(subsystem = "uevent", device = %matcher.describe(), "waiting for device");
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(ev)) => Ok(ev),
            _ => Err(AgentError::deadline_exceeded(format!(
                "timed out after {} (agent.hotplug_timeout) waiting for the {} to appear",
                fmt_duration(timeout),
                matcher.describe()
            ))),
        }
    }

    /// Looks in sysfs (and /dev) for a device that already exists.
    fn coldplug(&self, matcher: &Matcher) -> Option<Uevent> {
        let sysfs = &self.shared.sysfs;
        if matcher.is_block() {
            let class = sysfs.join("class/block");
            for entry in std::fs::read_dir(&class).ok()?.flatten() {
                let Ok(target) = std::fs::read_link(entry.path()) else {
                    continue;
                };
                let target = target.to_string_lossy().into_owned();
                let Some(pos) = target.find("devices/") else {
                    continue;
                };
                let devpath = format!("/{}", &target[pos..]);
                let text = std::fs::read_to_string(entry.path().join("uevent")).unwrap_or_default();
                let ev = Uevent::from_sysfs(&devpath, "block", &text);
                if matcher.matches(&ev) {
                    return Some(ev);
                }
            }
            return None;
        }
        match matcher {
            Matcher::PciDevice { devpath, .. } => {
                let dir = sysfs.join(devpath.trim_start_matches('/'));
                dir.is_dir().then(|| Uevent {
                    action: "add".into(),
                    devpath: devpath.clone(),
                    subsystem: "pci".into(),
                    ..Default::default()
                })
            }
            Matcher::VfioGroup { group } => {
                let node = self.shared.dev.join("vfio").join(group);
                let devpath = format!("/devices/virtual/vfio/{group}");
                if node.exists() {
                    return Some(Uevent {
                        action: "add".into(),
                        devpath,
                        subsystem: "vfio".into(),
                        devname: format!("vfio/{group}"),
                        ..Default::default()
                    });
                }
                let text = std::fs::read_to_string(
                    sysfs.join(devpath.trim_start_matches('/')).join("uevent"),
                )
                .ok()?;
                let ev = Uevent::from_sysfs(&devpath, "vfio", &text);
                (!ev.devname.is_empty()).then_some(ev)
            }
            _ => None,
        }
    }

    /// Maps a host-side `/dev/...` path to the guest's /dev root (lexically checked).
    pub fn dev_path(&self, what: &str, host: &str) -> Result<PathBuf> {
        let clean = crate::hostpath::clean_absolute(what, host)?;
        let rel = clean
            .strip_prefix("/dev")
            .ok()
            .filter(|r| !r.as_os_str().is_empty())
            .ok_or_else(|| {
                AgentError::invalid_argument(format!("{what} {host:?} is not below /dev"))
            })?;
        Ok(self.shared.dev.join(rel))
    }

    /// The node of a device event below the /dev root, created from MAJOR/MINOR when missing.
    pub fn node_for(&self, ev: &Uevent, block: bool) -> Result<PathBuf> {
        let name = Path::new(&ev.devname);
        if ev.devname.is_empty() || !name.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(AgentError::internal(format!(
                "device {} has an unusable DEVNAME {:?}",
                ev.devpath, ev.devname
            )));
        }
        let node = self.shared.dev.join(name);
        if std::fs::symlink_metadata(&node).is_ok() {
            return Ok(node);
        }
        let (Some(major), Some(minor)) = (ev.major, ev.minor) else {
            return Err(AgentError::not_found(format!(
                "device node {} does not exist and the device's numbers are unknown",
                node.display()
            )));
        };
        if let Some(parent) = node.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let kind = if block {
            nix::sys::stat::SFlag::S_IFBLK
        } else {
            nix::sys::stat::SFlag::S_IFCHR
        };
        match nix::sys::stat::mknod(
            &node,
            kind,
            nix::sys::stat::Mode::from_bits_truncate(0o660),
            nix::sys::stat::makedev(major as u64, minor as u64),
        ) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(node),
            Err(e) => Err(AgentError::internal(format!(
                "cannot create device node {}: {e}",
                node.display()
            ))),
        }
    }

    /// A virtio-blk disk at a PCI path: waits for it and returns its node.
    pub async fn virtio_blk_pci(
        &self,
        path: &pci::DevTreePath,
        timeout: Duration,
    ) -> Result<PathBuf> {
        let sysfs = self.shared.sysfs.clone();
        let p = path.clone();
        let resolved = tokio::task::spawn_blocking(move || pci::resolve(&sysfs, &p))
            .await
            .map_err(|e| AgentError::internal(e.to_string()))??;
        let matcher = Matcher::VirtioBlkPci {
            prefix: resolved.devpath(),
            pci_path: path.to_string(),
        };
        let ev = self.wait(matcher, timeout).await?;
        self.node_for(&ev, true)
    }

    /// A disk named by its host path `/dev/<name>` (virtio-mmio, or any existing disk).
    /// Waits only when the node does not exist yet.
    pub async fn block_by_name(
        &self,
        host: &str,
        timeout: Duration,
        pmem: bool,
    ) -> Result<PathBuf> {
        let node = self.dev_path("device", host)?;
        if std::fs::symlink_metadata(&node).is_ok() {
            return Ok(node);
        }
        let name = node
            .strip_prefix(&self.shared.dev)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let matcher = if pmem {
            Matcher::Pmem { name }
        } else {
            Matcher::BlockName { name }
        };
        let ev = self.wait(matcher, timeout).await?;
        self.node_for(&ev, true)?;
        Ok(node)
    }

    /// A SCSI disk `<id>:<lun>`: asks every SCSI host to scan for it, then waits.
    pub async fn scsi(&self, addr: &str, timeout: Duration) -> Result<PathBuf> {
        let (id, lun) = parse_scsi_addr(addr)?;
        let hosts = self.shared.sysfs.join("class/scsi_host");
        let scan = format!("0 {id} {lun}");
        tokio::task::spawn_blocking(move || {
            if let Ok(entries) = std::fs::read_dir(&hosts) {
                for e in entries.flatten() {
                    let file = e.path().join("scan");
                    if let Err(err) = std::fs::write(&file, &scan) {
                        warn!(subsystem = "device", path = %file.display(), error = %err, "SCSI scan failed");
                    }
                }
            }
        })
        .await
        .map_err(|e| AgentError::internal(e.to_string()))?;
        let ev = self
            .wait(
                Matcher::Scsi {
                    addr: format!("{id}:{lun}"),
                },
                timeout,
            )
            .await?;
        self.node_for(&ev, true)
    }

    /// A PCI device: waits until it exists; returns where it is.
    pub async fn pci_device(
        &self,
        path: &pci::DevTreePath,
        timeout: Duration,
    ) -> Result<pci::Resolved> {
        let sysfs = self.shared.sysfs.clone();
        let p = path.clone();
        let resolved = tokio::task::spawn_blocking(move || pci::resolve(&sysfs, &p))
            .await
            .map_err(|e| AgentError::internal(e.to_string()))??;
        self.wait(
            Matcher::PciDevice {
                devpath: resolved.devpath(),
                pci_path: path.to_string(),
            },
            timeout,
        )
        .await?;
        Ok(resolved)
    }

    /// The node of a VFIO group (`<dev>/vfio/<group>`), waiting for it.
    pub async fn vfio_group(&self, group: &str, timeout: Duration) -> Result<PathBuf> {
        let ev = self
            .wait(
                Matcher::VfioGroup {
                    group: group.to_string(),
                },
                timeout,
            )
            .await?;
        let mut ev = ev;
        if ev.devname.is_empty() {
            ev.devname = format!("vfio/{group}");
        }
        self.node_for(&ev, false)
    }
}

/// `<id>:<lun>`, both decimal.
pub fn parse_scsi_addr(addr: &str) -> Result<(u32, u32)> {
    let bad = || {
        AgentError::invalid_argument(format!(
            "invalid SCSI address {addr:?}: expected <id>:<lun> (decimal numbers)"
        ))
    };
    let (id, lun) = addr.split_once(':').ok_or_else(bad)?;
    if lun.contains(':') {
        return Err(bad());
    }
    Ok((
        id.parse().map_err(|_| bad())?,
        lun.parse().map_err(|_| bad())?,
    ))
}

/// Whether `path` is a block device node.
pub fn is_block_device(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(devpath: &str, devname: &str) -> Uevent {
        Uevent {
            action: "add".into(),
            devpath: devpath.into(),
            subsystem: "block".into(),
            devname: devname.into(),
            ..Default::default()
        }
    }

    #[test]
    fn matchers() {
        let m = Matcher::VirtioBlkPci {
            prefix: "/devices/pci0000:00/0000:00:02.0/0000:01:03.0".into(),
            pci_path: "02/03".into(),
        };
        assert!(m.matches(&ev(
            "/devices/pci0000:00/0000:00:02.0/0000:01:03.0/virtio4/block/vdb",
            "vdb"
        )));
        assert!(!m.matches(&ev(
            "/devices/pci0000:00/0000:00:02.0/0000:01:03.0/virtio4/block/vdb/vdb1",
            "vdb1"
        )));
        assert!(!m.matches(&ev(
            "/devices/pci0000:00/0000:00:02.0/0000:01:03.01/virtio4/block/vdb",
            "vdb"
        )));
        let m = Matcher::BlockName {
            name: "loop7".into(),
        };
        assert!(m.matches(&ev("/devices/virtual/block/loop7", "loop7")));
        assert!(!m.matches(&ev("/devices/virtual/block/loop17", "loop17")));
        let m = Matcher::Scsi { addr: "1:2".into() };
        assert!(m.matches(&ev(
            "/devices/pci0000:00/0000:00:05.0/virtio2/host0/target0:0:1/0:0:1:2/block/sdb",
            "sdb"
        )));
        assert!(!m.matches(&ev(
            "/devices/pci0000:00/0000:00:05.0/virtio2/host0/target0:0:1/0:0:1:23/block/sdb",
            "sdb"
        )));
        let m = Matcher::Pmem {
            name: "pmem0".into(),
        };
        assert!(m.matches(&ev(
            "/devices/LNXSYSTM:00/LNXSYBUS:00/ACPI0012:00/ndbus0/region0/namespace0.0/block/pmem0",
            "pmem0"
        )));
        assert!(!m.matches(&ev("/devices/virtual/block/pmem0", "pmem0")));
        let m = Matcher::VfioGroup { group: "12".into() };
        let mut e = ev("/devices/virtual/vfio/12", "vfio/12");
        e.subsystem = "vfio".into();
        assert!(m.matches(&e));
    }

    #[test]
    fn scsi_addresses() {
        assert_eq!(parse_scsi_addr("0:1").unwrap(), (0, 1));
        for bad in ["1", "1:2:3", "a:1", ":1"] {
            assert!(parse_scsi_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(fmt_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(fmt_duration(Duration::from_secs(3)), "3s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
    }

    #[tokio::test]
    async fn wait_sees_stored_and_later_events_and_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let d = Devices::new(&dir.path().join("sys"), &dir.path().join("dev"));
        d.handle(ev("/devices/virtual/block/loop3", "loop3"));
        let got = d
            .wait(
                Matcher::BlockName {
                    name: "loop3".into(),
                },
                Duration::from_millis(10),
            )
            .await
            .unwrap();
        assert_eq!(got.devname, "loop3");
        let d2 = d.clone();
        let waiter = tokio::spawn(async move {
            d2.wait(
                Matcher::BlockName {
                    name: "loop4".into(),
                },
                Duration::from_secs(30),
            )
            .await
        });
        // Deliver until the waiter has it (it may register after the first delivery).
        while !waiter.is_finished() {
            d.handle(ev("/devices/virtual/block/loop4", "loop4"));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(waiter.await.unwrap().unwrap().devname, "loop4");
        let e = d
            .wait(
                Matcher::BlockName { name: "vdz".into() },
                Duration::from_millis(50),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, ttrpc::Code::DEADLINE_EXCEEDED);
        assert!(
            e.message.contains("/dev/vdz") && e.message.contains("50ms"),
            "{e}"
        );
        assert!(d.shared.state.lock().unwrap().waiters.is_empty());
    }
}
