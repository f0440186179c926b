//! Storage, device and guest-resource RPCs: ephemeral mounts, CopyFile, volumes, swap,
//! CPU and memory hotplug; and the storage/device part of CreateContainer / RemoveContainer.

use std::path::PathBuf;

use oci_spec::runtime::Spec;
use protobuf::well_known_types::empty::Empty;
use protocols::agent::{self, CreateContainerRequest};
use protocols::csi;
use tracing::info;

use crate::agent::Agent;
use crate::device::pci::{DevTreePath, PciPath, SlotFn};
use crate::error::{AgentError, Result};
use crate::storage::{AddContext, Owner};
use crate::{device, guest, storage};

/// What the storage drivers need from the agent.
pub fn add_context(agent: &Agent) -> AddContext<'_> {
    AddContext {
        devices: &agent.devices,
        hotplug_timeout: agent.config.hotplug_timeout,
        sysfs: &agent.paths.sysfs_root,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AgentError::internal(format!("task failed: {e}")))?
}

/// CreateContainer, before the container is built: checks the devices and storages, waits for
/// the devices and rewrites the spec for them, then sets the storages up. Returns the storages
/// taken (for [`rollback_container`]) and the PCI address map of the devices.
pub async fn prepare_container(
    agent: &Agent,
    req: &CreateContainerRequest,
    spec: &mut Spec,
) -> Result<(Vec<PathBuf>, device::container::PciMap)> {
    storage::confine::check_bind_sources(&agent.paths.run_dir, spec)?;
    if req.storages.is_empty() && req.devices.is_empty() {
        return Ok(Default::default());
    }
    engine::validate_container_id(&req.container_id).map_err(AgentError::from)?;
    if agent.containers.get(&req.container_id).is_some() {
        return Err(AgentError::already_exists(format!(
            "container {} already exists",
            req.container_id
        )));
    }
    agent.storages.check(&req.storages)?;
    device::container::validate(&req.devices)?;
    let mut pcimap = device::container::PciMap::new();
    if !req.devices.is_empty() {
        pcimap = device::container::apply(
            &agent.devices,
            agent.config.hotplug_timeout,
            &req.devices,
            spec,
        )
        .await?;
    }
    let owner = Owner::Container(req.container_id.clone());
    let added = agent
        .storages
        .add(&add_context(agent), &owner, &req.storages)
        .await?;
    Ok((added, pcimap))
}

/// CreateContainer failed after [`prepare_container`]: give back what it took.
pub async fn rollback_container(agent: &Agent, cid: &str, added: &[PathBuf]) {
    if !added.is_empty() {
        agent
            .storages
            .rollback(&Owner::Container(cid.to_string()), added)
            .await;
    }
}

/// RemoveContainer succeeded: release the container's storages.
pub async fn release_container(agent: &Agent, cid: &str) {
    agent
        .storages
        .release(&Owner::Container(cid.to_string()))
        .await;
}

pub async fn update_ephemeral_mounts(
    agent: &Agent,
    req: agent::UpdateEphemeralMountsRequest,
) -> Result<Empty> {
    agent
        .storages
        .update_ephemeral(&add_context(agent), &req.storages)
        .await?;
    Ok(Empty::new())
}

pub async fn online_cpu_mem(agent: &Agent, req: agent::OnlineCPUMemRequest) -> Result<Empty> {
    let sysfs = agent.paths.sysfs_root.clone();
    let nb = req.nb_cpus;
    let cpu_only = req.cpu_only;
    let online = blocking(move || {
        let online = if nb > 0 {
            Some(guest::online_cpus(&sysfs, nb)?)
        } else {
            None
        };
        if !cpu_only {
            let n = guest::online_memory(&sysfs);
            if n > 0 {
                info!(subsystem = "guest", blocks = n, "memory blocks onlined");
            }
        }
        Ok(online)
    })
    .await?;
    let Some(online) = online else {
        return Ok(Empty::new());
    };
    // Hot-added CPUs are in no existing cpuset: widen every container's cgroup path (parents
    // first), then give each container its own CPUs back.
    for id in agent.containers.ids() {
        let Some(c) = agent.containers.get(&id) else {
            continue;
        };
        let spec = c.spec().await?;
        let own = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.cpu().as_ref())
            .and_then(|c| c.cpus().clone())
            .filter(|c| !c.is_empty());
        let Some(own) = own else {
            continue;
        };
        let cgroup = c.cgroup().await?;
        let list = online.clone();
        blocking(move || {
            cgroup.widen_cpuset(&list, Some(&own)).map_err(|e| {
                AgentError::internal(format!("cannot widen the cpuset of container {id}: {e:#}"))
            })
        })
        .await?;
    }
    info!(subsystem = "guest", online = %online, "CPUs online");
    Ok(Empty::new())
}

pub async fn mem_hotplug_by_probe(
    agent: &Agent,
    req: agent::MemHotplugByProbeRequest,
) -> Result<Empty> {
    let sysfs = agent.paths.sysfs_root.clone();
    blocking(move || guest::mem_hotplug_probe(&sysfs, &req.memHotplugProbeAddr)).await?;
    Ok(Empty::new())
}

pub async fn copy_file(agent: &Agent, req: agent::CopyFileRequest) -> Result<Empty> {
    let shared = agent.paths.shared_dir.clone();
    blocking(move || storage::copy::copy_file(&shared, &req)).await?;
    Ok(Empty::new())
}

pub async fn add_swap(agent: &Agent, req: agent::AddSwapRequest) -> Result<Empty> {
    if req.PCIPath.is_empty() {
        return Err(AgentError::invalid_argument("AddSwap needs a PCI path"));
    }
    let mut elems = Vec::new();
    for slot in &req.PCIPath {
        if *slot > 0x1f {
            return Err(AgentError::invalid_argument(format!(
                "invalid PCI slot {slot:#x} in the swap device's path"
            )));
        }
        elems.push(SlotFn {
            slot: *slot as u8,
            func: 0,
        });
    }
    let path = DevTreePath {
        root_complex: 0,
        path: PciPath(elems),
    };
    let dev = agent
        .devices
        .virtio_blk_pci(&path, agent.config.hotplug_timeout)
        .await?;
    let shown = dev.display().to_string();
    blocking(move || guest::swapon(&dev, &shown)).await?;
    Ok(Empty::new())
}

pub async fn add_swap_path(agent: &Agent, req: agent::AddSwapPathRequest) -> Result<Empty> {
    let path = storage::confine::clean_absolute("swap path", &req.path)?;
    if path.starts_with("/dev") {
        let node = agent.devices.dev_path("swap path", &req.path)?;
        if !device::is_block_device(&node) {
            return Err(AgentError::invalid_argument(format!(
                "swap path {} is not a block device",
                req.path
            )));
        }
        let shown = req.path.clone();
        blocking(move || guest::swapon(&node, &shown)).await?;
        return Ok(Empty::new());
    }
    let root = agent.storages.root().clone();
    let shown = req.path.clone();
    blocking(move || {
        let r = root.resolve("swap path", &path)?;
        let meta = std::fs::metadata(storage::confine::fd_path(&r.fd))
            .map_err(|e| AgentError::internal(format!("cannot stat {shown}: {e}")))?;
        if !meta.is_file() {
            return Err(AgentError::invalid_argument(format!(
                "swap path {shown} is not a regular file"
            )));
        }
        guest::swapon(&storage::confine::fd_path(&r.fd), &shown)
    })
    .await?;
    Ok(Empty::new())
}

pub async fn get_volume_stats(
    agent: &Agent,
    req: agent::VolumeStatsRequest,
) -> Result<csi::VolumeStatsResponse> {
    let root = agent.storages.root().clone();
    let st = blocking(move || guest::volume_stats(&root, &req.volume_guest_path)).await?;
    let usage = |unit, total, available, used| {
        let mut u = csi::VolumeUsage::new();
        u.unit = protobuf::EnumOrUnknown::new(unit);
        u.total = total;
        u.available = available;
        u.used = used;
        u
    };
    let mut resp = csi::VolumeStatsResponse::new();
    resp.usage = vec![
        usage(
            csi::volume_usage::Unit::BYTES,
            st.bytes_total,
            st.bytes_available,
            st.bytes_used,
        ),
        usage(
            csi::volume_usage::Unit::INODES,
            st.inodes_total,
            st.inodes_available,
            st.inodes_used,
        ),
    ];
    let mut cond = csi::VolumeCondition::new();
    cond.abnormal = false;
    cond.message = "OK".to_string();
    resp.volume_condition = Some(cond).into();
    Ok(resp)
}

pub async fn resize_volume(agent: &Agent, req: agent::ResizeVolumeRequest) -> Result<Empty> {
    let root = agent.storages.root().clone();
    blocking(move || guest::resize_volume(&root, &req.volume_guest_path, req.size)).await?;
    Ok(Empty::new())
}
