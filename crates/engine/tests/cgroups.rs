//! Cgroup manager tests against the real cgroups of this machine (root, v1 controllers under
//! /sys/fs/cgroup/<name>, an empty cgroup2 mount at /sys/fs/cgroup/unified). Tests whose
//! hierarchy is missing print a note and pass.

use engine::cgroups::{Cgroup, CgroupConfig};
use oci_spec::runtime::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const V1: &str = "/sys/fs/cgroup";
const UNIFIED: &str = "/sys/fs/cgroup/unified";

fn unique() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "/kata-cg-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn v1_available() -> bool {
    let ok = nix::unistd::geteuid().is_root() && Path::new(V1).join("memory/cgroup.procs").exists();
    if !ok {
        eprintln!("skipped: needs root and cgroup v1 controllers under {V1}");
    }
    ok
}

fn v2_available() -> bool {
    let ok =
        nix::unistd::geteuid().is_root() && engine::cgroups::is_cgroup2_mount(Path::new(UNIFIED));
    if !ok {
        eprintln!("skipped: needs root and a cgroup2 mount at {UNIFIED}");
    }
    ok
}

fn v1_cfg() -> CgroupConfig {
    CgroupConfig::default()
}

fn v2_cfg() -> CgroupConfig {
    CgroupConfig {
        v2: true,
        v1_root: V1.into(),
        v2_root: UNIFIED.into(),
    }
}

/// Cleans up even when an assertion fails: thaws, kills the children, destroys the cgroups and
/// removes the extra parent paths (deepest first).
#[derive(Default)]
struct Guard {
    cgroups: Vec<Cgroup>,
    children: Vec<Child>,
    parents: Vec<(CgroupConfig, String)>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for cg in &self.cgroups {
            // A frozen v1 task cannot die before it is thawed.
            let _ = cg.thaw();
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for cg in &self.cgroups {
            let _ = cg.destroy();
        }
        for (cfg, p) in self.parents.iter().rev() {
            if let Ok(cg) = Cgroup::open(cfg, p) {
                let _ = cg.destroy();
            }
        }
    }
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.as_ref().display()))
        .trim()
        .to_string()
}

fn v1_file(ctrl: &str, path: &str, file: &str) -> PathBuf {
    Path::new(V1)
        .join(ctrl)
        .join(path.trim_start_matches('/'))
        .join(file)
}

/// A `sh` that waits for a line on stdin, then runs `script`.
fn gated_sh(script: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(format!("read x; {script}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sh")
}

fn release(child: &mut Child) {
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
}

fn sleeper() -> Child {
    Command::new("sleep")
        .arg("300")
        .spawn()
        .expect("spawn sleep")
}

const MIB: i64 = 1024 * 1024;

#[test]
fn v1_create_applies_resources_and_update_changes_them() {
    if !v1_available() {
        return;
    }
    let cfg = v1_cfg();
    let parent = unique();
    let path = format!("{parent}/ctr");
    let mut g = Guard::default();
    g.parents.push((cfg.clone(), parent.clone()));
    let res = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64 * MIB)
                .swap(128 * MIB)
                .reservation(32 * MIB)
                .swappiness(10u64)
                .build()
                .unwrap(),
        )
        .cpu(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .quota(50_000i64)
                .period(100_000u64)
                .cpus("0")
                .mems("0")
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(42i64).build().unwrap())
        .build()
        .unwrap();
    let cg = Cgroup::create(&cfg, &path, Some(&res)).unwrap();
    g.cgroups.push(cg.clone());
    assert_eq!(cg.path(), path);

    assert_eq!(
        read(v1_file("memory", &path, "memory.limit_in_bytes")),
        (64 * MIB).to_string()
    );
    assert_eq!(
        read(v1_file("memory", &path, "memory.memsw.limit_in_bytes")),
        (128 * MIB).to_string()
    );
    assert_eq!(
        read(v1_file("memory", &path, "memory.soft_limit_in_bytes")),
        (32 * MIB).to_string()
    );
    assert_eq!(read(v1_file("memory", &path, "memory.swappiness")), "10");
    assert_eq!(read(v1_file("cpu", &path, "cpu.shares")), "512");
    assert_eq!(read(v1_file("cpu", &path, "cpu.cfs_quota_us")), "50000");
    assert_eq!(read(v1_file("cpu", &path, "cpu.cfs_period_us")), "100000");
    assert_eq!(read(v1_file("cpuset", &path, "cpuset.cpus")), "0");
    assert_eq!(read(v1_file("cpuset", &path, "cpuset.mems")), "0");
    // The intermediate level got the root's cpus/mems copied down.
    assert_eq!(
        read(v1_file("cpuset", &parent, "cpuset.cpus")),
        read(Path::new(V1).join("cpuset/cpuset.cpus"))
    );
    assert_eq!(
        read(v1_file("cpuset", &parent, "cpuset.mems")),
        read(Path::new(V1).join("cpuset/cpuset.mems"))
    );
    assert_eq!(read(v1_file("pids", &path, "pids.max")), "42");
    for ctrl in ["freezer", "devices", "blkio", "cpuacct", "systemd"] {
        assert!(v1_file(ctrl, &path, "").is_dir(), "{ctrl} dir missing");
    }

    // Shrinking memory below the current memory+swap: limit first, then swap.
    let upd = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(16 * MIB)
                .swap(16 * MIB)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    cg.apply(&upd, true).unwrap();
    assert_eq!(
        read(v1_file("memory", &path, "memory.limit_in_bytes")),
        (16 * MIB).to_string()
    );
    assert_eq!(
        read(v1_file("memory", &path, "memory.memsw.limit_in_bytes")),
        (16 * MIB).to_string()
    );

    // Growing again: swap must go first or the kernel refuses the limit.
    let upd = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(256 * MIB)
                .swap(512 * MIB)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    cg.apply(&upd, true).unwrap();
    assert_eq!(
        read(v1_file("memory", &path, "memory.limit_in_bytes")),
        (256 * MIB).to_string()
    );

    // -1 means unlimited; pids -1 / 0 mean max.
    let upd = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(-1i64)
                .swap(-1i64)
                .build()
                .unwrap(),
        )
        .cpu(LinuxCpuBuilder::default().quota(-1i64).build().unwrap())
        .pids(LinuxPidsBuilder::default().limit(-1i64).build().unwrap())
        .build()
        .unwrap();
    cg.apply(&upd, true).unwrap();
    let unlimited = read(Path::new(V1).join("memory/memory.limit_in_bytes"));
    assert_eq!(
        read(v1_file("memory", &path, "memory.limit_in_bytes")),
        unlimited
    );
    assert_eq!(
        read(v1_file("memory", &path, "memory.memsw.limit_in_bytes")),
        unlimited
    );
    assert_eq!(read(v1_file("cpu", &path, "cpu.cfs_quota_us")), "-1");
    assert_eq!(read(v1_file("pids", &path, "pids.max")), "max");

    let bad = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .swappiness(101u64)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let err = format!("{:#}", cg.apply(&bad, true).unwrap_err());
    assert!(err.contains("swappiness"), "{err}");
}

#[test]
fn v1_pids_limit_is_enforced() {
    if !v1_available() {
        return;
    }
    let cfg = v1_cfg();
    let mut g = Guard::default();
    let res = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(1i64).build().unwrap())
        .build()
        .unwrap();
    let cg = Cgroup::create(&cfg, &unique(), Some(&res)).unwrap();
    g.cgroups.push(cg.clone());
    // With one task allowed, the shell cannot fork `true`.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("read x; /bin/true && echo forked || echo refused")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    cg.add_pid(child.id() as i32).unwrap();
    release(&mut child);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // dash prints "refused"; a shell may also give up entirely when it cannot fork.
    assert!(!stdout.contains("forked"), "{stdout}");
    assert!(stdout.contains("refused") || !out.status.success());
}

#[test]
fn v1_freeze_and_thaw_a_process() {
    if !v1_available() {
        return;
    }
    let cfg = v1_cfg();
    let mut g = Guard::default();
    let cg = Cgroup::create(&cfg, &unique(), None).unwrap();
    g.cgroups.push(cg.clone());
    g.children.push(sleeper());
    let pid = g.children[0].id() as i32;
    cg.add_pid(pid).unwrap();
    assert_eq!(cg.pids().unwrap(), vec![pid]);
    assert!(!cg.is_frozen());
    cg.freeze().unwrap();
    assert!(cg.is_frozen());
    assert_eq!(
        read(v1_file("freezer", cg.path(), "freezer.state")),
        "FROZEN"
    );
    cg.thaw().unwrap();
    assert!(!cg.is_frozen());
    assert_eq!(
        read(v1_file("freezer", cg.path(), "freezer.state")),
        "THAWED"
    );
}

#[test]
fn v2_freeze_and_thaw_a_process() {
    if !v2_available() {
        return;
    }
    let cfg = v2_cfg();
    let mut g = Guard::default();
    let cg = Cgroup::create(&cfg, &unique(), None).unwrap();
    g.cgroups.push(cg.clone());
    assert!(cg.is_v2());
    g.children.push(sleeper());
    let pid = g.children[0].id() as i32;
    cg.add_pid(pid).unwrap();
    assert_eq!(cg.pids().unwrap(), vec![pid]);
    cg.freeze().unwrap();
    assert!(cg.is_frozen());
    let dir = Path::new(UNIFIED).join(cg.path().trim_start_matches('/'));
    assert!(read(dir.join("cgroup.events")).contains("frozen 1"));
    // The frozen task shows up as stopped in /proc.
    let status = read(format!("/proc/{pid}/status"));
    assert!(
        status.contains("State:\tS")
            || status.contains("State:\tT")
            || status.contains("State:\tD")
    );
    cg.thaw().unwrap();
    assert!(!cg.is_frozen());
    assert!(read(dir.join("cgroup.events")).contains("frozen 0"));
}

#[test]
fn v2_without_controllers_gives_clear_errors() {
    if !v2_available() {
        return;
    }
    let cfg = v2_cfg();
    let mut g = Guard::default();
    let path = unique();
    let res = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64 * MIB)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let err = format!("{:#}", Cgroup::create(&cfg, &path, Some(&res)).unwrap_err());
    assert!(err.contains("memory controller is not enabled"), "{err}");
    // Nothing left behind.
    assert!(!Path::new(UNIFIED)
        .join(path.trim_start_matches('/'))
        .exists());

    // Unlimited pids and device rules are no-ops (device rules are not enforced on v2).
    let res = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(0i64).build().unwrap())
        .devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .unwrap()])
        .build()
        .unwrap();
    let cg = Cgroup::create(&cfg, &path, Some(&res)).unwrap();
    g.cgroups.push(cg.clone());
    let st = cg.stats().unwrap();
    assert!(st.cpu.is_some()); // cpu.stat is a core file
    assert!(st.memory.is_none() && st.pids.is_none() && st.blkio.is_none());
    assert!(cg.oom_watcher().is_err());
}

#[test]
fn v1_stats_after_burning_cpu() {
    if !v1_available() {
        return;
    }
    let cfg = v1_cfg();
    let mut g = Guard::default();
    let res = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(128 * MIB)
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(50i64).build().unwrap())
        .build()
        .unwrap();
    let cg = Cgroup::create(&cfg, &unique(), Some(&res)).unwrap();
    g.cgroups.push(cg.clone());
    g.children.push(gated_sh(
        "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; exec sleep 300",
    ));
    cg.add_pid(g.children[0].id() as i32).unwrap();
    release(&mut g.children[0]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let st = loop {
        let st = cg.stats().unwrap();
        let cpu = st.cpu.as_ref().unwrap();
        if cpu.cpu_usage.total_usage > 50_000_000 || Instant::now() > deadline {
            break st;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let cpu = st.cpu.unwrap();
    assert!(cpu.cpu_usage.total_usage > 0);
    assert!(!cpu.cpu_usage.percpu_usage.is_empty());
    assert!(cpu.cpu_usage.usage_in_usermode + cpu.cpu_usage.usage_in_kernelmode > 0);
    let mem = st.memory.unwrap();
    assert!(mem.usage.usage > 0);
    assert_eq!(mem.usage.limit, (128 * MIB) as u64);
    assert!(mem.stats.contains_key("rss"));
    let pids = st.pids.unwrap();
    assert_eq!(pids.limit, 50);
    assert!(pids.current >= 1);
    assert!(st.blkio.is_some());
}

#[test]
fn v1_oom_event_is_reported() {
    if !v1_available() {
        return;
    }
    let cfg = v1_cfg();
    let mut g = Guard::default();
    let res = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(10 * MIB)
                .swap(10 * MIB)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let cg = Cgroup::create(&cfg, &unique(), Some(&res)).unwrap();
    g.cgroups.push(cg.clone());
    let mut watcher = cg.oom_watcher().unwrap();
    assert_eq!(watcher.oom_kill_count(), 0);
    let waiter = std::thread::spawn(move || {
        let r = watcher.wait();
        (r.map_err(|e| format!("{e:#}")), watcher)
    });
    // `tail` keeps an ever-growing line from /dev/zero in memory.
    g.children.push(gated_sh("exec tail /dev/zero"));
    cg.add_pid(g.children[0].id() as i32).unwrap();
    release(&mut g.children[0]);
    let status = g.children[0].wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let (r, watcher) = waiter.join().unwrap();
    assert_eq!(r, Ok(true));
    assert!(watcher.oom_kill_count() >= 1);
    assert!(cg.oom_kill_count() >= 1);
}

#[test]
fn v1_oom_monitor_reports_the_right_cgroup_on_one_thread() {
    if !v1_available() {
        return;
    }
    let cfg = v1_cfg();
    let mut g = Guard::default();
    let res = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(10 * MIB)
                .swap(10 * MIB)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let quiet = Cgroup::create(&cfg, &unique(), Some(&res)).unwrap();
    let hog = Cgroup::create(&cfg, &unique(), Some(&res)).unwrap();
    g.cgroups.push(quiet.clone());
    g.cgroups.push(hog.clone());
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let tx = std::sync::Mutex::new(tx);
    let monitor = engine::cgroups::OomMonitor::new(move |key: &str| {
        let _ = tx.lock().unwrap().send(key.to_string());
    })
    .unwrap();
    let t_quiet = monitor
        .register("quiet", quiet.oom_watcher().unwrap())
        .unwrap();
    monitor.register("hog", hog.oom_watcher().unwrap()).unwrap();
    assert_eq!(monitor.len(), 2);
    g.children.push(gated_sh("exec tail /dev/zero"));
    hog.add_pid(g.children[0].id() as i32).unwrap();
    release(&mut g.children[0]);
    g.children[0].wait().unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "hog");
    // Unregistering never waits; the other registration stays.
    monitor.unregister(t_quiet);
    assert_eq!(monitor.len(), 1);
    // A removed cgroup drops out by itself.
    hog.destroy().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !monitor.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the removed cgroup stayed registered"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn v1_oom_watcher_ends_when_cgroup_is_removed() {
    if !v1_available() {
        return;
    }
    let cfg = v1_cfg();
    let mut g = Guard::default();
    let cg = Cgroup::create(&cfg, &unique(), None).unwrap();
    g.cgroups.push(cg.clone());
    let mut watcher = cg.oom_watcher().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(watcher.wait().map_err(|e| format!("{e:#}")));
    });
    std::thread::sleep(Duration::from_millis(100));
    cg.destroy().unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), Ok(false));
}

#[test]
fn v1_device_whitelist() {
    if !v1_available() {
        return;
    }
    let cfg = v1_cfg();
    let mut g = Guard::default();
    let rules = vec![
        // What most runtimes send first: deny everything. Must not wipe the defaults.
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .unwrap(),
        LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(10i64)
            .minor(229i64)
            .access("rw")
            .build()
            .unwrap(),
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .typ(LinuxDeviceType::C)
            .major(1i64)
            .minor(9i64)
            .access("rwm")
            .build()
            .unwrap(),
    ];
    let res = LinuxResourcesBuilder::default()
        .devices(rules)
        .build()
        .unwrap();
    let cg = Cgroup::create(&cfg, &unique(), Some(&res)).unwrap();
    g.cgroups.push(cg.clone());
    let list = read(v1_file("devices", cg.path(), "devices.list"));
    let lines: Vec<&str> = list.lines().collect();
    assert!(!lines.contains(&"a *:* rwm"), "{list}");
    for want in [
        "c 1:3 rwm",
        "c 1:5 rwm",
        "c 10:229 rw",
        "c 136:* rwm",
        "c *:* m",
        "b *:* m",
    ] {
        assert!(lines.contains(&want), "{want} missing from {list}");
    }
    assert!(!lines.contains(&"c 1:9 rwm"), "{list}");

    // An allow-all rule opens everything.
    let all = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::A)
            .access("rwm")
            .build()
            .unwrap()])
        .build()
        .unwrap();
    cg.apply(&all, true).unwrap();
    assert_eq!(
        read(v1_file("devices", cg.path(), "devices.list")),
        "a *:* rwm"
    );
}

#[test]
fn v1_destroy_removes_every_dir() {
    if !v1_available() {
        return;
    }
    let cfg = v1_cfg();
    let mut g = Guard::default();
    let path = unique();
    let cg = Cgroup::create(&cfg, &path, None).unwrap();
    g.cgroups.push(cg.clone());
    // A sub-cgroup the container made for itself.
    std::fs::create_dir(v1_file("memory", &path, "sub")).unwrap();
    g.children.push(sleeper());
    cg.add_pid(g.children[0].id() as i32).unwrap();
    let mut child = g.children.pop().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let ctrls = [
        "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd",
    ];
    for c in ctrls {
        assert!(v1_file(c, &path, "").is_dir());
    }
    cg.destroy().unwrap();
    for c in ctrls {
        assert!(!v1_file(c, &path, "").exists(), "{c} still has {path}");
    }
    cg.destroy().unwrap();
    assert!(Cgroup::open(&cfg, &path).is_err());
}

#[test]
fn v1_widen_cpuset() {
    if !v1_available() {
        return;
    }
    let cfg = v1_cfg();
    let mut g = Guard::default();
    let parent = unique();
    let path = format!("{parent}/ctr");
    g.parents.push((cfg.clone(), parent.clone()));
    let res = LinuxResourcesBuilder::default()
        .cpu(LinuxCpuBuilder::default().cpus("0").build().unwrap())
        .build()
        .unwrap();
    let cg = Cgroup::create(&cfg, &path, Some(&res)).unwrap();
    g.cgroups.push(cg.clone());
    let online = read("/sys/devices/system/cpu/online");
    cg.widen_cpuset(&online, Some("0")).unwrap();
    assert_eq!(read(v1_file("cpuset", &parent, "cpuset.cpus")), online);
    assert_eq!(read(v1_file("cpuset", &path, "cpuset.cpus")), "0");
    cg.widen_cpuset(&online, None).unwrap();
    assert_eq!(read(v1_file("cpuset", &path, "cpuset.cpus")), online);
    assert_eq!(cg.memory_dir(), Some(v1_file("memory", &path, "")));
}
