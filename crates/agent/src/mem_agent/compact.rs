//! The compaction part: each round decides from `/proc/pagetypeinfo` and `/proc/meminfo` whether
//! memory got fragmented enough since the last compaction, then compacts by writing
//! `/proc/sys/vm/compact_memory` from a forked child that is killed when the compaction runs too
//! long, memory pressure rises, or the agent stops.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tracing::warn;

use super::logic::{self, CompactDecision, CompactHistory};
use super::probe::{Files, PsiMeter};
use super::SUBSYSTEM;
use crate::config::mem_agent::CompactSettings;

/// How often a running compaction is looked at.
const POLL: Duration = Duration::from_millis(200);
/// How often the pressure during a compaction is sampled (upstream: every second).
const PSI_EVERY: Duration = Duration::from_secs(1);
/// How long a killed compaction may take to exit before the round gives up waiting for it.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// How a compaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    /// Failed to write the file (exit code of the child).
    Failed(i32),
    StoppedTimeLimit,
    StoppedPressure,
    StoppedShutdown,
}

/// What one round did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactRound {
    pub decision: CompactDecision,
    pub outcome: Option<Outcome>,
    pub elapsed: Duration,
    /// Free movable fragments (pages) before and after.
    pub fragments_before: u64,
    pub fragments_after: u64,
}

/// The compaction part's state between rounds.
pub struct CompactWorker {
    files: Files,
    history: CompactHistory,
    psi: PsiMeter,
}

impl CompactWorker {
    pub fn new(files: Files) -> CompactWorker {
        let mut psi = PsiMeter::default();
        // The first round measures the pressure since start-up.
        psi.sample(&files.pressure);
        CompactWorker {
            files,
            history: CompactHistory::default(),
            psi,
        }
    }

    fn fragments(&self, s: &CompactSettings) -> Result<u64> {
        let text = std::fs::read_to_string(&self.files.pagetypeinfo)
            .with_context(|| format!("cannot read {}", self.files.pagetypeinfo.display()))?;
        Ok(logic::free_movable_fragments(&text, s.compact_order))
    }

    pub fn round(&mut self, s: &CompactSettings, stop: &AtomicBool) -> Result<CompactRound> {
        let pct = self.psi.sample(&self.files.pressure);
        let memfree = self.files.memfree_kb()?;
        let fragments = self.fragments(s)?;
        let decision = logic::compaction_decision(s, &self.history, pct, memfree, fragments);
        let mut round = CompactRound {
            decision,
            outcome: None,
            elapsed: Duration::ZERO,
            fragments_before: fragments,
            fragments_after: fragments,
        };
        if !decision.compacts() {
            self.history.rounds_without = self.history.rounds_without.saturating_add(1);
            return Ok(round);
        }
        let started = Instant::now();
        let outcome = self.compact(s, stop)?;
        round.elapsed = started.elapsed();
        round.outcome = Some(outcome);
        round.fragments_after = self.fragments(s)?;
        self.history = CompactHistory {
            memfree_kb: self.files.memfree_kb()?,
            fragments: round.fragments_after,
            rounds_without: 0,
        };
        // The next round's pressure is measured from the end of this compaction.
        self.psi.sample(&self.files.pressure);
        Ok(round)
    }

    /// Runs one compaction in a child process, bounded by `compact_sec_max`, the pressure limit
    /// and `stop`.
    fn compact(&self, s: &CompactSettings, stop: &AtomicBool) -> Result<Outcome> {
        let path = CString::new(self.files.compact_memory.as_os_str().as_bytes())
            .map_err(|_| anyhow!("bad path {}", self.files.compact_memory.display()))?;
        let exit = {
            let _reaper = engine::reaper::guard();
            // SAFETY: the child only calls async-signal-safe functions (open, write, _exit) on
            // memory prepared before the fork.
            let pid = unsafe { libc::fork() };
            if pid < 0 {
                return Err(std::io::Error::last_os_error()).context("fork for compaction");
            }
            if pid == 0 {
                unsafe {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        libc::_exit(2);
                    }
                    let n = libc::write(fd, b"1".as_ptr().cast(), 1);
                    libc::_exit(if n == 1 { 0 } else { 1 });
                }
            }
            engine::reaper::watch_new(pid)
        };
        let pid = exit.pid();
        let started = Instant::now();
        let mut psi = PsiMeter::default();
        psi.sample(&self.files.pressure);
        let mut last_psi = started;
        let mut pct = 0;
        let stopped = loop {
            if let Some(code) = exit.wait_timeout(POLL) {
                return Ok(if code == 0 {
                    Outcome::Completed
                } else {
                    Outcome::Failed(code)
                });
            }
            if stop.load(Ordering::Relaxed) {
                break Outcome::StoppedShutdown;
            }
            if last_psi.elapsed() >= PSI_EVERY {
                pct = psi.sample(&self.files.pressure);
                last_psi = Instant::now();
            }
            if logic::compaction_must_stop(s, started.elapsed(), pct) {
                break if pct > u64::from(s.compact_psi_percent_limit) {
                    Outcome::StoppedPressure
                } else {
                    Outcome::StoppedTimeLimit
                };
            }
        };
        // SAFETY: plain kill(2) of our own child, which the reaper has not reaped yet (its exit
        // would have been seen above).
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        if exit.wait_timeout(KILL_GRACE).is_none() {
            warn!(
                subsystem = SUBSYSTEM,
                pid, "the killed compaction did not exit yet; the reaper will collect it"
            );
        }
        Ok(stopped)
    }
}
