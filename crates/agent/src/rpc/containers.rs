//! Container life-cycle RPCs.

use std::time::Duration;

use protobuf::well_known_types::empty::Empty;
use protocols::agent::{
    CreateContainerRequest, ExecProcessRequest, GetDiagnosticDataRequest,
    GetDiagnosticDataResponse, GetOOMEventRequest, OOMEvent, PauseContainerRequest,
    RemoveContainerRequest, ResumeContainerRequest, SignalProcessRequest, StartContainerRequest,
    StatsContainerRequest, StatsContainerResponse, UpdateContainerRequest, WaitProcessRequest,
    WaitProcessResponse,
};

use crate::container::CreateParams;
use crate::error::{AgentError, Result};
use crate::oci;
use crate::sandbox::Agent;

/// Annotation naming the file Kubernetes reads a container's termination message from.
const TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";

pub async fn create_container(agent: &Agent, req: CreateContainerRequest) -> Result<Empty> {
    if !req.shared_mounts.is_empty() {
        return Err(AgentError::unimplemented(
            "shared_mounts are not supported yet",
        ));
    }
    let proto_spec = req
        .OCI
        .as_ref()
        .ok_or_else(|| AgentError::invalid_argument("the request has no OCI spec"))?;
    let mut spec = oci::spec_from_proto(proto_spec)?;
    // Pass-fd streams first: a stream that never arrives fails the request before anything exists.
    let streams =
        crate::passfd::take_streams(req.stdin_port, req.stdout_port, req.stderr_port).await?;
    // Devices and storages (storage.rs): everything is checked before anything is waited for or
    // mounted, and the storages are released again if the container cannot be created.
    let added = super::storage::prepare_container(agent, &req, &mut spec).await?;
    let created = agent
        .containers
        .create(
            agent,
            CreateParams {
                id: req.container_id.clone(),
                spec,
                sandbox_pidns: req.sandbox_pidns,
            },
        )
        .await;
    if let Err(e) = created {
        super::storage::rollback_container(agent, &req.container_id, &added).await;
        return Err(e);
    }
    agent
        .containers
        .attach_streams(&req.container_id, "", streams)?;
    Ok(Empty::new())
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
    super::storage::release_container(agent, &req.container_id).await;
    Ok(Empty::new())
}

pub async fn exec_process(agent: &Agent, req: ExecProcessRequest) -> Result<Empty> {
    let process = req
        .process
        .as_ref()
        .ok_or_else(|| AgentError::invalid_argument("the request has no process"))?;
    let process = oci::process_from_proto(process)?;
    let streams =
        crate::passfd::take_streams(req.stdin_port, req.stdout_port, req.stderr_port).await?;
    agent
        .containers
        .exec(agent, &req.container_id, &req.exec_id, process)
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

/// GetDiagnosticData: the container's termination message (at most 4096 bytes).
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
    let data = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut buf = Vec::new();
        match std::fs::File::open(&source) {
            Ok(f) => {
                let _ = f.take(4096).read_to_end(&mut buf);
            }
            Err(_) => buf.clear(),
        }
        buf
    })
    .await
    .map_err(|e| AgentError::internal(e.to_string()))?;
    let mut resp = GetDiagnosticDataResponse::new();
    resp.data = String::from_utf8_lossy(&data).into_owned();
    Ok(resp)
}
