//! A loaded policy: a regorus engine with the policy's modules parsed and prepared, and the
//! policy's own state (`data.pstate`).
//!
//! A [`LoadedPolicy`] is built completely (parsed, analysed, `AllowRequestsFailingPolicy` read)
//! before anyone can decide with it, so swapping policies never exposes a half-loaded one.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Mutex;

use regorus::PolicyLengthConfig;
use regorus::Value;

use super::decision::{self, Outcome};
use super::PolicyError;
use super::{builtins, hoist};

/// The Rego package upstream's policies define their rules in.
pub const PACKAGE: &str = "agent_policy";

// regorus' default length limits (1 KiB lines, 1 MiB, 20 000 lines) reject real genpolicy output
// (single environment values over 1 KiB); these still reject pathological input.
const MAX_LINE_BYTES: u32 = 64 * 1024;
const MAX_POLICY_BYTES: usize = 16 * 1024 * 1024;
const MAX_POLICY_LINES: usize = 200_000;

/// A parsed and prepared policy with its state.
pub struct LoadedPolicy {
    /// Where the policy came from (a file path, or `SetPolicy`), for logs.
    origin: String,
    /// `data.agent_policy.AllowRequestsFailingPolicy` is true: denials are only warnings.
    allow_failures: bool,
    /// The engine and the state. Locked for one evaluation (and the state update it may carry)
    /// at a time, never across an await.
    engine: Mutex<Engine>,
}

/// A regorus engine with the parts of its data document kept apart.
struct Engine {
    rego: regorus::Engine,
    /// The constant rules hoisted out of the text (see [`hoist`]); never changed by `ops`.
    constants: Option<Value>,
    /// The rest of the data document, which the policy's `ops` patch: `{"pstate": …}`.
    state: serde_json::Value,
}

impl std::fmt::Debug for LoadedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPolicy")
            .field("origin", &self.origin)
            .field("allow_failures", &self.allow_failures)
            .finish()
    }
}

impl LoadedPolicy {
    /// Parses and prepares `text`. Errors are [`PolicyError::Invalid`].
    pub fn parse(origin: &str, text: &str) -> Result<Self, PolicyError> {
        let mut engine = regorus::Engine::new();
        // Upstream's policies (genpolicy's rules, kata-opa's) are Rego v0 with future keywords
        // imported; a policy may still opt into v1 with `import rego.v1`.
        engine.set_rego_v0(true);
        engine.set_strict_builtin_errors(false);
        engine.set_gather_prints(true);
        engine.set_policy_length_config(PolicyLengthConfig {
            max_col: NonZeroU32::new(MAX_LINE_BYTES).expect("non-zero"),
            max_file_bytes: NonZeroUsize::new(MAX_POLICY_BYTES).expect("non-zero"),
            max_lines: NonZeroUsize::new(MAX_POLICY_LINES).expect("non-zero"),
        });
        let invalid = |e: anyhow::Error| PolicyError::Invalid(format!("{origin}: {e}"));
        builtins::register(&mut engine).map_err(|e| PolicyError::Internal(e.to_string()))?;
        let hoisted = hoist::hoist(text);
        let state = serde_json::json!({ "pstate": {} });
        load_data(&mut engine, hoisted.data.as_ref(), &state)?;
        engine
            .add_policy(origin.to_string(), hoisted.text)
            .map_err(invalid)?;
        // The first evaluation analyses every module (unknown functions, unsafe variables, rule
        // conflicts): do it now so that a broken policy is refused rather than installed.
        engine
            .eval_query("true".to_string(), false)
            .map_err(invalid)?;
        let _ = engine.take_prints();

        let mut loaded = LoadedPolicy {
            origin: origin.to_string(),
            allow_failures: false,
            engine: Mutex::new(Engine {
                rego: engine,
                constants: hoisted.data,
                state,
            }),
        };
        // As upstream: the flag is read once per policy; a policy that cannot evaluate it runs
        // with the secure default.
        loaded.allow_failures = matches!(
            loaded.evaluate("AllowRequestsFailingPolicy", Value::new_object()),
            Ok(ref o) if o.allowed
        );
        Ok(loaded)
    }

    /// Where the policy came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Whether denials are only warnings (`AllowRequestsFailingPolicy`).
    pub fn allow_failures(&self) -> bool {
        self.allow_failures
    }

    /// Evaluates `data.agent_policy.<name>` with `input`; an allowed result's state operations are
    /// applied before the lock is released, so the next decision sees them.
    pub fn evaluate(&self, name: &str, input: Value) -> Result<Outcome, PolicyError> {
        let mut guard = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        let engine = &mut guard.rego;
        engine.set_input(input);
        let path = format!("data.{PACKAGE}.{name}");
        // Evaluating the rule directly skips parsing a query and walking every rule's path; a rule
        // the policy does not define is an error there, so fall back to the query, which tells
        // "undefined" apart from a failure the way upstream reads it.
        let value = match engine.eval_rule(path.clone()) {
            Ok(v) => Ok(v),
            Err(_) => {
                let _ = engine.take_prints();
                engine
                    .eval_query(path, false)
                    .and_then(|r| decision::single_value(&r))
            }
        };
        let prints = engine.take_prints().unwrap_or_default().join(" ");
        let value = value.map_err(|e| PolicyError::Internal(e.to_string()))?;
        let mut outcome = decision::interpret(&value, prints, self.allow_failures)?;
        if let Some(ops) = outcome.ops.take() {
            if outcome.allowed && !ops.0.is_empty() {
                apply_ops(&mut guard, &ops)?;
            }
        }
        Ok(outcome)
    }

    /// The policy state (`data.pstate`), for tests and diagnostics.
    #[cfg(test)]
    pub fn state(&self) -> Value {
        let engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        engine.rego.get_data()["pstate"].clone()
    }
}

/// Sets the engine's data document: the hoisted constants and the state.
fn load_data(
    engine: &mut regorus::Engine,
    constants: Option<&Value>,
    state: &serde_json::Value,
) -> Result<(), PolicyError> {
    let internal = |e: String| PolicyError::Internal(format!("loading the policy's data: {e}"));
    let state: Value =
        serde_json::from_value(state.clone()).map_err(|e| internal(e.to_string()))?;
    engine.clear_data();
    if let Some(constants) = constants {
        engine
            .add_data(constants.clone())
            .map_err(|e| internal(e.to_string()))?;
    }
    engine.add_data(state).map_err(|e| internal(e.to_string()))
}

/// Applies JSON patch operations to the state part of the data document (`/pstate/…`). All or
/// nothing: a failing operation leaves the state as it was.
fn apply_ops(engine: &mut Engine, ops: &json_patch::Patch) -> Result<(), PolicyError> {
    let internal =
        |e: String| PolicyError::Internal(format!("applying the policy's state operations: {e}"));
    let mut state = engine.state.clone();
    json_patch::patch(&mut state, ops).map_err(|e| internal(e.to_string()))?;
    if let Err(e) = load_data(&mut engine.rego, engine.constants.as_ref(), &state) {
        // A state that clashes with the constants: put the old document back.
        load_data(&mut engine.rego, engine.constants.as_ref(), &engine.state)?;
        return Err(e);
    }
    engine.state = state;
    // Changing data makes the engine re-analyse the policy; pay for it here, in the request whose
    // decision changed the state, rather than in the next unrelated one.
    engine
        .rego
        .eval_query("true".to_string(), false)
        .map_err(|e| internal(e.to_string()))?;
    let _ = engine.rego.take_prints();
    Ok(())
}
