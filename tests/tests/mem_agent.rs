//! The memory agent through the real `kata-agent` binary (standalone, on this host): off by
//! default, enabled from the kernel command line or the configuration file, and its settings
//! changed with MemAgentMemcgSet / MemAgentCompactSet. This host's kernel has no MGLRU, so the
//! memcg part reports that while compaction runs. (The guest kernel has MGLRU: see
//! tests/tests/vm_mem_agent.rs for aging, eviction and compaction actually running.)

use std::time::{Duration, Instant};

use e2e::{ctx, AgentOptions, TestAgent};
use protocols::agent::{MemAgentCompactConfig, MemAgentMemcgConfig};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn code_of<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> (ttrpc::Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected an RPC status error, got {other:?}"),
    }
}

fn host_has_mglru() -> bool {
    std::path::Path::new("/sys/kernel/mm/lru_gen/enabled").exists()
}

/// Waits until the agent's log holds `needle` (log records are written asynchronously).
fn wait_log(agent: &TestAgent, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = agent.log();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the agent log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Periods long enough that no round runs during a test: compaction would act on this host.
const QUIET: &str =
    "agent.mem_agent_memcg_period_secs=3600 agent.mem_agent_compact_period_secs=3600";

#[test]
fn mem_agent_off_answers_failed_precondition() {
    let agent = TestAgent::start();
    rt().block_on(async {
        let (client, _) = agent.clients().await;
        let (code, msg) = code_of(
            client
                .mem_agent_memcg_set(ctx(), &MemAgentMemcgConfig::new())
                .await,
        );
        assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION);
        assert!(msg.contains("agent.mem_agent_enable=1"), "{msg}");
        let mut req = MemAgentCompactConfig::new();
        req.period_secs = Some(10);
        let (code, msg) = code_of(client.mem_agent_compact_set(ctx(), &req).await);
        assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION);
        assert!(msg.contains("memory agent is off"), "{msg}");
    });
    assert!(!agent.log().contains("memory agent started"));
}

#[test]
fn mem_agent_enabled_changes_settings() {
    let agent = TestAgent::start_with(AgentOptions {
        cmdline: Some(format!(
            "{QUIET} agent.mem_agent_enable=1 agent.mem_agent_compact_order=8"
        )),
        ..Default::default()
    });
    wait_log(&agent, "memory agent started");
    rt().block_on(async {
        let (client, _) = agent.clients().await;

        // Compaction settings: only the given fields change.
        let mut req = MemAgentCompactConfig::new();
        req.compact_threshold = Some(4096);
        req.compact_force_times = Some(7);
        client.mem_agent_compact_set(ctx(), &req).await.unwrap();
        let log = wait_log(&agent, "memory agent compaction settings changed");
        assert!(
            log.contains("compact_threshold: 4096")
                && log.contains("compact_force_times: 7")
                && log.contains("compact_order: 8")
                && log.contains("period_secs: 3600"),
            "{log}"
        );

        // Out-of-range values are refused and change nothing.
        let mut bad = MemAgentCompactConfig::new();
        bad.compact_order = Some(300);
        let (code, msg) = code_of(client.mem_agent_compact_set(ctx(), &bad).await);
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
        assert!(msg.contains("compact_order"), "{msg}");
        let mut bad = MemAgentCompactConfig::new();
        bad.period_secs = Some(0);
        bad.compact_order = Some(3);
        let (code, _) = code_of(client.mem_agent_compact_set(ctx(), &bad).await);
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
        let mut req = MemAgentCompactConfig::new();
        req.disabled = Some(true);
        client.mem_agent_compact_set(ctx(), &req).await.unwrap();
        // The record goes through the logger's queue: it may land just after the reply.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let last = loop {
            let log = agent.log();
            let last = log
                .lines()
                .rev()
                .find(|l| l.contains("memory agent compaction settings changed"))
                .map(str::to_string);
            match last {
                Some(l) if l.contains("disabled: true") => break l,
                _ if std::time::Instant::now() > deadline => break last.unwrap_or_default(),
                _ => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        };
        assert!(
            last.contains("disabled: true") && last.contains("compact_order: 8"),
            "{last}"
        );

        // Memcg settings: refused naming MGLRU when the kernel lacks it.
        let mut req = MemAgentMemcgConfig::new();
        req.swappiness_max = Some(60);
        let r = client.mem_agent_memcg_set(ctx(), &req).await;
        if host_has_mglru() {
            r.unwrap();
            wait_log(&agent, "swappiness_max: 60");
        } else {
            let (code, msg) = code_of(r);
            assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION);
            assert!(msg.contains("lru_gen") && msg.contains("MGLRU"), "{msg}");
        }
        // Values that do not fit the settings are refused first.
        let mut bad = MemAgentMemcgConfig::new();
        bad.swappiness_max = Some(1000);
        let (code, msg) = code_of(client.mem_agent_memcg_set(ctx(), &bad).await);
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
        assert!(msg.contains("swappiness_max"), "{msg}");
    });
    if !host_has_mglru() {
        let log = agent.log();
        assert!(log.contains("the memcg part is off"), "{log}");
    }
    // The task stops with the agent.
    let mut agent = agent;
    let status = agent.stop_with(libc::SIGTERM);
    let log = agent.log();
    assert!(log.contains("memory agent stopped"), "{status}:\n{log}");
}

#[test]
fn mem_agent_from_the_configuration_file_and_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        "mem_agent_enable = true\nmem_agent_compact_period_secs = 3600\n\
         mem_agent_memcg_period_secs = 3600\nmem_agent_compact_sec_max = 5\n",
    )
    .unwrap();
    let agent = TestAgent::start_with(AgentOptions {
        args: vec!["--config".into(), file.display().to_string()],
        ..Default::default()
    });
    let log = wait_log(&agent, "memory agent started");
    assert!(log.contains("compact_sec_max: 5"), "{log}");
    rt().block_on(async {
        let (client, _) = agent.clients().await;
        let mut req = MemAgentCompactConfig::new();
        req.compact_sec_max = Some(9);
        client.mem_agent_compact_set(ctx(), &req).await.unwrap();
    });
    wait_log(&agent, "compact_sec_max: 9");

    // A bad mem-agent value stops the agent at start-up with a clear message.
    let cmdline = dir.path().join("cmdline");
    std::fs::write(
        &cmdline,
        "agent.mem_agent_enable=1 agent.mem_agent_memcg_period_secs=0",
    )
    .unwrap();
    let out = std::process::Command::new(e2e::binary("kata-agent"))
        .env_clear()
        .env("KATA_AGENT_CMDLINE", &cmdline)
        .env("KATA_AGENT_SERVER_ADDR", "unix:///nonexistent/never.sock")
        .env("KATA_AGENT_RUN_DIR", dir.path().join("run"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("agent.mem_agent_memcg_period_secs=0") && err.contains("at least 1 second"),
        "{err}"
    );
}
