//! Applying CDI container edits to an OCI spec: device nodes (with their device cgroup rules),
//! environment, mounts, hooks and additional groups.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Hook, Hooks, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, Mount, Spec,
};

use super::spec::{ContainerEdits, DeviceNode};

fn device_type(t: &str) -> Option<LinuxDeviceType> {
    Some(match t {
        "b" => LinuxDeviceType::B,
        "c" => LinuxDeviceType::C,
        "u" => LinuxDeviceType::U,
        "p" => LinuxDeviceType::P,
        _ => return None,
    })
}

/// The device entry for a node, with what the spec leaves out read from the node itself.
fn device_entry(n: &DeviceNode, user: (u32, u32)) -> Result<LinuxDevice, String> {
    let host = n
        .host_path
        .as_deref()
        .filter(|p| !p.is_empty())
        .unwrap_or(&n.path);
    let mut typ = n.typ.clone().filter(|t| !t.is_empty());
    let (mut major, mut minor) = (n.major.unwrap_or(0), n.minor.unwrap_or(0));
    let mut mode = n.file_mode;
    let complete = typ.as_deref().is_some_and(|t| t == "p" || major != 0);
    if !complete {
        let meta = std::fs::metadata(host)
            .map_err(|e| format!("cannot stat the device node {host}: {e}"))?;
        let ft = meta.file_type();
        let actual = if ft.is_block_device() {
            "b"
        } else if ft.is_char_device() {
            "c"
        } else if ft.is_fifo() {
            "p"
        } else {
            return Err(format!("{host} is not a device node"));
        };
        match typ.as_deref() {
            None => typ = Some(actual.to_string()),
            Some("u") if actual == "c" => {}
            Some(t) if t == actual => {}
            Some(t) => {
                return Err(format!(
                    "device node {} has type {t:?} but {host} is of type {actual:?}",
                    n.path
                ))
            }
        }
        if major == 0 && actual != "p" {
            major = nix::sys::stat::major(meta.rdev()) as i64;
            minor = nix::sys::stat::minor(meta.rdev()) as i64;
        }
        if mode.is_none() {
            mode = Some(meta.mode() & 0o777);
        }
    }
    let typ = typ
        .as_deref()
        .and_then(device_type)
        .ok_or_else(|| format!("device node {} has no usable type", n.path))?;
    let mut d = LinuxDevice::default();
    d.set_path(PathBuf::from(&n.path));
    d.set_typ(typ);
    d.set_major(major);
    d.set_minor(minor);
    d.set_file_mode(mode);
    // A non-root container user owns the node unless the spec says otherwise.
    d.set_uid(n.uid.or((user.0 > 0).then_some(user.0)));
    d.set_gid(n.gid.or((user.1 > 0).then_some(user.1)));
    Ok(d)
}

fn set_env(list: &mut Vec<String>, entry: &str) {
    let name = entry.split_once('=').map_or(entry, |(n, _)| n);
    match list
        .iter_mut()
        .find(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) == name)
    {
        Some(e) => *e = entry.to_string(),
        None => list.push(entry.to_string()),
    }
}

fn depth(p: &Path) -> usize {
    p.components().count()
}

/// Applies one set of edits. Errors are in words, for the caller to wrap.
pub fn apply(spec: &mut Spec, edits: &ContainerEdits) -> Result<(), String> {
    if let Some(what) = edits.unsupported() {
        return Err(format!("the {what} edit is not supported"));
    }
    let user = spec
        .process()
        .as_ref()
        .map(|p| (p.user().uid(), p.user().gid()))
        .unwrap_or((0, 0));

    if !edits.env.is_empty() || !edits.additional_gids.is_empty() {
        let process = spec
            .process_mut()
            .as_mut()
            .ok_or("the spec has no process")?;
        let mut env = process.env().clone().unwrap_or_default();
        for e in &edits.env {
            set_env(&mut env, e);
        }
        process.set_env(Some(env));
        let mut gids = process.user().additional_gids().clone().unwrap_or_default();
        for g in &edits.additional_gids {
            if *g != 0 && !gids.contains(g) {
                gids.push(*g);
            }
        }
        if !gids.is_empty() {
            process.user_mut().set_additional_gids(Some(gids));
        }
    }

    if !edits.device_nodes.is_empty() {
        let entries = edits
            .device_nodes
            .iter()
            .map(|n| device_entry(n, user).map(|d| (d, n.permissions.clone())))
            .collect::<Result<Vec<_>, String>>()?;
        let linux = spec
            .linux_mut()
            .as_mut()
            .ok_or("the spec has no linux section")?;
        let mut devices = linux.devices().clone().unwrap_or_default();
        let mut resources = linux.resources().clone().unwrap_or_default();
        let mut rules = resources.devices().clone().unwrap_or_default();
        for (d, perms) in entries {
            devices.retain(|old| old.path() != d.path());
            if matches!(
                d.typ(),
                LinuxDeviceType::B | LinuxDeviceType::C | LinuxDeviceType::U
            ) {
                let mut r = LinuxDeviceCgroup::default();
                r.set_allow(true);
                r.set_typ(Some(if d.typ() == LinuxDeviceType::U {
                    LinuxDeviceType::C
                } else {
                    d.typ()
                }));
                r.set_major(Some(d.major()));
                r.set_minor(Some(d.minor()));
                r.set_access(Some(perms.unwrap_or_else(|| "rwm".to_string())));
                rules.push(r);
            }
            devices.push(d);
        }
        linux.set_devices(Some(devices));
        resources.set_devices(Some(rules));
        linux.set_resources(Some(resources));
    }

    if !edits.mounts.is_empty() {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        for m in &edits.mounts {
            let dest = PathBuf::from(&m.container_path);
            mounts.retain(|old| old.destination() != &dest);
            let mut new = Mount::default();
            new.set_destination(dest);
            new.set_source(Some(PathBuf::from(&m.host_path)));
            new.set_typ(m.typ.clone().filter(|t| !t.is_empty()));
            new.set_options(m.options.clone());
            mounts.push(new);
        }
        // Parents before children (stable, so the spec's own order is kept otherwise).
        mounts.sort_by_key(|m| depth(m.destination()));
        spec.set_mounts(Some(mounts));
    }

    if !edits.hooks.is_empty() {
        let mut hooks: Hooks = spec.hooks().clone().unwrap_or_default();
        for h in &edits.hooks {
            let mut hook = Hook::default();
            hook.set_path(PathBuf::from(&h.path));
            hook.set_args(h.args.clone());
            hook.set_env(h.env.clone());
            hook.set_timeout(h.timeout);
            let list = match h.hook_name.as_str() {
                "prestart" => hooks.prestart_mut(),
                "createRuntime" => hooks.create_runtime_mut(),
                "createContainer" => hooks.create_container_mut(),
                "startContainer" => hooks.start_container_mut(),
                "poststart" => hooks.poststart_mut(),
                "poststop" => hooks.poststop_mut(),
                other => return Err(format!("unknown hook name {other:?}")),
            };
            list.get_or_insert_with(Vec::new).push(hook);
        }
        spec.set_hooks(Some(hooks));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.1.0",
            "process": {"cwd": "/", "args": ["sh"], "user": {"uid": 1000, "gid": 1000},
                        "env": ["PATH=/bin", "A=old"]},
            "root": {"path": "/r"},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                       {"destination": "/x/y/z", "type": "tmpfs", "source": "tmpfs"}],
            "linux": {"devices": [{"path": "/dev/gone", "type": "c", "major": 9, "minor": 9}]}
        }))
        .unwrap()
    }

    #[test]
    fn edits_apply() {
        let edits: ContainerEdits = serde_json::from_value(serde_json::json!({
            "env": ["A=new", "B=1"],
            "deviceNodes": [
                {"path": "/dev/cdi-null", "hostPath": "/dev/null"},
                {"path": "/dev/gone", "type": "b", "major": 7, "minor": 1, "permissions": "rw", "uid": 0}
            ],
            "mounts": [{"hostPath": "/lib", "containerPath": "/x", "options": ["ro", "bind"]}],
            "hooks": [{"hookName": "createContainer", "path": "/bin/hook", "args": ["hook", "a"], "timeout": 5}],
            "additionalGids": [0, 44, 44]
        }))
        .unwrap();
        let mut spec = base();
        apply(&mut spec, &edits).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.env().as_ref().unwrap(), &["PATH=/bin", "A=new", "B=1"]);
        assert_eq!(p.user().additional_gids().as_ref().unwrap(), &[44]);
        let linux = spec.linux().as_ref().unwrap();
        let devs = linux.devices().as_ref().unwrap();
        assert_eq!(devs.len(), 2);
        let null = &devs[0];
        assert_eq!(null.path(), Path::new("/dev/cdi-null"));
        assert_eq!(
            (null.typ(), null.major(), null.minor()),
            (LinuxDeviceType::C, 1, 3)
        );
        assert_eq!((null.uid(), null.gid()), (Some(1000), Some(1000)));
        assert_eq!(null.file_mode(), Some(0o666));
        assert_eq!((devs[1].major(), devs[1].uid()), (7, Some(0)));
        let rules = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1].access().as_deref(), Some("rw"));
        assert_eq!(rules[0].access().as_deref(), Some("rwm"));
        let dests: Vec<_> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        assert_eq!(dests, ["/proc", "/x", "/x/y/z"]);
        let hooks = spec
            .hooks()
            .as_ref()
            .unwrap()
            .create_container()
            .clone()
            .unwrap();
        assert_eq!(hooks[0].path(), Path::new("/bin/hook"));
        assert_eq!(hooks[0].timeout(), Some(5));
    }

    #[test]
    fn bad_nodes() {
        for node in [
            serde_json::json!({"path": "/dev/x", "hostPath": "/nonexistent/node"}),
            serde_json::json!({"path": "/dev/x", "hostPath": "/"}),
            serde_json::json!({"path": "/dev/x", "hostPath": "/dev/null", "type": "b"}),
        ] {
            let edits: ContainerEdits =
                serde_json::from_value(serde_json::json!({"deviceNodes": [node]})).unwrap();
            let mut spec = base();
            assert!(apply(&mut spec, &edits).is_err(), "{node}");
        }
    }
}
