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
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// Value of the `name` key of every record.
pub const LOG_NAME: &str = "kata-agent";
/// Value of the `source` key of every record.
pub const LOG_SOURCE: &str = "agent";
/// Value of the `subsystem` key when neither the event nor a span sets one.
pub const DEFAULT_SUBSYSTEM: &str = "root";
/// Records the stderr queue holds before it starts dropping.
const QUEUE_CAPACITY: usize = 4096;

/// The agent's log levels, from the most to the least verbose.
///
/// Upstream also has `critical` (aliases `fatal`, `panic`); `tracing` has no such level, so those
/// names parse to [`LogLevel::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
    Trace = 4,
}

impl LogLevel {
    /// The accepted names, for error messages.
    pub const NAMES: &'static str =
        "trace, debug, info, warn, warning, error, critical, fatal, panic";

    fn from_u8(v: u8) -> LogLevel {
        match v {
            0 => LogLevel::Error,
            1 => LogLevel::Warn,
            2 => LogLevel::Info,
            3 => LogLevel::Debug,
            _ => LogLevel::Trace,
        }
    }

    fn of(level: &Level) -> LogLevel {
        match *level {
            Level::ERROR => LogLevel::Error,
            Level::WARN => LogLevel::Warn,
            Level::INFO => LogLevel::Info,
            Level::DEBUG => LogLevel::Debug,
            Level::TRACE => LogLevel::Trace,
        }
    }

    /// The short name used in the `level` key of a record.
    pub fn short_name(self) -> &'static str {
        match self {
            LogLevel::Error => "ERRO",
            LogLevel::Warn => "WARN",
            LogLevel::Info => "INFO",
            LogLevel::Debug => "DEBG",
            LogLevel::Trace => "TRCE",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        })
    }
}

/// Error returned when a log level name is not one of [`LogLevel::NAMES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownLogLevel(pub String);

impl fmt::Display for UnknownLogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown log level {:?} (expected one of {})",
            self.0,
            LogLevel::NAMES
        )
    }
}

impl std::error::Error for UnknownLogLevel {}

impl FromStr for LogLevel {
    type Err = UnknownLogLevel;

    /// Parses the upstream level names (case-sensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "trace" => LogLevel::Trace,
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" | "warning" => LogLevel::Warn,
            "error" | "critical" | "fatal" | "panic" => LogLevel::Error,
            _ => return Err(UnknownLogLevel(s.to_string())),
        })
    }
}

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

/// Default bound of the [`HostSink`] buffer, in bytes of formatted records.
pub const HOST_BUFFER_BYTES: usize = 1 << 20;
/// How long a write to the host may stall before the connection is considered dead.
const HOST_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Streams records to a host that connects to a listening socket (the log vport).
///
/// Records are queued in a buffer bounded by bytes; a writer thread sends them to the connected
/// host in order. While no host is connected (before the first connection, or after one went
/// away) records wait in the buffer; when it is full, new records are dropped and counted, and the
/// host gets a warning record with the count at the place where records are missing. A new
/// connection replaces the current one. Logging never waits for the host.
pub struct HostSink {
    shared: Arc<HostShared>,
}

struct HostShared {
    state: Mutex<HostState>,
    /// Signalled when records are queued, a connection arrives, or the writer made progress.
    changed: std::sync::Condvar,
    capacity: usize,
}

/// An entry of the host buffer: a record, or the place where records were dropped.
enum HostItem {
    Line(Vec<u8>),
    Gap(u64),
}

#[derive(Default)]
struct HostState {
    queue: std::collections::VecDeque<HostItem>,
    /// Bytes of the queued records (gaps cost nothing).
    bytes: usize,
    /// Records dropped since the start.
    dropped: u64,
    conn: Option<Arc<crate::endpoint::StdStream>>,
    /// Bumped for every new connection, so that a failed write drops only its own connection.
    generation: u64,
    /// A write is in progress (the queue may look empty while the last record is being sent).
    writing: bool,
}

impl HostState {
    /// Counts a dropped record at the current end of the queue.
    fn drop_records(&mut self, n: u64) {
        self.dropped += n;
        match self.queue.back_mut() {
            Some(HostItem::Gap(count)) => *count += n,
            _ => self.queue.push_back(HostItem::Gap(n)),
        }
    }
}

/// The record that tells the host how many records it missed at that point.
fn gap_record(count: u64) -> Vec<u8> {
    let mut fields = Fields::default();
    fields.set("subsystem".into(), Value::String("logging".into()));
    fields.set(
        "msg".into(),
        Value::String("log records dropped: the host was absent or slow".into()),
    );
    fields.set("dropped".into(), Value::from(count));
    format_record(
        SystemTime::now(),
        LogLevel::Warn,
        std::process::id(),
        &fields,
    )
}

impl HostSink {
    /// Binds `endpoint` and starts the accept and writer threads.
    pub fn listen(endpoint: &crate::endpoint::Endpoint, capacity: usize) -> io::Result<HostSink> {
        let listener = endpoint.listen_std()?;
        let sink = HostSink::unconnected(capacity);
        let shared = sink.shared.clone();
        std::thread::Builder::new()
            .name("log-accept".into())
            .spawn(move || loop {
                match listener.accept() {
                    Ok(stream) => shared.connect(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            })?;
        Ok(sink)
    }

    /// A sink with no listener: records are buffered until [`HostSink::connect`].
    fn unconnected(capacity: usize) -> HostSink {
        let shared = Arc::new(HostShared {
            state: Mutex::new(HostState::default()),
            changed: std::sync::Condvar::new(),
            capacity,
        });
        let writer = shared.clone();
        let _ = std::thread::Builder::new()
            .name("log-host".into())
            .spawn(move || writer.run());
        HostSink { shared }
    }

    /// Records dropped so far because the buffer was full.
    #[allow(dead_code)]
    pub fn dropped(&self) -> u64 {
        self.shared.lock().dropped
    }
}

impl HostShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HostState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn connect(&self, stream: crate::endpoint::StdStream) {
        let _ = stream.set_write_timeout(Some(HOST_WRITE_TIMEOUT));
        let mut st = self.lock();
        if let Some(old) = st.conn.take() {
            // Unblocks a writer stuck on the old connection.
            let _ = old.shutdown(std::net::Shutdown::Both);
        }
        st.conn = Some(Arc::new(stream));
        st.generation += 1;
        self.changed.notify_all();
    }

    fn run(&self) {
        let mut st = self.lock();
        loop {
            let conn = match &st.conn {
                Some(conn) if !st.queue.is_empty() => conn.clone(),
                _ => {
                    st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                    continue;
                }
            };
            let item = st.queue.pop_front().expect("checked above");
            let generation = st.generation;
            let line = match &item {
                HostItem::Line(line) => {
                    st.bytes -= line.len();
                    Cow::Borrowed(line.as_slice())
                }
                HostItem::Gap(n) => Cow::Owned(gap_record(*n)),
            };
            st.writing = true;
            drop(st);
            let result = (&*conn).write_all(&line);
            st = self.lock();
            st.writing = false;
            if result.is_err() {
                if st.generation == generation {
                    st.conn = None;
                }
                // The entry goes to the next host instead, if it still fits.
                match item {
                    HostItem::Line(line) if st.bytes + line.len() <= self.capacity => {
                        st.bytes += line.len();
                        st.queue.push_front(HostItem::Line(line));
                    }
                    HostItem::Line(_) => {
                        st.dropped += 1;
                        st.queue.push_front(HostItem::Gap(1));
                    }
                    gap => st.queue.push_front(gap),
                }
            }
            self.changed.notify_all();
        }
    }
}

impl LogSink for HostSink {
    fn write_record(&self, line: &[u8]) {
        let mut st = self.shared.lock();
        if st.bytes + line.len() > self.shared.capacity {
            st.drop_records(1);
            return;
        }
        st.bytes += line.len();
        st.queue.push_back(HostItem::Line(line.to_vec()));
        self.shared.changed.notify_all();
    }

    /// Waits until the buffer is sent, but only while a host is connected.
    fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        while st.conn.is_some() && (!st.queue.is_empty() || st.writing) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
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
mod tests {
    use super::*;
    use tracing::{debug, error, info, info_span, trace, warn};

    #[derive(Default)]
    struct MemorySink(Mutex<Vec<Vec<u8>>>);

    impl LogSink for MemorySink {
        fn write_record(&self, line: &[u8]) {
            self.0.lock().unwrap().push(line.to_vec());
        }
    }

    impl MemorySink {
        fn records(&self) -> Vec<serde_json::Map<String, Value>> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|line| {
                    assert_eq!(line.last(), Some(&b'\n'), "a record ends with a newline");
                    assert_eq!(
                        line.iter().filter(|&&b| b == b'\n').count(),
                        1,
                        "one line per record"
                    );
                    match serde_json::from_slice::<Value>(line).expect("a record is JSON") {
                        Value::Object(map) => map,
                        other => panic!("a record is an object, got {other}"),
                    }
                })
                .collect()
        }
    }

    /// Runs `f` with a thread-local subscriber writing to a memory sink.
    fn capture(
        level: LogLevel,
        f: impl FnOnce(&Arc<Logger>),
    ) -> Vec<serde_json::Map<String, Value>> {
        let logger = Logger::new(level);
        let sink = Arc::new(MemorySink::default());
        logger.add_sink(sink.clone());
        let subscriber = tracing_subscriber::registry().with(JsonLayer::new(logger.clone()));
        tracing::subscriber::with_default(subscriber, || f(&logger));
        sink.records()
    }

    #[test]
    fn record_has_every_fixed_key() {
        let records = capture(LogLevel::Info, |_| {
            info!(container = "abc", count = 3u64, "hello")
        });
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!(r["level"], "INFO");
        assert_eq!(r["msg"], "hello");
        assert_eq!(r["name"], "kata-agent");
        assert_eq!(r["pid"], std::process::id().to_string());
        assert_eq!(r["source"], "agent");
        assert_eq!(r["subsystem"], "root");
        assert_eq!(r["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(r["container"], "abc");
        assert_eq!(r["count"], 3);
        let ts = r["ts"].as_str().unwrap();
        // 2023-11-14T22:13:20.123456Z
        assert_eq!(ts.len(), 27, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.as_bytes()[19] == b'.');
    }

    #[test]
    fn fixed_keys_come_first_in_order() {
        let line = format_record(UNIX_EPOCH, LogLevel::Warn, 42, &Fields::default());
        let text = String::from_utf8(line).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"ts\":\"1970-01-01T00:00:00.000000Z\",\"level\":\"WARN\",\"msg\":\"\",\"name\":\"kata-agent\",\"pid\":\"42\",\"source\":\"agent\",\"subsystem\":\"root\",\"version\":\"{}\"}}\n",
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    #[test]
    fn level_names() {
        let records = capture(LogLevel::Trace, |_| {
            trace!("t");
            debug!("d");
            info!("i");
            warn!("w");
            error!("e");
        });
        let levels: Vec<_> = records
            .iter()
            .map(|r| r["level"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(levels, ["TRCE", "DEBG", "INFO", "WARN", "ERRO"]);
    }

    #[test]
    fn level_filtering_and_runtime_change() {
        let records = capture(LogLevel::Warn, |logger| {
            info!("dropped");
            warn!("kept 1");
            error!("kept 2");
            logger.set_level(LogLevel::Debug);
            debug!("kept 3");
            trace!("dropped");
            logger.set_level(LogLevel::Error);
            warn!("dropped");
            error!("kept 4");
        });
        let msgs: Vec<_> = records
            .iter()
            .map(|r| r["msg"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(msgs, ["kept 1", "kept 2", "kept 3", "kept 4"]);
    }

    #[test]
    fn span_and_event_fields_merge() {
        let records = capture(LogLevel::Info, |_| {
            let outer = info_span!("outer", subsystem = "rpc", a = 1u64, b = "outer");
            let _o = outer.enter();
            let inner = info_span!("inner", b = "inner", c = true);
            let _i = inner.enter();
            info!(c = false, d = 2.5, "merged");
        });
        let r = &records[0];
        assert_eq!(r["subsystem"], "rpc");
        assert_eq!(r["a"], 1);
        assert_eq!(r["b"], "inner", "inner span wins over outer");
        assert_eq!(r["c"], false, "event wins over span");
        assert_eq!(r["d"], 2.5);
    }

    #[test]
    fn debug_level_spans_still_give_fields_at_info() {
        let records = capture(LogLevel::Info, |_| {
            let span = tracing::debug_span!("quiet", subsystem = "uevent");
            let _e = span.enter();
            info!("inside");
        });
        assert_eq!(records[0]["subsystem"], "uevent");
    }

    #[test]
    fn event_subsystem_and_field_kinds() {
        let err = std::io::Error::other("boom \"quoted\"");
        let records = capture(LogLevel::Info, |_| {
            info!(subsystem = "mount", error = %err, dbg = ?vec![1, 2], neg = -5i64, "with fields");
            let span = info_span!("recorded", late = tracing::field::Empty);
            span.record("late", "value");
            let _e = span.enter();
            info!(name = "custom", ts = "ignored", "override");
        });
        assert_eq!(records[0]["subsystem"], "mount");
        assert_eq!(records[0]["error"], "boom \"quoted\"");
        assert_eq!(records[0]["dbg"], "[1, 2]");
        assert_eq!(records[0]["neg"], -5);
        assert_eq!(records[1]["late"], "value");
        assert_eq!(
            records[1]["name"], "custom",
            "a record key wins over a fixed key"
        );
        assert_ne!(records[1]["ts"], "ignored", "ts cannot be overridden");
    }

    #[test]
    fn multiple_sinks_get_every_record() {
        let logger = Logger::new(LogLevel::Info);
        let a = Arc::new(MemorySink::default());
        let b = Arc::new(MemorySink::default());
        logger.add_sink(a.clone());
        let subscriber = tracing_subscriber::registry().with(JsonLayer::new(logger.clone()));
        tracing::subscriber::with_default(subscriber, || {
            info!("one");
            logger.add_sink(b.clone());
            info!("two");
        });
        assert_eq!(a.records().len(), 2);
        assert_eq!(b.records().len(), 1);
    }

    #[test]
    fn queued_sink_writes_in_order_and_flushes() {
        #[derive(Clone, Default)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Shared::default();
        let sink = QueuedSink::new("test-sink", out.clone(), 16);
        sink.write_record(b"a\n");
        sink.write_record(b"b\n");
        sink.flush(Duration::from_secs(5));
        assert_eq!(&*out.0.lock().unwrap(), b"a\nb\n");
        assert_eq!(sink.dropped(), 0);
    }

    #[test]
    fn queued_sink_drops_instead_of_blocking() {
        struct Blocked(Arc<Mutex<()>>);
        impl Write for Blocked {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                drop(self.0.lock().unwrap());
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let sink = QueuedSink::new("test-blocked", Blocked(gate.clone()), 2);
        let start = Instant::now();
        for _ in 0..100 {
            sink.write_record(b"x\n");
        }
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(sink.dropped() >= 90, "dropped {}", sink.dropped());
        drop(held);
        sink.flush(Duration::from_secs(5));
    }

    fn host_pair(capacity: usize) -> (HostSink, impl FnMut() -> Option<Vec<u8>>) {
        let sink = HostSink::unconnected(capacity);
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let shared = sink.shared.clone();
        let connect = move || shared.connect(crate::endpoint::StdStream::Unix(ours));
        let mut connect = Some(connect);
        let mut reader = std::io::BufReader::new(theirs);
        let next = move || {
            if let Some(c) = connect.take() {
                c();
                reader
                    .get_ref()
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
            }
            let mut line = Vec::new();
            match std::io::BufRead::read_until(&mut reader, b'\n', &mut line) {
                Ok(n) if n > 0 => Some(line),
                _ => None,
            }
        };
        (sink, next)
    }

    #[test]
    fn host_sink_keeps_records_until_the_host_connects() {
        let (sink, mut next) = host_pair(3 * 8);
        for i in 0..5 {
            sink.write_record(format!("record{i}\n").as_bytes());
            std::thread::yield_now();
        }
        assert_eq!(sink.dropped(), 2);
        // The writer thread is awake but has nowhere to send: the records stay queued.
        std::thread::sleep(Duration::from_millis(50));
        for i in 0..3 {
            assert_eq!(next().unwrap(), format!("record{i}\n").into_bytes());
        }
        let gap: Value = serde_json::from_slice(&next().unwrap()).unwrap();
        assert_eq!(gap["level"], "WARN");
        assert_eq!(gap["dropped"], 2);
        // Connected: later records flow through.
        sink.write_record(b"later\n");
        assert_eq!(next().unwrap(), b"later\n");
        sink.flush(Duration::from_secs(5));
    }

    #[test]
    fn host_sink_never_blocks_on_a_reader_that_does_not_read() {
        let (sink, mut next) = host_pair(64 * 1024);
        sink.write_record(b"first\n");
        assert_eq!(next().unwrap(), b"first\n"); // connected, then the reader stops reading
        let line = vec![b'x'; 1023];
        let start = Instant::now();
        for _ in 0..10_000 {
            sink.write_record(&[line.as_slice(), b"\n"].concat());
        }
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(sink.dropped() > 0);
    }

    #[test]
    fn host_sink_moves_to_a_new_connection() {
        let sink = HostSink::unconnected(1024);
        let (a, mut a_peer) = std::os::unix::net::UnixStream::pair().unwrap();
        sink.shared.connect(crate::endpoint::StdStream::Unix(a));
        sink.write_record(b"one\n");
        let mut buf = [0u8; 4];
        std::io::Read::read_exact(&mut a_peer, &mut buf).unwrap();
        assert_eq!(&buf, b"one\n");
        let (b, mut b_peer) = std::os::unix::net::UnixStream::pair().unwrap();
        sink.shared.connect(crate::endpoint::StdStream::Unix(b));
        sink.write_record(b"two\n");
        b_peer
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        std::io::Read::read_exact(&mut b_peer, &mut buf).unwrap();
        assert_eq!(&buf, b"two\n");
        // The old connection was shut down.
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut a_peer, &mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn failing_writer_is_ignored() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            }
        }
        let sink = QueuedSink::new("test-broken", Broken, 4);
        sink.write_record(b"x\n");
        sink.flush(Duration::from_secs(5));
        sink.write_record(b"y\n");
        sink.flush(Duration::from_secs(5));
    }

    #[test]
    fn rfc3339_formatting() {
        let at = |secs: u64, micros: u64| {
            format_rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 1), "2000-02-29T00:00:00.000001Z");
        assert_eq!(at(1_700_000_000, 123_456), "2023-11-14T22:13:20.123456Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
        assert_eq!(at(1_709_251_199, 0), "2024-02-29T23:59:59.000000Z");
    }

    #[test]
    fn log_level_names_parse() {
        for (name, level) in [
            ("trace", LogLevel::Trace),
            ("debug", LogLevel::Debug),
            ("info", LogLevel::Info),
            ("warn", LogLevel::Warn),
            ("warning", LogLevel::Warn),
            ("error", LogLevel::Error),
            ("critical", LogLevel::Error),
            ("fatal", LogLevel::Error),
            ("panic", LogLevel::Error),
        ] {
            assert_eq!(name.parse::<LogLevel>(), Ok(level), "{name}");
        }
        for bad in ["", "INFO", "verbose", "debug "] {
            let err = bad.parse::<LogLevel>().unwrap_err();
            assert!(err.to_string().contains("unknown log level"), "{err}");
        }
        assert_eq!(LogLevel::Debug.to_string(), "debug");
    }

    #[test]
    fn global_init_is_idempotent() {
        let h1 = init(LogLevel::Info);
        let h2 = init(LogLevel::Debug);
        assert!(Arc::ptr_eq(h1.logger(), h2.logger()));
        assert_eq!(h1.level(), LogLevel::Debug);
        set_level(LogLevel::Error);
        assert_eq!(h2.level(), LogLevel::Error);
        h1.flush(Duration::from_secs(1));
    }
}
