//! OOM-kill notifications.
//!
//! v1: an eventfd registered on `memory.oom_control` through `cgroup.event_control`; the kernel
//! signals it when the cgroup hits OOM and when the cgroup is removed.
//! v2: inotify on `memory.events` and `cgroup.events`, which the kernel "modifies" when their
//! counters change.

use super::{flat_keyed, read_string, write_file};
use anyhow::{anyhow, bail, Result};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long after a v1 notification the kill counter may lag behind it.
const V1_KILL_GRACE: Duration = Duration::from_secs(1);

/// Watches one cgroup for OOM kills. [`OomWatcher::wait`] blocks; async callers can poll the
/// raw fd for readability, then call `wait` (it may still block briefly on v1, so call it from a
/// blocking-capable thread).
#[derive(Debug)]
pub struct OomWatcher {
    fd: OwnedFd,
    dir: PathBuf,
    v2: bool,
    /// Kill count already reported.
    seen: u64,
    /// v1: keeps the watched `memory.oom_control` open for the registration's lifetime.
    _oom_control: Option<File>,
}

impl OomWatcher {
    pub(crate) fn v1(dir: &Path) -> Result<OomWatcher> {
        let ctl_path = dir.join("memory.oom_control");
        let ctl = File::open(&ctl_path)
            .map_err(|e| anyhow!("cannot open {}: {e}", ctl_path.display()))?;
        // SAFETY: plain syscall; the result is checked before use.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            bail!(
                "cannot create an eventfd: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        write_file(
            &dir.join("cgroup.event_control"),
            &format!("{} {}", fd.as_raw_fd(), ctl.as_raw_fd()),
        )?;
        Ok(OomWatcher {
            fd,
            dir: dir.to_path_buf(),
            v2: false,
            seen: read_oom_kill_count(dir, false),
            _oom_control: Some(ctl),
        })
    }

    pub(crate) fn v2(dir: &Path) -> Result<OomWatcher> {
        let events = dir.join("memory.events");
        if !events.exists() {
            bail!("the memory controller is not enabled for {}", dir.display());
        }
        // SAFETY: plain syscall; the result is checked before use.
        let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if raw < 0 {
            bail!(
                "cannot create an inotify instance: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        for file in [events, dir.join("cgroup.events")] {
            let c = std::ffi::CString::new(file.as_os_str().as_encoded_bytes())?;
            // SAFETY: valid fd and NUL-terminated path.
            if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_MODIFY) } < 0 {
                bail!(
                    "cannot watch {}: {}",
                    file.display(),
                    std::io::Error::last_os_error()
                );
            }
        }
        Ok(OomWatcher {
            fd,
            dir: dir.to_path_buf(),
            v2: true,
            seen: read_oom_kill_count(dir, true),
            _oom_control: None,
        })
    }

    /// Blocks until a new OOM kill happened in the cgroup (`true`), or until the cgroup was
    /// removed or (v2) has no process left (`false`). Each kill is reported once; several kills
    /// between two calls are reported as one.
    pub fn wait(&mut self) -> Result<bool> {
        let mut grace_until: Option<Instant> = None;
        loop {
            let notified = self.drain()?;
            let events_file = if self.v2 {
                "memory.events"
            } else {
                "memory.oom_control"
            };
            if !self.dir.join(events_file).exists() {
                return Ok(false);
            }
            let count = read_oom_kill_count(&self.dir, self.v2);
            if count > self.seen {
                self.seen = count;
                return Ok(true);
            }
            if self.v2 {
                let ev =
                    flat_keyed(&read_string(&self.dir.join("cgroup.events")).unwrap_or_default());
                if ev.get("populated") == Some(&0) {
                    return Ok(false);
                }
            } else if notified {
                let ctl = flat_keyed(
                    &read_string(&self.dir.join("memory.oom_control")).unwrap_or_default(),
                );
                // With the OOM killer disabled nothing is killed: the OOM itself is the event.
                if ctl.get("oom_kill_disable") == Some(&1) && ctl.get("under_oom") == Some(&1) {
                    return Ok(true);
                }
                // The notification precedes the kill: give the counter a moment to move.
                grace_until = Some(Instant::now() + V1_KILL_GRACE);
            }
            let timeout = match grace_until {
                Some(t) if Instant::now() < t => 20,
                _ => -1,
            };
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, timeout) };
            if r < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    bail!("cannot wait for OOM events: {err}");
                }
            }
        }
    }

    /// Reads everything pending on the fd; true if there was something.
    fn drain(&self) -> Result<bool> {
        let mut buf = [0u8; 4096];
        let mut got = false;
        loop {
            // SAFETY: reading into a local buffer of the given size.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                got = true;
                continue;
            }
            if n == 0 {
                return Ok(got);
            }
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EAGAIN) => Ok(got),
                Some(libc::EINTR) => continue,
                _ => Err(anyhow!("cannot read OOM notifications: {err}")),
            };
        }
    }

    /// OOM kills in the cgroup so far (0 when the cgroup is gone).
    pub fn oom_kill_count(&self) -> u64 {
        read_oom_kill_count(&self.dir, self.v2)
    }
}

impl AsRawFd for OomWatcher {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// `oom_kill` counter of v1 `memory.oom_control` or v2 `memory.events`; 0 when unreadable.
pub(crate) fn read_oom_kill_count(dir: &Path, v2: bool) -> u64 {
    let file = if v2 {
        "memory.events"
    } else {
        "memory.oom_control"
    };
    read_string(&dir.join(file))
        .map(|s| flat_keyed(&s).get("oom_kill").copied().unwrap_or(0))
        .unwrap_or(0)
}
