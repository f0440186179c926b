//! A small container fixture shared by the pass-fd and performance-path e2e tests: one agent,
//! a busybox container spec, the usual RPC helpers, and a final no-leak check.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e::{ctx, mounts_below, rootfs, AgentOptions, TestAgent};
use protobuf::well_known_types::empty::Empty;
use protobuf::MessageField;
use protocols::agent;
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::oci;

pub const READ_LEN: u32 = 32 * 1024;

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub fn sh(script: &str) -> oci::Process {
    let mut p = oci::Process::new();
    p.Args = strs(&["sh", "-c", script]);
    p.Env = strs(&["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
    p.Cwd = "/".into();
    p.User = MessageField::some(oci::User::new());
    p
}

fn mount(dest: &str, typ: &str, src: &str, opts: &[&str]) -> oci::Mount {
    let mut m = oci::Mount::new();
    m.destination = dest.into();
    m.type_ = typ.into();
    m.source = src.into();
    m.options = strs(opts);
    m
}

/// Deterministic pseudo-random bytes (xorshift), different for each seed.
pub fn blob(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Threads of a process.
pub fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

pub struct Mini {
    pub agent: TestAgent,
    pub c: AgentServiceClient,
    pub tag: String,
    rootfs: PathBuf,
    cgroups: std::sync::Mutex<Vec<String>>,
}

impl Mini {
    pub async fn new(tag: &str, opts: AgentOptions<'_>) -> Mini {
        let rootfs = rootfs().canonicalize().expect("the busybox rootfs exists");
        let agent = TestAgent::start_with(opts);
        let (c, _) = agent.clients().await;
        Mini {
            agent,
            c,
            tag: tag.to_string(),
            rootfs,
            cgroups: Default::default(),
        }
    }

    pub fn cgroup(&self, cid: &str) -> String {
        let p = format!("kata-e2e-{}-{}-{cid}", std::process::id(), self.tag);
        let mut l = self.cgroups.lock().unwrap();
        if !l.contains(&p) {
            l.push(p.clone());
        }
        p
    }

    pub fn spec(&self, cid: &str, p: oci::Process) -> oci::Spec {
        let mut s = oci::Spec::new();
        s.Version = "1.1.0".into();
        s.Process = MessageField::some(p);
        let mut root = oci::Root::new();
        root.Path = self.rootfs.display().to_string();
        root.Readonly = true;
        s.Root = MessageField::some(root);
        s.Mounts = vec![
            mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount("/tmp", "tmpfs", "tmpfs", &["nosuid", "nodev", "mode=1777"]),
        ];
        let mut l = oci::Linux::new();
        l.Namespaces = ["mount", "ipc", "uts"]
            .iter()
            .map(|t| {
                let mut n = oci::LinuxNamespace::new();
                n.Type = t.to_string();
                n
            })
            .collect();
        l.CgroupsPath = self.cgroup(cid);
        l.Resources = MessageField::some(oci::LinuxResources::new());
        s.Linux = MessageField::some(l);
        s
    }

    pub async fn create_req(&self, req: agent::CreateContainerRequest) -> ttrpc::Result<Empty> {
        self.c.create_container(ctx(), &req).await
    }

    pub async fn create(&self, cid: &str, spec: oci::Spec) {
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = cid.into();
        req.OCI = MessageField::some(spec);
        self.create_req(req)
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {cid}: {e:?}\n{}", self.agent.log()));
    }

    pub async fn start(&self, cid: &str) {
        let mut req = agent::StartContainerRequest::new();
        req.container_id = cid.into();
        self.c
            .start_container(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("StartContainer {cid}: {e:?}"));
    }

    pub async fn run(&self, cid: &str, spec: oci::Spec) {
        self.create(cid, spec).await;
        self.start(cid).await;
    }

    pub async fn exec_req(&self, req: agent::ExecProcessRequest) -> ttrpc::Result<Empty> {
        self.c.exec_process(ctx(), &req).await
    }

    pub async fn exec(&self, cid: &str, exec_id: &str, p: oci::Process) {
        let mut req = agent::ExecProcessRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        req.process = MessageField::some(p);
        self.exec_req(req)
            .await
            .unwrap_or_else(|e| panic!("ExecProcess {cid}/{exec_id}: {e:?}"));
    }

    pub async fn wait(&self, cid: &str, exec_id: &str) -> i32 {
        let mut req = agent::WaitProcessRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        self.c
            .wait_process(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("WaitProcess {cid}/{exec_id}: {e:?}"))
            .status
    }

    pub async fn read(&self, cid: &str, exec_id: &str, stderr: bool, len: u32) -> Vec<u8> {
        let mut req = agent::ReadStreamRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        req.len = len;
        let r = if stderr {
            self.c.read_stderr(ctx(), &req).await
        } else {
            self.c.read_stdout(ctx(), &req).await
        };
        r.unwrap_or_else(|e| panic!("Read {cid}/{exec_id}: {e:?}"))
            .data
    }

    pub async fn read_all(&self, cid: &str, exec_id: &str, stderr: bool) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let d = self.read(cid, exec_id, stderr, READ_LEN).await;
            if d.is_empty() {
                return out;
            }
            out.extend_from_slice(&d);
        }
    }

    pub async fn remove(&self, cid: &str) {
        let mut req = agent::RemoveContainerRequest::new();
        req.container_id = cid.into();
        self.c
            .remove_container(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("RemoveContainer {cid}: {e:?}"));
        assert!(!self.agent.run_dir.join(cid).exists());
    }

    /// No child process, bundle, mount or cgroup left.
    pub async fn finish(self) {
        let pid = self.agent.pid();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let children = children_of(pid);
            if children.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the agent still has children: {children:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left: Vec<String> = std::fs::read_dir(&self.agent.run_dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "sandbox")
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "bundles left: {left:?}");
        assert!(mounts_below(&self.agent.run_dir).is_empty());
        for path in self.cgroups.lock().unwrap().iter() {
            for e in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
                let d = e.path().join(path);
                assert!(!d.exists(), "cgroup {} was left behind", d.display());
            }
        }
    }
}

/// The processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        if rest
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok())
            == Some(pid)
        {
            out.push(p);
        }
    }
    out
}
