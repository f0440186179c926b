//! Reading a rule's result as a decision.
//!
//! A request rule (`data.agent_policy.<RequestName>`) yields either a boolean or an object
//! `{"allowed": bool, "ops": [JSON patch operations]}`; the operations change the policy's own
//! state (`data.pstate`) and are applied only when the request is allowed. A rule that is
//! undefined (no default, no matching body) cannot be decided: that is an evaluation error, unless
//! the policy sets `AllowRequestsFailingPolicy`, which also turns denials into warnings.

use regorus::{QueryResults, Value};

use super::PolicyError;

/// The decision on one request.
#[derive(Debug)]
pub struct Outcome {
    /// The request may go ahead.
    pub allowed: bool,
    /// What the policy printed while deciding, joined with spaces.
    pub prints: String,
    /// State operations of an object result (applied by the engine when allowed).
    pub ops: Option<json_patch::Patch>,
    /// The policy denied the request but `AllowRequestsFailingPolicy` let it through.
    pub overridden: bool,
}

#[derive(serde::Deserialize)]
struct ObjectResult {
    allowed: bool,
    #[serde(default)]
    ops: Option<json_patch::Patch>,
}

/// The one value of a query's results; `Undefined` when the query has none.
pub fn single_value(results: &QueryResults) -> anyhow::Result<Value> {
    match results.result.as_slice() {
        [] => Ok(Value::Undefined),
        [one] => match one.expressions.as_slice() {
            [expr] => Ok(expr.value.clone()),
            _ => anyhow::bail!("policy check: unexpected result expressions {results:?}"),
        },
        _ => anyhow::bail!(
            "policy check: unexpected result count {}",
            results.result.len()
        ),
    }
}

/// Interprets the value of `data.agent_policy.<name>` (`Undefined`: the rule is undefined).
pub fn interpret(
    value: &Value,
    prints: String,
    allow_failures: bool,
) -> Result<Outcome, PolicyError> {
    if *value == Value::Undefined {
        if allow_failures {
            return Ok(Outcome {
                allowed: true,
                prints,
                ops: None,
                overridden: true,
            });
        }
        return Err(PolicyError::Internal(
            "policy check: the rule is undefined in the policy".to_string(),
        ));
    }
    let (allowed, ops) = match value {
        Value::Bool(b) => (*b, None),
        Value::Object(_) => {
            let json = serde_json::to_value(value)
                .map_err(|e| PolicyError::Internal(format!("policy check: {e}")))?;
            let r: ObjectResult = serde_json::from_value(json).map_err(|e| {
                PolicyError::Internal(format!(
                    "policy check: the result is not {{\"allowed\": bool, \"ops\": [...]}}: {e}"
                ))
            })?;
            (r.allowed, r.ops)
        }
        other => {
            return Err(PolicyError::Internal(format!(
                "policy check: unexpected result type {other:?}"
            )))
        }
    };
    let overridden = !allowed && allow_failures;
    Ok(Outcome {
        allowed: allowed || overridden,
        prints,
        // Denied requests change nothing, even when the denial is only a warning.
        ops: if allowed { ops } else { None },
        overridden,
    })
}
