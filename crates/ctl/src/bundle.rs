//! Reads the `process` of an OCI bundle's `config.json` for `ExecProcess` (`--bundle-dir`).
//!
//! The OCI runtime-spec JSON uses camelCase keys; the protobuf messages use CamelCase ones,
//! so the object is renamed key by key.

use anyhow::{anyhow, Context as _, Result};
use serde_json::{Map, Value};

/// Returns the protobuf-shaped JSON of the `process` in `<dir>/config.json`.
pub fn process_from_bundle(dir: &str) -> Result<Value> {
    let path = std::path::Path::new(dir).join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let config: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{} is not valid JSON: {e}", path.display()))?;
    let process = config
        .get("process")
        .ok_or_else(|| anyhow!("{} has no process", path.display()))?;
    Ok(oci_process_to_proto(process))
}

/// Returns the protobuf-shaped JSON of the whole spec in `<dir>/config.json`, with a relative
/// root path made absolute against `dir` (for `CreateContainer` with `--bundle-dir`).
pub fn spec_from_bundle(dir: &str) -> Result<Value> {
    let path = std::path::Path::new(dir).join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let config: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{} is not valid JSON: {e}", path.display()))?;
    let mut spec = oci_spec_to_proto(&config);
    if let Some(root) = spec.pointer_mut("/Root/Path") {
        if let Some(rel) = root.as_str().filter(|p| !p.starts_with('/')) {
            let abs = std::path::Path::new(dir).join(rel);
            *root = Value::String(abs.to_string_lossy().into_owned());
        }
    }
    Ok(spec)
}

/// Whether `spec` is in the OCI runtime-spec shape (camelCase keys) rather than the protobuf
/// one.
pub fn is_runtime_spec(spec: &Value) -> bool {
    ["ociVersion", "process", "root", "linux", "mounts"]
        .iter()
        .any(|k| spec.get(k).is_some())
}

/// Converts an OCI runtime-spec `Spec` object (camelCase keys, as in a bundle's
/// `config.json`) to the protobuf `Spec` JSON. Keys the protobuf messages lack are dropped
/// when the result is decoded.
pub fn oci_spec_to_proto(spec: &Value) -> Value {
    convert_object(spec, Shape::Message)
}

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// A message: keys are renamed.
    Message,
    /// A string map (annotations, sysctl): keys are kept.
    Map,
    /// An OCI mount: the protobuf keys are the lower-case ones.
    Mount,
}

fn proto_key(key: &str) -> String {
    let special = match key {
        "ociVersion" => "Version",
        "uid" => "UID",
        "gid" => "GID",
        "uidMappings" => "UIDMappings",
        "gidMappings" => "GIDMappings",
        "oomScoreAdj" => "OOMScoreAdj",
        "hostID" => "HostID",
        "containerID" => "ContainerID",
        "cpu" => "CPU",
        "blockIO" => "BlockIO",
        "kernelTCP" => "KernelTCP",
        "disableOOMKiller" => "DisableOOMKiller",
        "throttleReadIOPSDevice" => "ThrottleReadIOPSDevice",
        "throttleWriteIOPSDevice" => "ThrottleWriteIOPSDevice",
        "classID" => "ClassID",
        "pageSize" => "Pagesize",
        "l3CacheSchema" => "L3CacheSchema",
        _ => "",
    };
    if !special.is_empty() {
        return special.to_string();
    }
    let mut chars = key.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

fn convert_object(v: &Value, shape: Shape) -> Value {
    match v {
        Value::Object(obj) => {
            let mut out = Map::new();
            for (k, val) in obj {
                let (key, inner) = match shape {
                    Shape::Map => (k.clone(), Shape::Map),
                    Shape::Mount => (k.clone(), Shape::Map),
                    Shape::Message => {
                        let inner = match k.as_str() {
                            "annotations" | "sysctl" => Shape::Map,
                            "mounts" => Shape::Mount,
                            _ => Shape::Message,
                        };
                        (proto_key(k), inner)
                    }
                };
                if shape == Shape::Message && k == "errnoRet" {
                    // A oneof in the protobuf message.
                    out.insert("ErrnoRet".into(), serde_json::json!({ "errnoret": val }));
                    continue;
                }
                out.insert(key, convert_object(val, inner));
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|i| convert_object(i, shape)).collect())
        }
        other => other.clone(),
    }
}

/// Renames the keys of an OCI `process` object to the protobuf `Process` field names.
pub fn oci_process_to_proto(process: &Value) -> Value {
    rename(process, &|key| match key {
        "terminal" => "Terminal",
        "consoleSize" => "ConsoleSize",
        "height" => "Height",
        "width" => "Width",
        "user" => "User",
        "uid" => "UID",
        "gid" => "GID",
        "additionalGids" => "AdditionalGids",
        "username" => "Username",
        "args" => "Args",
        "env" => "Env",
        "cwd" => "Cwd",
        "capabilities" => "Capabilities",
        "bounding" => "Bounding",
        "effective" => "Effective",
        "inheritable" => "Inheritable",
        "permitted" => "Permitted",
        "ambient" => "Ambient",
        "rlimits" => "Rlimits",
        "type" => "Type",
        "hard" => "Hard",
        "soft" => "Soft",
        "noNewPrivileges" => "NoNewPrivileges",
        "apparmorProfile" => "ApparmorProfile",
        "oomScoreAdj" => "OOMScoreAdj",
        "selinuxLabel" => "SelinuxLabel",
        // Keys without a protobuf counterpart are dropped.
        _ => "",
    })
}

fn rename(v: &Value, map: &dyn Fn(&str) -> &'static str) -> Value {
    match v {
        Value::Object(obj) => {
            let mut out = Map::new();
            for (k, val) in obj {
                let new = map(k);
                if !new.is_empty() {
                    // Lists of strings (args, env, capability names) are kept as they are.
                    out.insert(new.to_string(), rename(val, map));
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|i| rename(i, map)).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn converts_a_process() {
        let oci = json!({
            "terminal": true,
            "user": {"uid": 1, "gid": 2, "additionalGids": [3]},
            "args": ["sh"],
            "env": ["A=b"],
            "cwd": "/",
            "capabilities": {"bounding": ["CAP_KILL"]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 5, "soft": 4}],
            "noNewPrivileges": true,
            "scheduler": {"policy": "SCHED_OTHER"}
        });
        let p = oci_process_to_proto(&oci);
        assert_eq!(
            p,
            json!({
                "Terminal": true,
                "User": {"UID": 1, "GID": 2, "AdditionalGids": [3]},
                "Args": ["sh"],
                "Env": ["A=b"],
                "Cwd": "/",
                "Capabilities": {"Bounding": ["CAP_KILL"]},
                "Rlimits": [{"Type": "RLIMIT_NOFILE", "Hard": 5, "Soft": 4}],
                "NoNewPrivileges": true
            })
        );
        let _: protocols::oci::Process = serde_json::from_value(p).unwrap();
    }

    #[test]
    fn converts_a_runtime_spec() {
        let oci = json!({
            "ociVersion": "1.0.2",
            "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
                        "cwd": "/", "oomScoreAdj": 5,
                        "capabilities": {"bounding": ["CAP_KILL"]}},
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "runc",
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc",
                        "options": ["nosuid"]}],
            "annotations": {"io.kata.x": "y"},
            "linux": {
                "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
                "sysctl": {"net.ipv4.ip_forward": "1"},
                "resources": {"devices": [{"allow": false, "access": "rwm"}],
                              "memory": {"limit": 1048576}, "cpu": {"shares": 512}},
                "namespaces": [{"type": "pid"}, {"type": "mount"}],
                "maskedPaths": ["/proc/kcore"],
                "seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                            "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO",
                                          "errnoRet": 1}]}
            }
        });
        let p = oci_spec_to_proto(&oci);
        let spec: protocols::oci::Spec = serde_json::from_value(p).unwrap();
        let back = serde_json::to_value(&spec).unwrap();
        assert_eq!(back["Version"], "1.0.2");
        assert_eq!(back["Process"]["Args"], json!(["sh"]));
        assert_eq!(back["Process"]["OOMScoreAdj"], 5);
        assert_eq!(
            back["Process"]["Capabilities"]["Bounding"],
            json!(["CAP_KILL"])
        );
        assert_eq!(back["Root"]["Path"], "rootfs");
        assert_eq!(back["Root"]["Readonly"], true);
        assert_eq!(back["Hostname"], "runc");
        assert_eq!(back["Mounts"][0]["destination"], "/proc");
        assert_eq!(back["Mounts"][0]["options"], json!(["nosuid"]));
        assert_eq!(back["Annotations"]["io.kata.x"], "y");
        let linux = &back["Linux"];
        assert_eq!(linux["UIDMappings"][0]["HostID"], 1000);
        assert_eq!(linux["Sysctl"]["net.ipv4.ip_forward"], "1");
        assert_eq!(linux["Resources"]["Devices"][0]["Access"], "rwm");
        assert_eq!(linux["Resources"]["Memory"]["Limit"], 1048576);
        assert_eq!(linux["Resources"]["CPU"]["Shares"], 512);
        assert_eq!(linux["Namespaces"][1]["Type"], "mount");
        assert_eq!(linux["MaskedPaths"], json!(["/proc/kcore"]));
        assert_eq!(linux["Seccomp"]["Syscalls"][0]["ErrnoRet"]["errnoret"], 1);
        assert!(is_runtime_spec(&oci) && !is_runtime_spec(&back));
    }

    #[test]
    fn bundle_spec_root_is_absolute() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"args":["ls"]}}"#,
        )
        .unwrap();
        let s = spec_from_bundle(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(
            s["Root"]["Path"],
            dir.path().join("rootfs").to_str().unwrap()
        );
        assert_eq!(s["Process"]["Args"], json!(["ls"]));
    }

    #[test]
    fn reads_a_bundle() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"process":{"args":["ls"]}}"#,
        )
        .unwrap();
        let p = process_from_bundle(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(p, json!({"Args": ["ls"]}));
        assert!(process_from_bundle("/nonexistent").is_err());
    }
}
