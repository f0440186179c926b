//! The host trace exporter: spans over a stream socket (vsock to the host's port 10240 by
//! default), each framed as an 8-byte big-endian length followed by that many bytes of JSON.
//!
//! The connection is made on the first export and kept; when it fails the batch is retried once
//! on a fresh connection and otherwise dropped (the next batch tries again). Writes time out, so
//! a stuck collector costs spans, never a stuck agent.
//!
//! The JSON of one span (our own layout; upstream's payload is a serde dump of its SDK's span
//! type, which no host tool decodes — only the framing is a contract):
//!
//! ```json
//! {"name":"create_container","trace_id":"<32 hex>","span_id":"<16 hex>",
//!  "parent_span_id":"<16 hex, zeros for a root>","parent_is_remote":true,
//!  "trace_flags":1,"trace_state":"","kind":"internal",
//!  "start_time_unix_nano":1700000000000000000,"end_time_unix_nano":1700000000000500000,
//!  "attributes":{"mod":"rpc.rs","req":"..."},"dropped_attributes_count":0,
//!  "events":[{"name":"...","time_unix_nano":...,"attributes":{...}}],
//!  "links":[{"trace_id":"...","span_id":"...","attributes":{...}}],
//!  "status":{"code":"unset","message":""},
//!  "resource":{"service.name":"kata-agent",...},
//!  "instrumentation_scope":{"name":"kata-agent","version":null}}
//! ```

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use serde_json::{json, Map};

use crate::endpoint::{Endpoint, StdStream};

/// How long one write may stall.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Exports spans with the length-prefixed JSON framing.
#[derive(Debug)]
pub struct FramedExporter {
    endpoint: Endpoint,
    conn: Mutex<Option<StdStream>>,
    resource: Map<String, serde_json::Value>,
    /// Set after a failure was logged, so a missing collector is reported once, not per batch.
    failing: Mutex<bool>,
}

impl FramedExporter {
    pub fn new(endpoint: Endpoint) -> FramedExporter {
        FramedExporter {
            endpoint,
            conn: Mutex::new(None),
            resource: Map::new(),
            failing: Mutex::new(false),
        }
    }

    fn send(&self, frames: &[u8]) -> std::io::Result<()> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        for attempt in 0..2 {
            if conn.is_none() {
                let stream = self.endpoint.connect_std()?;
                stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
                *conn = Some(stream);
            }
            let stream = conn.as_ref().expect("connected above");
            match (&*stream).write_all(frames) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    *conn = None;
                    if attempt == 1 {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    fn report(&self, result: &std::io::Result<()>) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Err(e) if !*failing => {
                *failing = true;
                tracing::error!(
                    subsystem = "vsock-tracer",
                    address = %self.endpoint,
                    error = %e,
                    "cannot export spans; they are dropped until the collector is reachable"
                );
            }
            Ok(()) if *failing => {
                *failing = false;
                tracing::info!(
                    subsystem = "vsock-tracer",
                    address = %self.endpoint,
                    "exporting spans again"
                );
            }
            _ => {}
        }
    }
}

impl SpanExporter for FramedExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut frames = Vec::new();
        for span in &batch {
            let body = span_json(span, &self.resource).to_string();
            frames.extend_from_slice(&(body.len() as u64).to_be_bytes());
            frames.extend_from_slice(body.as_bytes());
        }
        let result = self.send(&frames);
        self.report(&result);
        result.map_err(|e| OTelSdkError::InternalFailure(e.to_string()))
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        if let Some(conn) = self.conn.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource
            .iter()
            .map(|(k, v)| (k.to_string(), value_json(v)))
            .collect();
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Bool(b) => json!(b),
        Value::I64(i) => json!(i),
        Value::F64(f) => json!(f),
        Value::String(s) => json!(s.as_str()),
        other => json!(other.to_string()),
    }
}

fn attributes_json(attrs: &[KeyValue]) -> serde_json::Value {
    serde_json::Value::Object(
        attrs
            .iter()
            .map(|kv| (kv.key.to_string(), value_json(&kv.value)))
            .collect(),
    )
}

/// The JSON body of one span frame.
pub fn span_json(span: &SpanData, resource: &Map<String, serde_json::Value>) -> serde_json::Value {
    let sc = &span.span_context;
    let kind = match span.span_kind {
        SpanKind::Client => "client",
        SpanKind::Server => "server",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    };
    let (code, message) = match &span.status {
        Status::Unset => ("unset", String::new()),
        Status::Ok => ("ok", String::new()),
        Status::Error { description } => ("error", description.to_string()),
    };
    json!({
        "name": span.name,
        "trace_id": sc.trace_id().to_string(),
        "span_id": sc.span_id().to_string(),
        "parent_span_id": span.parent_span_id.to_string(),
        "parent_is_remote": span.parent_span_is_remote,
        "trace_flags": sc.trace_flags().to_u8(),
        "trace_state": sc.trace_state().header(),
        "kind": kind,
        "start_time_unix_nano": nanos(span.start_time),
        "end_time_unix_nano": nanos(span.end_time),
        "attributes": attributes_json(&span.attributes),
        "dropped_attributes_count": span.dropped_attributes_count,
        "events": span.events.iter().map(|e| json!({
            "name": e.name,
            "time_unix_nano": nanos(e.timestamp),
            "attributes": attributes_json(&e.attributes),
        })).collect::<Vec<_>>(),
        "links": span.links.iter().map(|l| json!({
            "trace_id": l.span_context.trace_id().to_string(),
            "span_id": l.span_context.span_id().to_string(),
            "attributes": attributes_json(&l.attributes),
        })).collect::<Vec<_>>(),
        "status": {"code": code, "message": message},
        "resource": resource,
        "instrumentation_scope": {
            "name": span.instrumentation_scope.name(),
            "version": span.instrumentation_scope.version(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    fn read_frame(r: &mut impl Read) -> serde_json::Value {
        let mut len = [0u8; 8];
        r.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u64::from_be_bytes(len) as usize];
        r.read_exact(&mut body).unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    #[test]
    fn spans_are_framed_and_reconnected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.sock");
        let endpoint = Endpoint::Unix(path.clone());
        let exporter = FramedExporter::new(endpoint.clone());
        let provider = SdkTracerProvider::builder()
            .with_resource(Resource::builder().with_service_name("kata-agent").build())
            .with_simple_exporter(exporter)
            .build();
        let tracer = provider.tracer("kata-agent");

        // No collector yet: the span is dropped, the agent goes on.
        tracer.start("lost").end();

        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut span = tracer.start("first");
        span.set_attribute(KeyValue::new("mod", "rpc.rs"));
        span.end();
        let (mut conn, _) = listener.accept().unwrap();
        let v = read_frame(&mut conn);
        assert_eq!(v["name"], "first");
        assert_eq!(v["attributes"]["mod"], "rpc.rs");
        assert_eq!(v["trace_id"].as_str().unwrap().len(), 32);
        assert_eq!(v["span_id"].as_str().unwrap().len(), 16);
        assert_eq!(v["parent_span_id"], "0000000000000000");
        assert_eq!(v["resource"]["service.name"], "kata-agent");
        assert_eq!(v["instrumentation_scope"]["name"], "kata-agent");
        assert!(
            v["end_time_unix_nano"].as_u64().unwrap()
                >= v["start_time_unix_nano"].as_u64().unwrap()
        );

        // The collector restarts: the next span goes to the new connection.
        drop(conn);
        tracer.start("probe").end(); // may be lost on the dead connection
        let mut names = Vec::new();
        tracer.start("second").end();
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        while !names.contains(&"second".to_string()) {
            names.push(read_frame(&mut conn)["name"].as_str().unwrap().to_string());
        }
        let _ = provider.shutdown();
    }
}
