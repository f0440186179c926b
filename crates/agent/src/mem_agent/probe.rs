//! What the memory agent reads and writes in `/proc` and `/sys`: where the files are, the MGLRU
//! check at start-up, and pressure (PSI) meters.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::{debug, info};

use super::logic;
use super::SUBSYSTEM;

/// The files the memory agent works with.
#[derive(Debug, Clone)]
pub struct Files {
    /// `<sysfs>/kernel/mm/lru_gen/enabled`.
    pub lru_gen_enabled: PathBuf,
    /// `<sysfs>/kernel/debug/lru_gen`: MGLRU's per-memcg generations and commands.
    pub lru_gen: PathBuf,
    /// The cgroup mount (`memory.pressure` of a memcg under cgroup v2).
    pub cgroup_root: PathBuf,
    pub cgroup_v2: bool,
    /// `/proc/pressure/memory`: system-wide memory pressure.
    pub pressure: PathBuf,
    pub meminfo: PathBuf,
    pub pagetypeinfo: PathBuf,
    pub compact_memory: PathBuf,
}

impl Files {
    pub fn new(sysfs: &Path, cgroup_root: &Path, cgroup_v2: bool) -> Files {
        Files {
            lru_gen_enabled: sysfs.join("kernel/mm/lru_gen/enabled"),
            lru_gen: sysfs.join("kernel/debug/lru_gen"),
            cgroup_root: cgroup_root.to_path_buf(),
            cgroup_v2,
            pressure: PathBuf::from("/proc/pressure/memory"),
            meminfo: PathBuf::from("/proc/meminfo"),
            pagetypeinfo: PathBuf::from("/proc/pagetypeinfo"),
            compact_memory: PathBuf::from("/proc/sys/vm/compact_memory"),
        }
    }

    /// The pressure file of a memcg: its own `memory.pressure` under cgroup v2 when present,
    /// else the system-wide one.
    pub fn memcg_pressure(&self, memcg_path: &str) -> PathBuf {
        if self.cgroup_v2 {
            let p = self
                .cgroup_root
                .join(memcg_path.trim_start_matches('/'))
                .join("memory.pressure");
            if p.is_file() {
                return p;
            }
        }
        self.pressure.clone()
    }

    /// Sends one command to the `lru_gen` file (one write, as the kernel wants).
    pub fn lru_gen_command(&self, cmd: &str) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.lru_gen)?;
        f.write_all(cmd.as_bytes())
    }

    pub fn memfree_kb(&self) -> std::io::Result<u64> {
        self.meminfo_kb("MemFree")
    }

    pub fn meminfo_kb(&self, field: &str) -> std::io::Result<u64> {
        let text = std::fs::read_to_string(&self.meminfo)?;
        logic::meminfo_kb(&text, field).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no {field} in {}", self.meminfo.display()),
            )
        })
    }
}

/// Makes MGLRU usable: checks the kernel has it, turns every capability on, and (as PID 1) mounts
/// debugfs for the `lru_gen` file. The error says why the memcg part cannot run.
pub fn enable_mglru(files: &Files, init_mode: bool) -> Result<(), String> {
    let enabled = std::fs::read_to_string(&files.lru_gen_enabled).map_err(|e| {
        format!(
            "the kernel has no multi-generational LRU (MGLRU, lru_gen): cannot read {}: {e}",
            files.lru_gen_enabled.display()
        )
    })?;
    let text = enabled.trim();
    let caps = match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    };
    if caps != Some(7) {
        std::fs::write(&files.lru_gen_enabled, "7")
            .or_else(|_| std::fs::write(&files.lru_gen_enabled, "y"))
            .map_err(|e| {
                format!(
                    "cannot turn MGLRU (lru_gen) on in {}: {e}",
                    files.lru_gen_enabled.display()
                )
            })?;
        info!(
            subsystem = SUBSYSTEM,
            previous = text,
            "MGLRU (lru_gen) turned on"
        );
    }
    if !files.lru_gen.exists() && init_mode {
        if let Some(debugfs) = files.lru_gen.parent() {
            mount_debugfs(debugfs)?;
        }
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&files.lru_gen)
        .map_err(|e| {
            format!(
                "the MGLRU debugfs interface (lru_gen) is not usable: {}: {e}",
                files.lru_gen.display()
            )
        })?;
    Ok(())
}

fn mount_debugfs(dir: &Path) -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    mount(
        Some("debugfs"),
        dir,
        Some("debugfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("cannot mount debugfs on {}: {e}", dir.display()))?;
    debug!(subsystem = SUBSYSTEM, dir = %dir.display(), "debugfs mounted for lru_gen");
    Ok(())
}

/// Pressure since the previous sample of one PSI file. A missing or unreadable file (PSI off)
/// reads as no pressure.
#[derive(Debug, Default)]
pub struct PsiMeter {
    last: Option<(u64, Instant)>,
}

impl PsiMeter {
    /// Percentage of time stalled on memory since the previous call (0 on the first one).
    pub fn sample(&mut self, path: &Path) -> u64 {
        let Some(total) = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| logic::parse_psi_some_total(&t))
        else {
            return 0;
        };
        let now = Instant::now();
        let pct = match self.last {
            Some((prev, at)) => logic::psi_percent(prev, total, now.duration_since(at)),
            None => 0,
        };
        self.last = Some((total, now));
        pct
    }
}

/// One meter per PSI file, sampled at most once per round (memcgs may share a file).
#[derive(Debug, Default)]
pub struct PsiMeters {
    meters: HashMap<PathBuf, PsiMeter>,
    round: HashMap<PathBuf, u64>,
}

impl PsiMeters {
    /// Starts a round: forgets the files no memcg uses any more.
    pub fn begin_round(&mut self) {
        let used: Vec<PathBuf> = self.round.drain().map(|(p, _)| p).collect();
        self.meters.retain(|p, _| used.contains(p));
    }

    /// The pressure of `path` for this round.
    pub fn percent(&mut self, path: &Path) -> u64 {
        if let Some(p) = self.round.get(path) {
            return *p;
        }
        let pct = self
            .meters
            .entry(path.to_path_buf())
            .or_default()
            .sample(path);
        self.round.insert(path.to_path_buf(), pct);
        pct
    }
}
