//! The memory agent's settings: defaults, the kernel command line and TOML options
//! (`agent.mem_agent_*` / `mem_agent_*`), and partial updates from MemAgentMemcgSet and
//! MemAgentCompactSet. Names and defaults are upstream's.

use anyhow::{anyhow, bail, Result};

/// Default period of both parts (seconds).
pub const DEFAULT_PERIOD_SECS: u64 = 600;
/// Pages are 4 KiB here: thresholds in pages turn into KiB with `<< 2` (as upstream).
const PAGE_KB_SHIFT: u32 = 2;
/// The order free page reporting (virtio-balloon) works with: upstream's default compact order.
const PAGE_REPORTING_MIN_ORDER: u8 = 9;
/// The largest swappiness MGLRU eviction takes.
pub const SWAPPINESS_MAX: u8 = 200;

/// `agent.mem_agent_enable` and the settings of both parts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemAgentConfig {
    /// `agent.mem_agent_enable`: start the memory agent (off by default).
    pub enable: bool,
    pub memcg: MemcgSettings,
    pub compact: CompactSettings,
}

/// Settings of the memcg part (MGLRU aging and eviction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemcgSettings {
    pub disabled: bool,
    /// Anonymous pages may be evicted to swap.
    pub swap: bool,
    /// Upper bound of the swappiness used for an eviction (0..=200).
    pub swappiness_max: u8,
    pub period_secs: u64,
    /// A memcg is not aged in a round when its memory pressure since the last round is above this.
    pub period_psi_percent_limit: u8,
    /// Eviction stops when memory pressure during it goes above this.
    pub eviction_psi_percent_limit: u8,
    /// A memcg is evicted from only after this many agings by the memory agent.
    pub eviction_run_aging_count_min: u64,
}

impl Default for MemcgSettings {
    fn default() -> Self {
        MemcgSettings {
            disabled: false,
            swap: false,
            swappiness_max: 50,
            period_secs: DEFAULT_PERIOD_SECS,
            period_psi_percent_limit: 1,
            eviction_psi_percent_limit: 1,
            eviction_run_aging_count_min: 3,
        }
    }
}

/// Settings of the compaction part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactSettings {
    pub disabled: bool,
    pub period_secs: u64,
    /// No compaction in a round when memory pressure since the last round is above this.
    pub period_psi_percent_limit: u8,
    /// A running compaction is stopped when memory pressure goes above this.
    pub compact_psi_percent_limit: u8,
    /// A running compaction is stopped after this many seconds.
    pub compact_sec_max: i64,
    /// Free movable pages below this order count as fragments.
    pub compact_order: u8,
    /// Pages: compact when the fragments grew, or free memory shrank, by more than this since
    /// the last compaction.
    pub compact_threshold: u64,
    /// Compact anyway after this many rounds without one (`u64::MAX`: never force).
    pub compact_force_times: u64,
}

impl Default for CompactSettings {
    fn default() -> Self {
        CompactSettings {
            disabled: false,
            period_secs: DEFAULT_PERIOD_SECS,
            period_psi_percent_limit: 1,
            compact_psi_percent_limit: 5,
            compact_sec_max: 300,
            compact_order: PAGE_REPORTING_MIN_ORDER,
            compact_threshold: 2 << PAGE_REPORTING_MIN_ORDER,
            compact_force_times: u64::MAX,
        }
    }
}

impl CompactSettings {
    /// [`CompactSettings::compact_threshold`] in KiB.
    pub fn threshold_kb(&self) -> u64 {
        self.compact_threshold.saturating_mul(1 << PAGE_KB_SHIFT)
    }
}

/// A MemAgentMemcgSet request: unset fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemcgUpdate {
    pub disabled: Option<bool>,
    pub swap: Option<bool>,
    pub swappiness_max: Option<u8>,
    pub period_secs: Option<u64>,
    pub period_psi_percent_limit: Option<u8>,
    pub eviction_psi_percent_limit: Option<u8>,
    pub eviction_run_aging_count_min: Option<u64>,
}

/// A MemAgentCompactSet request: unset fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactUpdate {
    pub disabled: Option<bool>,
    pub period_secs: Option<u64>,
    pub period_psi_percent_limit: Option<u8>,
    pub compact_psi_percent_limit: Option<u8>,
    pub compact_sec_max: Option<i64>,
    pub compact_order: Option<u8>,
    pub compact_threshold: Option<u64>,
    pub compact_force_times: Option<u64>,
}

/// Checks the values every source must respect.
pub fn check_period(period_secs: u64) -> Result<()> {
    if period_secs == 0 {
        bail!("a period must be at least 1 second");
    }
    Ok(())
}

fn check_swappiness(s: u8) -> Result<()> {
    if s > SWAPPINESS_MAX {
        bail!("swappiness_max must be between 0 and {SWAPPINESS_MAX}, got {s}");
    }
    Ok(())
}

fn check_sec_max(s: i64) -> Result<()> {
    if s < 0 {
        bail!("compact_sec_max must not be negative, got {s}");
    }
    Ok(())
}

impl MemcgSettings {
    /// Applies `u` after checking it; returns whether the round timer must restart (the period
    /// or the on/off state changed). Nothing changes on an error.
    pub fn apply(&mut self, u: &MemcgUpdate) -> Result<bool> {
        if let Some(p) = u.period_secs {
            check_period(p)?;
        }
        if let Some(s) = u.swappiness_max {
            check_swappiness(s)?;
        }
        let restart = u.period_secs.is_some_and(|p| p != self.period_secs)
            || u.disabled.is_some_and(|d| d != self.disabled);
        set(&mut self.disabled, u.disabled);
        set(&mut self.swap, u.swap);
        set(&mut self.swappiness_max, u.swappiness_max);
        set(&mut self.period_secs, u.period_secs);
        set(
            &mut self.period_psi_percent_limit,
            u.period_psi_percent_limit,
        );
        set(
            &mut self.eviction_psi_percent_limit,
            u.eviction_psi_percent_limit,
        );
        set(
            &mut self.eviction_run_aging_count_min,
            u.eviction_run_aging_count_min,
        );
        Ok(restart)
    }
}

impl CompactSettings {
    /// Applies `u` after checking it; returns whether the round timer must restart.
    pub fn apply(&mut self, u: &CompactUpdate) -> Result<bool> {
        if let Some(p) = u.period_secs {
            check_period(p)?;
        }
        if let Some(s) = u.compact_sec_max {
            check_sec_max(s)?;
        }
        let restart = u.period_secs.is_some_and(|p| p != self.period_secs)
            || u.disabled.is_some_and(|d| d != self.disabled);
        set(&mut self.disabled, u.disabled);
        set(&mut self.period_secs, u.period_secs);
        set(
            &mut self.period_psi_percent_limit,
            u.period_psi_percent_limit,
        );
        set(
            &mut self.compact_psi_percent_limit,
            u.compact_psi_percent_limit,
        );
        set(&mut self.compact_sec_max, u.compact_sec_max);
        set(&mut self.compact_order, u.compact_order);
        set(&mut self.compact_threshold, u.compact_threshold);
        set(&mut self.compact_force_times, u.compact_force_times);
        Ok(restart)
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// One option value, whatever its source.
enum Raw<'a> {
    /// Kernel command line text after the single `=`.
    Text(&'a str),
    Toml(&'a toml::Value),
}

impl Raw<'_> {
    fn bool(&self) -> Result<bool> {
        match self {
            Raw::Text("true") => Ok(true),
            Raw::Text("false") => Ok(false),
            Raw::Text(t) => bail!("{t:?} is not true or false"),
            Raw::Toml(v) => v.as_bool().ok_or_else(|| anyhow!("must be a boolean")),
        }
    }

    fn int<T: TryFrom<i64> + std::str::FromStr>(&self) -> Result<T> {
        let what = std::any::type_name::<T>();
        match self {
            Raw::Text(t) => t
                .parse::<T>()
                .map_err(|_| anyhow!("{t:?} is not a {what} integer")),
            Raw::Toml(v) => {
                let n = v
                    .as_integer()
                    .ok_or_else(|| anyhow!("must be an integer"))?;
                T::try_from(n).map_err(|_| anyhow!("{n} is out of range for {what}"))
            }
        }
    }
}

impl MemAgentConfig {
    /// A kernel command-line token `agent.<key>=<value>` whose key starts with `mem_agent_`
    /// (`value` is `None` when the token holds more than one `=`). Unknown keys are ignored.
    /// Returns a warning to log, if any.
    pub fn apply_cmdline(&mut self, key: &str, value: Option<&str>) -> Result<Option<String>> {
        if key == "mem_agent_enable" {
            // Upstream's lenient boolean: anything unrecognised is false.
            return Ok(match value.and_then(super::parse_bool) {
                Some(b) => {
                    self.enable = b;
                    None
                }
                None => {
                    self.enable = false;
                    Some(format!("agent.{key}: not a boolean, taken as false"))
                }
            });
        }
        let value = value.ok_or_else(|| anyhow!("expected exactly one '='"))?;
        self.apply_key(key, &Raw::Text(value))?;
        Ok(None)
    }

    /// A TOML key starting with `mem_agent_`. Unknown keys are ignored.
    pub fn apply_toml(&mut self, key: &str, value: &toml::Value) -> Result<()> {
        if key == "mem_agent_enable" {
            self.enable = Raw::Toml(value)
                .bool()
                .map_err(|e| anyhow!("key {key}: {e}"))?;
            return Ok(());
        }
        self.apply_key(key, &Raw::Toml(value))
            .map_err(|e| anyhow!("key {key}: {e}"))
    }

    fn apply_key(&mut self, key: &str, v: &Raw<'_>) -> Result<()> {
        let Some(name) = key.strip_prefix("mem_agent_") else {
            return Ok(());
        };
        let mut m = MemcgUpdate::default();
        let mut c = CompactUpdate::default();
        match name {
            "memcg_disable" => m.disabled = Some(v.bool()?),
            "memcg_swap" => m.swap = Some(v.bool()?),
            "memcg_swappiness_max" => m.swappiness_max = Some(v.int()?),
            "memcg_period_secs" => m.period_secs = Some(v.int()?),
            "memcg_period_psi_percent_limit" => m.period_psi_percent_limit = Some(v.int()?),
            "memcg_eviction_psi_percent_limit" => m.eviction_psi_percent_limit = Some(v.int()?),
            "memcg_eviction_run_aging_count_min" => m.eviction_run_aging_count_min = Some(v.int()?),
            "compact_disable" => c.disabled = Some(v.bool()?),
            "compact_period_secs" => c.period_secs = Some(v.int()?),
            "compact_period_psi_percent_limit" => c.period_psi_percent_limit = Some(v.int()?),
            "compact_psi_percent_limit" => c.compact_psi_percent_limit = Some(v.int()?),
            "compact_sec_max" => c.compact_sec_max = Some(v.int()?),
            "compact_order" => c.compact_order = Some(v.int()?),
            "compact_threshold" => c.compact_threshold = Some(v.int()?),
            "compact_force_times" => c.compact_force_times = Some(v.int()?),
            _ => return Ok(()),
        }
        self.memcg.apply(&m)?;
        self.compact.apply(&c)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmdline(line: &str) -> Result<MemAgentConfig> {
        let mut c = MemAgentConfig::default();
        for token in line.split_whitespace() {
            let (key, value) = token.split_once('=').unwrap();
            let key = key.strip_prefix("agent.").unwrap();
            let single = (!value.contains('=')).then_some(value);
            c.apply_cmdline(key, single)?;
        }
        Ok(c)
    }

    #[test]
    fn defaults_are_upstreams() {
        let c = MemAgentConfig::default();
        assert!(!c.enable);
        assert_eq!(c.memcg.swappiness_max, 50);
        assert_eq!(c.memcg.period_secs, 600);
        assert_eq!(c.memcg.eviction_run_aging_count_min, 3);
        assert_eq!(c.compact.compact_threshold, 1024);
        assert_eq!(c.compact.compact_order, 9);
        assert_eq!(c.compact.compact_sec_max, 300);
        assert_eq!(c.compact.compact_psi_percent_limit, 5);
        assert_eq!(c.compact.compact_force_times, u64::MAX);
        assert_eq!(c.compact.threshold_kb(), 4096);
    }

    #[test]
    fn every_cmdline_key() {
        let c = cmdline(
            "agent.mem_agent_enable=1 agent.mem_agent_memcg_disable=true \
             agent.mem_agent_memcg_swap=true agent.mem_agent_memcg_swappiness_max=120 \
             agent.mem_agent_memcg_period_secs=7 agent.mem_agent_memcg_period_psi_percent_limit=3 \
             agent.mem_agent_memcg_eviction_psi_percent_limit=4 \
             agent.mem_agent_memcg_eviction_run_aging_count_min=2 \
             agent.mem_agent_compact_disable=true agent.mem_agent_compact_period_secs=9 \
             agent.mem_agent_compact_period_psi_percent_limit=6 \
             agent.mem_agent_compact_psi_percent_limit=7 agent.mem_agent_compact_sec_max=8 \
             agent.mem_agent_compact_order=4 agent.mem_agent_compact_threshold=10 \
             agent.mem_agent_compact_force_times=11 agent.mem_agent_unknown=zz",
        )
        .unwrap();
        assert!(c.enable);
        let m = &c.memcg;
        assert!(m.disabled && m.swap);
        assert_eq!(
            (m.swappiness_max, m.period_secs, m.period_psi_percent_limit),
            (120, 7, 3)
        );
        assert_eq!(
            (m.eviction_psi_percent_limit, m.eviction_run_aging_count_min),
            (4, 2)
        );
        let k = &c.compact;
        assert!(k.disabled);
        assert_eq!(
            (
                k.period_secs,
                k.period_psi_percent_limit,
                k.compact_psi_percent_limit
            ),
            (9, 6, 7)
        );
        assert_eq!(
            (
                k.compact_sec_max,
                k.compact_order,
                k.compact_threshold,
                k.compact_force_times
            ),
            (8, 4, 10, 11)
        );
    }

    #[test]
    fn options_apply_whatever_their_order() {
        // runtime-rs emits its keys sorted: compact_* before enable. They must count.
        let c =
            cmdline("agent.mem_agent_compact_period_secs=5 agent.mem_agent_enable=true").unwrap();
        assert!(c.enable);
        assert_eq!(c.compact.period_secs, 5);
    }

    #[test]
    fn bad_cmdline_values_fail() {
        for bad in [
            "agent.mem_agent_memcg_swappiness_max=256",
            "agent.mem_agent_memcg_swappiness_max=201",
            "agent.mem_agent_memcg_period_secs=0",
            "agent.mem_agent_memcg_period_secs=10s",
            "agent.mem_agent_memcg_swap=1",
            "agent.mem_agent_compact_sec_max=-1",
            "agent.mem_agent_compact_order=x",
            "agent.mem_agent_compact_threshold=1=2",
        ] {
            assert!(cmdline(bad).is_err(), "{bad} accepted");
        }
        // The enable switch is lenient like upstream's other booleans.
        let mut c = MemAgentConfig::default();
        assert!(c
            .apply_cmdline("mem_agent_enable", Some("yes"))
            .unwrap()
            .is_some());
        assert!(!c.enable);
    }

    #[test]
    fn toml_keys() {
        let t: toml::Table = "mem_agent_enable = true\nmem_agent_memcg_period_secs = 30\n\
                              mem_agent_compact_force_times = 2\nmem_agent_memcg_swap = false"
            .parse()
            .unwrap();
        let mut c = MemAgentConfig::default();
        for (k, v) in &t {
            c.apply_toml(k, v).unwrap();
        }
        assert!(c.enable);
        assert_eq!(c.memcg.period_secs, 30);
        assert_eq!(c.compact.compact_force_times, 2);
        let bad: toml::Table = "mem_agent_compact_order = 300".parse().unwrap();
        let (k, v) = bad.iter().next().unwrap();
        let err = c.apply_toml(k, v).unwrap_err().to_string();
        assert!(err.contains("mem_agent_compact_order"), "{err}");
    }

    #[test]
    fn updates_apply_set_fields_only_and_say_when_to_restart() {
        let mut m = MemcgSettings::default();
        let restart = m
            .apply(&MemcgUpdate {
                swap: Some(true),
                ..Default::default()
            })
            .unwrap();
        assert!(!restart);
        assert!(m.swap);
        assert_eq!(m.period_secs, 600);
        assert!(m
            .apply(&MemcgUpdate {
                period_secs: Some(5),
                ..Default::default()
            })
            .unwrap());
        // Same period again: no restart.
        assert!(!m
            .apply(&MemcgUpdate {
                period_secs: Some(5),
                ..Default::default()
            })
            .unwrap());
        // A bad field leaves everything unchanged.
        let before = m.clone();
        assert!(m
            .apply(&MemcgUpdate {
                disabled: Some(true),
                swappiness_max: Some(201),
                ..Default::default()
            })
            .is_err());
        assert_eq!(m, before);

        let mut c = CompactSettings::default();
        assert!(c
            .apply(&CompactUpdate {
                disabled: Some(true),
                compact_order: Some(3),
                ..Default::default()
            })
            .unwrap());
        assert!(c.disabled);
        assert_eq!(c.compact_order, 3);
        assert!(c
            .apply(&CompactUpdate {
                period_secs: Some(0),
                ..Default::default()
            })
            .is_err());
    }
}
