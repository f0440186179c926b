//! The gate of an agent built without the `agent-policy` feature: every request is allowed,
//! SetPolicy is UNIMPLEMENTED, and a configured policy stops the agent at start-up (it cannot be
//! enforced, and running without it would be less than the agent was given).

use std::path::Path;

use protobuf::MessageFull;
use protocols::agent::{CopyFileRequest, SetPolicyRequest};
use tracing::info;

use super::PolicyError;

const UNSUPPORTED: &str = "this agent was built without policy support (the agent-policy feature)";

/// The gate without a policy engine.
#[derive(Debug, Default)]
pub struct PolicyGate;

static GATE: PolicyGate = PolicyGate;

/// The process' gate.
pub fn gate() -> &'static PolicyGate {
    &GATE
}

/// Start-up: refuses a configured policy (or an existing default policy file).
pub fn startup(
    configured: Option<&Path>,
    default: &Path,
    _decision_log: Option<&Path>,
) -> anyhow::Result<()> {
    if let Some(path) = configured.or(default.exists().then_some(default)) {
        anyhow::bail!(
            "cannot enforce the policy {}: {UNSUPPORTED}",
            path.display()
        );
    }
    info!(
        subsystem = "policy",
        "no agent policy: every request is allowed"
    );
    Ok(())
}

impl PolicyGate {
    /// Allows every request.
    pub fn check<M: MessageFull>(&self, _req: &M) -> Result<(), PolicyError> {
        Ok(())
    }

    /// Allows every request.
    pub fn check_copy_file(&self, _req: &CopyFileRequest) -> Result<(), PolicyError> {
        Ok(())
    }

    /// SetPolicy cannot be honoured.
    pub async fn set_policy(&self, _req: SetPolicyRequest) -> Result<(), PolicyError> {
        Err(PolicyError::Unsupported(format!(
            "SetPolicy: {UNSUPPORTED}"
        )))
    }
}
