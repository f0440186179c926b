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
fn capture(level: LogLevel, f: impl FnOnce(&Arc<Logger>)) -> Vec<serde_json::Map<String, Value>> {
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
