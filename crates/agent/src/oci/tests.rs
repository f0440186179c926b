use super::*;
use ttrpc::Code;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn hook(path: &str, args: &[&str]) -> pb::Hook {
    let mut h = pb::Hook::new();
    h.Path = path.to_string();
    h.Args = strings(args);
    h.Env = strings(&["A=1"]);
    h.Timeout = 5;
    h
}

fn process() -> pb::Process {
    let mut p = pb::Process::new();
    p.Terminal = true;
    let mut b = pb::Box::new();
    b.Height = 24;
    b.Width = 80;
    p.ConsoleSize = MessageField::some(b);
    let mut u = pb::User::new();
    u.UID = 1000;
    u.GID = 100;
    u.AdditionalGids = vec![10, 20];
    u.Username = "alice".into();
    p.User = MessageField::some(u);
    p.Args = strings(&["/bin/sh", "-c", "true"]);
    p.Env = strings(&["PATH=/bin"]);
    p.Cwd = "/work".into();
    let mut c = pb::LinuxCapabilities::new();
    c.Bounding = strings(&["CAP_CHOWN", "CAP_KILL"]);
    c.Effective = strings(&["CAP_KILL"]);
    c.Inheritable = vec![];
    c.Permitted = strings(&["CAP_KILL", "CAP_SYS_ADMIN"]);
    c.Ambient = vec![];
    p.Capabilities = MessageField::some(c);
    let mut r = pb::POSIXRlimit::new();
    r.Type = "RLIMIT_NOFILE".into();
    r.Hard = 4096;
    r.Soft = 1024;
    p.Rlimits = vec![r];
    p.NoNewPrivileges = true;
    p.ApparmorProfile = "unconfined".into();
    p.OOMScoreAdj = -500;
    p.SelinuxLabel = "system_u:system_r:container_t:s0".into();
    p
}

fn resources() -> pb::LinuxResources {
    let mut r = pb::LinuxResources::new();
    let mut d = pb::LinuxDeviceCgroup::new();
    d.Allow = false;
    d.Type = "a".into();
    d.Major = -1;
    d.Minor = -1;
    d.Access = "rwm".into();
    let mut d2 = pb::LinuxDeviceCgroup::new();
    d2.Allow = true;
    d2.Type = "c".into();
    d2.Major = 1;
    d2.Minor = 3;
    d2.Access = "rw".into();
    r.Devices = vec![d, d2];
    let mut m = pb::LinuxMemory::new();
    m.Limit = -1;
    m.Reservation = 1 << 20;
    m.Swap = 1 << 30;
    m.Swappiness = 10;
    m.DisableOOMKiller = true;
    r.Memory = MessageField::some(m);
    let mut c = pb::LinuxCPU::new();
    c.Shares = 512;
    c.Quota = -1;
    c.Period = 100_000;
    c.Cpus = "0-1".into();
    c.Mems = "0".into();
    r.CPU = MessageField::some(c);
    let mut p = pb::LinuxPids::new();
    p.Limit = 100;
    r.Pids = MessageField::some(p);
    let mut b = pb::LinuxBlockIO::new();
    b.Weight = 500;
    let mut wd = pb::LinuxWeightDevice::new();
    wd.Major = 8;
    wd.Minor = 0;
    wd.Weight = 300;
    b.WeightDevice = vec![wd];
    let mut td = pb::LinuxThrottleDevice::new();
    td.Major = 8;
    td.Minor = 16;
    td.Rate = 1 << 20;
    b.ThrottleReadBpsDevice = vec![td.clone()];
    b.ThrottleWriteIOPSDevice = vec![td];
    r.BlockIO = MessageField::some(b);
    let mut h = pb::LinuxHugepageLimit::new();
    h.Pagesize = "2MB".into();
    h.Limit = 1 << 30;
    r.HugepageLimits = vec![h];
    let mut n = pb::LinuxNetwork::new();
    n.ClassID = 0x10001;
    let mut prio = pb::LinuxInterfacePriority::new();
    prio.Name = "eth0".into();
    prio.Priority = 5;
    n.Priorities = vec![prio];
    r.Network = MessageField::some(n);
    r
}

fn rich_spec() -> pb::Spec {
    let mut s = pb::Spec::new();
    s.Version = "1.1.0".into();
    s.Process = MessageField::some(process());
    let mut root = pb::Root::new();
    root.Path = "/run/kata/c1/rootfs".into();
    root.Readonly = true;
    s.Root = MessageField::some(root);
    s.Hostname = "box".into();
    let mut m = pb::Mount::new();
    m.destination = "/proc".into();
    m.source = "proc".into();
    m.type_ = "proc".into();
    m.options = strings(&["nosuid"]);
    s.Mounts = vec![m];
    let mut hooks = pb::Hooks::new();
    hooks.Prestart = vec![hook("/bin/pre", &["pre", "x"])];
    hooks.CreateRuntime = vec![hook("/bin/cr", &["cr"])];
    hooks.CreateContainer = vec![hook("/bin/cc", &["cc"])];
    hooks.StartContainer = vec![hook("/bin/sc", &["sc"])];
    hooks.Poststart = vec![hook("/bin/poststart", &["poststart"])];
    hooks.Poststop = vec![hook("/bin/poststop", &["poststop"])];
    s.Hooks = MessageField::some(hooks);
    s.Annotations.insert("io.kata.x".into(), "y".into());

    let mut l = pb::Linux::new();
    let mut idm = pb::LinuxIDMapping::new();
    idm.HostID = 100_000;
    idm.ContainerID = 0;
    idm.Size = 65536;
    l.UIDMappings = vec![idm.clone()];
    l.GIDMappings = vec![idm];
    l.Sysctl.insert("net.ipv4.ip_forward".into(), "1".into());
    l.Resources = MessageField::some(resources());
    l.CgroupsPath = "/kata/c1".into();
    l.Namespaces = ["mnt", "net", "ipc", "uts", "user", "pid", "cgroup", "time"]
        .iter()
        .map(|t| {
            let mut n = pb::LinuxNamespace::new();
            n.Type = t.to_string();
            if *t == "net" {
                n.Path = "/proc/1/ns/net".into();
            }
            n
        })
        .collect();
    let mut dev = pb::LinuxDevice::new();
    dev.Path = "/dev/fuse".into();
    dev.Type = "c".into();
    dev.Major = 10;
    dev.Minor = 229;
    dev.FileMode = 0o666;
    dev.UID = 0;
    dev.GID = 0;
    l.Devices = vec![dev];
    let mut sec = pb::LinuxSeccomp::new();
    sec.DefaultAction = "SCMP_ACT_ERRNO".into();
    sec.Architectures = strings(&["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64", "SCMP_ARCH_X86"]);
    sec.Flags = strings(&["SECCOMP_FILTER_FLAG_LOG"]);
    let mut sc = pb::LinuxSyscall::new();
    sc.Names = strings(&["read", "write"]);
    sc.Action = "SCMP_ACT_ALLOW".into();
    let mut arg = pb::LinuxSeccompArg::new();
    arg.Index = 1;
    arg.Value = 2;
    arg.ValueTwo = 3;
    arg.Op = "SCMP_CMP_MASKED_EQ".into();
    sc.Args = vec![arg];
    let mut sc2 = pb::LinuxSyscall::new();
    sc2.Names = strings(&["mount"]);
    sc2.Action = "SCMP_ACT_ERRNO".into();
    sc2.set_errnoret(1);
    sec.Syscalls = vec![sc, sc2];
    l.Seccomp = MessageField::some(sec);
    l.RootfsPropagation = "rslave".into();
    l.MaskedPaths = strings(&["/proc/kcore"]);
    l.ReadonlyPaths = strings(&["/proc/sys"]);
    l.MountLabel = "system_u:object_r:container_file_t:s0".into();
    s.Linux = MessageField::some(l);
    s
}

fn expect_invalid(r: Result<impl std::fmt::Debug>, needle: &str) {
    let err = r.expect_err("the conversion should fail");
    assert_eq!(err.code, Code::INVALID_ARGUMENT, "{}", err.message);
    assert!(
        err.message.contains(needle),
        "message {:?} should name {needle:?}",
        err.message
    );
}

#[test]
fn rich_spec_round_trip() {
    let p = rich_spec();
    let o = spec_from_proto(&p).unwrap();
    let back = spec_to_proto(&o);
    assert_eq!(back, p);
}

#[test]
fn rich_spec_oci_values() {
    let o = spec_from_proto(&rich_spec()).unwrap();
    let proc_ = o.process().as_ref().unwrap();
    assert_eq!(proc_.oom_score_adj(), Some(-500));
    let caps = proc_.capabilities().as_ref().unwrap();
    assert!(caps
        .bounding()
        .as_ref()
        .unwrap()
        .contains(&oci::Capability::Chown));
    assert!(caps.ambient().as_ref().unwrap().is_empty());
    let linux = o.linux().as_ref().unwrap();
    let ns: Vec<_> = linux
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| n.typ())
        .collect();
    assert_eq!(ns[0], oci::LinuxNamespaceType::Mount);
    assert_eq!(ns[7], oci::LinuxNamespaceType::Time);
    let seccomp = linux.seccomp().as_ref().unwrap();
    let syscalls = seccomp.syscalls().as_ref().unwrap();
    assert_eq!(syscalls[0].errno_ret(), None);
    assert_eq!(syscalls[1].errno_ret(), Some(1));
    assert_eq!(
        seccomp.architectures().as_ref().unwrap()[0],
        oci::Arch::ScmpArchX86_64
    );
    let dev = &linux.devices().as_ref().unwrap()[0];
    assert_eq!(dev.typ(), oci::LinuxDeviceType::C);
    assert_eq!(dev.file_mode(), Some(0o666));
}

#[test]
fn poststop_comes_from_poststop() {
    let o = spec_from_proto(&rich_spec()).unwrap();
    let hooks = o.hooks().as_ref().unwrap();
    let poststop = hooks.poststop().as_ref().unwrap();
    assert_eq!(poststop.len(), 1);
    assert_eq!(poststop[0].path(), &PathBuf::from("/bin/poststop"));
    assert_eq!(
        hooks.poststart().as_ref().unwrap()[0].path(),
        &PathBuf::from("/bin/poststart")
    );
}

#[test]
fn hook_without_args_gets_its_path() {
    let mut p = rich_spec();
    p.Hooks.as_mut().unwrap().Poststart = vec![hook("/bin/h", &[])];
    let o = spec_from_proto(&p).unwrap();
    let h = &o.hooks().as_ref().unwrap().poststart().as_ref().unwrap()[0];
    assert_eq!(h.args().as_ref().unwrap(), &strings(&["/bin/h"]));
}

#[test]
fn capability_name_forms() {
    let mut p = process();
    p.Capabilities.as_mut().unwrap().Bounding = strings(&["SYS_ADMIN", "\"CAP_NET_RAW\""]);
    let o = process_from_proto(&p).unwrap();
    let set = o
        .capabilities()
        .as_ref()
        .unwrap()
        .bounding()
        .clone()
        .unwrap();
    assert!(set.contains(&oci::Capability::SysAdmin));
    assert!(set.contains(&oci::Capability::NetRaw));
    assert_eq!(
        capability_names(&Some(set)),
        strings(&["CAP_NET_RAW", "CAP_SYS_ADMIN"])
    );
}

#[test]
fn oom_score_zero_is_passed_through() {
    let mut p = process();
    p.OOMScoreAdj = 0;
    assert_eq!(process_from_proto(&p).unwrap().oom_score_adj(), Some(0));
    p.OOMScoreAdj = i64::MAX;
    expect_invalid(process_from_proto(&p), "Process.OOMScoreAdj");
}

#[test]
fn rejects_bad_capability() {
    let mut p = rich_spec();
    let caps = p.Process.as_mut().unwrap().Capabilities.as_mut().unwrap();
    caps.Effective = strings(&["CAP_FLY"]);
    expect_invalid(spec_from_proto(&p), "Spec.Process.Capabilities.Effective");
    expect_invalid(spec_from_proto(&p), "CAP_FLY");
    // Names are case-sensitive.
    let mut proc_ = process();
    proc_.Capabilities.as_mut().unwrap().Ambient = strings(&["cap_kill"]);
    expect_invalid(process_from_proto(&proc_), "cap_kill");
}

#[test]
fn rejects_bad_rlimit() {
    let mut p = process();
    p.Rlimits[0].Type = "RLIMIT_BOGUS".into();
    expect_invalid(process_from_proto(&p), "Process.Rlimits.Type");
    expect_invalid(process_from_proto(&p), "RLIMIT_BOGUS");
}

#[test]
fn rejects_bad_device_type() {
    let mut p = rich_spec();
    p.Linux.as_mut().unwrap().Devices[0].Type = "x".into();
    expect_invalid(spec_from_proto(&p), "Linux.Devices.Type");
    p.Linux.as_mut().unwrap().Devices[0].Type = String::new();
    expect_invalid(spec_from_proto(&p), "Linux.Devices.Type");
    let mut r = resources();
    r.Devices[1].Type = "z".into();
    expect_invalid(resources_from_proto(&r), "Resources.Devices.Type");
}

#[test]
fn rejects_bad_namespace_type() {
    let mut p = rich_spec();
    p.Linux.as_mut().unwrap().Namespaces[2].Type = "bogus".into();
    expect_invalid(spec_from_proto(&p), "Linux.Namespaces.Type");
    expect_invalid(spec_from_proto(&p), "bogus");
}

#[test]
fn rejects_bad_seccomp_values() {
    let mut p = rich_spec();
    p.Linux
        .as_mut()
        .unwrap()
        .Seccomp
        .as_mut()
        .unwrap()
        .DefaultAction = "SCMP_ACT_NOPE".into();
    expect_invalid(spec_from_proto(&p), "Linux.Seccomp.DefaultAction");

    let mut p = rich_spec();
    p.Linux.as_mut().unwrap().Seccomp.as_mut().unwrap().Syscalls[0].Action = "".into();
    expect_invalid(spec_from_proto(&p), "Linux.Seccomp.Syscalls.Action");

    let mut p = rich_spec();
    p.Linux
        .as_mut()
        .unwrap()
        .Seccomp
        .as_mut()
        .unwrap()
        .Architectures = strings(&["SCMP_ARCH_Z80"]);
    expect_invalid(spec_from_proto(&p), "Linux.Seccomp.Architectures");

    let mut p = rich_spec();
    p.Linux.as_mut().unwrap().Seccomp.as_mut().unwrap().Flags = strings(&["FLAG"]);
    expect_invalid(spec_from_proto(&p), "Linux.Seccomp.Flags");

    let mut p = rich_spec();
    p.Linux.as_mut().unwrap().Seccomp.as_mut().unwrap().Syscalls[0].Args[0].Op = "EQ".into();
    expect_invalid(spec_from_proto(&p), "Linux.Seccomp.Syscalls.Args.Op");
}

#[test]
fn rejects_missing_root_and_process() {
    let mut p = rich_spec();
    p.Root = MessageField::none();
    expect_invalid(spec_from_proto(&p), "the spec has no root");
    let mut p = rich_spec();
    p.Process = MessageField::none();
    expect_invalid(spec_from_proto(&p), "Spec.Process");
}

#[test]
fn rejects_empty_args() {
    let mut p = rich_spec();
    p.Process.as_mut().unwrap().Args.clear();
    expect_invalid(spec_from_proto(&p), "Spec.Process.Args");
    let mut proc_ = process();
    proc_.Args.clear();
    expect_invalid(process_from_proto(&proc_), "Process.Args");
}

#[test]
fn missing_linux_and_resources_defaults() {
    let mut p = rich_spec();
    p.Linux = MessageField::none();
    let o = spec_from_proto(&p).unwrap();
    assert!(o.linux().as_ref().unwrap().namespaces().is_some());

    let mut p = rich_spec();
    p.Linux.as_mut().unwrap().Resources = MessageField::none();
    let o = spec_from_proto(&p).unwrap();
    assert_eq!(
        o.linux().as_ref().unwrap().resources(),
        &Some(oci::LinuxResources::default())
    );
}

#[test]
fn pids_limit_applied() {
    let r = resources_from_proto(&resources()).unwrap();
    assert_eq!(r.pids().unwrap().limit(), 100);
    let mut pr = resources();
    pr.Pids.as_mut().unwrap().Limit = 0;
    assert_eq!(
        resources_from_proto(&pr).unwrap().pids().unwrap().limit(),
        -1
    );
    pr.Pids.as_mut().unwrap().Limit = -1;
    assert_eq!(
        resources_from_proto(&pr).unwrap().pids().unwrap().limit(),
        -1
    );
    pr.Pids = MessageField::none();
    assert!(resources_from_proto(&pr).unwrap().pids().is_none());
}

#[test]
fn memory_and_cpu_values() {
    let r = resources_from_proto(&resources()).unwrap();
    let m = r.memory().unwrap();
    assert_eq!(m.limit(), Some(-1));
    assert_eq!(m.kernel(), None);
    assert_eq!(m.disable_oom_killer(), Some(true));
    let c = r.cpu().as_ref().unwrap();
    assert_eq!(c.quota(), Some(-1));
    assert_eq!(c.shares(), Some(512));
    assert_eq!(c.realtime_runtime(), None);
}

#[test]
fn device_rule_wildcards() {
    let mut pr = resources();
    pr.Devices[0].Type = String::new();
    pr.Devices[0].Access = String::new();
    pr.Devices[1].Minor = 0;
    let r = resources_from_proto(&pr).unwrap();
    let rules = r.devices().as_ref().unwrap();
    assert_eq!(rules[0].typ(), Some(oci::LinuxDeviceType::A));
    assert_eq!(rules[0].major(), None);
    assert_eq!(rules[0].minor(), None);
    assert_eq!(rules[0].access(), &None);
    assert_eq!(rules[1].major(), Some(1));
    assert_eq!(rules[1].minor(), None);
    assert_eq!(rules[1].to_string(), "c 1:* rw");
}

#[test]
fn huge_hugepage_limit_is_unlimited() {
    let mut pr = resources();
    pr.HugepageLimits[0].Limit = u64::MAX;
    let r = resources_from_proto(&pr).unwrap();
    assert_eq!(r.hugepage_limits().as_ref().unwrap()[0].limit(), -1);
}

#[test]
fn oversized_block_io_weight_rejected() {
    let mut pr = resources();
    pr.BlockIO.as_mut().unwrap().Weight = 70_000;
    expect_invalid(resources_from_proto(&pr), "Resources.BlockIO.Weight");
}

#[test]
fn default_spec_survives_to_proto_and_back() {
    // The library's default spec: every field kind the control tool may send.
    let o = oci::Spec::default();
    let p = spec_to_proto(&o);
    let again = spec_from_proto(&p).unwrap();
    let (a, b) = (
        again.process().as_ref().unwrap(),
        o.process().as_ref().unwrap(),
    );
    assert_eq!(a.args(), b.args());
    assert_eq!(a.env(), b.env());
    assert_eq!(a.cwd(), b.cwd());
    assert_eq!(a.capabilities(), b.capabilities());
    assert_eq!(a.rlimits(), b.rlimits());
    assert_eq!(again.mounts(), o.mounts());
    assert_eq!(
        again.linux().as_ref().unwrap().namespaces(),
        o.linux().as_ref().unwrap().namespaces()
    );
}

#[test]
fn stats_conversion() {
    use engine::cgroups as cg;
    let mut s = cg::Stats {
        cpu: Some(cg::CpuStats {
            cpu_usage: cg::CpuUsage {
                total_usage: 10,
                percpu_usage: vec![4, 6],
                usage_in_kernelmode: 3,
                usage_in_usermode: 7,
            },
            throttling_data: cg::ThrottlingData {
                periods: 1,
                throttled_periods: 2,
                throttled_time: 3,
            },
        }),
        memory: Some(cg::MemoryStats {
            cache: 5,
            usage: cg::MemoryData {
                usage: 1,
                max_usage: 2,
                failcnt: 3,
                limit: 4,
            },
            use_hierarchy: true,
            stats: [("rss".to_string(), 9)].into_iter().collect(),
            ..Default::default()
        }),
        pids: None,
        blkio: Some(cg::BlkioStats {
            io_service_bytes_recursive: vec![cg::BlkioStatsEntry {
                major: 8,
                minor: 0,
                op: "read".into(),
                value: 42,
            }],
            ..Default::default()
        }),
        hugetlb: HashMap::new(),
    };
    s.hugetlb.insert(
        "2MB".into(),
        cg::HugetlbStats {
            usage: 1,
            max_usage: 2,
            failcnt: 0,
        },
    );
    let p = stats_to_proto(&s);
    assert_eq!(p.cpu_stats.cpu_usage.percpu_usage, vec![4, 6]);
    assert_eq!(p.cpu_stats.throttling_data.throttled_time, 3);
    assert_eq!(p.memory_stats.usage.limit, 4);
    assert_eq!(p.memory_stats.stats["rss"], 9);
    assert!(p.memory_stats.use_hierarchy);
    assert!(p.pids_stats.is_none());
    assert_eq!(p.blkio_stats.io_service_bytes_recursive[0].value, 42);
    assert_eq!(p.hugetlb_stats["2MB"].max_usage, 2);
}
