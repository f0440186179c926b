//! Tracing: OpenTelemetry spans built from `tracing` spans, exported to the host.
//!
//! Enabled by `agent.trace` / TOML `tracing` / `KATA_AGENT_TRACING`. When on:
//! * `tracing-opentelemetry` turns every `tracing` span into an OpenTelemetry span (tracer
//!   `kata-agent`, W3C TraceContext propagation);
//! * a root span `root-span` covers the agent's life (it is exported at shutdown);
//! * every traced RPC runs in a span named after it (see [`rpc_span`]), whose parent is the
//!   `traceparent`/`tracestate` of the request metadata, or the root span when there is none;
//! * a batch processor (own thread, bounded queue: spans are dropped, never waited for) hands the
//!   spans to an exporter: by default the vsock framing of [`export`] to the host's port 10240
//!   (`KATA_AGENT_TRACE_ADDR` may name another vsock or a unix address), or, in builds with the
//!   `otlp` feature and an `http://` trace address, an OTLP/HTTP collector.
//!
//! When off, nothing is installed and RPC spans are not created at all.

pub mod export;
pub mod rpclog;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::AgentConfig;

/// Name of the OpenTelemetry tracer (instrumentation scope) and of the service.
pub const TRACER_NAME: &str = "kata-agent";
/// Spans waiting for export; more are dropped.
const MAX_QUEUED_SPANS: usize = 512;
/// How often queued spans are exported.
const EXPORT_DELAY: Duration = Duration::from_millis(500);
/// The `req` attribute of an RPC span is cut after this many bytes.
const MAX_REQ_ATTRIBUTE: usize = 16 * 1024;

/// The layer that turns `tracing` spans into OpenTelemetry spans.
pub type OtelLayer = tracing_opentelemetry::OpenTelemetryLayer<
    tracing_subscriber::Registry,
    opentelemetry_sdk::trace::SdkTracer,
>;

static ENABLED: AtomicBool = AtomicBool::new(false);
static ROOT: Mutex<Option<Span>> = Mutex::new(None);

/// The tracer provider; [`Telemetry::shutdown`] ends the root span and flushes.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

/// Builds the exporter and the layer when tracing is enabled. Call before the subscriber is
/// installed, then [`Telemetry::start`] once it is.
pub fn setup(cfg: &AgentConfig) -> Result<Option<(Telemetry, OtelLayer)>> {
    if !cfg.tracing {
        return Ok(None);
    }
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(TRACER_NAME)
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let addr = cfg.trace_addr.as_deref().unwrap_or_default();
    let builder = if addr.starts_with("http://") || addr.starts_with("https://") {
        otlp_processor(builder, addr)?
    } else {
        let endpoint = cfg.trace_endpoint()?;
        let exporter = export::FramedExporter::new(endpoint);
        builder.with_span_processor(batch(exporter))
    };
    let provider = builder.build();
    let tracer = provider.tracer(TRACER_NAME);
    let layer = tracing_opentelemetry::OpenTelemetryLayer::new(tracer);
    Ok(Some((Telemetry { provider }, layer)))
}

fn batch<E: opentelemetry_sdk::trace::SpanExporter + 'static>(exporter: E) -> BatchSpanProcessor {
    BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(MAX_QUEUED_SPANS)
                .with_scheduled_delay(EXPORT_DELAY)
                .build(),
        )
        .build()
}

#[cfg(feature = "otlp")]
fn otlp_processor(
    builder: opentelemetry_sdk::trace::TracerProviderBuilder,
    url: &str,
) -> Result<opentelemetry_sdk::trace::TracerProviderBuilder> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let endpoint = format!("{}/v1/traces", url.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .with_headers(HashMap::new())
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the OTLP exporter for {url}: {e}"))?;
    Ok(builder.with_span_processor(batch(exporter)))
}

#[cfg(not(feature = "otlp"))]
fn otlp_processor(
    _builder: opentelemetry_sdk::trace::TracerProviderBuilder,
    url: &str,
) -> Result<opentelemetry_sdk::trace::TracerProviderBuilder> {
    anyhow::bail!("trace address {url}: this agent was built without the `otlp` feature")
}

impl Telemetry {
    /// Opens the root span; call once the subscriber with the layer is installed.
    pub fn start(&self) {
        let root = tracing::info_span!(parent: None, "root-span");
        *ROOT.lock().unwrap_or_else(|e| e.into_inner()) = Some(root);
        ENABLED.store(true, Ordering::Release);
    }

    /// Ends the root span and exports what is queued (bounded by `timeout`).
    pub fn shutdown(self, timeout: Duration) {
        ENABLED.store(false, Ordering::Release);
        drop(ROOT.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(subsystem = "vsock-tracer", error = %e, "trace export at shutdown failed");
        }
    }
}

/// Whether spans are being exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// The root span (a disabled span when tracing is off).
pub fn root() -> Span {
    ROOT.lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(Span::none)
}

/// Reads `traceparent`/`tracestate` from ttRPC metadata (several values are joined with `,`).
struct MetadataExtractor(HashMap<&'static str, String>);

impl MetadataExtractor {
    fn new(metadata: &HashMap<String, Vec<String>>) -> Self {
        let mut map = HashMap::new();
        for key in ["traceparent", "tracestate"] {
            let values: Vec<&str> = metadata
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(key))
                .flat_map(|(_, v)| v.iter().map(String::as_str))
                .collect();
            if !values.is_empty() {
                map.insert(key, values.join(","));
            }
        }
        MetadataExtractor(map)
    }
}

impl Extractor for MetadataExtractor {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().copied().collect()
    }
}

/// Completes a freshly created RPC span: parent from the request metadata (or the root span),
/// attributes `mod="rpc.rs"` and `req=<request dump>`.
pub fn rpc_span(
    span: Span,
    metadata: &HashMap<String, Vec<String>>,
    req: &dyn std::fmt::Debug,
) -> Span {
    let cx = TraceContextPropagator::new().extract(&MetadataExtractor::new(metadata));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
    span.set_attribute("mod", "rpc.rs");
    let mut dump = format!("{req:?}");
    if dump.len() > MAX_REQ_ATTRIBUTE {
        let mut cut = MAX_REQ_ATTRIBUTE;
        while !dump.is_char_boundary(cut) {
            cut -= 1;
        }
        dump.truncate(cut);
        dump.push_str("...(truncated)");
    }
    span.set_attribute("req", dump);
    span
}

/// Runs an RPC handler in its span: `traced_rpc!(ctx, "span_name", req, future)`.
///
/// Logs `rpc call from shim to agent: "<name>"` at INFO like upstream, and the per-request
/// records of [`rpclog`] (DEBUG; WARN for INTERNAL failures). The span is only created when
/// tracing is on.
#[macro_export]
macro_rules! traced_rpc {
    ($ctx:expr, $name:literal, $req:expr, $fut:expr) => {{
        use tracing::Instrument as _;
        tracing::info!(subsystem = "rpc", "rpc call from shim to agent: {:?}", $name);
        let log = $crate::telemetry::rpclog::RpcLog::start($name, &$req);
        let span = if $crate::telemetry::enabled() {
            let root = $crate::telemetry::root();
            $crate::telemetry::rpc_span(
                tracing::info_span!(parent: &root, $name),
                &$ctx.metadata,
                &$req,
            )
        } else {
            tracing::Span::none()
        };
        log.finish($fut.instrument(span).await)
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extractor_joins_and_matches_keys() {
        let mut md = HashMap::new();
        md.insert(
            "traceparent".to_string(),
            vec!["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string()],
        );
        md.insert(
            "tracestate".to_string(),
            vec!["a=1".to_string(), "b=2".to_string()],
        );
        md.insert("other".to_string(), vec!["x".to_string()]);
        let ex = MetadataExtractor::new(&md);
        assert_eq!(ex.get("tracestate"), Some("a=1,b=2"));
        assert_eq!(ex.get("other"), None);
        let cx = TraceContextPropagator::new().extract(&ex);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
        assert_eq!(sc.trace_state().header(), "a=1,b=2");
    }

    #[test]
    fn disabled_without_the_option() {
        let cfg = AgentConfig::default();
        assert!(setup(&cfg).unwrap().is_none());
        assert!(!enabled());
        assert!(root().is_none());
    }

    #[cfg(not(feature = "otlp"))]
    #[test]
    fn otlp_address_needs_the_feature() {
        let cfg = AgentConfig {
            tracing: true,
            trace_addr: Some("http://127.0.0.1:4318".into()),
            ..AgentConfig::default()
        };
        let err = setup(&cfg).err().expect("no otlp feature");
        assert!(err.to_string().contains("otlp"), "{err}");
    }
}
