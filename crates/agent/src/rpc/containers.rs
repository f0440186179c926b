//! Container life-cycle RPCs.

use std::sync::Arc;
use std::time::Duration;

use protobuf::well_known_types::empty::Empty;
use protocols::agent::{
    CreateContainerRequest, ExecProcessRequest, GetDiagnosticDataRequest,
    GetDiagnosticDataResponse, GetOOMEventRequest, OOMEvent, PauseContainerRequest,
    RemoveContainerRequest, ResumeContainerRequest, SignalProcessRequest, StartContainerRequest,
    StatsContainerRequest, StatsContainerResponse, UpdateContainerRequest, WaitProcessRequest,
    WaitProcessResponse,
};

use tracing::warn;

use crate::agent::Agent;
use crate::container::CreateParams;
use crate::error::{AgentError, Result};
use crate::lifecycle::{AbandonHandle, Abandoned, Reservation};
use crate::{device, oci};

/// Annotation naming the file Kubernetes reads a container's termination message from.
const TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";

pub async fn create_container(agent: &Arc<Agent>, req: CreateContainerRequest) -> Result<Empty> {
    crate::shared_mount::validate(&req.shared_mounts)?;
    let proto_spec = req
        .OCI
        .as_ref()
        .ok_or_else(|| AgentError::invalid_argument("the request has no OCI spec"))?;
    let mut spec = oci::spec_from_proto(proto_spec)?;
    // CDI devices (device/cdi): only the spec changes, so a cancelled wait leaves nothing behind.
    device::cdi::inject(
        &mut spec,
        &agent.config.cdi_spec_dirs,
        agent.config.cdi_timeout,
        agent.config.visible_cdi_devices,
    )
    .await?;
    // Pass-fd streams: a stream that never arrives fails the request before anything exists.
    let streams =
        crate::passfd::take_streams(req.stdin_port, req.stdout_port, req.stderr_port).await?;
    // The id is reserved before anything else is awaited; the work and its rollback run in a task
    // of their own, which this request only awaits. If the request goes away first (timeout_nano,
    // closed connection), `abandon` cancels the work, which then rolls back; see lifecycle.rs.
    let reservation = agent.containers.reserve(&req.container_id).await?;
    let abandon = AbandonCreate {
        agent: agent.clone(),
        id: req.container_id.clone(),
        handle: Some(reservation.abandon_handle()),
    };
    let task_agent = agent.clone();
    let task =
        tokio::spawn(async move { create_task(task_agent, req, spec, streams, reservation).await });
    let result = task
        .await
        .map_err(|e| AgentError::internal(format!("container creation task failed: {e}")));
    abandon.delivered();
    result??;
    Ok(Empty::new())
}

/// The whole of a CreateContainer: storages, then the container; the storages are released
/// again if the container is not made. The reservation is dropped (the id freed) at the very end.
async fn create_task(
    agent: Arc<Agent>,
    req: CreateContainerRequest,
    mut spec: oci_spec::runtime::Spec,
    streams: crate::passfd::Streams,
    reservation: Reservation,
) -> Result<()> {
    // Devices and storages (storage.rs): everything is checked before anything is waited for or
    // mounted, and the storages are released again if the container cannot be created.
    let (added, pcimap) = super::storage::prepare_container(&agent, &req, &mut spec).await?;
    let created = agent
        .containers
        .create(
            agent.container_env().await,
            CreateParams {
                id: req.container_id.clone(),
                spec,
                sandbox_pidns: req.sandbox_pidns,
            },
            &reservation,
        )
        .await;
    if let Err(e) = created {
        super::storage::rollback_container(&agent, &req.container_id, &added).await;
        return Err(e);
    }
    // What follows the creation fails as a whole: the container is removed and its storages
    // released, so that the host is never left with a container it was told failed.
    let cid = req.container_id.clone();
    let finished: Result<()> = async {
        agent.containers.attach_streams(&cid, "", streams)?;
        // Kept for ExecProcess; forgotten by RemoveContainer.
        agent.devices.pci_maps().set(&cid, pcimap);
        if !req.shared_mounts.is_empty() {
            crate::shared_mount::setup(&agent, &cid, &req.shared_mounts).await?;
        }
        Ok(())
    }
    .await;
    if let Err(err) = finished {
        if let Err(e) = agent.containers.remove(&cid, Duration::ZERO).await {
            warn!(subsystem = "container", container_id = %cid, error = %e, "cannot remove the container after its set-up failed");
        } else {
            agent.devices.pci_maps().forget(&cid);
            super::storage::rollback_container(&agent, &cid, &added).await;
        }
        return Err(err);
    }
    drop(reservation);
    Ok(())
}

/// Abandons a creation whose request is dropped before it has its answer.
struct AbandonCreate {
    agent: Arc<Agent>,
    id: String,
    handle: Option<AbandonHandle>,
}

impl AbandonCreate {
    fn delivered(mut self) {
        self.handle = None;
    }
}

impl Drop for AbandonCreate {
    fn drop(&mut self) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        if handle.abandon() == Abandoned::WasRegistered {
            // Made just before the request went away: its client never learnt of it.
            let agent = self.agent.clone();
            let id = self.id.clone();
            tokio::spawn(async move {
                if let Err(e) = agent.containers.remove(&id, Duration::ZERO).await {
                    warn!(subsystem = "container", container_id = %id, error = %e, "cannot remove a container whose creation was abandoned");
                }
                super::storage::release_container(&agent, &id).await;
            });
        }
    }
}

pub async fn start_container(agent: &Agent, req: StartContainerRequest) -> Result<Empty> {
    agent.containers.start(&req.container_id).await?;
    Ok(Empty::new())
}

pub async fn remove_container(agent: &Agent, req: RemoveContainerRequest) -> Result<Empty> {
    agent
        .containers
        .remove(
            &req.container_id,
            Duration::from_secs(u64::from(req.timeout)),
        )
        .await?;
    agent.devices.pci_maps().forget(&req.container_id);
    super::storage::release_container(agent, &req.container_id).await;
    Ok(Empty::new())
}

pub async fn exec_process(agent: &Agent, req: ExecProcessRequest) -> Result<Empty> {
    let process = req
        .process
        .as_ref()
        .ok_or_else(|| AgentError::invalid_argument("the request has no process"))?;
    let mut process = oci::process_from_proto(process)?;
    // Host PCI addresses in PCIDEVICE_* variables become the guest's, as for the container.
    if let Some(map) = agent.devices.pci_maps().get(&req.container_id) {
        device::container::rewrite_process_env(&mut process, &map);
    }
    let streams =
        crate::passfd::take_streams(req.stdin_port, req.stdout_port, req.stderr_port).await?;
    agent
        .containers
        .exec(
            agent.config.container_pipe_size,
            &req.container_id,
            &req.exec_id,
            process,
        )
        .await?;
    agent
        .containers
        .attach_streams(&req.container_id, &req.exec_id, streams)?;
    Ok(Empty::new())
}

pub async fn signal_process(agent: &Agent, req: SignalProcessRequest) -> Result<Empty> {
    agent
        .containers
        .signal(&req.container_id, &req.exec_id, req.signal)
        .await?;
    Ok(Empty::new())
}

pub async fn wait_process(agent: &Agent, req: WaitProcessRequest) -> Result<WaitProcessResponse> {
    let status = agent
        .containers
        .wait(&req.container_id, &req.exec_id)
        .await?;
    let mut resp = WaitProcessResponse::new();
    resp.status = status;
    Ok(resp)
}

pub async fn update_container(agent: &Agent, req: UpdateContainerRequest) -> Result<Empty> {
    let container = agent.containers.lookup(&req.container_id)?;
    let Some(resources) = req.resources.as_ref() else {
        return Ok(Empty::new());
    };
    let resources = oci::resources_from_proto(resources)?;
    agent.containers.update(&container.id, resources).await?;
    Ok(Empty::new())
}

pub async fn stats_container(
    agent: &Agent,
    req: StatsContainerRequest,
) -> Result<StatsContainerResponse> {
    let stats = agent.containers.stats(&req.container_id).await?;
    let mut resp = StatsContainerResponse::new();
    resp.cgroup_stats = Some(oci::stats_to_proto(&stats)).into();
    Ok(resp)
}

pub async fn pause_container(agent: &Agent, req: PauseContainerRequest) -> Result<Empty> {
    agent.containers.pause(&req.container_id).await?;
    Ok(Empty::new())
}

pub async fn resume_container(agent: &Agent, req: ResumeContainerRequest) -> Result<Empty> {
    agent.containers.resume(&req.container_id).await?;
    Ok(Empty::new())
}

pub async fn get_oom_event(agent: &Agent, _req: GetOOMEventRequest) -> Result<OOMEvent> {
    let id = agent.containers.next_oom_event().await?;
    let mut event = OOMEvent::new();
    event.container_id = id;
    Ok(event)
}

/// GetDiagnosticData: the container's termination message (at most 4096 bytes). The message
/// file must be a regular file below the shared directory; a missing one gives empty data.
pub async fn get_diagnostic_data(
    agent: &Agent,
    req: GetDiagnosticDataRequest,
) -> Result<GetDiagnosticDataResponse> {
    if req.log_type != "termination_log" {
        return Err(AgentError::invalid_argument(format!(
            "unsupported diagnostic log_type {:?}; only \"termination_log\" is supported",
            req.log_type
        )));
    }
    let container = agent.containers.find(&req.container_id)?;
    let spec = container.spec().await?;
    let path = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(TERMINATION_MESSAGE_PATH).cloned())
        .ok_or_else(|| {
            AgentError::failed_precondition(format!(
                "container {} has no {TERMINATION_MESSAGE_PATH} annotation",
                req.container_id
            ))
        })?;
    let source = spec
        .mounts()
        .iter()
        .flatten()
        .find(|m| m.destination().as_os_str() == path.as_str())
        .and_then(|m| m.source().clone())
        .ok_or_else(|| {
            AgentError::failed_precondition(format!(
                "no mount provides the termination message path {path}"
            ))
        })?;
    let shared = agent.paths.shared_dir.clone();
    let data = tokio::task::spawn_blocking(move || {
        crate::storage::confine::read_regular_beneath(
            &shared,
            "termination message source",
            &source,
            4096,
        )
    })
    .await
    .map_err(|e| AgentError::internal(e.to_string()))??;
    let mut resp = GetDiagnosticDataResponse::new();
    resp.data = String::from_utf8_lossy(&data).into_owned();
    Ok(resp)
}
