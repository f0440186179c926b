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

use crate::agent::Agent;
use crate::error::{AgentError, Result};

mod containers;
use containers::*;

mod procfs;
use procfs::*;

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

#[cfg(test)]
mod tests;
