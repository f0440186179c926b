//! Cgroup statistics into the StatsContainer reply.

use super::*;

pub(super) fn memory_data(d: &engine::cgroups::MemoryData) -> pba::MemoryData {
    let mut out = pba::MemoryData::new();
    out.usage = d.usage;
    out.max_usage = d.max_usage;
    out.failcnt = d.failcnt;
    out.limit = d.limit;
    out
}

pub(super) fn blkio_entries(
    list: &[engine::cgroups::BlkioStatsEntry],
) -> Vec<pba::BlkioStatsEntry> {
    list.iter()
        .map(|e| {
            let mut out = pba::BlkioStatsEntry::new();
            out.major = e.major;
            out.minor = e.minor;
            out.op = e.op.clone();
            out.value = e.value;
            out
        })
        .collect()
}

/// Converts the engine's cgroup statistics into the StatsContainer reply's `cgroup_stats`; a
/// controller the engine could not read stays an unset sub-message.
pub fn stats_to_proto(s: &engine::cgroups::Stats) -> pba::CgroupStats {
    let mut out = pba::CgroupStats::new();
    out.cpu_stats = match &s.cpu {
        Some(c) => {
            let mut usage = pba::CpuUsage::new();
            usage.total_usage = c.cpu_usage.total_usage;
            usage.percpu_usage = c.cpu_usage.percpu_usage.clone();
            usage.usage_in_kernelmode = c.cpu_usage.usage_in_kernelmode;
            usage.usage_in_usermode = c.cpu_usage.usage_in_usermode;
            let mut throttling = pba::ThrottlingData::new();
            throttling.periods = c.throttling_data.periods;
            throttling.throttled_periods = c.throttling_data.throttled_periods;
            throttling.throttled_time = c.throttling_data.throttled_time;
            let mut cpu = pba::CpuStats::new();
            cpu.cpu_usage = MessageField::some(usage);
            cpu.throttling_data = MessageField::some(throttling);
            MessageField::some(cpu)
        }
        None => MessageField::none(),
    };
    out.memory_stats = match &s.memory {
        Some(m) => {
            let mut mem = pba::MemoryStats::new();
            mem.cache = m.cache;
            mem.usage = MessageField::some(memory_data(&m.usage));
            mem.swap_usage = MessageField::some(memory_data(&m.swap_usage));
            mem.kernel_usage = MessageField::some(memory_data(&m.kernel_usage));
            mem.use_hierarchy = m.use_hierarchy;
            mem.stats = m.stats.clone();
            MessageField::some(mem)
        }
        None => MessageField::none(),
    };
    out.pids_stats = match &s.pids {
        Some(p) => {
            let mut pids = pba::PidsStats::new();
            pids.current = p.current;
            pids.limit = p.limit;
            MessageField::some(pids)
        }
        None => MessageField::none(),
    };
    out.blkio_stats = match &s.blkio {
        Some(b) => {
            let mut blkio = pba::BlkioStats::new();
            blkio.io_service_bytes_recursive = blkio_entries(&b.io_service_bytes_recursive);
            blkio.io_serviced_recursive = blkio_entries(&b.io_serviced_recursive);
            blkio.io_queued_recursive = blkio_entries(&b.io_queued_recursive);
            blkio.io_service_time_recursive = blkio_entries(&b.io_service_time_recursive);
            blkio.io_wait_time_recursive = blkio_entries(&b.io_wait_time_recursive);
            blkio.io_merged_recursive = blkio_entries(&b.io_merged_recursive);
            blkio.io_time_recursive = blkio_entries(&b.io_time_recursive);
            blkio.sectors_recursive = blkio_entries(&b.sectors_recursive);
            MessageField::some(blkio)
        }
        None => MessageField::none(),
    };
    out.hugetlb_stats = s
        .hugetlb
        .iter()
        .map(|(size, h)| {
            let mut stats = pba::HugetlbStats::new();
            stats.usage = h.usage;
            stats.max_usage = h.max_usage;
            stats.failcnt = h.failcnt;
            (size.clone(), stats)
        })
        .collect();
    out
}

// ---------------------------------------------------------------------------------------------
// OCI → protobuf (control tool, tests)
