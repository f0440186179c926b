//! The memory agent's decisions, as pure functions over the text of `/proc` and `/sys` files:
//! parsers for the MGLRU debugfs file (`lru_gen`), PSI files, `/proc/pagetypeinfo` and
//! `/proc/meminfo`, and the rules that say when to age, evict and compact.

use std::time::Duration;

use crate::config::mem_agent::{CompactSettings, SWAPPINESS_MAX};

/// Generations an MGLRU lruvec has at most (kernel `MAX_NR_GENS`). The oldest generation is
/// evicted from only when all of them exist: its pages then went through every aging.
pub const MAX_NR_GENS: usize = 4;
/// Free swap below this many KiB (256 pages of 4 KiB) counts as no swap.
pub const SWAP_FREE_MIN_KB: u64 = 256 * 4;
/// Upstream does not age a memcg whose youngest generation is younger than this.
pub const FRESH_GENERATION: Duration = Duration::from_secs(60);

/// One generation of an lruvec: `seq age_ms anon_pages file_pages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation {
    pub seq: u64,
    pub age_ms: u64,
    pub anon: u64,
    pub file: u64,
}

/// The generations of one memcg on one NUMA node, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLru {
    pub node: u32,
    pub gens: Vec<Generation>,
}

impl NodeLru {
    pub fn oldest(&self) -> Option<&Generation> {
        self.gens.first()
    }

    pub fn youngest(&self) -> Option<&Generation> {
        self.gens.last()
    }
}

/// One memcg of the `lru_gen` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memcg {
    /// The kernel's memcg id (0: offline or memcg disabled; such memcgs are skipped).
    pub id: u32,
    /// Path in the memory cgroup hierarchy (`/` for the root).
    pub path: String,
    pub nodes: Vec<NodeLru>,
}

/// Parses `/sys/kernel/debug/lru_gen` (read through the writable interface, which prints one
/// `seq age_ms anon file` line per generation):
///
/// ```text
/// memcg     1 /
///  node     0
///          0      12345          10        200
///          1       6000          20         30
/// ```
///
/// Lines that fit nowhere are skipped; a malformed generation line ends its node.
pub fn parse_lru_gen(text: &str) -> Vec<Memcg> {
    let mut memcgs: Vec<Memcg> = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["memcg", id, path @ ..] => {
                let Ok(id) = id.parse::<u32>() else { continue };
                memcgs.push(Memcg {
                    id,
                    // A memcg-less kernel prints no path; paths have no white space.
                    path: path
                        .first()
                        .map_or_else(|| "/".to_string(), |p| p.to_string()),
                    nodes: Vec::new(),
                });
            }
            ["node", node] => {
                let (Some(m), Ok(node)) = (memcgs.last_mut(), node.parse::<u32>()) else {
                    continue;
                };
                m.nodes.push(NodeLru {
                    node,
                    gens: Vec::new(),
                });
            }
            [seq, age, anon, file] => {
                let Some(n) = memcgs.last_mut().and_then(|m| m.nodes.last_mut()) else {
                    continue;
                };
                // Older kernels could print a negative transient count: read it as 0.
                let count = |w: &str| {
                    if w.starts_with('-') {
                        Some(0)
                    } else {
                        w.trim_end_matches(['x', ' ']).parse::<u64>().ok()
                    }
                };
                let (Ok(seq), Ok(age_ms), Some(anon), Some(file)) =
                    (seq.parse(), age.parse(), count(anon), count(file))
                else {
                    continue;
                };
                n.gens.push(Generation {
                    seq,
                    age_ms,
                    anon,
                    file,
                });
            }
            _ => {}
        }
    }
    memcgs
}

/// The aging command: make a new youngest generation (`+ memcg node max_seq can_swap force_scan`).
pub fn aging_command(memcg: u32, node: u32, max_seq: u64, swap: bool) -> String {
    format!("+ {memcg} {node} {max_seq} {} 1", u8::from(swap))
}

/// The eviction command: reclaim up to `nr_pages` from generations up to `seq`
/// (`- memcg node seq swappiness nr_to_reclaim`).
pub fn eviction_command(memcg: u32, node: u32, seq: u64, swappiness: u8, nr_pages: u64) -> String {
    format!("- {memcg} {node} {seq} {swappiness} {nr_pages}")
}

/// Whether an lruvec is due for aging: its youngest generation is older than `fresh` (a recent
/// generation means the kernel or a previous round aged it already).
pub fn aging_due(lru: &NodeLru, fresh: Duration) -> bool {
    lru.youngest()
        .is_some_and(|g| u128::from(g.age_ms) >= fresh.as_millis())
}

/// How young a generation may be and still be left alone: upstream's 60 s, or one period when
/// the period is shorter (otherwise short periods would never age).
pub fn fresh_limit(period_secs: u64) -> Duration {
    FRESH_GENERATION.min(Duration::from_secs(period_secs))
}

/// Why an eviction from an lruvec stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionStop {
    /// Fewer than [`MAX_NR_GENS`] generations: the oldest one is not cold enough yet.
    TooFewGenerations,
    /// Nothing evictable left in the oldest generation.
    Empty,
    /// The last eviction freed nothing.
    NoProgress,
    /// Memory pressure went above the limit.
    Pressure,
}

/// The next step of an eviction from one lruvec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionStep {
    Evict { seq: u64, swappiness: u8 },
    Stop(EvictionStop),
}

/// Decides the next eviction step. `prev` is the oldest generation's `(anon, file)` before the
/// previous step of this eviction (None on the first step); `swap_usable` says that anonymous
/// pages may go to swap (enabled and swap space free); `psi_percent` is the memory pressure
/// since the previous step.
pub fn eviction_step(
    lru: &NodeLru,
    prev: Option<(u64, u64)>,
    swap_usable: bool,
    swappiness_max: u8,
    psi_percent: u64,
    psi_limit: u8,
) -> EvictionStep {
    let Some(oldest) = lru.oldest() else {
        return EvictionStep::Stop(EvictionStop::TooFewGenerations);
    };
    if lru.gens.len() < MAX_NR_GENS {
        return EvictionStep::Stop(EvictionStop::TooFewGenerations);
    }
    if let Some((anon, file)) = prev {
        if oldest.anon >= anon && oldest.file >= file {
            return EvictionStep::Stop(EvictionStop::NoProgress);
        }
    }
    if psi_percent > u64::from(psi_limit) {
        return EvictionStep::Stop(EvictionStop::Pressure);
    }
    let anon = if swap_usable { oldest.anon } else { 0 };
    if oldest.file == 0 && anon == 0 {
        return EvictionStep::Stop(EvictionStop::Empty);
    }
    EvictionStep::Evict {
        seq: oldest.seq,
        swappiness: swappiness(anon, oldest.file, swappiness_max),
    }
}

/// The swappiness of an eviction: 0 without anonymous pages, 200 (anonymous only) without file
/// pages, else the anonymous share of 200 rounded, capped at `max`.
pub fn swappiness(anon: u64, file: u64, max: u8) -> u8 {
    if anon == 0 {
        return 0;
    }
    if file == 0 {
        return SWAPPINESS_MAX;
    }
    let total = u128::from(anon) + u128::from(file);
    let share = (u128::from(anon) * 200 * 2 + total) / (total * 2);
    (share.min(u128::from(max))) as u8
}

/// Pages freed between two looks at the oldest generation.
pub fn freed(prev: (u64, u64), now: &Generation) -> u64 {
    prev.0.saturating_sub(now.anon) + prev.1.saturating_sub(now.file)
}

/// The `total=` of the `some` line of a PSI file (microseconds stalled since boot).
pub fn parse_psi_some_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("total="))?
        .parse()
        .ok()
}

/// Pressure between two samples of a PSI total: stalled time as a percentage of the elapsed time.
/// Zero when the elapsed time is zero or the counter went backwards.
pub fn psi_percent(prev_total_us: u64, total_us: u64, elapsed: Duration) -> u64 {
    let elapsed_us = elapsed.as_micros();
    if elapsed_us == 0 || total_us <= prev_total_us {
        return 0;
    }
    let pct = u128::from(total_us - prev_total_us) * 100 / elapsed_us;
    u64::try_from(pct).unwrap_or(u64::MAX)
}

/// A field of `/proc/meminfo` in KiB (`MemFree`, `SwapFree`, ...).
pub fn meminfo_kb(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Free movable pages in blocks of order below `order_limit`, summed over every node and zone of
/// `/proc/pagetypeinfo` (`Node 0, zone Normal, type Movable c0 c1 ... c10`): the fragments a
/// compaction could merge into larger blocks.
pub fn free_movable_fragments(pagetypeinfo: &str, order_limit: u8) -> u64 {
    let mut pages: u64 = 0;
    for line in pagetypeinfo.lines() {
        if !line.starts_with("Node") {
            continue;
        }
        let mut words = line.split_whitespace();
        if !words.any(|w| w == "type") || words.next() != Some("Movable") {
            continue;
        }
        for (order, count) in words.enumerate().take(usize::from(order_limit)) {
            let Ok(count) = count.parse::<u64>() else {
                break;
            };
            pages = pages.saturating_add(count.saturating_mul(1u64 << order.min(63)));
        }
    }
    pages
}

/// What the compaction part remembers between rounds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactHistory {
    /// MemFree (KiB) after the last compaction.
    pub memfree_kb: u64,
    /// Free movable fragments (pages) after the last compaction.
    pub fragments: u64,
    /// Rounds since the last compaction.
    pub rounds_without: u64,
}

/// Why a compaction round did or did not compact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactDecision {
    /// `compact_force_times` rounds passed without a compaction.
    Forced,
    /// Fragments grew by more than the threshold since the last compaction.
    Fragmented,
    /// Free memory shrank by more than the threshold since the last compaction.
    FreeMemoryDropped,
    /// Memory pressure since the last round is above the limit.
    SkipPressure,
    /// Fragmentation did not grow enough.
    SkipBelowThreshold,
}

impl CompactDecision {
    pub fn compacts(self) -> bool {
        matches!(
            self,
            CompactDecision::Forced
                | CompactDecision::Fragmented
                | CompactDecision::FreeMemoryDropped
        )
    }
}

/// Decides a compaction round from the pressure since the last round, the current MemFree
/// (KiB) and free movable fragments (pages).
pub fn compaction_decision(
    s: &CompactSettings,
    h: &CompactHistory,
    psi_percent: u64,
    memfree_kb: u64,
    fragments: u64,
) -> CompactDecision {
    if psi_percent > u64::from(s.period_psi_percent_limit) {
        return CompactDecision::SkipPressure;
    }
    if s.compact_force_times != u64::MAX && h.rounds_without >= s.compact_force_times {
        return CompactDecision::Forced;
    }
    if h.memfree_kb > memfree_kb.saturating_add(s.threshold_kb()) {
        return CompactDecision::FreeMemoryDropped;
    }
    if fragments > h.fragments.saturating_add(s.compact_threshold) {
        return CompactDecision::Fragmented;
    }
    CompactDecision::SkipBelowThreshold
}

/// Whether a running compaction must be stopped, after `elapsed`, with the pressure since the
/// last check.
pub fn compaction_must_stop(s: &CompactSettings, elapsed: Duration, psi_percent: u64) -> bool {
    let max = Duration::from_secs(u64::try_from(s.compact_sec_max).unwrap_or(0));
    elapsed >= max || psi_percent > u64::from(s.compact_psi_percent_limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/sys/kernel/debug/lru_gen` of a small guest (6.1): the root memcg on one node, a
    /// container memcg with four generations, and an offline memcg.
    const LRU_GEN: &str = "\
memcg     1 /
 node     0
          4      75210        1200       8000 
          5      41200         300       2500 
          6       2000          80        900 
memcg     5 /kata/c1
 node     0
         10     190000          12        640 
         11     130000          40        100 
         12      70000           0         20 
         13      65000           7          3 
 node     1
          2        100           0          0 
memcg     0 /kata/gone
 node     0
          0     500000           0          0 
";

    fn gen(seq: u64, age_ms: u64, anon: u64, file: u64) -> Generation {
        Generation {
            seq,
            age_ms,
            anon,
            file,
        }
    }

    #[test]
    fn lru_gen_parses_memcgs_nodes_and_generations() {
        let m = parse_lru_gen(LRU_GEN);
        assert_eq!(m.len(), 3);
        assert_eq!((m[0].id, m[0].path.as_str()), (1, "/"));
        assert_eq!(m[0].nodes.len(), 1);
        assert_eq!(m[0].nodes[0].gens[0], gen(4, 75210, 1200, 8000));
        assert_eq!(m[0].nodes[0].youngest(), Some(&gen(6, 2000, 80, 900)));
        assert_eq!((m[1].id, m[1].path.as_str()), (5, "/kata/c1"));
        assert_eq!(m[1].nodes.len(), 2);
        assert_eq!(m[1].nodes[0].gens.len(), 4);
        assert_eq!(m[1].nodes[1].node, 1);
        assert_eq!(m[2].id, 0);
    }

    #[test]
    fn lru_gen_tolerates_odd_lines() {
        let m = parse_lru_gen("junk\n node 0\nmemcg x /a\nmemcg 2\n node 0\n 1 2 -3 4\n 5 6 7\n");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].path, "/");
        assert_eq!(m[0].nodes[0].gens, vec![gen(1, 2, 0, 4)]);
        assert!(parse_lru_gen("").is_empty());
    }

    #[test]
    fn commands_have_the_kernel_syntax() {
        assert_eq!(aging_command(5, 0, 13, false), "+ 5 0 13 0 1");
        assert_eq!(aging_command(1, 1, 6, true), "+ 1 1 6 1 1");
        assert_eq!(eviction_command(5, 0, 10, 0, 256), "- 5 0 10 0 256");
    }

    #[test]
    fn aging_waits_for_a_cold_youngest_generation() {
        let m = parse_lru_gen(LRU_GEN);
        let fresh = fresh_limit(600);
        assert_eq!(fresh, Duration::from_secs(60));
        // Root: youngest generation 2 s old.
        assert!(!aging_due(&m[0].nodes[0], fresh));
        // Container: youngest generation 65 s old.
        assert!(aging_due(&m[1].nodes[0], fresh));
        // Short periods shorten the wait.
        assert!(aging_due(&m[0].nodes[0], fresh_limit(2)));
        assert!(!aging_due(
            &NodeLru {
                node: 0,
                gens: vec![]
            },
            fresh
        ));
    }

    #[test]
    fn eviction_needs_all_generations() {
        let m = parse_lru_gen(LRU_GEN);
        assert_eq!(
            eviction_step(&m[0].nodes[0], None, false, 50, 0, 1),
            EvictionStep::Stop(EvictionStop::TooFewGenerations)
        );
        assert_eq!(
            eviction_step(&m[1].nodes[0], None, false, 50, 0, 1),
            EvictionStep::Evict {
                seq: 10,
                swappiness: 0
            }
        );
    }

    #[test]
    fn eviction_swappiness_follows_the_anon_share() {
        let m = parse_lru_gen(LRU_GEN);
        // 12 anon / 640 file: round(200 * 12 / 652) = 4.
        assert_eq!(
            eviction_step(&m[1].nodes[0], None, true, 50, 0, 1),
            EvictionStep::Evict {
                seq: 10,
                swappiness: 4
            }
        );
        assert_eq!(swappiness(100, 50, 200), 133);
        assert_eq!(swappiness(100, 50, 50), 50);
        assert_eq!(swappiness(0, 50, 50), 0);
        assert_eq!(swappiness(7, 0, 50), 200);
        assert_eq!(swappiness(1, 1, 200), 100);
    }

    #[test]
    fn eviction_stops_without_progress_pressure_or_pages() {
        let lru = |anon, file| NodeLru {
            node: 0,
            gens: vec![
                gen(10, 9, anon, file),
                gen(11, 8, 1, 1),
                gen(12, 7, 1, 1),
                gen(13, 6, 1, 1),
            ],
        };
        // Progress: 640 -> 500 file pages.
        assert!(matches!(
            eviction_step(&lru(12, 500), Some((12, 640)), false, 50, 0, 1),
            EvictionStep::Evict { .. }
        ));
        assert_eq!(freed((12, 640), &gen(10, 0, 12, 500)), 140);
        // No progress.
        assert_eq!(
            eviction_step(&lru(12, 640), Some((12, 640)), false, 50, 0, 1),
            EvictionStep::Stop(EvictionStop::NoProgress)
        );
        // Pressure above the limit.
        assert_eq!(
            eviction_step(&lru(12, 500), Some((12, 640)), false, 50, 2, 1),
            EvictionStep::Stop(EvictionStop::Pressure)
        );
        // Only anonymous pages and no swap.
        assert_eq!(
            eviction_step(&lru(12, 0), None, false, 50, 0, 1),
            EvictionStep::Stop(EvictionStop::Empty)
        );
        // Only anonymous pages with swap: anonymous-only eviction.
        assert_eq!(
            eviction_step(&lru(12, 0), None, true, 50, 0, 1),
            EvictionStep::Evict {
                seq: 10,
                swappiness: 200
            }
        );
    }

    const PSI: &str = "some avg10=0.00 avg60=0.12 avg300=0.05 total=37820\n\
                       full avg10=0.00 avg60=0.00 avg300=0.00 total=28881\n";

    #[test]
    fn psi_total_and_percent() {
        assert_eq!(parse_psi_some_total(PSI), Some(37820));
        assert_eq!(parse_psi_some_total("full total=3\n"), None);
        assert_eq!(parse_psi_some_total("some avg10=x total=abc\n"), None);
        // 50 ms stalled in 1 s: 5 %.
        assert_eq!(psi_percent(37820, 87820, Duration::from_secs(1)), 5);
        assert_eq!(psi_percent(37820, 37820, Duration::from_secs(1)), 0);
        assert_eq!(psi_percent(37820, 10, Duration::from_secs(1)), 0);
        assert_eq!(psi_percent(0, 10, Duration::ZERO), 0);
    }

    const MEMINFO: &str = "MemTotal:         499740 kB\nMemFree:          312456 kB\n\
                           MemAvailable:     400000 kB\nSwapTotal:             0 kB\n\
                           SwapFree:              0 kB\n";

    #[test]
    fn meminfo_fields() {
        assert_eq!(meminfo_kb(MEMINFO, "MemFree"), Some(312456));
        assert_eq!(meminfo_kb(MEMINFO, "SwapFree"), Some(0));
        assert_eq!(meminfo_kb(MEMINFO, "Mem"), None);
        assert_eq!(meminfo_kb(MEMINFO, "Cached"), None);
    }

    /// `/proc/pagetypeinfo` of a one-node guest (orders 0..10), with the block-count table that
    /// follows the free lists (its header names `Movable` too).
    const PAGETYPEINFO: &str = "\
Page block order: 9
Pages per block:  512

Free pages count per migrate type at order       0      1      2      3      4      5      6      7      8      9     10 
Node    0, zone      DMA, type    Unmovable      0      0      0      0      0      0      0      0      0      0      0 
Node    0, zone      DMA, type      Movable      1      1      0      0      0      0      0      0      0      1      3 
Node    0, zone    DMA32, type    Unmovable     10      5      2      1      0      0      0      0      0      0      0 
Node    0, zone    DMA32, type      Movable    100     50     20     10      4      2      1      0      1      2     60 
Node    0, zone    DMA32, type  Reclaimable      3      1      0      0      0      0      0      0      0      0      0 

Number of blocks type     Unmovable      Movable  Reclaimable   HighAtomic      Isolate 
Node 0, zone      DMA            1            7            0            0            0 
Node 0, zone    DMA32           20          230           6            0            0 
";

    #[test]
    fn pagetypeinfo_fragments_below_the_order() {
        // DMA: 1 + 2 = 3; DMA32: 100 + 100 + 80 + 80 + 64 + 64 + 64 + 0 + 256 = 808.
        assert_eq!(free_movable_fragments(PAGETYPEINFO, 9), 811);
        assert_eq!(free_movable_fragments(PAGETYPEINFO, 1), 101);
        assert_eq!(free_movable_fragments(PAGETYPEINFO, 0), 0);
        // Every order: adds 512 * 3 + 1024 * 3 for DMA and 512 * 2 + 1024 * 60 for DMA32.
        assert_eq!(
            free_movable_fragments(PAGETYPEINFO, 11),
            811 + 512 + 3 * 1024 + 2 * 512 + 60 * 1024
        );
        assert_eq!(free_movable_fragments("", 9), 0);
    }

    #[test]
    fn compaction_rules() {
        let s = CompactSettings::default(); // threshold 1024 pages, psi limit 1 %, never forced
        let fresh = CompactHistory::default();
        // First round: any fragmentation above the threshold compacts.
        assert_eq!(
            compaction_decision(&s, &fresh, 0, 300_000, 2000),
            CompactDecision::Fragmented
        );
        assert_eq!(
            compaction_decision(&s, &fresh, 0, 300_000, 1000),
            CompactDecision::SkipBelowThreshold
        );
        assert_eq!(
            compaction_decision(&s, &fresh, 2, 300_000, 5000),
            CompactDecision::SkipPressure
        );
        let after = CompactHistory {
            memfree_kb: 300_000,
            fragments: 800,
            rounds_without: 0,
        };
        // Fragments grew by 1024 exactly: not more than the threshold.
        assert_eq!(
            compaction_decision(&s, &after, 0, 300_000, 1824),
            CompactDecision::SkipBelowThreshold
        );
        assert_eq!(
            compaction_decision(&s, &after, 0, 300_000, 1825),
            CompactDecision::Fragmented
        );
        // MemFree dropped by more than 4096 KiB.
        assert_eq!(
            compaction_decision(&s, &after, 0, 295_000, 0),
            CompactDecision::FreeMemoryDropped
        );
        // Forced after compact_force_times quiet rounds.
        let forced = CompactSettings {
            compact_force_times: 2,
            ..CompactSettings::default()
        };
        let quiet = CompactHistory {
            rounds_without: 2,
            ..after.clone()
        };
        assert_eq!(
            compaction_decision(&forced, &quiet, 0, 300_000, 800),
            CompactDecision::Forced
        );
        assert!(CompactDecision::Forced.compacts());
        assert!(!CompactDecision::SkipPressure.compacts());
    }

    #[test]
    fn running_compaction_bounds() {
        let s = CompactSettings {
            compact_sec_max: 3,
            ..CompactSettings::default()
        };
        assert!(!compaction_must_stop(&s, Duration::from_secs(2), 5));
        assert!(compaction_must_stop(&s, Duration::from_secs(3), 0));
        assert!(compaction_must_stop(&s, Duration::from_secs(1), 6));
        let zero = CompactSettings {
            compact_sec_max: 0,
            ..CompactSettings::default()
        };
        assert!(compaction_must_stop(&zero, Duration::ZERO, 0));
    }
}
