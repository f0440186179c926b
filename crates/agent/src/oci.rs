//! Conversion between the agent API's protobuf OCI messages (`protocols::oci`) and the `oci-spec`
//! runtime types the engine works with, plus cgroup statistics into their protobuf reply.
//!
//! Protobuf 3 cannot tell an absent scalar from its zero value, so zero or empty protobuf values
//! mean "not set" unless a field's documentation below says otherwise. Differences from the
//! upstream agent: every unknown name (capability, rlimit, device type, namespace, seccomp
//! action/arch/flag/operator) is an INVALID_ARGUMENT error naming the field instead of a crash or
//! a silent substitution, `Root`, `Process` and a non-empty `Args` are required, Poststop hooks come
//! from `Poststop`, a seccomp rule without errnoRet leaves it unset, an OOM score of 0 is passed
//! through, and resources keep `-1` ("unlimited") values and apply pids limits.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;

use oci_spec::runtime as oci;
use protobuf::MessageField;
use protocols::agent as pba;
use protocols::oci as pb;

use crate::error::{AgentError, Result};

/// Converts the protobuf spec of CreateContainer into an OCI runtime spec.
pub fn spec_from_proto(p: &pb::Spec) -> Result<oci::Spec> {
    let process = p
        .Process
        .as_ref()
        .ok_or_else(|| AgentError::invalid_argument("the spec has no process (Spec.Process)"))?;
    let root = p
        .Root
        .as_ref()
        .ok_or_else(|| AgentError::invalid_argument("the spec has no root (Spec.Root)"))?;

    let mut spec = oci::Spec::default();
    spec.set_version(p.Version.clone());
    spec.set_process(Some(process_at(process, "Spec.Process")?));
    let mut oci_root = oci::Root::default();
    oci_root
        .set_path(PathBuf::from(&root.Path))
        .set_readonly(Some(root.Readonly));
    spec.set_root(Some(oci_root));
    spec.set_hostname(non_empty(&p.Hostname));
    spec.set_domainname(None);
    let mounts: Vec<oci::Mount> = p.Mounts.iter().map(mount_from_proto).collect();
    spec.set_mounts(non_empty_vec(mounts));
    spec.set_hooks(p.Hooks.as_ref().map(hooks_from_proto));
    spec.set_annotations(Some(
        p.Annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    ));
    spec.set_linux(Some(match p.Linux.as_ref() {
        Some(linux) => linux_from_proto(linux)?,
        // Like upstream: the library's default Linux section (default namespaces, masked and
        // read-only paths, empty resources).
        None => oci::Linux::default(),
    }));
    spec.set_solaris(None);
    spec.set_windows(None);
    spec.set_vm(None);
    spec.set_zos(None);
    spec.set_uid_mappings(None);
    spec.set_gid_mappings(None);
    Ok(spec)
}

/// Converts the protobuf process of ExecProcess (or of a spec) into an OCI process.
pub fn process_from_proto(p: &pb::Process) -> Result<oci::Process> {
    process_at(p, "Process")
}

/// Converts protobuf cgroup resources (CreateContainer's `Linux.Resources`, UpdateContainer).
pub fn resources_from_proto(r: &pb::LinuxResources) -> Result<oci::LinuxResources> {
    resources_at(r, "Resources")
}

fn invalid(field: &str, kind: &str, value: &str) -> AgentError {
    AgentError::invalid_argument(format!("{field}: invalid {kind} {value:?}"))
}

/// Maps a builder failure (which cannot happen for the builders used here: every field has a
/// default) onto an internal error instead of a panic.
fn built<T>(r: std::result::Result<T, oci_spec::OciSpecError>, what: &str) -> Result<T> {
    r.map_err(|e| AgentError::internal(format!("cannot build the OCI {what}: {e}")))
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn non_empty_vec<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

fn process_at(p: &pb::Process, field: &str) -> Result<oci::Process> {
    if p.Args.is_empty() {
        return Err(AgentError::invalid_argument(format!(
            "{field}.Args is empty: the process needs a command"
        )));
    }
    let mut out = oci::Process::default();
    out.set_terminal(Some(p.Terminal));
    out.set_console_size(match p.ConsoleSize.as_ref() {
        Some(b) => Some(built(
            oci::BoxBuilder::default()
                .height(u64::from(b.Height))
                .width(u64::from(b.Width))
                .build(),
            "console size",
        )?),
        None => None,
    });
    let mut user = oci::User::default();
    if let Some(u) = p.User.as_ref() {
        user.set_uid(u.UID);
        user.set_gid(u.GID);
        user.set_additional_gids(Some(u.AdditionalGids.clone()));
        user.set_username(non_empty(&u.Username));
    }
    out.set_user(user);
    out.set_args(Some(p.Args.clone()));
    out.set_command_line(None);
    out.set_env(non_empty_vec(p.Env.clone()));
    out.set_cwd(PathBuf::from(&p.Cwd));
    out.set_capabilities(match p.Capabilities.as_ref() {
        Some(c) => Some(capabilities_from_proto(
            c,
            &format!("{field}.Capabilities"),
        )?),
        None => None,
    });
    let rlimits = p
        .Rlimits
        .iter()
        .map(|r| rlimit_from_proto(r, &format!("{field}.Rlimits")))
        .collect::<Result<Vec<_>>>()?;
    out.set_rlimits(non_empty_vec(rlimits));
    out.set_no_new_privileges(Some(p.NoNewPrivileges));
    out.set_apparmor_profile(non_empty(&p.ApparmorProfile));
    let oom = i32::try_from(p.OOMScoreAdj).map_err(|_| {
        invalid(
            &format!("{field}.OOMScoreAdj"),
            "value",
            &p.OOMScoreAdj.to_string(),
        )
    })?;
    out.set_oom_score_adj(Some(oom));
    out.set_selinux_label(non_empty(&p.SelinuxLabel));
    out.set_io_priority(None);
    out.set_scheduler(None);
    out.set_exec_cpu_affinity(None);
    Ok(out)
}

/// Parses a capability name given as `CAP_X`, `X` or either JSON-quoted.
fn capability_from_name(name: &str, field: &str) -> Result<oci::Capability> {
    let bare = name.trim_matches('"');
    let bare = bare.strip_prefix("CAP_").unwrap_or(bare);
    oci::Capability::from_str(bare).map_err(|_| invalid(field, "capability", name))
}

fn capability_set(names: &[String], field: &str) -> Result<oci::Capabilities> {
    names
        .iter()
        .map(|n| capability_from_name(n, field))
        .collect()
}

fn capabilities_from_proto(
    c: &pb::LinuxCapabilities,
    field: &str,
) -> Result<oci::LinuxCapabilities> {
    let mut caps = oci::LinuxCapabilities::default();
    caps.set_bounding(Some(capability_set(
        &c.Bounding,
        &format!("{field}.Bounding"),
    )?))
    .set_effective(Some(capability_set(
        &c.Effective,
        &format!("{field}.Effective"),
    )?))
    .set_inheritable(Some(capability_set(
        &c.Inheritable,
        &format!("{field}.Inheritable"),
    )?))
    .set_permitted(Some(capability_set(
        &c.Permitted,
        &format!("{field}.Permitted"),
    )?))
    .set_ambient(Some(capability_set(
        &c.Ambient,
        &format!("{field}.Ambient"),
    )?));
    Ok(caps)
}

fn rlimit_from_proto(r: &pb::POSIXRlimit, field: &str) -> Result<oci::PosixRlimit> {
    let typ = oci::PosixRlimitType::from_str(&r.Type)
        .map_err(|_| invalid(&format!("{field}.Type"), "rlimit type", &r.Type))?;
    built(
        oci::PosixRlimitBuilder::default()
            .typ(typ)
            .hard(r.Hard)
            .soft(r.Soft)
            .build(),
        "rlimit",
    )
}

fn mount_from_proto(m: &pb::Mount) -> oci::Mount {
    let mut out = oci::Mount::default();
    out.set_destination(PathBuf::from(&m.destination))
        .set_typ(non_empty(&m.type_))
        .set_source(non_empty(&m.source).map(PathBuf::from))
        .set_options(non_empty_vec(m.options.clone()));
    out
}

fn hook_from_proto(h: &pb::Hook) -> oci::Hook {
    let mut out = oci::Hook::default();
    // A hook without arguments runs with argv[0] = its path.
    let args = if h.Args.is_empty() {
        vec![h.Path.clone()]
    } else {
        h.Args.clone()
    };
    out.set_path(PathBuf::from(&h.Path))
        .set_args(Some(args))
        .set_env(non_empty_vec(h.Env.clone()))
        .set_timeout((h.Timeout > 0).then_some(h.Timeout));
    out
}

fn hook_list(hooks: &[pb::Hook]) -> Option<Vec<oci::Hook>> {
    non_empty_vec(hooks.iter().map(hook_from_proto).collect())
}

#[allow(deprecated)] // `prestart` is deprecated in the OCI spec but still part of the API.
fn hooks_from_proto(h: &pb::Hooks) -> oci::Hooks {
    let mut out = oci::Hooks::default();
    out.set_prestart(hook_list(&h.Prestart))
        .set_create_runtime(hook_list(&h.CreateRuntime))
        .set_create_container(hook_list(&h.CreateContainer))
        .set_start_container(hook_list(&h.StartContainer))
        .set_poststart(hook_list(&h.Poststart))
        .set_poststop(hook_list(&h.Poststop));
    out
}

fn id_mappings(m: &[pb::LinuxIDMapping]) -> Result<Option<Vec<oci::LinuxIdMapping>>> {
    let v = m
        .iter()
        .map(|m| {
            built(
                oci::LinuxIdMappingBuilder::default()
                    .host_id(m.HostID)
                    .container_id(m.ContainerID)
                    .size(m.Size)
                    .build(),
                "id mapping",
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(non_empty_vec(v))
}

fn namespace_from_proto(n: &pb::LinuxNamespace) -> Result<oci::LinuxNamespace> {
    let typ = oci::LinuxNamespaceType::try_from(n.Type.as_str())
        .map_err(|_| invalid("Linux.Namespaces.Type", "namespace type", &n.Type))?;
    let mut out = oci::LinuxNamespace::default();
    out.set_typ(typ)
        .set_path(non_empty(&n.Path).map(PathBuf::from));
    Ok(out)
}

fn device_type(s: &str, field: &str) -> Result<oci::LinuxDeviceType> {
    oci::LinuxDeviceType::from_str(s).map_err(|_| invalid(field, "device type", s))
}

fn device_from_proto(d: &pb::LinuxDevice) -> Result<oci::LinuxDevice> {
    let mut out = oci::LinuxDevice::default();
    out.set_path(PathBuf::from(&d.Path))
        .set_typ(device_type(&d.Type, "Linux.Devices.Type")?)
        .set_major(d.Major)
        .set_minor(d.Minor)
        .set_file_mode(Some(d.FileMode))
        .set_uid(Some(d.UID))
        .set_gid(Some(d.GID));
    Ok(out)
}

fn seccomp_from_proto(s: &pb::LinuxSeccomp) -> Result<oci::LinuxSeccomp> {
    let field = "Linux.Seccomp";
    let action = |a: &str, f: &str| {
        oci::LinuxSeccompAction::from_str(a).map_err(|_| invalid(f, "seccomp action", a))
    };
    let arches = s
        .Architectures
        .iter()
        .map(|a| {
            oci::Arch::from_str(a)
                .map_err(|_| invalid(&format!("{field}.Architectures"), "seccomp architecture", a))
        })
        .collect::<Result<Vec<_>>>()?;
    let flags = s
        .Flags
        .iter()
        .map(|f| {
            oci::LinuxSeccompFilterFlag::from_str(f)
                .map_err(|_| invalid(&format!("{field}.Flags"), "seccomp flag", f))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut syscalls = Vec::with_capacity(s.Syscalls.len());
    for sc in &s.Syscalls {
        let mut args = Vec::with_capacity(sc.Args.len());
        for a in &sc.Args {
            let op = oci::LinuxSeccompOperator::from_str(&a.Op).map_err(|_| {
                invalid(
                    &format!("{field}.Syscalls.Args.Op"),
                    "seccomp operator",
                    &a.Op,
                )
            })?;
            let index = usize::try_from(a.Index).map_err(|_| {
                invalid(
                    &format!("{field}.Syscalls.Args.Index"),
                    "value",
                    &a.Index.to_string(),
                )
            })?;
            args.push(built(
                oci::LinuxSeccompArgBuilder::default()
                    .index(index)
                    .value(a.Value)
                    .value_two(a.ValueTwo)
                    .op(op)
                    .build(),
                "seccomp argument",
            )?);
        }
        let mut out = oci::LinuxSyscall::default();
        out.set_names(sc.Names.clone())
            .set_action(action(&sc.Action, &format!("{field}.Syscalls.Action"))?)
            // Without errnoRet the engine uses its default (EPERM), never 0.
            .set_errno_ret(sc.has_errnoret().then(|| sc.errnoret()))
            .set_args(non_empty_vec(args));
        syscalls.push(out);
    }
    let mut out = oci::LinuxSeccomp::default();
    out.set_default_action(action(&s.DefaultAction, &format!("{field}.DefaultAction"))?)
        .set_default_errno_ret(None)
        .set_architectures(non_empty_vec(arches))
        .set_flags(non_empty_vec(flags))
        .set_listener_path(None)
        .set_listener_metadata(None)
        .set_syscalls(non_empty_vec(syscalls));
    Ok(out)
}

fn linux_from_proto(l: &pb::Linux) -> Result<oci::Linux> {
    let mut out = oci::Linux::default();
    out.set_net_devices(None)
        .set_uid_mappings(id_mappings(&l.UIDMappings)?)
        .set_gid_mappings(id_mappings(&l.GIDMappings)?)
        .set_sysctl((!l.Sysctl.is_empty()).then(|| {
            l.Sysctl
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>()
        }))
        .set_resources(Some(match l.Resources.as_ref() {
            Some(r) => resources_at(r, "Linux.Resources")?,
            None => oci::LinuxResources::default(),
        }))
        .set_cgroups_path(non_empty(&l.CgroupsPath).map(PathBuf::from))
        .set_namespaces(non_empty_vec(
            l.Namespaces
                .iter()
                .map(namespace_from_proto)
                .collect::<Result<Vec<_>>>()?,
        ))
        .set_devices(non_empty_vec(
            l.Devices
                .iter()
                .map(device_from_proto)
                .collect::<Result<Vec<_>>>()?,
        ))
        .set_seccomp(match l.Seccomp.as_ref() {
            Some(s) => Some(seccomp_from_proto(s)?),
            None => None,
        })
        .set_rootfs_propagation(non_empty(&l.RootfsPropagation))
        .set_masked_paths(non_empty_vec(l.MaskedPaths.clone()))
        .set_readonly_paths(non_empty_vec(l.ReadonlyPaths.clone()))
        .set_mount_label(non_empty(&l.MountLabel))
        .set_intel_rdt(
            l.IntelRdt
                .as_ref()
                .and_then(|r| non_empty(&r.L3CacheSchema))
                .map(|schema| {
                    let mut rdt = oci::LinuxIntelRdt::default();
                    rdt.set_l3_cache_schema(Some(schema));
                    rdt
                }),
        )
        .set_memory_policy(None)
        .set_personality(None)
        .set_time_offsets(None);
    Ok(out)
}

/// A protobuf device number: zero or negative means "any" (`*`), since proto3 cannot send an
/// absent number and runtimes send both 0 and -1 for a wildcard.
fn device_number(n: i64) -> Option<i64> {
    (n > 0).then_some(n)
}

fn u16_field(v: u32, field: &str) -> Result<Option<u16>> {
    if v == 0 {
        return Ok(None);
    }
    u16::try_from(v)
        .map(Some)
        .map_err(|_| invalid(field, "value", &v.to_string()))
}

fn throttle_list(
    list: &[pb::LinuxThrottleDevice],
) -> Result<Option<Vec<oci::LinuxThrottleDevice>>> {
    let v = list
        .iter()
        .map(|d| {
            built(
                oci::LinuxThrottleDeviceBuilder::default()
                    .major(d.Major)
                    .minor(d.Minor)
                    .rate(d.Rate)
                    .build(),
                "throttle device",
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(non_empty_vec(v))
}

fn block_io_from_proto(b: &pb::LinuxBlockIO, field: &str) -> Result<oci::LinuxBlockIo> {
    let mut weight_devices = Vec::with_capacity(b.WeightDevice.len());
    for d in &b.WeightDevice {
        let mut builder = oci::LinuxWeightDeviceBuilder::default()
            .major(d.Major)
            .minor(d.Minor);
        if let Some(w) = u16_field(d.Weight, &format!("{field}.WeightDevice.Weight"))? {
            builder = builder.weight(w);
        }
        if let Some(w) = u16_field(d.LeafWeight, &format!("{field}.WeightDevice.LeafWeight"))? {
            builder = builder.leaf_weight(w);
        }
        weight_devices.push(built(builder.build(), "weight device")?);
    }
    let mut out = oci::LinuxBlockIo::default();
    out.set_weight(u16_field(b.Weight, &format!("{field}.Weight"))?)
        .set_leaf_weight(u16_field(b.LeafWeight, &format!("{field}.LeafWeight"))?)
        .set_weight_device(non_empty_vec(weight_devices))
        .set_throttle_read_bps_device(throttle_list(&b.ThrottleReadBpsDevice)?)
        .set_throttle_write_bps_device(throttle_list(&b.ThrottleWriteBpsDevice)?)
        .set_throttle_read_iops_device(throttle_list(&b.ThrottleReadIOPSDevice)?)
        .set_throttle_write_iops_device(throttle_list(&b.ThrottleWriteIOPSDevice)?);
    Ok(out)
}

fn resources_at(r: &pb::LinuxResources, field: &str) -> Result<oci::LinuxResources> {
    let nz = |v: i64| (v != 0).then_some(v);
    let nzu = |v: u64| (v != 0).then_some(v);

    let mut devices = Vec::with_capacity(r.Devices.len());
    for d in &r.Devices {
        let typ = if d.Type.is_empty() {
            oci::LinuxDeviceType::A
        } else {
            device_type(&d.Type, &format!("{field}.Devices.Type"))?
        };
        let mut rule = oci::LinuxDeviceCgroup::default();
        rule.set_allow(d.Allow)
            .set_typ(Some(typ))
            .set_major(device_number(d.Major))
            .set_minor(device_number(d.Minor))
            .set_access(non_empty(&d.Access));
        devices.push(rule);
    }

    let memory = r.Memory.as_ref().map(|m| {
        let mut out = oci::LinuxMemory::default();
        // Non-zero values pass through, -1 ("unlimited") included.
        out.set_limit(nz(m.Limit))
            .set_reservation(nz(m.Reservation))
            .set_swap(nz(m.Swap))
            .set_kernel(nz(m.Kernel))
            .set_kernel_tcp(nz(m.KernelTCP))
            .set_swappiness(nzu(m.Swappiness))
            .set_disable_oom_killer(m.DisableOOMKiller.then_some(true));
        out
    });

    let cpu = r.CPU.as_ref().map(|c| {
        let mut out = oci::LinuxCpu::default();
        out.set_shares(nzu(c.Shares))
            .set_quota(nz(c.Quota))
            .set_period(nzu(c.Period))
            .set_realtime_runtime(nz(c.RealtimeRuntime))
            .set_realtime_period(nzu(c.RealtimePeriod))
            .set_cpus(non_empty(&c.Cpus))
            .set_mems(non_empty(&c.Mems));
        out
    });

    let pids = r.Pids.as_ref().map(|p| {
        let mut out = oci::LinuxPids::default();
        // 0 and negative values mean "no limit", which OCI spells -1.
        out.set_limit(if p.Limit > 0 { p.Limit } else { -1 });
        out
    });

    let block_io = match r.BlockIO.as_ref() {
        Some(b) => Some(block_io_from_proto(b, &format!("{field}.BlockIO"))?),
        None => None,
    };

    let mut hugepages = Vec::with_capacity(r.HugepageLimits.len());
    for h in r.HugepageLimits.iter() {
        // A limit beyond i64 (u64::MAX in practice) can only mean "unlimited", OCI's -1.
        let limit = i64::try_from(h.Limit).unwrap_or(-1);
        let mut out = oci::LinuxHugepageLimit::default();
        out.set_page_size(h.Pagesize.clone()).set_limit(limit);
        hugepages.push(out);
    }

    let network = r.Network.as_ref().map(|n| {
        let priorities: Vec<_> = n
            .Priorities
            .iter()
            .map(|p| {
                let mut out = oci::LinuxInterfacePriority::default();
                out.set_name(p.Name.clone()).set_priority(p.Priority);
                out
            })
            .collect();
        let mut out = oci::LinuxNetwork::default();
        out.set_class_id((n.ClassID != 0).then_some(n.ClassID))
            .set_priorities(non_empty_vec(priorities));
        out
    });

    let mut out = oci::LinuxResources::default();
    out.set_devices(non_empty_vec(devices))
        .set_memory(memory)
        .set_cpu(cpu)
        .set_pids(pids)
        .set_block_io(block_io)
        .set_hugepage_limits(non_empty_vec(hugepages))
        .set_network(network)
        .set_rdma(None)
        .set_unified(None);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Statistics

fn memory_data(d: &engine::cgroups::MemoryData) -> pba::MemoryData {
    let mut out = pba::MemoryData::new();
    out.usage = d.usage;
    out.max_usage = d.max_usage;
    out.failcnt = d.failcnt;
    out.limit = d.limit;
    out
}

fn blkio_entries(list: &[engine::cgroups::BlkioStatsEntry]) -> Vec<pba::BlkioStatsEntry> {
    list.iter()
        .map(|e| {
            let mut out = pba::BlkioStatsEntry::new();
            out.major = e.major;
            out.minor = e.minor;
            out.op = e.op.clone();
            out.value = e.value;
            out
        })
        .collect()
}

/// Converts the engine's cgroup statistics into the StatsContainer reply's `cgroup_stats`; a
/// controller the engine could not read stays an unset sub-message.
pub fn stats_to_proto(s: &engine::cgroups::Stats) -> pba::CgroupStats {
    let mut out = pba::CgroupStats::new();
    out.cpu_stats = match &s.cpu {
        Some(c) => {
            let mut usage = pba::CpuUsage::new();
            usage.total_usage = c.cpu_usage.total_usage;
            usage.percpu_usage = c.cpu_usage.percpu_usage.clone();
            usage.usage_in_kernelmode = c.cpu_usage.usage_in_kernelmode;
            usage.usage_in_usermode = c.cpu_usage.usage_in_usermode;
            let mut throttling = pba::ThrottlingData::new();
            throttling.periods = c.throttling_data.periods;
            throttling.throttled_periods = c.throttling_data.throttled_periods;
            throttling.throttled_time = c.throttling_data.throttled_time;
            let mut cpu = pba::CpuStats::new();
            cpu.cpu_usage = MessageField::some(usage);
            cpu.throttling_data = MessageField::some(throttling);
            MessageField::some(cpu)
        }
        None => MessageField::none(),
    };
    out.memory_stats = match &s.memory {
        Some(m) => {
            let mut mem = pba::MemoryStats::new();
            mem.cache = m.cache;
            mem.usage = MessageField::some(memory_data(&m.usage));
            mem.swap_usage = MessageField::some(memory_data(&m.swap_usage));
            mem.kernel_usage = MessageField::some(memory_data(&m.kernel_usage));
            mem.use_hierarchy = m.use_hierarchy;
            mem.stats = m.stats.clone();
            MessageField::some(mem)
        }
        None => MessageField::none(),
    };
    out.pids_stats = match &s.pids {
        Some(p) => {
            let mut pids = pba::PidsStats::new();
            pids.current = p.current;
            pids.limit = p.limit;
            MessageField::some(pids)
        }
        None => MessageField::none(),
    };
    out.blkio_stats = match &s.blkio {
        Some(b) => {
            let mut blkio = pba::BlkioStats::new();
            blkio.io_service_bytes_recursive = blkio_entries(&b.io_service_bytes_recursive);
            blkio.io_serviced_recursive = blkio_entries(&b.io_serviced_recursive);
            blkio.io_queued_recursive = blkio_entries(&b.io_queued_recursive);
            blkio.io_service_time_recursive = blkio_entries(&b.io_service_time_recursive);
            blkio.io_wait_time_recursive = blkio_entries(&b.io_wait_time_recursive);
            blkio.io_merged_recursive = blkio_entries(&b.io_merged_recursive);
            blkio.io_time_recursive = blkio_entries(&b.io_time_recursive);
            blkio.sectors_recursive = blkio_entries(&b.sectors_recursive);
            MessageField::some(blkio)
        }
        None => MessageField::none(),
    };
    out.hugetlb_stats = s
        .hugetlb
        .iter()
        .map(|(size, h)| {
            let mut stats = pba::HugetlbStats::new();
            stats.usage = h.usage;
            stats.max_usage = h.max_usage;
            stats.failcnt = h.failcnt;
            (size.clone(), stats)
        })
        .collect();
    out
}

// ---------------------------------------------------------------------------------------------
// OCI → protobuf (control tool, tests)

/// Converts an OCI spec into the protobuf spec sent by CreateContainer. Fields the protobuf API
/// has no room for (domainname, scheduler, personality, ...) are dropped.
// Used by tests and kept for callers that send specs (control tool, UpdateContainer clients).
#[allow(dead_code)]
pub fn spec_to_proto(s: &oci::Spec) -> pb::Spec {
    let mut out = pb::Spec::new();
    out.Version = s.version().clone();
    out.Process = s.process().as_ref().map(process_to_proto).into();
    out.Root = s
        .root()
        .as_ref()
        .map(|r| {
            let mut root = pb::Root::new();
            root.Path = r.path().to_string_lossy().into_owned();
            root.Readonly = r.readonly().unwrap_or(false);
            root
        })
        .into();
    out.Hostname = s.hostname().clone().unwrap_or_default();
    out.Mounts = s
        .mounts()
        .iter()
        .flatten()
        .map(|m| {
            let mut pm = pb::Mount::new();
            pm.destination = m.destination().to_string_lossy().into_owned();
            pm.source = m
                .source()
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            pm.type_ = m.typ().clone().unwrap_or_default();
            pm.options = m.options().clone().unwrap_or_default();
            pm
        })
        .collect();
    out.Hooks = s.hooks().as_ref().map(hooks_to_proto).into();
    out.Annotations = s.annotations().clone().unwrap_or_default();
    out.Linux = s.linux().as_ref().map(linux_to_proto).into();
    out
}

fn capability_names(set: &Option<oci::Capabilities>) -> Vec<String> {
    let mut names: Vec<String> = set.iter().flatten().map(|c| format!("CAP_{c}")).collect();
    names.sort();
    names
}

/// Converts an OCI process into its protobuf message (ExecProcess, CreateContainer).
// Used by tests and kept for callers that send specs (control tool, UpdateContainer clients).
#[allow(dead_code)]
pub fn process_to_proto(p: &oci::Process) -> pb::Process {
    let mut out = pb::Process::new();
    out.Terminal = p.terminal().unwrap_or(false);
    out.ConsoleSize = p
        .console_size()
        .map(|b| {
            let mut pbox = pb::Box::new();
            pbox.Height = u32::try_from(b.height()).unwrap_or(u32::MAX);
            pbox.Width = u32::try_from(b.width()).unwrap_or(u32::MAX);
            pbox
        })
        .into();
    let mut user = pb::User::new();
    user.UID = p.user().uid();
    user.GID = p.user().gid();
    user.AdditionalGids = p.user().additional_gids().clone().unwrap_or_default();
    user.Username = p.user().username().clone().unwrap_or_default();
    out.User = MessageField::some(user);
    out.Args = p.args().clone().unwrap_or_default();
    out.Env = p.env().clone().unwrap_or_default();
    out.Cwd = p.cwd().to_string_lossy().into_owned();
    out.Capabilities = p
        .capabilities()
        .as_ref()
        .map(|c| {
            let mut caps = pb::LinuxCapabilities::new();
            caps.Bounding = capability_names(c.bounding());
            caps.Effective = capability_names(c.effective());
            caps.Inheritable = capability_names(c.inheritable());
            caps.Permitted = capability_names(c.permitted());
            caps.Ambient = capability_names(c.ambient());
            caps
        })
        .into();
    out.Rlimits = p
        .rlimits()
        .iter()
        .flatten()
        .map(|r| {
            let mut rl = pb::POSIXRlimit::new();
            rl.Type = r.typ().to_string();
            rl.Hard = r.hard();
            rl.Soft = r.soft();
            rl
        })
        .collect();
    out.NoNewPrivileges = p.no_new_privileges().unwrap_or(false);
    out.ApparmorProfile = p.apparmor_profile().clone().unwrap_or_default();
    out.OOMScoreAdj = i64::from(p.oom_score_adj().unwrap_or(0));
    out.SelinuxLabel = p.selinux_label().clone().unwrap_or_default();
    out
}

fn hooks_list_to_proto(list: &Option<Vec<oci::Hook>>) -> Vec<pb::Hook> {
    list.iter()
        .flatten()
        .map(|h| {
            let mut out = pb::Hook::new();
            out.Path = h.path().to_string_lossy().into_owned();
            out.Args = h.args().clone().unwrap_or_default();
            out.Env = h.env().clone().unwrap_or_default();
            out.Timeout = h.timeout().unwrap_or(0);
            out
        })
        .collect()
}

#[allow(deprecated)] // `prestart` is deprecated in the OCI spec but still part of the API.
fn hooks_to_proto(h: &oci::Hooks) -> pb::Hooks {
    let mut out = pb::Hooks::new();
    out.Prestart = hooks_list_to_proto(h.prestart());
    out.CreateRuntime = hooks_list_to_proto(h.create_runtime());
    out.CreateContainer = hooks_list_to_proto(h.create_container());
    out.StartContainer = hooks_list_to_proto(h.start_container());
    out.Poststart = hooks_list_to_proto(h.poststart());
    out.Poststop = hooks_list_to_proto(h.poststop());
    out
}

fn id_mappings_to_proto(m: &Option<Vec<oci::LinuxIdMapping>>) -> Vec<pb::LinuxIDMapping> {
    m.iter()
        .flatten()
        .map(|m| {
            let mut out = pb::LinuxIDMapping::new();
            out.HostID = m.host_id();
            out.ContainerID = m.container_id();
            out.Size = m.size();
            out
        })
        .collect()
}

fn seccomp_to_proto(s: &oci::LinuxSeccomp) -> pb::LinuxSeccomp {
    let mut out = pb::LinuxSeccomp::new();
    out.DefaultAction = s.default_action().to_string();
    out.Architectures = s
        .architectures()
        .iter()
        .flatten()
        .map(|a| a.to_string())
        .collect();
    out.Flags = s.flags().iter().flatten().map(|f| f.to_string()).collect();
    out.Syscalls = s
        .syscalls()
        .iter()
        .flatten()
        .map(|sc| {
            let mut psc = pb::LinuxSyscall::new();
            psc.Names = sc.names().clone();
            psc.Action = sc.action().to_string();
            if let Some(errno) = sc.errno_ret() {
                psc.set_errnoret(errno);
            }
            psc.Args = sc
                .args()
                .iter()
                .flatten()
                .map(|a| {
                    let mut pa = pb::LinuxSeccompArg::new();
                    pa.Index = a.index() as u64;
                    pa.Value = a.value();
                    pa.ValueTwo = a.value_two().unwrap_or(0);
                    pa.Op = a.op().to_string();
                    pa
                })
                .collect();
            psc
        })
        .collect();
    out
}

fn linux_to_proto(l: &oci::Linux) -> pb::Linux {
    let mut out = pb::Linux::new();
    out.UIDMappings = id_mappings_to_proto(l.uid_mappings());
    out.GIDMappings = id_mappings_to_proto(l.gid_mappings());
    out.Sysctl = l.sysctl().clone().unwrap_or_default();
    out.Resources = l.resources().as_ref().map(resources_to_proto).into();
    out.CgroupsPath = l
        .cgroups_path()
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.Namespaces = l
        .namespaces()
        .iter()
        .flatten()
        .map(|n| {
            let mut pn = pb::LinuxNamespace::new();
            pn.Type = n.typ().to_string();
            pn.Path = n
                .path()
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            pn
        })
        .collect();
    out.Devices = l
        .devices()
        .iter()
        .flatten()
        .map(|d| {
            let mut pd = pb::LinuxDevice::new();
            pd.Path = d.path().to_string_lossy().into_owned();
            pd.Type = d.typ().as_str().to_string();
            pd.Major = d.major();
            pd.Minor = d.minor();
            pd.FileMode = d.file_mode().unwrap_or(0);
            pd.UID = d.uid().unwrap_or(0);
            pd.GID = d.gid().unwrap_or(0);
            pd
        })
        .collect();
    out.Seccomp = l.seccomp().as_ref().map(seccomp_to_proto).into();
    out.RootfsPropagation = l.rootfs_propagation().clone().unwrap_or_default();
    out.MaskedPaths = l.masked_paths().clone().unwrap_or_default();
    out.ReadonlyPaths = l.readonly_paths().clone().unwrap_or_default();
    out.MountLabel = l.mount_label().clone().unwrap_or_default();
    out
}

fn throttle_to_proto(list: &Option<Vec<oci::LinuxThrottleDevice>>) -> Vec<pb::LinuxThrottleDevice> {
    list.iter()
        .flatten()
        .map(|d| {
            let mut out = pb::LinuxThrottleDevice::new();
            out.Major = d.major();
            out.Minor = d.minor();
            out.Rate = d.rate();
            out
        })
        .collect()
}

/// Converts OCI resources into their protobuf message (UpdateContainer). A wildcard device
/// number is sent as -1.
// Used by tests and kept for callers that send specs (control tool, UpdateContainer clients).
#[allow(dead_code)]
pub fn resources_to_proto(r: &oci::LinuxResources) -> pb::LinuxResources {
    let mut out = pb::LinuxResources::new();
    out.Devices = r
        .devices()
        .iter()
        .flatten()
        .map(|d| {
            let mut pd = pb::LinuxDeviceCgroup::new();
            pd.Allow = d.allow();
            pd.Type = d.typ().unwrap_or_default().as_str().to_string();
            pd.Major = d.major().unwrap_or(-1);
            pd.Minor = d.minor().unwrap_or(-1);
            pd.Access = d.access().clone().unwrap_or_default();
            pd
        })
        .collect();
    out.Memory = r
        .memory()
        .as_ref()
        .map(|m| {
            let mut pm = pb::LinuxMemory::new();
            pm.Limit = m.limit().unwrap_or(0);
            pm.Reservation = m.reservation().unwrap_or(0);
            pm.Swap = m.swap().unwrap_or(0);
            pm.Kernel = m.kernel().unwrap_or(0);
            pm.KernelTCP = m.kernel_tcp().unwrap_or(0);
            pm.Swappiness = m.swappiness().unwrap_or(0);
            pm.DisableOOMKiller = m.disable_oom_killer().unwrap_or(false);
            pm
        })
        .into();
    out.CPU = r
        .cpu()
        .as_ref()
        .map(|c| {
            let mut pc = pb::LinuxCPU::new();
            pc.Shares = c.shares().unwrap_or(0);
            pc.Quota = c.quota().unwrap_or(0);
            pc.Period = c.period().unwrap_or(0);
            pc.RealtimeRuntime = c.realtime_runtime().unwrap_or(0);
            pc.RealtimePeriod = c.realtime_period().unwrap_or(0);
            pc.Cpus = c.cpus().clone().unwrap_or_default();
            pc.Mems = c.mems().clone().unwrap_or_default();
            pc
        })
        .into();
    out.Pids = r
        .pids()
        .as_ref()
        .map(|p| {
            let mut pp = pb::LinuxPids::new();
            pp.Limit = p.limit();
            pp
        })
        .into();
    out.BlockIO = r
        .block_io()
        .as_ref()
        .map(|b| {
            let mut pbio = pb::LinuxBlockIO::new();
            pbio.Weight = u32::from(b.weight().unwrap_or(0));
            pbio.LeafWeight = u32::from(b.leaf_weight().unwrap_or(0));
            pbio.WeightDevice = b
                .weight_device()
                .iter()
                .flatten()
                .map(|d| {
                    let mut pw = pb::LinuxWeightDevice::new();
                    pw.Major = d.major();
                    pw.Minor = d.minor();
                    pw.Weight = u32::from(d.weight().unwrap_or(0));
                    pw.LeafWeight = u32::from(d.leaf_weight().unwrap_or(0));
                    pw
                })
                .collect();
            pbio.ThrottleReadBpsDevice = throttle_to_proto(b.throttle_read_bps_device());
            pbio.ThrottleWriteBpsDevice = throttle_to_proto(b.throttle_write_bps_device());
            pbio.ThrottleReadIOPSDevice = throttle_to_proto(b.throttle_read_iops_device());
            pbio.ThrottleWriteIOPSDevice = throttle_to_proto(b.throttle_write_iops_device());
            pbio
        })
        .into();
    out.HugepageLimits = r
        .hugepage_limits()
        .iter()
        .flatten()
        .map(|h| {
            let mut ph = pb::LinuxHugepageLimit::new();
            ph.Pagesize = h.page_size().clone();
            // A negative (unlimited) OCI limit has no u64 spelling but the maximum.
            ph.Limit = u64::try_from(h.limit()).unwrap_or(u64::MAX);
            ph
        })
        .collect();
    out.Network = r
        .network()
        .as_ref()
        .map(|n| {
            let mut pn = pb::LinuxNetwork::new();
            pn.ClassID = n.class_id().unwrap_or(0);
            pn.Priorities = n
                .priorities()
                .iter()
                .flatten()
                .map(|p| {
                    let mut pp = pb::LinuxInterfacePriority::new();
                    pp.Name = p.name().clone();
                    pp.Priority = p.priority();
                    pp
                })
                .collect();
            pn
        })
        .into();
    out
}

#[cfg(test)]
mod tests {
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
}
