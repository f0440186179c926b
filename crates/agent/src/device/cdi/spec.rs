//! The CDI spec format (Container Device Interface, `cdiVersion` 0.3 … 1.x): the file layout, its
//! loading from the spec directories, and the names it uses (`vendor.com/class=device`).
//!
//! Spec files are guest files (written by guest components such as a GPU toolkit), read as JSON
//! (`.json`) or YAML (`.yaml`); a file that cannot be read or is invalid is skipped and reported
//! when a device is not found.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::IgnoredAny;
use serde::Deserialize;

/// Largest spec file read.
const MAX_SPEC_SIZE: u64 = 4 << 20;
/// Most spec files looked at per load (all directories together).
const MAX_SPEC_FILES: usize = 1024;
/// Deepest sub-directory of a spec directory looked into.
const MAX_DEPTH: usize = 8;

/// One spec file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    #[serde(default)]
    pub devices: Vec<Device>,
    #[serde(default)]
    pub container_edits: ContainerEdits,
}

/// One device of a spec.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub name: String,
    #[serde(default)]
    pub container_edits: ContainerEdits,
}

/// The changes a spec or device makes to a container's OCI spec.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default)]
    pub hooks: Vec<Hook>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// Not supported: a device that needs it is refused.
    #[serde(default)]
    pub intel_rdt: Option<IgnoredAny>,
    /// Not supported: a device that needs it is refused.
    #[serde(default)]
    pub net_devices: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    pub path: String,
    #[serde(default)]
    pub host_path: Option<String>,
    #[serde(default, rename = "type")]
    pub typ: Option<String>,
    #[serde(default)]
    pub major: Option<i64>,
    #[serde(default)]
    pub minor: Option<i64>,
    #[serde(default)]
    pub file_mode: Option<u32>,
    #[serde(default)]
    pub permissions: Option<String>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    pub hook_name: String,
    pub path: String,
    #[serde(default)]
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub timeout: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default, rename = "type")]
    pub typ: Option<String>,
    #[serde(default)]
    pub options: Option<Vec<String>>,
}

/// The hook names of the CDI spec (the OCI hook lists they go to).
pub const HOOK_NAMES: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// `vendor.com`: letters, digits, `-`, `_`, `.`; starts with a letter, ends with a letter or digit.
pub fn valid_vendor(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.ends_with(is_alnum)
        && s.chars().all(|c| is_alnum(c) || "-_.".contains(c))
}

/// `class`: letters, digits, `-`, `_`; starts with a letter, ends with a letter or digit.
pub fn valid_class(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.ends_with(is_alnum)
        && s.chars().all(|c| is_alnum(c) || "-_".contains(c))
}

/// A device name: letters, digits, `-`, `_`, `.`, `:`; starts and ends with a letter or digit.
pub fn valid_device_name(s: &str) -> bool {
    s.starts_with(is_alnum)
        && s.ends_with(is_alnum)
        && s.chars().all(|c| is_alnum(c) || "-_.:".contains(c))
}

/// Whether `kind` is `vendor/class`.
pub fn valid_kind(kind: &str) -> bool {
    kind.split_once('/')
        .is_some_and(|(v, c)| valid_vendor(v) && valid_class(c))
}

/// Splits a fully qualified device name `vendor/class=name` into (kind, name).
pub fn parse_qualified(name: &str) -> Option<(&str, &str)> {
    let (kind, dev) = name.split_once('=')?;
    (valid_kind(kind) && valid_device_name(dev)).then_some((kind, dev))
}

impl Spec {
    /// Checks what the format requires; the message names the problem.
    pub fn validate(&self) -> Result<(), String> {
        if self.cdi_version.is_empty() {
            return Err("no cdiVersion".into());
        }
        if !valid_kind(&self.kind) {
            return Err(format!(
                "invalid kind {:?} (expected vendor.com/class)",
                self.kind
            ));
        }
        self.container_edits.validate()?;
        let mut names = std::collections::HashSet::new();
        for d in &self.devices {
            if !valid_device_name(&d.name) {
                return Err(format!("invalid device name {:?}", d.name));
            }
            if !names.insert(d.name.as_str()) {
                return Err(format!("device {:?} is listed twice", d.name));
            }
            d.container_edits
                .validate()
                .map_err(|e| format!("device {:?}: {e}", d.name))?;
        }
        Ok(())
    }
}

impl ContainerEdits {
    fn validate(&self) -> Result<(), String> {
        for e in &self.env {
            if !e.contains('=') || e.starts_with('=') {
                return Err(format!("invalid env entry {e:?}"));
            }
        }
        for n in &self.device_nodes {
            if !n.path.starts_with('/') {
                return Err(format!("device node path {:?} is not absolute", n.path));
            }
            if let Some(t) = &n.typ {
                if !["b", "c", "u", "p"].contains(&t.as_str()) {
                    return Err(format!("device node {} has an invalid type {t:?}", n.path));
                }
            }
            if let Some(p) = &n.permissions {
                if p.is_empty() || !p.chars().all(|c| "rwm".contains(c)) {
                    return Err(format!(
                        "device node {} has invalid permissions {p:?}",
                        n.path
                    ));
                }
            }
        }
        for h in &self.hooks {
            if !HOOK_NAMES.contains(&h.hook_name.as_str()) {
                return Err(format!("unknown hook name {:?}", h.hook_name));
            }
            if !h.path.starts_with('/') {
                return Err(format!("hook path {:?} is not absolute", h.path));
            }
            if h.timeout.is_some_and(|t| t <= 0) {
                return Err(format!("hook {} has a timeout <= 0", h.path));
            }
        }
        for m in &self.mounts {
            if m.host_path.is_empty() || !m.container_path.starts_with('/') {
                return Err(format!(
                    "mount {:?} -> {:?} needs a host path and an absolute container path",
                    m.host_path, m.container_path
                ));
            }
        }
        Ok(())
    }

    /// Edits this crate cannot apply.
    pub fn unsupported(&self) -> Option<&'static str> {
        if self.intel_rdt.is_some() {
            Some("intelRdt")
        } else if self.net_devices.is_some() {
            Some("netDevices")
        } else {
            None
        }
    }
}

/// A device found in the spec directories.
#[derive(Debug, Clone)]
pub struct Found {
    pub spec: Arc<Spec>,
    pub file: PathBuf,
    pub index: usize,
}

impl Found {
    pub fn device(&self) -> &Device {
        &self.spec.devices[self.index]
    }
}

/// Every device of every readable spec file: later directories take precedence over earlier ones;
/// two files of one directory naming the same device make it conflicting.
#[derive(Debug, Default)]
pub struct Registry {
    pub devices: HashMap<String, Found>,
    /// Devices defined twice at the same priority, with the files.
    pub conflicts: HashMap<String, Vec<PathBuf>>,
    /// Files skipped, with the reason.
    pub errors: Vec<String>,
}

impl Registry {
    /// Reads the spec directories (lowest priority first). A missing directory is empty.
    pub fn load(dirs: &[PathBuf]) -> Registry {
        let mut reg = Registry::default();
        let mut budget = MAX_SPEC_FILES;
        for dir in dirs {
            let mut files = Vec::new();
            collect(dir, 0, &mut files, &mut budget, &mut reg.errors);
            files.sort();
            let mut this_dir: HashMap<String, Found> = HashMap::new();
            let mut dup: HashMap<String, Vec<PathBuf>> = HashMap::new();
            for file in files {
                let spec = match read_spec(&file) {
                    Ok(s) => Arc::new(s),
                    Err(e) => {
                        reg.errors.push(format!("{}: {e}", file.display()));
                        continue;
                    }
                };
                for (index, d) in spec.devices.iter().enumerate() {
                    let qualified = format!("{}={}", spec.kind, d.name);
                    if let Some(prev) = this_dir.get(&qualified) {
                        dup.entry(qualified)
                            .or_insert_with(|| vec![prev.file.clone()])
                            .push(file.clone());
                        continue;
                    }
                    let found = Found {
                        spec: spec.clone(),
                        file: file.clone(),
                        index,
                    };
                    this_dir.insert(qualified, found);
                }
            }
            // This directory overrides the earlier ones, conflicts included.
            for (name, found) in this_dir {
                match dup.remove(&name) {
                    Some(files) => {
                        reg.devices.remove(&name);
                        reg.conflicts.insert(name, files);
                    }
                    None => {
                        reg.conflicts.remove(&name);
                        reg.devices.insert(name, found);
                    }
                }
            }
        }
        reg
    }

    /// Whether some spec provides devices of `kind`.
    pub fn has_kind(&self, kind: &str) -> bool {
        self.devices.values().any(|f| f.spec.kind == kind)
    }
}

fn collect(
    dir: &Path,
    depth: usize,
    out: &mut Vec<PathBuf>,
    budget: &mut usize,
    errors: &mut Vec<String>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            if depth < MAX_DEPTH {
                collect(&path, depth + 1, out, budget, errors);
            }
            continue;
        }
        let ext = path.extension().and_then(|x| x.to_str());
        if !matches!(ext, Some("json") | Some("yaml")) {
            continue;
        }
        if *budget == 0 {
            errors.push(format!(
                "{}: more than {MAX_SPEC_FILES} spec files, ignored",
                path.display()
            ));
            continue;
        }
        *budget -= 1;
        out.push(path);
    }
}

/// Reads and validates one spec file.
pub fn read_spec(file: &Path) -> Result<Spec, String> {
    let f = std::fs::File::open(file).map_err(|e| e.to_string())?;
    let mut text = Vec::new();
    f.take(MAX_SPEC_SIZE + 1)
        .read_to_end(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_SPEC_SIZE {
        return Err(format!("larger than {MAX_SPEC_SIZE} bytes"));
    }
    let spec: Spec = if file.extension().is_some_and(|x| x == "json") {
        serde_json::from_slice(&text).map_err(|e| format!("invalid JSON: {e}"))?
    } else {
        serde_yaml_ng::from_slice(&text).map_err(|e| format!("invalid YAML: {e}"))?
    };
    spec.validate()?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            parse_qualified("nvidia.com/gpu=0"),
            Some(("nvidia.com/gpu", "0"))
        );
        assert_eq!(
            parse_qualified("vendor.com/class=GPU-a1:b.c_d"),
            Some(("vendor.com/class", "GPU-a1:b.c_d"))
        );
        for bad in [
            "nvidia.com/gpu",
            "nvidia.com=0",
            "1vendor/class=x",
            "vendor/cl.ass=x",
            "vendor/class=-x",
            "vendor/class=x/y",
            "vendor/class=",
            "/class=x",
        ] {
            assert_eq!(parse_qualified(bad), None, "{bad}");
        }
    }

    #[test]
    fn json_and_yaml_and_precedence() {
        let d = tempfile::tempdir().unwrap();
        let (low, high) = (d.path().join("etc"), d.path().join("run"));
        std::fs::create_dir_all(low.join("sub")).unwrap();
        std::fs::create_dir_all(&high).unwrap();
        std::fs::write(
            low.join("sub/a.json"),
            r#"{"cdiVersion":"0.6.0","kind":"example.com/dev","containerEdits":{"env":["A=1"]},
                "devices":[{"name":"one","containerEdits":{"deviceNodes":[{"path":"/dev/x"}]}},
                           {"name":"two","containerEdits":{"env":["T=low"]}}]}"#,
        )
        .unwrap();
        std::fs::write(
            high.join("b.yaml"),
            "cdiVersion: 0.6.0\nkind: example.com/dev\ndevices:\n- name: two\n  containerEdits:\n    env: [T=high]\n    mounts:\n    - {hostPath: /h, containerPath: /c, options: [bind]}\n",
        )
        .unwrap();
        std::fs::write(high.join("bad.json"), "{").unwrap();
        std::fs::write(high.join("ignored.txt"), "{").unwrap();
        std::fs::write(
            high.join("c.json"),
            r#"{"cdiVersion":"0.6.0","kind":"example.com/dev","devices":[{"name":"three"}]}"#,
        )
        .unwrap();
        std::fs::write(
            high.join("d.json"),
            r#"{"cdiVersion":"0.6.0","kind":"example.com/dev","devices":[{"name":"three"}]}"#,
        )
        .unwrap();
        let reg = Registry::load(&[low, high.clone()]);
        assert_eq!(
            reg.devices["example.com/dev=one"]
                .device()
                .container_edits
                .device_nodes[0]
                .path,
            "/dev/x"
        );
        let two = &reg.devices["example.com/dev=two"];
        assert_eq!(two.device().container_edits.env, vec!["T=high"]);
        assert_eq!(two.device().container_edits.mounts[0].container_path, "/c");
        assert_eq!(reg.errors.len(), 1, "{:?}", reg.errors);
        assert!(reg.errors[0].contains("bad.json"));
        assert_eq!(reg.conflicts["example.com/dev=three"].len(), 2);
        assert!(reg.has_kind("example.com/dev") && !reg.has_kind("example.com/other"));
    }

    #[test]
    fn validation() {
        let bad = [
            r#"{"cdiVersion":"","kind":"a.com/b"}"#,
            r#"{"cdiVersion":"0.6.0","kind":"ab"}"#,
            r#"{"cdiVersion":"0.6.0","kind":"a.com/b","devices":[{"name":"-x"}]}"#,
            r#"{"cdiVersion":"0.6.0","kind":"a.com/b","devices":[{"name":"x"},{"name":"x"}]}"#,
            r#"{"cdiVersion":"0.6.0","kind":"a.com/b","containerEdits":{"env":["NOEQUALS"]}}"#,
            r#"{"cdiVersion":"0.6.0","kind":"a.com/b","containerEdits":{"hooks":[{"hookName":"later","path":"/x"}]}}"#,
            r#"{"cdiVersion":"0.6.0","kind":"a.com/b","containerEdits":{"deviceNodes":[{"path":"dev/x"}]}}"#,
            r#"{"cdiVersion":"0.6.0","kind":"a.com/b","containerEdits":{"deviceNodes":[{"path":"/dev/x","type":"z"}]}}"#,
            r#"{"cdiVersion":"0.6.0","kind":"a.com/b","containerEdits":{"mounts":[{"hostPath":"/a","containerPath":"b"}]}}"#,
        ];
        for text in bad {
            let s: Spec = serde_json::from_str(text).unwrap();
            assert!(s.validate().is_err(), "{text}");
        }
        let s: Spec = serde_json::from_str(
            r#"{"cdiVersion":"0.6.0","kind":"a.com/b","containerEdits":{"intelRdt":{"closID":"x"}}}"#,
        )
        .unwrap();
        assert_eq!(s.container_edits.unsupported(), Some("intelRdt"));
    }
}
