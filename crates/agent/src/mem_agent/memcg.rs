//! The memcg part: each round ages every memory cgroup's MGLRU lruvecs (a new youngest
//! generation) and, once a memcg has been aged often enough, evicts its oldest generation's cold
//! pages, while memory pressure stays below the limits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use tracing::{debug, info, warn};

use super::logic::{self, EvictionStep, EvictionStop, NodeLru};
use super::probe::{Files, PsiMeter, PsiMeters};
use super::SUBSYSTEM;
use crate::config::mem_agent::MemcgSettings;

/// Pages asked for per eviction command (2 MiB); the eviction loops until a stop reason.
const EVICTION_BATCH_PAGES: u64 = 512;
/// Bound on eviction commands per lruvec and round.
const EVICTION_STEPS_MAX: usize = 4096;
/// Bound on the memcgs tracked (aging counts).
const TRACKED_MAX: usize = 65536;

/// An lruvec: memcg id, memcg path, NUMA node.
type LruvecKey = (u32, String, u32);

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemcgRound {
    /// Memcgs seen in `lru_gen`.
    pub memcgs: usize,
    /// Lruvecs aged.
    pub aged: usize,
    /// Lruvecs not looked at because of memory pressure.
    pub skipped_pressure: usize,
    /// Lruvecs evicted from.
    pub evicted: usize,
    /// Pages freed by eviction.
    pub pages_freed: u64,
    /// Commands the kernel refused.
    pub errors: usize,
}

/// What an eviction from one lruvec did.
#[derive(Debug, Default)]
struct Eviction {
    /// Pages freed.
    pages: u64,
    /// Why it stopped (None: the step bound or the shutdown).
    stop: Option<EvictionStop>,
    /// The oldest generation's (anon, file) pages when it began.
    oldest: Option<(u64, u64)>,
}

/// The memcg part's state between rounds.
pub struct MemcgWorker {
    files: Files,
    /// Agings done by the memory agent per lruvec (kept while the memcg exists).
    agings: HashMap<LruvecKey, u64>,
    psi: PsiMeters,
}

impl MemcgWorker {
    pub fn new(files: Files) -> MemcgWorker {
        MemcgWorker {
            files,
            agings: HashMap::new(),
            psi: PsiMeters::default(),
        }
    }

    fn read_memcgs(&self) -> Result<Vec<logic::Memcg>> {
        let text = std::fs::read_to_string(&self.files.lru_gen)
            .with_context(|| format!("cannot read {}", self.files.lru_gen.display()))?;
        Ok(logic::parse_lru_gen(&text))
    }

    /// One round with settings `s`; returns early (with what was done) once `stop` is set.
    pub fn round(&mut self, s: &MemcgSettings, stop: &AtomicBool) -> Result<MemcgRound> {
        let memcgs = self.read_memcgs()?;
        let mut r = MemcgRound {
            memcgs: memcgs.len(),
            ..Default::default()
        };
        // Forget memcgs that went away (an id reused for another path is another memcg).
        self.agings.retain(|(id, path, node), _| {
            memcgs
                .iter()
                .any(|m| m.id == *id && m.path == *path && m.nodes.iter().any(|n| n.node == *node))
        });
        self.psi.begin_round();
        let fresh = logic::fresh_limit(s.period_secs);
        let mut to_evict: Vec<LruvecKey> = Vec::new();
        for m in memcgs.iter().filter(|m| m.id != 0) {
            let pressure = self.files.memcg_pressure(&m.path);
            for lru in &m.nodes {
                if stop.load(Ordering::Relaxed) {
                    return Ok(r);
                }
                let pct = self.psi.percent(&pressure);
                if pct > u64::from(s.period_psi_percent_limit) {
                    debug!(subsystem = SUBSYSTEM, memcg = %m.path, node = lru.node, psi_percent = pct, "memcg skipped: memory pressure above the limit");
                    r.skipped_pressure += 1;
                    continue;
                }
                if !logic::aging_due(lru, fresh) {
                    continue;
                }
                let Some(max_seq) = lru.youngest().map(|g| g.seq) else {
                    continue;
                };
                let cmd = logic::aging_command(m.id, lru.node, max_seq, s.swap);
                if let Err(e) = self.files.lru_gen_command(&cmd) {
                    warn!(subsystem = SUBSYSTEM, memcg = %m.path, command = %cmd, error = %e, "MGLRU aging failed");
                    r.errors += 1;
                    continue;
                }
                r.aged += 1;
                let key = (m.id, m.path.clone(), lru.node);
                if !self.agings.contains_key(&key) && self.agings.len() >= TRACKED_MAX {
                    continue;
                }
                let count = self.agings.entry(key.clone()).or_insert(0);
                *count = count.saturating_add(1);
                debug!(subsystem = SUBSYSTEM, memcg = %m.path, node = lru.node, max_seq, agings = *count, "memcg aged");
                if *count >= s.eviction_run_aging_count_min {
                    to_evict.push(key);
                }
            }
        }
        let swap_usable = s.swap
            && self
                .files
                .meminfo_kb("SwapFree")
                .is_ok_and(|kb| kb > logic::SWAP_FREE_MIN_KB);
        for key in to_evict {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let pressure = self.files.memcg_pressure(&key.1);
            match self.evict(&key, s, swap_usable, &pressure, stop) {
                Ok(e) => {
                    debug!(subsystem = SUBSYSTEM, memcg = %key.1, node = key.2, pages = e.pages, stop = ?e.stop,
                        oldest_anon = e.oldest.map(|g| g.0), oldest_file = e.oldest.map(|g| g.1), "memcg eviction done");
                    if e.pages > 0 {
                        r.evicted += 1;
                        r.pages_freed += e.pages;
                    }
                }
                Err(e) => {
                    warn!(subsystem = SUBSYSTEM, memcg = %key.1, error = %format!("{e:#}"), "MGLRU eviction failed");
                    r.errors += 1;
                }
            }
        }
        Ok(r)
    }

    /// Evicts from the oldest generation of one lruvec until a stop reason.
    fn evict(
        &mut self,
        key: &LruvecKey,
        s: &MemcgSettings,
        swap_usable: bool,
        pressure: &std::path::Path,
        stop: &AtomicBool,
    ) -> Result<Eviction> {
        let mut psi = PsiMeter::default();
        psi.sample(pressure);
        // The oldest generation (seq, anon, file) before the last command.
        let mut last: Option<(u64, u64, u64)> = None;
        let mut e = Eviction::default();
        let started = Instant::now();
        for _ in 0..EVICTION_STEPS_MAX {
            if stop.load(Ordering::Relaxed) {
                return Ok(e);
            }
            let Some(lru) = self.lruvec(key)? else {
                // The memcg went away meanwhile.
                e.stop = Some(EvictionStop::Empty);
                return Ok(e);
            };
            let Some(oldest) = lru.oldest().copied() else {
                e.stop = Some(EvictionStop::TooFewGenerations);
                return Ok(e);
            };
            e.oldest.get_or_insert((oldest.anon, oldest.file));
            let prev = match last {
                Some((seq, anon, file)) if seq == oldest.seq => {
                    e.pages = e.pages.saturating_add(logic::freed((anon, file), &oldest));
                    Some((anon, file))
                }
                Some((_, anon, file)) => {
                    // The generation was emptied and dropped: what it held left it.
                    let anon = if swap_usable { anon } else { 0 };
                    e.pages = e.pages.saturating_add(anon.saturating_add(file));
                    None
                }
                None => None,
            };
            let pct = psi.sample(pressure);
            let step = logic::eviction_step(
                &lru,
                prev,
                swap_usable,
                s.swappiness_max,
                pct,
                s.eviction_psi_percent_limit,
            );
            match step {
                EvictionStep::Stop(why) => {
                    e.stop = Some(why);
                    return Ok(e);
                }
                EvictionStep::Evict { seq, swappiness } => {
                    let cmd = logic::eviction_command(
                        key.0,
                        key.2,
                        seq,
                        swappiness,
                        EVICTION_BATCH_PAGES,
                    );
                    self.files
                        .lru_gen_command(&cmd)
                        .with_context(|| format!("command {cmd:?}"))?;
                }
            }
            last = Some((oldest.seq, oldest.anon, oldest.file));
        }
        info!(subsystem = SUBSYSTEM, memcg = %key.1, pages = e.pages, elapsed_ms = started.elapsed().as_millis() as u64, "memcg eviction reached its step bound");
        Ok(e)
    }

    fn lruvec(&self, key: &LruvecKey) -> Result<Option<NodeLru>> {
        Ok(self
            .read_memcgs()?
            .into_iter()
            .find(|m| m.id == key.0 && m.path == key.1)
            .and_then(|m| m.nodes.into_iter().find(|n| n.node == key.2)))
    }
}
