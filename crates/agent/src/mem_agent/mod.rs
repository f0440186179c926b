//! The memory agent (upstream's mem-agent): a background task, off by default
//! (`agent.mem_agent_enable`), with two parts that run on their own periods:
//!
//! * memcg ([`memcg`]): ages every memory cgroup with the multi-generational LRU and evicts cold
//!   pages from the oldest generation, skipping memcgs under memory pressure. Needs MGLRU
//!   (`lru_gen`); without it this part stays off and says so in the log.
//! * compaction ([`compact`]): compacts memory when free memory got fragmented, bounded in time
//!   and by memory pressure.
//!
//! Settings come from the configuration ([`config`]) and change at run time through
//! MemAgentMemcgSet / MemAgentCompactSet ([`set_memcg`], [`set_compact`]). The decisions are pure
//! functions in [`logic`]. The task is owned by `main`, which stops it at shutdown.

pub mod compact;

pub mod logic;
pub mod memcg;
pub mod probe;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::mem_agent::{CompactSettings, CompactUpdate, MemcgSettings, MemcgUpdate};
use crate::config::AgentConfig;
use crate::error::AgentError;

/// `subsystem` field of the memory agent's log records.
pub const SUBSYSTEM: &str = "mem-agent";
/// How long [`MemAgent::stop`] waits for a round in progress.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The running settings, and counters that restart a part's timer when bumped.
struct Running {
    memcg: MemcgSettings,
    compact: CompactSettings,
    memcg_restart: u64,
    compact_restart: u64,
}

struct Shared {
    running: Mutex<Running>,
    wake: Notify,
    stop: AtomicBool,
    /// Why the memcg part cannot run (no MGLRU), if so.
    memcg_unavailable: Option<String>,
    files: probe::Files,
}

impl Shared {
    fn running(&self) -> MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The memory agent of this process, for the rpc handlers (set by [`start`], cleared by
/// [`MemAgent::stop`]).
static CONTROL: Mutex<Option<Arc<Shared>>> = Mutex::new(None);

fn control() -> Option<Arc<Shared>> {
    CONTROL.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The running memory agent; stop it with [`MemAgent::stop`].
pub struct MemAgent {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts the memory agent if the configuration enables it. Call inside the tokio runtime.
pub fn start(cfg: &AgentConfig, init_mode: bool) -> Option<MemAgent> {
    let m = &cfg.mem_agent;
    if !m.enable {
        return None;
    }
    let files = probe::Files::new(
        &cfg.sysfs_root,
        &cfg.cgroup_root,
        cfg.unified_cgroup_hierarchy,
    );
    let memcg_unavailable = probe::enable_mglru(&files, init_mode).err();
    if let Some(why) = &memcg_unavailable {
        warn!(subsystem = SUBSYSTEM, reason = %why, "memory agent: the memcg part is off (no usable MGLRU); compaction still runs");
    }
    let shared = Arc::new(Shared {
        running: Mutex::new(Running {
            memcg: m.memcg.clone(),
            compact: m.compact.clone(),
            memcg_restart: 0,
            compact_restart: 0,
        }),
        wake: Notify::new(),
        stop: AtomicBool::new(false),
        memcg_unavailable,
        files: files.clone(),
    });
    let memcg = shared
        .memcg_unavailable
        .is_none()
        .then(|| memcg::MemcgWorker::new(files.clone()));
    let compact = compact::CompactWorker::new(files);
    info!(subsystem = SUBSYSTEM, memcg = ?m.memcg, compact = ?m.compact, mglru = memcg.is_some(), "memory agent started");
    let task = tokio::spawn(run(shared.clone(), memcg, compact));
    *CONTROL.lock().unwrap_or_else(|e| e.into_inner()) = Some(shared.clone());
    Some(MemAgent { shared, task })
}

impl MemAgent {
    /// Stops the task: a round in progress ends at its next check (a running compaction is
    /// killed); waits for it at most [`STOP_TIMEOUT`].
    pub async fn stop(self) {
        CONTROL.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
        match tokio::time::timeout(STOP_TIMEOUT, self.task).await {
            Ok(_) => info!(subsystem = SUBSYSTEM, "memory agent stopped"),
            Err(_) => warn!(
                subsystem = SUBSYSTEM,
                "memory agent: a round did not end within {STOP_TIMEOUT:?}; leaving it"
            ),
        }
    }
}

fn off_error() -> AgentError {
    AgentError::failed_precondition(
        "the memory agent is off: enable it with agent.mem_agent_enable=1 on the kernel command \
         line (or mem_agent_enable = true in the agent's configuration file)",
    )
}

/// MemAgentMemcgSet: changes the memcg settings given in `u`.
pub fn set_memcg(u: &MemcgUpdate) -> Result<(), AgentError> {
    let shared = control().ok_or_else(off_error)?;
    if let Some(why) = &shared.memcg_unavailable {
        return Err(AgentError::failed_precondition(format!(
            "the memory agent's memcg part needs the multi-generational LRU (MGLRU, lru_gen), \
             which this kernel does not offer: {why}"
        )));
    }
    let mut r = shared.running();
    let restart = r
        .memcg
        .apply(u)
        .map_err(|e| AgentError::invalid_argument(format!("{e:#}")))?;
    if restart {
        r.memcg_restart += 1;
    }
    info!(subsystem = SUBSYSTEM, settings = ?r.memcg, restart, "memory agent memcg settings changed");
    drop(r);
    shared.wake.notify_one();
    Ok(())
}

/// MemAgentCompactSet: changes the compaction settings given in `u`.
pub fn set_compact(u: &CompactUpdate) -> Result<(), AgentError> {
    let shared = control().ok_or_else(off_error)?;
    let mut r = shared.running();
    let restart = r
        .compact
        .apply(u)
        .map_err(|e| AgentError::invalid_argument(format!("{e:#}")))?;
    if restart {
        r.compact_restart += 1;
    }
    info!(subsystem = SUBSYSTEM, settings = ?r.compact, restart, "memory agent compaction settings changed");
    drop(r);
    shared.wake.notify_one();
    Ok(())
}

/// When a part runs next: a period after its last round or its last (re)start.
fn next_round(disabled: bool, period_secs: u64) -> Option<Instant> {
    (!disabled).then(|| Instant::now() + Duration::from_secs(period_secs))
}

async fn run(
    shared: Arc<Shared>,
    mut memcg: Option<memcg::MemcgWorker>,
    mut compact: compact::CompactWorker,
) {
    let (mut memcg_seen, mut compact_seen) = (u64::MAX, u64::MAX);
    let (mut memcg_next, mut compact_next) = (None, None);
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        {
            let r = shared.running();
            if r.memcg_restart != memcg_seen {
                memcg_seen = r.memcg_restart;
                memcg_next = next_round(r.memcg.disabled || memcg.is_none(), r.memcg.period_secs);
            }
            if r.compact_restart != compact_seen {
                compact_seen = r.compact_restart;
                compact_next = next_round(r.compact.disabled, r.compact.period_secs);
            }
        }
        let next = match (memcg_next, compact_next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = shared.wake.notified() => continue,
        }
        let now = Instant::now();
        if memcg_next.is_some_and(|at| at <= now) {
            if let Some(worker) = memcg.take() {
                memcg = Some(memcg_round(&shared, worker).await);
            }
            let r = shared.running();
            memcg_next = next_round(r.memcg.disabled, r.memcg.period_secs);
        }
        if compact_next.is_some_and(|at| at <= now) {
            compact = compact_round(&shared, compact).await;
            let r = shared.running();
            compact_next = next_round(r.compact.disabled, r.compact.period_secs);
        }
    }
}

async fn memcg_round(shared: &Arc<Shared>, mut worker: memcg::MemcgWorker) -> memcg::MemcgWorker {
    let settings = shared.running().memcg.clone();
    let sh = shared.clone();
    let job = tokio::task::spawn_blocking(move || {
        let res = worker.round(&settings, &sh.stop);
        (worker, res)
    });
    let (worker, res) = match job.await {
        Ok(done) => done,
        Err(e) => {
            // A panicked round: start over with fresh state.
            warn!(subsystem = SUBSYSTEM, error = %e, "memcg round failed");
            return memcg::MemcgWorker::new(shared.files.clone());
        }
    };
    match res {
        Ok(r) => info!(
            subsystem = SUBSYSTEM,
            memcgs = r.memcgs,
            aged = r.aged,
            evicted = r.evicted,
            pages_freed = r.pages_freed,
            skipped_pressure = r.skipped_pressure,
            errors = r.errors,
            "memory agent memcg round done"
        ),
        Err(e) => {
            warn!(subsystem = SUBSYSTEM, error = %format!("{e:#}"), "memory agent memcg round failed")
        }
    }
    worker
}

async fn compact_round(
    shared: &Arc<Shared>,
    mut worker: compact::CompactWorker,
) -> compact::CompactWorker {
    let settings = shared.running().compact.clone();
    let sh = shared.clone();
    let job = tokio::task::spawn_blocking(move || {
        let res = worker.round(&settings, &sh.stop);
        (worker, res)
    });
    let (worker, res) = match job.await {
        Ok(done) => done,
        Err(e) => {
            warn!(subsystem = SUBSYSTEM, error = %e, "compaction round failed");
            return compact::CompactWorker::new(shared.files.clone());
        }
    };
    match res {
        Ok(r) if r.outcome.is_some() => info!(
            subsystem = SUBSYSTEM,
            decision = ?r.decision,
            outcome = ?r.outcome,
            elapsed_ms = r.elapsed.as_millis() as u64,
            fragments_before = r.fragments_before,
            fragments_after = r.fragments_after,
            "memory agent compaction done"
        ),
        Ok(r) => {
            debug!(subsystem = SUBSYSTEM, decision = ?r.decision, fragments = r.fragments_before, "memory agent compaction skipped")
        }
        Err(e) => {
            warn!(subsystem = SUBSYSTEM, error = %format!("{e:#}"), "memory agent compaction round failed")
        }
    }
    worker
}
