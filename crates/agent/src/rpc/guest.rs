//! Guest-level RPCs: details, clock, entropy, share maintenance.

use std::path::Path;

use protobuf::well_known_types::empty::Empty;
use protocols::agent::{
    AgentDetails, GuestDetailsRequest, GuestDetailsResponse, RemoveStaleVirtiofsShareMountsRequest,
    ReseedRandomDevRequest, SetGuestDateTimeRequest,
};

use crate::agent::Agent;
use crate::error::Result;
use crate::{guest, version};

pub async fn get_guest_details(
    agent: &Agent,
    req: GuestDetailsRequest,
) -> Result<GuestDetailsResponse> {
    let sysfs = agent.paths.sysfs_root.clone();
    let mem = tokio::task::spawn_blocking(move || {
        guest::memory_details(&sysfs, req.mem_block_size, req.mem_hotplug_probe)
    })
    .await
    .map_err(|e| crate::error::AgentError::internal(e.to_string()))??;
    let mut details = AgentDetails::new();
    details.version = version::VERSION.to_string();
    details.init_daemon = agent.init_mode;
    details.supports_seccomp = true;
    details.extra_features = version::EXTRA_FEATURES
        .iter()
        .map(|s| s.to_string())
        .collect();
    details.storage_handlers = crate::storage::DRIVERS
        .iter()
        .map(|s| s.to_string())
        .collect();
    details.device_handlers = crate::device::DEVICE_HANDLERS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut resp = GuestDetailsResponse::new();
    resp.mem_block_size_bytes = mem.block_size_bytes;
    resp.support_mem_hotplug_probe = mem.hotplug_probe;
    resp.agent_details = Some(details).into();
    Ok(resp)
}

pub async fn set_guest_date_time(_agent: &Agent, req: SetGuestDateTimeRequest) -> Result<Empty> {
    guest::set_date_time(req.Sec, req.Usec)?;
    Ok(Empty::new())
}

pub async fn reseed_random_dev(_agent: &Agent, req: ReseedRandomDevRequest) -> Result<Empty> {
    tokio::task::spawn_blocking(move || guest::reseed_random(Path::new("/dev/random"), &req.data))
        .await
        .map_err(|e| crate::error::AgentError::internal(e.to_string()))??;
    Ok(Empty::new())
}

/// Touches every mount below the shared containers directory so that virtiofsd drops stale
/// entries; always succeeds.
pub async fn remove_stale_virtiofs_share_mounts(
    agent: &Agent,
    _req: RemoveStaleVirtiofsShareMountsRequest,
) -> Result<Empty> {
    let prefix = agent.paths.run_dir.join("shared/containers/");
    tokio::task::spawn_blocking(move || {
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        for line in info.lines() {
            if let Some(mount_point) = line.split_whitespace().nth(4) {
                if Path::new(mount_point).starts_with(&prefix) {
                    let _ = std::fs::metadata(mount_point);
                }
            }
        }
    })
    .await
    .ok();
    Ok(Empty::new())
}
