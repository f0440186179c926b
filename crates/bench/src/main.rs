//! Benchmark harness: prints the figures we compete with the upstream agent on.
//!
//! * start-up: agent spawn to the first answered `Check`;
//! * container create + start + wait (+ remove) latency;
//! * RemoveContainer of an exited container, DestroySandbox with N containers;
//! * exec (ExecProcess + WaitProcess) latency;
//! * stdout and stdin throughput through ReadStdout / WriteStdin, and stdout through a pass-fd
//!   stream;
//! * agent memory (RSS, PSS) and threads idle and with N running containers;
//! * binary size (and whether it is static).
//!
//! Run as root: `cargo run --release -p bench -- [--agent PATH] [--rootfs DIR] [--iterations N] [--runs N]`.
//! Latencies are reported as median / p90 / min over the iterations; the machines are noisy, so
//! compare medians.

mod agent;
mod lifecycle;
mod ops;
mod policy;
mod soak;
mod stdio;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::health::CheckRequest;
use protocols::health_ttrpc::HealthClient;

use crate::agent::AgentProc;
use crate::ops::{create_container, ctx, remove, sandbox, start};

pub struct Options {
    pub agent: PathBuf,
    pub rootfs: PathBuf,
    pub iterations: usize,
    pub containers: usize,
    pub throughput_mib: usize,
    /// Throughput runs (the median is reported).
    pub runs: usize,
    /// `--policy`: only the agent policy figures (see policy.rs).
    pub policy: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench [--agent PATH] [--rootfs DIR] [--iterations N] [--containers N] [--mib N] [--runs N] [--policy]\n\
         defaults: target/release/kata-agent, build/rootfs, 20 iterations, 20 containers, 256 MiB, 3 runs"
    );
    std::process::exit(2)
}

fn parse_options() -> Options {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut o = Options {
        agent: root.join("target/release/kata-agent"),
        rootfs: root.join("build/rootfs"),
        iterations: 20,
        containers: 20,
        throughput_mib: 256,
        runs: 3,
        policy: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--agent" => o.agent = value().into(),
            "--rootfs" => o.rootfs = value().into(),
            "--iterations" => o.iterations = value().parse().unwrap_or_else(|_| usage()),
            "--containers" => o.containers = value().parse().unwrap_or_else(|_| usage()),
            "--mib" => o.throughput_mib = value().parse().unwrap_or_else(|_| usage()),
            "--runs" => o.runs = value().parse::<usize>().unwrap_or_else(|_| usage()).max(1),
            "--policy" => o.policy = true,
            _ => usage(),
        }
    }
    o
}

async fn bench_agent(o: &Options) -> Result<()> {
    let a = AgentProc::spawn_with(&o.agent, "main", true)?;
    let conn = a.connect().await?;
    let client = AgentServiceClient::new(conn.clone());
    HealthClient::new(conn)
        .check(ctx(), &CheckRequest::new())
        .await?;
    let idle = (a.memory(), a.threads());
    sandbox(&client).await?;

    lifecycle::containers(o, &client).await?;
    create_container(&client, &o.rootfs, "host", "exec sleep 100000").await?;
    start(&client, "host").await?;
    lifecycle::execs(o, &client).await?;
    stdio::stdout(o, &client).await?;
    stdio::stdin(o, &client).await?;
    if let Err(e) = stdio::passfd(o, &a, &client).await {
        // An agent without the pass-fd listener (an older build, for comparisons).
        println!(
            "{:<40} not measured: {e:#}",
            "stdout throughput, pass-fd stream"
        );
    }
    remove(&client, "host").await?;
    lifecycle::memory(o, &a, &client, idle).await
}
/// True when the ELF file has no PT_INTERP program header (statically linked).
fn is_static(path: &Path) -> Option<bool> {
    let data = std::fs::read(path).ok()?;
    if data.len() < 64 || &data[0..4] != b"\x7fELF" || data[4] != 2 {
        return None;
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[0x20..0x28].try_into().ok()?) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    let interp = (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()) == 3)
            .unwrap_or(false)
    });
    Some(!interp)
}

fn main() -> Result<()> {
    if std::env::args().nth(1).as_deref() == Some("soak") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return rt.block_on(soak::main(std::env::args().skip(2).collect()));
    }
    let mut o = parse_options();
    if unsafe { libc::geteuid() } != 0 {
        bail!("run the benchmarks as root (the agent creates namespaces and cgroups)");
    }
    if !o.agent.exists() {
        bail!(
            "{} is missing: build it with scripts/build-static.sh or cargo build --release -p kata-agent",
            o.agent.display()
        );
    }
    if !o.rootfs.join("bin/sh").exists() {
        bail!(
            "{} has no /bin/sh: run scripts/mkrootfs.sh",
            o.rootfs.display()
        );
    }
    // The agent takes absolute root paths only (`--rootfs build/rootfs` is natural to type).
    o.rootfs = std::fs::canonicalize(&o.rootfs)?;
    let size = std::fs::metadata(&o.agent)?.len();
    println!("agent binary {}", o.agent.display());
    println!(
        "{:<40} {:>9.2} MiB ({} bytes), {}",
        "binary size",
        size as f64 / (1 << 20) as f64,
        size,
        match is_static(&o.agent) {
            Some(true) => "statically linked",
            Some(false) => "dynamically linked",
            None => "not an ELF64 file",
        }
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if o.policy {
        return rt.block_on(policy::bench_policy(&o));
    }
    rt.block_on(async {
        lifecycle::startup(&o).await?;
        bench_agent(&o).await
    })
}
