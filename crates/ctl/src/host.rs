//! Arguments in the upstream tool's style that name *host-side* inputs instead of request
//! fields: the tool reads a host file, directory or image and builds the request from it.
//!
//! * `CopyFile json://{"src": HOSTPATH, "dest": GUESTPATH}` (or `src=.. dest=..`): the file,
//!   symlink or directory at `src` (not followed) becomes one or more `CopyFileRequest`s;
//! * `SetPolicy json://{"policy_file": PATH}` (or `policy_file=..`): the file's text becomes
//!   `SetPolicyRequest.policy`;
//! * `CreateContainer json://{"image": IMAGE, "id": CID}` (or `image=.. id=..`): a container
//!   from an OCI bundle or root filesystem directory on the host, or from an image reference
//!   pulled with `skopeo` and unpacked with `umoci`.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use protocols::agent::CopyFileRequest;
use serde_json::{Map, Value};

use crate::args::ArgForm;

/// Largest `data` of one CopyFile request (the upstream tool's chunk size).
pub const COPY_CHUNK: usize = 1024 * 1024;

/// `dir_mode` the upstream tool sends for the parent directories it makes the agent create:
/// the Go `os.ModeDir` bit with permissions 0750.
pub const COPY_DIR_MODE: u32 = 0o20000000750;

/// Where images pulled for `CreateContainer image=` are unpacked (one bundle per container id).
pub const IMAGE_BUNDLE_BASE: &str = "/run/kata-containers/testing";

/// Where `skopeo` stores the pulled image before `umoci` unpacks it.
pub const IMAGE_WORK_DIR: &str = "/run/kata-containers/test_image";

/// An argument naming host-side inputs.
#[derive(Debug, Clone, PartialEq)]
pub enum HostInput {
    /// Copy `src` (a host path, not followed if a symlink) to `dest` in the guest.
    CopyFile { src: PathBuf, dest: String },
    /// Send the text of `policy_file`.
    SetPolicy { policy_file: PathBuf },
    /// Create container `id` (auto-values if empty) from `image`.
    Image { image: String, id: Option<String> },
}

/// The argument's keys and values, when it is a JSON object or `key=value` pairs.
fn entries(form: &ArgForm) -> Vec<(String, Value)> {
    match form {
        ArgForm::Empty => Vec::new(),
        ArgForm::Json(map) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ArgForm::Pairs(pairs) => pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    }
}

fn string_of(cmd: &str, key: &str, v: &Value) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        other => bail!(
            "{cmd}: {key} must be a string, not {}",
            crate::args::json_kind(other)
        ),
    }
}

/// Takes the keys `wanted` out of `items`; every other key is an error once one of `trigger`
/// is present. Returns `None` when no trigger key is there (the argument is a plain request).
fn take(
    cmd: &str,
    items: &[(String, Value)],
    trigger: &[&str],
    allowed: &[&str],
) -> Result<Option<Map<String, Value>>> {
    if !items.iter().any(|(k, _)| trigger.contains(&k.as_str())) {
        return Ok(None);
    }
    let mut out = Map::new();
    for (k, v) in items {
        if !allowed.contains(&k.as_str()) {
            bail!(
                "{cmd}: {k:?} cannot be combined with {}; this form takes only {}",
                trigger.join("/"),
                allowed.join(", ")
            );
        }
        out.insert(k.clone(), v.clone());
    }
    Ok(Some(out))
}

/// Recognises the host-input forms of `cmd`; `None` means the argument is a request.
pub fn detect(cmd: &str, form: &ArgForm) -> Result<Option<HostInput>> {
    let items = entries(form);
    match cmd {
        "CopyFile" => {
            let Some(m) = take(cmd, &items, &["src", "dest"], &["src", "dest"])? else {
                return Ok(None);
            };
            let src = m.get("src").map(|v| string_of(cmd, "src", v)).transpose()?;
            let dest = m
                .get("dest")
                .map(|v| string_of(cmd, "dest", v))
                .transpose()?;
            match (src, dest) {
                (Some(src), Some(dest)) if !src.is_empty() && !dest.is_empty() => {
                    Ok(Some(HostInput::CopyFile {
                        src: PathBuf::from(src),
                        dest,
                    }))
                }
                _ => bail!("CopyFile needs both src (a host path) and dest (the guest path)"),
            }
        }
        "SetPolicy" => {
            let Some(m) = take(cmd, &items, &["policy_file"], &["policy_file"])? else {
                return Ok(None);
            };
            let path = string_of(cmd, "policy_file", &m["policy_file"])?;
            if path.is_empty() {
                bail!("SetPolicy: policy_file is empty");
            }
            Ok(Some(HostInput::SetPolicy {
                policy_file: PathBuf::from(path),
            }))
        }
        "CreateContainer" => {
            let Some(m) = take(cmd, &items, &["image"], &["image", "id"])? else {
                return Ok(None);
            };
            let image = string_of(cmd, "image", &m["image"])?;
            if image.is_empty() {
                bail!("CreateContainer: image is empty");
            }
            let id = m
                .get("id")
                .map(|v| string_of(cmd, "id", v))
                .transpose()?
                .filter(|s| !s.is_empty());
            if let Some(id) = &id {
                check_id(id)?;
            }
            Ok(Some(HostInput::Image { image, id }))
        }
        _ => Ok(None),
    }
}

/// A container id used in host paths: one plain path component.
fn check_id(id: &str) -> Result<()> {
    if id == "." || id == ".." || id.contains('/') || id.contains('\0') {
        bail!("container id {id:?} is not usable as a directory name");
    }
    Ok(())
}

/// The requests that copy one host path, produced one at a time so that a large file is
/// never held in memory whole.
pub struct CopyFileSource {
    base: CopyFileRequest,
    file: Option<File>,
    sent: u64,
    first: bool,
}

impl CopyFileSource {
    /// Reads the metadata of `src` (without following a final symlink) and prepares the
    /// requests: a regular file is sent in chunks of [`COPY_CHUNK`] bytes at increasing
    /// offsets, an empty file, a directory or a symlink (target in `data`) in one request.
    /// `file_mode` carries the file type bits, `uid`/`gid` the owner, as on the host.
    pub fn open(src: &Path, dest: &str) -> Result<CopyFileSource> {
        let meta = std::fs::symlink_metadata(src)
            .with_context(|| format!("CopyFile: cannot read {}", src.display()))?;
        let mut base = CopyFileRequest {
            path: dest.to_string(),
            dir_mode: COPY_DIR_MODE,
            file_mode: meta.mode(),
            uid: meta.uid() as i32,
            gid: meta.gid() as i32,
            ..Default::default()
        };
        let ft = meta.file_type();
        let mut file = None;
        if ft.is_symlink() {
            let target = std::fs::read_link(src)
                .with_context(|| format!("CopyFile: cannot read the link {}", src.display()))?;
            base.data = std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str()).to_vec();
        } else if ft.is_file() {
            base.file_size = i64::try_from(meta.len())
                .map_err(|_| anyhow!("CopyFile: {} is too large", src.display()))?;
            if meta.len() > 0 {
                file = Some(
                    File::open(src)
                        .with_context(|| format!("CopyFile: cannot open {}", src.display()))?,
                );
            }
        } else if !ft.is_dir() {
            bail!(
                "CopyFile: {} is not a regular file, directory or symlink",
                src.display()
            );
        }
        Ok(CopyFileSource {
            base,
            file,
            sent: 0,
            first: true,
        })
    }

    /// The next request, or `None` when everything was produced.
    pub fn next_request(&mut self) -> Result<Option<CopyFileRequest>> {
        let Some(file) = self.file.as_mut() else {
            if !self.first {
                return Ok(None);
            }
            self.first = false;
            return Ok(Some(self.base.clone()));
        };
        let size = self.base.file_size as u64;
        if self.sent >= size {
            return Ok(None);
        }
        let want = (size - self.sent).min(COPY_CHUNK as u64) as usize;
        let mut data = vec![0u8; want];
        file.read_exact(&mut data).with_context(|| {
            format!(
                "CopyFile: the source shrank while it was read (at offset {})",
                self.sent
            )
        })?;
        let mut req = self.base.clone();
        req.offset = self.sent as i64;
        req.data = data;
        self.sent += want as u64;
        Ok(Some(req))
    }
}

/// The request JSON of `SetPolicy policy_file=PATH`.
pub fn set_policy_request(policy_file: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(policy_file).with_context(|| {
        format!(
            "SetPolicy: cannot read the policy file {}",
            policy_file.display()
        )
    })?;
    Ok(serde_json::json!({ "policy": text }))
}

/// The OCI spec (protobuf-shaped JSON) of a container made from `image`.
///
/// * a host directory with a `config.json` is an OCI bundle: its root filesystem (the
///   `root.path` of the config, relative to the bundle, default `rootfs`) and the command,
///   environment, working directory and user of its `process` are used;
/// * any other host directory is a root filesystem, run with `sh`;
/// * anything else is an image reference, pulled with `skopeo copy docker://IMAGE` and
///   unpacked with `umoci unpack` into `/run/kata-containers/testing/<id>` (unless `dry_run`).
///
/// The rest of the spec is [`crate::spec::default_spec_json`].
pub fn image_spec(image: &str, id: &str, dry_run: bool) -> Result<Value> {
    check_id(id)?;
    let local = Path::new(image);
    let bundle = if local.is_dir() {
        if !local.join("config.json").is_file() {
            let root = absolute(local)?;
            return Ok(crate::spec::default_spec_json(
                &root,
                vec!["sh".into()],
                false,
            ));
        }
        local.to_path_buf()
    } else if dry_run {
        // Show what would be sent without pulling.
        let root = Path::new(IMAGE_BUNDLE_BASE).join(id).join("rootfs");
        return Ok(crate::spec::default_spec_json(
            &root.to_string_lossy(),
            vec!["sh".into()],
            false,
        ));
    } else {
        pull_image(image, id)?
    };
    bundle_spec(&bundle)
}

fn absolute(p: &Path) -> Result<String> {
    let abs =
        std::fs::canonicalize(p).with_context(|| format!("cannot resolve {}", p.display()))?;
    abs.to_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{} is not valid UTF-8", abs.display()))
}

/// The spec of an OCI bundle directory (see [`image_spec`]).
pub fn bundle_spec(bundle: &Path) -> Result<Value> {
    let cfg_path = bundle.join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("cannot read {}", cfg_path.display()))?;
    let cfg: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{} is not valid JSON: {e}", cfg_path.display()))?;
    let root_rel = cfg
        .pointer("/root/path")
        .and_then(Value::as_str)
        .unwrap_or("rootfs");
    let root = absolute(&bundle.join(root_rel))?;
    let mut spec = crate::spec::default_spec_json(&root, vec!["sh".into()], false);
    if let Some(process) = cfg.get("process") {
        let p = crate::bundle::oci_process_to_proto(process);
        let target = &mut spec["Process"];
        for key in ["Args", "Env", "Cwd"] {
            if let Some(v) = p.get(key).filter(|v| !is_empty(v)) {
                target[key] = v.clone();
            }
        }
        if let Some(user) = p.get("User") {
            for key in ["UID", "GID", "AdditionalGids"] {
                if let Some(v) = user.get(key) {
                    target["User"][key] = v.clone();
                }
            }
        }
    }
    Ok(spec)
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn run_tool(cmd: &mut std::process::Command, what: &str) -> Result<()> {
    let out = cmd.output().map_err(|e| {
        anyhow!("cannot run {what} ({e}); pulling an image for CreateContainer needs skopeo and umoci on the host")
    })?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Pulls `image` and unpacks it into the bundle directory of container `id`.
fn pull_image(image: &str, id: &str) -> Result<PathBuf> {
    let bundle = Path::new(IMAGE_BUNDLE_BASE).join(id);
    let oci_dir = Path::new(IMAGE_WORK_DIR).join(format!("oci-{id}"));
    std::fs::create_dir_all(IMAGE_BUNDLE_BASE)
        .with_context(|| format!("cannot create {IMAGE_BUNDLE_BASE}"))?;
    std::fs::create_dir_all(IMAGE_WORK_DIR)
        .with_context(|| format!("cannot create {IMAGE_WORK_DIR}"))?;
    let oci_ref = format!("{}:latest", oci_dir.display());
    run_tool(
        std::process::Command::new("skopeo")
            .arg("copy")
            .arg(format!("docker://{image}"))
            .arg(format!("oci:{oci_ref}")),
        "skopeo copy",
    )?;
    run_tool(
        std::process::Command::new("umoci")
            .args(["unpack", "--image", &oci_ref])
            .arg(&bundle),
        "umoci unpack",
    )?;
    Ok(bundle)
}

/// After `RemoveContainer`, deletes what [`pull_image`] unpacked for container `id`, if anything.
pub fn remove_pulled_image(id: &str) -> Result<()> {
    if check_id(id).is_err() || id.is_empty() {
        return Ok(());
    }
    let bundle = Path::new(IMAGE_BUNDLE_BASE).join(id);
    let rootfs = bundle.join("rootfs");
    if rootfs.exists() {
        // It may still be a mount point; an error just means it is not one.
        if let Ok(c) = std::ffi::CString::new(rootfs.as_os_str().as_encoded_bytes()) {
            // SAFETY: umount2 with a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    for dir in [bundle, Path::new(IMAGE_WORK_DIR).join(format!("oci-{id}"))] {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
    }
    let _ = std::fs::remove_dir(IMAGE_BUNDLE_BASE);
    let _ = std::fs::remove_dir(IMAGE_WORK_DIR);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn form(text: &str) -> ArgForm {
        crate::args::parse_form(text).unwrap()
    }

    #[test]
    fn detects_forms() {
        assert_eq!(
            detect(
                "CopyFile",
                &form(r#"json://{"src": "/a", "dest":"/run/x"}"#)
            )
            .unwrap(),
            Some(HostInput::CopyFile {
                src: "/a".into(),
                dest: "/run/x".into()
            })
        );
        assert_eq!(
            detect("CopyFile", &form("src=/a dest=/b")).unwrap(),
            Some(HostInput::CopyFile {
                src: "/a".into(),
                dest: "/b".into()
            })
        );
        // Request fields stay requests.
        assert_eq!(
            detect("CopyFile", &form("path=/b file_size=0")).unwrap(),
            None
        );
        assert!(detect("CopyFile", &form("src=/a")).is_err());
        assert!(detect("CopyFile", &form("src=/a dest=/b path=/c")).is_err());
        assert_eq!(
            detect("SetPolicy", &form(r#"json://{"policy_file": "/p.rego"}"#)).unwrap(),
            Some(HostInput::SetPolicy {
                policy_file: "/p.rego".into()
            })
        );
        assert_eq!(
            detect("SetPolicy", &form(r#"json://{"policy": "x"}"#)).unwrap(),
            None
        );
        assert_eq!(
            detect(
                "CreateContainer",
                &form(r#"json://{"image": "alpine", "id": "c1"}"#)
            )
            .unwrap(),
            Some(HostInput::Image {
                image: "alpine".into(),
                id: Some("c1".into())
            })
        );
        assert!(detect("CreateContainer", &form("image=alpine id=../x")).is_err());
        assert_eq!(detect("StartContainer", &form("src=/a")).unwrap(), None);
    }

    fn all(src: &Path, dest: &str) -> Vec<CopyFileRequest> {
        let mut s = CopyFileSource::open(src, dest).unwrap();
        let mut v = Vec::new();
        while let Some(r) = s.next_request().unwrap() {
            v.push(r);
        }
        v
    }

    #[test]
    fn copy_file_requests() {
        let dir = tempfile::tempdir().unwrap();
        // A file larger than one chunk.
        let big = dir.path().join("big");
        let content: Vec<u8> = (0..COPY_CHUNK + 10).map(|i| (i % 251) as u8).collect();
        std::fs::write(&big, &content).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o640)).unwrap();
        let reqs = all(&big, "/g/big");
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].offset, 0);
        assert_eq!(reqs[0].data.len(), COPY_CHUNK);
        assert_eq!(reqs[1].offset, COPY_CHUNK as i64);
        assert_eq!(reqs[1].data.len(), 10);
        for r in &reqs {
            assert_eq!(r.path, "/g/big");
            assert_eq!(r.file_size, content.len() as i64);
            assert_eq!(r.file_mode, libc::S_IFREG | 0o640);
            assert_eq!(r.dir_mode, COPY_DIR_MODE);
            assert_eq!(r.uid, unsafe { libc::geteuid() } as i32);
        }
        let joined: Vec<u8> = reqs.iter().flat_map(|r| r.data.clone()).collect();
        assert_eq!(joined, content);

        // An empty file: one request without data.
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        let reqs = all(&empty, "/g/e");
        assert_eq!(reqs.len(), 1);
        assert_eq!((reqs[0].file_size, reqs[0].data.len()), (0, 0));
        assert_eq!(reqs[0].file_mode & libc::S_IFMT, libc::S_IFREG);

        // A symlink: not followed, its target in data.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&big, &link).unwrap();
        let reqs = all(&link, "/g/l");
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].file_mode & libc::S_IFMT, libc::S_IFLNK);
        assert_eq!(reqs[0].data, big.to_str().unwrap().as_bytes());
        assert_eq!(reqs[0].file_size, 0);

        // A directory: its mode and type, nothing else.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o711)).unwrap();
        let reqs = all(&sub, "/g/d");
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].file_mode, libc::S_IFDIR | 0o711);
        assert!(reqs[0].data.is_empty());

        assert!(CopyFileSource::open(&dir.path().join("missing"), "/g/x").is_err());
    }

    #[test]
    fn policy_request() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.rego");
        std::fs::write(
            &p,
            "package agent_policy\ndefault CopyFileRequest := false\n",
        )
        .unwrap();
        assert_eq!(
            set_policy_request(&p).unwrap(),
            serde_json::json!({"policy": "package agent_policy\ndefault CopyFileRequest := false\n"})
        );
        assert!(set_policy_request(&dir.path().join("nope")).is_err());
    }

    #[test]
    fn specs_from_directories() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        // A bare root filesystem.
        let spec = image_spec(rootfs.to_str().unwrap(), "c1", false).unwrap();
        assert_eq!(spec["Root"]["Path"], rootfs.to_str().unwrap());
        assert_eq!(spec["Process"]["Args"], serde_json::json!(["sh"]));
        // A bundle.
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
                "process":{"args":["/bin/echo","hi"],"env":["A=1"],"cwd":"/tmp",
                           "user":{"uid":5,"gid":6}}}"#,
        )
        .unwrap();
        let spec = image_spec(dir.path().to_str().unwrap(), "c1", false).unwrap();
        assert_eq!(spec["Root"]["Path"], rootfs.to_str().unwrap());
        assert_eq!(
            spec["Process"]["Args"],
            serde_json::json!(["/bin/echo", "hi"])
        );
        assert_eq!(spec["Process"]["Env"], serde_json::json!(["A=1"]));
        assert_eq!(spec["Process"]["Cwd"], "/tmp");
        assert_eq!(spec["Process"]["User"]["UID"], 5);
        assert_eq!(spec["Process"]["User"]["GID"], 6);
        let _: protocols::oci::Spec = serde_json::from_value(spec).unwrap();
        // An image reference in dry-run mode is not pulled.
        let spec = image_spec("ghcr.io/linuxcontainers/alpine:latest", "c2", true).unwrap();
        assert_eq!(
            spec["Root"]["Path"],
            "/run/kata-containers/testing/c2/rootfs"
        );
    }
}
