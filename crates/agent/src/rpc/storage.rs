//! Storage, device and guest-resource RPCs: ephemeral mounts, CopyFile, volumes, swap,
//! CPU and memory hotplug.

#![allow(unused_imports)]

use protobuf::well_known_types::empty::Empty;
use protocols::{agent, csi, types};

use crate::error::{AgentError, Result};
use crate::sandbox::Agent;

pub async fn update_ephemeral_mounts(
    _agent: &Agent,
    _req: agent::UpdateEphemeralMountsRequest,
) -> Result<Empty> {
    Err(AgentError::not_implemented_yet("UpdateEphemeralMounts"))
}

pub async fn online_cpu_mem(_agent: &Agent, _req: agent::OnlineCPUMemRequest) -> Result<Empty> {
    Err(AgentError::not_implemented_yet("OnlineCPUMem"))
}

pub async fn mem_hotplug_by_probe(
    _agent: &Agent,
    _req: agent::MemHotplugByProbeRequest,
) -> Result<Empty> {
    Err(AgentError::not_implemented_yet("MemHotplugByProbe"))
}

pub async fn copy_file(_agent: &Agent, _req: agent::CopyFileRequest) -> Result<Empty> {
    Err(AgentError::not_implemented_yet("CopyFile"))
}

pub async fn add_swap(_agent: &Agent, _req: agent::AddSwapRequest) -> Result<Empty> {
    Err(AgentError::not_implemented_yet("AddSwap"))
}

pub async fn add_swap_path(_agent: &Agent, _req: agent::AddSwapPathRequest) -> Result<Empty> {
    Err(AgentError::not_implemented_yet("AddSwapPath"))
}

pub async fn get_volume_stats(
    _agent: &Agent,
    _req: agent::VolumeStatsRequest,
) -> Result<csi::VolumeStatsResponse> {
    Err(AgentError::not_implemented_yet("GetVolumeStats"))
}

pub async fn resize_volume(_agent: &Agent, _req: agent::ResizeVolumeRequest) -> Result<Empty> {
    Err(AgentError::not_implemented_yet("ResizeVolume"))
}
