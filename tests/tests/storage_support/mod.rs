//! Helpers shared by the storage and device end-to-end tests: loop devices, synthetic sysfs
//! trees, OCI specs for busybox containers, and running commands in containers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{ctx, rootfs, TestAgent};
use protobuf::MessageField;
use protocols::agent;
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::oci;

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub fn status_of<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> (ttrpc::Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected an RPC status error, got {other:?}"),
    }
}

#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(r: ttrpc::Result<T>, code: ttrpc::Code) -> String {
    let (got, msg) = status_of(r);
    assert_eq!(got, code, "unexpected status code; message: {msg}");
    assert!(!msg.is_empty(), "errors must say what went wrong");
    msg
}

/// Runs a host command, panicking with its stderr on failure; returns stdout.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A loop device over a sparse file, detached (and the file removed) when dropped.
pub struct LoopDev {
    pub dev: PathBuf,
    pub file: PathBuf,
}

impl LoopDev {
    pub fn new(dir: &Path, name: &str, size_mib: u64) -> LoopDev {
        let file = dir.join(format!("{name}.img"));
        let f = std::fs::File::create(&file).unwrap();
        f.set_len(size_mib << 20).unwrap();
        drop(f);
        let dev = sh("losetup", &["-f", "--show", &file.display().to_string()]);
        LoopDev {
            dev: PathBuf::from(dev),
            file,
        }
    }

    /// `loopN`.
    pub fn name(&self) -> String {
        self.dev.file_name().unwrap().to_string_lossy().into_owned()
    }

    /// (major, minor) of the device.
    pub fn numbers(&self) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let rdev = std::fs::metadata(&self.dev).unwrap().rdev();
        (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev))
    }

    /// Grows the backing file and tells the loop driver.
    pub fn grow(&self, size_mib: u64) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.file)
            .unwrap()
            .set_len(size_mib << 20)
            .unwrap();
        sh("losetup", &["-c", &self.dev.display().to_string()]);
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("swapoff").arg(&self.dev).output();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).output();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `secs` seconds.
pub async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if cond() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn mount_msg(dest: &str, typ: &str, src: &str, opts: &[&str]) -> oci::Mount {
    let mut m = oci::Mount::new();
    m.destination = dest.into();
    m.type_ = typ.into();
    m.source = src.into();
    m.options = strs(opts);
    m
}

/// A bind mount of `src` at `dest`.
pub fn bind(src: &Path, dest: &str) -> oci::Mount {
    mount_msg(dest, "bind", &src.display().to_string(), &["rbind", "rw"])
}

/// A busybox container spec: root read-only (`root` or the shared busybox rootfs), a tmpfs on
/// /tmp for the volumes below it, `extra` mounts, new mount/ipc/uts namespaces.
pub fn spec(root: Option<&Path>, script: &str, extra: Vec<oci::Mount>) -> oci::Spec {
    let caps = strs(&[
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_KILL",
        "CAP_SETUID",
        "CAP_SETGID",
    ]);
    let mut c = oci::LinuxCapabilities::new();
    c.Bounding = caps.clone();
    c.Effective = caps.clone();
    c.Permitted = caps;
    let mut p = oci::Process::new();
    p.Args = strs(&["sh", "-c", script]);
    p.Env = strs(&["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
    p.Cwd = "/".into();
    p.User = MessageField::some(oci::User::new());
    p.Capabilities = MessageField::some(c);
    let mut s = oci::Spec::new();
    s.Version = "1.1.0".into();
    s.Process = MessageField::some(p);
    let mut r = oci::Root::new();
    r.Path = root
        .map(Path::to_path_buf)
        .unwrap_or_else(|| rootfs().canonicalize().unwrap())
        .display()
        .to_string();
    r.Readonly = true;
    s.Root = MessageField::some(r);
    s.Mounts = vec![
        mount_msg("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount_msg(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount_msg("/tmp", "tmpfs", "tmpfs", &["nosuid", "nodev", "size=16m"]),
    ];
    s.Mounts.extend(extra);
    let mut linux = oci::Linux::new();
    for t in ["pid", "mount", "ipc", "uts"] {
        let mut n = oci::LinuxNamespace::new();
        n.Type = t.into();
        linux.Namespaces.push(n);
    }
    linux.Resources = MessageField::some(oci::LinuxResources::new());
    // A cgroup of its own: tests of all files run in parallel.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    linux.CgroupsPath = format!("/kata-e2e-st-{}-{n}", std::process::id());
    s.Linux = MessageField::some(linux);
    s
}

pub fn storage(
    driver: &str,
    source: &str,
    fstype: &str,
    mount_point: &Path,
    options: &[&str],
) -> agent::Storage {
    let mut s = agent::Storage::new();
    s.driver = driver.into();
    s.source = source.into();
    s.fstype = fstype.into();
    s.mount_point = mount_point.display().to_string();
    s.options = strs(options);
    s
}

/// A connected agent plus helpers.
pub struct Pod {
    pub agent: TestAgent,
    pub c: AgentServiceClient,
}

impl Pod {
    pub async fn new(agent: TestAgent) -> Pod {
        let (c, _) = agent.clients().await;
        Pod { agent, c }
    }

    pub fn run_dir(&self) -> PathBuf {
        self.agent.run_dir.clone()
    }

    pub async fn create_sandbox(&self, storages: Vec<agent::Storage>) -> ttrpc::Result<()> {
        let mut req = agent::CreateSandboxRequest::new();
        req.sandbox_id = "sb".into();
        req.hostname = "pod".into();
        req.storages = storages;
        self.c.create_sandbox(ctx(), &req).await.map(|_| ())
    }

    pub async fn destroy_sandbox(&self) {
        self.c
            .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
            .await
            .expect("DestroySandbox");
    }

    pub async fn try_create(
        &self,
        cid: &str,
        spec: oci::Spec,
        storages: Vec<agent::Storage>,
        devices: Vec<agent::Device>,
    ) -> ttrpc::Result<()> {
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = cid.into();
        req.OCI = MessageField::some(spec);
        req.storages = storages;
        req.devices = devices;
        self.c.create_container(ctx(), &req).await.map(|_| ())
    }

    pub async fn start(&self, cid: &str) {
        let mut req = agent::StartContainerRequest::new();
        req.container_id = cid.into();
        self.c
            .start_container(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("start {cid}: {e:?}"));
    }

    pub async fn remove(&self, cid: &str) {
        let mut req = agent::RemoveContainerRequest::new();
        req.container_id = cid.into();
        self.c
            .remove_container(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("remove {cid}: {e:?}"));
    }

    async fn read_all(&self, cid: &str, exec_id: &str) -> String {
        let mut out = Vec::new();
        loop {
            let mut req = agent::ReadStreamRequest::new();
            req.container_id = cid.into();
            req.exec_id = exec_id.into();
            req.len = 32 * 1024;
            let data = self
                .c
                .read_stdout(ctx(), &req)
                .await
                .unwrap_or_else(|e| panic!("read {cid}/{exec_id}: {e:?}"))
                .data;
            if data.is_empty() {
                return String::from_utf8_lossy(&out).into_owned();
            }
            out.extend_from_slice(&data);
        }
    }

    async fn wait(&self, cid: &str, exec_id: &str) -> i32 {
        let mut req = agent::WaitProcessRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        self.c
            .wait_process(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("wait {cid}/{exec_id}: {e:?}"))
            .status
    }

    /// Runs the container's own process to its end; returns (status, stdout).
    pub async fn run_init(&self, cid: &str) -> (i32, String) {
        self.start(cid).await;
        let out = self.read_all(cid, "").await;
        (self.wait(cid, "").await, out)
    }

    /// Runs `script` in the running container `cid`; returns (status, stdout).
    pub async fn exec(&self, cid: &str, exec_id: &str, script: &str) -> (i32, String) {
        let mut p = spec(None, script, vec![]).Process.unwrap();
        p.Terminal = false;
        let mut req = agent::ExecProcessRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        req.process = MessageField::some(p);
        self.c
            .exec_process(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("exec in {cid}: {e:?}"));
        let out = self.read_all(cid, exec_id).await;
        (self.wait(cid, exec_id).await, out)
    }

    /// Mount points below the agent's run directory.
    pub fn mounts(&self) -> Vec<String> {
        e2e::mounts_below(&self.agent.run_dir)
    }
}

/// Builds `<sysfs>/devices/pci0000:00/0000:00:<bridge>.0/pci_bus/0000:<bus>` and a virtio-blk disk
/// `name` behind it at slot `slot`, with the given device numbers, plus its `class/block` link.
pub fn synthetic_virtio_blk(
    sysfs: &Path,
    bridge: u8,
    bus: u8,
    slot: u8,
    name: &str,
    major: u64,
    minor: u64,
) {
    let bridge_dir = sysfs.join(format!("devices/pci0000:00/0000:00:{bridge:02x}.0"));
    std::fs::create_dir_all(bridge_dir.join(format!("pci_bus/0000:{bus:02x}"))).unwrap();
    let rel = format!(
        "devices/pci0000:00/0000:00:{bridge:02x}.0/0000:{bus:02x}:{slot:02x}.0/virtio3/block/{name}"
    );
    let disk = sysfs.join(&rel);
    std::fs::create_dir_all(&disk).unwrap();
    std::fs::write(
        disk.join("uevent"),
        format!("MAJOR={major}\nMINOR={minor}\nDEVNAME={name}\nDEVTYPE=disk\n"),
    )
    .unwrap();
    let class = sysfs.join("class/block");
    std::fs::create_dir_all(&class).unwrap();
    std::os::unix::fs::symlink(format!("../../{rel}"), class.join(name)).unwrap();
}
