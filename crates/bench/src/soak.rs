//! `bench soak`: many execs into one container and many container life cycles, then the agent's
//! resources against their baseline.
//!
//! Figures: open descriptors, threads, mounts below the agent's run directory, cgroup
//! directories of the soak's containers, child processes (zombies included) and RSS, each after a
//! warm-up, after the execs and after the cycles; and how many processes printed exactly what
//! they were told to. Exits non-zero when descriptors or threads differ from the baseline, RSS
//! grew by more than 1 MiB, a cgroup directory or child process is left, or an output was wrong.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use protocols::agent;
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::health::CheckRequest;
use protocols::health_ttrpc::HealthClient;

use crate::agent::AgentProc;
use crate::ops::{create_container, ctx, exec, remove, sandbox, start, wait};

struct SoakOptions {
    agent: std::path::PathBuf,
    rootfs: std::path::PathBuf,
    execs: usize,
    cycles: usize,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench soak [--agent PATH] [--rootfs DIR] [--execs N] [--cycles N]\n\
         defaults: target/release/kata-agent, build/rootfs, 10000 execs, 1000 cycles"
    );
    std::process::exit(2)
}

/// The soak's resource figures at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Figures {
    fds: usize,
    threads: usize,
    mounts: usize,
    cgroups: usize,
    children: usize,
    rss_kib: u64,
}

/// Entry point of `bench soak ARGS...`.
pub async fn main(args: Vec<String>) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut o = SoakOptions {
        agent: root.join("target/release/kata-agent"),
        rootfs: root.join("build/rootfs"),
        execs: 10_000,
        cycles: 1_000,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--agent" => o.agent = value().into(),
            "--rootfs" => o.rootfs = value().into(),
            "--execs" => o.execs = value().parse().unwrap_or_else(|_| usage()),
            "--cycles" => o.cycles = value().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    // The agent wants an absolute, canonical root path.
    o.rootfs = std::fs::canonicalize(&o.rootfs)
        .with_context(|| format!("rootfs {}", o.rootfs.display()))?;
    let a = AgentProc::spawn(&o.agent, "soak")?;
    let conn = a.connect().await?;
    let client = AgentServiceClient::new(conn.clone());
    HealthClient::new(conn)
        .check(ctx(), &CheckRequest::new())
        .await
        .context("Check")?;
    sandbox(&client).await?;
    let pid = a.child.id() as i32;
    let run_dir = a.dir.join("run");

    // Warm-up: the exec host, a few execs and cycles, so that lazily made state is there before
    // the baseline is taken.
    create_container(&client, &o.rootfs, "soak-host", "exec sleep 1000000").await?;
    start(&client, "soak-host").await?;
    let mut exact = 0usize;
    for i in 0..20 {
        exact += exec_once(&client, &format!("warm{i}"), i).await? as usize;
        exact += cycle_once(&client, &o.rootfs, i).await? as usize;
    }
    if exact != 40 {
        bail!("warm-up: {exact} of 40 processes printed exactly what they were told to");
    }
    let base = settle(pid, &run_dir, None).await;

    let started = Instant::now();
    let mut exact_execs = 0usize;
    for i in 0..o.execs {
        exact_execs += exec_once(&client, &format!("e{i}"), i).await? as usize;
    }
    let exec_time = started.elapsed();
    let after_execs = settle(pid, &run_dir, Some(base)).await;

    let started = Instant::now();
    let mut exact_cycles = 0usize;
    for i in 0..o.cycles {
        exact_cycles += cycle_once(&client, &o.rootfs, i).await? as usize;
    }
    let cycle_time = started.elapsed();
    let after_cycles = settle(pid, &run_dir, Some(base)).await;

    println!(
        "soak: {} execs in {:.1} s, {} create/start/wait/remove cycles in {:.1} s",
        o.execs,
        exec_time.as_secs_f64(),
        o.cycles,
        cycle_time.as_secs_f64()
    );
    println!(
        "{:<22} {:>10} {:>12} {:>13} {:>8}",
        "figure", "baseline", "after execs", "after cycles", "delta"
    );
    type Row = (&'static str, fn(&Figures) -> i64);
    let rows: [Row; 6] = [
        ("fds", |f| f.fds as i64),
        ("threads", |f| f.threads as i64),
        ("mounts (run dir)", |f| f.mounts as i64),
        ("cgroup directories", |f| f.cgroups as i64),
        ("child processes", |f| f.children as i64),
        ("RSS KiB", |f| f.rss_kib as i64),
    ];
    for (name, get) in rows {
        println!(
            "{name:<22} {:>10} {:>12} {:>13} {:>+8}",
            get(&base),
            get(&after_execs),
            get(&after_cycles),
            get(&after_cycles) - get(&base)
        );
    }
    println!(
        "exact output: {exact_execs}/{} execs, {exact_cycles}/{} containers",
        o.execs, o.cycles
    );

    remove(&client, "soak-host").await?;
    let mut problems = Vec::new();
    for (when, f) in [("execs", after_execs), ("cycles", after_cycles)] {
        if f.fds != base.fds || f.threads != base.threads {
            problems.push(format!(
                "after the {when}: fds {} -> {}, threads {} -> {}",
                base.fds, f.fds, base.threads, f.threads
            ));
        }
        if f.rss_kib > base.rss_kib + 1024 {
            problems.push(format!(
                "after the {when}: RSS grew by {} KiB",
                f.rss_kib - base.rss_kib
            ));
        }
        if f.cgroups > base.cgroups || f.children > base.children || f.mounts > base.mounts {
            problems.push(format!(
                "after the {when}: cgroups {} -> {}, children {} -> {}, mounts {} -> {}",
                base.cgroups, f.cgroups, base.children, f.children, base.mounts, f.mounts
            ));
        }
    }
    if exact_execs != o.execs || exact_cycles != o.cycles {
        problems.push("some processes did not print exactly what they were told to".into());
    }
    if problems.is_empty() {
        println!("soak: no growth");
        Ok(())
    } else {
        bail!("soak found growth:\n  {}", problems.join("\n  "))
    }
}

/// One exec into the host container printing a known line; whether the output was exact and the
/// status 0.
async fn exec_once(client: &AgentServiceClient, exec_id: &str, n: usize) -> Result<bool> {
    let want = format!("soak {n}\n");
    exec(client, "soak-host", exec_id, &format!("echo soak {n}")).await?;
    let out = read_stdout(client, "soak-host", exec_id).await?;
    let status = wait(client, "soak-host", exec_id).await?;
    Ok(status == 0 && out == want.as_bytes())
}

/// One container life cycle; whether its output was exact and its status 0.
async fn cycle_once(client: &AgentServiceClient, rootfs: &Path, n: usize) -> Result<bool> {
    let id = format!("soak-c{}", n % 7);
    let want = format!("cycle {n}\n");
    create_container(client, rootfs, &id, &format!("echo cycle {n}")).await?;
    start(client, &id).await?;
    let out = read_stdout(client, &id, "").await?;
    let status = wait(client, &id, "").await?;
    remove(client, &id).await?;
    Ok(status == 0 && out == want.as_bytes())
}

/// Everything the process writes to stdout, up to its end.
async fn read_stdout(client: &AgentServiceClient, id: &str, exec_id: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut req = agent::ReadStreamRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        req.len = 32 * 1024;
        match client.read_stdout(ctx(), &req).await {
            Ok(r) if r.data.is_empty() => return Ok(out),
            Ok(r) => out.extend_from_slice(&r.data),
            // End of the stream is also reported as an error once the process is gone.
            Err(_) => return Ok(out),
        }
    }
}

/// The figures once the agent is idle: as soon as descriptors and threads are back at `base`, or
/// after 15 s (the runtime's idle blocking threads end 10 s after their last job).
async fn settle(pid: i32, run_dir: &Path, base: Option<Figures>) -> Figures {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let f = figures(pid, run_dir);
        let done = match base {
            Some(b) => f.fds <= b.fds && f.threads <= b.threads,
            None => false,
        };
        if done || Instant::now() > deadline {
            return f;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn figures(pid: i32, run_dir: &Path) -> Figures {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let run = run_dir.to_string_lossy().to_string();
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(4)
                .is_some_and(|p| p.starts_with(&run))
        })
        .count();
    Figures {
        fds,
        threads: field("Threads:") as usize,
        mounts,
        cgroups: soak_cgroups(Path::new("/sys/fs/cgroup"), 0),
        children: children_of(pid),
        rss_kib: field("VmRSS:"),
    }
}

/// Cgroup directories named after the soak's containers, in every hierarchy.
fn soak_cgroups(dir: &Path, depth: usize) -> usize {
    if depth > 4 {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| {
            let own = e.file_name().to_string_lossy().contains("soak-c") as usize;
            own + soak_cgroups(&e.path(), depth + 1)
        })
        .sum()
}

/// Processes whose parent is `pid` (zombies included).
fn children_of(pid: i32) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| {
                    // The command name may hold spaces and parentheses: fields follow the last ')'.
                    let rest = &s[s.rfind(')')? + 2..];
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .count()
}
