//! oci-spec runtime types back into the agent API's protobuf OCI messages.

use super::*;

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

pub(super) fn capability_names(set: &Option<oci::Capabilities>) -> Vec<String> {
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

pub(super) fn hooks_list_to_proto(list: &Option<Vec<oci::Hook>>) -> Vec<pb::Hook> {
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
pub(super) fn hooks_to_proto(h: &oci::Hooks) -> pb::Hooks {
    let mut out = pb::Hooks::new();
    out.Prestart = hooks_list_to_proto(h.prestart());
    out.CreateRuntime = hooks_list_to_proto(h.create_runtime());
    out.CreateContainer = hooks_list_to_proto(h.create_container());
    out.StartContainer = hooks_list_to_proto(h.start_container());
    out.Poststart = hooks_list_to_proto(h.poststart());
    out.Poststop = hooks_list_to_proto(h.poststop());
    out
}

pub(super) fn id_mappings_to_proto(
    m: &Option<Vec<oci::LinuxIdMapping>>,
) -> Vec<pb::LinuxIDMapping> {
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

pub(super) fn seccomp_to_proto(s: &oci::LinuxSeccomp) -> pb::LinuxSeccomp {
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

pub(super) fn linux_to_proto(l: &oci::Linux) -> pb::Linux {
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

pub(super) fn throttle_to_proto(
    list: &Option<Vec<oci::LinuxThrottleDevice>>,
) -> Vec<pb::LinuxThrottleDevice> {
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
