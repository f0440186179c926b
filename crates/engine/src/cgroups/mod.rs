//! Cgroup manager for containers: creation, resource limits, freezer, stats, OOM events and removal.
//!
//! Works on cgroup v1 (one hierarchy per controller under `v1_root`) and cgroup v2 (one unified
//! hierarchy under `v2_root`) with plain file I/O, so the roots can point anywhere (tests, hybrid
//! layouts such as an empty cgroup2 mount at `/sys/fs/cgroup/unified`).
//!
//! Differences from the upstream agent: pids limits are applied, `-1` means "unlimited" where the
//! OCI spec says so, device rules are honoured on v1, and a missing controller gives an error
//! instead of a panic. cgroup v2 has no device controller: device rules are not enforced there.

mod devices;
mod oom;
mod stats;
mod v1;
mod v2;

pub use oom::{Check as OomCheck, OomMonitor, OomToken, OomWatcher};
pub use stats::{
    BlkioStats, BlkioStatsEntry, CpuStats, CpuUsage, HugetlbStats, MemoryData, MemoryStats,
    PidsStats, Stats, ThrottlingData,
};

use anyhow::{anyhow, bail, Context, Result};
use oci_spec::runtime::LinuxResources;
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// v1 controllers (and the named systemd hierarchy) a container cgroup is created in, when mounted.
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "systemd",
];

/// How long freeze/thaw waits for the requested state.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the cgroup hierarchies live and which layout to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupConfig {
    /// Use the unified (v2) hierarchy under `v2_root` instead of the v1 controllers.
    pub v2: bool,
    /// Directory holding one mount per v1 controller (`<v1_root>/memory`, ...).
    pub v1_root: PathBuf,
    /// Mount point of the cgroup2 hierarchy.
    pub v2_root: PathBuf,
}

impl Default for CgroupConfig {
    fn default() -> Self {
        CgroupConfig {
            v2: false,
            v1_root: PathBuf::from("/sys/fs/cgroup"),
            v2_root: PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

impl CgroupConfig {
    /// Default roots; v2 when `unified_requested` and the v2 root is really a cgroup2 mount.
    pub fn detect(unified_requested: bool) -> CgroupConfig {
        let mut cfg = CgroupConfig::default();
        cfg.v2 = unified_requested && is_cgroup2_mount(&cfg.v2_root);
        cfg
    }
}

/// True when `path` is the root of (or inside) a cgroup2 filesystem.
pub fn is_cgroup2_mount(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|st| st.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// Layout-specific location of one cgroup.
#[derive(Debug, Clone)]
enum Layout {
    /// (controller name, mount root) for every mounted v1 controller; the cgroup dir is
    /// `<mount root>/<rel>`. Co-mounted controllers share a mount root.
    V1(Vec<(&'static str, PathBuf)>),
    /// The cgroup2 mount root.
    V2(PathBuf),
}

/// One cgroup (all of its v1 controller directories, or its v2 directory).
#[derive(Debug, Clone)]
pub struct Cgroup {
    /// Normalized path, always starting with `/`.
    path: String,
    /// The same path without the leading `/`, for joining under a root.
    rel: PathBuf,
    layout: Layout,
}

impl Cgroup {
    /// Creates the cgroup (every missing level, in every mounted v1 hierarchy or in the v2 tree),
    /// then applies `resources` with create semantics. On failure whatever was created is removed.
    pub fn create(
        cfg: &CgroupConfig,
        path: &str,
        resources: Option<&LinuxResources>,
    ) -> Result<Cgroup> {
        let cg = Cgroup::new(cfg, path)?;
        let mut created: Vec<PathBuf> = Vec::new();
        let result = cg.make_dirs(&mut created).and_then(|_| match resources {
            Some(res) => cg.apply(res, false),
            None => Ok(()),
        });
        if let Err(e) = result {
            // Deepest first, so that parents are empty when their turn comes.
            for dir in created.iter().rev() {
                if let Err(err) = remove_dir_retry(dir) {
                    tracing::warn!("cannot remove cgroup {}: {err:#}", dir.display());
                }
            }
            return Err(e.context(format!("cannot create cgroup {}", cg.path)));
        }
        Ok(cg)
    }

    /// Opens an existing cgroup.
    pub fn open(cfg: &CgroupConfig, path: &str) -> Result<Cgroup> {
        let cg = Cgroup::new(cfg, path)?;
        if !cg.dirs().iter().any(|d| d.is_dir()) {
            bail!("cgroup {} does not exist", cg.path);
        }
        Ok(cg)
    }

    fn new(cfg: &CgroupConfig, path: &str) -> Result<Cgroup> {
        let rel = normalize(path)?;
        let layout = if cfg.v2 {
            if !cfg.v2_root.join("cgroup.procs").exists() {
                bail!(
                    "{} is not a cgroup v2 hierarchy (no cgroup.procs)",
                    cfg.v2_root.display()
                );
            }
            Layout::V2(cfg.v2_root.clone())
        } else {
            let mounts = v1_mounts(&cfg.v1_root);
            if mounts.is_empty() {
                bail!(
                    "no cgroup v1 controller is mounted under {}",
                    cfg.v1_root.display()
                );
            }
            Layout::V1(mounts)
        };
        Ok(Cgroup {
            path: format!("/{}", rel.display()),
            rel,
            layout,
        })
    }

    /// The cgroup path relative to the roots, normalized to start with `/` (e.g. `/kubepods/abc`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// True when this cgroup lives in the unified (v2) hierarchy.
    pub fn is_v2(&self) -> bool {
        matches!(self.layout, Layout::V2(_))
    }

    /// The distinct directories of this cgroup (one per v1 mount, or the v2 directory).
    fn dirs(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V2(root) => vec![root.join(&self.rel)],
            Layout::V1(mounts) => {
                let mut out: Vec<PathBuf> = Vec::new();
                for (_, root) in mounts {
                    let d = root.join(&self.rel);
                    if !out.contains(&d) {
                        out.push(d);
                    }
                }
                out
            }
        }
    }

    /// Mount root of a v1 controller, if mounted (always None on v2).
    fn v1_root(&self, controller: &str) -> Option<&Path> {
        match &self.layout {
            Layout::V1(mounts) => mounts
                .iter()
                .find(|(name, _)| *name == controller)
                .map(|(_, root)| root.as_path()),
            Layout::V2(_) => None,
        }
    }

    /// Directory of this cgroup in the hierarchy of a v1 controller, if that controller is mounted.
    fn v1_dir(&self, controller: &str) -> Option<PathBuf> {
        self.v1_root(controller).map(|r| r.join(&self.rel))
    }

    /// Directory of this cgroup in a v2 layout.
    fn v2_dir(&self) -> Option<PathBuf> {
        match &self.layout {
            Layout::V2(root) => Some(root.join(&self.rel)),
            Layout::V1(_) => None,
        }
    }

    /// Creates all missing levels, recording each new directory in `created` (parents first).
    fn make_dirs(&self, created: &mut Vec<PathBuf>) -> Result<()> {
        match &self.layout {
            Layout::V2(root) => {
                let mut dir = root.clone();
                for comp in self.rel.components() {
                    v2::enable_controllers(&dir);
                    dir.push(comp);
                    mkdir_new(&dir, created)?;
                }
            }
            Layout::V1(_) => {
                for root in self.v1_mount_roots() {
                    let is_cpuset = self.v1_root("cpuset") == Some(root.as_path());
                    let mut dir = root.clone();
                    for comp in self.rel.components() {
                        dir.push(comp);
                        if mkdir_new(&dir, created)? && is_cpuset {
                            v1::init_cpuset(&dir)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Distinct v1 mount roots.
    fn v1_mount_roots(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        if let Layout::V1(mounts) = &self.layout {
            for (_, root) in mounts {
                if !out.contains(root) {
                    out.push(root.clone());
                }
            }
        }
        out
    }

    /// Moves a process into this cgroup (every v1 hierarchy; on v2 into `<dir>/init` when that
    /// delegation sub-cgroup exists).
    pub fn add_pid(&self, pid: i32) -> Result<()> {
        if pid <= 0 {
            bail!("invalid pid {pid}");
        }
        let value = pid.to_string();
        match &self.layout {
            Layout::V2(root) => {
                let dir = root.join(&self.rel);
                let init = dir.join("init");
                let target = if init.is_dir() { init } else { dir };
                write_file(&target.join("cgroup.procs"), &value)
                    .with_context(|| format!("cannot add process {pid} to cgroup {}", self.path))
            }
            Layout::V1(_) => {
                for dir in self.dirs() {
                    write_file(&dir.join("cgroup.procs"), &value).with_context(|| {
                        format!("cannot add process {pid} to cgroup {}", self.path)
                    })?;
                }
                Ok(())
            }
        }
    }

    /// Applies resource limits. `update` is false at creation and true for UpdateContainer:
    /// creation also initializes the device whitelist and kernel-memory accounting (v1).
    pub fn apply(&self, res: &LinuxResources, update: bool) -> Result<()> {
        match &self.layout {
            Layout::V1(_) => v1::apply(self, res, update),
            Layout::V2(_) => v2::apply(self, res, update),
        }
        .with_context(|| format!("cannot set resources of cgroup {}", self.path))
    }

    /// Freezes every process of the cgroup and waits until the kernel reports it frozen.
    pub fn freeze(&self) -> Result<()> {
        self.set_frozen(true)
            .with_context(|| format!("cannot freeze cgroup {}", self.path))
    }

    /// Thaws the cgroup and waits until the kernel reports it thawed.
    pub fn thaw(&self) -> Result<()> {
        self.set_frozen(false)
            .with_context(|| format!("cannot thaw cgroup {}", self.path))
    }

    fn set_frozen(&self, frozen: bool) -> Result<()> {
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        match &self.layout {
            Layout::V1(_) => {
                let dir = self
                    .v1_dir("freezer")
                    .ok_or_else(|| anyhow!("the freezer controller is not mounted"))?;
                let state = dir.join("freezer.state");
                let want = if frozen { "FROZEN" } else { "THAWED" };
                let mut delay = Duration::from_millis(1);
                loop {
                    // Writing FROZEN again nudges a freezer stuck in FREEZING.
                    write_file(&state, want)?;
                    if read_trimmed(&state)? == want {
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        if frozen {
                            let _ = write_file(&state, "THAWED");
                        }
                        bail!("the freezer did not reach {want} within {FREEZE_TIMEOUT:?}");
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(50));
                }
            }
            Layout::V2(root) => {
                let dir = root.join(&self.rel);
                let file = dir.join("cgroup.freeze");
                if !file.exists() {
                    bail!("the kernel does not support the cgroup v2 freezer (no cgroup.freeze)");
                }
                write_file(&file, if frozen { "1" } else { "0" })?;
                let mut delay = Duration::from_millis(1);
                loop {
                    if v2_frozen(&dir)? == frozen {
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        if frozen {
                            let _ = write_file(&file, "0");
                        }
                        bail!("the cgroup did not reach the requested freezer state within {FREEZE_TIMEOUT:?}");
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(50));
                }
            }
        }
    }

    /// True when the cgroup is frozen (v1 `freezer.state` FROZEN, v2 `cgroup.events` frozen 1).
    pub fn is_frozen(&self) -> bool {
        match &self.layout {
            Layout::V1(_) => self
                .v1_dir("freezer")
                .and_then(|d| read_trimmed(&d.join("freezer.state")).ok())
                .is_some_and(|s| s == "FROZEN"),
            Layout::V2(root) => v2_frozen(&root.join(&self.rel)).unwrap_or(false),
        }
    }

    /// Kills every process of the cgroup and its descendants at once through `cgroup.kill`
    /// (cgroup v2, Linux 5.14+). False when that file is not available (v1, older kernels).
    pub fn kill_all(&self) -> bool {
        match &self.layout {
            Layout::V2(root) => {
                let file = root.join(&self.rel).join("cgroup.kill");
                file.exists() && write_file(&file, "1").is_ok()
            }
            Layout::V1(_) => false,
        }
    }

    /// Whether any process is left in the cgroup or its descendants. On v2 this is the
    /// `populated` flag of `cgroup.events` (one small read); on v1 the process lists.
    pub fn is_populated(&self) -> Result<bool> {
        match &self.layout {
            Layout::V2(root) => {
                let events = match read_string(&root.join(&self.rel).join("cgroup.events")) {
                    Ok(s) => s,
                    Err(_) if !root.join(&self.rel).exists() => return Ok(false),
                    Err(e) => return Err(e),
                };
                Ok(flat_keyed(&events).get("populated").copied() != Some(0))
            }
            Layout::V1(_) => Ok(!self.pids()?.is_empty()),
        }
    }

    /// Waits at most `timeout` for the cgroup to become empty: on v2 with poll(2) on
    /// `cgroup.events` (the kernel notifies changes of `populated`), on v1 by re-reading the
    /// process list with a short backoff. Returns whether it is empty.
    pub fn wait_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let events_file = self.v2_dir().map(|d| d.join("cgroup.events"));
        let events = events_file.as_ref().and_then(|f| fs::File::open(f).ok());
        let mut delay = Duration::from_micros(100);
        loop {
            if let Some(f) = &events {
                // Reading through the open file also re-arms its notification.
                use std::io::{Read, Seek};
                let mut buf = String::new();
                let mut f = f;
                if f.seek(std::io::SeekFrom::Start(0)).is_ok() && f.read_to_string(&mut buf).is_ok()
                {
                    if flat_keyed(&buf).get("populated").copied() == Some(0) {
                        return true;
                    }
                } else if !self.is_populated().unwrap_or(false) {
                    return true;
                }
            } else if !self.is_populated().unwrap_or(false) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let left = deadline - now;
            match &events {
                Some(f) => {
                    use std::os::fd::AsRawFd;
                    let mut pfd = libc::pollfd {
                        fd: f.as_raw_fd(),
                        events: libc::POLLPRI,
                        revents: 0,
                    };
                    let ms = left.as_millis().clamp(1, 100) as i32;
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut pfd, 1, ms) };
                }
                None => {
                    std::thread::sleep(delay.min(left));
                    delay = (delay * 2).min(Duration::from_millis(10));
                }
            }
        }
    }

    /// Every process in the cgroup and its descendants, sorted, without duplicates.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let dir = match &self.layout {
            Layout::V2(root) => root.join(&self.rel),
            Layout::V1(mounts) => ["pids", "freezer", "memory", "cpu", "devices"]
                .iter()
                .find_map(|c| self.v1_dir(c))
                .unwrap_or_else(|| mounts[0].1.join(&self.rel)),
        };
        let mut pids = Vec::new();
        collect_pids(&dir, &mut pids)
            .with_context(|| format!("cannot list the processes of cgroup {}", self.path))?;
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Usage statistics; a sub-message whose controller is missing stays `None`.
    pub fn stats(&self) -> Result<Stats> {
        match &self.layout {
            Layout::V1(_) => v1::stats(self),
            Layout::V2(root) => v2::stats(&root.join(&self.rel)),
        }
        .with_context(|| format!("cannot read the statistics of cgroup {}", self.path))
    }

    /// Removes the cgroup directories (descendants first). Busy directories are retried for a
    /// short while; directories that are already gone count as removed.
    pub fn destroy(&self) -> Result<()> {
        let mut first_err = None;
        for dir in self.dirs() {
            if let Err(e) = remove_tree(&dir) {
                tracing::warn!("{e:#}");
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e.context(format!("cannot remove cgroup {}", self.path))),
            None => Ok(()),
        }
    }

    /// Starts watching for OOM kills in this cgroup (needs the memory controller).
    pub fn oom_watcher(&self) -> Result<OomWatcher> {
        match &self.layout {
            Layout::V1(_) => {
                let dir = self
                    .v1_dir("memory")
                    .ok_or_else(|| anyhow!("the memory controller is not mounted"))?;
                OomWatcher::v1(&dir)
            }
            Layout::V2(root) => OomWatcher::v2(&root.join(&self.rel)),
        }
        .with_context(|| format!("cannot watch cgroup {} for OOM events", self.path))
    }

    /// Number of processes killed by the OOM killer in this cgroup so far (0 if unknown).
    pub fn oom_kill_count(&self) -> u64 {
        self.memory_dir()
            .map(|d| oom::read_oom_kill_count(&d, self.is_v2()))
            .unwrap_or(0)
    }

    /// Writes `online_cpus` to `cpuset.cpus` of every ancestor from just below the root down to this
    /// cgroup, then `own_cpus` (if any) to this cgroup. Used after CPU hotplug.
    pub fn widen_cpuset(&self, online_cpus: &str, own_cpus: Option<&str>) -> Result<()> {
        let root = match &self.layout {
            Layout::V1(_) => self
                .v1_root("cpuset")
                .ok_or_else(|| anyhow!("the cpuset controller is not mounted"))?
                .to_path_buf(),
            Layout::V2(root) => root.clone(),
        };
        let mut dir = root;
        for comp in self.rel.components() {
            dir.push(comp);
            let file = dir.join("cpuset.cpus");
            if !file.exists() {
                // v2 levels without the cpuset controller inherit from their parent.
                if self.is_v2() {
                    continue;
                }
                bail!("{} does not exist", file.display());
            }
            write_file(&file, online_cpus)?;
        }
        if let Some(own) = own_cpus.filter(|s| !s.is_empty()) {
            write_file(&dir.join("cpuset.cpus"), own)?;
        }
        Ok(())
    }

    /// Directory holding the memory controller files of this cgroup (v1 memory hierarchy, or the
    /// v2 directory); None when the v1 memory controller is not mounted.
    pub fn memory_dir(&self) -> Option<PathBuf> {
        match &self.layout {
            Layout::V1(_) => self.v1_dir("memory"),
            Layout::V2(root) => Some(root.join(&self.rel)),
        }
    }
}

/// Turns `/a/b`, `a/b/` or `a//b` into `a/b`; rejects empty paths and `..`.
fn normalize(path: &str) -> Result<PathBuf> {
    let mut rel = PathBuf::new();
    for comp in Path::new(path).components() {
        match comp {
            Component::Normal(c) => rel.push(c),
            Component::RootDir | Component::CurDir => {}
            _ => bail!("invalid cgroup path {path:?}: it must not contain \"..\""),
        }
    }
    if rel.as_os_str().is_empty() {
        bail!("invalid cgroup path {path:?}: the root cgroup cannot be used for a container");
    }
    Ok(rel)
}

/// Mounted v1 controllers under `root`: `<root>/<name>` (possibly a symlink) or a co-mounted
/// `<root>/<a,b>` directory, recognised by its `cgroup.procs` file.
fn v1_mounts(root: &Path) -> Vec<(&'static str, PathBuf)> {
    let mut out: Vec<(&'static str, PathBuf)> = Vec::new();
    let mut add = |name: &'static str, dir: PathBuf| {
        if !out.iter().any(|(n, _)| *n == name) && dir.join("cgroup.procs").is_file() {
            // Resolve symlinks (cpu -> cpu,cpuacct) so co-mounted controllers share one root.
            let dir = fs::canonicalize(&dir).unwrap_or(dir);
            out.push((name, dir));
        }
    };
    for &name in V1_CONTROLLERS {
        add(name, root.join(name));
    }
    if let Ok(entries) = fs::read_dir(root) {
        for entry in entries.flatten() {
            let fname = entry.file_name();
            let fname = fname.to_string_lossy();
            if !fname.contains(',') {
                continue;
            }
            for part in fname.split(',') {
                let part = part.strip_prefix("name=").unwrap_or(part);
                if let Some(&name) = V1_CONTROLLERS.iter().find(|c| **c == part) {
                    add(name, entry.path());
                }
            }
        }
    }
    out
}

/// mkdir that reports whether the directory was new (and records it).
fn mkdir_new(dir: &Path, created: &mut Vec<PathBuf>) -> Result<bool> {
    match fs::create_dir(dir) {
        Ok(()) => {
            created.push(dir.to_path_buf());
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(anyhow!("cannot create {}: {e}", dir.display())),
    }
}

/// rmdir with a short retry on EBUSY (processes that just exited may still be accounted).
fn remove_dir_retry(dir: &Path) -> Result<()> {
    let mut delay = Duration::from_millis(5);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(100));
            }
            Err(e) => bail!("cannot remove {}: {e}", dir.display()),
        }
    }
}

/// Removes `dir` and every sub-cgroup below it, deepest first.
fn remove_tree(dir: &Path) -> Result<()> {
    // Common case first: a leaf cgroup whose processes are gone goes with one rmdir.
    match fs::remove_dir(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    remove_tree(&entry.path())?;
                }
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => bail!("cannot read {}: {e}", dir.display()),
    }
    remove_dir_retry(dir)
}

/// Appends the pids of `dir/cgroup.procs` and of every sub-cgroup.
fn collect_pids(dir: &Path, out: &mut Vec<i32>) -> Result<()> {
    let procs = read_string(&dir.join("cgroup.procs"))?;
    out.extend(
        procs
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok()),
    );
    for entry in fs::read_dir(dir)
        .map_err(|e| anyhow!("cannot read {}: {e}", dir.display()))?
        .flatten()
    {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect_pids(&entry.path(), out)?;
        }
    }
    Ok(())
}

/// `frozen` flag of a v2 cgroup from `cgroup.events`.
fn v2_frozen(dir: &Path) -> Result<bool> {
    let events = read_string(&dir.join("cgroup.events"))?;
    Ok(flat_keyed(&events).get("frozen").copied() == Some(1))
}

/// Writes `value` to an existing cgroup file (never creates it; truncation is a no-op on cgroupfs
/// but keeps plain files in tests exact).
pub(crate) fn write_file(path: &Path, value: &str) -> Result<()> {
    tracing::debug!(subsystem = "cgroups", file = %path.display(), value, "cgroup write");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| anyhow!("cannot open {}: {e}", path.display()))?;
    f.write_all(value.as_bytes())
        .map_err(|e| anyhow!("cannot write {value:?} to {}: {e}", path.display()))
}

/// Whole content of a file.
pub(crate) fn read_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))
}

/// Content of a file without surrounding whitespace.
pub(crate) fn read_trimmed(path: &Path) -> Result<String> {
    Ok(read_string(path)?.trim().to_string())
}

/// A single unsigned number; `max` (v2) reads as `u64::MAX`.
pub(crate) fn read_u64(path: &Path) -> Result<u64> {
    let s = read_trimmed(path)?;
    parse_u64(&s).ok_or_else(|| anyhow!("{} does not hold a number: {s:?}", path.display()))
}

/// Parses a cgroup number; `max` is `u64::MAX`, negative v1 values (-1) are also "unlimited".
pub(crate) fn parse_u64(s: &str) -> Option<u64> {
    match s {
        "max" => Some(u64::MAX),
        _ => s
            .parse::<u64>()
            .ok()
            .or_else(|| s.parse::<i64>().ok().map(|_| u64::MAX)),
    }
}

/// Parses `key value` lines (memory.stat, cpu.stat, cgroup.events, ...); bad lines are skipped.
pub(crate) fn flat_keyed(content: &str) -> std::collections::HashMap<String, u64> {
    content
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = parse_u64(it.next()?)?;
            Some((k.to_string(), v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize("/abc").unwrap(), PathBuf::from("abc"));
        assert_eq!(
            normalize("kubepods/pod1/abc/").unwrap(),
            PathBuf::from("kubepods/pod1/abc")
        );
        assert_eq!(normalize("//a//./b").unwrap(), PathBuf::from("a/b"));
        assert!(normalize("/").is_err());
        assert!(normalize("").is_err());
        assert!(normalize("/a/../b").is_err());
    }

    #[test]
    fn parse_numbers() {
        assert_eq!(parse_u64("12"), Some(12));
        assert_eq!(parse_u64("max"), Some(u64::MAX));
        assert_eq!(parse_u64("-1"), Some(u64::MAX));
        assert_eq!(parse_u64("x"), None);
        let kv = flat_keyed("populated 1\nfrozen 0\nbad\n");
        assert_eq!(kv.get("populated"), Some(&1));
        assert_eq!(kv.get("frozen"), Some(&0));
        assert_eq!(kv.len(), 2);
    }

    #[test]
    fn finds_v1_mounts_including_comounted() {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["memory", "cpu,cpuacct", "name=systemd,x", "unified"] {
            fs::create_dir(tmp.path().join(d)).unwrap();
            fs::write(tmp.path().join(d).join("cgroup.procs"), "").unwrap();
        }
        fs::create_dir(tmp.path().join("pids")).unwrap(); // not a mount: no cgroup.procs
        let m = v1_mounts(tmp.path());
        let names: Vec<&str> = m.iter().map(|(n, _)| *n).collect();
        assert!(names.contains(&"memory"));
        assert!(names.contains(&"cpu"));
        assert!(names.contains(&"cpuacct"));
        assert!(names.contains(&"systemd"));
        assert!(!names.contains(&"pids"));
        let cpu = &m.iter().find(|(n, _)| *n == "cpu").unwrap().1;
        let acct = &m.iter().find(|(n, _)| *n == "cpuacct").unwrap().1;
        assert_eq!(cpu, acct);
    }

    #[test]
    fn create_and_destroy_on_fake_v1_tree() {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["memory", "freezer"] {
            fs::create_dir(tmp.path().join(d)).unwrap();
            fs::write(tmp.path().join(d).join("cgroup.procs"), "").unwrap();
        }
        let cfg = CgroupConfig {
            v2: false,
            v1_root: tmp.path().to_path_buf(),
            v2_root: tmp.path().to_path_buf(),
        };
        let cg = Cgroup::create(&cfg, "pod/abc", None).unwrap();
        assert_eq!(cg.path(), "/pod/abc");
        assert!(tmp.path().join("memory/pod/abc").is_dir());
        assert!(tmp.path().join("freezer/pod/abc").is_dir());
        assert_eq!(
            cg.memory_dir(),
            Some(fs::canonicalize(tmp.path()).unwrap().join("memory/pod/abc"))
        );
        Cgroup::open(&cfg, "/pod/abc").unwrap();
        cg.destroy().unwrap();
        assert!(!tmp.path().join("memory/pod/abc").exists());
        assert!(tmp.path().join("memory/pod").is_dir());
        cg.destroy().unwrap(); // already gone: still fine
        assert!(Cgroup::open(&cfg, "/pod/abc").is_err());
    }

    #[test]
    fn missing_hierarchy_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = CgroupConfig {
            v2: false,
            v1_root: tmp.path().to_path_buf(),
            v2_root: tmp.path().to_path_buf(),
        };
        let err = Cgroup::create(&cfg, "/x", None).unwrap_err();
        assert!(format!("{err:#}").contains("no cgroup v1 controller"));
        let cfg = CgroupConfig { v2: true, ..cfg };
        let err = Cgroup::create(&cfg, "/x", None).unwrap_err();
        assert!(format!("{err:#}").contains("not a cgroup v2 hierarchy"));
    }
}
