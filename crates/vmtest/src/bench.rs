//! Container figures measured inside a guest (`kata-vm --bench`): what the runtime sees of the
//! agent in a real VM, over hybrid vsock. Needs a share with `rootfs/` mounted in the guest and
//! the pass-fd listener (`agent.passfd_listener_port=1027`) for the pass-fd stdout figure.

use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use protocols::agent;
use protocols::agent_ttrpc::AgentServiceClient;

use crate::Vm;

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

/// Size of each stdout throughput transfer.
const STREAM_MIB: u64 = 64;
/// Transfers per stdout figure.
const STREAM_ROUNDS: usize = 3;

fn dd_cmd() -> String {
    format!("dd if=/dev/zero bs=1048576 count={STREAM_MIB} 2>/dev/null")
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// One container's stdout read with ReadStdout (`len` per call): the time from StartContainer to
/// the end of the stream.
async fn stdout_rpc(c: &AgentServiceClient, rootfs: &str, id: &str, len: u32) -> Result<Duration> {
    let mut req = agent::CreateContainerRequest::new();
    req.container_id = id.into();
    req.exec_id = id.into();
    req.OCI = Some(spec(rootfs, &dd_cmd())).into();
    c.create_container(ctx(), &req)
        .await
        .context("CreateContainer")?;
    let mut req = agent::StartContainerRequest::new();
    req.container_id = id.into();
    let t = Instant::now();
    c.start_container(ctx(), &req)
        .await
        .context("StartContainer")?;
    let mut total = 0u64;
    loop {
        let mut req = agent::ReadStreamRequest::new();
        req.container_id = id.into();
        req.len = len;
        match c.read_stdout(ctx(), &req).await {
            Ok(r) if r.data.is_empty() => break,
            Ok(r) => total += r.data.len() as u64,
            Err(_) if total > 0 => break,
            Err(e) => return Err(e).context("ReadStdout"),
        }
    }
    let took = t.elapsed();
    finish_stream(c, id, total, "of stdout").await?;
    Ok(took)
}

/// Waits for and removes a streaming container, then checks that all its output arrived.
async fn finish_stream(c: &AgentServiceClient, id: &str, total: u64, what: &str) -> Result<()> {
    wait(c, id, "").await?;
    remove(c, id).await?;
    if total != STREAM_MIB << 20 {
        bail!("read {total} bytes {what}, expected {}", STREAM_MIB << 20);
    }
    Ok(())
}

/// One container's stdout through a pass-fd stream: the time from StartContainer to the end of
/// the stream on the host.
async fn stdout_passfd(
    c: &AgentServiceClient,
    vm: &mut Vm,
    rootfs: &str,
    id: &str,
) -> Result<Duration> {
    let (mut stream, port) = vm.passfd_stream(Duration::from_secs(30))?;
    let mut req = agent::CreateContainerRequest::new();
    req.container_id = id.into();
    req.exec_id = id.into();
    req.OCI = Some(spec(rootfs, &dd_cmd())).into();
    req.stdout_port = port;
    c.create_container(ctx(), &req)
        .await
        .context("CreateContainer with a pass-fd stdout")?;
    // The reader is a thread; it notes when the stream ended.
    let reader = std::thread::spawn(move || -> std::io::Result<(u64, Instant)> {
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buf)? {
                0 => return Ok((total, Instant::now())),
                n => total += n as u64,
            }
        }
    });
    let mut req = agent::StartContainerRequest::new();
    req.container_id = id.into();
    let t = Instant::now();
    c.start_container(ctx(), &req)
        .await
        .context("StartContainer")?;
    let (total, end) = tokio::task::spawn_blocking(move || reader.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the stream reader panicked"))?
        .context("reading the pass-fd stream")?;
    let took = end - t;
    finish_stream(c, id, total, "from the pass-fd stream").await?;
    Ok(took)
}

/// Runs the figures and prints one line each. `vm` was booted with
/// `agent.passfd_listener_port=`[`crate::PASSFD_PORT`] (pass-fd streams).
pub async fn run(c: &AgentServiceClient, vm: &mut Vm, rootfs: &str, rounds: usize) -> Result<()> {
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

    // Stdout throughput: a container's `dd` of STREAM_MIB MiB, from StartContainer to the last
    // byte on the host; read with ReadStdout (64 KiB and 32 KiB `len`), or through a pass-fd
    // stream (a hybrid-vsock connection named in `stdout_port`).
    let mut rpc64 = Vec::new();
    let mut rpc32 = Vec::new();
    let mut passfd = Vec::new();
    for i in 0..STREAM_ROUNDS {
        rpc64.push(stdout_rpc(c, rootfs, &format!("rpc64-{i}"), 65536).await?);
        rpc32.push(stdout_rpc(c, rootfs, &format!("rpc32-{i}"), 32768).await?);
        passfd.push(stdout_passfd(c, vm, rootfs, &format!("passfd-{i}")).await?);
    }
    let rate = |d: Duration| STREAM_MIB as f64 / d.as_secs_f64();
    let (rpc64, rpc32, passfd) = (median(&mut rpc64), median(&mut rpc32), median(&mut passfd));
    println!(
        "stdout, ReadStdout 64 KiB:          {:.1} MiB/s ({STREAM_MIB} MiB, median of {STREAM_ROUNDS})",
        rate(rpc64)
    );
    println!(
        "stdout, ReadStdout 32 KiB:          {:.1} MiB/s ({STREAM_MIB} MiB, median of {STREAM_ROUNDS})",
        rate(rpc32)
    );
    println!(
        "stdout, pass-fd stream:             {:.1} MiB/s ({STREAM_MIB} MiB, median of {STREAM_ROUNDS})",
        rate(passfd)
    );
    println!(
        "pass-fd / ReadStdout 32 KiB:        {:.1}x",
        rpc32.as_secs_f64() / passfd.as_secs_f64()
    );
    // What the guest alone needs for the same bytes (exec and wait included): `dd` into
    // /dev/null (the producer alone), and `dd | cat >/dev/null` (the producer, the pipe and one
    // more copy: what a stream's copy does before the vsock).
    for (what, tail) in [
        ("in-guest dd >/dev/null (exec):      ", ">/dev/null"),
        ("in-guest dd | cat >/dev/null (exec):", "| cat >/dev/null"),
    ] {
        let mut local = Vec::new();
        for i in 0..STREAM_ROUNDS {
            let exec_id = format!("dd{i}-{}", tail.len());
            let mut req = agent::ExecProcessRequest::new();
            req.container_id = "execbox".into();
            req.exec_id = exec_id.clone();
            req.process = Some(kata_agent_ctl::spec::default_process(
                sh(&format!("{} {tail}", dd_cmd())),
                false,
            ))
            .into();
            let t = Instant::now();
            c.exec_process(ctx(), &req).await.context("ExecProcess")?;
            wait(c, "execbox", &exec_id).await?;
            local.push(t.elapsed());
        }
        println!(
            "{what} {:.1} MiB/s ({STREAM_MIB} MiB, median of {STREAM_ROUNDS})",
            rate(median(&mut local))
        );
    }

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
