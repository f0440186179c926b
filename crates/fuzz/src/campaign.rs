//! A fuzzing campaign: requests from [`crate::gen`] and malformed frames against a confined agent,
//! with three findings checked after every round: a panic in the agent's log, an answer later
//! than the request's deadline plus a grace period (or none), and growth of the agent's
//! descriptors or threads between rounds once its containers are removed.
//!
//! The first round warms the agent up (lazily opened sockets and caches, the runtime's worker
//! threads); every later round must end with exactly the descriptors and threads the first one
//! ended with.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arbitrary::Unstructured;
use protobuf::Message;
use protocols::agent;

use crate::gen::{Generator, Method, ID_POOL};
use crate::target::{Resources, Target};
use crate::wire::{self, Conn, Outcome};
use crate::Rng;

const SERVICE: &str = "grpc.AgentService";

/// Methods left out of the random mix: DestroySandbox ends a standalone agent, and a SetPolicy
/// that happens to parse would decide every later request. Both have their own tests.
const EXCLUDED: &[&str] = &["DestroySandbox", "SetPolicy"];

/// What to run.
#[derive(Clone)]
pub struct Config {
    pub agent: PathBuf,
    /// Where the agent's state directories go.
    pub work: PathBuf,
    pub seed: u64,
    /// Requests per round.
    pub cases: usize,
    /// Malformed-frame cases per round.
    pub frames: usize,
    /// Rounds (the first one is the warm-up); ignored when `duration` is set.
    pub rounds: usize,
    /// Run rounds until this much time has passed.
    pub duration: Option<Duration>,
    /// Concurrent connections.
    pub workers: usize,
    /// `timeout_nano` of every request.
    pub deadline: Duration,
    /// How long past the deadline an answer may come before it counts as a hang.
    pub grace: Duration,
    /// Only these methods (all when empty).
    pub methods: Vec<String>,
    /// A rootfs for live containers: when set, a few cases create, start and exec into real
    /// containers of the id pool, so that the process and I/O methods meet running processes.
    pub rootfs: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            agent: PathBuf::from("target/release/kata-agent"),
            work: std::env::temp_dir(),
            seed: 1,
            cases: 2000,
            frames: 200,
            rounds: 2,
            duration: None,
            workers: 4,
            deadline: Duration::from_millis(500),
            grace: Duration::from_secs(5),
            methods: Vec::new(),
            rootfs: None,
        }
    }
}

/// What a campaign found.
#[derive(Default)]
pub struct Report {
    pub rounds: usize,
    pub requests: u64,
    pub frames: u64,
    pub elapsed: Duration,
    /// Outcome labels per method.
    pub outcomes: BTreeMap<String, BTreeMap<String, u64>>,
    /// Requests answered late or never (method and case).
    pub hangs: Vec<String>,
    pub panics: Vec<String>,
    /// The agent died (its exit status and the case that was running).
    pub crash: Option<String>,
    /// Resources after the warm-up round and after the last round.
    pub baseline: Option<Resources>,
    pub last: Option<Resources>,
    /// Descriptor or thread growth after a round (round number and figures).
    pub leaks: Vec<String>,
}

impl Report {
    pub fn clean(&self) -> bool {
        self.hangs.is_empty()
            && self.panics.is_empty()
            && self.crash.is_none()
            && self.leaks.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fuzz: {} rounds, {} requests over {} methods, {} malformed frames in {:.1} s",
            self.rounds,
            self.requests,
            self.outcomes.len(),
            self.frames,
            self.elapsed.as_secs_f64()
        )?;
        for (method, outcomes) in &self.outcomes {
            let list: Vec<String> = outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
            writeln!(f, "  {method:<32} {}", list.join(", "))?;
        }
        if let (Some(b), Some(l)) = (self.baseline, self.last) {
            writeln!(
                f,
                "resources after warm-up / at the end: fds {} / {}, threads {} / {}, mounts {} / {}, RSS {} / {} KiB",
                b.fds, l.fds, b.threads, l.threads, b.mounts, l.mounts, b.rss_kib, l.rss_kib
            )?;
        }
        writeln!(
            f,
            "findings: {} panics, {} hangs, {} leaks, crash: {}",
            self.panics.len(),
            self.hangs.len(),
            self.leaks.len(),
            self.crash.as_deref().unwrap_or("none")
        )?;
        for p in self.panics.iter().take(10) {
            writeln!(f, "  panic: {p}")?;
        }
        for h in self.hangs.iter().take(20) {
            writeln!(f, "  hang: {h}")?;
        }
        for l in &self.leaks {
            writeln!(f, "  leak: {l}")?;
        }
        Ok(())
    }
}

/// Runs a campaign against a fresh agent.
pub async fn run(cfg: &Config) -> Result<Report> {
    let generator = Arc::new(Generator::new(Some(&crate::wire_vectors_dir())));
    let methods: Vec<Method> = generator
        .methods()
        .iter()
        .filter(|m| !EXCLUDED.contains(&m.name.as_str()))
        .filter(|m| cfg.methods.is_empty() || cfg.methods.contains(&m.name))
        .cloned()
        .collect();
    anyhow::ensure!(!methods.is_empty(), "no method selected");
    let mut target = Target::start(&cfg.agent, &cfg.work, &[])?;
    let report = Arc::new(Mutex::new(Report::default()));
    let start = Instant::now();
    let mut round = 0usize;
    loop {
        let more = match cfg.duration {
            Some(d) => round < 2 || start.elapsed() < d,
            None => round < cfg.rounds.max(1),
        };
        if !more {
            break;
        }
        let seed = cfg.seed.wrapping_add((round as u64) << 32);
        run_round(cfg, &generator, &methods, &target, seed, &report).await;
        if let Some(status) = target.try_exit() {
            report.lock().unwrap().crash =
                Some(format!("the agent exited ({status}) in round {round}"));
            break;
        }
        frame_round(cfg, &target, seed, &report).await;
        clean_up(&target.socket, cfg).await;
        let baseline = report.lock().unwrap().baseline;
        let res = settled(&target, baseline).await?;
        {
            let mut r = report.lock().unwrap();
            match r.baseline {
                None => r.baseline = Some(res),
                Some(b) if res.fds > b.fds || res.threads > b.threads => r.leaks.push(format!(
                    "round {round}: fds {} -> {}, threads {} -> {}",
                    b.fds, res.fds, b.threads, res.threads
                )),
                Some(_) => {}
            }
            r.last = Some(res);
            r.rounds = round + 1;
        }
        round += 1;
    }
    let exit = target.stop();
    let mut r = Arc::try_unwrap(report)
        .map_err(|_| anyhow::anyhow!("workers still hold the report"))?
        .into_inner()
        .unwrap();
    r.panics = target.panics();
    if r.crash.is_none() && !exit.is_some_and(|s| s.success()) {
        r.crash = Some(format!(
            "the agent did not stop cleanly on SIGTERM: {exit:?}"
        ));
    }
    r.elapsed = start.elapsed();
    Ok(r)
}

/// `cfg.cases` requests over `cfg.workers` connections.
async fn run_round(
    cfg: &Config,
    generator: &Arc<Generator>,
    methods: &[Method],
    target: &Target,
    seed: u64,
    report: &Arc<Mutex<Report>>,
) {
    let per_worker = cfg.cases.div_ceil(cfg.workers.max(1));
    let mut tasks = Vec::new();
    for w in 0..cfg.workers.max(1) {
        let generator = generator.clone();
        let methods = methods.to_vec();
        let socket = target.socket.clone();
        let agent_pid = target.pid();
        let report = report.clone();
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed ^ (w as u64).wrapping_mul(0x1000_0000_01B3));
            let mut conn: Option<Conn> = None;
            for case in 0..per_worker {
                let m = &methods[rng.below(methods.len() as u64) as usize];
                let data = rng.bytes(8192);
                let mut u = Unstructured::new(&data);
                let live = cfg.rootfs.as_deref().and_then(|r| live_case(&mut rng, r));
                let (name, payload) = match live {
                    Some(l) => l,
                    None => match generator.request(&mut u, m) {
                        Ok(p) => (m.name.clone(), p),
                        Err(_) => continue,
                    },
                };
                if conn.is_none() {
                    match Conn::connect(&socket).await {
                        Ok(c) => conn = Some(c),
                        Err(_) => return, // the agent is gone; the round's caller reports it
                    }
                }
                let out = conn
                    .as_mut()
                    .unwrap()
                    .call(SERVICE, &name, payload, cfg.deadline, cfg.grace)
                    .await;
                let threads = match out {
                    Outcome::Hang => Target::thread_states(agent_pid),
                    _ => String::new(),
                };
                let mut r = report.lock().unwrap();
                r.requests += 1;
                *r.outcomes
                    .entry(name.clone())
                    .or_default()
                    .entry(out.label())
                    .or_default() += 1;
                match out {
                    Outcome::Hang => {
                        r.hangs.push(format!(
                            "{name} (seed {seed:#x}, worker {w}, case {case}); agent threads: {}",
                            threads
                        ));
                        conn = None;
                    }
                    Outcome::Closed(_) => conn = None,
                    _ => {}
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Now and then (about one case in twelve) a well-formed request that brings real processes
/// into the id pool: a container running a short shell loop, its start, or an exec.
fn live_case(rng: &mut Rng, rootfs: &Path) -> Option<(String, Vec<u8>)> {
    if rng.below(12) != 0 {
        return None;
    }
    let id = ID_POOL[rng.below(ID_POOL.len() as u64) as usize].to_string();
    let script =
        "i=0; while [ $i -lt 50 ]; do echo out $i; echo err $i >&2; i=$((i+1)); done; sleep 2";
    let args = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
    let (method, payload) = match rng.below(3) {
        0 => {
            let mut req = agent::CreateContainerRequest::new();
            req.container_id = id.clone();
            req.exec_id = id;
            let spec = kata_agent_ctl::spec::default_spec(
                &rootfs.to_string_lossy(),
                args,
                rng.below(4) == 0,
            );
            req.OCI = protobuf::MessageField::some(spec);
            ("CreateContainer", req.write_to_bytes())
        }
        1 => {
            let mut req = agent::StartContainerRequest::new();
            req.container_id = id;
            ("StartContainer", req.write_to_bytes())
        }
        _ => {
            let mut req = agent::ExecProcessRequest::new();
            req.container_id = id;
            req.exec_id = ["x1", "x2"][rng.below(2) as usize].to_string();
            req.process = protobuf::MessageField::some(kata_agent_ctl::spec::default_process(
                args,
                rng.below(4) == 0,
            ));
            ("ExecProcess", req.write_to_bytes())
        }
    };
    Some((method.to_string(), payload.ok()?))
}

/// Malformed frames, each on its own connection; after each, the agent must still answer.
async fn frame_round(cfg: &Config, target: &Target, seed: u64, report: &Arc<Mutex<Report>>) {
    let mut rng = Rng::new(seed ^ 0x00F4_A3E5);
    for case in 0..cfg.frames {
        let Ok(mut c) = Conn::connect(&target.socket).await else {
            return;
        };
        let id = (rng.next_u64() as u32) | 1;
        let bytes: Vec<u8> = match rng.below(7) {
            // A length past the protocol's limit.
            0 => wire::header(
                wire::MAX_FRAME as u32 + 1 + rng.below(1 << 30) as u32,
                id,
                1,
                0,
            )
            .to_vec(),
            // An unknown frame type with a payload.
            1 => {
                let len = rng.below(64) as usize;
                let mut v = wire::header(
                    len as u32,
                    id,
                    3 + rng.below(250) as u8,
                    rng.next_u64() as u8,
                )
                .to_vec();
                v.extend(rng.bytes(len));
                v
            }
            // A request frame whose payload is not a Request.
            2 => {
                let len = rng.below(512) as usize;
                let mut v = wire::header(len as u32, id, wire::TYPE_REQUEST, 0).to_vec();
                v.extend(rng.bytes(len));
                v
            }
            // A header cut short, then the connection closes.
            3 => wire::header(100, id, wire::TYPE_REQUEST, 0)[..rng.below(10) as usize].to_vec(),
            // A body shorter than its header says.
            4 => {
                let mut v = wire::header(1000, id, wire::TYPE_REQUEST, 0).to_vec();
                let n = rng.below(999) as usize;
                v.extend(rng.bytes(n));
                v
            }
            // A well-formed Request to a service or method that does not exist, or an even
            // (server-side) stream id.
            5 | 6 => {
                let n = rng.below(64) as usize;
                let req = ttrpc::Request {
                    service: if rng.below(2) == 0 {
                        SERVICE.into()
                    } else {
                        "grpc.Nope".into()
                    },
                    method: ["Nope", "", "CreateContainer\0"][rng.below(3) as usize].into(),
                    payload: rng.bytes(n),
                    timeout_nano: rng.next_u64() as i64,
                    ..Default::default()
                };
                let body = req.write_to_bytes().unwrap_or_default();
                let sid = if rng.below(2) == 0 { id } else { id & !1 };
                let mut v = wire::header(body.len() as u32, sid, wire::TYPE_REQUEST, 0).to_vec();
                v.extend(body);
                v
            }
            _ => unreachable!(),
        };
        let _ = c.write_raw(&bytes).await;
        drop(c);
        report.lock().unwrap().frames += 1;
        if case % 20 == 19 && !answers_check(&target.socket, cfg).await {
            report.lock().unwrap().hangs.push(format!(
                "Check after malformed frame case {case} (seed {seed:#x})"
            ));
            return;
        }
    }
}

/// Whether the health service answers on a fresh connection.
async fn answers_check(socket: &Path, cfg: &Config) -> bool {
    let Ok(mut c) = Conn::connect(socket).await else {
        return false;
    };
    let payload = protocols::health::CheckRequest::new()
        .write_to_bytes()
        .unwrap_or_default();
    c.call("grpc.Health", "Check", payload, cfg.deadline, cfg.grace)
        .await
        == Outcome::Ok
}

/// Removes the pool's containers.
async fn clean_up(socket: &Path, cfg: &Config) {
    let Ok(mut c) = Conn::connect(socket).await else {
        return;
    };
    for id in ID_POOL {
        let mut req = agent::RemoveContainerRequest::new();
        req.container_id = id.to_string();
        req.timeout = 10;
        let payload = req.write_to_bytes().unwrap_or_default();
        let _ = c
            .call(
                SERVICE,
                "RemoveContainer",
                payload,
                Duration::from_secs(15),
                cfg.grace,
            )
            .await;
    }
}

/// The agent's resources once idle: the runtime's blocking threads end ~10 s after their last
/// job, so the warm-up figure is taken after 12 s; a later one as soon as it is back at the
/// baseline, else after 25 s.
async fn settled(target: &Target, baseline: Option<Resources>) -> Result<Resources> {
    let Some(base) = baseline else {
        tokio::time::sleep(Duration::from_secs(12)).await;
        return target.resources().context("agent resources");
    };
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let now = target.resources().context("agent resources")?;
        if (now.fds <= base.fds && now.threads <= base.threads) || Instant::now() > deadline {
            return Ok(now);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
