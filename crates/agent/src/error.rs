//! Errors of the agent's domain modules and their mapping onto ttRPC status codes.
//!
//! Domain code returns [`AgentError`] (or `anyhow::Error`, which becomes INTERNAL); the rpc layer turns
//! it into a `ttrpc::Error` with [`AgentError::into_ttrpc`]. Messages are plain sentences; an error
//! chain is joined with `": "` rather than debug-formatted.

use std::fmt;

use ttrpc::Code;

/// An error carrying the ttRPC status code the client should see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentError {
    pub code: Code,
    pub message: String,
}

impl AgentError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        AgentError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::INVALID_ARGUMENT, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NOT_FOUND, message)
    }

    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(Code::ALREADY_EXISTS, message)
    }

    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(Code::FAILED_PRECONDITION, message)
    }

    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(Code::UNIMPLEMENTED, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::UNAVAILABLE, message)
    }

    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::new(Code::CANCELLED, message)
    }

    pub fn deadline_exceeded(message: impl Into<String>) -> Self {
        Self::new(Code::DEADLINE_EXCEEDED, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::INTERNAL, message)
    }

    /// Converts into the error type the generated ttRPC service traits return.
    pub fn into_ttrpc(self) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(self.code, self.message))
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AgentError {}

impl From<anyhow::Error> for AgentError {
    fn from(err: anyhow::Error) -> Self {
        // A typed error anywhere in the chain decides the code; the message keeps the whole chain.
        let message = chain_message(&err);
        if let Some(agent) = err.chain().find_map(|e| e.downcast_ref::<AgentError>()) {
            return AgentError::new(agent.code, message);
        }
        if let Some(engine) = err.chain().find_map(|e| e.downcast_ref::<engine::Error>()) {
            return AgentError::new(engine_code(engine), message);
        }
        AgentError::internal(message)
    }
}

impl From<engine::Error> for AgentError {
    fn from(err: engine::Error) -> Self {
        AgentError::new(engine_code(&err), err.to_string())
    }
}

impl From<std::io::Error> for AgentError {
    fn from(err: std::io::Error) -> Self {
        AgentError::internal(err.to_string())
    }
}

impl From<crate::policy::PolicyError> for AgentError {
    fn from(err: crate::policy::PolicyError) -> Self {
        use crate::policy::PolicyError as P;
        let code = match err {
            P::Denied(_) => Code::PERMISSION_DENIED,
            P::Invalid(_) => Code::INVALID_ARGUMENT,
            P::Internal(_) => Code::INTERNAL,
            P::Unsupported(_) => Code::UNIMPLEMENTED,
        };
        AgentError::new(code, err.to_string())
    }
}

fn engine_code(err: &engine::Error) -> Code {
    match err {
        engine::Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
        engine::Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
        engine::Error::NotFound(_) => Code::NOT_FOUND,
        engine::Error::Cancelled(_) => Code::CANCELLED,
        _ => Code::INTERNAL,
    }
}

/// Joins an error chain into one line: `outer: inner: root cause`.
pub fn chain_message(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for (i, cause) in err.chain().enumerate() {
        let text = cause.to_string();
        if i > 0 {
            // Contexts often repeat their cause verbatim; skip exact repeats.
            if out.ends_with(&text) {
                continue;
            }
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Result type of the domain modules.
pub type Result<T> = std::result::Result<T, AgentError>;

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn anyhow_chain_keeps_typed_code() {
        let err: anyhow::Error = AgentError::not_found("process e1 not found").into();
        let err = err.context("wait failed");
        let agent: AgentError = err.into();
        assert_eq!(agent.code, Code::NOT_FOUND);
        assert_eq!(agent.message, "wait failed: process e1 not found");
    }

    #[test]
    fn plain_anyhow_is_internal() {
        let err = std::fs::read("/nonexistent/file")
            .context("cannot read the file")
            .unwrap_err();
        let agent: AgentError = err.into();
        assert_eq!(agent.code, Code::INTERNAL);
        assert!(agent.message.starts_with("cannot read the file: "));
    }
}
