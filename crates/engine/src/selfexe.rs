//! The setup program is executed from a sealed in-memory copy, never from its file.
//!
//! A container process can reach the program that set it up: through `/proc/<pid>/exe` of a setup
//! process, or by making the engine exec a script whose interpreter is `/proc/self/exe`
//! (CVE-2019-5736). Run from the agent's own file, that would let the container re-execute the
//! agent binary and, once it is not busy, overwrite it. So the program is copied once into a
//! memfd sealed against every change (`F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL`)
//! and setup processes are executed through `/proc/self/fd/<memfd>`: their `/proc/<pid>/exe` is
//! then the sealed copy, which nobody can write, and no path leads back to the agent's file.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use crate::{Error, Result};

/// Sealed copies, by the path they were made from; they live as long as the process.
static COPIES: LazyLock<Mutex<HashMap<PathBuf, OwnedFd>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Largest program copied (a debug build of the agent is ~200 MiB).
const MAX_SIZE: u64 = 1 << 30;

/// The path to execute instead of `exe`: `/proc/self/fd/<n>` of its sealed copy (made on first
/// use). The descriptor is close-on-exec and numbered 10 or above, so the stdio and sync-socket
/// set-up of a child (fds 0-3) cannot replace it before the exec.
pub(crate) fn sealed_path(exe: &Path) -> Result<PathBuf> {
    let mut copies = COPIES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(fd) = copies.get(exe) {
        return Ok(PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())));
    }
    let fd = sealed_copy(exe).map_err(|e| {
        Error::Other(format!(
            "cannot make a sealed copy of {}: {e}",
            exe.display()
        ))
    })?;
    let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    copies.insert(exe.to_path_buf(), fd);
    Ok(path)
}

fn sealed_copy(exe: &Path) -> std::io::Result<OwnedFd> {
    let mut src = File::open(exe)?;
    let size = src.metadata()?.len();
    if size > MAX_SIZE {
        return Err(std::io::Error::other(format!("{size} bytes is too large")));
    }
    // SAFETY: memfd_create with a NUL-terminated name and flags.
    let raw = unsafe {
        libc::memfd_create(
            c"kata-agent".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nobody else owns.
    let memfd = unsafe { OwnedFd::from_raw_fd(raw) };
    {
        let mut dst = File::from(memfd.try_clone()?);
        let mut buf = vec![0u8; 1 << 20];
        let mut copied = 0u64;
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            copied += n as u64;
            if copied > MAX_SIZE {
                return Err(std::io::Error::other("the program grew while being copied"));
            }
            dst.write_all(&buf[..n])?;
        }
    }
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on our descriptor with integer arguments.
    if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Move it out of the range a child rewires before exec.
    let high = nix::fcntl::fcntl(memfd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))?;
    // SAFETY: fcntl returned a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(high) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_is_sealed_and_executable() {
        let path = sealed_path(Path::new("/bin/true")).unwrap();
        assert_eq!(sealed_path(Path::new("/bin/true")).unwrap(), path);
        // Writing through the magic link is refused by the seals.
        let written = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"x"));
        assert!(written.is_err(), "a sealed copy was written");
        let status = std::process::Command::new(&path).status().unwrap();
        assert!(status.success());
    }
}
