//! Guest-level operations that are not about containers: details, clock, entropy, volumes,
//! swap, CPU and memory hot-plug.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{AgentError, Result};
use crate::storage::confine::{clean_absolute, Root};
use crate::storage::drivers::find_tool;
use crate::storage::mount::mount_at;

/// What GetGuestDetails reports about memory hot-plug.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemoryDetails {
    pub block_size_bytes: u64,
    pub hotplug_probe: bool,
}

/// Reads the memory block size (hex in sysfs) and whether the probe interface exists.
pub fn memory_details(
    sysfs: &Path,
    want_block_size: bool,
    want_probe: bool,
) -> Result<MemoryDetails> {
    let mut details = MemoryDetails::default();
    let memory = sysfs.join("devices/system/memory");
    if want_block_size {
        let file = memory.join("block_size_bytes");
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let text = text.trim();
                let hex = text.trim_start_matches("0x");
                details.block_size_bytes = u64::from_str_radix(hex, 16).map_err(|_| {
                    AgentError::internal(format!(
                        "invalid memory block size {text:?} in {}",
                        file.display()
                    ))
                })?;
            }
            // A guest without memory hot-plug support has no such file.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(AgentError::internal(format!(
                    "cannot read {}: {e}",
                    file.display()
                )))
            }
        }
    }
    if want_probe {
        let probe = memory.join("probe");
        details.hotplug_probe = match std::fs::symlink_metadata(&probe) {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                return Err(AgentError::internal(format!(
                    "cannot check {}: {e}",
                    probe.display()
                )))
            }
        };
    }
    Ok(details)
}

/// Sets the guest's wall clock.
pub fn set_date_time(sec: i64, usec: i64) -> Result<()> {
    if !(0..1_000_000).contains(&usec) {
        return Err(AgentError::invalid_argument(format!(
            "usec must be between 0 and 999999, got {usec}"
        )));
    }
    let tv = libc::timeval {
        tv_sec: sec as libc::time_t,
        tv_usec: usec as libc::suseconds_t,
    };
    // SAFETY: tv is a valid timeval; a null timezone is allowed.
    let rc = unsafe { libc::settimeofday(&tv, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(AgentError::internal(format!(
            "cannot set the guest time: {err}"
        )));
    }
    Ok(())
}

// ioctls of the random device (linux/random.h).
nix::ioctl_write_ptr!(rnd_add_to_ent_cnt, b'R', 0x01, libc::c_int);
nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);

/// Mixes host-provided entropy into the guest's pool, credits it and reseeds the CRNG.
pub fn reseed_random(random_dev: &Path, data: &[u8]) -> Result<()> {
    if data.is_empty() {
        return Err(AgentError::invalid_argument("missing entropy data"));
    }
    let mut dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(random_dev)
        .map_err(|e| AgentError::internal(format!("cannot open {}: {e}", random_dev.display())))?;
    dev.write_all(data)
        .map_err(|e| AgentError::internal(format!("cannot write entropy: {e}")))?;
    let bits: libc::c_int = (data.len().min(i32::MAX as usize / 8) * 8) as libc::c_int;
    // SAFETY: the fd is open on the random device; the arguments match the ioctl definitions.
    unsafe {
        rnd_add_to_ent_cnt(dev.as_raw_fd(), &bits)
            .map_err(|e| AgentError::internal(format!("cannot credit entropy: {e}")))?;
        rnd_reseed_crng(dev.as_raw_fd())
            .map_err(|e| AgentError::internal(format!("cannot reseed the CRNG: {e}")))?;
    }
    Ok(())
}

/// Byte and inode usage of a volume (GetVolumeStats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeStats {
    pub bytes_total: u64,
    pub bytes_available: u64,
    pub bytes_used: u64,
    pub inodes_total: u64,
    pub inodes_available: u64,
    pub inodes_used: u64,
}

/// statvfs of a volume below the storage root. `available` is what unprivileged users may still
/// use (`f_bavail`), `used` what is taken (`f_blocks - f_bfree`).
pub fn volume_stats(root: &Root, path: &str) -> Result<VolumeStats> {
    let p = clean_absolute("volume_guest_path", path)?;
    let r = root.resolve("volume_guest_path", &p)?;
    // fstatvfs works on the O_PATH descriptor itself: nothing is opened (a FIFO never blocks).
    let st = nix::sys::statvfs::fstatvfs(&r.fd)
        .map_err(|e| AgentError::internal(format!("cannot statvfs {path}: {e}")))?;
    let frag = if st.fragment_size() > 0 {
        st.fragment_size()
    } else {
        st.block_size()
    } as u64;
    stats_from(
        path,
        frag,
        [
            st.blocks() as u64,
            st.blocks_free() as u64,
            st.blocks_available() as u64,
            st.files() as u64,
            st.files_free() as u64,
        ],
    )
}

/// Usage from statvfs numbers (`[blocks, bfree, bavail, files, ffree]` and the block size). The
/// numbers come from the file system, which for a shared volume is the host's: a product that
/// does not fit is an error, never a wrapped value.
fn stats_from(
    path: &str,
    frag: u64,
    [blocks, bfree, bavail, files, ffree]: [u64; 5],
) -> Result<VolumeStats> {
    let bytes = |n: u64, what: &str| {
        n.checked_mul(frag).ok_or_else(|| {
            AgentError::internal(format!(
                "the file system of {path} reports an impossible {what} ({n} blocks of {frag} bytes)"
            ))
        })
    };
    Ok(VolumeStats {
        bytes_total: bytes(blocks, "size")?,
        bytes_available: bytes(bavail, "free space")?,
        bytes_used: bytes(blocks.saturating_sub(bfree), "used space")?,
        inodes_total: files,
        inodes_available: ffree,
        inodes_used: files.saturating_sub(ffree),
    })
}

nix::ioctl_read!(blk_getsize64, 0x12, 114, u64);

/// Size in bytes of a block device.
fn block_device_size(dev: &Path) -> Result<u64> {
    let f = std::fs::File::open(dev)
        .map_err(|e| AgentError::internal(format!("cannot open {}: {e}", dev.display())))?;
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer.
    unsafe { blk_getsize64(f.as_raw_fd(), &mut size) }.map_err(|e| {
        AgentError::internal(format!("cannot get the size of {}: {e}", dev.display()))
    })?;
    Ok(size)
}

/// Grows the file system mounted at `path` (below the storage root) to `size` bytes, or to its
/// whole device when `size` is 0: ext2/3/4 with resize2fs, xfs with xfs_growfs.
pub fn resize_volume(root: &Root, path: &str, size: u64) -> Result<()> {
    let p = clean_absolute("volume_guest_path", path)?;
    let r = root.resolve("volume_guest_path", &p)?;
    let m = mount_at(&r.real).ok_or_else(|| {
        AgentError::failed_precondition(format!("{path} is not a mounted volume"))
    })?;
    let tool_name = match m.fstype.as_str() {
        "ext2" | "ext3" | "ext4" => "resize2fs",
        "xfs" => "xfs_growfs",
        other => {
            return Err(AgentError::unimplemented(format!(
                "resizing a {other} volume is not supported (only ext2/3/4 and xfs)"
            )))
        }
    };
    let tool = find_tool(tool_name).ok_or_else(|| {
        AgentError::unimplemented(format!(
            "cannot resize the {} volume {path}: {tool_name} is not installed in the guest",
            m.fstype
        ))
    })?;
    let dev = PathBuf::from(&m.source);
    if size > 0 {
        let dev_size = block_device_size(&dev)?;
        if dev_size < size {
            return Err(AgentError::failed_precondition(format!(
                "the device {} of {path} has {dev_size} bytes, less than the requested {size}",
                dev.display()
            )));
        }
    }
    let mut cmd = std::process::Command::new(tool);
    if tool_name == "resize2fs" {
        cmd.arg(&dev);
        if size > 0 {
            cmd.arg(format!("{}K", size / 1024));
        }
    } else {
        if size > 0 {
            let bsize = nix::sys::statvfs::statvfs(&r.real)
                .map(|s| s.block_size())
                .unwrap_or(4096)
                .max(512);
            cmd.arg("-D").arg((size / bsize).to_string());
        }
        cmd.arg(&r.real);
    }
    let out = engine::reaper::run_command(&mut cmd, None, Some(Duration::from_secs(300)))
        .map_err(|e| AgentError::internal(format!("cannot run {tool_name}: {e}")))?;
    if out.timed_out || out.code != 0 {
        return Err(AgentError::internal(format!(
            "{tool_name} failed on {path} (status {}): {}",
            out.code,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// `swapon(path, 0)`.
pub fn swapon(path: &Path, shown: &str) -> Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| AgentError::invalid_argument("swap path contains a NUL byte"))?;
    // SAFETY: swapon with a valid NUL-terminated path.
    if unsafe { libc::swapon(c.as_ptr(), 0) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(AgentError::internal(format!(
            "cannot enable swap on {shown}: {e}"
        )));
    }
    Ok(())
}

/// Which CPUs are online: from the per-CPU `online` files (a CPU without one, usually cpu0,
/// cannot go offline), or from `cpu/online` when there are no per-CPU directories.
/// Online CPUs, and the offline ones with their `online` file.
type CpuStatus = (BTreeSet<u32>, Vec<(u32, PathBuf)>);

fn cpu_status(sysfs: &Path) -> Result<CpuStatus> {
    let dir = sysfs.join("devices/system/cpu");
    let mut online = BTreeSet::new();
    let mut offline = Vec::new();
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| AgentError::internal(format!("cannot list {}: {e}", dir.display())))?;
    let mut any = false;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(n) = name.strip_prefix("cpu").and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        any = true;
        let file = e.path().join("online");
        match std::fs::read_to_string(&file) {
            Ok(s) if s.trim() == "0" => offline.push((n, file)),
            _ => {
                online.insert(n);
            }
        }
    }
    if !any {
        let text = std::fs::read_to_string(dir.join("online")).unwrap_or_default();
        online = parse_cpu_list(text.trim())?;
    }
    offline.sort();
    Ok((online, offline))
}

/// `0-3,5` → {0,1,2,3,5}.
pub fn parse_cpu_list(text: &str) -> Result<BTreeSet<u32>> {
    let mut set = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || AgentError::internal(format!("invalid CPU list {text:?}"));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b || b - a > 65536 {
                    return Err(bad());
                }
                set.extend(a..=b);
            }
            None => {
                set.insert(part.parse().map_err(|_| bad())?);
            }
        }
    }
    Ok(set)
}

/// {0,1,2,3,5} → `0-3,5`.
pub fn format_cpu_list(set: &BTreeSet<u32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = set.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while end < u32::MAX && it.peek() == Some(&(end + 1)) {
            end = it.next().unwrap();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// Brings CPUs online until `nb_cpus` are (a target total, as upstream), retrying while
/// hot-added CPUs show up. Returns the online list.
pub fn online_cpus(sysfs: &Path, nb_cpus: u32) -> Result<String> {
    let want = nb_cpus as usize;
    for _ in 0..100 {
        let (online, offline) = cpu_status(sysfs)?;
        if online.len() >= want {
            return Ok(format_cpu_list(&online));
        }
        let mut need = want - online.len();
        for (n, file) in offline {
            if need == 0 {
                break;
            }
            match std::fs::write(&file, "1") {
                Ok(()) => need -= 1,
                Err(e) => {
                    tracing::warn!(subsystem = "guest", cpu = n, error = %e, "cannot online CPU")
                }
            }
        }
        let (online, _) = cpu_status(sysfs)?;
        if online.len() >= want {
            return Ok(format_cpu_list(&online));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(AgentError::internal(format!(
        "failed to online {nb_cpus} CPU(s) after 100 retries"
    )))
}

/// Onlines every offline memory block (failures of single blocks are ignored). Returns how many
/// were onlined.
pub fn online_memory(sysfs: &Path) -> usize {
    let dir = sysfs.join("devices/system/memory");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name
            .strip_prefix("memory")
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let file = e.path().join("online");
        if std::fs::read_to_string(&file).is_ok_and(|s| s.trim() == "0")
            && std::fs::write(&file, "1").is_ok()
        {
            n += 1;
        }
    }
    n
}

/// Announces hot-added memory to the kernel through the probe interface.
pub fn mem_hotplug_probe(sysfs: &Path, addrs: &[u64]) -> Result<()> {
    let probe = sysfs.join("devices/system/memory/probe");
    if !addrs.is_empty() && !probe.exists() {
        return Err(AgentError::failed_precondition(format!(
            "the guest kernel has no memory probe interface ({} is missing)",
            probe.display()
        )));
    }
    for addr in addrs {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&probe)
            .map_err(|e| AgentError::internal(format!("cannot open {}: {e}", probe.display())))?;
        f.write_all(format!("0x{addr:X}").as_bytes())
            .map_err(|e| AgentError::internal(format!("cannot probe memory at {addr:#x}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_stats_arithmetic_is_checked() {
        let st = stats_from("/v", 4096, [10, 4, 3, 100, 60]).unwrap();
        assert_eq!(
            (st.bytes_total, st.bytes_available, st.bytes_used),
            (40960, 12288, 24576)
        );
        assert_eq!(st.inodes_used, 40);
        let e = stats_from("/v", 1 << 20, [u64::MAX / 2, 0, 0, 0, 0]).unwrap_err();
        assert_eq!(e.code, ttrpc::Code::INTERNAL);
        assert!(e.message.contains("impossible"), "{e}");
        // More free than total: used saturates at 0.
        assert_eq!(stats_from("/v", 1, [1, 5, 5, 1, 9]).unwrap().bytes_used, 0);
    }

    #[test]
    fn memory_details_from_synthetic_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let mem = dir.path().join("devices/system/memory");
        std::fs::create_dir_all(&mem).unwrap();
        std::fs::write(mem.join("block_size_bytes"), "8000000\n").unwrap();
        let d = memory_details(dir.path(), true, true).unwrap();
        assert_eq!(d.block_size_bytes, 0x8000000);
        assert!(!d.hotplug_probe);
        std::fs::write(mem.join("probe"), "").unwrap();
        assert!(
            memory_details(dir.path(), false, true)
                .unwrap()
                .hotplug_probe
        );
        std::fs::write(mem.join("block_size_bytes"), "zz").unwrap();
        assert!(memory_details(dir.path(), true, false).is_err());
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            memory_details(empty.path(), true, true).unwrap(),
            MemoryDetails::default()
        );
    }

    #[test]
    fn empty_entropy_is_rejected() {
        let e = reseed_random(Path::new("/dev/random"), &[]).unwrap_err();
        assert_eq!(e.code, ttrpc::Code::INVALID_ARGUMENT);
    }

    #[test]
    fn cpu_lists() {
        let s = parse_cpu_list("0-3,5, 7-8").unwrap();
        assert_eq!(s.len(), 7);
        assert_eq!(format_cpu_list(&s), "0-3,5,7-8");
        assert!(parse_cpu_list("3-1").is_err());
        assert_eq!(format_cpu_list(&BTreeSet::new()), "");
    }

    #[test]
    fn cpus_and_memory_on_synthetic_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let cpu = dir.path().join("devices/system/cpu");
        for n in 0..4 {
            std::fs::create_dir_all(cpu.join(format!("cpu{n}"))).unwrap();
            if n > 0 {
                std::fs::write(
                    cpu.join(format!("cpu{n}/online")),
                    if n == 1 { "1\n" } else { "0\n" },
                )
                .unwrap();
            }
        }
        assert_eq!(online_cpus(dir.path(), 2).unwrap(), "0-1");
        assert_eq!(online_cpus(dir.path(), 3).unwrap(), "0-2");
        assert_eq!(
            std::fs::read_to_string(cpu.join("cpu3/online")).unwrap(),
            "0\n"
        );
        assert_eq!(online_cpus(dir.path(), 4).unwrap(), "0-3");
        let mem = dir.path().join("devices/system/memory");
        for (n, v) in [(0, "1"), (1, "0"), (2, "0")] {
            std::fs::create_dir_all(mem.join(format!("memory{n}"))).unwrap();
            std::fs::write(mem.join(format!("memory{n}/online")), v).unwrap();
        }
        assert_eq!(online_memory(dir.path()), 2);
        assert_eq!(
            std::fs::read_to_string(mem.join("memory2/online")).unwrap(),
            "1"
        );
        assert_eq!(
            mem_hotplug_probe(dir.path(), &[0x1]).unwrap_err().code,
            ttrpc::Code::FAILED_PRECONDITION
        );
        std::fs::write(mem.join("probe"), "").unwrap();
        mem_hotplug_probe(dir.path(), &[0x8000_0000, 0xabc]).unwrap();
        assert_eq!(
            std::fs::read_to_string(mem.join("probe")).unwrap(),
            "0x800000000xABC"
        );
    }

    #[test]
    fn bad_usec_is_rejected() {
        assert_eq!(
            set_date_time(0, 2_000_000).unwrap_err().code,
            ttrpc::Code::INVALID_ARGUMENT
        );
    }
}
