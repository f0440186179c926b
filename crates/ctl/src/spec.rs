//! Default OCI spec and process used by the `CreateContainer rootfs=..` and
//! `ExecProcess args=..` conveniences.
//!
//! The objects are written as JSON in the protobuf shape (proto field names) and then decoded
//! into the generated types, which keeps this module independent of how the generated Rust
//! fields are spelled.

use serde_json::{json, Value};

/// `PATH` given to every process built here.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The customary default capability set of container engines (14 capabilities).
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// JSON (protobuf shape) of a root-owned process running `args` in `/`.
pub fn default_process_json(args: Vec<String>, terminal: bool) -> Value {
    let caps = DEFAULT_CAPS.to_vec();
    json!({
        "Terminal": terminal,
        "User": {"UID": 0, "GID": 0, "AdditionalGids": [], "Username": ""},
        "Args": args,
        "Env": [DEFAULT_PATH, "TERM=xterm"],
        "Cwd": "/",
        "Capabilities": {
            "Bounding": caps,
            "Effective": caps,
            "Inheritable": [],
            "Permitted": caps,
            "Ambient": [],
        },
        "Rlimits": [],
        "NoNewPrivileges": true,
    })
}

/// JSON (protobuf shape) of the spec built by [`default_spec`].
pub fn default_spec_json(rootfs: &str, args: Vec<String>, terminal: bool) -> Value {
    let mount = |dest: &str, typ: &str, src: &str, opts: &[&str]| json!({"destination": dest, "source": src, "type": typ, "options": opts});
    let ns = |t: &str| json!({"Type": t, "Path": ""});
    json!({
        "Version": "1.1.0",
        "Process": default_process_json(args, terminal),
        "Root": {"Path": rootfs, "Readonly": false},
        "Hostname": "",
        "Mounts": [
            mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
            mount("/dev/pts", "devpts", "devpts",
                &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
            mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
            mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
            mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
        ],
        "Annotations": {},
        "Linux": {
            "Resources": {},
            "CgroupsPath": "",
            "Namespaces": [ns("pid"), ns("ipc"), ns("uts"), ns("mount")],
        },
    })
}

/// A ready-to-run OCI spec for a container whose root filesystem is `rootfs` (a path as seen
/// by the agent): new pid, ipc, uts and mount namespaces, the usual `/proc`, `/dev`, `/sys`
/// mounts, the default capability set, root user, no cgroups path.
pub fn default_spec(rootfs: &str, args: Vec<String>, terminal: bool) -> protocols::oci::Spec {
    serde_json::from_value(default_spec_json(rootfs, args, terminal))
        .expect("the built-in default spec matches the protobuf Spec message")
}

/// The process of [`default_spec`], for `ExecProcess`.
pub fn default_process(args: Vec<String>, terminal: bool) -> protocols::oci::Process {
    serde_json::from_value(default_process_json(args, terminal))
        .expect("the built-in default process matches the protobuf Process message")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decoding silently ignores unknown keys, so check that every key survived the round trip.
    #[test]
    fn spec_round_trips() {
        let spec = default_spec(
            "/run/c1/rootfs",
            vec!["sh".into(), "-c".into(), "true".into()],
            true,
        );
        let back = serde_json::to_value(&spec).unwrap();
        assert_eq!(back["Root"]["Path"], "/run/c1/rootfs");
        assert_eq!(back["Process"]["Terminal"], true);
        assert_eq!(back["Process"]["Args"], json!(["sh", "-c", "true"]));
        assert_eq!(
            back["Process"]["Capabilities"]["Bounding"]
                .as_array()
                .unwrap()
                .len(),
            14
        );
        assert_eq!(back["Process"]["Env"][1], "TERM=xterm");
        let mounts = back["Mounts"].as_array().unwrap();
        assert_eq!(mounts.len(), 6);
        assert_eq!(mounts[2]["destination"], "/dev/pts");
        assert_eq!(mounts[2]["type"], "devpts");
        assert_eq!(mounts[5]["options"][3], "ro");
        let nss: Vec<_> = back["Linux"]["Namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["Type"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(nss, ["pid", "ipc", "uts", "mount"]);
        assert_eq!(back["Linux"]["CgroupsPath"], "");
        assert!(back["Linux"]["Resources"].is_object());
    }

    #[test]
    fn process_round_trips() {
        let p = default_process(vec!["ls".into()], false);
        let back = serde_json::to_value(&p).unwrap();
        assert_eq!(back["Args"], json!(["ls"]));
        assert_eq!(back["Cwd"], "/");
        assert_eq!(back["User"]["UID"], 0);
        assert_eq!(back["Capabilities"]["Permitted"][13], "CAP_AUDIT_WRITE");
    }
}
