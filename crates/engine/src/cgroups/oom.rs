//! OOM-kill notifications.
//!
//! v1: an eventfd registered on `memory.oom_control` through `cgroup.event_control`; the kernel
//! signals it when the cgroup hits OOM and when the cgroup is removed.
//! v2: inotify on `memory.events` and `cgroup.events`, which the kernel "modifies" when their
//! counters change.
//!
//! [`OomWatcher::wait`] blocks on one cgroup. [`OomMonitor`] is the scalable form: one thread
//! waits (epoll) on the descriptors of every registered cgroup, so the number of threads does not
//! grow with the number of containers, and unregistering never waits for anything.

use super::{flat_keyed, read_string, write_file};
use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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

    /// Non-blocking form of [`Self::wait`] for a multiplexer: consumes pending notifications and
    /// tells what they mean. Unlike `wait`, an empty v2 cgroup is not an end (a later exec can
    /// run into an OOM again); only a removed cgroup is.
    pub fn check(&mut self) -> Check {
        let notified = match self.drain() {
            Ok(n) => n,
            Err(_) => return Check::Gone,
        };
        let events_file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        if !self.dir.join(events_file).exists() {
            return Check::Gone;
        }
        let count = read_oom_kill_count(&self.dir, self.v2);
        if count > self.seen {
            self.seen = count;
            return Check::Oom;
        }
        if !self.v2 && notified {
            let ctl =
                flat_keyed(&read_string(&self.dir.join("memory.oom_control")).unwrap_or_default());
            if ctl.get("oom_kill_disable") == Some(&1) && ctl.get("under_oom") == Some(&1) {
                return Check::Oom;
            }
            // The notification precedes the kill: look at the counter again shortly.
            return Check::Recheck;
        }
        Check::Nothing
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

/// What [`OomWatcher::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// A new OOM kill (or, with the OOM killer disabled, an OOM).
    Oom,
    /// Nothing new.
    Nothing,
    /// v1: notified but the kill counter has not moved yet; check again in a moment.
    Recheck,
    /// The cgroup is gone: the watcher has nothing more to report.
    Gone,
}

/// How often a v1 cgroup whose notification came before its kill counter moved is re-read.
const RECHECK_EVERY: Duration = Duration::from_millis(20);

struct Registered {
    key: String,
    watcher: OomWatcher,
    /// Until when the counter is re-read after a v1 notification.
    recheck_until: Option<Instant>,
}

struct MonitorState {
    entries: HashMap<u64, Registered>,
    next_token: u64,
}

/// One thread watching the OOM events of many cgroups (epoll over their eventfd / inotify
/// descriptors). Events are delivered to the callback given at creation, with the key of the
/// registration. The thread is started by the first registration and lives as long as the
/// monitor.
pub struct OomMonitor {
    epoll: Arc<OwnedFd>,
    state: Arc<Mutex<MonitorState>>,
    on_event: Arc<dyn Fn(&str) + Send + Sync>,
    started: std::sync::Once,
}

impl std::fmt::Debug for OomMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OomMonitor").finish_non_exhaustive()
    }
}

/// Handle of one registration; pass it to [`OomMonitor::unregister`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OomToken(u64);

impl OomMonitor {
    /// A monitor calling `on_event(key)` for every OOM kill of a registered cgroup. The callback
    /// runs on the monitor thread and must not block.
    pub fn new(on_event: impl Fn(&str) + Send + Sync + 'static) -> Result<OomMonitor> {
        // SAFETY: plain syscall; the result is checked before use.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            bail!(
                "cannot create an epoll instance: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(OomMonitor {
            // SAFETY: `raw` is a fresh descriptor owned by nobody else.
            epoll: Arc::new(unsafe { OwnedFd::from_raw_fd(raw) }),
            state: Arc::new(Mutex::new(MonitorState {
                entries: HashMap::new(),
                next_token: 1,
            })),
            on_event: Arc::new(on_event),
            started: std::sync::Once::new(),
        })
    }

    /// Starts watching `watcher`, reporting its events under `key`.
    pub fn register(&self, key: &str, watcher: OomWatcher) -> Result<OomToken> {
        self.start_thread()?;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let token = st.next_token;
        st.next_token += 1;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: valid epoll and watcher descriptors, valid event pointer.
        let rc = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                watcher.as_raw_fd(),
                &mut ev,
            )
        };
        if rc < 0 {
            bail!(
                "cannot watch OOM events of {key}: {}",
                std::io::Error::last_os_error()
            );
        }
        st.entries.insert(
            token,
            Registered {
                key: key.to_string(),
                watcher,
                recheck_until: None,
            },
        );
        Ok(OomToken(token))
    }

    /// Stops watching (closes the watcher's descriptors). Never waits.
    pub fn unregister(&self, token: OomToken) {
        let removed = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .remove(&token.0);
        if let Some(r) = removed {
            // SAFETY: valid descriptors; closing the watcher afterwards would remove it anyway.
            unsafe {
                libc::epoll_ctl(
                    self.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    r.watcher.as_raw_fd(),
                    std::ptr::null_mut(),
                )
            };
        }
    }

    /// Number of cgroups watched.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .len()
    }

    /// True when nothing is watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn start_thread(&self) -> Result<()> {
        let mut result = Ok(());
        self.started.call_once(|| {
            let epoll = self.epoll.clone();
            let state = self.state.clone();
            let on_event = self.on_event.clone();
            let spawned = std::thread::Builder::new()
                .name("oom-watch".into())
                .stack_size(64 << 10)
                .spawn(move || monitor_loop(&epoll, &state, &*on_event));
            if let Err(e) = spawned {
                result = Err(anyhow!("cannot start the OOM watcher thread: {e}"));
            }
        });
        result
    }
}

fn monitor_loop(epoll: &OwnedFd, state: &Mutex<MonitorState>, on_event: &(dyn Fn(&str) + Sync)) {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 32];
    loop {
        let timeout = {
            let st = state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if st
                .entries
                .values()
                .any(|r| r.recheck_until.is_some_and(|t| t > now))
            {
                RECHECK_EVERY.as_millis() as i32
            } else {
                -1
            }
        };
        // SAFETY: valid epoll fd and event buffer of the given length.
        let n = unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout,
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("the OOM watcher stops: {err}");
            return;
        }
        let ready: Vec<u64> = events[..n as usize].iter().map(|e| e.u64).collect();
        let mut fired: Vec<String> = Vec::new();
        {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let mut gone = Vec::new();
            for (token, r) in st.entries.iter_mut() {
                let rechecking = r.recheck_until.is_some_and(|t| t > now);
                if !ready.contains(token) && !rechecking {
                    continue;
                }
                match r.watcher.check() {
                    Check::Oom => {
                        r.recheck_until = None;
                        fired.push(r.key.clone());
                    }
                    Check::Recheck => {
                        if r.recheck_until.is_none() {
                            r.recheck_until = Some(now + V1_KILL_GRACE);
                        }
                    }
                    Check::Nothing => {
                        if !rechecking {
                            r.recheck_until = None;
                        }
                    }
                    Check::Gone => gone.push(*token),
                }
            }
            for token in gone {
                if let Some(r) = st.entries.remove(&token) {
                    // SAFETY: valid descriptors.
                    unsafe {
                        libc::epoll_ctl(
                            epoll.as_raw_fd(),
                            libc::EPOLL_CTL_DEL,
                            r.watcher.as_raw_fd(),
                            std::ptr::null_mut(),
                        )
                    };
                }
            }
        }
        for key in fired {
            on_event(&key);
        }
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
