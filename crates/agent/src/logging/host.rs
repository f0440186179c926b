//! The log stream to the host (agent.log_vport): a listening socket, a byte-bounded buffer, and a writer thread.

use super::*;

/// Default bound of the [`HostSink`] buffer, in bytes of formatted records.
pub const HOST_BUFFER_BYTES: usize = 1 << 20;
/// How long a write to the host may stall before the connection is considered dead.
pub(super) const HOST_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Streams records to a host that connects to a listening socket (the log vport).
///
/// Records are queued in a buffer bounded by bytes; a writer thread sends them to the connected
/// host in order. While no host is connected (before the first connection, or after one went
/// away) records wait in the buffer; when it is full, new records are dropped and counted, and the
/// host gets a warning record with the count at the place where records are missing. A new
/// connection replaces the current one. Logging never waits for the host.
pub struct HostSink {
    pub(super) shared: Arc<HostShared>,
}

pub(super) struct HostShared {
    pub(super) state: Mutex<HostState>,
    /// Signalled when records are queued, a connection arrives, or the writer made progress.
    pub(super) changed: std::sync::Condvar,
    pub(super) capacity: usize,
}

/// An entry of the host buffer: a record, or the place where records were dropped.
pub(super) enum HostItem {
    Line(Vec<u8>),
    Gap(u64),
}

#[derive(Default)]
pub(super) struct HostState {
    pub(super) queue: std::collections::VecDeque<HostItem>,
    /// Bytes of the queued records (gaps cost nothing).
    pub(super) bytes: usize,
    /// Records dropped since the start.
    pub(super) dropped: u64,
    pub(super) conn: Option<Arc<crate::endpoint::StdStream>>,
    /// Bumped for every new connection, so that a failed write drops only its own connection.
    pub(super) generation: u64,
    /// A write is in progress (the queue may look empty while the last record is being sent).
    pub(super) writing: bool,
}

impl HostState {
    /// Counts a dropped record at the current end of the queue.
    pub(super) fn drop_records(&mut self, n: u64) {
        self.dropped += n;
        match self.queue.back_mut() {
            Some(HostItem::Gap(count)) => *count += n,
            _ => self.queue.push_back(HostItem::Gap(n)),
        }
    }
}

/// The record that tells the host how many records it missed at that point.
pub(super) fn gap_record(count: u64) -> Vec<u8> {
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
    pub(super) fn unconnected(capacity: usize) -> HostSink {
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
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HostState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn connect(&self, stream: crate::endpoint::StdStream) {
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

    pub(super) fn run(&self) {
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
