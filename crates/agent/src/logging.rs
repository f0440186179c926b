//! Structured JSON logging for the agent.
//!
//! Every `tracing` event becomes one JSON object on one line, in the format the Kata runtimes expect
//! from the agent:
//!
//! ```text
//! {"ts":"2024-05-01T10:00:00.123456Z","level":"INFO","msg":"announce","name":"kata-agent",
//!  "pid":"1","source":"agent","subsystem":"root","version":"0.1.0", ...event and span fields}
//! ```
//!
//! The `subsystem` key comes from a `subsystem` field on the event or an enclosing span (default
//! `root`). Fields of enclosing spans are merged from the outermost span inwards, and event fields
//! win over span fields; any field wins over a fixed key of the same name except `ts` and `level`.
//!
//! Records go to a list of [`LogSink`]s. The default sink is stderr, written by a background
//! thread through a bounded queue so that a slow or blocked console never stalls the agent: when
//! the queue is full, records are dropped (and counted).
//!
//! With `agent.log_vport` (or `KATA_AGENT_LOG_ADDR`) a [`HostSink`] also streams every record to
//! the host: it listens on the port, keeps records in a bounded buffer while no host is connected
//! (they are sent when one connects), and drops new records rather than wait when the buffer is
//! full; the host is told how many were dropped.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

pub use crate::log_level::LogLevel;

mod host;
pub use host::*;

/// Value of the `name` key of every record.
pub const LOG_NAME: &str = "kata-agent";
/// Value of the `source` key of every record.
pub const LOG_SOURCE: &str = "agent";
/// Value of the `subsystem` key when neither the event nor a span sets one.
pub const DEFAULT_SUBSYSTEM: &str = "root";
/// Records the stderr queue holds before it starts dropping.
const QUEUE_CAPACITY: usize = 4096;

/// A destination for formatted records.
///
/// `write_record` receives one complete line (JSON object plus `\n`). It is called on the thread
/// that logs, so it must return quickly: sinks that may block should queue (see [`QueuedSink`]).
pub trait LogSink: Send + Sync {
    /// Writes (or queues) one record. Errors are the sink's business; they are never reported.
    fn write_record(&self, line: &[u8]);

    /// Waits until the records queued so far are written, at most `timeout`.
    fn flush(&self, _timeout: Duration) {}
}

enum QueueItem {
    Line(Vec<u8>),
    Flush(mpsc::Sender<()>),
}

/// A sink that hands records to a writer thread through a bounded queue.
///
/// When the queue is full the record is dropped and counted; write errors of the underlying writer
/// are ignored (the record is lost, the sink keeps going).
pub struct QueuedSink {
    tx: SyncSender<QueueItem>,
    dropped: AtomicU64,
}

impl QueuedSink {
    /// Starts a writer thread named `name` that writes queued records to `writer`.
    pub fn new<W: Write + Send + 'static>(name: &str, writer: W, capacity: usize) -> QueuedSink {
        let (tx, rx) = mpsc::sync_channel(capacity);
        // If the thread cannot be started the receiver is gone and every record is dropped.
        let _ = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || Self::run(writer, rx));
        QueuedSink {
            tx,
            dropped: AtomicU64::new(0),
        }
    }

    /// A queued sink writing to the process's stderr.
    pub fn stderr() -> QueuedSink {
        QueuedSink::new("log-stderr", std::io::stderr(), QUEUE_CAPACITY)
    }

    /// How many records were dropped because the queue was full or the writer thread is gone.
    #[allow(dead_code)]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn run<W: Write>(mut writer: W, rx: Receiver<QueueItem>) {
        for item in rx {
            match item {
                QueueItem::Line(line) => {
                    let _ = writer.write_all(&line);
                    let _ = writer.flush();
                }
                QueueItem::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    }
}

impl LogSink for QueuedSink {
    fn write_record(&self, line: &[u8]) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(QueueItem::Line(line.to_vec()))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let (done_tx, done_rx) = mpsc::channel();
        let mut item = QueueItem::Flush(done_tx);
        loop {
            match self.tx.try_send(item) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(back)) => {
                    if Instant::now() >= deadline {
                        return;
                    }
                    item = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        let _ = done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

/// Formats records and fans them out to the sinks; holds the current level.
pub struct Logger {
    level: AtomicU8,
    sinks: RwLock<Vec<Arc<dyn LogSink>>>,
}

impl Logger {
    /// A logger with no sinks.
    pub fn new(level: LogLevel) -> Arc<Logger> {
        Arc::new(Logger {
            level: AtomicU8::new(level as u8),
            sinks: RwLock::new(Vec::new()),
        })
    }

    /// Adds a destination; records logged from now on go to it too.
    pub fn add_sink(&self, sink: Arc<dyn LogSink>) {
        self.sinks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(sink);
    }

    /// Changes the level at run time.
    pub fn set_level(&self, level: LogLevel) {
        self.level.store(level as u8, Ordering::Relaxed);
    }

    /// The current level.
    pub fn level(&self) -> LogLevel {
        LogLevel::from_u8(self.level.load(Ordering::Relaxed))
    }

    /// Whether a record of this level is written at the current level.
    pub fn enabled(&self, level: LogLevel) -> bool {
        level <= self.level()
    }

    /// Waits (at most `timeout` per sink) until every sink has written what it queued.
    pub fn flush(&self, timeout: Duration) {
        let sinks = self.sinks.read().unwrap_or_else(|e| e.into_inner()).clone();
        for sink in sinks {
            sink.flush(timeout);
        }
    }

    fn dispatch(&self, line: &[u8]) {
        for sink in self.sinks.read().unwrap_or_else(|e| e.into_inner()).iter() {
            sink.write_record(line);
        }
    }
}

/// A `tracing-subscriber` layer that formats events as JSON records for a [`Logger`].
pub struct JsonLayer {
    logger: Arc<Logger>,
}

impl JsonLayer {
    pub fn new(logger: Arc<Logger>) -> JsonLayer {
        JsonLayer { logger }
    }
}

/// Fields recorded on a span, kept in the span's extensions.
#[derive(Default)]
struct SpanFields(Fields);

/// An ordered key/value list where setting an existing key replaces its value.
#[derive(Default, Clone)]
struct Fields(Vec<(Cow<'static, str>, Value)>);

impl Fields {
    fn set(&mut self, key: Cow<'static, str>, value: Value) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key, value)),
        }
    }
}

/// Collects the fields of a span or event; the event's `message` becomes `msg`.
struct FieldVisitor<'a>(&'a mut Fields);

impl FieldVisitor<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let name = match field.name() {
            "message" => "msg",
            other => other,
        };
        self.0.set(Cow::Borrowed(name), value);
    }
}

impl Visit for FieldVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(value.to_string()));
        self.put(field, v);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

impl<S> Layer<S> for JsonLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(&self, _metadata: &'static Metadata<'static>) -> Interest {
        // The level can change at run time, so every callsite asks `enabled` each time.
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        // Spans are always kept so that their fields (e.g. `subsystem`) reach enabled events.
        metadata.is_span() || self.logger.enabled(LogLevel::of(metadata.level()))
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut fields = Fields::default();
            attrs.record(&mut FieldVisitor(&mut fields));
            span.extensions_mut().insert(SpanFields(fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            match ext.get_mut::<SpanFields>() {
                Some(SpanFields(fields)) => values.record(&mut FieldVisitor(fields)),
                None => {
                    let mut fields = Fields::default();
                    values.record(&mut FieldVisitor(&mut fields));
                    ext.insert(SpanFields(fields));
                }
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let level = LogLevel::of(event.metadata().level());
        if !self.logger.enabled(level) {
            return;
        }
        let mut fields = Fields::default();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(SpanFields(span_fields)) = span.extensions().get::<SpanFields>() {
                    for (k, v) in &span_fields.0 {
                        fields.set(k.clone(), v.clone());
                    }
                }
            }
        }
        event.record(&mut FieldVisitor(&mut fields));
        let line = format_record(SystemTime::now(), level, std::process::id(), &fields);
        self.logger.dispatch(&line);
    }
}

/// Builds one record line: fixed keys first, then the merged fields.
fn format_record(now: SystemTime, level: LogLevel, pid: u32, fields: &Fields) -> Vec<u8> {
    let mut record = Fields(Vec::with_capacity(8 + fields.0.len()));
    record.set("ts".into(), Value::String(format_rfc3339(now)));
    record.set("level".into(), Value::String(level.short_name().into()));
    record.set("msg".into(), Value::String(String::new()));
    record.set("name".into(), Value::String(LOG_NAME.into()));
    record.set("pid".into(), Value::String(pid.to_string()));
    record.set("source".into(), Value::String(LOG_SOURCE.into()));
    record.set("subsystem".into(), Value::String(DEFAULT_SUBSYSTEM.into()));
    record.set(
        "version".into(),
        Value::String(env!("CARGO_PKG_VERSION").into()),
    );
    for (k, v) in &fields.0 {
        if k != "ts" && k != "level" {
            record.set(k.clone(), v.clone());
        }
    }

    let mut out = Vec::with_capacity(256);
    out.push(b'{');
    for (i, (k, v)) in record.0.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Serialising a str or a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, k.as_ref());
        out.push(b':');
        let _ = serde_json::to_writer(&mut out, v);
    }
    out.extend_from_slice(b"}\n");
    out
}

/// Formats a time as RFC 3339 in UTC with microseconds, e.g. `2023-11-14T22:13:20.000000Z`.
pub fn format_rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Converts days since 1970-01-01 into a (year, month, day) of the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days` algorithm, eras of 400 years starting on March 1st).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Handle on the process-wide logger returned by [`init`].
#[derive(Clone)]
pub struct LogHandle {
    logger: Arc<Logger>,
}

#[allow(dead_code)]
impl LogHandle {
    /// Changes the level at run time.
    pub fn set_level(&self, level: LogLevel) {
        self.logger.set_level(level);
    }

    /// The current level.
    pub fn level(&self) -> LogLevel {
        self.logger.level()
    }

    /// Adds a destination (e.g. the vsock log port).
    pub fn add_sink(&self, sink: Arc<dyn LogSink>) {
        self.logger.add_sink(sink);
    }

    /// Waits until queued records are written (at most `timeout` per sink), e.g. before exit.
    pub fn flush(&self, timeout: Duration) {
        self.logger.flush(timeout);
    }

    /// The underlying logger.
    pub fn logger(&self) -> &Arc<Logger> {
        &self.logger
    }
}

static GLOBAL: OnceLock<Arc<Logger>> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// Installs the JSON logger as the process-wide `tracing` subscriber, writing to stderr.
///
/// A second call only changes the level and returns a handle on the same logger.
#[allow(dead_code)]
pub fn init(level: LogLevel) -> LogHandle {
    init_with(
        level,
        Vec::new(),
        None::<tracing_subscriber::layer::Identity>,
    )
}

/// Like [`init`], with more sinks (e.g. a [`HostSink`]) that receive every record from the first
/// one on, and an extra layer (e.g. the OpenTelemetry layer) under the JSON layer. The extra
/// sinks and layer are only used by the first call.
pub fn init_with<L>(level: LogLevel, sinks: Vec<Arc<dyn LogSink>>, extra: Option<L>) -> LogHandle
where
    L: Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let logger = GLOBAL.get_or_init(|| {
        let logger = Logger::new(level);
        logger.add_sink(Arc::new(QueuedSink::stderr()));
        for sink in sinks {
            logger.add_sink(sink);
        }
        let subscriber = tracing_subscriber::registry()
            .with(extra)
            .with(JsonLayer::new(logger.clone()));
        // Fails only if another global subscriber exists (never in the agent); records then go
        // to that subscriber instead.
        let _ = tracing::subscriber::set_global_default(subscriber);
        logger
    });
    logger.set_level(level);
    LogHandle {
        logger: logger.clone(),
    }
}

/// Changes the level of the process-wide logger (no effect before [`init`]).
#[allow(dead_code)]
pub fn set_level(level: LogLevel) {
    if let Some(logger) = GLOBAL.get() {
        logger.set_level(level);
    }
}

#[cfg(test)]
mod tests;
