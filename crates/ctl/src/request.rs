//! Turns a command's argument into the JSON of its request message.
//!
//! The starting point is the request type's default value serialized to JSON, which tells
//! which fields exist and what JSON type each one has; user input is checked and converted
//! against it, and auto-values fill what the user did not give.

use std::collections::HashSet;

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{Map, Value};

use crate::args::{self, json_kind, ArgForm};
use crate::spec;

/// Fields of type `bytes` that accept text or `hex:..` instead of an array of numbers.
const BYTES_FIELDS: &[&str] = &["data"];

/// State of the auto-values feature across the commands of one run.
#[derive(Debug, Default)]
pub struct AutoValues {
    /// Whether auto-values are on (they are unless `-n/--no-auto-values`).
    pub enabled: bool,
    /// The container id used when a command does not name one: the last id the user gave,
    /// or a random one made on first use.
    pub cid: Option<String>,
}

impl AutoValues {
    /// A new state; `enabled` is false with `--no-auto-values`.
    pub fn new(enabled: bool) -> Self {
        AutoValues { enabled, cid: None }
    }
}

/// Builds the request JSON for `cmd` from the default request `default` and the user's `form`.
pub fn build(cmd: &str, default: Value, form: &ArgForm, auto: &mut AutoValues) -> Result<Value> {
    let Value::Object(mut obj) = default else {
        bail!("the request of {cmd} is not a message");
    };
    let mut explicit = HashSet::new();
    match form {
        ArgForm::Empty => {}
        ArgForm::Json(user) => {
            for (key, value) in user {
                let field = field_name(&obj, key, cmd)?;
                let value = match (BYTES_FIELDS.contains(&field.as_str()), value) {
                    (true, Value::String(s)) => bytes_value(&args::parse_bytes(s)?),
                    _ => normalize(&field, value.clone()),
                };
                obj.insert(field.clone(), value);
                explicit.insert(field);
            }
        }
        ArgForm::Pairs(pairs) => apply_pairs(cmd, &mut obj, pairs, &mut explicit)?,
    }
    if auto.enabled {
        fill_auto_values(cmd, &mut obj, &explicit, auto);
    }
    // Like upstream's tool, a sandbox always gets an id, auto-values or not.
    if cmd == "CreateSandbox" {
        let empty = obj
            .get("sandbox_id")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        if empty {
            obj.insert("sandbox_id".into(), Value::String(args::random_id()));
        }
    }
    Ok(Value::Object(obj))
}

/// Converts a value given in another accepted shape to the request's: an `OCI` spec or a
/// `process` in the OCI runtime-spec shape (camelCase keys, as in a bundle's config.json).
fn normalize(field: &str, value: Value) -> Value {
    match field {
        "OCI" if crate::bundle::is_runtime_spec(&value) => crate::bundle::oci_spec_to_proto(&value),
        "process" if value.get("args").is_some() || value.get("user").is_some() => {
            crate::bundle::oci_process_to_proto(&value)
        }
        _ => value,
    }
}

/// Resolves a user-given key (possibly a short alias) to a field of the request.
fn field_name(obj: &Map<String, Value>, key: &str, cmd: &str) -> Result<String> {
    if obj.contains_key(key) {
        return Ok(key.to_string());
    }
    // Upstream's option names differ in case from some proto fields (sec= for Sec).
    if let Some(k) = obj.keys().find(|k| k.eq_ignore_ascii_case(key)) {
        return Ok(k.clone());
    }
    let alias = match key {
        "cid" | "id" => "container_id",
        "sid" => "sandbox_id",
        "eid" => "exec_id",
        "spec" | "oci" => "OCI",
        _ => "",
    };
    if !alias.is_empty() && obj.contains_key(alias) {
        return Ok(alias.to_string());
    }
    let fields: Vec<&str> = obj.keys().map(String::as_str).collect();
    if fields.is_empty() {
        bail!("{cmd} takes no arguments, but {key:?} was given");
    }
    bail!(
        "{cmd} has no field {key:?}; its fields are: {}",
        fields.join(", ")
    )
}

/// Applies `key=value` pairs, including the CreateContainer / ExecProcess conveniences.
fn apply_pairs(
    cmd: &str,
    obj: &mut Map<String, Value>,
    pairs: &[(String, String)],
    explicit: &mut HashSet<String>,
) -> Result<()> {
    let builds_process = matches!(cmd, "CreateContainer" | "ExecProcess");
    let mut rootfs = None;
    let mut proc_args = None;
    let mut terminal = None;
    for (key, text) in pairs {
        match key.as_str() {
            "rootfs" if cmd == "CreateContainer" => rootfs = Some(text.clone()),
            "args" if builds_process => proc_args = Some(args::split_words(text)?),
            "terminal" if builds_process => terminal = Some(args::parse_bool(text)?),
            // Upstream's tool keeps a sandbox id given to any command; requests without one
            // ignore it.
            "sid" if !obj.contains_key("sandbox_id") => {}
            // `ExecProcess spec=file:///bundle/config.json`: the process of that spec.
            "spec" | "oci" if cmd == "ExecProcess" => {
                let spec = convert("OCI", &Value::Null, text)
                    .with_context(|| format!("invalid value for {key} in {cmd}"))?;
                let process = spec
                    .get("process")
                    .map(crate::bundle::oci_process_to_proto)
                    .or_else(|| spec.get("Process").cloned())
                    .ok_or_else(|| anyhow!("{cmd}: the spec given with {key}= has no process"))?;
                obj.insert("process".into(), process);
                explicit.insert("process".into());
            }
            _ => {
                let field = field_name(obj, key, cmd)?;
                let value = convert(&field, &obj[&field], text)
                    .with_context(|| format!("invalid value for {key} in {cmd}"))?;
                let value = normalize(&field, value);
                obj.insert(field.clone(), value);
                explicit.insert(field);
            }
        }
    }
    let terminal_flag = terminal.unwrap_or(false);
    if cmd == "CreateContainer" {
        match rootfs {
            Some(rootfs) => {
                let argv = proc_args.unwrap_or_else(|| vec!["sh".to_string()]);
                obj.insert(
                    "OCI".into(),
                    spec::default_spec_json(&rootfs, argv, terminal_flag),
                );
                explicit.insert("OCI".into());
            }
            None if proc_args.is_some() || terminal.is_some() => {
                bail!("CreateContainer: args= and terminal= need rootfs=/path/to/rootfs to build a spec")
            }
            None => {}
        }
    } else if cmd == "ExecProcess" {
        if let Some(argv) = proc_args {
            obj.insert(
                "process".into(),
                spec::default_process_json(argv, terminal_flag),
            );
            explicit.insert("process".into());
        } else if terminal.is_some() {
            bail!("ExecProcess: terminal= needs args='command ...' to build a process");
        }
    }
    Ok(())
}

/// Converts the text of `key=value` to the JSON type of the field's default value.
fn convert(field: &str, default: &Value, text: &str) -> Result<Value> {
    if field == "signal" {
        return Ok(Value::from(args::parse_signal(text)?));
    }
    if let Some(path) = text.strip_prefix("file://") {
        if matches!(default, Value::Object(_) | Value::Null | Value::Array(_)) {
            let content =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
            return serde_json::from_str(&content)
                .map_err(|e| anyhow!("{path} is not valid JSON: {e}"));
        }
    }
    match default {
        Value::String(_) => Ok(Value::String(text.to_string())),
        Value::Bool(_) => Ok(Value::Bool(args::parse_bool(text)?)),
        Value::Number(n) => {
            let t = text.trim();
            let parsed = if n.is_f64() {
                t.parse::<f64>().ok().and_then(serde_json::Number::from_f64)
            } else if let Some(u) = parse_hex(t) {
                Some(u.into())
            } else if let Ok(u) = t.parse::<u64>() {
                Some(u.into())
            } else {
                t.parse::<i64>().ok().map(Into::into)
            };
            parsed
                .map(Value::Number)
                .ok_or_else(|| anyhow!("{field} needs a number, not {text:?}"))
        }
        Value::Array(_) if BYTES_FIELDS.contains(&field) => {
            Ok(bytes_value(&args::parse_bytes(text)?))
        }
        Value::Array(_) => {
            if text.trim_start().starts_with('[') {
                return parse_typed_json(field, text, "an array");
            }
            // A comma-separated list; numbers stay numbers.
            Ok(Value::Array(
                text.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| match (s.trim().parse::<i64>(), parse_hex(s.trim())) {
                        (Ok(n), _) => Value::from(n),
                        (_, Some(n)) => Value::from(n),
                        _ => Value::String(s.to_string()),
                    })
                    .collect(),
            ))
        }
        Value::Object(_) | Value::Null => parse_typed_json(field, text, "an object"),
    }
}

/// A `0x`-prefixed hexadecimal number (e.g. memory addresses for MemHotplugByProbe).
fn parse_hex(t: &str) -> Option<u64> {
    let digits = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X"))?;
    u64::from_str_radix(digits, 16).ok()
}

fn parse_typed_json(field: &str, text: &str, want: &str) -> Result<Value> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| anyhow!("{field} needs {want} as JSON (or file:///path.json): {e}"))?;
    if want == "an object" && !v.is_object() && !v.is_null() {
        bail!("{field} needs {want}, not {}", json_kind(&v));
    }
    Ok(v)
}

fn bytes_value(bytes: &[u8]) -> Value {
    Value::Array(bytes.iter().map(|b| Value::from(*b)).collect())
}

/// Fills ids and the signal the user did not give (never overwriting a given one).
fn fill_auto_values(
    cmd: &str,
    obj: &mut Map<String, Value>,
    explicit: &HashSet<String>,
    auto: &mut AutoValues,
) {
    let given = |k: &str| explicit.contains(k);
    if let Some(cid) = obj.get("container_id").and_then(Value::as_str) {
        if given("container_id") {
            if !cid.is_empty() {
                auto.cid = Some(cid.to_string());
            }
        } else {
            let cid = auto.cid.get_or_insert_with(args::random_id).clone();
            obj.insert("container_id".into(), Value::String(cid));
        }
    }
    if obj.contains_key("exec_id") && !given("exec_id") {
        if let Some(cid) = obj.get("container_id").cloned() {
            obj.insert("exec_id".into(), cid);
        }
    }
    if obj.contains_key("signal") && !given("signal") {
        obj.insert("signal".into(), Value::from(libc::SIGKILL));
    }
    if cmd == "GetGuestDetails" {
        for field in ["mem_block_size", "mem_hotplug_probe"] {
            if !given(field) {
                obj.insert(field.into(), Value::Bool(true));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn signal_default() -> Value {
        json!({"container_id": "", "exec_id": "", "signal": 0})
    }

    fn pairs(text: &str) -> ArgForm {
        args::parse_form(text).unwrap()
    }

    #[test]
    fn empty_without_auto_values_is_default() {
        let mut auto = AutoValues::new(false);
        let r = build(
            "SignalProcess",
            signal_default(),
            &ArgForm::Empty,
            &mut auto,
        )
        .unwrap();
        assert_eq!(r, signal_default());
    }

    #[test]
    fn auto_values_fill_and_cache_cid() {
        let mut auto = AutoValues::new(true);
        let r = build(
            "SignalProcess",
            signal_default(),
            &ArgForm::Empty,
            &mut auto,
        )
        .unwrap();
        let cid = r["container_id"].as_str().unwrap().to_string();
        assert_eq!(cid.len(), 64);
        assert_eq!(r["exec_id"], cid.as_str());
        assert_eq!(r["signal"], 9);
        // The same id is used by the next command.
        let r2 = build(
            "SignalProcess",
            signal_default(),
            &ArgForm::Empty,
            &mut auto,
        )
        .unwrap();
        assert_eq!(r2["container_id"], cid.as_str());
        // A user-given id is kept, and becomes the cached one.
        let r3 = build(
            "SignalProcess",
            signal_default(),
            &pairs("cid=c1 signal=0"),
            &mut auto,
        )
        .unwrap();
        assert_eq!(
            r3,
            json!({"container_id": "c1", "exec_id": "c1", "signal": 0})
        );
        let r4 = build(
            "SignalProcess",
            signal_default(),
            &ArgForm::Empty,
            &mut auto,
        )
        .unwrap();
        assert_eq!(r4["container_id"], "c1");
    }

    #[test]
    fn json_ids_are_not_overwritten() {
        let mut auto = AutoValues::new(true);
        let form = pairs(r#"json://{"container_id":"c1","exec_id":"","signal":15}"#);
        let r = build("SignalProcess", signal_default(), &form, &mut auto).unwrap();
        assert_eq!(
            r,
            json!({"container_id": "c1", "exec_id": "", "signal": 15})
        );
    }

    #[test]
    fn pairs_are_typed() {
        let mut auto = AutoValues::new(false);
        let default = json!({"container_id": "", "exec_id": "", "len": 0, "data": [], "flag": false,
            "dns": [], "child": null});
        let r = build(
            "X",
            default.clone(),
            &pairs(r#"cid=123 exec_id=e len=1024 data=hex:6869 flag=true dns=a,b child='{"k":1}'"#),
            &mut auto,
        )
        .unwrap();
        assert_eq!(
            r,
            json!({"container_id": "123", "exec_id": "e", "len": 1024, "data": [104, 105],
                "flag": true, "dns": ["a", "b"], "child": {"k": 1}})
        );
        let r = build("X", default.clone(), &pairs("data='hi there'"), &mut auto).unwrap();
        assert_eq!(r["data"], json!(b"hi there".to_vec()));
        let err = build("X", default.clone(), &pairs("len=abc"), &mut auto).unwrap_err();
        assert!(format!("{err:#}").contains("needs a number"), "{err:#}");
        let err = build("X", default, &pairs("bogus=1"), &mut auto)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no field \"bogus\"") && err.contains("container_id"),
            "{err}"
        );
    }

    #[test]
    fn json_data_string_becomes_bytes() {
        let mut auto = AutoValues::new(false);
        let form = pairs(r#"json://{"data":"hex:0a"}"#);
        let r = build("WriteStdin", json!({"data": []}), &form, &mut auto).unwrap();
        assert_eq!(r["data"], json!([10]));
    }

    #[test]
    fn create_sandbox_gets_an_id() {
        let mut auto = AutoValues::new(true);
        let r = build(
            "CreateSandbox",
            json!({"sandbox_id": "", "hostname": ""}),
            &ArgForm::Empty,
            &mut auto,
        )
        .unwrap();
        assert_eq!(r["sandbox_id"].as_str().unwrap().len(), 64);
        let r = build(
            "CreateSandbox",
            json!({"sandbox_id": ""}),
            &pairs("sandbox_id=s1"),
            &mut auto,
        )
        .unwrap();
        assert_eq!(r["sandbox_id"], "s1");
    }

    #[test]
    fn create_container_convenience() {
        let mut auto = AutoValues::new(true);
        let default =
            json!({"container_id": "", "exec_id": "", "OCI": null, "sandbox_pidns": false});
        let r = build(
            "CreateContainer",
            default.clone(),
            &pairs(r#"rootfs=/r args='sh -c "echo hi"' id=c9 terminal=true"#),
            &mut auto,
        )
        .unwrap();
        assert_eq!(r["container_id"], "c9");
        assert_eq!(r["OCI"]["Root"]["Path"], "/r");
        assert_eq!(r["OCI"]["Process"]["Args"], json!(["sh", "-c", "echo hi"]));
        assert_eq!(r["OCI"]["Process"]["Terminal"], true);
        assert!(build("CreateContainer", default, &pairs("args=ls"), &mut auto).is_err());
    }

    #[test]
    fn exec_process_convenience() {
        let mut auto = AutoValues::new(false);
        let default = json!({"container_id": "", "exec_id": "", "process": null});
        let r = build(
            "ExecProcess",
            default,
            &pairs("cid=c1 exec_id=e1 args='ls -l /'"),
            &mut auto,
        )
        .unwrap();
        assert_eq!(r["process"]["Args"], json!(["ls", "-l", "/"]));
        assert_eq!(r["exec_id"], "e1");
    }

    #[test]
    fn spec_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("spec.json");
        std::fs::write(&p, r#"{"Hostname":"h"}"#).unwrap();
        let mut auto = AutoValues::new(false);
        let r = build(
            "CreateContainer",
            json!({"container_id": "", "OCI": null}),
            &pairs(&format!("cid=c spec=file://{}", p.display())),
            &mut auto,
        )
        .unwrap();
        assert_eq!(r["OCI"]["Hostname"], "h");
    }
}
