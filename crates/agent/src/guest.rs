//! Guest-level operations that are not about containers: details, clock, entropy.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{AgentError, Result};

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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn bad_usec_is_rejected() {
        assert_eq!(
            set_date_time(0, 2_000_000).unwrap_err().code,
            ttrpc::Code::INVALID_ARGUMENT
        );
    }
}
