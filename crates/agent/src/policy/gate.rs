//! The gate: the policy in force, start-up loading, decisions and SetPolicy.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use protobuf::MessageFull;
use protocols::agent::{CopyFileRequest, SetPolicyRequest};
use tracing::{info, warn};

use super::decision::Outcome;
use super::engine::LoadedPolicy;
use super::log::DecisionLog;
use super::{input, PolicyError};

/// The agent's policy gate.
#[derive(Debug, Default)]
pub struct PolicyGate {
    /// The policy in force; `None`: every request is allowed.
    current: RwLock<Option<Arc<LoadedPolicy>>>,
    /// Serializes SetPolicy (decide, parse, swap).
    set_lock: tokio::sync::Mutex<()>,
    /// The decision log, when the agent logs at debug level.
    log: OnceLock<DecisionLog>,
}

static GATE: OnceLock<PolicyGate> = OnceLock::new();

/// The process' gate (allow-all until [`install`] runs).
pub fn gate() -> &'static PolicyGate {
    GATE.get_or_init(|| PolicyGate::new(None))
}

/// Makes `policy` the process' policy (start-up).
pub fn install(policy: Option<LoadedPolicy>) {
    gate().replace(policy.map(Arc::new));
}

/// Start-up: loads the policy (see [`load_startup`]), installs it and logs which one is in force;
/// with `decision_log` (the agent logs at debug level), opens the decision log there.
pub fn startup(
    configured: Option<&Path>,
    default: &Path,
    decision_log: Option<&Path>,
) -> anyhow::Result<()> {
    install(load_startup(configured, default)?);
    if let Some(path) = decision_log {
        gate().open_log(path);
    }
    gate().announce();
    Ok(())
}

/// Reads the start-up policy: `configured` (from `KATA_AGENT_POLICY_FILE` or `policy_file`), else
/// `default` when that file exists. A configured file that is missing, and any file that does not
/// parse, is an error: the agent must not start with less policy than it was given.
pub fn load_startup(
    configured: Option<&Path>,
    default: &Path,
) -> anyhow::Result<Option<LoadedPolicy>> {
    let path: PathBuf = match configured {
        Some(p) => p.to_path_buf(),
        None if default.exists() => default.to_path_buf(),
        None => return Ok(None),
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("cannot read the policy file {}: {e}", path.display()))?;
    let loaded = LoadedPolicy::parse(&path.display().to_string(), &text)
        .map_err(|e| anyhow::anyhow!("the policy file does not parse: {e}"))?;
    Ok(Some(loaded))
}

impl PolicyGate {
    /// A gate enforcing `policy` (`None`: allow all).
    pub fn new(policy: Option<LoadedPolicy>) -> Self {
        PolicyGate {
            current: RwLock::new(policy.map(Arc::new)),
            set_lock: tokio::sync::Mutex::new(()),
            log: OnceLock::new(),
        }
    }

    /// Starts the decision log at `path` (a failure is only a warning: it is a debugging aid).
    pub fn open_log(&self, path: &Path) {
        match DecisionLog::create(path) {
            Ok(log) => {
                let _ = self.log.set(log);
                info!(subsystem = "policy", path = %path.display(), "policy decision log");
            }
            Err(e) => warn!(
                subsystem = "policy",
                path = %path.display(),
                error = %e,
                "cannot create the policy decision log"
            ),
        }
    }

    pub(crate) fn current(&self) -> Option<Arc<LoadedPolicy>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn replace(&self, policy: Option<Arc<LoadedPolicy>>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    /// Logs which policy is in force (start-up).
    pub fn announce(&self) {
        match self.current() {
            Some(p) => info!(
                subsystem = "policy",
                policy = p.origin(),
                allow_failures = p.allow_failures(),
                "agent policy loaded: requests are decided by the policy"
            ),
            None => info!(
                subsystem = "policy",
                "no agent policy: every request is allowed"
            ),
        }
    }

    /// Decides `req` as `data.agent_policy.<message name>`.
    pub fn check<M: MessageFull>(&self, req: &M) -> Result<(), PolicyError> {
        let Some(policy) = self.current() else {
            return Ok(());
        };
        let descriptor = M::descriptor();
        decide(self.log.get(), &policy, descriptor.name(), || {
            Ok(input::message_input(req))
        })
    }

    /// Decides CopyFile on its prepared form.
    pub fn check_copy_file(&self, req: &CopyFileRequest) -> Result<(), PolicyError> {
        let Some(policy) = self.current() else {
            return Ok(());
        };
        decide(self.log.get(), &policy, "CopyFileRequest", || {
            input::copy_file_input(req)
        })
    }

    /// SetPolicy: decided by the policy in force (`SetPolicyRequest`), then the new text is parsed
    /// in full and swapped in with a fresh state. Text that does not parse leaves the current
    /// policy in force.
    pub async fn set_policy(&self, req: SetPolicyRequest) -> Result<(), PolicyError> {
        let _serial = self.set_lock.lock().await;
        self.check(&req)?;
        let text = req.policy;
        let loaded = tokio::task::spawn_blocking(move || LoadedPolicy::parse("SetPolicy", &text))
            .await
            .map_err(|e| PolicyError::Internal(format!("SetPolicy: {e}")))??;
        info!(
            subsystem = "policy",
            allow_failures = loaded.allow_failures(),
            "new agent policy set"
        );
        self.replace(Some(Arc::new(loaded)));
        Ok(())
    }
}

/// One decision: the input is made only when the rule is not a constant, or the decision log
/// wants it. Generic over the request only as far as making the input.
fn decide(
    log: Option<&DecisionLog>,
    policy: &LoadedPolicy,
    name: &str,
    input: impl FnOnce() -> Result<regorus::Value, PolicyError>,
) -> Result<(), PolicyError> {
    let logged = log.filter(|_| DecisionLog::wants(name));
    let outcome = match policy.constant_outcome(name) {
        Some(outcome) if logged.is_none() => outcome,
        // A request that cannot be put in the policy's form fails as it is.
        _ => evaluate(logged, policy, name, input()?),
    };
    conclude(name, outcome)
}

/// Logs the input (when `log`), then evaluates.
fn evaluate(
    log: Option<&DecisionLog>,
    policy: &LoadedPolicy,
    name: &str,
    input: regorus::Value,
) -> Result<Outcome, PolicyError> {
    if let Some(log) = log {
        log.record(name, &input);
    }
    policy.evaluate(name, input)
}

/// Reads an outcome as the answer: evaluation errors are named after the request, denials carry
/// what the policy printed. Denials, and denials let through by `AllowRequestsFailingPolicy`,
/// are logged.
fn conclude(name: &str, outcome: Result<Outcome, PolicyError>) -> Result<(), PolicyError> {
    let outcome =
        outcome.map_err(|e| PolicyError::Internal(format!("{name}: internal error {e}")))?;
    if outcome.overridden {
        warn!(
            subsystem = "policy",
            request = name,
            prints = %outcome.prints,
            "request fails the policy; allowed by AllowRequestsFailingPolicy"
        );
    }
    if outcome.allowed {
        return Ok(());
    }
    warn!(
        subsystem = "policy",
        request = name,
        "request blocked by policy"
    );
    Err(PolicyError::Denied(format!(
        "{name} is blocked by policy: {}",
        outcome.prints
    )))
}
