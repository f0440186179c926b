//! Benchmark harness: prints the figures we compete with the upstream agent on.
//!
//! * start-up: agent spawn to the first answered `Check`;
//! * container create + start + wait (+ remove) latency;
//! * exec (ExecProcess + WaitProcess) latency;
//! * stdout and stdin throughput through ReadStdout / WriteStdin;
//! * agent memory (RSS, PSS) idle and with N running containers;
//! * binary size (and whether it is static).
//!
//! Run as root: `cargo run --release -p bench -- [--agent PATH] [--rootfs DIR] [--iterations N]`.
//! Latencies are reported as median / p90 / min over the iterations; the machines are noisy, so
//! compare medians.

mod policy;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use protocols::agent;
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::health::CheckRequest;
use protocols::health_ttrpc::HealthClient;

struct Options {
    agent: PathBuf,
    rootfs: PathBuf,
    iterations: usize,
    containers: usize,
    throughput_mib: usize,
    /// `--policy`: only the agent policy figures (see policy.rs).
    policy: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench [--agent PATH] [--rootfs DIR] [--iterations N] [--containers N] [--mib N] [--policy]\n\
         defaults: target/release/kata-agent, build/rootfs, 20 iterations, 20 containers, 256 MiB"
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
            "--policy" => o.policy = true,
            _ => usage(),
        }
    }
    o
}

/// One agent process on a private socket and run directory.
struct AgentProc {
    child: Child,
    dir: PathBuf,
    addr: String,
}

impl AgentProc {
    fn spawn(binary: &Path, tag: &str) -> Result<AgentProc> {
        let dir = std::env::temp_dir().join(format!("kata-bench-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("cmdline"), "")?;
        std::fs::write(dir.join("resolv.conf"), "")?;
        let addr = format!("unix://{}/agent.sock", dir.display());
        let child = Command::new(binary)
            .env("KATA_AGENT_SERVER_ADDR", &addr)
            .env("KATA_AGENT_RUN_DIR", dir.join("run"))
            .env("KATA_AGENT_SANDBOX_NS_DIR", dir.join("ns"))
            .env("KATA_AGENT_RESOLV_CONF", dir.join("resolv.conf"))
            .env("KATA_AGENT_CMDLINE", dir.join("cmdline"))
            .env("KATA_AGENT_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(AgentProc { child, dir, addr })
    }

    async fn connect(&self) -> Result<ttrpc::r#async::Client> {
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

    fn memory(&self) -> (u64, u64) {
        let pid = self.child.id();
        let rss = read_kib(&format!("/proc/{pid}/status"), "VmRSS:");
        let pss = read_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:");
        (rss, pss)
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
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

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

struct Summary {
    median: Duration,
    p90: Duration,
    min: Duration,
}

fn summarize(mut v: Vec<Duration>) -> Summary {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Summary {
        median: at(0.5),
        p90: at(0.9),
        min: v[0],
    }
}

fn print_latency(name: &str, v: Vec<Duration>) {
    let n = v.len();
    let s = summarize(v);
    println!(
        "{name:<40} median {:>9.3} ms   p90 {:>9.3} ms   min {:>9.3} ms   (n={n})",
        ms(s.median),
        ms(s.p90),
        ms(s.min)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn args(cmd: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), cmd.into()]
}

async fn create_container(
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

async fn start(client: &AgentServiceClient, id: &str) -> Result<()> {
    let mut req = agent::StartContainerRequest::new();
    req.container_id = id.into();
    client
        .start_container(ctx(), &req)
        .await
        .context("StartContainer")?;
    Ok(())
}

async fn wait(client: &AgentServiceClient, id: &str, exec: &str) -> Result<i32> {
    let mut req = agent::WaitProcessRequest::new();
    req.container_id = id.into();
    req.exec_id = exec.into();
    Ok(client
        .wait_process(ctx(), &req)
        .await
        .context("WaitProcess")?
        .status)
}

async fn remove(client: &AgentServiceClient, id: &str) -> Result<()> {
    let mut req = agent::RemoveContainerRequest::new();
    req.container_id = id.into();
    req.timeout = 10;
    client
        .remove_container(ctx(), &req)
        .await
        .context("RemoveContainer")?;
    Ok(())
}

async fn exec(client: &AgentServiceClient, id: &str, exec_id: &str, cmd: &str) -> Result<()> {
    let mut req = agent::ExecProcessRequest::new();
    req.container_id = id.into();
    req.exec_id = exec_id.into();
    req.process = Some(kata_agent_ctl::spec::default_process(args(cmd), false)).into();
    client
        .exec_process(ctx(), &req)
        .await
        .context("ExecProcess")?;
    Ok(())
}

async fn read_all_stdout(
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

async fn sandbox(client: &AgentServiceClient) -> Result<()> {
    let mut req = agent::CreateSandboxRequest::new();
    req.sandbox_id = "bench".into();
    req.hostname = "bench".into();
    client
        .create_sandbox(ctx(), &req)
        .await
        .context("CreateSandbox")?;
    Ok(())
}

async fn bench_startup(o: &Options) -> Result<()> {
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

async fn bench_containers(o: &Options) -> Result<()> {
    let a = AgentProc::spawn(&o.agent, "main")?;
    let conn = a.connect().await?;
    let client = AgentServiceClient::new(conn.clone());
    HealthClient::new(conn)
        .check(ctx(), &CheckRequest::new())
        .await?;
    let (idle_rss, idle_pss) = a.memory();
    sandbox(&client).await?;

    // Container create + start + wait, then remove.
    let mut cycle = Vec::new();
    let mut with_remove = Vec::new();
    for i in 0..o.iterations {
        let id = format!("lat{i}");
        let t = Instant::now();
        create_container(&client, &o.rootfs, &id, "true").await?;
        start(&client, &id).await?;
        let code = wait(&client, &id, "").await?;
        cycle.push(t.elapsed());
        remove(&client, &id).await?;
        with_remove.push(t.elapsed());
        if code != 0 {
            bail!("container {id} exited with {code}");
        }
    }
    print_latency("container create+start+wait", cycle);
    print_latency("container create+start+wait+remove", with_remove);

    // Exec latency into one running container.
    create_container(&client, &o.rootfs, "host", "exec sleep 100000").await?;
    start(&client, "host").await?;
    let mut execs = Vec::new();
    for i in 0..o.iterations {
        let e = format!("e{i}");
        let t = Instant::now();
        exec(&client, "host", &e, "true").await?;
        wait(&client, "host", &e).await?;
        execs.push(t.elapsed());
    }
    print_latency("exec (ExecProcess+WaitProcess)", execs);

    // stdout throughput: an exec writing o.throughput_mib MiB, read in 32 KiB (the Go shim's
    // copy buffer) and in 1 MiB requests.
    for (label, len) in [("32 KiB reads", 32u32 << 10), ("1 MiB reads", 1 << 20)] {
        let e = format!("out{len}");
        let bytes = (o.throughput_mib as u64) << 20;
        exec(&client, "host", &e, &format!("head -c {bytes} /dev/zero")).await?;
        let t = Instant::now();
        let got = read_all_stdout(&client, "host", &e, len).await?;
        let el = t.elapsed();
        wait(&client, "host", &e).await?;
        if got != bytes {
            bail!("stdout throughput: read {got} of {bytes} bytes");
        }
        println!(
            "{:<40} {:>9.1} MiB/s   ({} MiB in {:.3} s)",
            format!("stdout throughput, {label}"),
            got as f64 / (1 << 20) as f64 / el.as_secs_f64(),
            o.throughput_mib,
            el.as_secs_f64()
        );
    }

    // stdin throughput: WriteStdin in 32 KiB chunks into `wc -c`.
    {
        let e = "in";
        exec(&client, "host", e, "wc -c").await?;
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
        wait(&client, "host", e).await?;
        let counted: u64 = String::from_utf8_lossy(&out).trim().parse().unwrap_or(0);
        if counted != sent {
            bail!("stdin throughput: the process counted {counted} of {sent} bytes");
        }
        println!(
            "{:<40} {:>9.1} MiB/s   ({} MiB in {:.3} s)",
            "stdin throughput, 32 KiB writes",
            sent as f64 / (1 << 20) as f64 / el.as_secs_f64(),
            o.throughput_mib,
            el.as_secs_f64()
        );
    }
    remove(&client, "host").await?;

    // Memory: idle, then with N sleeping containers.
    for i in 0..o.containers {
        let id = format!("mem{i}");
        create_container(&client, &o.rootfs, &id, "exec sleep 100000").await?;
        start(&client, &id).await?;
    }
    let (busy_rss, busy_pss) = a.memory();
    println!(
        "{:<40} RSS {:>6} KiB   PSS {:>6} KiB",
        "agent memory, idle", idle_rss, idle_pss
    );
    println!(
        "{:<40} RSS {:>6} KiB   PSS {:>6} KiB   (+{:.1} KiB RSS per container)",
        format!("agent memory, {} containers", o.containers),
        busy_rss,
        busy_pss,
        busy_rss.saturating_sub(idle_rss) as f64 / o.containers.max(1) as f64
    );
    for i in 0..o.containers {
        remove(&client, &format!("mem{i}")).await?;
    }
    let req = agent::DestroySandboxRequest::new();
    client
        .destroy_sandbox(ctx(), &req)
        .await
        .context("DestroySandbox")?;
    Ok(())
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
    let o = parse_options();
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
        bench_startup(&o).await?;
        bench_containers(&o).await
    })
}
