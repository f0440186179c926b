//! Checks run before anything is created for a container.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

use crate::{Error, Result};

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// Checks a container id: first character alphanumeric, at least two
/// characters, the rest alphanumeric or `.`, `-`, `_`.
pub fn validate_container_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let ok = match chars.next() {
        Some(c) if c.is_alphanumeric() => {
            id.chars().count() >= 2
                && chars.all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_'))
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "The container id {id:?} is invalid: it must be at least two characters long, start \
             with a letter or digit and contain only letters, digits, '.', '-' and '_'."
        )))
    }
}

/// Lexically cleans an absolute path (`.` and `..` removed, `..` at the root stays at the root).
pub(crate) fn clean(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// An absolute path without `..` components.
pub(crate) fn is_safe_abs(p: &Path) -> bool {
    p.is_absolute() && !p.components().any(|c| c == Component::ParentDir)
}

const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// Bind destinations allowed inside `/proc` (they are commonly used to fake
/// resource views, e.g. by lxcfs).
const PROC_BIND_ALLOWED: &[&str] = &[
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/loadavg",
    "/proc/net/dev",
];

/// Splits mount options into (is bind, is recursive).
pub(crate) fn bind_kind(m: &Mount) -> (bool, bool) {
    let opts = m.options().as_deref().unwrap_or(&[]);
    let rbind = opts.iter().any(|o| o == "rbind");
    let bind = rbind || opts.iter().any(|o| o == "bind") || m.typ().as_deref() == Some("bind");
    (bind, rbind)
}

/// Checks a container spec (§5.2 rules plus what the engine needs to set it up safely).
pub fn validate_spec(spec: &Spec) -> Result<()> {
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| invalid("The spec has no linux section."))?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("The spec has no root section."))?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("The spec has no process section."))?;
    validate_process_args(process.args().as_deref())?;

    let rp = root.path();
    if !rp.is_absolute() || !rp.exists() {
        return Err(invalid(format!(
            "The root path {} does not exist or is not absolute.",
            rp.display()
        )));
    }
    let canonical = rp.canonicalize().map_err(|e| {
        invalid(format!(
            "The root path {} cannot be resolved: {e}.",
            rp.display()
        ))
    })?;
    if clean(rp) != canonical {
        return Err(invalid(format!(
            "The root path {} is not canonical (it resolves to {}): symlinks, '.' and '..' are not \
             allowed in it.",
            rp.display(),
            canonical.display()
        )));
    }

    let nss = linux.namespaces().as_deref().unwrap_or(&[]);
    let has = |t: LinuxNamespaceType| nss.iter().any(|n| n.typ() == t);
    for ns in nss {
        if let Some(p) = ns.path() {
            if !p.as_os_str().is_empty() && !p.exists() {
                return Err(invalid(format!(
                    "The {} namespace path {} does not exist.",
                    ns.typ(),
                    p.display()
                )));
            }
        }
    }
    let mut seen = Vec::new();
    for ns in nss {
        if seen.contains(&ns.typ()) && ns.typ() != LinuxNamespaceType::Pid {
            return Err(invalid(format!(
                "The {} namespace is listed more than once.",
                ns.typ()
            )));
        }
        seen.push(ns.typ());
    }
    if !has(LinuxNamespaceType::Mount) {
        return Err(invalid(
            "The spec has no mount namespace; a container needs one.",
        ));
    }
    if spec.hostname().as_deref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts) {
        return Err(invalid(
            "A hostname is set but the spec has no uts namespace.",
        ));
    }
    if spec.domainname().as_deref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts)
    {
        return Err(invalid(
            "A domainname is set but the spec has no uts namespace.",
        ));
    }

    let maps_set = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        m.as_ref().is_some_and(|v| v.iter().any(|x| x.size() > 0))
    };
    let any_maps = linux.uid_mappings().as_ref().is_some_and(|v| !v.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|v| !v.is_empty());
    let new_user = nss
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none());
    if has(LinuxNamespaceType::User) {
        if !Path::new("/proc/self/ns/user").exists() {
            return Err(invalid("User namespaces are not supported by this kernel."));
        }
        if new_user && (!maps_set(linux.uid_mappings()) || !maps_set(linux.gid_mappings())) {
            return Err(invalid(
                "A new user namespace needs uid and gid mappings with a size above zero.",
            ));
        }
    } else if any_maps {
        return Err(invalid(
            "The spec has uid or gid mappings but no user namespace.",
        ));
    }
    if has(LinuxNamespaceType::Cgroup) && !Path::new("/proc/self/ns/cgroup").exists() {
        return Err(invalid(
            "Cgroup namespaces are not supported by this kernel.",
        ));
    }

    if let Some(sysctl) = linux.sysctl() {
        for key in sysctl.keys() {
            let ipc = IPC_SYSCTLS.contains(&key.as_str()) || key.starts_with("fs.mqueue.");
            if ipc && !has(LinuxNamespaceType::Ipc) {
                return Err(invalid(format!(
                    "The sysctl {key} needs an ipc namespace, which the spec does not have."
                )));
            }
            if key == "kernel.hostname" {
                return Err(invalid(
                    "The sysctl kernel.hostname is not allowed; set the hostname field instead.",
                ));
            }
            let ok = ipc
                || key.starts_with("net.")
                || (has(LinuxNamespaceType::Uts) && key == "kernel.domainname");
            if !ok {
                return Err(invalid(format!(
                    "The sysctl {key} is not allowed in a container."
                )));
            }
        }
    }

    if let Some(cg) = linux.cgroups_path() {
        // `:` separates the levels of a systemd-style path; either way no level may be "..".
        let text = cg.to_string_lossy();
        if text
            .split([':', '/'])
            .any(|level| level == ".." || level.contains('\0'))
        {
            return Err(invalid(format!(
                "The cgroups path {text:?} must not contain '..'."
            )));
        }
    }

    for p in linux
        .masked_paths()
        .iter()
        .flatten()
        .chain(linux.readonly_paths().iter().flatten())
    {
        if !is_safe_abs(Path::new(p)) {
            return Err(invalid(format!(
                "The masked or read-only path {p:?} must be absolute and must not contain '..'."
            )));
        }
    }

    for m in spec.mounts().iter().flatten() {
        validate_mount(m)?;
    }

    for d in linux.devices().iter().flatten() {
        let p = d.path();
        if !is_safe_abs(p) || !p.starts_with("/dev") || p == Path::new("/dev") {
            return Err(invalid(format!(
                "The device path {} must be an absolute path below /dev without '..'.",
                p.display()
            )));
        }
        use oci_spec::runtime::LinuxDeviceType as T;
        if !matches!(d.typ(), T::C | T::B | T::P) {
            return Err(invalid(format!(
                "The device {} has an unsupported type; only c, b and p devices can be created.",
                p.display()
            )));
        }
    }

    if let Some(sc) = linux.seccomp() {
        for rule in sc.syscalls().iter().flatten() {
            if rule.names().is_empty() {
                return Err(invalid("A seccomp rule has no syscall names."));
            }
            if rule.action() == oci_spec::runtime::LinuxSeccompAction::ScmpActNotify {
                return Err(invalid(
                    "The seccomp action SCMP_ACT_NOTIFY is not supported.",
                ));
            }
        }
        if sc.default_action() == oci_spec::runtime::LinuxSeccompAction::ScmpActNotify {
            return Err(invalid(
                "The seccomp action SCMP_ACT_NOTIFY is not supported.",
            ));
        }
    }

    if let Some(hooks) = spec.hooks() {
        #[allow(deprecated)]
        let lists = [
            hooks.prestart(),
            hooks.create_runtime(),
            hooks.create_container(),
            hooks.start_container(),
            hooks.poststart(),
            hooks.poststop(),
        ];
        for h in lists.into_iter().flatten().flatten() {
            if !h.path().is_absolute() {
                return Err(invalid(format!(
                    "The hook path {} is not absolute.",
                    h.path().display()
                )));
            }
        }
    }
    Ok(())
}

/// Checks a process' argument list.
pub(crate) fn validate_process_args(args: Option<&[String]>) -> Result<()> {
    match args {
        Some(a) if !a.is_empty() && !a[0].is_empty() => Ok(()),
        _ => Err(invalid(
            "The process has no arguments (nothing to execute).",
        )),
    }
}

fn validate_mount(m: &Mount) -> Result<()> {
    let dest = m.destination();
    if !is_safe_abs(dest) {
        return Err(invalid(format!(
            "The mount destination {} is invalid: it must be absolute and must not contain '..'.",
            dest.display()
        )));
    }
    let (bind, _) = bind_kind(m);
    if !bind
        && m.typ()
            .as_deref()
            .filter(|t| !t.is_empty() && *t != "none")
            .is_none()
    {
        return Err(invalid(format!(
            "The mount at {} has no filesystem type.",
            dest.display()
        )));
    }
    if bind {
        let src = m.source().as_ref().ok_or_else(|| {
            invalid(format!(
                "The bind mount at {} has no source.",
                dest.display()
            ))
        })?;
        if !src.exists() {
            return Err(invalid(format!(
                "The source {} of the bind mount at {} does not exist.",
                src.display(),
                dest.display()
            )));
        }
        let d = clean(dest);
        if d.starts_with("/proc")
            && d != Path::new("/proc")
            && !PROC_BIND_ALLOWED.iter().any(|a| d == Path::new(a))
        {
            return Err(invalid(format!(
                "{} cannot be bind-mounted because it is inside /proc.",
                dest.display()
            )));
        }
        if d == Path::new("/proc") && !is_procfs(src) {
            return Err(invalid("Only a procfs can be bind-mounted onto /proc."));
        }
    }
    Ok(())
}

fn is_procfs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p)
        .map(|s| s.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids() {
        for ok in ["ab", "a1", "1a", "abc.def-ghi_j", "é1"] {
            assert!(validate_container_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a", "-ab", ".ab", "a/b", "a b", "../x", "_ab"] {
            assert!(validate_container_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cleaning() {
        assert_eq!(clean(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(clean(Path::new("/../../etc")), PathBuf::from("/etc"));
        assert!(!is_safe_abs(Path::new("/a/../b")));
        assert!(!is_safe_abs(Path::new("a/b")));
        assert!(is_safe_abs(Path::new("/a/b")));
    }

    fn base_spec(root: &Path) -> Spec {
        let mut spec = Spec::default();
        let mut r = spec.root().clone().unwrap();
        r.set_path(root.to_path_buf());
        spec.set_root(Some(r));
        spec
    }

    #[test]
    fn spec_rules() {
        let dir = std::env::temp_dir().canonicalize().unwrap();
        let spec = base_spec(&dir);
        validate_spec(&spec).unwrap();

        let mut s = spec.clone();
        s.set_root(None);
        assert!(validate_spec(&s).is_err());

        let mut s = spec.clone();
        let mut r = s.root().clone().unwrap();
        r.set_path(dir.join("x/.."));
        s.set_root(Some(r));
        assert!(validate_spec(&s).is_err());

        let mut s = spec.clone();
        let mut l = s.linux().clone().unwrap();
        l.set_namespaces(Some(
            oci_spec::runtime::get_default_namespaces()
                .into_iter()
                .filter(|n| n.typ() != LinuxNamespaceType::Uts)
                .collect(),
        ));
        s.set_linux(Some(l));
        let e = validate_spec(&s).unwrap_err().to_string();
        assert!(e.contains("uts"), "{e}");

        let mut s = spec.clone();
        let mut mounts = s.mounts().clone().unwrap();
        mounts.push(
            oci_spec::runtime::MountBuilder::default()
                .destination("/../../etc")
                .typ("tmpfs")
                .source("tmpfs")
                .build()
                .unwrap(),
        );
        s.set_mounts(Some(mounts));
        assert!(matches!(validate_spec(&s), Err(Error::InvalidArgument(_))));

        let mut s = spec.clone();
        let mut l = s.linux().clone().unwrap();
        l.set_sysctl(Some(
            [("kernel.pid_max".to_string(), "1".to_string())].into(),
        ));
        s.set_linux(Some(l));
        assert!(validate_spec(&s).is_err());

        for (path, ok) in [
            ("../../escape", false),
            ("/a/../b", false),
            ("slice:..:x", false),
            ("kubepods.slice:cri:abc", true),
            ("/a/b..c", true),
        ] {
            let mut s = spec.clone();
            let mut l = s.linux().clone().unwrap();
            l.set_cgroups_path(Some(path.into()));
            s.set_linux(Some(l));
            let r = validate_spec(&s);
            assert_eq!(r.is_ok(), ok, "{path}: {r:?}");
            if !ok {
                assert!(matches!(r, Err(Error::InvalidArgument(_))));
            }
        }
    }
}
