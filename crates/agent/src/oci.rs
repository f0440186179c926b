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

mod to_proto;
#[allow(unused_imports)] // used by tests and by callers that send specs
pub use to_proto::*;

mod stats;
pub use stats::*;

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

#[cfg(test)]
mod tests;
