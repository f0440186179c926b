//! Parsers of the /proc and statfs sources of the agent and guest families.

use super::*;

pub(super) fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

pub(super) fn page_size() -> f64 {
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
pub(super) struct SelfStat {
    pub(super) utime: u64,
    pub(super) stime: u64,
    pub(super) cutime: i64,
    pub(super) cstime: i64,
    pub(super) num_threads: i64,
    pub(super) vsize: u64,
    pub(super) rss: i64,
}

pub(super) fn parse_self_stat(text: &str) -> Option<SelfStat> {
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
pub(super) fn parse_status(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let v = v.split_whitespace().next()?.parse().ok()?;
            Some((k.trim().to_string(), v))
        })
        .collect()
}

/// `/proc/meminfo`: `kB` values converted to bytes, unit-less ones raw.
pub(super) fn parse_meminfo(text: &str) -> HashMap<String, f64> {
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
pub(super) fn parse_key_values(text: &str) -> Vec<(String, f64)> {
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
pub(super) fn parse_loadavg(text: &str) -> Option<(f64, f64, f64, f64, f64)> {
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
pub(super) fn parse_proc_stat_cpus(text: &str) -> Vec<(String, Vec<u64>)> {
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
pub(super) fn parse_net_dev(text: &str) -> Vec<(String, Vec<u64>)> {
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
pub(super) fn parse_diskstats(text: &str) -> Vec<(String, Vec<u64>)> {
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
pub(super) struct Filesystem {
    pub(super) mount_point: PathBuf,
    pub(super) device: String,
}

/// Writable ext4/xfs/btrfs/vfat/overlay mounts of `mountinfo`, first mount per device only.
pub(super) fn filesystems(mountinfo: &str) -> Vec<Filesystem> {
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
pub(super) fn unescape_octal(s: &str) -> String {
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

pub(super) struct FsUsage {
    pub(super) bytes_total: f64,
    pub(super) bytes_used: f64,
    pub(super) bytes_available: f64,
    pub(super) inodes_total: f64,
    pub(super) inodes_used: f64,
    pub(super) inodes_available: f64,
}

pub(super) fn statfs_usage(path: &Path) -> Option<FsUsage> {
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
