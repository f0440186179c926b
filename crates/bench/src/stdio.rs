//! Throughput of process output and input: ReadStdout / WriteStdin requests, and pass-fd streams.

use std::io::Read;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use protocols::agent;
use protocols::agent_ttrpc::AgentServiceClient;

use crate::agent::AgentProc;
use crate::ops::*;
use crate::Options;

/// An exec writing `mib` MiB, read with ReadStdout of `len` bytes; MiB/s.
async fn stdout_once(client: &AgentServiceClient, tag: &str, mib: usize, len: u32) -> Result<f64> {
    let bytes = (mib as u64) << 20;
    exec(client, "host", tag, &format!("head -c {bytes} /dev/zero")).await?;
    let t = Instant::now();
    let got = read_all_stdout(client, "host", tag, len).await?;
    let el = t.elapsed();
    wait(client, "host", tag).await?;
    if got != bytes {
        bail!("stdout throughput: read {got} of {bytes} bytes");
    }
    Ok(got as f64 / (1 << 20) as f64 / el.as_secs_f64())
}

pub async fn stdout(o: &Options, client: &AgentServiceClient) -> Result<()> {
    // 32 KiB is the Go shim's copy buffer.
    for (label, len) in [("32 KiB reads", 32u32 << 10), ("1 MiB reads", 1 << 20)] {
        let mut runs = Vec::new();
        for r in 0..o.runs {
            runs.push(stdout_once(client, &format!("out{len}-{r}"), o.throughput_mib, len).await?);
        }
        print_throughput(
            &format!("stdout throughput, {label}"),
            o.throughput_mib,
            runs,
        );
    }
    Ok(())
}

/// WriteStdin in 32 KiB chunks into `wc -c`.
pub async fn stdin(o: &Options, client: &AgentServiceClient) -> Result<()> {
    let e = "in";
    exec(client, "host", e, "wc -c").await?;
    let bytes = (o.throughput_mib as u64) << 20;
    let chunk = vec![b'x'; 32 << 10];
    let t = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let mut req = agent::WriteStreamRequest::new();
        req.container_id = "host".into();
        req.exec_id = e.into();
        req.data = chunk.clone();
        let n = client
            .write_stdin(ctx(), &req)
            .await
            .context("WriteStdin")?
            .len;
        sent += n as u64;
    }
    let mut req = agent::CloseStdinRequest::new();
    req.container_id = "host".into();
    req.exec_id = e.into();
    client
        .close_stdin(ctx(), &req)
        .await
        .context("CloseStdin")?;
    let mut out = Vec::new();
    loop {
        let mut req = agent::ReadStreamRequest::new();
        req.container_id = "host".into();
        req.exec_id = e.into();
        req.len = 4096;
        match client.read_stdout(ctx(), &req).await {
            Ok(r) if !r.data.is_empty() => out.extend_from_slice(&r.data),
            _ => break,
        }
    }
    let el = t.elapsed();
    wait(client, "host", e).await?;
    let counted: u64 = String::from_utf8_lossy(&out).trim().parse().unwrap_or(0);
    if counted != sent {
        bail!("stdin throughput: the process counted {counted} of {sent} bytes");
    }
    print_throughput(
        "stdin throughput, 32 KiB writes",
        o.throughput_mib,
        vec![sent as f64 / (1 << 20) as f64 / el.as_secs_f64()],
    );
    Ok(())
}

/// Pass-fd stdout: an exec writing with `dd bs=1M`, its stdout carried by a stream.
pub async fn passfd(o: &Options, a: &AgentProc, client: &AgentServiceClient) -> Result<()> {
    let mib = o.throughput_mib * 4;
    let bytes = (mib as u64) << 20;
    let mut runs = Vec::new();
    for r in 0..o.runs {
        let port = 1000 + r as u32;
        let mut s = agent_client::passfd_connect_unix(&a.passfd, port)?;
        let tag = format!("pf{r}");
        let t = Instant::now();
        exec_ports(
            client,
            "host",
            &tag,
            &format!("dd if=/dev/zero bs=1048576 count={mib} 2>/dev/null"),
            [0, port, 0],
        )
        .await?;
        let reader = std::thread::spawn(move || -> std::io::Result<u64> {
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                match s.read(&mut buf)? {
                    0 => return Ok(total),
                    n => total += n as u64,
                }
            }
        });
        let code = wait(client, "host", &tag).await?;
        let got = reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))??;
        let el = t.elapsed();
        if got != bytes || code != 0 {
            bail!("pass-fd: read {got} of {bytes} bytes, exit status {code}");
        }
        runs.push(got as f64 / (1 << 20) as f64 / el.as_secs_f64());
    }
    print_throughput("stdout throughput, pass-fd stream", mib, runs);
    Ok(())
}
