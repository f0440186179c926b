//! A loaded policy: the policy's modules parsed and prepared by regorus, and the policy's own
//! state (`data.pstate`).
//!
//! A [`LoadedPolicy`] is built completely (parsed, analysed, `AllowRequestsFailingPolicy` read)
//! before anyone can decide with it, so swapping policies never exposes a half-loaded one.
//!
//! Concurrency. The engine prepared for the current state is a [`Snapshot`]; decisions evaluate
//! on copies of it (a prepared regorus engine clones cheaply: the analysed modules are shared),
//! taken from a small pool, so decisions never wait for each other. A decision whose allowed
//! result changes the state builds the next snapshot: the state patched, a copy of the engine given
//! the new data and prepared again (regorus re-analyses whenever its data changes, milliseconds
//! with genpolicy's rules). That happens outside any lock that other decisions take; state changes
//! are serialized among themselves, and one evaluated on a snapshot that has since been replaced
//! is evaluated again on the new one, so every change is computed from the state before it.
//! Decisions that only read the state use the snapshot current when they start.

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex, RwLock};

use regorus::PolicyLengthConfig;
use regorus::Value;

use super::decision::{self, Outcome};
use super::PolicyError;
use super::{builtins, constant, hoist};

/// The Rego package upstream's policies define their rules in.
pub const PACKAGE: &str = "agent_policy";

// regorus' default length limits (1 KiB lines, 1 MiB, 20 000 lines) reject real genpolicy output
// (single environment values over 1 KiB); these still reject pathological input.
const MAX_LINE_BYTES: u32 = 64 * 1024;
const MAX_POLICY_BYTES: usize = 16 * 1024 * 1024;
const MAX_POLICY_LINES: usize = 200_000;

/// Idle engine copies kept per snapshot (about one per thread deciding at once).
const MAX_IDLE_ENGINES: usize = 4;

/// A parsed and prepared policy with its state.
pub struct LoadedPolicy {
    /// Where the policy came from (a file path, or `SetPolicy`), for logs.
    origin: String,
    /// `data.agent_policy.AllowRequestsFailingPolicy` is true: denials are only warnings.
    allow_failures: bool,
    /// Request rules that only a literal default defines (see [`constant`]).
    constant: HashMap<String, Value>,
    /// The constant rules hoisted out of the text (see [`hoist`]); never changed by `ops`.
    hoisted: Option<Value>,
    /// The engine prepared for the current state. Locked only to copy or replace the `Arc`.
    current: RwLock<Arc<Snapshot>>,
    /// Serializes state changes (held while the next snapshot is prepared).
    commit: Mutex<()>,
    /// Tests: runs while the next snapshot is prepared, to hold a state change there.
    #[cfg(test)]
    pub(super) preparing_hook: Mutex<Option<Box<dyn Fn() + Send>>>,
}

/// The policy prepared for one state.
struct Snapshot {
    /// Counts state changes since the policy was loaded.
    generation: u64,
    /// Prepared for `state`; only ever copied.
    template: regorus::Engine,
    /// The part of the data document the policy's `ops` patch: `{"pstate": …}`.
    state: serde_json::Value,
    /// Copies of `template` that finished a decision, ready for the next one.
    idle: Mutex<Vec<regorus::Engine>>,
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
        prepare(&mut engine).map_err(invalid)?;
        let constant = constant::constant_rules(&mut engine);

        let mut loaded = LoadedPolicy {
            origin: origin.to_string(),
            allow_failures: false,
            constant,
            hoisted: hoisted.data,
            current: RwLock::new(Arc::new(Snapshot::new(0, engine, state))),
            commit: Mutex::new(()),
            #[cfg(test)]
            preparing_hook: Mutex::new(None),
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

    /// The decision on `name` when the policy defines it by a literal default alone (see
    /// [`constant`]): no input or evaluation needed.
    pub fn constant_outcome(&self, name: &str) -> Option<Result<Outcome, PolicyError>> {
        self.constant
            .get(name)
            .map(|value| decision::interpret(value, String::new(), self.allow_failures))
    }

    /// Evaluates `data.agent_policy.<name>` with `input`. When the allowed result carries state
    /// operations, they are applied (and the engine prepared for the new state) before this
    /// returns, so a request sent after this one's answer is decided on the new state.
    pub fn evaluate(&self, name: &str, input: Value) -> Result<Outcome, PolicyError> {
        if let Some(outcome) = self.constant_outcome(name) {
            return outcome;
        }
        let snapshot = self.snapshot();
        let outcome = snapshot.evaluate(name, input.clone(), self.allow_failures)?;
        if outcome.ops.is_none() {
            return Ok(outcome);
        }
        blocking(|| self.change_state(name, input, snapshot, outcome))
    }

    /// Applies the state operations of `outcome`, decided on `seen`; decides again first when
    /// another change replaced `seen` meanwhile.
    fn change_state(
        &self,
        name: &str,
        input: Value,
        seen: Arc<Snapshot>,
        outcome: Outcome,
    ) -> Result<Outcome, PolicyError> {
        let _serial = self.commit.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.snapshot();
        let mut outcome = if current.generation == seen.generation {
            outcome
        } else {
            current.evaluate(name, input, self.allow_failures)?
        };
        if let Some(ops) = outcome.ops.take() {
            #[cfg(test)]
            if let Some(hook) = &*self.preparing_hook.lock().unwrap() {
                hook();
            }
            let next = current.next(self.hoisted.as_ref(), &ops)?;
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        }
        Ok(outcome)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The policy state (`data.pstate`), for tests and diagnostics.
    #[cfg(test)]
    pub fn state(&self) -> Value {
        serde_json::from_value(self.snapshot().state["pstate"].clone()).expect("a JSON state")
    }

    /// The request rules decided without the interpreter, for tests.
    #[cfg(test)]
    pub fn constant_rules(&self) -> &HashMap<String, Value> {
        &self.constant
    }

    /// Tests: evaluates `name` with the interpreter even when it is a constant rule.
    #[cfg(test)]
    pub fn interpret(&self, name: &str, input: Value) -> Result<Outcome, PolicyError> {
        self.snapshot().evaluate(name, input, self.allow_failures)
    }
}

impl Snapshot {
    fn new(generation: u64, template: regorus::Engine, state: serde_json::Value) -> Self {
        Snapshot {
            generation,
            template,
            state,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// One evaluation on a copy of the prepared engine. An allowed result's non-empty `ops` are
    /// left in the outcome for the caller to apply; a denied one never carries any.
    fn evaluate(
        &self,
        name: &str,
        input: Value,
        allow_failures: bool,
    ) -> Result<Outcome, PolicyError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut engine = idle.unwrap_or_else(|| self.template.clone());
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
        // The input can be large (a CreateContainer spec): do not keep it alive in the pool.
        engine.set_input(Value::Undefined);
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE_ENGINES {
                idle.push(engine);
            }
        }
        let value = value.map_err(|e| PolicyError::Internal(e.to_string()))?;
        let mut outcome = decision::interpret(&value, prints, allow_failures)?;
        if outcome.ops.as_ref().is_some_and(|ops| ops.0.is_empty()) {
            outcome.ops = None;
        }
        Ok(outcome)
    }

    /// The snapshot after `ops`: the state patched (all or nothing) and a copy of the engine
    /// prepared with it.
    fn next(&self, hoisted: Option<&Value>, ops: &json_patch::Patch) -> Result<Self, PolicyError> {
        let internal = |e: String| {
            PolicyError::Internal(format!("applying the policy's state operations: {e}"))
        };
        let mut state = self.state.clone();
        json_patch::patch(&mut state, ops).map_err(|e| internal(e.to_string()))?;
        let mut engine = self.template.clone();
        load_data(&mut engine, hoisted, &state)?;
        prepare(&mut engine).map_err(|e| internal(e.to_string()))?;
        Ok(Snapshot::new(self.generation + 1, engine, state))
    }
}

/// Analyses the modules with the current data (regorus does it at the first evaluation after a
/// change), so that decisions find the engine ready.
fn prepare(engine: &mut regorus::Engine) -> anyhow::Result<()> {
    engine.eval_query("true".to_string(), false)?;
    let _ = engine.take_prints();
    Ok(())
}

/// Runs `f`, which may take milliseconds, telling a multi-threaded tokio runtime so that it moves
/// the worker's other tasks elsewhere meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
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
