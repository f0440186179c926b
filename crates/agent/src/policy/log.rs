//! The decision log: what the policy was asked, for whoever writes or debugs a policy.
//!
//! When the agent logs at debug level, every request input the policy decides is appended to
//! `/tmp/policy.jsonl` ([`super::DEFAULT_POLICY_LOG`]; `KATA_AGENT_POLICY_LOG` puts it elsewhere), one JSON object per line in the form
//! upstream's agent writes, `{"kind":"<request name>","request":<the input>}`, so that tools made
//! for upstream's log (genpolicy's test cases are built from it) read ours. As upstream does,
//! StatsContainer and ReadStream inputs (too frequent) and SetPolicy inputs (the whole policy) are
//! left out. The file is created afresh at start-up, without following a link, readable by root
//! only.
//!
//! Unlike upstream's, the log is bounded: the host decides how many requests it sends, and `/tmp`
//! of a guest is memory. Past [`MAX_LOG_BYTES`] nothing more is written and a warning says so.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use tracing::warn;

/// The most the log grows to.
pub const MAX_LOG_BYTES: u64 = 16 * 1024 * 1024;

/// Request inputs that are not logged.
const NOT_LOGGED: [&str; 3] = [
    "StatsContainerRequest",
    "ReadStreamRequest",
    "SetPolicyRequest",
];

/// An open decision log.
#[derive(Debug)]
pub struct DecisionLog {
    sink: Mutex<Sink>,
}

#[derive(Debug)]
struct Sink {
    file: File,
    written: u64,
    /// The size bound was reached (or a write failed): nothing more is written.
    closed: bool,
}

impl DecisionLog {
    /// Creates (or empties) the log at `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        Ok(DecisionLog {
            sink: Mutex::new(Sink {
                file,
                written: 0,
                closed: false,
            }),
        })
    }

    /// Whether the input of `name` is logged.
    pub fn wants(name: &str) -> bool {
        !NOT_LOGGED.contains(&name)
    }

    /// Appends the input of one decision.
    pub fn record(&self, name: &str, input: &regorus::Value) {
        if !Self::wants(name) {
            return;
        }
        let request = serde_json::to_value(input).unwrap_or_default().to_string();
        let line = format!(
            "{{\"kind\":{},\"request\":{request}}}\n",
            serde_json::Value::from(name)
        );
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        if sink.closed {
            return;
        }
        if sink.written + line.len() as u64 > MAX_LOG_BYTES {
            sink.closed = true;
            warn!(
                subsystem = "policy",
                limit = MAX_LOG_BYTES,
                "the policy decision log is full: no more requests are logged"
            );
            return;
        }
        match sink.file.write_all(line.as_bytes()) {
            Ok(()) => sink.written += line.len() as u64,
            Err(e) => {
                sink.closed = true;
                warn!(subsystem = "policy", error = %e, "cannot write the policy decision log");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_in_upstream_form_bounded_and_not_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.jsonl");
        std::fs::write(&path, "old content\n").unwrap();
        let log = DecisionLog::create(&path).unwrap();
        let input = regorus::Value::from_json_str(r#"{"container_id": "c1", "n": 3}"#).unwrap();
        log.record("ExecProcessRequest", &input);
        log.record("ReadStreamRequest", &input);
        log.record("StatsContainerRequest", &input);
        log.record("SetPolicyRequest", &input);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            vec![
                serde_json::json!({"kind": "ExecProcessRequest", "request": {"container_id": "c1", "n": 3}})
            ]
        );
        // Bounded: a big input fills it, then nothing more is written.
        let big = regorus::Value::from("x".repeat(1 << 20));
        for _ in 0..(MAX_LOG_BYTES >> 20) + 4 {
            log.record("CopyFileRequest", &big);
        }
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len <= MAX_LOG_BYTES, "{len}");
        assert!(len > MAX_LOG_BYTES - (2 << 20), "{len}");
        // A link in its place is not followed.
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(DecisionLog::create(&link).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }
}
