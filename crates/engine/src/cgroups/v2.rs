//! cgroup v2: resource application and statistics in the unified hierarchy.
//!
//! There is no device controller in v2 (upstream would need an eBPF program, which we do not
//! load): device rules are accepted but NOT enforced.

use super::stats::*;
use super::{
    flat_keyed, read_string, read_trimmed, read_u64, v1::hugetlb_sizes, v1::pids_stats, write_file,
    Cgroup,
};
use anyhow::{anyhow, bail, Context, Result};
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxResources};
use std::path::{Path, PathBuf};

/// Controllers a container may need; enabled in the parents when the parent offers them.
const WANTED: &[&str] = &["cpuset", "cpu", "io", "memory", "pids", "hugetlb", "misc"];

/// Enables, in `dir/cgroup.subtree_control`, every wanted controller `dir` has. Failures (e.g. a
/// parent with processes of its own) are logged: the child then simply lacks that controller.
pub(crate) fn enable_controllers(dir: &Path) {
    let Ok(available) = read_string(&dir.join("cgroup.controllers")) else {
        return;
    };
    let enabled = read_string(&dir.join("cgroup.subtree_control")).unwrap_or_default();
    for c in available.split_whitespace() {
        if WANTED.contains(&c) && !enabled.split_whitespace().any(|e| e == c) {
            if let Err(e) = write_file(&dir.join("cgroup.subtree_control"), &format!("+{c}")) {
                tracing::warn!("cannot enable the {c} controller: {e:#}");
            }
        }
    }
}

/// A controller file of the cgroup, or a clear error when the controller is not enabled there.
fn need(dir: &Path, file: &str, controller: &str) -> Result<PathBuf> {
    let f = dir.join(file);
    if f.exists() {
        Ok(f)
    } else {
        Err(anyhow!(
            "the {controller} controller is not enabled for {}",
            dir.display()
        ))
    }
}

/// v2 value of a byte limit: bytes, or `max` for -1.
fn max_value(v: i64, what: &str) -> Result<String> {
    match v {
        -1 => Ok("max".into()),
        v if v < 0 => bail!("invalid {what} {v}: it must be positive or -1 (unlimited)"),
        v => Ok(v.to_string()),
    }
}

/// cpu.shares (2..262144) to cpu.weight (1..10000).
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + (shares - 2) * 9999 / 262_142
}

/// blkio weight (10..1000) to io.weight (1..10000).
pub(crate) fn blkio_to_io_weight(w: u16) -> u64 {
    let w = u64::from(w.clamp(10, 1000));
    1 + (w - 10) * 9999 / 990
}

pub(crate) fn apply(cg: &Cgroup, res: &LinuxResources, update: bool) -> Result<()> {
    let dir = cg.v2_dir().expect("v2 layout");
    if let Some(cpu) = res.cpu() {
        apply_cpu(&dir, cpu)?;
    }
    if let Some(mem) = res.memory() {
        apply_memory(&dir, mem)?;
    }
    if let Some(pids) = res.pids() {
        let limit = pids.limit();
        if limit > 0 {
            write_file(&need(&dir, "pids.max", "pids")?, &limit.to_string())?;
        } else if dir.join("pids.max").exists() {
            write_file(&dir.join("pids.max"), "max")?;
        }
    }
    if let Some(bio) = res.block_io() {
        apply_io(&dir, bio)?;
    }
    if let Some(limits) = res.hugepage_limits().as_ref().filter(|l| !l.is_empty()) {
        for l in limits {
            let file = dir.join(format!("hugetlb.{}.max", l.page_size()));
            if !file.exists() {
                tracing::warn!(
                    "hugepage limit for {} ignored: no hugetlb controller or unsupported size",
                    l.page_size()
                );
                continue;
            }
            write_file(&file, &max_value(l.limit(), "hugepage limit")?)?;
            let rsvd = dir.join(format!("hugetlb.{}.rsvd.max", l.page_size()));
            if rsvd.exists() {
                write_file(&rsvd, &max_value(l.limit(), "hugepage limit")?)?;
            }
        }
    }
    if let Some(net) = res.network() {
        if net.class_id().is_some_and(|c| c > 0)
            || net.priorities().as_ref().is_some_and(|p| !p.is_empty())
        {
            tracing::warn!(
                "network class id and priorities are not supported on cgroup v2, ignored"
            );
        }
    }
    if let Some(rules) = res.devices().as_ref().filter(|r| !r.is_empty()) {
        if !update || rules.iter().any(|r| !super::devices::is_allow_all(r)) {
            tracing::warn!(
                "cgroup v2: {} device rule(s) for {} are not enforced (no device controller)",
                rules.len(),
                cg.path()
            );
        }
    }
    Ok(())
}

fn apply_cpu(dir: &Path, cpu: &LinuxCpu) -> Result<()> {
    if let Some(cpus) = cpu.cpus().as_deref().filter(|s| !s.is_empty()) {
        match need(dir, "cpuset.cpus", "cpuset").and_then(|f| write_file(&f, cpus)) {
            Ok(()) => {}
            Err(e) => tracing::warn!("cpus {cpus} not applied: {e:#}"),
        }
    }
    if let Some(mems) = cpu.mems().as_deref().filter(|s| !s.is_empty()) {
        write_file(&need(dir, "cpuset.mems", "cpuset")?, mems)?;
    }
    if let Some(s) = cpu.shares().filter(|v| *v > 0) {
        write_file(
            &need(dir, "cpu.weight", "cpu")?,
            &shares_to_weight(s).to_string(),
        )?;
    }
    let quota = cpu.quota().filter(|v| *v != 0);
    let period = cpu.period().filter(|v| *v > 0);
    if quota.is_some() || period.is_some() {
        let file = need(dir, "cpu.max", "cpu")?;
        // cpu.max is "<quota|max> <period>": keep the half that is not being changed.
        let current = read_trimmed(&file)?;
        let mut cur = current.split_whitespace();
        let cur_quota = cur.next().unwrap_or("max").to_string();
        let cur_period = cur.next().unwrap_or("100000").to_string();
        let q = match quota {
            Some(q) if q > 0 => q.to_string(),
            Some(_) => "max".to_string(),
            None => cur_quota,
        };
        let p = period.map(|p| p.to_string()).unwrap_or(cur_period);
        write_file(&file, &format!("{q} {p}"))?;
    }
    if let Some(idle) = cpu.idle() {
        write_file(&need(dir, "cpu.idle", "cpu")?, &idle.to_string())?;
    }
    if let Some(burst) = cpu.burst() {
        write_file(&need(dir, "cpu.max.burst", "cpu")?, &burst.to_string())?;
    }
    if cpu.realtime_runtime().is_some_and(|v| v != 0)
        || cpu.realtime_period().is_some_and(|v| v > 0)
    {
        tracing::warn!("realtime cpu runtime/period are not supported on cgroup v2, ignored");
    }
    Ok(())
}

fn apply_memory(dir: &Path, mem: &LinuxMemory) -> Result<()> {
    let limit = mem.limit().filter(|v| *v != 0);
    let swap = mem.swap().filter(|v| *v != 0);
    if let Some(l) = limit {
        write_file(
            &need(dir, "memory.max", "memory")?,
            &max_value(l, "memory limit")?,
        )?;
    }
    if let Some(s) = swap {
        let file = need(dir, "memory.swap.max", "memory swap")?;
        // OCI swap is memory+swap; v2 limits swap alone.
        let value = if s == -1 {
            "max".to_string()
        } else {
            match limit {
                Some(l) if l > 0 => {
                    if s < l {
                        bail!("memory+swap limit ({s}) should be >= memory limit ({l})");
                    }
                    (s - l).to_string()
                }
                _ => bail!("unable to set swap limit without memory limit"),
            }
        };
        write_file(&file, &value)?;
    }
    if let Some(r) = mem.reservation().filter(|v| *v != 0) {
        write_file(
            &need(dir, "memory.low", "memory")?,
            &max_value(r, "memory reservation")?,
        )?;
    }
    if mem.kernel().is_some_and(|v| v != 0) || mem.kernel_tcp().is_some_and(|v| v != 0) {
        tracing::warn!("kernel memory limits do not exist on cgroup v2, ignored");
    }
    if let Some(s) = mem.swappiness() {
        if s > 100 {
            bail!("invalid memory swappiness {s}: it must be between 0 and 100");
        }
        tracing::debug!("memory swappiness has no per-cgroup setting on cgroup v2, ignored");
    }
    if mem.disable_oom_killer() == Some(true) {
        bail!("disabling the OOM killer is not supported on cgroup v2");
    }
    Ok(())
}

fn apply_io(dir: &Path, bio: &LinuxBlockIo) -> Result<()> {
    // BFQ has io.bfq.weight with the v1 range; otherwise io.weight with the v2 range.
    let bfq = dir.join("io.bfq.weight");
    let weight_line = |dev: Option<(i64, i64)>, w: u16| -> Result<(PathBuf, String)> {
        let prefix = dev
            .map(|(ma, mi)| format!("{ma}:{mi}"))
            .unwrap_or_else(|| "default".into());
        if bfq.exists() {
            Ok((bfq.clone(), format!("{prefix} {w}")))
        } else {
            let f = need(dir, "io.weight", "io")?;
            Ok((f, format!("{prefix} {}", blkio_to_io_weight(w))))
        }
    };
    if let Some(w) = bio.weight().filter(|w| *w > 0) {
        let (f, line) = weight_line(None, w)?;
        write_file(&f, &line)?;
    }
    if bio.leaf_weight().is_some_and(|w| w > 0) {
        tracing::warn!("blkio leaf weight does not exist on cgroup v2, ignored");
    }
    for d in bio.weight_device().as_deref().unwrap_or_default() {
        if let Some(w) = d.weight() {
            let (f, line) = weight_line(Some((d.major(), d.minor())), w)?;
            write_file(&f, &line)?;
        }
    }
    let throttles = [
        ("rbps", bio.throttle_read_bps_device()),
        ("wbps", bio.throttle_write_bps_device()),
        ("riops", bio.throttle_read_iops_device()),
        ("wiops", bio.throttle_write_iops_device()),
    ];
    for (key, list) in throttles {
        for t in list.as_deref().unwrap_or_default() {
            let rate = if t.rate() == 0 {
                "max".to_string()
            } else {
                t.rate().to_string()
            };
            let f = need(dir, "io.max", "io")?;
            write_file(&f, &format!("{}:{} {key}={rate}", t.major(), t.minor()))
                .context("cannot set an I/O throttle")?;
        }
    }
    Ok(())
}

fn num(dir: &Path, file: &str) -> u64 {
    read_u64(&dir.join(file)).unwrap_or(0)
}

pub(crate) fn stats(dir: &Path) -> Result<Stats> {
    let mut st = Stats::default();
    if dir.join("cpu.stat").exists() {
        let s = flat_keyed(&read_string(&dir.join("cpu.stat"))?);
        let g = |k: &str| s.get(k).copied().unwrap_or(0);
        st.cpu = Some(CpuStats {
            cpu_usage: CpuUsage {
                total_usage: g("usage_usec").saturating_mul(1000),
                percpu_usage: Vec::new(),
                usage_in_kernelmode: g("system_usec").saturating_mul(1000),
                usage_in_usermode: g("user_usec").saturating_mul(1000),
            },
            throttling_data: ThrottlingData {
                periods: g("nr_periods"),
                throttled_periods: g("nr_throttled"),
                throttled_time: g("throttled_usec").saturating_mul(1000),
            },
        });
    }
    if dir.join("memory.current").exists() {
        let stat = flat_keyed(&read_string(&dir.join("memory.stat")).unwrap_or_default());
        let swap_events =
            flat_keyed(&read_string(&dir.join("memory.swap.events")).unwrap_or_default());
        let swap_max = read_trimmed(&dir.join("memory.swap.max")).unwrap_or_default();
        st.memory = Some(MemoryStats {
            cache: 0,
            usage: MemoryData {
                usage: num(dir, "memory.current"),
                max_usage: num(dir, "memory.peak"),
                failcnt: 0,
                limit: num(dir, "memory.max"),
            },
            swap_usage: MemoryData {
                usage: num(dir, "memory.swap.current"),
                max_usage: num(dir, "memory.swap.peak"),
                failcnt: swap_events.get("fail").copied().unwrap_or(0),
                limit: if swap_max == "max" {
                    0
                } else {
                    swap_max.parse().unwrap_or(0)
                },
            },
            kernel_usage: MemoryData {
                limit: u64::MAX,
                ..Default::default()
            },
            use_hierarchy: false,
            stats: stat,
        });
    }
    if dir.join("pids.current").exists() {
        st.pids = Some(pids_stats(dir)?);
    }
    if dir.join("io.stat").exists() {
        st.blkio = Some(BlkioStats {
            io_service_bytes_recursive: parse_io_stat_v2(&read_string(&dir.join("io.stat"))?),
            ..Default::default()
        });
    }
    for size in hugetlb_sizes(dir, ".max") {
        let events = flat_keyed(
            &read_string(&dir.join(format!("hugetlb.{size}.events"))).unwrap_or_default(),
        );
        let h = HugetlbStats {
            usage: num(dir, &format!("hugetlb.{size}.current")),
            max_usage: 0,
            failcnt: events.get("max").copied().unwrap_or(0),
        };
        st.hugetlb.insert(size, h);
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_conversions() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(1000), 10_000);
    }

    #[test]
    fn byte_limits() {
        assert_eq!(max_value(-1, "x").unwrap(), "max");
        assert_eq!(max_value(1 << 20, "x").unwrap(), "1048576");
        assert!(max_value(-5, "x").is_err());
    }

    /// A fake v2 cgroup directory with the files of the cpu, memory and pids controllers.
    fn fake_v2() -> (tempfile::TempDir, super::super::CgroupConfig) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("cgroup.procs"), "").unwrap();
        std::fs::write(tmp.path().join("cgroup.controllers"), "").unwrap();
        let cfg = super::super::CgroupConfig {
            v2: true,
            v1_root: tmp.path().into(),
            v2_root: tmp.path().into(),
        };
        (tmp, cfg)
    }

    #[test]
    fn memory_swap_and_cpu_on_fake_v2() {
        use oci_spec::runtime::*;
        let (tmp, cfg) = fake_v2();
        let cg = super::super::Cgroup::create(&cfg, "/c", None).unwrap();
        let d = tmp.path().join("c");
        for (f, v) in [
            ("memory.max", "max"),
            ("memory.swap.max", "max"),
            ("cpu.max", "max 100000"),
            ("cpu.weight", "100"),
            ("pids.max", "max"),
        ] {
            std::fs::write(d.join(f), v).unwrap();
        }
        let res = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(100i64)
                    .swap(300i64)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(1024u64)
                    .quota(50_000i64)
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(-1i64).build().unwrap())
            .build()
            .unwrap();
        cg.apply(&res, false).unwrap();
        let rd = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
        assert_eq!(rd("memory.max"), "100");
        assert_eq!(rd("memory.swap.max"), "200");
        assert_eq!(rd("cpu.max"), "50000 100000");
        assert_eq!(rd("cpu.weight"), "39");
        assert_eq!(rd("pids.max"), "max");

        let bad = LinuxResourcesBuilder::default()
            .memory(LinuxMemoryBuilder::default().swap(300i64).build().unwrap())
            .build()
            .unwrap();
        let err = format!("{:#}", cg.apply(&bad, true).unwrap_err());
        assert!(
            err.contains("unable to set swap limit without memory limit"),
            "{err}"
        );

        let no_io = LinuxResourcesBuilder::default()
            .block_io(
                LinuxBlockIoBuilder::default()
                    .weight(100u16)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let err = format!("{:#}", cg.apply(&no_io, true).unwrap_err());
        assert!(err.contains("io controller is not enabled"), "{err}");
    }
}
