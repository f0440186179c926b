//! Start-up, container and exec latency, teardown, memory and threads.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use protocols::agent;
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::health::CheckRequest;
use protocols::health_ttrpc::HealthClient;

use crate::agent::AgentProc;
use crate::ops::*;
use crate::Options;

pub async fn startup(o: &Options) -> Result<()> {
    let mut times = Vec::new();
    for i in 0..o.iterations {
        let start = Instant::now();
        let a = AgentProc::spawn(&o.agent, &format!("start{i}"))?;
        let health = HealthClient::new(a.connect().await?);
        health
            .check(ctx(), &CheckRequest::new())
            .await
            .context("Check")?;
        times.push(start.elapsed());
    }
    print_latency("start-up to first answered Check", times);
    Ok(())
}

/// Create + start + wait (+ remove) of `sh -c true`, and RemoveContainer of the exited container.
pub async fn containers(o: &Options, client: &AgentServiceClient) -> Result<()> {
    let mut cycle = Vec::new();
    let mut with_remove = Vec::new();
    let mut removes = Vec::new();
    for i in 0..o.iterations {
        let id = format!("lat{i}");
        let t = Instant::now();
        create_container(client, &o.rootfs, &id, "true").await?;
        start(client, &id).await?;
        let code = wait(client, &id, "").await?;
        cycle.push(t.elapsed());
        let r = Instant::now();
        remove(client, &id).await?;
        removes.push(r.elapsed());
        with_remove.push(t.elapsed());
        if code != 0 {
            bail!("container {id} exited with {code}");
        }
    }
    print_latency("container create+start+wait", cycle);
    print_latency("RemoveContainer of the exited container", removes);
    print_latency("container create+start+wait+remove", with_remove);
    Ok(())
}

/// ExecProcess + WaitProcess of `sh -c true` in a running container ("host").
pub async fn execs(o: &Options, client: &AgentServiceClient) -> Result<()> {
    let mut execs = Vec::new();
    for i in 0..o.iterations {
        let e = format!("e{i}");
        let t = Instant::now();
        exec(client, "host", &e, "true").await?;
        wait(client, "host", &e).await?;
        execs.push(t.elapsed());
    }
    print_latency("exec (ExecProcess+WaitProcess)", execs);
    Ok(())
}

/// Memory and threads idle and with N sleeping containers, then DestroySandbox of all of them.
pub async fn memory(
    o: &Options,
    a: &AgentProc,
    client: &AgentServiceClient,
    idle: ((u64, u64), (usize, usize)),
) -> Result<()> {
    for i in 0..o.containers {
        let id = format!("mem{i}");
        create_container(client, &o.rootfs, &id, "exec sleep 100000").await?;
        start(client, &id).await?;
    }
    // Let the blocking pool's burst threads settle a little before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (busy_rss, busy_pss) = a.memory();
    let busy_threads = a.threads();
    let ((idle_rss, idle_pss), idle_threads) = idle;
    let n = o.containers.max(1) as f64;
    println!(
        "{:<40} RSS {:>6} KiB   PSS {:>6} KiB   threads {} ({} tokio)",
        "agent memory, idle", idle_rss, idle_pss, idle_threads.0, idle_threads.1
    );
    println!(
        "{:<40} RSS {:>6} KiB   PSS {:>6} KiB   threads {} ({} tokio)   (+{:.1} KiB RSS per container)",
        format!("agent memory, {} containers", o.containers),
        busy_rss,
        busy_pss,
        busy_threads.0,
        busy_threads.1,
        busy_rss.saturating_sub(idle_rss) as f64 / n
    );
    let own = |t: (usize, usize)| t.0 - t.1;
    println!(
        "{:<40} {:.2} (non-tokio threads {} idle, {} with {} containers)",
        "threads per container",
        (own(busy_threads) as f64 - own(idle_threads) as f64) / n,
        own(idle_threads),
        own(busy_threads),
        o.containers
    );
    let t = Instant::now();
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .await
        .context("DestroySandbox")?;
    println!(
        "{:<40} {:>9.3} ms",
        format!("DestroySandbox with {} containers", o.containers),
        ms(t.elapsed())
    );
    Ok(())
}
