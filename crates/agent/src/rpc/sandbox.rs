//! CreateSandbox and DestroySandbox.

use protobuf::well_known_types::empty::Empty;
use protocols::agent::{CreateSandboxRequest, DestroySandboxRequest};
use tracing::warn;

use crate::agent::Agent;
use crate::error::Result;
use crate::sandbox::{self, CreateSandboxParams};
use crate::storage::Owner;

pub async fn create_sandbox(agent: &Agent, req: CreateSandboxRequest) -> Result<Empty> {
    // Storages are checked before anything changes, and mounted once the sandbox exists.
    agent.storages.check(&req.storages)?;
    let storages = req.storages.clone();
    let params = CreateSandboxParams {
        hostname: req.hostname,
        dns: req.dns,
        sandbox_id: req.sandbox_id,
        guest_hook_path: req.guest_hook_path,
        kernel_modules: req
            .kernel_modules
            .into_iter()
            .map(|m| (m.name, m.parameters))
            .collect(),
    };
    sandbox::create(agent, params).await?;
    if !storages.is_empty() {
        agent
            .storages
            .add(
                &super::storage::add_context(agent),
                &Owner::Sandbox,
                &storages,
            )
            .await?;
    }
    Ok(Empty::new())
}

/// Removes every container, then releases every storage (those of the containers removed even if
/// another one could not be).
async fn destroy_all(agent: &Agent) -> Result<()> {
    let removed = agent.containers.remove_all().await;
    agent
        .storages
        .release_gone_containers(&agent.containers.ids())
        .await;
    removed?;
    agent.storages.release_all().await;
    Ok(())
}

pub async fn destroy_sandbox(agent: &Agent, _req: DestroySandboxRequest) -> Result<Empty> {
    sandbox::destroy(agent, || destroy_all(agent)).await?;
    Ok(Empty::new())
}

/// Tears everything down when the agent is told to stop by a signal (standalone mode), so that no
/// container outlives its agent.
pub async fn shutdown_cleanup(agent: &Agent) {
    if let Err(e) = sandbox::destroy(agent, || destroy_all(agent)).await {
        warn!(subsystem = "sandbox", error = %e, "cleanup on shutdown was incomplete");
    }
}
