//! One agent process on a private socket and run directory, and what the harness reads about it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct AgentProc {
    pub child: Child,
    pub dir: PathBuf,
    pub addr: String,
    /// Unix form of the pass-fd listener (`KATA_AGENT_PASSFD_ADDR`).
    pub passfd: PathBuf,
}

impl AgentProc {
    pub fn spawn(binary: &Path, tag: &str) -> Result<AgentProc> {
        Self::spawn_with(binary, tag, false)
    }

    /// With `passfd`, the pass-fd listener listens on `<dir>/passfd.sock`.
    pub fn spawn_with(binary: &Path, tag: &str, passfd_listener: bool) -> Result<AgentProc> {
        let dir = std::env::temp_dir().join(format!("kata-bench-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("cmdline"), "")?;
        std::fs::write(dir.join("resolv.conf"), "")?;
        let addr = format!("unix://{}/agent.sock", dir.display());
        let passfd = dir.join("passfd.sock");
        let mut cmd = Command::new(binary);
        cmd.env("KATA_AGENT_SERVER_ADDR", &addr)
            .env("KATA_AGENT_RUN_DIR", dir.join("run"))
            .env("KATA_AGENT_SANDBOX_NS_DIR", dir.join("ns"))
            .env("KATA_AGENT_RESOLV_CONF", dir.join("resolv.conf"))
            .env("KATA_AGENT_CMDLINE", dir.join("cmdline"))
            .env("KATA_AGENT_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if passfd_listener {
            cmd.env(
                "KATA_AGENT_PASSFD_ADDR",
                format!("unix://{}", passfd.display()),
            );
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(AgentProc {
            child,
            dir,
            addr,
            passfd,
        })
    }

    pub async fn connect(&self) -> Result<ttrpc::r#async::Client> {
        let path = self.addr.trim_start_matches("unix://");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::path::Path::new(path).exists() {
                if let Ok(c) = ttrpc::r#async::Client::connect(&self.addr).await {
                    return Ok(c);
                }
            }
            if Instant::now() > deadline {
                bail!("the agent did not listen on {} within 10 s", self.addr);
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    /// (RSS, PSS) in KiB.
    pub fn memory(&self) -> (u64, u64) {
        let pid = self.child.id();
        let rss = read_kib(&format!("/proc/{pid}/status"), "VmRSS:");
        let pss = read_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:");
        (rss, pss)
    }

    /// Threads of the agent: (all, tokio's). Tokio's blocking pool grows and shrinks with load
    /// (idle threads linger for 10 s), so per-container thread cost is read from the others.
    pub fn threads(&self) -> (usize, usize) {
        let pid = self.child.id();
        let mut all = 0;
        let mut tokio = 0;
        if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in d.flatten() {
                all += 1;
                let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                if comm.trim().starts_with("tokio") {
                    tokio += 1;
                }
            }
        }
        (all, tokio)
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        // SAFETY: kill with integer arguments on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_kib(file: &str, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}
