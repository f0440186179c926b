//! Agent policy: what the host may ask, decided by a Rego policy (regorus).
//!
//! The policy comes from, in order: a SetPolicy request; at start-up the file named by
//! `KATA_AGENT_POLICY_FILE` or the configuration's `policy_file`, else
//! [`DEFAULT_POLICY_FILE`] when it exists. Without one every request is allowed.
//!
//! Each AgentService request is decided as `data.agent_policy.<request message name>` with the
//! request as `input` (see [`input`]); [`decision`] reads the result and [`engine`] holds a loaded
//! policy and its state. Rules that only a literal `default` defines are answered without the
//! interpreter (`constant.rs`). The gate itself is `gate::PolicyGate` ([`gate()`]): the rpc layer
//! calls it once per request, before any work.
//!
//! All of this is the `agent-policy` cargo feature; without it `disabled.rs` stands in (every
//! request allowed, SetPolicy UNIMPLEMENTED, a configured policy refused at start-up).
//!
//! Concurrency: the current policy is an `Arc` swapped whole under a short lock. Decisions take
//! no lock across an evaluation: each runs on its own copy of the prepared engine (see
//! [`engine`]), and one that changes the policy's state prepares the next engine without holding
//! up the others. SetPolicy decides, parses the new policy outside every decision, and swaps;
//! SetPolicy requests are serialized among themselves so a policy that locks SetPolicy cannot be
//! raced.

#[cfg(feature = "agent-policy")]
mod builtins;
#[cfg(feature = "agent-policy")]
mod constant;
#[cfg(feature = "agent-policy")]
pub mod decision;
#[cfg(not(feature = "agent-policy"))]
mod disabled;
#[cfg(feature = "agent-policy")]
pub mod engine;
#[cfg(feature = "agent-policy")]
mod gate;
#[cfg(feature = "agent-policy")]
mod hoist;
#[cfg(feature = "agent-policy")]
pub mod input;
#[cfg(feature = "agent-policy")]
mod log;

/// Where the decision log goes (debug level only) unless `KATA_AGENT_POLICY_LOG` says otherwise.
pub const DEFAULT_POLICY_LOG: &str = "/tmp/policy.jsonl";

#[cfg(not(feature = "agent-policy"))]
pub use disabled::{gate, startup};
#[cfg(feature = "agent-policy")]
pub use gate::{gate, startup};

/// Loaded at start-up when it exists and no other policy file is configured.
pub const DEFAULT_POLICY_FILE: &str = "/etc/kata-opa/default-policy.rego";

/// Why a request was not decided "allowed".
#[cfg_attr(not(feature = "agent-policy"), allow(dead_code))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// The policy denies the request: `<request name> is blocked by policy: <prints>`.
    Denied(String),
    /// The policy text does not parse or does not compile.
    Invalid(String),
    /// The policy could not be evaluated.
    Internal(String),
    /// This agent was built without policy support (the `agent-policy` feature).
    #[cfg_attr(feature = "agent-policy", allow(dead_code))]
    Unsupported(String),
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyError::Denied(m)
            | PolicyError::Invalid(m)
            | PolicyError::Internal(m)
            | PolicyError::Unsupported(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for PolicyError {}

#[cfg(all(test, feature = "agent-policy"))]
mod concurrency_tests;
#[cfg(all(test, feature = "agent-policy"))]
mod tests;
