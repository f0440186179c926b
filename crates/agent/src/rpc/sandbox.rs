//! CreateSandbox and DestroySandbox.

use protobuf::well_known_types::empty::Empty;
use protocols::agent::{CreateSandboxRequest, DestroySandboxRequest};
use tracing::warn;

use crate::error::{AgentError, Result};
use crate::sandbox::{self, Agent, CreateSandboxParams};

pub async fn create_sandbox(agent: &Agent, req: CreateSandboxRequest) -> Result<Empty> {
    if !req.storages.is_empty() {
        let drivers: Vec<&str> = req.storages.iter().map(|s| s.driver.as_str()).collect();
        return Err(AgentError::unimplemented(format!(
            "storages are not supported yet (drivers requested: {})",
            drivers.join(", ")
        )));
    }
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
    Ok(Empty::new())
}

pub async fn destroy_sandbox(agent: &Agent, _req: DestroySandboxRequest) -> Result<Empty> {
    sandbox::destroy(agent, || agent.containers.remove_all()).await?;
    Ok(Empty::new())
}

/// Tears everything down when the agent is told to stop by a signal (standalone mode), so that no
/// container outlives its agent.
pub async fn shutdown_cleanup(agent: &Agent) {
    if let Err(e) = sandbox::destroy(agent, || agent.containers.remove_all()).await {
        warn!(subsystem = "sandbox", error = %e, "cleanup on shutdown was incomplete");
    }
}
