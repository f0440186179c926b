//! `kata-agent`: the Kata Containers guest agent.
//!
//! Start-up: PID-1 duties (init mode) or subreaper set-up (standalone), configuration, logging, the
//! child reaper, then the ttRPC server until DestroySandbox or a termination signal.

mod agent;
mod config;
mod console;
mod container;
mod device;
mod endpoint;
mod error;
mod guest;
mod hostpath;
mod init;
mod io;
mod lifecycle;
mod log_level;
mod logging;
mod mem_agent;
mod metrics;
mod namespaces;
mod network;
mod oci;
mod passfd;
mod policy;
mod rpc;
mod sandbox;
mod server;
mod shared_mount;
mod storage;
mod telemetry;
mod version;

use std::sync::Arc;

use tracing::{error, info, warn};

const USAGE: &str = "\
Usage: kata-agent [OPTIONS]

The Kata Containers guest agent. It serves the Kata agent API (ttRPC) on the address given by
agent.server_addr on the kernel command line or KATA_AGENT_SERVER_ADDR (default vsock://-1:1024).

Options:
  -c, --config <FILE>  Read the configuration from this TOML file instead of /proc/cmdline
  -v, --version        Print the version and exit
  -h, --help           Print this help and exit

Environment:
  KATA_AGENT_SERVER_ADDR   address to serve on (unix:///path, unix://@name, vsock://CID:PORT)
  KATA_AGENT_LOG_LEVEL     trace, debug, info, warn or error
  KATA_AGENT_TRACING       true/false
  KATA_AGENT_LOG_ADDR, KATA_AGENT_DEBUG_CONSOLE_ADDR, KATA_AGENT_TRACE_ADDR
                           log stream, debug console and trace export addresses (unix:///path or
                           vsock://CID:PORT) instead of the vsock ports; see docs/observability.md
  KATA_AGENT_RUN_DIR       where container bundles and sandbox state live (default /run/kata-containers)
  KATA_AGENT_POLICY_FILE   Rego policy deciding every request (see docs/policy.md)
See docs/configuration.md for every option.
";

/// Async worker threads by default (see `KATA_AGENT_WORKER_THREADS`).
const DEFAULT_WORKER_THREADS: usize = 2;

fn main() {
    let args: Vec<String> = std::env::args().collect();

    // The container engine re-executes this binary as `kata-agent init` to set a container up in a
    // fresh single-threaded process.
    if args.get(1).map(String::as_str) == Some("init") {
        engine::child::run();
    }

    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "-v" | "--version" => {
                println!("{}", version::version_line());
                return;
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                return;
            }
            "-c" | "--config" => {
                if iter.next().is_none() {
                    eprintln!("kata-agent: {arg} needs a file argument\n\n{USAGE}");
                    std::process::exit(2);
                }
            }
            other if other.starts_with("--config=") => {}
            other => {
                eprintln!("kata-agent: unknown argument {other:?}\n\n{USAGE}");
                std::process::exit(2);
            }
        }
    }

    // One malloc arena per core at most: every thread getting its own arena costs resident
    // memory for nothing in an agent whose threads mostly wait.
    // SAFETY: mallopt with integer arguments, before any other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    let init_mode = nix::unistd::getpid().as_raw() == 1;
    let code = match run(&args, init_mode) {
        Ok(()) => 0,
        Err(e) => {
            error!(error = %error::chain_message(&e), "the agent stopped on an error");
            eprintln!("kata-agent: {}", error::chain_message(&e));
            1
        }
    };
    eprintln!("kata-agent shutdown complete");
    if init_mode {
        init::power_off();
    }
    std::process::exit(code);
}

fn run(args: &[String], init_mode: bool) -> anyhow::Result<()> {
    if init_mode {
        // Mounts come before the configuration: /proc/cmdline needs /proc.
        init::setup_base_mounts()?;
    }
    let (cfg, warnings) = config::AgentConfig::load(args)?;
    let cfg = Arc::new(cfg);
    // Log stream to the host and trace export: both must be in place before the first record.
    let mut sinks: Vec<Arc<dyn logging::LogSink>> = Vec::new();
    if let Some(ep) = cfg.log_endpoint()? {
        let sink = logging::HostSink::listen(&ep, logging::HOST_BUFFER_BYTES)
            .map_err(|e| anyhow::anyhow!("cannot listen for the log stream on {ep}: {e}"))?;
        sinks.push(Arc::new(sink));
    }
    let (telemetry, otel_layer) = telemetry::setup(&cfg)?.unzip();
    let log = logging::init_with(cfg.log_level, sinks, otel_layer);
    if let Some(t) = &telemetry {
        t.start();
    }
    for w in warnings {
        warn!(subsystem = "config", "{w}");
    }
    info!(
        agent_version = version::VERSION,
        api_version = version::API_VERSION,
        init_mode,
        config = ?cfg,
        "announce"
    );

    if init_mode {
        init::setup_init_mode(&cfg)?;
    }
    if cfg.dev_mode {
        if let Err(e) = init::setup_devmode() {
            warn!(error = %e, "cannot enable core dumps for devmode");
        }
    }
    // The policy is in force before the first request can arrive; one that does not load stops
    // the agent.
    // At debug level the inputs the policy decides are logged too (`/tmp/policy.jsonl`).
    policy::startup(
        cfg.policy_file.as_deref(),
        std::path::Path::new(policy::DEFAULT_POLICY_FILE),
        (cfg.log_level >= log_level::LogLevel::Debug).then_some(cfg.policy_log.as_path()),
    )?;
    init::set_subreaper()?;
    engine::reaper::start();

    // KATA_AGENT_WORKER_THREADS: async worker threads (0 = everything on the main thread).
    let workers = std::env::var("KATA_AGENT_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(DEFAULT_WORKER_THREADS)
        .min(64);
    let runtime = if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    let agent = agent::Agent::new(cfg.clone(), init_mode);
    // Hot-plugged devices announce themselves through uevents: listen from the start.
    if let Err(e) = agent.devices.start_listener() {
        warn!(subsystem = "uevent", error = %e, "cannot listen for uevents; device hot-plug waits will time out");
    }
    let reason = runtime.block_on(async {
        let console = console::start(&cfg).unwrap_or_else(|e| {
            error!(subsystem = "debug-console", error = %e, "the debug console did not start");
            None
        });
        if let Err(e) = passfd::start(&cfg) {
            error!(subsystem = "passfd", error = %format!("{e:#}"), "the pass-fd stream listener did not start");
        }
        let mem_agent = mem_agent::start(&cfg, init_mode);
        let reason = server::serve(agent.clone(), &cfg.server_addr).await;
        if let Some(m) = mem_agent {
            m.stop().await;
        }
        if let Some(console) = console {
            console.stop(std::time::Duration::from_secs(5)).await;
        }
        let reason = reason?;
        if let server::StopReason::Signal(sig) = reason {
            info!(signal = sig, "stopping on signal");
            rpc::shutdown_cleanup(&agent).await;
        }
        anyhow::Ok(reason)
    })?;
    info!(reason = ?reason, "agent stopped");
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    if let Some(t) = telemetry {
        t.shutdown(std::time::Duration::from_secs(5));
    }
    log.flush(std::time::Duration::from_secs(2));
    Ok(())
}
