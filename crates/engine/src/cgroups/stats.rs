//! Cgroup statistics, shaped like the agent's `CgroupStats` protobuf message.

use serde::Serialize;
use std::collections::HashMap;

/// Statistics of one cgroup. A sub-message whose controller is missing is `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// CPU usage and throttling.
    pub cpu: Option<CpuStats>,
    /// Memory usage.
    pub memory: Option<MemoryStats>,
    /// Number of tasks and their limit.
    pub pids: Option<PidsStats>,
    /// Block I/O counters.
    pub blkio: Option<BlkioStats>,
    /// Hugepage usage by page size (`"2MB"`, ...).
    pub hugetlb: HashMap<String, HugetlbStats>,
}

/// CPU statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CpuStats {
    /// Time spent on the CPUs.
    pub cpu_usage: CpuUsage,
    /// CFS bandwidth throttling.
    pub throttling_data: ThrottlingData,
}

/// CPU time, in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CpuUsage {
    /// Total CPU time.
    pub total_usage: u64,
    /// Per-CPU time (v1 only).
    pub percpu_usage: Vec<u64>,
    /// Time in kernel mode.
    pub usage_in_kernelmode: u64,
    /// Time in user mode.
    pub usage_in_usermode: u64,
}

/// CFS bandwidth throttling counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ThrottlingData {
    /// Enforcement periods that have elapsed.
    pub periods: u64,
    /// Periods in which the cgroup was throttled.
    pub throttled_periods: u64,
    /// Total throttled time in nanoseconds.
    pub throttled_time: u64,
}

/// Memory statistics, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MemoryStats {
    /// Page cache (v1 `memory.stat cache`; 0 on v2).
    pub cache: u64,
    /// Memory usage.
    pub usage: MemoryData,
    /// v1: memory+swap; v2: swap alone.
    pub swap_usage: MemoryData,
    /// Kernel memory (v1 only; on v2 usage 0 and limit `u64::MAX`).
    pub kernel_usage: MemoryData,
    /// Hierarchical accounting (v1 `memory.use_hierarchy`; false on v2).
    pub use_hierarchy: bool,
    /// Every key of `memory.stat`.
    pub stats: HashMap<String, u64>,
}

/// Usage counters of one memory kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MemoryData {
    /// Current usage.
    pub usage: u64,
    /// Peak usage.
    pub max_usage: u64,
    /// Times the limit was hit.
    pub failcnt: u64,
    /// The limit (`u64::MAX`-ish when unlimited).
    pub limit: u64,
}

/// Task counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PidsStats {
    /// Tasks in the cgroup.
    pub current: u64,
    /// The limit, 0 when unlimited.
    pub limit: u64,
}

/// Block I/O statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BlkioStats {
    /// Bytes transferred (v2: every `io.stat` counter).
    pub io_service_bytes_recursive: Vec<BlkioStatsEntry>,
    /// Number of I/O operations.
    pub io_serviced_recursive: Vec<BlkioStatsEntry>,
    /// Queued operations (CFQ).
    pub io_queued_recursive: Vec<BlkioStatsEntry>,
    /// Service time (CFQ).
    pub io_service_time_recursive: Vec<BlkioStatsEntry>,
    /// Wait time (CFQ).
    pub io_wait_time_recursive: Vec<BlkioStatsEntry>,
    /// Merged operations (CFQ).
    pub io_merged_recursive: Vec<BlkioStatsEntry>,
    /// Disk time (CFQ).
    pub io_time_recursive: Vec<BlkioStatsEntry>,
    /// Sectors transferred (CFQ).
    pub sectors_recursive: Vec<BlkioStatsEntry>,
}

/// One per-device counter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BlkioStatsEntry {
    /// Device major number.
    pub major: u64,
    /// Device minor number.
    pub minor: u64,
    /// Operation (`read`, `write`, `sync`, `async`, `total`, v2 key names, or "").
    pub op: String,
    /// Counter value.
    pub value: u64,
}

/// Hugepage counters of one page size.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HugetlbStats {
    /// Current usage in bytes.
    pub usage: u64,
    /// Peak usage in bytes (v1 only).
    pub max_usage: u64,
    /// Times the limit was hit.
    pub failcnt: u64,
}

/// Parses a v1 blkio file: `maj:min Op value` lines (or `maj:min value`, op ""); the `Total` line
/// is skipped. Ops are lower-cased.
pub(crate) fn parse_blkio_v1(content: &str) -> Vec<BlkioStatsEntry> {
    content
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (dev, op, value) = match fields.as_slice() {
                [dev, op, value] => (*dev, op.to_lowercase(), *value),
                [dev, value] => (*dev, String::new(), *value),
                _ => return None,
            };
            let (major, minor) = parse_dev(dev)?;
            Some(BlkioStatsEntry {
                major,
                minor,
                op,
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// Parses v2 `io.stat`: `maj:min rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..`.
pub(crate) fn parse_io_stat_v2(content: &str) -> Vec<BlkioStatsEntry> {
    let mut out = Vec::new();
    for line in content.lines() {
        let mut fields = line.split_whitespace();
        let Some((major, minor)) = fields.next().and_then(parse_dev) else {
            continue;
        };
        for kv in fields {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let op = match k {
                "rbytes" => "read",
                "wbytes" => "write",
                "rios" | "wios" | "dbytes" | "dios" => k,
                _ => continue,
            };
            if let Ok(value) = v.parse() {
                out.push(BlkioStatsEntry {
                    major,
                    minor,
                    op: op.to_string(),
                    value,
                });
            }
        }
    }
    out
}

fn parse_dev(dev: &str) -> Option<(u64, u64)> {
    let (maj, min) = dev.split_once(':')?;
    Some((maj.parse().ok()?, min.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkio_v1_format() {
        let e = parse_blkio_v1("8:0 Read 4096\n8:0 Write 10\n8:16 1234\nTotal 4106\n");
        assert_eq!(e.len(), 3);
        assert_eq!(
            e[0],
            BlkioStatsEntry {
                major: 8,
                minor: 0,
                op: "read".into(),
                value: 4096
            }
        );
        assert_eq!(e[2].op, "");
        assert_eq!(e[2].value, 1234);
    }

    #[test]
    fn io_stat_v2_format() {
        let e =
            parse_io_stat_v2("254:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=5 dios=6 cost.x=9\n");
        let ops: Vec<_> = e.iter().map(|e| (e.op.as_str(), e.value)).collect();
        assert_eq!(
            ops,
            [
                ("read", 1),
                ("write", 2),
                ("rios", 3),
                ("wios", 4),
                ("dbytes", 5),
                ("dios", 6)
            ]
        );
        assert_eq!((e[0].major, e[0].minor), (254, 0));
    }
}
