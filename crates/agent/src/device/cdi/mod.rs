//! CDI (Container Device Interface) devices of CreateContainer.
//!
//! A container asks for devices by fully qualified name (`vendor.com/class=name`) in
//! `cdi.k8s.io/*` annotations (each value a comma-separated list) and, with
//! `agent.visible_cdi_devices`, in its `VISIBLE_CDI_DEVICES` environment variable. The devices are
//! looked up in the CDI spec files of the spec directories (`/etc/cdi`, then `/var/run/cdi`, which
//! takes precedence; `KATA_AGENT_CDI_SPEC_DIRS` replaces the list) and their container edits —
//! the spec-level edits once per spec file, then each device's — are applied to the OCI spec before
//! the container is created.
//!
//! Spec files may be written by guest components after the container was requested: while a
//! device's kind is not defined by any spec file, the directories are read again every 200 ms, up
//! to `agent.cdi_timeout` (DEADLINE_EXCEEDED naming the devices). A device whose kind is defined
//! but which no file defines is NOT_FOUND at once, and a device defined twice in one directory is
//! FAILED_PRECONDITION. Nothing is changed until every device is found and every edit applies.

pub mod edits;
pub mod spec;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use oci_spec::runtime::Spec;
use tracing::info;

use crate::error::{AgentError, Result};
use spec::{Found, Registry};

/// Annotation prefix of CDI device requests.
pub const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";
/// Containers of this type (the sandbox's pause container) get no CDI devices.
const CONTAINER_TYPE: &str = "io.katacontainers.pkg.oci.container_type";
/// Environment variable listing CDI devices (with `agent.visible_cdi_devices`).
const VISIBLE_CDI_DEVICES: &str = "VISIBLE_CDI_DEVICES";
/// How often the spec directories are read again while a device is missing.
const POLL: Duration = Duration::from_millis(200);
/// Most devices one container may ask for.
const MAX_DEVICES: usize = 256;

/// The devices a container asks for, in order, without duplicates.
pub fn requested(spec: &Spec, visible_env: bool) -> Result<Vec<String>> {
    let annotations = spec.annotations().clone().unwrap_or_default();
    if annotations.get(CONTAINER_TYPE).map(String::as_str) == Some("pod_sandbox") {
        return Ok(Vec::new());
    }
    let mut keys: Vec<&String> = annotations
        .keys()
        .filter(|k| k.starts_with(ANNOTATION_PREFIX))
        .collect();
    keys.sort();
    let mut out: Vec<String> = Vec::new();
    let push = |name: &str, out: &mut Vec<String>| -> Result<()> {
        if !out.iter().any(|d| d == name) {
            out.push(name.to_string());
        }
        if out.len() > MAX_DEVICES {
            return Err(AgentError::invalid_argument(format!(
                "more than {MAX_DEVICES} CDI devices requested"
            )));
        }
        Ok(())
    };
    for key in keys {
        if key.len() == ANNOTATION_PREFIX.len() {
            return Err(AgentError::invalid_argument(format!(
                "CDI annotation {key:?} has no name after the prefix"
            )));
        }
        for name in annotations[key].split(',').map(str::trim) {
            if spec::parse_qualified(name).is_none() {
                return Err(AgentError::invalid_argument(format!(
                    "annotation {key}: {name:?} is not a fully qualified CDI device name (vendor.com/class=name)"
                )));
            }
            push(name, &mut out)?;
        }
    }
    if visible_env {
        for name in visible_devices(spec)? {
            push(&name, &mut out)?;
        }
    }
    Ok(out)
}

/// `VISIBLE_CDI_DEVICES=<kind>=<all|i,j,...>[:<kind>=...]`; empty, `none` or `void` asks for
/// nothing.
fn visible_devices(spec: &Spec) -> Result<Vec<String>> {
    let prefix = format!("{VISIBLE_CDI_DEVICES}=");
    let value = spec
        .process()
        .as_ref()
        .and_then(|p| p.env().as_ref())
        .and_then(|env| env.iter().find_map(|e| e.strip_prefix(prefix.as_str())));
    let Some(value) = value.map(str::trim) else {
        return Ok(Vec::new());
    };
    if matches!(value, "" | "none" | "void") {
        return Ok(Vec::new());
    }
    let bad = |why: String| AgentError::invalid_argument(format!("{VISIBLE_CDI_DEVICES}: {why}"));
    let mut out = Vec::new();
    for entry in value.split(':').map(str::trim) {
        let (kind, list) = entry
            .split_once('=')
            .ok_or_else(|| bad(format!("entry {entry:?} is not <kind>=<devices>")))?;
        let kind = kind.trim();
        if !spec::valid_kind(kind) {
            return Err(bad(format!(
                "{kind:?} is not a CDI kind (vendor.com/class)"
            )));
        }
        let tokens: Vec<&str> = list.split(',').map(str::trim).collect();
        if tokens.len() > 1 && tokens.contains(&"all") {
            return Err(bad(format!(
                "kind {kind} mixes \"all\" with device indices"
            )));
        }
        for t in tokens {
            if t != "all" && t.parse::<u32>().is_err() {
                return Err(bad(format!(
                    "{t:?} is neither \"all\" nor a device index (kind {kind})"
                )));
            }
            out.push(format!("{kind}={t}"));
        }
    }
    Ok(out)
}

enum Lookup {
    Found(Vec<(String, Found)>),
    /// No spec of the device's kind yet: worth waiting for.
    Absent(Vec<String>),
}

fn lookup(reg: &Registry, wanted: &[String], dirs: &str) -> Result<Lookup> {
    let conflicting: Vec<String> = wanted
        .iter()
        .filter_map(|d| {
            reg.conflicts.get(d).map(|files| {
                let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
                format!("{d} (in {})", files.join(", "))
            })
        })
        .collect();
    if !conflicting.is_empty() {
        return Err(AgentError::failed_precondition(format!(
            "CDI device(s) defined more than once: {}",
            conflicting.join("; ")
        )));
    }
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|d| !reg.devices.contains_key(*d))
        .collect();
    if missing.is_empty() {
        return Ok(Lookup::Found(
            wanted
                .iter()
                .map(|d| (d.clone(), reg.devices[d].clone()))
                .collect(),
        ));
    }
    let undefined: Vec<String> = missing
        .iter()
        .filter(|d| spec::parse_qualified(d).is_some_and(|(kind, _)| reg.has_kind(kind)))
        .map(|d| d.to_string())
        .collect();
    if !undefined.is_empty() {
        return Err(AgentError::not_found(format!(
            "CDI device(s) {} not found: the CDI specs of their kind in {dirs} do not define them{}",
            undefined.join(", "),
            skipped(reg)
        )));
    }
    Ok(Lookup::Absent(missing.into_iter().cloned().collect()))
}

fn skipped(reg: &Registry) -> String {
    if reg.errors.is_empty() {
        String::new()
    } else {
        format!(" (spec files skipped: {})", reg.errors.join("; "))
    }
}

/// Applies the edits of the found devices to a copy of `spec`; `spec` changes only on success.
fn apply(spec: &mut Spec, found: &[(String, Found)]) -> Result<()> {
    let mut out = spec.clone();
    let mut specs_done: Vec<&PathBuf> = Vec::new();
    for (name, f) in found {
        if !specs_done.contains(&&f.file) {
            specs_done.push(&f.file);
            edits::apply(&mut out, &f.spec.container_edits).map_err(|e| {
                AgentError::failed_precondition(format!(
                    "CDI device {name}: the edits of {} cannot be applied: {e}",
                    f.file.display()
                ))
            })?;
        }
        edits::apply(&mut out, &f.device().container_edits).map_err(|e| {
            AgentError::failed_precondition(format!(
                "CDI device {name} ({}) cannot be applied: {e}",
                f.file.display()
            ))
        })?;
    }
    *spec = out;
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AgentError::internal(format!("CDI task failed: {e}")))
}

/// Injects the CDI devices `spec` asks for, waiting up to `timeout` for their spec files.
pub async fn inject(
    spec: &mut Spec,
    dirs: &[PathBuf],
    timeout: Duration,
    visible_env: bool,
) -> Result<()> {
    let wanted = requested(spec, visible_env)?;
    if wanted.is_empty() {
        return Ok(());
    }
    let shown = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let deadline = Instant::now() + timeout;
    loop {
        let d = dirs.to_vec();
        let reg = blocking(move || Registry::load(&d)).await?;
        match lookup(&reg, &wanted, &shown)? {
            Lookup::Found(found) => {
                let mut edited = spec.clone();
                let edited =
                    blocking(move || apply(&mut edited, &found).map(|()| edited)).await??;
                *spec = edited;
                info!(subsystem = "cdi", devices = %wanted.join(","), "CDI devices injected");
                return Ok(());
            }
            Lookup::Absent(missing) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(AgentError::deadline_exceeded(format!(
                        "CDI device(s) {} not found in {shown} within the CDI timeout of {}{}",
                        missing.join(", "),
                        crate::device::fmt_duration(timeout),
                        skipped(&reg)
                    )));
                }
                tokio::time::sleep(POLL.min(deadline - now)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(annotations: serde_json::Value, env: &[&str]) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.1.0",
            "process": {"cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0}, "env": env},
            "root": {"path": "/r"},
            "annotations": annotations,
            "linux": {}
        }))
        .unwrap()
    }

    #[test]
    fn requests() {
        let s = spec_with(
            serde_json::json!({"cdi.k8s.io/b": "x.com/gpu=1, x.com/gpu=0", "cdi.k8s.io/a": "x.com/gpu=1", "other": "y"}),
            &["VISIBLE_CDI_DEVICES=x.com/ib=all:x.com/gpu=0,2"],
        );
        assert_eq!(
            requested(&s, false).unwrap(),
            ["x.com/gpu=1", "x.com/gpu=0"]
        );
        assert_eq!(
            requested(&s, true).unwrap(),
            ["x.com/gpu=1", "x.com/gpu=0", "x.com/ib=all", "x.com/gpu=2"]
        );
        let sandbox = spec_with(
            serde_json::json!({"cdi.k8s.io/a": "x.com/gpu=1", CONTAINER_TYPE: "pod_sandbox"}),
            &[],
        );
        assert!(requested(&sandbox, true).unwrap().is_empty());
        for bad in ["gpu0", "x.com/gpu", ""] {
            let s = spec_with(serde_json::json!({"cdi.k8s.io/a": bad}), &[]);
            assert_eq!(
                requested(&s, false).unwrap_err().code,
                ttrpc::Code::INVALID_ARGUMENT
            );
        }
        for bad in ["x.com/gpu", "x.com/gpu=all,1", "x.com/gpu=-1", "gpu=0"] {
            let s = spec_with(
                serde_json::json!({}),
                &[&format!("VISIBLE_CDI_DEVICES={bad}")],
            );
            assert_eq!(
                requested(&s, true).unwrap_err().code,
                ttrpc::Code::INVALID_ARGUMENT,
                "{bad}"
            );
        }
        for none in ["none", "void", ""] {
            let s = spec_with(
                serde_json::json!({}),
                &[&format!("VISIBLE_CDI_DEVICES={none}")],
            );
            assert!(requested(&s, true).unwrap().is_empty());
        }
    }
}
