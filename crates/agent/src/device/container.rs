//! The `devices` of CreateContainer: wait for each device, then rewrite the OCI spec so that the
//! container sees the guest's device (major/minor, device cgroup rules, PCI addresses in the
//! environment).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use oci_spec::runtime::{
    LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxResources, Process, Spec,
};
use protocols::agent::Device;

use super::pci::DevTreePath;
use super::Devices;
use crate::error::{AgentError, Result};

/// Host BDF → guest BDF of the PCI devices passed to a container.
pub type PciMap = Vec<(String, String)>;

/// The PCI maps of the containers, by container id: CreateContainer records a container's map,
/// ExecProcess rewrites the environment of new processes with it, RemoveContainer forgets it.
#[derive(Default)]
pub struct PciMaps(StdMutex<HashMap<String, PciMap>>);

impl PciMaps {
    pub fn set(&self, cid: &str, map: PciMap) {
        let mut maps = self.0.lock().unwrap();
        if map.is_empty() {
            maps.remove(cid);
        } else {
            maps.insert(cid.to_string(), map);
        }
    }

    pub fn get(&self, cid: &str) -> Option<PciMap> {
        self.0.lock().unwrap().get(cid).cloned()
    }

    pub fn forget(&self, cid: &str) {
        self.0.lock().unwrap().remove(cid);
    }
}

/// A spec device whose numbers (and maybe path) change to those of the guest device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUpdate {
    pub container_path: String,
    pub typ: LinuxDeviceType,
    pub major: i64,
    pub minor: i64,
    /// New path inside the container (VFIO groups are renumbered in the guest).
    pub new_path: Option<String>,
}

fn describe(d: &Device) -> String {
    format!(
        "{{type: {:?}, id: {:?}, vm_path: {:?}, container_path: {:?}}}",
        d.type_, d.id, d.vm_path, d.container_path
    )
}

/// Checks the request's devices before anything waits or changes.
pub fn validate(devices: &[Device]) -> Result<()> {
    let mut paths = HashSet::new();
    for d in devices {
        if d.type_.is_empty() {
            return Err(AgentError::invalid_argument(format!(
                "device {} has no type",
                describe(d)
            )));
        }
        if d.id.is_empty() && d.vm_path.is_empty() {
            return Err(AgentError::invalid_argument(format!(
                "device {} has neither an id nor a vm_path",
                describe(d)
            )));
        }
        if d.container_path.is_empty() {
            return Err(AgentError::invalid_argument(format!(
                "device {} has no container_path",
                describe(d)
            )));
        }
        match d.type_.as_str() {
            "blk" | "mmioblk" | "scsi" | "nvdimm" | "vfio-pci" | "vfio-pci-gk" => {}
            "vfio-ap" | "vfio-ap-cold" | "blk-ccw" => {
                return Err(AgentError::unimplemented(format!(
                    "device type {} is only supported on s390x",
                    d.type_
                )))
            }
            other => {
                return Err(AgentError::invalid_argument(format!(
                    "unknown device type {other:?}; supported: {}",
                    super::DEVICE_HANDLERS.join(", ")
                )))
            }
        }
        if !paths.insert(d.container_path.as_str()) {
            return Err(AgentError::invalid_argument(format!(
                "two devices have the container path {}",
                d.container_path
            )));
        }
    }
    Ok(())
}

/// Waits for every device, then rewrites `spec`. Returns the PCI address map.
pub async fn apply(
    devices: &Devices,
    timeout: Duration,
    list: &[Device],
    spec: &mut Spec,
) -> Result<PciMap> {
    validate(list)?;
    let mut updates = Vec::new();
    let mut pcimap = PciMap::new();
    let mut any_vfio = false;
    for d in list {
        tracing::debug!(subsystem = "device", kind = %d.type_, id = %d.id, vm_path = %d.vm_path, container_path = %d.container_path, timeout = %super::fmt_duration(timeout), "waiting for container device");
        let node = match d.type_.as_str() {
            "blk" => {
                let path: DevTreePath = d.id.parse()?;
                Some(devices.virtio_blk_pci(&path, timeout).await?)
            }
            "mmioblk" => Some(devices.block_by_name(&d.vm_path, timeout, false).await?),
            "scsi" => Some(devices.scsi(&d.id, timeout).await?),
            "nvdimm" => {
                let node = devices.dev_path("vm_path", &d.vm_path)?;
                if !node.exists() {
                    return Err(AgentError::not_found(format!(
                        "nvdimm device {} does not exist",
                        d.vm_path
                    )));
                }
                Some(node)
            }
            "vfio-pci" | "vfio-pci-gk" => {
                any_vfio = true;
                let gk = d.type_ == "vfio-pci-gk";
                let (map, group) = vfio_pci(devices, timeout, &d.options, !gk).await?;
                pcimap.extend(map);
                if let Some(group) = group {
                    let node = devices.vfio_group(&group, timeout).await?;
                    let mut u = node_update(&d.container_path, &node)?;
                    u.new_path = Some(format!("/dev/vfio/{group}"));
                    updates.push(u);
                }
                None
            }
            _ => unreachable!("validated above"),
        };
        if let Some(node) = node {
            updates.push(node_update(&d.container_path, &node)?);
        }
    }
    apply_updates(spec, &updates)?;
    rewrite_pci_env(spec, &pcimap);
    if any_vfio {
        add_infiniband(spec, &devices.dev_root().join("infiniband"))?;
    }
    Ok(pcimap)
}

/// The numbers of a guest device node.
pub fn node_update(container_path: &str, node: &Path) -> Result<NodeUpdate> {
    let meta = std::fs::metadata(node)
        .map_err(|e| AgentError::internal(format!("cannot stat {}: {e}", node.display())))?;
    let typ = if meta.file_type().is_block_device() {
        LinuxDeviceType::B
    } else if meta.file_type().is_char_device() {
        LinuxDeviceType::C
    } else {
        return Err(AgentError::internal(format!(
            "{} is not a device node",
            node.display()
        )));
    };
    let rdev = meta.rdev();
    Ok(NodeUpdate {
        container_path: container_path.to_string(),
        typ,
        major: nix::sys::stat::major(rdev) as i64,
        minor: nix::sys::stat::minor(rdev) as i64,
        new_path: None,
    })
}

fn cgroup_rule(typ: LinuxDeviceType, major: i64, minor: i64) -> Result<LinuxDeviceCgroup> {
    LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(typ)
        .major(major)
        .minor(minor)
        .access("rwm")
        .build()
        .map_err(|e| AgentError::internal(format!("cannot build a device cgroup rule: {e}")))
}

/// Gives the spec devices named by `updates` the guest's numbers, rewrites the device cgroup
/// rules that named the host's numbers, and allows the guest devices.
pub fn apply_updates(spec: &mut Spec, updates: &[NodeUpdate]) -> Result<()> {
    if updates.is_empty() {
        return Ok(());
    }
    let linux = spec
        .linux_mut()
        .as_mut()
        .ok_or_else(|| AgentError::invalid_argument("the spec has no linux section"))?;
    let mut devs = linux.devices().clone().unwrap_or_default();
    // host (type, major, minor) -> guest (major, minor)
    let mut host_to_guest: HashMap<(String, i64, i64), (i64, i64)> = HashMap::new();
    let mut missing = Vec::new();
    for u in updates {
        let Some(dev) = devs
            .iter_mut()
            .find(|d| d.path() == Path::new(&u.container_path))
        else {
            missing.push(u.container_path.clone());
            continue;
        };
        let key = (dev.typ().as_str().to_string(), dev.major(), dev.minor());
        if host_to_guest
            .insert(key.clone(), (u.major, u.minor))
            .is_some()
        {
            return Err(AgentError::invalid_argument(format!(
                "two devices of the spec have the numbers {} {}:{}",
                key.0, key.1, key.2
            )));
        }
        dev.set_major(u.major);
        dev.set_minor(u.minor);
        if let Some(p) = &u.new_path {
            dev.set_path(PathBuf::from(p));
        }
    }
    if !missing.is_empty() {
        return Err(AgentError::invalid_argument(format!(
            "devices missing from the spec's linux.devices: {}",
            missing.join(", ")
        )));
    }
    linux.set_devices(Some(devs));
    let mut resources = linux
        .resources()
        .clone()
        .unwrap_or_else(LinuxResources::default);
    let mut rules = resources.devices().clone().unwrap_or_default();
    for rule in rules.iter_mut() {
        let (Some(typ), Some(major), Some(minor)) = (rule.typ(), rule.major(), rule.minor()) else {
            continue;
        };
        if let Some((gmaj, gmin)) = host_to_guest.get(&(typ.as_str().to_string(), major, minor)) {
            rule.set_major(Some(*gmaj));
            rule.set_minor(Some(*gmin));
        }
    }
    for u in updates {
        rules.push(cgroup_rule(u.typ, u.major, u.minor)?);
    }
    resources.set_devices(Some(rules));
    linux.set_resources(Some(resources));
    Ok(())
}

fn is_bdf(s: &str) -> bool {
    // [dddd:]bb:ss.f
    let parts: Vec<&str> = s.split(':').collect();
    let (bus, sf) = match parts.as_slice() {
        [d, b, sf] if d.len() == 4 && d.chars().all(|c| c.is_ascii_hexdigit()) => (*b, *sf),
        [b, sf] => (*b, *sf),
        _ => return false,
    };
    let Some((slot, func)) = sf.split_once('.') else {
        return false;
    };
    bus.len() == 2
        && slot.len() == 2
        && func.len() == 1
        && [bus, slot, func]
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Rewrites `PCIDEVICE_*` variables (lists of host BDFs) of the spec's process to guest BDFs, and
/// the matching `*_INFO` variables by text substitution.
pub fn rewrite_pci_env(spec: &mut Spec, map: &PciMap) {
    if let Some(process) = spec.process_mut().as_mut() {
        rewrite_process_env(process, map);
    }
}

/// [`rewrite_pci_env`] for one process (ExecProcess).
pub fn rewrite_process_env(process: &mut Process, map: &PciMap) {
    if map.is_empty() {
        return;
    }
    let Some(mut env) = process.env().clone() else {
        return;
    };
    rewrite_env(&mut env, map);
    process.set_env(Some(env));
}

fn rewrite_env(env: &mut [String], map: &PciMap) {
    let lookup: HashMap<&str, &str> = map.iter().map(|(h, g)| (h.as_str(), g.as_str())).collect();
    let mut info_subst: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for var in env.iter_mut() {
        let Some((name, value)) = var.split_once('=') else {
            continue;
        };
        if !name.starts_with("PCIDEVICE_") || name.ends_with("_INFO") {
            continue;
        }
        let tokens: Vec<&str> = value.split(',').collect();
        if !tokens.iter().all(|t| is_bdf(t)) {
            continue;
        }
        let mut out = Vec::new();
        let mut pairs = Vec::new();
        for t in &tokens {
            match lookup.get(t) {
                Some(g) => {
                    out.push(g.to_string());
                    pairs.push((t.to_string(), g.to_string()));
                }
                None => out.push(t.to_string()),
            }
        }
        if !pairs.is_empty() {
            info_subst.insert(format!("{name}_INFO"), pairs);
            *var = format!("{name}={}", out.join(","));
        }
    }
    for var in env.iter_mut() {
        let Some((name, value)) = var.split_once('=') else {
            continue;
        };
        if let Some(pairs) = info_subst.get(name) {
            let mut v = value.to_string();
            for (h, g) in pairs {
                v = v.replace(h.as_str(), g);
            }
            *var = format!("{name}={v}");
        }
    }
}

fn write_sysfs(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|e| {
        AgentError::internal(format!("cannot write {value:?} to {}: {e}", path.display()))
    })
}

/// Binds a PCI device to `vfio-pci` and returns its IOMMU group.
fn bind_vfio(sysfs: &Path, bdf: &str) -> Result<String> {
    let dev = sysfs.join("bus/pci/devices").join(bdf);
    write_sysfs(&dev.join("driver_override"), "vfio-pci")?;
    let current = std::fs::read_link(dev.join("driver"))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
    if current.as_deref() != Some("vfio-pci") {
        if current.is_some() {
            write_sysfs(&dev.join("driver/unbind"), bdf)?;
        }
        write_sysfs(&sysfs.join("bus/pci/drivers_probe"), bdf)?;
    }
    let group = std::fs::read_link(dev.join("iommu_group")).map_err(|e| {
        AgentError::failed_precondition(format!(
            "PCI device {bdf} has no IOMMU group ({}: {e})",
            dev.join("iommu_group").display()
        ))
    })?;
    group
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| AgentError::internal(format!("PCI device {bdf} has an unnamed IOMMU group")))
}

/// The options of a VFIO PCI device (`<host BDF>=<guest PCI path>`): waits for each device,
/// binds it to vfio-pci (unless `bind` is false) and returns the address map and the group.
async fn vfio_pci(
    devices: &Devices,
    timeout: Duration,
    options: &[String],
    bind: bool,
) -> Result<(PciMap, Option<String>)> {
    let mut map = PciMap::new();
    let mut group: Option<String> = None;
    for opt in options {
        let mut parts = opt.split('=');
        let (Some(host), Some(guest), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(AgentError::invalid_argument(format!(
                "malformed VFIO PCI option {opt:?}: expected <host BDF>=<guest PCI path>"
            )));
        };
        if guest.is_empty() {
            continue;
        }
        let path: DevTreePath = guest.parse()?;
        let resolved = devices.pci_device(&path, timeout).await?;
        let bdf = resolved.bdf().to_string();
        map.push((host.to_string(), bdf.clone()));
        if bind {
            let sysfs = devices.sysfs().to_path_buf();
            let b = bdf.clone();
            let g = tokio::task::spawn_blocking(move || bind_vfio(&sysfs, &b))
                .await
                .map_err(|e| AgentError::internal(e.to_string()))??;
            match &group {
                Some(existing) if *existing != g => {
                    return Err(AgentError::invalid_argument(format!(
                        "the functions of one VFIO device are in different IOMMU groups ({existing} and {g})"
                    )))
                }
                _ => group = Some(g),
            }
        }
    }
    Ok((map, group))
}

/// With a VFIO device, every InfiniBand character device of the guest goes to the container.
fn add_infiniband(spec: &mut Spec, dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let Ok(meta) = std::fs::metadata(e.path()) else {
            continue;
        };
        if !meta.file_type().is_char_device() {
            continue;
        }
        found.push((e.file_name().to_string_lossy().into_owned(), meta));
    }
    if found.is_empty() {
        return Ok(());
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let Some(linux) = spec.linux_mut().as_mut() else {
        return Ok(());
    };
    let mut devs = linux.devices().clone().unwrap_or_default();
    let mut resources = linux.resources().clone().unwrap_or_default();
    let mut rules = resources.devices().clone().unwrap_or_default();
    for (name, meta) in found {
        let path = PathBuf::from("/dev/infiniband").join(&name);
        if devs.iter().any(|d| d.path() == &path) {
            continue;
        }
        let (major, minor) = (
            nix::sys::stat::major(meta.rdev()) as i64,
            nix::sys::stat::minor(meta.rdev()) as i64,
        );
        let dev: LinuxDevice = LinuxDeviceBuilder::default()
            .path(path)
            .typ(LinuxDeviceType::C)
            .major(major)
            .minor(minor)
            .file_mode(meta.mode() & 0o777)
            .uid(meta.uid())
            .gid(meta.gid())
            .build()
            .map_err(|e| AgentError::internal(format!("cannot build a device entry: {e}")))?;
        devs.push(dev);
        rules.push(cgroup_rule(LinuxDeviceType::C, major, minor)?);
    }
    linux.set_devices(Some(devs));
    resources.set_devices(Some(rules));
    linux.set_resources(Some(resources));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with_devices() -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.1.0",
            "process": {"cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0},
                        "env": ["PCIDEVICE_X=0000:3b:00.0,0000:3c:00.0",
                                "PCIDEVICE_X_INFO={\"0000:3b:00.0\":{}}", "OTHER=0000:3b:00.0"]},
            "root": {"path": "/r"},
            "linux": {
                "devices": [{"path": "/dev/vdb", "type": "b", "major": 252, "minor": 16},
                            {"path": "/dev/other", "type": "c", "major": 1, "minor": 3}],
                "resources": {"devices": [
                    {"allow": false, "access": "rwm"},
                    {"allow": true, "type": "b", "major": 252, "minor": 16, "access": "rw"}]}
            }
        }))
        .unwrap()
    }

    #[test]
    fn updates_rewrite_numbers_and_rules() {
        let mut spec = spec_with_devices();
        let u = NodeUpdate {
            container_path: "/dev/vdb".into(),
            typ: LinuxDeviceType::B,
            major: 7,
            minor: 3,
            new_path: None,
        };
        apply_updates(&mut spec, std::slice::from_ref(&u)).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let d = &linux.devices().as_ref().unwrap()[0];
        assert_eq!((d.major(), d.minor()), (7, 3));
        let rules = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!((rules[1].major(), rules[1].minor()), (Some(7), Some(3)));
        assert_eq!(rules[1].access().as_deref(), Some("rw"));
        assert_eq!(rules[2].access().as_deref(), Some("rwm"));
        assert!(rules[2].allow());

        let mut spec = spec_with_devices();
        let mut missing = u.clone();
        missing.container_path = "/dev/nope".into();
        let e = apply_updates(&mut spec, &[missing]).unwrap_err();
        assert!(e.message.contains("/dev/nope"), "{e}");
    }

    #[test]
    fn validation() {
        let dev = |t: &str, id: &str, cp: &str| {
            let mut d = Device::new();
            d.type_ = t.into();
            d.id = id.into();
            d.container_path = cp.into();
            d
        };
        assert!(validate(&[dev("blk", "02/00", "/dev/vdb")]).is_ok());
        for (d, code) in [
            (dev("", "02", "/dev/a"), ttrpc::Code::INVALID_ARGUMENT),
            (dev("blk", "", "/dev/a"), ttrpc::Code::INVALID_ARGUMENT),
            (dev("blk", "02", ""), ttrpc::Code::INVALID_ARGUMENT),
            (dev("floppy", "02", "/dev/a"), ttrpc::Code::INVALID_ARGUMENT),
            (dev("vfio-ap", "x", "/dev/a"), ttrpc::Code::UNIMPLEMENTED),
        ] {
            assert_eq!(validate(&[d]).unwrap_err().code, code);
        }
        let e = validate(&[dev("blk", "02", "/dev/a"), dev("scsi", "0:1", "/dev/a")]).unwrap_err();
        assert!(e.message.contains("/dev/a"));
    }

    #[test]
    fn pci_env() {
        let mut spec = spec_with_devices();
        rewrite_pci_env(
            &mut spec,
            &vec![("0000:3b:00.0".to_string(), "0000:01:02.0".to_string())],
        );
        let env = spec.process().as_ref().unwrap().env().clone().unwrap();
        assert_eq!(env[0], "PCIDEVICE_X=0000:01:02.0,0000:3c:00.0");
        assert_eq!(env[1], "PCIDEVICE_X_INFO={\"0000:01:02.0\":{}}");
        assert_eq!(env[2], "OTHER=0000:3b:00.0");
        assert!(is_bdf("3b:00.0") && !is_bdf("3b:00") && !is_bdf("zz:00.0"));
    }

    #[test]
    fn pci_maps_and_exec_env() {
        let maps = PciMaps::default();
        maps.set("c1", vec![("0000:3b:00.0".into(), "0000:01:02.0".into())]);
        let mut p: Process = serde_json::from_value(serde_json::json!({
            "cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0},
            "env": ["PCIDEVICE_X=0000:3b:00.0", "NOEQUALS", "PCIDEVICE_X_INFO=0000:3b:00.0"]
        }))
        .unwrap();
        rewrite_process_env(&mut p, &maps.get("c1").unwrap());
        assert_eq!(
            p.env().as_ref().unwrap(),
            &[
                "PCIDEVICE_X=0000:01:02.0",
                "NOEQUALS",
                "PCIDEVICE_X_INFO=0000:01:02.0"
            ]
        );
        assert!(maps.get("c2").is_none());
        maps.set("c1", PciMap::new());
        assert!(maps.get("c1").is_none());
        maps.set("c1", vec![("a".into(), "b".into())]);
        maps.forget("c1");
        assert!(maps.get("c1").is_none());
    }
}
