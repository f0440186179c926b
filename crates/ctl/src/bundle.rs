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
