//! cgroup v1: resource application and statistics, one hierarchy per controller.

use super::stats::*;
use super::{
    devices, flat_keyed, parse_u64, read_string, read_trimmed, read_u64, write_file, Cgroup,
};
use anyhow::{anyhow, bail, Context, Result};
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxResources};
use std::path::{Path, PathBuf};

/// Gives a new cpuset cgroup the cpus/mems of its nearest non-empty ancestor: the kernel leaves
/// them empty, and an empty cpuset refuses tasks.
pub(crate) fn init_cpuset(dir: &Path) -> Result<()> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if !read_trimmed(&dir.join(file))?.is_empty() {
            continue;
        }
        let mut anc = dir.parent();
        while let Some(a) = anc {
            let Ok(v) = read_trimmed(&a.join(file)) else {
                break; // above the mount root
            };
            if !v.is_empty() {
                write_file(&dir.join(file), &v)?;
                break;
            }
            anc = a.parent();
        }
    }
    Ok(())
}

/// The directory of a v1 controller, or a clear error when it is not mounted.
fn need(cg: &Cgroup, controller: &str) -> Result<PathBuf> {
    cg.v1_dir(controller)
        .ok_or_else(|| anyhow!("the {controller} cgroup controller is not mounted"))
}

pub(crate) fn apply(cg: &Cgroup, res: &LinuxResources, update: bool) -> Result<()> {
    if let Some(cpu) = res.cpu() {
        apply_cpu(cg, cpu)?;
    }
    if let Some(mem) = res.memory() {
        apply_memory(cg, mem, update)?;
    }
    if let Some(pids) = res.pids() {
        let limit = pids.limit();
        match cg.v1_dir("pids") {
            Some(dir) => write_file(&dir.join("pids.max"), &pids_value(limit))?,
            None if limit > 0 => bail!("the pids cgroup controller is not mounted"),
            None => {}
        }
    }
    if let Some(bio) = res.block_io() {
        apply_blkio(cg, bio)?;
    }
    if let Some(limits) = res.hugepage_limits().as_ref().filter(|l| !l.is_empty()) {
        match cg.v1_dir("hugetlb") {
            None => {
                tracing::warn!("hugepage limits ignored: the hugetlb controller is not mounted")
            }
            Some(dir) => {
                for l in limits {
                    let base = format!("hugetlb.{}", l.page_size());
                    let file = dir.join(format!("{base}.limit_in_bytes"));
                    if !file.exists() {
                        tracing::warn!(
                            "hugepage size {} is not supported, limit ignored",
                            l.page_size()
                        );
                        continue;
                    }
                    write_file(&file, &l.limit().to_string())?;
                    // Reservation limits too, when the kernel has them.
                    let rsvd = dir.join(format!("{base}.rsvd.limit_in_bytes"));
                    if rsvd.exists() {
                        write_file(&rsvd, &l.limit().to_string())?;
                    }
                }
            }
        }
    }
    if let Some(net) = res.network() {
        if let Some(id) = net.class_id().filter(|id| *id > 0) {
            match cg.v1_dir("net_cls") {
                Some(dir) => write_file(&dir.join("net_cls.classid"), &id.to_string())?,
                None => tracing::warn!("network class id ignored: net_cls is not mounted"),
            }
        }
        if let Some(prios) = net.priorities().as_ref().filter(|p| !p.is_empty()) {
            match cg.v1_dir("net_prio") {
                Some(dir) => {
                    for p in prios {
                        let line = format!("{} {}", p.name(), p.priority());
                        write_file(&dir.join("net_prio.ifpriomap"), &line)?;
                    }
                }
                None => tracing::warn!("network priorities ignored: net_prio is not mounted"),
            }
        }
    }
    let rules = res.devices().as_deref().unwrap_or_default();
    match cg.v1_dir("devices") {
        Some(dir) => devices::apply_v1(&dir, rules, update)?,
        None if !rules.is_empty() => bail!("the devices cgroup controller is not mounted"),
        None => {}
    }
    Ok(())
}

/// `pids.max` value: a positive limit, or `max` for 0 / -1 (unlimited).
pub(crate) fn pids_value(limit: i64) -> String {
    if limit > 0 {
        limit.to_string()
    } else {
        "max".to_string()
    }
}

fn apply_cpu(cg: &Cgroup, cpu: &LinuxCpu) -> Result<()> {
    if let Some(cpus) = cpu.cpus().as_deref().filter(|s| !s.is_empty()) {
        // Like upstream, a cpu list the cpuset rejects (e.g. offline cpus) is not fatal.
        match cg.v1_dir("cpuset") {
            Some(dir) => {
                if let Err(e) = write_file(&dir.join("cpuset.cpus"), cpus) {
                    tracing::warn!("cannot set cpuset.cpus: {e:#}");
                }
            }
            None => tracing::warn!("cpus {cpus} ignored: the cpuset controller is not mounted"),
        }
    }
    if let Some(mems) = cpu.mems().as_deref().filter(|s| !s.is_empty()) {
        write_file(&need(cg, "cpuset")?.join("cpuset.mems"), mems)?;
    }
    let shares = cpu.shares().filter(|v| *v > 0);
    let quota = cpu.quota().filter(|v| *v != 0);
    let period = cpu.period().filter(|v| *v > 0);
    let rt_runtime = cpu.realtime_runtime().filter(|v| *v != 0);
    let rt_period = cpu.realtime_period().filter(|v| *v > 0);
    let wanted = shares.is_some()
        || quota.is_some()
        || period.is_some()
        || rt_runtime.is_some()
        || rt_period.is_some()
        || cpu.idle().is_some()
        || cpu.burst().is_some();
    if !wanted {
        return Ok(());
    }
    let dir = need(cg, "cpu")?;
    if let Some(s) = shares {
        write_file(&dir.join("cpu.shares"), &s.to_string())?;
    }
    let quota_file = dir.join("cpu.cfs_quota_us");
    let period_file = dir.join("cpu.cfs_period_us");
    write_pair(
        (&period_file, period.map(|p| p.to_string())),
        (
            &quota_file,
            quota.map(|q| if q < 0 { "-1".into() } else { q.to_string() }),
        ),
    )?;
    write_pair(
        (
            &dir.join("cpu.rt_period_us"),
            rt_period.map(|p| p.to_string()),
        ),
        (
            &dir.join("cpu.rt_runtime_us"),
            rt_runtime.map(|r| r.to_string()),
        ),
    )?;
    if let Some(idle) = cpu.idle() {
        write_optional(&dir.join("cpu.idle"), &idle.to_string(), "cpu idle")?;
    }
    if let Some(burst) = cpu.burst() {
        write_optional(
            &dir.join("cpu.cfs_burst_us"),
            &burst.to_string(),
            "cpu burst",
        )?;
    }
    Ok(())
}

/// Writes a period and the value bounded by it. The kernel checks one against the other, so if
/// the period is refused in the current state, the second value goes first.
fn write_pair(
    (period_file, period): (&Path, Option<String>),
    (value_file, value): (&Path, Option<String>),
) -> Result<()> {
    match (period, value) {
        (Some(p), Some(v)) => {
            if write_file(period_file, &p).is_err() {
                write_file(value_file, &v)?;
                write_file(period_file, &p)
            } else {
                write_file(value_file, &v)
            }
        }
        (Some(p), None) => write_file(period_file, &p),
        (None, Some(v)) => write_file(value_file, &v),
        (None, None) => Ok(()),
    }
}

/// Writes a file that older kernels lack; a missing file is only logged.
fn write_optional(file: &Path, value: &str, what: &str) -> Result<()> {
    if file.exists() {
        write_file(file, value)
    } else {
        tracing::warn!("{what} ignored: the kernel has no {}", file.display());
        Ok(())
    }
}

/// v1 memory value: bytes, or -1 for unlimited.
fn mem_value(v: i64, what: &str) -> Result<String> {
    if v < -1 {
        bail!("invalid {what} {v}: it must be positive or -1 (unlimited)");
    }
    Ok(v.to_string())
}

fn apply_memory(cg: &Cgroup, mem: &LinuxMemory, update: bool) -> Result<()> {
    let limit = mem.limit().filter(|v| *v != 0);
    let swap = mem.swap().filter(|v| *v != 0);
    let reservation = mem.reservation().filter(|v| *v != 0);
    let kernel = mem.kernel().filter(|v| *v != 0);
    let kernel_tcp = mem.kernel_tcp().filter(|v| *v != 0);
    let disable_oom = mem.disable_oom_killer();
    if let Some(s) = mem.swappiness() {
        if s > 100 {
            bail!("invalid memory swappiness {s}: it must be between 0 and 100");
        }
    }
    let wanted = limit.is_some()
        || swap.is_some()
        || reservation.is_some()
        || kernel.is_some()
        || kernel_tcp.is_some()
        || mem.swappiness().is_some()
        || disable_oom == Some(true);
    let dir = match cg.v1_dir("memory") {
        Some(d) => d,
        None if wanted => bail!("the memory cgroup controller is not mounted"),
        None => return Ok(()),
    };
    let kmem = dir.join("memory.kmem.limit_in_bytes");
    if !update && kmem.exists() {
        // Older kernels only account kernel memory once a kmem limit has been set.
        if let Err(e) = write_file(&kmem, "1").and_then(|_| write_file(&kmem, "-1")) {
            tracing::debug!("kernel memory accounting not initialized: {e:#}");
        }
    }
    let limit_file = dir.join("memory.limit_in_bytes");
    let swap_file = dir.join("memory.memsw.limit_in_bytes");
    if swap.is_some() && !swap_file.exists() {
        bail!(
            "a swap limit was requested but swap accounting is disabled (no {})",
            swap_file.display()
        );
    }
    match (limit, swap) {
        (Some(l), Some(s)) => {
            let (l, s) = (
                mem_value(l, "memory limit")?,
                mem_value(s, "memory+swap limit")?,
            );
            // memory+swap may never be below memory: raise it first when growing.
            let current = read_u64(&limit_file)?;
            let sv: i64 = s.parse()?;
            if sv == -1 || (current as i128) < sv as i128 {
                write_file(&swap_file, &s)?;
                write_file(&limit_file, &l)?;
            } else {
                write_file(&limit_file, &l)?;
                write_file(&swap_file, &s)?;
            }
        }
        (Some(l), None) => write_file(&limit_file, &mem_value(l, "memory limit")?)?,
        (None, Some(s)) => write_file(&swap_file, &mem_value(s, "memory+swap limit")?)?,
        (None, None) => {}
    }
    if let Some(r) = reservation {
        write_file(
            &dir.join("memory.soft_limit_in_bytes"),
            &mem_value(r, "memory reservation")?,
        )?;
    }
    if let Some(k) = kernel {
        // Deprecated by the kernel; a refusal is not worth failing the container for.
        if let Err(e) = write_file(&kmem, &mem_value(k, "kernel memory limit")?) {
            tracing::warn!("kernel memory limit ignored: {e:#}");
        }
    }
    if let Some(k) = kernel_tcp {
        write_optional(
            &dir.join("memory.kmem.tcp.limit_in_bytes"),
            &mem_value(k, "kernel TCP memory limit")?,
            "kernel TCP memory limit",
        )?;
    }
    if let Some(s) = mem.swappiness() {
        write_file(&dir.join("memory.swappiness"), &s.to_string())?;
    }
    let oom_control = dir.join("memory.oom_control");
    match disable_oom {
        Some(true) => write_file(&oom_control, "1")?,
        Some(false) if update => {
            let current = flat_keyed(&read_string(&oom_control)?);
            if current.get("oom_kill_disable").copied() == Some(1) {
                write_file(&oom_control, "0")?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn apply_blkio(cg: &Cgroup, bio: &LinuxBlockIo) -> Result<()> {
    let weight = bio.weight().filter(|w| *w > 0);
    let leaf = bio.leaf_weight().filter(|w| *w > 0);
    let weight_devs = bio.weight_device().as_deref().unwrap_or_default();
    let throttles = [
        (
            "blkio.throttle.read_bps_device",
            bio.throttle_read_bps_device(),
        ),
        (
            "blkio.throttle.write_bps_device",
            bio.throttle_write_bps_device(),
        ),
        (
            "blkio.throttle.read_iops_device",
            bio.throttle_read_iops_device(),
        ),
        (
            "blkio.throttle.write_iops_device",
            bio.throttle_write_iops_device(),
        ),
    ];
    let any_throttle = throttles
        .iter()
        .any(|(_, l)| l.as_ref().is_some_and(|l| !l.is_empty()));
    if weight.is_none() && leaf.is_none() && weight_devs.is_empty() && !any_throttle {
        return Ok(());
    }
    let dir = need(cg, "blkio")?;
    // CFQ kernels have blkio.weight, BFQ ones blkio.bfq.weight (same range and format).
    let weight_file = ["blkio.weight", "blkio.bfq.weight"]
        .iter()
        .map(|f| dir.join(f))
        .find(|f| f.exists());
    let weight_dev_file = ["blkio.weight_device", "blkio.bfq.weight_device"]
        .iter()
        .map(|f| dir.join(f))
        .find(|f| f.exists());
    if let Some(w) = weight {
        let f = weight_file.as_ref().ok_or_else(|| {
            anyhow!("blkio weight is not supported by the kernel's I/O scheduler")
        })?;
        write_file(f, &w.to_string())?;
    }
    if let Some(w) = leaf {
        write_optional(
            &dir.join("blkio.leaf_weight"),
            &w.to_string(),
            "blkio leaf weight",
        )?;
    }
    for d in weight_devs {
        if let Some(w) = d.weight() {
            let f = weight_dev_file.as_ref().ok_or_else(|| {
                anyhow!("per-device blkio weight is not supported by the kernel's I/O scheduler")
            })?;
            write_file(f, &format!("{}:{} {w}", d.major(), d.minor()))?;
        }
        if let Some(w) = d.leaf_weight() {
            write_optional(
                &dir.join("blkio.leaf_weight_device"),
                &format!("{}:{} {w}", d.major(), d.minor()),
                "blkio leaf weight",
            )?;
        }
    }
    for (file, list) in throttles {
        for t in list.as_deref().unwrap_or_default() {
            write_file(
                &dir.join(file),
                &format!("{}:{} {}", t.major(), t.minor(), t.rate()),
            )
            .context("cannot set an I/O throttle")?;
        }
    }
    Ok(())
}

/// Reads a number file that may be absent (0 then).
fn num(dir: &Path, file: &str) -> u64 {
    read_u64(&dir.join(file)).unwrap_or(0)
}

pub(crate) fn stats(cg: &Cgroup) -> Result<Stats> {
    let mut st = Stats {
        cpu: cpu_stats(cg)?,
        ..Default::default()
    };
    if let Some(dir) = cg.v1_dir("memory") {
        let stat = flat_keyed(&read_string(&dir.join("memory.stat"))?);
        let data = |prefix: &str| MemoryData {
            usage: num(&dir, &format!("{prefix}usage_in_bytes")),
            max_usage: num(&dir, &format!("{prefix}max_usage_in_bytes")),
            failcnt: num(&dir, &format!("{prefix}failcnt")),
            limit: num(&dir, &format!("{prefix}limit_in_bytes")),
        };
        st.memory = Some(MemoryStats {
            cache: stat.get("cache").copied().unwrap_or(0),
            usage: data("memory."),
            swap_usage: data("memory.memsw."),
            kernel_usage: data("memory.kmem."),
            use_hierarchy: num(&dir, "memory.use_hierarchy") == 1,
            stats: stat,
        });
    }
    if let Some(dir) = cg.v1_dir("pids") {
        st.pids = Some(pids_stats(&dir)?);
    }
    if let Some(dir) = cg.v1_dir("blkio") {
        st.blkio = Some(blkio_stats(&dir));
    }
    if let Some(dir) = cg.v1_dir("hugetlb") {
        for size in hugetlb_sizes(&dir, ".limit_in_bytes") {
            let f = |k: &str| num(&dir, &format!("hugetlb.{size}.{k}"));
            let h = HugetlbStats {
                usage: f("usage_in_bytes"),
                max_usage: f("max_usage_in_bytes"),
                failcnt: f("failcnt"),
            };
            st.hugetlb.insert(size, h);
        }
    }
    Ok(st)
}

fn cpu_stats(cg: &Cgroup) -> Result<Option<CpuStats>> {
    let acct = cg.v1_dir("cpuacct");
    let cpu = cg.v1_dir("cpu");
    if acct.is_none() && cpu.is_none() {
        return Ok(None);
    }
    let mut st = CpuStats::default();
    if let Some(dir) = acct {
        st.cpu_usage.total_usage = read_u64(&dir.join("cpuacct.usage"))?;
        st.cpu_usage.percpu_usage = read_string(&dir.join("cpuacct.usage_percpu"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let ticks = flat_keyed(&read_string(&dir.join("cpuacct.stat"))?);
        let tck = clock_ticks();
        let ns = |k: &str| {
            ticks
                .get(k)
                .copied()
                .unwrap_or(0)
                .saturating_mul(1_000_000_000)
                / tck
        };
        st.cpu_usage.usage_in_usermode = ns("user");
        st.cpu_usage.usage_in_kernelmode = ns("system");
    }
    if let Some(dir) = cpu {
        let s = flat_keyed(&read_string(&dir.join("cpu.stat")).unwrap_or_default());
        let g = |k: &str| s.get(k).copied().unwrap_or(0);
        st.throttling_data = ThrottlingData {
            periods: g("nr_periods"),
            throttled_periods: g("nr_throttled"),
            throttled_time: g("throttled_time"),
        };
    }
    Ok(Some(st))
}

/// `sysconf(_SC_CLK_TCK)`, 100 when unknown.
fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as u64
    } else {
        100
    }
}

/// pids.current / pids.max (`max` → 0), shared with v2.
pub(crate) fn pids_stats(dir: &Path) -> Result<PidsStats> {
    let limit = read_trimmed(&dir.join("pids.max"))?;
    Ok(PidsStats {
        current: read_u64(&dir.join("pids.current"))?,
        limit: if limit == "max" {
            0
        } else {
            parse_u64(&limit).unwrap_or(0)
        },
    })
}

fn blkio_stats(dir: &Path) -> BlkioStats {
    let read = |f: &str| parse_blkio_v1(&read_string(&dir.join(f)).unwrap_or_default());
    let serviced = read("blkio.io_serviced_recursive");
    if !serviced.is_empty() {
        // CFQ: the full set of recursive counters.
        return BlkioStats {
            io_service_bytes_recursive: read("blkio.io_service_bytes_recursive"),
            io_serviced_recursive: serviced,
            io_queued_recursive: read("blkio.io_queued_recursive"),
            io_service_time_recursive: read("blkio.io_service_time_recursive"),
            io_wait_time_recursive: read("blkio.io_wait_time_recursive"),
            io_merged_recursive: read("blkio.io_merged_recursive"),
            io_time_recursive: read("blkio.time_recursive"),
            sectors_recursive: read("blkio.sectors_recursive"),
        };
    }
    // Other schedulers: the throttle layer still counts every request.
    let pick = |base: &str| {
        let rec = format!("{base}_recursive");
        if dir.join(&rec).exists() {
            read(&rec)
        } else {
            read(base)
        }
    };
    BlkioStats {
        io_service_bytes_recursive: pick("blkio.throttle.io_service_bytes"),
        io_serviced_recursive: pick("blkio.throttle.io_serviced"),
        ..Default::default()
    }
}

/// Page sizes (`2MB`, ...) for which `hugetlb.<size><suffix>` exists in `dir`.
pub(crate) fn hugetlb_sizes(dir: &Path, suffix: &str) -> Vec<String> {
    let mut sizes: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let size = name.strip_prefix("hugetlb.")?.strip_suffix(suffix)?;
                    (!size.contains('.')).then(|| size.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    sizes.sort();
    sizes.dedup();
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_values() {
        assert_eq!(pids_value(10), "10");
        assert_eq!(pids_value(0), "max");
        assert_eq!(pids_value(-1), "max");
    }

    #[test]
    fn mem_values() {
        assert_eq!(mem_value(-1, "x").unwrap(), "-1");
        assert_eq!(mem_value(4096, "x").unwrap(), "4096");
        assert!(mem_value(-2, "x").is_err());
    }

    #[test]
    fn hugetlb_size_listing() {
        let tmp = tempfile::tempdir().unwrap();
        for f in [
            "hugetlb.2MB.limit_in_bytes",
            "hugetlb.2MB.rsvd.limit_in_bytes",
            "hugetlb.1GB.limit_in_bytes",
            "hugetlb.1GB.usage_in_bytes",
        ] {
            std::fs::write(tmp.path().join(f), "0").unwrap();
        }
        assert_eq!(hugetlb_sizes(tmp.path(), ".limit_in_bytes"), ["1GB", "2MB"]);
    }
}
