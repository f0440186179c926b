//! The requests the harness sends, and the statistics it prints.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use protocols::agent;
use protocols::agent_ttrpc::AgentServiceClient;

pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

pub struct Summary {
    pub median: Duration,
    pub p90: Duration,
    pub min: Duration,
}

pub fn summarize(mut v: Vec<Duration>) -> Summary {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Summary {
        median: at(0.5),
        p90: at(0.9),
        min: v[0],
    }
}

pub fn print_latency(name: &str, v: Vec<Duration>) {
    let n = v.len();
    let s = summarize(v);
    println!(
        "{name:<40} median {:>9.3} ms   p90 {:>9.3} ms   min {:>9.3} ms   (n={n})",
        ms(s.median),
        ms(s.p90),
        ms(s.min)
    );
}

/// Median of throughput runs (MiB/s), printed with every run.
pub fn print_throughput(name: &str, mib: usize, mut runs: Vec<f64>) {
    runs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = runs[runs.len() / 2];
    let all: Vec<String> = runs.iter().map(|r| format!("{r:.0}")).collect();
    println!(
        "{name:<40} median {median:>9.1} MiB/s   ({mib} MiB per run; runs: {})",
        all.join(", ")
    );
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn args(cmd: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), cmd.into()]
}

pub async fn create_container(
    client: &AgentServiceClient,
    rootfs: &Path,
    id: &str,
    cmd: &str,
) -> Result<()> {
    let mut req = agent::CreateContainerRequest::new();
    req.container_id = id.into();
    req.exec_id = id.into();
    req.OCI = Some(kata_agent_ctl::spec::default_spec(
        &rootfs.display().to_string(),
        args(cmd),
        false,
    ))
    .into();
    client
        .create_container(ctx(), &req)
        .await
        .context("CreateContainer")?;
    Ok(())
}

pub async fn start(client: &AgentServiceClient, id: &str) -> Result<()> {
    let mut req = agent::StartContainerRequest::new();
    req.container_id = id.into();
    client
        .start_container(ctx(), &req)
        .await
        .context("StartContainer")?;
    Ok(())
}

pub async fn wait(client: &AgentServiceClient, id: &str, exec: &str) -> Result<i32> {
    let mut req = agent::WaitProcessRequest::new();
    req.container_id = id.into();
    req.exec_id = exec.into();
    Ok(client
        .wait_process(ctx(), &req)
        .await
        .context("WaitProcess")?
        .status)
}

pub async fn remove(client: &AgentServiceClient, id: &str) -> Result<()> {
    let mut req = agent::RemoveContainerRequest::new();
    req.container_id = id.into();
    req.timeout = 10;
    client
        .remove_container(ctx(), &req)
        .await
        .context("RemoveContainer")?;
    Ok(())
}

pub async fn exec(client: &AgentServiceClient, id: &str, exec_id: &str, cmd: &str) -> Result<()> {
    exec_ports(client, id, exec_id, cmd, [0, 0, 0]).await
}

/// ExecProcess with pass-fd stream ports (stdin, stdout, stderr; 0 = none).
pub async fn exec_ports(
    client: &AgentServiceClient,
    id: &str,
    exec_id: &str,
    cmd: &str,
    ports: [u32; 3],
) -> Result<()> {
    let mut req = agent::ExecProcessRequest::new();
    req.container_id = id.into();
    req.exec_id = exec_id.into();
    req.process = Some(kata_agent_ctl::spec::default_process(args(cmd), false)).into();
    req.stdin_port = ports[0];
    req.stdout_port = ports[1];
    req.stderr_port = ports[2];
    client
        .exec_process(ctx(), &req)
        .await
        .context("ExecProcess")?;
    Ok(())
}

pub async fn read_all_stdout(
    client: &AgentServiceClient,
    id: &str,
    exec_id: &str,
    len: u32,
) -> Result<u64> {
    let mut total = 0u64;
    loop {
        let mut req = agent::ReadStreamRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        req.len = len;
        match client.read_stdout(ctx(), &req).await {
            Ok(r) if r.data.is_empty() => return Ok(total),
            Ok(r) => total += r.data.len() as u64,
            Err(_) => return Ok(total),
        }
    }
}

pub async fn sandbox(client: &AgentServiceClient) -> Result<()> {
    let mut req = agent::CreateSandboxRequest::new();
    req.sandbox_id = "bench".into();
    req.hostname = "bench".into();
    client
        .create_sandbox(ctx(), &req)
        .await
        .context("CreateSandbox")?;
    Ok(())
}
