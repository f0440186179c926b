//! GetMetrics: agent, guest and container metrics in the Prometheus text format (v0.0.4).
//!
//! A private `prometheus` registry is created on the first scrape; every scrape increments
//! `kata_agent_scrape_count`, refreshes every value and encodes the registry (families sorted by
//! name, series by label values, families without series left out).
//!
//! Agent and guest families are those of upstream (names, HELP texts, labels, units); see
//! docs/observability.md. Their values come from `/proc` (and `statfs` for file systems). A source
//! that cannot be read is logged and its family keeps its previous values (or is absent);
//! series of vanished NICs and disks stay, file system series are rebuilt every scrape.
//!
//! On top of upstream, `kata_container_*` families give per-container resource usage from the
//! container cgroups (CPU, memory, pids, block I/O), labelled `container_id`. They are rebuilt on
//! every scrape, so removed containers disappear.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, Gauge, GaugeVec, IntCounter, Opts, Registry, TextEncoder};
use tracing::warn;

use crate::error::{AgentError, Result};
use crate::sandbox::Agent;

const SUBSYSTEM: &str = "metrics";
/// How long the stats of one container may take before the container is left out of a scrape.
const CONTAINER_STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// `/proc/self/status` keys of `kata_agent_proc_status`, with their `item` label.
const PROC_STATUS_ITEMS: [(&str, &str); 18] = [
    ("VmPeak", "vmpeak"),
    ("VmSize", "vmsize"),
    ("VmLck", "vmlck"),
    ("VmPin", "vmpin"),
    ("VmHWM", "vmhwm"),
    ("VmRSS", "vmrss"),
    ("RssAnon", "rssanon"),
    ("RssFile", "rssfile"),
    ("RssShmem", "rssshmem"),
    ("VmData", "vmdata"),
    ("VmStk", "vmstk"),
    ("VmExe", "vmexe"),
    ("VmLib", "vmlib"),
    ("VmPTE", "vmpte"),
    ("VmSwap", "vmswap"),
    ("HugetlbPages", "hugetlbpages"),
    ("voluntary_ctxt_switches", "voluntary_ctxt_switches"),
    ("nonvoluntary_ctxt_switches", "nonvoluntary_ctxt_switches"),
];

/// `/proc/self/io` keys of `kata_agent_io_stat`.
const IO_ITEMS: [&str; 7] = [
    "rchar",
    "wchar",
    "syscr",
    "syscw",
    "read_bytes",
    "write_bytes",
    "cancelled_write_bytes",
];

/// `/proc/stat` cpu columns of `kata_guest_cpu_time`.
const CPU_ITEMS: [&str; 10] = [
    "user",
    "nice",
    "system",
    "idle",
    "iowait",
    "irq",
    "softirq",
    "steal",
    "guest",
    "guest_nice",
];

/// `/proc/net/dev` columns of `kata_guest_netdev_stat`.
const NETDEV_ITEMS: [&str; 16] = [
    "recv_bytes",
    "recv_packets",
    "recv_errs",
    "recv_drop",
    "recv_fifo",
    "recv_frame",
    "recv_compressed",
    "recv_multicast",
    "sent_bytes",
    "sent_packets",
    "sent_errs",
    "sent_drop",
    "sent_fifo",
    "sent_colls",
    "sent_carrier",
    "sent_compressed",
];

/// `/proc/diskstats` columns (after major, minor, name) of `kata_guest_diskstat`.
const DISK_ITEMS: [&str; 17] = [
    "reads",
    "merged",
    "sectors_read",
    "time_reading",
    "writes",
    "writes_merged",
    "sectors_written",
    "time_writing",
    "in_progress",
    "time_in_progress",
    "weighted_time_in_progress",
    "discards",
    "discards_merged",
    "sectors_discarded",
    "time_discarding",
    "flushes",
    "time_flushing",
];

/// `/proc/meminfo` keys of `kata_guest_meminfo`, with their `item` label.
const MEMINFO_ITEMS: [(&str, &str); 58] = [
    ("MemTotal", "mem_total"),
    ("MemFree", "mem_free"),
    ("MemAvailable", "mem_available"),
    ("Buffers", "buffers"),
    ("Cached", "cached"),
    ("SwapCached", "swap_cached"),
    ("Active", "active"),
    ("Inactive", "inactive"),
    ("Active(anon)", "active_anon"),
    ("Inactive(anon)", "inactive_anon"),
    ("Active(file)", "active_file"),
    ("Inactive(file)", "inactive_file"),
    ("Unevictable", "unevictable"),
    ("Mlocked", "mlocked"),
    ("HighTotal", "high_total"),
    ("HighFree", "high_free"),
    ("LowTotal", "low_total"),
    ("LowFree", "low_free"),
    ("MmapCopy", "mmap_copy"),
    ("SwapTotal", "swap_total"),
    ("SwapFree", "swap_free"),
    ("Dirty", "dirty"),
    ("Writeback", "writeback"),
    ("AnonPages", "anon_pages"),
    ("Mapped", "mapped"),
    ("Shmem", "shmem"),
    ("Slab", "slab"),
    ("SReclaimable", "s_reclaimable"),
    ("SUnreclaim", "s_unreclaim"),
    ("KernelStack", "kernel_stack"),
    ("PageTables", "page_tables"),
    ("Quicklists", "quicklists"),
    ("NFS_Unstable", "nfs_unstable"),
    ("Bounce", "bounce"),
    ("WritebackTmp", "writeback_tmp"),
    ("CommitLimit", "commit_limit"),
    ("Committed_AS", "committed_as"),
    ("VmallocTotal", "vmalloc_total"),
    ("VmallocUsed", "vmalloc_used"),
    ("VmallocChunk", "vmalloc_chunk"),
    ("HardwareCorrupted", "hardware_corrupted"),
    ("AnonHugePages", "anon_hugepages"),
    ("ShmemHugePages", "shmem_hugepages"),
    ("ShmemPmdMapped", "shmem_pmd_mapped"),
    ("CmaTotal", "cma_total"),
    ("CmaFree", "cma_free"),
    ("HugePages_Total", "hugepages_total"),
    ("HugePages_Free", "hugepages_free"),
    ("HugePages_Rsvd", "hugepages_rsvd"),
    ("HugePages_Surp", "hugepages_surp"),
    ("Hugepagesize", "hugepagesize"),
    ("DirectMap4k", "direct_map_4k"),
    ("DirectMap4M", "direct_map_4M"),
    ("DirectMap2M", "direct_map_2M"),
    ("DirectMap1G", "direct_map_1G"),
    ("Hugetlb", "hugetlb"),
    ("Percpu", "per_cpu"),
    ("KReclaimable", "k_reclaimable"),
];

/// File system types reported by the `kata_guest_filesystem_*` families.
const FS_TYPES: [&str; 5] = ["ext4", "xfs", "btrfs", "vfat", "overlay"];

/// Memory limits at or above this are "unlimited" (the cgroup files say `max` or 2^63-ish).
const UNLIMITED: u64 = 1 << 62;

/// Everything registered on the first scrape.
struct Metrics {
    registry: Registry,
    scrape_count: IntCounter,
    threads: Gauge,
    total_time: Gauge,
    total_vm: Gauge,
    total_rss: Gauge,
    proc_status: GaugeVec,
    io_stat: GaugeVec,
    proc_stat: GaugeVec,
    load: GaugeVec,
    tasks: GaugeVec,
    cpu_time: GaugeVec,
    vm_stat: GaugeVec,
    netdev: GaugeVec,
    diskstat: GaugeVec,
    meminfo: GaugeVec,
    fs_bytes: GaugeVec,
    fs_inodes: GaugeVec,
    containers: Arc<ContainerCollector>,
    /// One scrape at a time: refresh and encode must not interleave.
    scrape: tokio::sync::Mutex<()>,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<Gauge> {
    let g = Gauge::with_opts(Opts::new(name, help))?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<GaugeVec> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    fn new() -> prometheus::Result<Metrics> {
        let r = Registry::new();
        let scrape_count = IntCounter::new("kata_agent_scrape_count", "Metrics scrape count")?;
        r.register(Box::new(scrape_count.clone()))?;
        let containers = Arc::new(ContainerCollector::new()?);
        r.register(Box::new(SharedCollector(containers.clone())))?;
        Ok(Metrics {
            scrape_count,
            threads: gauge(&r, "kata_agent_threads", "Agent process threads")?,
            total_time: gauge(&r, "kata_agent_total_time", "Agent process total time")?,
            total_vm: gauge(&r, "kata_agent_total_vm", "Agent process total VM size")?,
            total_rss: gauge(&r, "kata_agent_total_rss", "Agent process total RSS size")?,
            proc_status: gauge_vec(
                &r,
                "kata_agent_proc_status",
                "Agent process status.",
                &["item"],
            )?,
            io_stat: gauge_vec(
                &r,
                "kata_agent_io_stat",
                "Agent process IO statistics.",
                &["item"],
            )?,
            proc_stat: gauge_vec(
                &r,
                "kata_agent_proc_stat",
                "Agent process statistics.",
                &["item"],
            )?,
            load: gauge_vec(&r, "kata_guest_load", "Guest system load.", &["item"])?,
            // The HELP text repeats the one of kata_guest_load, as upstream.
            tasks: gauge_vec(&r, "kata_guest_tasks", "Guest system load.", &["item"])?,
            cpu_time: gauge_vec(
                &r,
                "kata_guest_cpu_time",
                "Guest CPU statistics.",
                &["cpu", "item"],
            )?,
            vm_stat: gauge_vec(
                &r,
                "kata_guest_vm_stat",
                "Guest virtual memory statistics.",
                &["item"],
            )?,
            netdev: gauge_vec(
                &r,
                "kata_guest_netdev_stat",
                "Guest net devices statistics.",
                &["interface", "item"],
            )?,
            diskstat: gauge_vec(
                &r,
                "kata_guest_diskstat",
                "Disks statistics in system.",
                &["disk", "item"],
            )?,
            meminfo: gauge_vec(
                &r,
                "kata_guest_meminfo",
                "Statistics about memory usage in the system.",
                &["item"],
            )?,
            fs_bytes: gauge_vec(
                &r,
                "kata_guest_filesystem_bytes",
                "Guest filesystem space usage in bytes.",
                &["mount", "device", "item"],
            )?,
            fs_inodes: gauge_vec(
                &r,
                "kata_guest_filesystem_inodes",
                "Guest filesystem inode usage.",
                &["mount", "device", "item"],
            )?,
            containers,
            registry: r,
            scrape: tokio::sync::Mutex::new(()),
        })
    }

    /// Refreshes the agent and guest families from `/proc` (blocking, but quick).
    fn refresh_host(&self) {
        self.refresh_agent();
        let read = |path: &str| match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) => {
                warn!(subsystem = SUBSYSTEM, path, error = %e, "cannot read a metrics source");
                None
            }
        };
        if let Some(text) = read("/proc/loadavg") {
            if let Some(l) = parse_loadavg(&text) {
                for (item, v) in [("load1", l.0), ("load5", l.1), ("load15", l.2)] {
                    self.load.with_label_values(&[item]).set(v);
                }
                self.tasks.with_label_values(&["cur"]).set(l.3);
                self.tasks.with_label_values(&["max"]).set(l.4);
            }
        }
        if let Some(text) = read("/proc/stat") {
            let tps = ticks_per_second();
            for (cpu, values) in parse_proc_stat_cpus(&text) {
                for (item, ticks) in CPU_ITEMS.iter().zip(values) {
                    let ms = ticks as f64 * 1000.0 / tps;
                    self.cpu_time
                        .with_label_values(&[cpu.as_str(), item])
                        .set(ms);
                }
            }
        }
        if let Some(text) = read("/proc/vmstat") {
            for (k, v) in parse_key_values(&text) {
                self.vm_stat.with_label_values(&[&k]).set(v);
            }
        }
        if let Some(text) = read("/proc/net/dev") {
            for (iface, values) in parse_net_dev(&text) {
                for (item, v) in NETDEV_ITEMS.iter().zip(values) {
                    self.netdev
                        .with_label_values(&[iface.as_str(), item])
                        .set(v as f64);
                }
            }
        }
        if let Some(text) = read("/proc/diskstats") {
            for (disk, values) in parse_diskstats(&text) {
                for (item, v) in DISK_ITEMS.iter().zip(values) {
                    self.diskstat
                        .with_label_values(&[disk.as_str(), item])
                        .set(v as f64);
                }
            }
        }
        if let Some(text) = read("/proc/meminfo") {
            let values = parse_meminfo(&text);
            for (key, item) in MEMINFO_ITEMS {
                let v = values.get(key).copied().unwrap_or(0.0);
                self.meminfo.with_label_values(&[item]).set(v);
            }
        }
        self.fs_bytes.reset();
        self.fs_inodes.reset();
        if let Some(text) = read("/proc/self/mountinfo") {
            for fs in filesystems(&text) {
                let Some(usage) = statfs_usage(&fs.mount_point) else {
                    continue;
                };
                let mount = fs.mount_point.to_string_lossy();
                let labels = |item| [mount.as_ref(), fs.device.as_str(), item];
                self.fs_bytes
                    .with_label_values(&labels("total"))
                    .set(usage.bytes_total);
                self.fs_bytes
                    .with_label_values(&labels("used"))
                    .set(usage.bytes_used);
                self.fs_bytes
                    .with_label_values(&labels("available"))
                    .set(usage.bytes_available);
                self.fs_inodes
                    .with_label_values(&labels("total"))
                    .set(usage.inodes_total);
                self.fs_inodes
                    .with_label_values(&labels("used"))
                    .set(usage.inodes_used);
                self.fs_inodes
                    .with_label_values(&labels("available"))
                    .set(usage.inodes_available);
            }
        }
    }

    /// The agent's own process; any failure skips these families silently.
    fn refresh_agent(&self) {
        let tps = ticks_per_second();
        if let Some(stat) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|t| parse_self_stat(&t))
        {
            self.threads.set(stat.num_threads as f64);
            self.total_time.set((stat.utime + stat.stime) as f64 / tps);
            self.total_vm.set(stat.vsize as f64);
            self.total_rss.set(stat.rss as f64 * page_size());
            for (item, v) in [
                ("utime", stat.utime as f64),
                ("stime", stat.stime as f64),
                ("cutime", stat.cutime as f64),
                ("cstime", stat.cstime as f64),
            ] {
                self.proc_stat.with_label_values(&[item]).set(v);
            }
        }
        if let Ok(text) = std::fs::read_to_string("/proc/self/status") {
            let values = parse_status(&text);
            for (key, item) in PROC_STATUS_ITEMS {
                let v = values.get(key).copied().unwrap_or(0.0);
                self.proc_status.with_label_values(&[item]).set(v);
            }
        }
        if let Ok(text) = std::fs::read_to_string("/proc/self/io") {
            let values: HashMap<String, f64> = parse_key_values(&text).into_iter().collect();
            for item in IO_ITEMS {
                if let Some(v) = values.get(item) {
                    self.io_stat.with_label_values(&[item]).set(*v);
                }
            }
        }
    }

    fn encode(&self) -> Result<String> {
        let families = self.registry.gather();
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .map_err(|e| AgentError::internal(format!("cannot encode the metrics: {e}")))?;
        String::from_utf8(out)
            .map_err(|e| AgentError::internal(format!("the metrics are not UTF-8: {e}")))
    }
}

static METRICS: OnceLock<std::result::Result<Metrics, String>> = OnceLock::new();

/// One scrape: the whole text exposition.
pub async fn gather(agent: &Agent) -> Result<String> {
    let metrics = METRICS
        .get_or_init(|| Metrics::new().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| AgentError::internal(format!("cannot register the metrics: {e}")))?;
    let _one = metrics.scrape.lock().await;
    metrics.scrape_count.inc();

    let mut stats = Vec::new();
    let mut ids = agent.containers.ids();
    ids.sort();
    for id in ids {
        match tokio::time::timeout(CONTAINER_STATS_TIMEOUT, agent.containers.stats(&id)).await {
            Ok(Ok(s)) => stats.push((id, s)),
            // Removed meanwhile, or its cgroup is gone: simply not reported.
            Ok(Err(_)) => {}
            Err(_) => {
                warn!(subsystem = SUBSYSTEM, container = %id, "container stats timed out; left out of this scrape")
            }
        }
    }
    metrics.containers.set(stats);

    // Reading /proc and statfs may block: keep it off the runtime threads.
    let text = tokio::task::spawn_blocking(|| {
        let m = METRICS
            .get()
            .and_then(|m| m.as_ref().ok())
            .expect("initialised above");
        m.refresh_host();
        m.encode()
    })
    .await
    .map_err(|e| AgentError::internal(format!("metrics task failed: {e}")))??;
    Ok(text)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn page_size() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as f64
    } else {
        4096.0
    }
}

/// The fields of `/proc/self/stat` the agent families use.
#[derive(Debug, Default, PartialEq)]
struct SelfStat {
    utime: u64,
    stime: u64,
    cutime: i64,
    cstime: i64,
    num_threads: i64,
    vsize: u64,
    rss: i64,
}

fn parse_self_stat(text: &str) -> Option<SelfStat> {
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state).
    let field = |n: usize| f.get(n - 3).copied();
    Some(SelfStat {
        utime: field(14)?.parse().ok()?,
        stime: field(15)?.parse().ok()?,
        cutime: field(16)?.parse().ok()?,
        cstime: field(17)?.parse().ok()?,
        num_threads: field(20)?.parse().ok()?,
        vsize: field(23)?.parse().ok()?,
        rss: field(24)?.parse().ok()?,
    })
}

/// `Key:   value [kB]` lines, value as written (no unit conversion).
fn parse_status(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let v = v.split_whitespace().next()?.parse().ok()?;
            Some((k.trim().to_string(), v))
        })
        .collect()
}

/// `/proc/meminfo`: `kB` values converted to bytes, unit-less ones raw.
fn parse_meminfo(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let mut parts = v.split_whitespace();
            let n: f64 = parts.next()?.parse().ok()?;
            let n = if parts.next() == Some("kB") {
                n * 1024.0
            } else {
                n
            };
            Some((k.trim().to_string(), n))
        })
        .collect()
}

/// `key value` or `key: value` lines (vmstat, /proc/self/io).
fn parse_key_values(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let k = parts.next()?.trim_end_matches(':');
            let v = parts.next()?.parse().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

/// `/proc/loadavg`: (load1, load5, load15, running, total).
fn parse_loadavg(text: &str) -> Option<(f64, f64, f64, f64, f64)> {
    let f: Vec<&str> = text.split_whitespace().collect();
    let (cur, max) = f.get(3)?.split_once('/')?;
    Some((
        f.first()?.parse().ok()?,
        f.get(1)?.parse().ok()?,
        f.get(2)?.parse().ok()?,
        cur.parse().ok()?,
        max.parse().ok()?,
    ))
}

/// `/proc/stat` cpu lines: `total` for the aggregate line, then `0`, `1`, ... by position.
fn parse_proc_stat_cpus(text: &str) -> Vec<(String, Vec<u64>)> {
    let mut out = Vec::new();
    let mut index = 0;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(name) = f.next().filter(|n| n.starts_with("cpu")) else {
            continue;
        };
        let mut values: Vec<u64> = f.filter_map(|v| v.parse().ok()).collect();
        values.resize(CPU_ITEMS.len(), 0);
        let label = if name == "cpu" {
            "total".to_string()
        } else {
            let l = index.to_string();
            index += 1;
            l
        };
        out.push((label, values));
    }
    out
}

/// `/proc/net/dev`: interface name and its 16 counters.
fn parse_net_dev(text: &str) -> Vec<(String, Vec<u64>)> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let values: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            (values.len() >= NETDEV_ITEMS.len()).then(|| (name.trim().to_string(), values))
        })
        .collect()
}

/// `/proc/diskstats`: disk name and its counters (missing optional ones are 0).
fn parse_diskstats(text: &str) -> Vec<(String, Vec<u64>)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 14 {
                return None;
            }
            let mut values: Vec<u64> = f[3..].iter().map(|v| v.parse().unwrap_or(0)).collect();
            values.resize(DISK_ITEMS.len(), 0);
            Some((f[2].to_string(), values))
        })
        .collect()
}

/// A file system the filesystem families report.
#[derive(Debug, PartialEq)]
struct Filesystem {
    mount_point: PathBuf,
    device: String,
}

/// Writable ext4/xfs/btrfs/vfat/overlay mounts of `mountinfo`, first mount per device only.
fn filesystems(mountinfo: &str) -> Vec<Filesystem> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split_whitespace().collect();
        let r: Vec<&str> = right.split_whitespace().collect();
        let (Some(majmin), Some(mount_point), Some(fstype), Some(source), Some(superopts)) =
            (l.get(2), l.get(4), r.first(), r.get(1), r.get(2))
        else {
            continue;
        };
        if !FS_TYPES.contains(fstype) || superopts.split(',').any(|o| o == "ro") {
            continue;
        }
        if !seen.insert(majmin.to_string()) {
            continue;
        }
        let device = source
            .rsplit('/')
            .next()
            .filter(|d| !d.is_empty())
            .unwrap_or(majmin)
            .to_string();
        out.push(Filesystem {
            mount_point: PathBuf::from(unescape_octal(mount_point)),
            device,
        });
    }
    out
}

/// Undoes mountinfo's `\040`-style escapes.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct FsUsage {
    bytes_total: f64,
    bytes_used: f64,
    bytes_available: f64,
    inodes_total: f64,
    inodes_used: f64,
    inodes_available: f64,
}

fn statfs_usage(path: &Path) -> Option<FsUsage> {
    let s = nix::sys::statfs::statfs(path).ok()?;
    let bsize = s.block_size() as f64;
    let (blocks, bfree) = (s.blocks() as f64, s.blocks_free() as f64);
    let (files, ffree) = (s.files() as f64, s.files_free() as f64);
    Some(FsUsage {
        bytes_total: blocks * bsize,
        bytes_used: (blocks - bfree) * bsize,
        // As upstream: "available" counts the blocks free to root too (f_bfree).
        bytes_available: bfree * bsize,
        inodes_total: files,
        inodes_used: files - ffree,
        inodes_available: ffree,
    })
}

/// Per-container families, rebuilt from the last snapshot at every scrape.
struct ContainerCollector {
    descs: Vec<Desc>,
    snapshot: Mutex<Vec<(String, engine::cgroups::Stats)>>,
}

/// The `kata_container_*` families: (name, help, type, extra label).
const CONTAINER_FAMILIES: [(&str, &str, MetricType, Option<&str>); 15] = [
    (
        "kata_container_cpu_usage_seconds_total",
        "CPU time consumed by the container's processes, in seconds.",
        MetricType::COUNTER,
        None,
    ),
    (
        "kata_container_cpu_user_seconds_total",
        "CPU time the container's processes spent in user mode, in seconds.",
        MetricType::COUNTER,
        None,
    ),
    (
        "kata_container_cpu_system_seconds_total",
        "CPU time the container's processes spent in kernel mode, in seconds.",
        MetricType::COUNTER,
        None,
    ),
    (
        "kata_container_cpu_throttled_periods_total",
        "CFS periods in which the container was throttled.",
        MetricType::COUNTER,
        None,
    ),
    (
        "kata_container_cpu_throttled_seconds_total",
        "Time the container was throttled, in seconds.",
        MetricType::COUNTER,
        None,
    ),
    (
        "kata_container_memory_usage_bytes",
        "Memory used by the container, in bytes.",
        MetricType::GAUGE,
        None,
    ),
    (
        "kata_container_memory_max_usage_bytes",
        "Peak memory use of the container, in bytes.",
        MetricType::GAUGE,
        None,
    ),
    (
        "kata_container_memory_limit_bytes",
        "Memory limit of the container, in bytes (absent when unlimited).",
        MetricType::GAUGE,
        None,
    ),
    (
        "kata_container_memory_cache_bytes",
        "Page cache charged to the container, in bytes (cgroup v1).",
        MetricType::GAUGE,
        None,
    ),
    (
        "kata_container_memory_swap_usage_bytes",
        "Swap used by the container, in bytes (cgroup v1: memory plus swap).",
        MetricType::GAUGE,
        None,
    ),
    (
        "kata_container_memory_failcnt_total",
        "Times the container hit its memory limit.",
        MetricType::COUNTER,
        None,
    ),
    (
        "kata_container_pids_current",
        "Tasks in the container.",
        MetricType::GAUGE,
        None,
    ),
    (
        "kata_container_pids_limit",
        "Task limit of the container (absent when unlimited).",
        MetricType::GAUGE,
        None,
    ),
    (
        "kata_container_blkio_bytes_total",
        "Bytes transferred by the container's block I/O, by device and operation.",
        MetricType::COUNTER,
        Some("op"),
    ),
    (
        "kata_container_blkio_ios_total",
        "Block I/O operations of the container, by device and operation.",
        MetricType::COUNTER,
        Some("op"),
    ),
];

impl ContainerCollector {
    fn new() -> prometheus::Result<ContainerCollector> {
        let descs = CONTAINER_FAMILIES
            .iter()
            .map(|(name, help, _, extra)| {
                let mut labels = vec!["container_id".to_string()];
                if extra.is_some() {
                    labels.push("device".to_string());
                    labels.push("op".to_string());
                }
                Desc::new(name.to_string(), help.to_string(), labels, HashMap::new())
            })
            .collect::<prometheus::Result<Vec<_>>>()?;
        Ok(ContainerCollector {
            descs,
            snapshot: Mutex::new(Vec::new()),
        })
    }

    fn set(&self, stats: Vec<(String, engine::cgroups::Stats)>) {
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = stats;
    }
}

/// One sample of a container family: label pairs (sorted by name) and value.
type Sample = (Vec<(&'static str, String)>, f64);

/// The samples of every container family, in [`CONTAINER_FAMILIES`] order.
fn container_samples(stats: &[(String, engine::cgroups::Stats)]) -> Vec<Vec<Sample>> {
    let mut fams: Vec<Vec<Sample>> = vec![Vec::new(); CONTAINER_FAMILIES.len()];
    const NS: f64 = 1e9;
    for (id, s) in stats {
        let mut put = |i: usize, v: f64| fams[i].push((vec![("container_id", id.clone())], v));
        if let Some(cpu) = &s.cpu {
            put(0, cpu.cpu_usage.total_usage as f64 / NS);
            put(1, cpu.cpu_usage.usage_in_usermode as f64 / NS);
            put(2, cpu.cpu_usage.usage_in_kernelmode as f64 / NS);
            put(3, cpu.throttling_data.throttled_periods as f64);
            put(4, cpu.throttling_data.throttled_time as f64 / NS);
        }
        if let Some(mem) = &s.memory {
            put(5, mem.usage.usage as f64);
            put(6, mem.usage.max_usage as f64);
            if mem.usage.limit > 0 && mem.usage.limit < UNLIMITED {
                put(7, mem.usage.limit as f64);
            }
            put(8, mem.cache as f64);
            put(9, mem.swap_usage.usage as f64);
            put(10, mem.usage.failcnt as f64);
        }
        if let Some(pids) = &s.pids {
            put(11, pids.current as f64);
            if pids.limit > 0 {
                put(12, pids.limit as f64);
            }
        }
        if let Some(blkio) = &s.blkio {
            let mut bytes: HashMap<(String, &'static str), u64> = HashMap::new();
            let mut ios: HashMap<(String, &'static str), u64> = HashMap::new();
            for e in &blkio.io_service_bytes_recursive {
                let dev = format!("{}:{}", e.major, e.minor);
                let (map, op) = match e.op.as_str() {
                    "read" => (&mut bytes, "read"),
                    "write" => (&mut bytes, "write"),
                    "dbytes" => (&mut bytes, "discard"),
                    "rios" => (&mut ios, "read"),
                    "wios" => (&mut ios, "write"),
                    "dios" => (&mut ios, "discard"),
                    _ => continue,
                };
                *map.entry((dev, op)).or_default() += e.value;
            }
            for e in &blkio.io_serviced_recursive {
                let op = match e.op.as_str() {
                    "read" => "read",
                    "write" => "write",
                    _ => continue,
                };
                *ios.entry((format!("{}:{}", e.major, e.minor), op))
                    .or_default() += e.value;
            }
            for (i, map) in [(13, bytes), (14, ios)] {
                for ((dev, op), v) in map {
                    fams[i].push((
                        vec![
                            ("container_id", id.clone()),
                            ("device", dev),
                            ("op", op.to_string()),
                        ],
                        v as f64,
                    ));
                }
            }
        }
    }
    fams
}

impl Collector for ContainerCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snapshot = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        let samples = container_samples(&snapshot);
        CONTAINER_FAMILIES
            .iter()
            .zip(samples)
            .filter(|(_, s)| !s.is_empty())
            .map(|((name, help, kind, _), samples)| {
                let mut mf = MetricFamily::default();
                mf.set_name(name.to_string());
                mf.set_help(help.to_string());
                mf.set_field_type(*kind);
                let metrics = samples
                    .into_iter()
                    .map(|(labels, v)| {
                        let mut m = proto::Metric::default();
                        m.set_label(
                            labels
                                .into_iter()
                                .map(|(k, v)| {
                                    let mut lp = proto::LabelPair::default();
                                    lp.set_name(k.to_string());
                                    lp.set_value(v);
                                    lp
                                })
                                .collect(),
                        );
                        if *kind == MetricType::COUNTER {
                            let mut c = proto::Counter::default();
                            c.set_value(v);
                            m.set_counter(c);
                        } else {
                            let mut g = proto::Gauge::default();
                            g.set_value(v);
                            m.set_gauge(g);
                        }
                        m
                    })
                    .collect();
                mf.set_metric(metrics);
                mf
            })
            .collect()
    }
}

/// Lets the registry own a handle while the scrape code keeps another.
struct SharedCollector(Arc<ContainerCollector>);

impl Collector for SharedCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<MetricFamily> {
        self.0.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_stat_with_odd_command_name() {
        let text = "1234 (my (agent) x) S 1 1234 1234 0 -1 4194560 500 0 0 0 \
                    7 3 2 1 20 0 5 0 100 123456789 321 18446744073709551615 \
                    1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        let s = parse_self_stat(text).unwrap();
        assert_eq!(
            s,
            SelfStat {
                utime: 7,
                stime: 3,
                cutime: 2,
                cstime: 1,
                num_threads: 5,
                vsize: 123456789,
                rss: 321,
            }
        );
        assert_eq!(parse_self_stat("garbage"), None);
    }

    #[test]
    fn meminfo_units() {
        let m = parse_meminfo(
            "MemTotal:       16384 kB\nHugePages_Total:       4\nActive(anon):  2 kB\n",
        );
        assert_eq!(m["MemTotal"], 16384.0 * 1024.0);
        assert_eq!(m["HugePages_Total"], 4.0);
        assert_eq!(m["Active(anon)"], 2048.0);
        assert_eq!(MEMINFO_ITEMS.len(), 58);
    }

    #[test]
    fn status_values_stay_in_kb() {
        let m = parse_status("Name:\tkata-agent\nVmRSS:\t  1234 kB\nvoluntary_ctxt_switches:\t9\n");
        assert_eq!(m["VmRSS"], 1234.0);
        assert_eq!(m["voluntary_ctxt_switches"], 9.0);
        assert!(!m.contains_key("Name"));
    }

    #[test]
    fn loadavg_and_cpus() {
        assert_eq!(
            parse_loadavg("0.50 0.25 0.10 3/456 7890\n"),
            Some((0.5, 0.25, 0.1, 3.0, 456.0))
        );
        let cpus = parse_proc_stat_cpus(
            "cpu  10 0 5 100 1 0 0 0 0 0\ncpu0 6 0 3 50 1 0 0 0 0 0\ncpu3 4 0 2 50\nintr 1 2\n",
        );
        let labels: Vec<_> = cpus.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(labels, ["total", "0", "1"], "position, not CPU id");
        assert_eq!(cpus[2].1, vec![4, 0, 2, 50, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn net_dev_and_diskstats() {
        let net = parse_net_dev(
            "Inter-|   Receive |  Transmit\n face |bytes packets\n    lo: 100 2 0 0 0 0 0 0 100 2 0 0 0 0 0 0\neth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n",
        );
        assert_eq!(net.len(), 2);
        assert_eq!(net[1].0, "eth0");
        assert_eq!(net[1].1[15], 16);
        let disks = parse_diskstats(
            "   8       0 sda 1 2 3 4 5 6 7 8 9 10 11\n 259 0 nvme0n1 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n",
        );
        assert_eq!(disks[0].0, "sda");
        assert_eq!(disks[0].1.len(), 17);
        assert_eq!(disks[0].1[16], 0, "absent optional column is 0");
        assert_eq!(disks[1].1[16], 17);
    }

    #[test]
    fn filesystem_selection() {
        let info = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
23 22 8:1 /x /bind rw - ext4 /dev/sda1 rw\n\
24 22 0:5 / /proc rw - proc proc rw\n\
25 22 8:2 / /ro ro - xfs /dev/sda2 ro,attr2\n\
26 22 0:40 / /with\\040space rw - overlay overlay rw,lowerdir=/a\n";
        let fs = filesystems(info);
        assert_eq!(
            fs,
            vec![
                Filesystem {
                    mount_point: "/".into(),
                    device: "sda1".into()
                },
                Filesystem {
                    mount_point: "/with space".into(),
                    device: "overlay".into()
                },
            ]
        );
    }

    #[test]
    fn container_families_from_stats() {
        use engine::cgroups::{BlkioStats, BlkioStatsEntry, CpuStats, MemoryStats, PidsStats};
        let mut s = engine::cgroups::Stats::default();
        let mut cpu = CpuStats::default();
        cpu.cpu_usage.total_usage = 2_500_000_000;
        s.cpu = Some(cpu);
        let mut mem = MemoryStats::default();
        mem.usage.usage = 4096;
        mem.usage.limit = u64::MAX;
        s.memory = Some(mem);
        s.pids = Some(PidsStats {
            current: 3,
            limit: 0,
        });
        s.blkio = Some(BlkioStats {
            io_service_bytes_recursive: vec![
                BlkioStatsEntry {
                    major: 8,
                    minor: 0,
                    op: "read".into(),
                    value: 512,
                },
                BlkioStatsEntry {
                    major: 8,
                    minor: 0,
                    op: "total".into(),
                    value: 512,
                },
            ],
            ..Default::default()
        });
        let fams = container_samples(&[("c1".into(), s)]);
        assert_eq!(
            fams[0],
            vec![(vec![("container_id", "c1".to_string())], 2.5)]
        );
        assert_eq!(fams[5][0].1, 4096.0);
        assert!(fams[7].is_empty(), "no limit series when unlimited");
        assert_eq!(fams[11][0].1, 3.0);
        assert!(fams[12].is_empty());
        assert_eq!(
            fams[13],
            vec![(
                vec![
                    ("container_id", "c1".to_string()),
                    ("device", "8:0".to_string()),
                    ("op", "read".to_string())
                ],
                512.0
            )]
        );
    }

    #[test]
    fn registry_text_has_the_families() {
        let m = Metrics::new().unwrap();
        m.scrape_count.inc();
        m.refresh_host();
        let text = m.encode().unwrap();
        for family in [
            "kata_agent_scrape_count 1",
            "# HELP kata_agent_threads Agent process threads",
            "# TYPE kata_guest_meminfo gauge",
            "kata_guest_cpu_time{cpu=\"total\",item=\"user\"}",
            "kata_guest_tasks{item=\"max\"}",
            "kata_agent_proc_status{item=\"vmrss\"}",
        ] {
            assert!(text.contains(family), "{family} missing from:\n{text}");
        }
        assert!(
            !text.contains("kata_container_"),
            "no containers, no series"
        );
    }
}
