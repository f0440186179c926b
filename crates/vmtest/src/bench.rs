//! Container figures measured inside a guest (`kata-vm --bench`): what the runtime sees of the
//! agent in a real VM, over hybrid vsock. Needs a share with `rootfs/` mounted in the guest.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use protocols::agent;
use protocols::agent_ttrpc::AgentServiceClient;

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

fn spec(rootfs: &str, cmd: &str) -> protocols::oci::Spec {
    kata_agent_ctl::spec::default_spec(rootfs, sh(cmd), false)
}

fn sh(cmd: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), cmd.into()]
}

async fn create_start(c: &AgentServiceClient, rootfs: &str, id: &str, cmd: &str) -> Result<()> {
    let mut req = agent::CreateContainerRequest::new();
    req.container_id = id.into();
    req.exec_id = id.into();
    req.OCI = Some(spec(rootfs, cmd)).into();
    c.create_container(ctx(), &req)
        .await
        .context("CreateContainer")?;
    let mut req = agent::StartContainerRequest::new();
    req.container_id = id.into();
    c.start_container(ctx(), &req)
        .await
        .context("StartContainer")?;
    Ok(())
}

async fn wait(c: &AgentServiceClient, id: &str, exec_id: &str) -> Result<i32> {
    let mut req = agent::WaitProcessRequest::new();
    req.container_id = id.into();
    req.exec_id = exec_id.into();
    Ok(c.wait_process(ctx(), &req)
        .await
        .context("WaitProcess")?
        .status)
}

async fn remove(c: &AgentServiceClient, id: &str) -> Result<()> {
    let mut req = agent::RemoveContainerRequest::new();
    req.container_id = id.into();
    req.timeout = 10;
    c.remove_container(ctx(), &req)
        .await
        .context("RemoveContainer")?;
    Ok(())
}

/// Median and minimum of `samples`.
fn summary(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(samples[samples.len() / 2]), ms(samples[0]))
}

/// Runs the figures and prints one line each.
pub async fn run(c: &AgentServiceClient, rootfs: &str, rounds: usize) -> Result<()> {
    let mut req = agent::CreateSandboxRequest::new();
    req.sandbox_id = "bench".into();
    req.hostname = "bench".into();
    c.create_sandbox(ctx(), &req)
        .await
        .context("CreateSandbox")?;

    // A container running `true`: create + start + wait + remove.
    let mut lifecycle = Vec::new();
    for i in 0..rounds {
        let id = format!("life{i}");
        let t = Instant::now();
        create_start(c, rootfs, &id, "true").await?;
        let status = wait(c, &id, "").await?;
        remove(c, &id).await?;
        lifecycle.push(t.elapsed());
        if status != 0 {
            bail!("the container exited with {status}");
        }
    }
    let (med, min) = summary(&mut lifecycle);
    println!(
        "container create+start+wait+remove: median {med:.1} ms, min {min:.1} ms ({rounds} rounds)"
    );

    // Exec of `true` in a running container: ExecProcess + WaitProcess.
    create_start(c, rootfs, "execbox", "exec sleep 100000").await?;
    let mut execs = Vec::new();
    for i in 0..rounds {
        let exec_id = format!("e{i}");
        let mut req = agent::ExecProcessRequest::new();
        req.container_id = "execbox".into();
        req.exec_id = exec_id.clone();
        req.process = Some(kata_agent_ctl::spec::default_process(sh("true"), false)).into();
        let t = Instant::now();
        c.exec_process(ctx(), &req).await.context("ExecProcess")?;
        wait(c, "execbox", &exec_id).await?;
        execs.push(t.elapsed());
    }
    let (med, min) = summary(&mut execs);
    println!(
        "exec + wait:                        median {med:.1} ms, min {min:.1} ms ({rounds} rounds)"
    );

    // Stdout throughput: 64 MiB read with ReadStdout (64 KiB per call).
    let mib = 64u64;
    create_start(
        c,
        rootfs,
        "stream",
        &format!("dd if=/dev/zero bs=1048576 count={mib} 2>/dev/null"),
    )
    .await?;
    let t = Instant::now();
    let mut total = 0u64;
    loop {
        let mut req = agent::ReadStreamRequest::new();
        req.container_id = "stream".into();
        req.len = 65536;
        match c.read_stdout(ctx(), &req).await {
            Ok(r) if r.data.is_empty() => break,
            Ok(r) => total += r.data.len() as u64,
            Err(_) if total > 0 => break,
            Err(e) => return Err(e).context("ReadStdout"),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    wait(c, "stream", "").await?;
    remove(c, "stream").await?;
    if total != mib << 20 {
        bail!("read {total} bytes of stdout, expected {}", mib << 20);
    }
    println!(
        "stdout throughput:                  {:.1} MiB/s ({mib} MiB in {secs:.2} s)",
        total as f64 / 1048576.0 / secs
    );

    let mut req = agent::SignalProcessRequest::new();
    req.container_id = "execbox".into();
    req.signal = 9;
    c.signal_process(ctx(), &req)
        .await
        .context("SignalProcess")?;
    wait(c, "execbox", "").await?;
    remove(c, "execbox").await?;
    Ok(())
}
