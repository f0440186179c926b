//! PID-1 duties: base and cgroup mounts, console, environment and hostname, plus the process
//! settings every agent needs (child sub-reaper, development core dumps) and the final power-off.
//!
//! The mounts are described as a plan ([`MountSpec`] list) and performed by [`mount_all`] under a
//! root prefix, so that the exact plan is tested in a private mount namespace.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::mount::{mount, MsFlags};
use tracing::{debug, info, warn};

use crate::config::AgentConfig;

/// `PATH` set in init mode (inherited by children such as the debug shell).
pub const INIT_PATH: &str = "/bin:/sbin/:/usr/bin/:/usr/sbin/";
/// Where cgroups are mounted in init mode.
pub const CGROUP_MOUNT_POINT: &str = "/sys/fs/cgroup";
/// cgroup v1 controllers the agent mounts (each on its own hierarchy), if the kernel has them.
pub const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "blkio",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
];

/// What a step of a mount plan does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOp {
    /// Mount `source` of type `fstype` on the target (created first); skipped if the target is
    /// already a mount of the same type.
    Mount,
    /// Change the flags of the mount at the target (`MS_REMOUNT` is added).
    Remount,
    /// Write these contents into the file at the target (e.g. a cgroup knob).
    WriteFile(String),
}

/// One step of a mount plan. `target` is an absolute guest path, taken relative to the root
/// given to [`mount_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub op: MountOp,
    pub fstype: String,
    pub source: String,
    pub target: PathBuf,
    pub flags: MsFlags,
    pub data: Option<String>,
    /// A failure of this step is logged instead of aborting the plan.
    pub optional: bool,
}

impl MountSpec {
    fn mount(fstype: &str, source: &str, target: &str, flags: MsFlags, data: Option<&str>) -> Self {
        MountSpec {
            op: MountOp::Mount,
            fstype: fstype.to_string(),
            source: source.to_string(),
            target: PathBuf::from(target),
            flags,
            data: data.map(str::to_string),
            optional: false,
        }
    }
}

/// The base mounts done first in init mode: proc, sysfs, devtmpfs (failure only logged),
/// /dev/shm, devpts and /run.
pub fn base_mounts() -> Vec<MountSpec> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let nosuid_nodev_noexec = nosuid_nodev | MsFlags::MS_NOEXEC;
    let mut devtmpfs = MountSpec::mount("devtmpfs", "dev", "/dev", MsFlags::MS_NOSUID, None);
    devtmpfs.optional = true;
    vec![
        MountSpec::mount("proc", "proc", "/proc", nosuid_nodev_noexec, None),
        MountSpec::mount("sysfs", "sysfs", "/sys", nosuid_nodev_noexec, None),
        devtmpfs,
        MountSpec::mount("tmpfs", "tmpfs", "/dev/shm", nosuid_nodev, None),
        MountSpec::mount(
            "devpts",
            "devpts",
            "/dev/pts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            None,
        ),
        MountSpec::mount("tmpfs", "tmpfs", "/run", nosuid_nodev, None),
    ]
}

/// The enabled controllers listed in `/proc/cgroups` content, in file order. Comment lines,
/// short lines, lines with non-numeric columns and disabled controllers are skipped.
pub fn enabled_controllers(proc_cgroups: &str) -> Vec<String> {
    proc_cgroups
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 4 {
                return None;
            }
            let numbers: Option<Vec<u64>> = fields[1..4].iter().map(|f| f.parse().ok()).collect();
            match numbers {
                Some(n) if n[2] != 0 => Some(fields[0].to_string()),
                _ => None,
            }
        })
        .collect()
}

/// The cgroup mounts of init mode.
///
/// v2: `cgroup2` on /sys/fs/cgroup with `nsdelegate`. v1: a tmpfs on /sys/fs/cgroup, one
/// hierarchy per enabled known controller (from `proc_cgroups`, the content of /proc/cgroups),
/// the tmpfs remounted read-only, then `memory.use_hierarchy` set to 1 (if memory is mounted).
/// Without the `devices` controller nothing is mounted (a warning is logged).
pub fn cgroup_mounts(v2: bool, proc_cgroups: &str) -> Vec<MountSpec> {
    let base = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if v2 {
        return vec![MountSpec::mount(
            "cgroup2",
            "cgroup2",
            CGROUP_MOUNT_POINT,
            base | MsFlags::MS_RELATIME,
            Some("nsdelegate"),
        )];
    }
    let controllers: Vec<String> = enabled_controllers(proc_cgroups)
        .into_iter()
        .filter(|c| V1_CONTROLLERS.contains(&c.as_str()))
        .collect();
    if !controllers.iter().any(|c| c == "devices") {
        warn!(
            subsystem = "init",
            "the devices cgroup controller is missing: cgroups are not mounted"
        );
        return Vec::new();
    }
    let mut plan = vec![MountSpec::mount(
        "tmpfs",
        "tmpfs",
        CGROUP_MOUNT_POINT,
        base,
        Some("mode=755"),
    )];
    for c in &controllers {
        plan.push(MountSpec::mount(
            "cgroup",
            "cgroup",
            &format!("{CGROUP_MOUNT_POINT}/{c}"),
            base | MsFlags::MS_RELATIME,
            Some(c),
        ));
    }
    plan.push(MountSpec {
        op: MountOp::Remount,
        flags: base | MsFlags::MS_RDONLY,
        ..MountSpec::mount("tmpfs", "tmpfs", CGROUP_MOUNT_POINT, base, Some("mode=755"))
    });
    if controllers.iter().any(|c| c == "memory") {
        plan.push(MountSpec {
            op: MountOp::WriteFile("1".to_string()),
            ..MountSpec::mount(
                "",
                "",
                &format!("{CGROUP_MOUNT_POINT}/memory/memory.use_hierarchy"),
                MsFlags::empty(),
                None,
            )
        });
    }
    plan
}

/// `target` (absolute) placed under `root`.
fn under_root(root: &Path, target: &Path) -> PathBuf {
    root.join(target.strip_prefix("/").unwrap_or(target))
}

/// Performs a plan under `root` (`/` for the real thing). Stops at the first failure of a
/// non-optional step.
pub fn mount_all(root: &Path, plan: &[MountSpec]) -> Result<()> {
    for spec in plan {
        let target = under_root(root, &spec.target);
        let result = match &spec.op {
            MountOp::Mount => mount_one(spec, &target),
            MountOp::Remount => mount(
                None::<&str>,
                &target,
                None::<&str>,
                spec.flags | MsFlags::MS_REMOUNT,
                spec.data.as_deref(),
            )
            .with_context(|| format!("cannot remount {}", target.display())),
            MountOp::WriteFile(contents) => fs::write(&target, contents)
                .with_context(|| format!("cannot write {}", target.display())),
        };
        match result {
            Err(e) if spec.optional => {
                warn!(subsystem = "init", error = %format!("{e:#}"), "optional mount step failed")
            }
            other => other?,
        }
    }
    Ok(())
}

fn mount_one(spec: &MountSpec, target: &Path) -> Result<()> {
    fs::create_dir_all(target)
        .with_context(|| format!("cannot create the mount point {}", target.display()))?;
    let mounts = parse_mountinfo(&read_mountinfo());
    if mounts
        .iter()
        .any(|m| m.mount_point == target && m.fstype == spec.fstype)
    {
        debug!(subsystem = "init", target = %target.display(), fstype = %spec.fstype, "already mounted");
        return Ok(());
    }
    mount(
        Some(spec.source.as_str()),
        target,
        Some(spec.fstype.as_str()),
        spec.flags,
        spec.data.as_deref(),
    )
    .with_context(|| format!("cannot mount {} on {}", spec.fstype, target.display()))?;
    debug!(subsystem = "init", target = %target.display(), fstype = %spec.fstype, "mounted");
    Ok(())
}

/// The calling thread's mount table (a thread may be in its own mount namespace); empty when
/// /proc is not mounted yet.
fn read_mountinfo() -> String {
    fs::read_to_string("/proc/thread-self/mountinfo")
        .or_else(|_| fs::read_to_string("/proc/self/mountinfo"))
        .unwrap_or_default()
}

/// One line of `/proc/<pid>/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    pub mount_options: String,
    pub fstype: String,
    pub super_options: String,
}

/// Parses mountinfo content (see proc(5)); malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            if sep < 6 || fields.len() < sep + 4 {
                return None;
            }
            Some(MountInfo {
                mount_point: PathBuf::from(unescape_octal(fields[4])),
                mount_options: fields[5].to_string(),
                fstype: fields[sep + 1].to_string(),
                super_options: fields[sep + 3].to_string(),
            })
        })
        .collect()
}

/// Undoes the kernel's `\ooo` escaping of spaces, tabs, newlines and backslashes.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Init mode, before the configuration is read: the base mounts on `/`.
pub fn setup_base_mounts() -> Result<()> {
    mount_all(Path::new("/"), &base_mounts())
}

/// Init mode, after the configuration: cgroups, /dev/ptmx, controlling terminal, PATH and
/// hostname.
pub fn setup_init_mode(cfg: &AgentConfig) -> Result<()> {
    let v2 = cfg.unified_cgroup_hierarchy;
    let proc_cgroups = if v2 {
        String::new()
    } else {
        fs::read_to_string("/proc/cgroups").context("cannot read /proc/cgroups")?
    };
    mount_all(Path::new("/"), &cgroup_mounts(v2, &proc_cgroups))?;
    setup_ptmx(Path::new("/dev"))?;
    set_controlling_terminal();
    std::env::set_var("PATH", INIT_PATH);
    let hostname = hostname_from(fs::read_to_string("/etc/hostname").ok().as_deref());
    if let Err(e) = nix::unistd::sethostname(&hostname) {
        warn!(subsystem = "init", error = %e, hostname, "cannot set the hostname");
    }
    info!(
        subsystem = "init",
        cgroup_v2 = v2,
        hostname,
        "init-mode setup done"
    );
    Ok(())
}

/// Replaces `<dev>/ptmx` (which must exist) with a symlink to `pts/ptmx`, so that the devpts
/// instance mounted on `<dev>/pts` serves new pseudo-terminals.
pub fn setup_ptmx(dev: &Path) -> Result<()> {
    let ptmx = dev.join("ptmx");
    fs::remove_file(&ptmx).with_context(|| format!("cannot remove {}", ptmx.display()))?;
    std::os::unix::fs::symlink("pts/ptmx", &ptmx)
        .with_context(|| format!("cannot create the symlink {}", ptmx.display()))
}

/// New session, with standard input as the controlling terminal (errors only logged).
fn set_controlling_terminal() {
    if let Err(e) = nix::unistd::setsid() {
        warn!(subsystem = "init", error = %e, "setsid failed");
    }
    // SAFETY: TIOCSCTTY takes an integer argument; a failure (no terminal on fd 0) is harmless.
    unsafe {
        libc::ioctl(0, libc::TIOCSCTTY, 1);
    }
}

/// The hostname from /etc/hostname content: its first word, or `localhost` if the file is
/// unreadable (`None`) or blank.
pub fn hostname_from(contents: Option<&str>) -> String {
    contents
        .and_then(|c| c.split_whitespace().next())
        .unwrap_or("localhost")
        .to_string()
}

/// Development mode: allow core dumps (RLIMIT_CORE unlimited, process dumpable).
pub fn setup_devmode() -> Result<()> {
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_CORE,
        libc::RLIM_INFINITY,
        libc::RLIM_INFINITY,
    )
    .context("cannot raise the core dump size limit")?;
    prctl_set(libc::PR_SET_DUMPABLE).context("cannot make the agent dumpable")
}

/// Makes the agent the reaper of orphaned descendants (init mode or not).
pub fn set_subreaper() -> Result<()> {
    prctl_set(libc::PR_SET_CHILD_SUBREAPER).context("cannot become a child sub-reaper")
}

fn prctl_set(option: libc::c_int) -> io::Result<()> {
    // SAFETY: these prctl options take one integer argument and no pointers.
    let rc = unsafe {
        libc::prctl(
            option,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Init mode, at exit: flush file systems and power the VM off. Returns only if that fails.
pub fn power_off() {
    nix::unistd::sync();
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    eprintln!("kata-agent: cannot power off: {e}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sched::{unshare, CloneFlags};

    const SAMPLE_PROC_CGROUPS: &str = "#subsys_name\thierarchy\tnum_cgroups\tenabled\n\
        cpuset\t3\t1\t1\n\
        cpu\t1\t1\t1\n\
        net_cls\t0\t1\t0\n\
        memory\t4\t41\t1\n\
        misc\t9\t1\t1\n\
        short\t1\n\
        bogus\tx\t1\t1\n\
        devices\t5\t1\t1\n\
        pids\t8\t1\t1\n";

    #[test]
    fn base_plan_matches_the_spec() {
        let plan = base_mounts();
        let summary: Vec<_> = plan
            .iter()
            .map(|m| {
                (
                    m.fstype.as_str(),
                    m.source.as_str(),
                    m.target.to_str().unwrap(),
                    m.optional,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("proc", "proc", "/proc", false),
                ("sysfs", "sysfs", "/sys", false),
                ("devtmpfs", "dev", "/dev", true),
                ("tmpfs", "tmpfs", "/dev/shm", false),
                ("devpts", "devpts", "/dev/pts", false),
                ("tmpfs", "tmpfs", "/run", false),
            ]
        );
        let f = |i: usize| plan[i].flags;
        let nsd = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        assert_eq!(f(0), nsd | MsFlags::MS_NOEXEC);
        assert_eq!(f(1), nsd | MsFlags::MS_NOEXEC);
        assert_eq!(f(2), MsFlags::MS_NOSUID);
        assert_eq!(f(3), nsd);
        assert_eq!(f(4), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC);
        assert_eq!(f(5), nsd);
        assert!(plan
            .iter()
            .all(|m| m.op == MountOp::Mount && m.data.is_none()));
    }

    #[test]
    fn proc_cgroups_parsing() {
        assert_eq!(
            enabled_controllers(SAMPLE_PROC_CGROUPS),
            ["cpuset", "cpu", "memory", "misc", "devices", "pids"]
        );
        assert!(enabled_controllers("").is_empty());
    }

    #[test]
    fn v1_plan() {
        let plan = cgroup_mounts(false, SAMPLE_PROC_CGROUPS);
        let steps: Vec<_> = plan
            .iter()
            .map(|m| {
                (
                    m.op.clone(),
                    m.fstype.as_str(),
                    m.target.to_str().unwrap(),
                    m.data.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            steps,
            [
                (MountOp::Mount, "tmpfs", "/sys/fs/cgroup", Some("mode=755")),
                (
                    MountOp::Mount,
                    "cgroup",
                    "/sys/fs/cgroup/cpuset",
                    Some("cpuset")
                ),
                (MountOp::Mount, "cgroup", "/sys/fs/cgroup/cpu", Some("cpu")),
                (
                    MountOp::Mount,
                    "cgroup",
                    "/sys/fs/cgroup/memory",
                    Some("memory")
                ),
                (
                    MountOp::Mount,
                    "cgroup",
                    "/sys/fs/cgroup/devices",
                    Some("devices")
                ),
                (
                    MountOp::Mount,
                    "cgroup",
                    "/sys/fs/cgroup/pids",
                    Some("pids")
                ),
                (
                    MountOp::Remount,
                    "tmpfs",
                    "/sys/fs/cgroup",
                    Some("mode=755")
                ),
                (
                    MountOp::WriteFile("1".into()),
                    "",
                    "/sys/fs/cgroup/memory/memory.use_hierarchy",
                    None
                ),
            ]
        );
        let base = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        assert_eq!(plan[0].flags, base);
        assert_eq!(plan[1].flags, base | MsFlags::MS_RELATIME);
        assert_eq!(plan[6].flags, base | MsFlags::MS_RDONLY);
    }

    #[test]
    fn v1_plan_without_devices_is_empty() {
        assert!(cgroup_mounts(false, "#h\ncpu\t1\t1\t1\nmemory\t2\t1\t1\n").is_empty());
        assert!(cgroup_mounts(false, "devices\t1\t1\t0\n").is_empty());
    }

    #[test]
    fn v2_plan() {
        let plan = cgroup_mounts(true, "ignored");
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].fstype, "cgroup2");
        assert_eq!(plan[0].target, Path::new("/sys/fs/cgroup"));
        assert_eq!(plan[0].data.as_deref(), Some("nsdelegate"));
        assert_eq!(
            plan[0].flags,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME
        );
    }

    #[test]
    fn mountinfo_parsing() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                    garbage line\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, Path::new("/mnt/with space"));
        assert_eq!(m[0].mount_options, "rw,noatime");
        assert_eq!(m[0].fstype, "ext3");
        assert_eq!(m[0].super_options, "rw,errors=continue");
        assert_eq!(m[1].fstype, "cgroup2");
        assert_eq!(unescape_octal("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape_octal("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn hostname_choice() {
        assert_eq!(hostname_from(Some("myhost\n")), "myhost");
        assert_eq!(hostname_from(Some("  first second\n")), "first");
        assert_eq!(hostname_from(Some("\n")), "localhost");
        assert_eq!(hostname_from(None), "localhost");
    }

    #[test]
    fn ptmx_becomes_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("ptmx"), "").unwrap();
        setup_ptmx(dir.path()).unwrap();
        assert_eq!(
            fs::read_link(dir.path().join("ptmx")).unwrap(),
            Path::new("pts/ptmx")
        );
        let empty = tempfile::tempdir().unwrap();
        let e = format!("{:#}", setup_ptmx(empty.path()).unwrap_err());
        assert!(e.contains("cannot remove"), "{e}");
    }

    /// Runs `f` in a fork: the child must exit 0. Only prctl/rlimit calls happen in the child.
    fn in_fork(f: fn() -> bool) {
        // SAFETY: the child only makes system calls (no allocation, no locks) and then _exits.
        match unsafe { libc::fork() } {
            -1 => panic!("fork failed"),
            0 => {
                let ok = f();
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            pid => {
                let mut status = 0;
                assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
                assert!(
                    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                    "child status {status}"
                );
            }
        }
    }

    #[test]
    fn devmode_enables_core_dumps() {
        in_fork(|| {
            if setup_devmode().is_err() {
                return false;
            }
            let mut rl = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            let got = unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut rl) };
            let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
            got == 0
                && rl.rlim_cur == libc::RLIM_INFINITY
                && rl.rlim_max == libc::RLIM_INFINITY
                && dumpable == 1
        });
    }

    #[test]
    fn subreaper_is_set() {
        in_fork(|| {
            let mut v: libc::c_int = 0;
            set_subreaper().is_ok()
                && unsafe {
                    libc::prctl(
                        libc::PR_GET_CHILD_SUBREAPER,
                        &mut v as *mut libc::c_int,
                        0,
                        0,
                        0,
                    )
                } == 0
                && v == 1
        });
    }

    /// Runs `f` on a thread with its own private mount namespace; every mount made there
    /// disappears when the thread ends.
    fn in_private_mount_ns<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        std::thread::scope(|s| {
            s.spawn(|| {
                unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .expect("make / private");
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    fn thread_mounts() -> Vec<MountInfo> {
        parse_mountinfo(&fs::read_to_string("/proc/thread-self/mountinfo").unwrap())
    }

    fn host_mounts_under(root: &Path) -> Vec<MountInfo> {
        parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap())
            .into_iter()
            .filter(|m| m.mount_point.starts_with(root))
            .collect()
    }

    /// Checks that every Mount step of `plan` is mounted exactly once under `root` with its type,
    /// per-mount flags and data.
    fn verify(root: &Path, plan: &[MountSpec], mounts: &[MountInfo]) {
        for spec in plan.iter().filter(|s| s.op == MountOp::Mount) {
            let target = under_root(root, &spec.target);
            let found: Vec<_> = mounts.iter().filter(|m| m.mount_point == target).collect();
            assert_eq!(
                found.len(),
                1,
                "{} mounted {} times",
                target.display(),
                found.len()
            );
            let m = found[0];
            assert_eq!(m.fstype, spec.fstype, "{}", target.display());
            let opts: Vec<&str> = m.mount_options.split(',').collect();
            for (flag, name) in [
                (MsFlags::MS_NOSUID, "nosuid"),
                (MsFlags::MS_NODEV, "nodev"),
                (MsFlags::MS_NOEXEC, "noexec"),
            ] {
                assert_eq!(
                    spec.flags.contains(flag),
                    opts.contains(&name),
                    "{name} on {}: {}",
                    target.display(),
                    m.mount_options
                );
            }
            if spec.flags.contains(MsFlags::MS_RELATIME) {
                assert!(opts.contains(&"relatime"), "{}", m.mount_options);
            }
            let super_opts: Vec<&str> = m.super_options.split(',').collect();
            for d in spec.data.iter().flat_map(|d| d.split(',')) {
                assert!(
                    super_opts.contains(&d),
                    "{d} on {}: {}",
                    target.display(),
                    m.super_options
                );
            }
        }
    }

    fn temp_root() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("agent-init-test")
            .tempdir()
            .unwrap()
    }

    #[test]
    fn base_and_v1_plans_mount_for_real() {
        let dir = temp_root();
        let root = dir.path().canonicalize().unwrap();
        // Only controllers the host has on hierarchies of their own can be mounted again.
        let host: Vec<String> =
            parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap())
                .into_iter()
                .filter(|m| m.fstype == "cgroup")
                .map(|m| m.super_options)
                .collect();
        let wanted = ["cpuset", "memory", "devices", "pids"];
        if !wanted
            .iter()
            .all(|c| host.iter().any(|o| o == &format!("rw,{c}")))
        {
            eprintln!("skipping: host cgroup v1 layout differs ({host:?})");
            return;
        }
        let proc_cgroups = "#subsys_name\thierarchy\tnum_cgroups\tenabled\n\
            cpuset\t3\t1\t1\nnet_cls\t0\t1\t0\nmemory\t4\t1\t1\ndevices\t5\t1\t1\npids\t8\t1\t1\n";
        let base = base_mounts();
        let cgroups = cgroup_mounts(false, proc_cgroups);
        assert_eq!(cgroups.len(), 7);
        in_private_mount_ns(|| {
            mount_all(&root, &base).unwrap();
            mount_all(&root, &cgroups).unwrap();
            // A second run skips what is already mounted.
            mount_all(&root, &base).unwrap();
            let mounts = thread_mounts();
            verify(&root, &base, &mounts);
            verify(&root, &cgroups, &mounts);
            let tmpfs = mounts
                .iter()
                .find(|m| m.mount_point == root.join("sys/fs/cgroup"))
                .unwrap();
            assert_eq!(tmpfs.fstype, "tmpfs");
            assert!(
                tmpfs.mount_options.split(',').any(|o| o == "ro"),
                "{}",
                tmpfs.mount_options
            );
            assert!(tmpfs.super_options.contains("mode=755"));
            let hierarchy =
                fs::read_to_string(root.join("sys/fs/cgroup/memory/memory.use_hierarchy")).unwrap();
            assert_eq!(hierarchy.trim(), "1");
            // The read-only tmpfs refuses new controller directories.
            assert!(fs::create_dir(root.join("sys/fs/cgroup/new")).is_err());
        });
        assert!(
            host_mounts_under(&root).is_empty(),
            "mounts leaked into the host namespace"
        );
    }

    #[test]
    fn v2_plan_mounts_for_real() {
        let dir = temp_root();
        let root = dir.path().canonicalize().unwrap();
        let host_cgroup2 = || {
            parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap())
                .into_iter()
                .find(|m| m.fstype == "cgroup2")
                .map(|m| m.super_options)
        };
        // Mount options of cgroup2 are global: remember them to restore them afterwards.
        let before = host_cgroup2();
        let plan = cgroup_mounts(true, "");
        in_private_mount_ns(|| {
            let result = mount_all(&root, &plan);
            let mounts = thread_mounts();
            if let (Ok(()), Some(opts)) = (&result, &before) {
                let restore: Vec<&str> = opts
                    .split(',')
                    .filter(|o| *o != "rw" && *o != "ro")
                    .collect();
                let target = root.join("sys/fs/cgroup");
                mount(
                    None::<&str>,
                    &target,
                    None::<&str>,
                    MsFlags::MS_REMOUNT,
                    Some(restore.join(",").as_str()),
                )
                .expect("restore cgroup2 options");
            }
            result.unwrap();
            verify(&root, &plan, &mounts);
        });
        assert_eq!(host_cgroup2(), before, "host cgroup2 options changed");
        assert!(
            host_mounts_under(&root).is_empty(),
            "mounts leaked into the host namespace"
        );
    }

    #[test]
    fn mount_failure_is_reported_unless_optional() {
        let dir = temp_root();
        let root = dir.path().canonicalize().unwrap();
        let bad = MountSpec::mount("no-such-fs", "x", "/bad", MsFlags::empty(), None);
        let mut optional = bad.clone();
        optional.optional = true;
        in_private_mount_ns(|| {
            let e = format!("{:#}", mount_all(&root, &[bad]).unwrap_err());
            assert!(
                e.contains("cannot mount no-such-fs on") && e.ends_with("ENODEV: No such device"),
                "{e}"
            );
            mount_all(&root, &[optional]).unwrap();
        });
    }
}
