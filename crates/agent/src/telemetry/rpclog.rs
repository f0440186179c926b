//! Per-request log records, for `agent.log=debug`.
//!
//! Every API request gets (subsystem `rpc`, fields `method`, `container_id`, `exec_id`):
//! * at DEBUG, `rpc started` when its handler begins;
//! * at DEBUG, `rpc finished` with `duration_ms` when it succeeds, or `rpc failed` with
//!   `duration_ms`, `code` (the ttRPC status name) and `error` when it fails — at WARN instead
//!   when the code is INTERNAL (a fault of the agent rather than of the request);
//! * at DEBUG, `rpc cancelled` with `duration_ms` when the request ends before its handler
//!   (connection closed, `timeout_nano` reached).
//!
//! [`crate::traced_rpc!`] does this for the traced methods; [`crate::logged_rpc!`] for the
//! others (stream I/O, GetOOMEvent, mem-agent), which upstream does not announce at INFO.

use std::time::Instant;

use protobuf::reflect::ReflectValueRef;
use protobuf::MessageDyn;
use ttrpc::Code;

use crate::error::AgentError;

/// A request whose end is still to be logged (dropping it unfinished logs a cancellation).
pub struct RpcLog {
    method: &'static str,
    container_id: String,
    exec_id: String,
    start: Instant,
    done: bool,
}

/// The string value of field `name` of `msg`, or "" when it has none.
fn string_field(msg: &dyn MessageDyn, name: &str) -> String {
    let Some(field) = msg.descriptor_dyn().field_by_name(name) else {
        return String::new();
    };
    if !field.is_singular() {
        return String::new();
    }
    match field.get_singular(msg) {
        Some(ReflectValueRef::String(s)) => s.to_string(),
        _ => String::new(),
    }
}

/// The status code and message of a failed handler result.
pub trait RpcOutcome {
    /// `None` for success.
    fn failure(&self) -> Option<(Code, &str)>;
}

impl<T> RpcOutcome for Result<T, AgentError> {
    fn failure(&self) -> Option<(Code, &str)> {
        self.as_ref().err().map(|e| (e.code, e.message.as_str()))
    }
}

impl<T> RpcOutcome for Result<T, ttrpc::Error> {
    fn failure(&self) -> Option<(Code, &str)> {
        match self {
            Ok(_) => None,
            Err(ttrpc::Error::RpcStatus(s)) => Some((s.code(), s.message())),
            Err(_) => Some((Code::INTERNAL, "")),
        }
    }
}

impl RpcLog {
    /// Notes the start of `method` for request `req`.
    pub fn start(method: &'static str, req: &dyn MessageDyn) -> RpcLog {
        let log = RpcLog {
            method,
            container_id: string_field(req, "container_id"),
            exec_id: string_field(req, "exec_id"),
            start: Instant::now(),
            done: false,
        };
        tracing::debug!(
            subsystem = "rpc",
            method,
            container_id = %log.container_id,
            exec_id = %log.exec_id,
            "rpc started"
        );
        log
    }

    fn millis(&self) -> f64 {
        (self.start.elapsed().as_micros() as f64) / 1000.0
    }

    /// Logs the end of the request and hands its result back.
    pub fn finish<R: RpcOutcome>(mut self, result: R) -> R {
        self.done = true;
        let duration_ms = self.millis();
        let (method, cid, eid) = (self.method, &self.container_id, &self.exec_id);
        match result.failure() {
            None => tracing::debug!(
                subsystem = "rpc",
                method,
                container_id = %cid,
                exec_id = %eid,
                duration_ms,
                "rpc finished"
            ),
            Some((code, message)) if code == Code::INTERNAL => tracing::warn!(
                subsystem = "rpc",
                method,
                container_id = %cid,
                exec_id = %eid,
                duration_ms,
                code = ?code,
                error = message,
                "rpc failed"
            ),
            Some((code, message)) => tracing::debug!(
                subsystem = "rpc",
                method,
                container_id = %cid,
                exec_id = %eid,
                duration_ms,
                code = ?code,
                error = message,
                "rpc failed"
            ),
        }
        result
    }
}

impl Drop for RpcLog {
    fn drop(&mut self) {
        if !self.done {
            tracing::debug!(
                subsystem = "rpc",
                method = self.method,
                container_id = %self.container_id,
                exec_id = %self.exec_id,
                duration_ms = self.millis(),
                "rpc cancelled"
            );
        }
    }
}

/// Runs an RPC handler with the per-request debug records of [`RpcLog`] (no INFO line, no
/// span): `logged_rpc!("read_stdout", req, future)`.
#[macro_export]
macro_rules! logged_rpc {
    ($name:literal, $req:expr, $fut:expr) => {{
        let log = $crate::telemetry::rpclog::RpcLog::start($name, &$req);
        log.finish($fut.await)
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::agent;

    #[test]
    fn ids_come_from_the_request() {
        let req = agent::ReadStreamRequest {
            container_id: "c1".into(),
            exec_id: "e1".into(),
            ..Default::default()
        };
        assert_eq!(string_field(&req, "container_id"), "c1");
        assert_eq!(string_field(&req, "exec_id"), "e1");
        let req = agent::CreateSandboxRequest::default();
        assert_eq!(string_field(&req, "container_id"), "");
        // A repeated or non-string field named so gives nothing rather than a panic.
        let req = agent::GetOOMEventRequest::default();
        assert_eq!(string_field(&req, "exec_id"), "");
    }

    #[derive(Default)]
    struct Sink(std::sync::Mutex<Vec<serde_json::Value>>);

    impl crate::logging::LogSink for Sink {
        fn write_record(&self, line: &[u8]) {
            self.0
                .lock()
                .unwrap()
                .push(serde_json::from_slice(line).unwrap());
        }
    }

    /// Records logged by `f` at `level`.
    fn capture(level: crate::logging::LogLevel, f: impl FnOnce()) -> Vec<serde_json::Value> {
        use tracing_subscriber::prelude::*;
        let logger = crate::logging::Logger::new(level);
        let sink = std::sync::Arc::new(Sink::default());
        logger.add_sink(sink.clone());
        let subscriber =
            tracing_subscriber::registry().with(crate::logging::JsonLayer::new(logger));
        tracing::subscriber::with_default(subscriber, f);
        let v = sink.0.lock().unwrap().clone();
        v
    }

    fn req() -> agent::WaitProcessRequest {
        agent::WaitProcessRequest {
            container_id: "c1".into(),
            exec_id: "e1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn levels_of_the_records() {
        use crate::logging::LogLevel;
        let run = |level| {
            capture(level, || {
                let ok: Result<(), AgentError> = Ok(());
                let _ = RpcLog::start("wait_process", &req()).finish(ok);
                let bad: Result<(), AgentError> = Err(AgentError::not_found("gone"));
                let _ = RpcLog::start("wait_process", &req()).finish(bad);
                let internal: Result<(), AgentError> = Err(AgentError::internal("boom"));
                let _ = RpcLog::start("wait_process", &req()).finish(internal);
                drop(RpcLog::start("wait_process", &req()));
            })
        };
        let debug = run(LogLevel::Debug);
        let summary: Vec<(String, String)> = debug
            .iter()
            .map(|r| {
                (
                    r["level"].as_str().unwrap().to_string(),
                    r["msg"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want = [
            ("DEBG", "rpc started"),
            ("DEBG", "rpc finished"),
            ("DEBG", "rpc started"),
            ("DEBG", "rpc failed"),
            ("DEBG", "rpc started"),
            ("WARN", "rpc failed"),
            ("DEBG", "rpc started"),
            ("DEBG", "rpc cancelled"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(summary, want);
        assert_eq!(debug[3]["code"], "NOT_FOUND");
        assert_eq!(debug[3]["error"], "gone");
        assert_eq!(debug[5]["code"], "INTERNAL");
        for r in &debug {
            assert_eq!(r["method"], "wait_process");
            assert_eq!(r["container_id"], "c1");
            assert_eq!(r["exec_id"], "e1");
            assert_eq!(r["subsystem"], "rpc");
        }
        assert!(debug[1]["duration_ms"].is_number());
        // At info only the INTERNAL failure shows.
        let info = run(LogLevel::Info);
        assert_eq!(info.len(), 1);
        assert_eq!(info[0]["level"], "WARN");
        assert_eq!(info[0]["error"], "boom");
    }

    #[test]
    fn outcomes() {
        let ok: Result<(), AgentError> = Ok(());
        assert!(ok.failure().is_none());
        let e: Result<(), AgentError> = Err(AgentError::internal("boom"));
        assert_eq!(e.failure(), Some((Code::INTERNAL, "boom")));
        let t: Result<(), ttrpc::Error> = Err(AgentError::not_found("x").into_ttrpc());
        assert_eq!(t.failure(), Some((Code::NOT_FOUND, "x")));
    }
}
