//! A small blocking client of the QEMU Machine Protocol (QMP): JSON objects, one per line, over
//! the unix socket given to `-qmp`. Used for hot-plug (`device_add`, `blockdev-add`, ...) and to
//! inspect the machine (`query-pci`, `query-hotpluggable-cpus`).
//!
//! The protocol: QEMU greets with `{"QMP": ...}`; the client must send `qmp_capabilities` first;
//! each `{"execute": ..., "arguments": ..., "id": N}` is answered by `{"return": ..., "id": N}`
//! or `{"error": {"class": ..., "desc": ...}, "id": N}`; asynchronous `{"event": ...}` objects
//! may arrive at any time and are kept for [`Qmp::wait_event`].

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// An open QMP session.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    /// Events received so far and not yet taken by [`Qmp::wait_event`].
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects to the QMP socket at `path` and negotiates capabilities.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot connect to QMP at {}", path.display()))
                }
            }
        };
        stream.set_read_timeout(Some(timeout))?;
        let writer = stream.try_clone()?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
            events: Vec::new(),
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            bail!("unexpected QMP greeting: {greeting}");
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .context("cannot read from the QMP socket")?;
        if n == 0 {
            bail!("QEMU closed the QMP connection");
        }
        serde_json::from_str(&line).with_context(|| format!("invalid QMP message {line:?}"))
    }

    /// Runs one command; returns its `return` value or an error carrying QEMU's description.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"execute": command, "id": id});
        if arguments.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = arguments;
        }
        let mut text = msg.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .with_context(|| format!("cannot send the QMP command {command}"))?;
        loop {
            let reply = self.read_message()?;
            if reply.get("event").is_some() {
                self.events.push(reply);
                continue;
            }
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(err) = reply.get("error") {
                bail!(
                    "QMP {command} failed: {}: {}",
                    err["class"].as_str().unwrap_or("?"),
                    err["desc"].as_str().unwrap_or("?")
                );
            }
            return Ok(reply.get("return").cloned().unwrap_or(Value::Null));
        }
    }

    /// Waits for an event named `name` (e.g. `DEVICE_DELETED`) and returns it.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
                return Ok(self.events.remove(i));
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| anyhow!("no QMP event {name} within {timeout:?}"))?;
            self.reader.get_ref().set_read_timeout(Some(left))?;
            let msg = self.read_message();
            self.reader.get_ref().set_read_timeout(Some(timeout))?;
            let msg = msg.map_err(|e| anyhow!("waiting for the QMP event {name}: {e:#}"))?;
            if msg.get("event").is_some() {
                self.events.push(msg);
            }
        }
    }
}
