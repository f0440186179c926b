//! End-to-end tests of the agent policy through the real `kata-agent` binary: where the policy comes
//! from (environment, configuration file, SetPolicy), the upstream fixtures, rules over request
//! fields, state kept by the policy, SetPolicy locking itself, malformed policies, a denied read
//! that loses nothing, and the health service under a deny-all policy.
//!
//! Every test starts its own agent; containers use cgroups named
//! `kata-e2e-<test pid>-policy-<tag>-<container>` and are removed before the test ends.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::{binary, ctx, mounts_below, rootfs, AgentOptions, TestAgent};
use protobuf::MessageField;
use protocols::agent;
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::health;
use protocols::health_ttrpc::HealthClient;
use protocols::oci;

const PATH_ENV: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn data_dir() -> PathBuf {
    e2e::workspace_root().join("tests/data/policy")
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(data_dir().join(name)).unwrap()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(r: ttrpc::Result<T>, code: ttrpc::Code) -> String {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => {
            assert_eq!(
                s.code(),
                code,
                "unexpected status; message: {}",
                s.message()
            );
            s.message().to_string()
        }
        other => panic!("expected status {code:?}, got {other:?}"),
    }
}

/// allow-all.rego with every rule flipped to false: nothing is allowed.
fn deny_all() -> String {
    fixture("allow-all.rego").replace(":= true", ":= false")
}

/// One test's agent and client.
struct Fx {
    agent: TestAgent,
    c: AgentServiceClient,
    h: HealthClient,
    tag: String,
    rootfs: PathBuf,
    cids: std::sync::Mutex<Vec<String>>,
}

impl Fx {
    async fn new(tag: &str) -> Fx {
        Self::with(tag, AgentOptions::default()).await
    }

    async fn with(tag: &str, opts: AgentOptions<'_>) -> Fx {
        let agent = TestAgent::start_with(opts);
        let (c, h) = agent.clients().await;
        Fx {
            agent,
            c,
            h,
            tag: tag.into(),
            rootfs: rootfs().canonicalize().expect("the busybox rootfs exists"),
            cids: Default::default(),
        }
    }

    async fn set_policy(&self, text: &str) -> ttrpc::Result<()> {
        let mut req = agent::SetPolicyRequest::new();
        req.policy = text.into();
        self.c.set_policy(ctx(), &req).await.map(|_| ())
    }

    fn spec(&self, cid: &str, args: &[&str]) -> oci::Spec {
        let mut p = oci::Process::new();
        p.Args = strs(args);
        p.Env = strs(&[PATH_ENV]);
        p.Cwd = "/".into();
        p.User = MessageField::some(oci::User::new());
        let mut s = oci::Spec::new();
        s.Version = "1.1.0".into();
        s.Process = MessageField::some(p);
        let mut root = oci::Root::new();
        root.Path = self.rootfs.display().to_string();
        root.Readonly = true;
        s.Root = MessageField::some(root);
        let mut proc_mount = oci::Mount::new();
        proc_mount.destination = "/proc".into();
        proc_mount.type_ = "proc".into();
        proc_mount.source = "proc".into();
        s.Mounts = vec![proc_mount];
        let mut l = oci::Linux::new();
        let mut ns = oci::LinuxNamespace::new();
        ns.Type = "mount".into();
        l.Namespaces = vec![ns];
        l.CgroupsPath = format!("kata-e2e-{}-policy-{}-{cid}", std::process::id(), self.tag);
        s.Linux = MessageField::some(l);
        s
    }

    async fn try_create(&self, cid: &str, args: &[&str]) -> ttrpc::Result<()> {
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = cid.into();
        req.OCI = MessageField::some(self.spec(cid, args));
        let r = self.c.create_container(ctx(), &req).await.map(|_| ());
        if r.is_ok() {
            self.cids.lock().unwrap().push(cid.into());
        }
        r
    }

    /// Create + start.
    async fn run(&self, cid: &str, args: &[&str]) {
        self.try_create(cid, args)
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {cid}: {e:?}\n{}", self.agent.log()));
        let mut req = agent::StartContainerRequest::new();
        req.container_id = cid.into();
        self.c.start_container(ctx(), &req).await.unwrap();
    }

    async fn try_exec(&self, cid: &str, exec_id: &str, args: &[&str]) -> ttrpc::Result<()> {
        let mut p = oci::Process::new();
        p.Args = strs(args);
        p.Env = strs(&[PATH_ENV]);
        p.Cwd = "/".into();
        p.User = MessageField::some(oci::User::new());
        let mut req = agent::ExecProcessRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        req.process = MessageField::some(p);
        self.c.exec_process(ctx(), &req).await.map(|_| ())
    }

    async fn wait(&self, cid: &str, exec_id: &str) -> ttrpc::Result<i32> {
        let mut req = agent::WaitProcessRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        self.c.wait_process(ctx(), &req).await.map(|r| r.status)
    }

    async fn read(&self, cid: &str, exec_id: &str) -> ttrpc::Result<Vec<u8>> {
        let mut req = agent::ReadStreamRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        req.len = 32 * 1024;
        self.c.read_stdout(ctx(), &req).await.map(|r| r.data)
    }

    async fn copy_file(&self, path: &Path, mode: u32, data: &[u8]) -> ttrpc::Result<()> {
        let mut req = agent::CopyFileRequest::new();
        req.path = path.display().to_string();
        req.file_mode = mode;
        req.dir_mode = libc::S_IFDIR | 0o755;
        req.file_size = data.len() as i64;
        req.data = data.to_vec();
        self.c.copy_file(ctx(), &req).await.map(|_| ())
    }

    fn shared_dir(&self) -> PathBuf {
        self.agent.run_dir.join("shared/containers")
    }

    /// Removes the containers (under an allow-all policy) and checks nothing is left.
    async fn finish(self) {
        self.set_policy(&fixture("allow-all.rego")).await.unwrap();
        let cids = self.cids.lock().unwrap().clone();
        for cid in cids {
            let mut req = agent::RemoveContainerRequest::new();
            req.container_id = cid.clone();
            self.c
                .remove_container(ctx(), &req)
                .await
                .unwrap_or_else(|e| panic!("RemoveContainer {cid}: {e:?}"));
        }
        let mounts = mounts_below(&self.agent.run_dir);
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Where the policy comes from

#[test]
fn no_policy_allows_everything_and_says_so() {
    rt().block_on(async {
        let fx = Fx::new("none").await;
        assert!(
            fx.agent
                .log()
                .contains("no agent policy: every request is allowed"),
            "{}",
            fx.agent.log()
        );
        fx.c.get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
            .await
            .unwrap();
        fx.finish().await;
    });
}

#[test]
fn startup_policy_from_environment() {
    rt().block_on(async {
        let file = data_dir().join("allow-all-except-exec-process.rego");
        let fx = Fx::with(
            "env",
            AgentOptions {
                env: vec![("KATA_AGENT_POLICY_FILE", file.display().to_string())],
                ..Default::default()
            },
        )
        .await;
        assert!(
            fx.agent.log().contains("agent policy loaded"),
            "{}",
            fx.agent.log()
        );
        fx.run("e1", &["sleep", "1000"]).await;
        let msg = assert_code(
            fx.try_exec("e1", "x1", &["true"]).await,
            ttrpc::Code::PERMISSION_DENIED,
        );
        assert_eq!(msg, "ExecProcessRequest is blocked by policy: ");
        // Nothing was started: the exec id is unknown.
        assert_code(fx.wait("e1", "x1").await, ttrpc::Code::NOT_FOUND);
        fx.finish().await;
    });
}

#[test]
fn startup_policy_from_configuration_file() {
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("agent.toml");
        let policy = data_dir().join("allow-set-policy.rego");
        std::fs::write(
            &config,
            format!("policy_file = {:?}\n", policy.display().to_string()),
        )
        .unwrap();
        let fx = Fx::with(
            "cfg",
            AgentOptions {
                args: vec!["--config".into(), config.display().to_string()],
                ..Default::default()
            },
        )
        .await;
        // allow-set-policy.rego defines nothing but SetPolicyRequest: other requests cannot be
        // decided (INTERNAL, as upstream), SetPolicy is allowed.
        let msg = assert_code(
            fx.c.get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
                .await,
            ttrpc::Code::INTERNAL,
        );
        assert!(
            msg.starts_with("GuestDetailsRequest: internal error"),
            "{msg}"
        );
        fx.set_policy(&fixture("allow-all.rego")).await.unwrap();
        fx.c.get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
            .await
            .unwrap();
        fx.finish().await;
    });
}

/// Starts the agent binary with `env`; it must exit with an error saying `expect`.
fn assert_refuses_to_start(env: &[(&str, String)], expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cmdline"), "").unwrap();
    let mut cmd = Command::new(binary("kata-agent"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "KATA_AGENT_SERVER_ADDR",
            format!("unix://{}/agent.sock", dir.path().display()),
        )
        .env("KATA_AGENT_RUN_DIR", dir.path().join("run"))
        .env("KATA_AGENT_SANDBOX_NS_DIR", dir.path().join("ns"))
        .env("KATA_AGENT_CMDLINE", dir.path().join("cmdline"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent started: {stderr}");
    assert!(stderr.contains(expect), "{stderr}");
    assert!(!dir.path().join("agent.sock").exists() || !out.status.success());
}

#[test]
fn malformed_or_missing_policy_file_stops_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.rego");
    std::fs::write(
        &bad,
        "package agent_policy\n\ndefault ExecProcessRequest := \n",
    )
    .unwrap();
    assert_refuses_to_start(
        &[("KATA_AGENT_POLICY_FILE", bad.display().to_string())],
        "the policy file does not parse",
    );
    // genpolicy's rules alone (without their policy_data) do not compile either.
    assert_refuses_to_start(
        &[(
            "KATA_AGENT_POLICY_FILE",
            data_dir().join("rules.rego").display().to_string(),
        )],
        "policy_data",
    );
    assert_refuses_to_start(
        &[(
            "KATA_AGENT_POLICY_FILE",
            dir.path().join("missing.rego").display().to_string(),
        )],
        "cannot read the policy file",
    );
}

// ---------------------------------------------------------------------------------------------
// SetPolicy

#[test]
fn set_policy_malformed_then_locked() {
    rt().block_on(async {
        let fx = Fx::new("lock").await;
        fx.set_policy(&fixture("allow-all-except-exec-process.rego"))
            .await
            .unwrap();
        // Text that does not parse: INVALID_ARGUMENT, and the policy in force stays.
        let msg = assert_code(
            fx.set_policy("package agent_policy\ndefault ExecProcessRequest := true\n}{")
                .await,
            ttrpc::Code::INVALID_ARGUMENT,
        );
        assert!(!msg.is_empty());
        fx.run("l1", &["sleep", "1000"]).await;
        assert_code(
            fx.try_exec("l1", "x", &["true"]).await,
            ttrpc::Code::PERMISSION_DENIED,
        );
        // A policy that locks itself: further SetPolicy requests are denied.
        let locked = fixture("allow-all.rego").replace(
            "default SetPolicyRequest := true",
            "default SetPolicyRequest := false",
        );
        fx.set_policy(&locked).await.unwrap();
        let msg = assert_code(
            fx.set_policy(&fixture("allow-all.rego")).await,
            ttrpc::Code::PERMISSION_DENIED,
        );
        assert_eq!(msg, "SetPolicyRequest is blocked by policy: ");
        // The locked policy is the one in force (it allows exec).
        fx.try_exec("l1", "x2", &["true"]).await.unwrap();
        assert_eq!(fx.wait("l1", "x2").await.unwrap(), 0);
        // Clean up by hand: the policy cannot be replaced any more.
        let mut req = agent::RemoveContainerRequest::new();
        req.container_id = "l1".into();
        fx.c.remove_container(ctx(), &req).await.unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// Rules over request fields

const FIELD_RULES: &str = r#"
package agent_policy
import future.keywords.if
import future.keywords.in

default CreateContainerRequest := false
default StartContainerRequest := true
default RemoveContainerRequest := true
default ExecProcessRequest := false
default WaitProcessRequest := true
default ReadStreamRequest := true
default CopyFileRequest := false
default SetPolicyRequest := true

CreateContainerRequest if {
    input.OCI.Process.Args[0] == "sleep"
    count(input.storages) == 0
    some m in input.OCI.Mounts
    m.type_ == "proc"
}

ExecProcessRequest if {
    input.process.Args == ["echo", "allowed"]
    is_null(input.string_user)
}

CopyFileRequest if {
    input.file_type == "Regular"
    endswith(input.path, "-allowed")
    is_null(input.symlink_target)
}
"#;

#[test]
fn rules_over_request_fields() {
    rt().block_on(async {
        let fx = Fx::new("fields").await;
        fx.set_policy(FIELD_RULES).await.unwrap();

        // CreateContainer: decided on input.OCI.Process.Args and the mounts' type_.
        let msg = assert_code(
            fx.try_create("f0", &["sh", "-c", "true"]).await,
            ttrpc::Code::PERMISSION_DENIED,
        );
        assert!(msg.starts_with("CreateContainerRequest is blocked by policy"));
        assert!(
            !fx.agent.run_dir.join("f0").exists(),
            "a denied create left a bundle"
        );
        fx.run("f1", &["sleep", "1000"]).await;

        // ExecProcess: decided on input.process.Args.
        assert_code(
            fx.try_exec("f1", "bad", &["echo", "denied"]).await,
            ttrpc::Code::PERMISSION_DENIED,
        );
        assert_code(fx.wait("f1", "bad").await, ttrpc::Code::NOT_FOUND);
        fx.try_exec("f1", "good", &["echo", "allowed"])
            .await
            .unwrap();
        assert_eq!(fx.read("f1", "good").await.unwrap(), b"allowed\n");
        assert_eq!(fx.wait("f1", "good").await.unwrap(), 0);

        // CopyFile: decided on the prepared form (file_type, path), nothing written on denial.
        let shared = fx.shared_dir();
        let ok = shared.join("f-allowed");
        fx.copy_file(&ok, libc::S_IFREG | 0o644, b"data")
            .await
            .unwrap();
        assert_eq!(std::fs::read(&ok).unwrap(), b"data");
        let denied = shared.join("f-denied");
        assert_code(
            fx.copy_file(&denied, libc::S_IFREG | 0o644, b"data").await,
            ttrpc::Code::PERMISSION_DENIED,
        );
        assert!(!denied.exists());
        let link = shared.join("l-allowed");
        assert_code(
            fx.copy_file(&link, libc::S_IFLNK | 0o777, b"f-allowed")
                .await,
            ttrpc::Code::PERMISSION_DENIED,
        );
        assert!(std::fs::symlink_metadata(&link).is_err());
        fx.finish().await;
    });
}

// ---------------------------------------------------------------------------------------------
// A policy with state

const STATEFUL: &str = r#"
package agent_policy
import future.keywords.if

default CreateContainerRequest := false
default StartContainerRequest := true
default ExecProcessRequest := false
default WaitProcessRequest := true
default ReadStreamRequest := true
default SetPolicyRequest := true
default RemoveContainerRequest := true

# Record every created container in the policy state.
CreateContainerRequest := {"allowed": true, "ops": [{"op": "add", "path": concat("/", ["/pstate", input.container_id]), "value": "created"}]} if {
    not data.pstate[input.container_id]
}

# Exec only into containers this policy saw created.
ExecProcessRequest if {
    data.pstate[input.container_id] == "created"
}
"#;

#[test]
fn stateful_policy_records_containers() {
    rt().block_on(async {
        let fx = Fx::new("state").await;
        // s0 is created before the policy is set: the policy never saw it.
        fx.run("s0", &["sleep", "1000"]).await;
        fx.set_policy(STATEFUL).await.unwrap();
        fx.run("s1", &["sleep", "1000"]).await;
        fx.try_exec("s1", "x1", &["true"]).await.unwrap();
        assert_eq!(fx.wait("s1", "x1").await.unwrap(), 0);
        let msg = assert_code(
            fx.try_exec("s0", "x0", &["true"]).await,
            ttrpc::Code::PERMISSION_DENIED,
        );
        assert!(msg.starts_with("ExecProcessRequest is blocked by policy"));
        assert_code(fx.wait("s0", "x0").await, ttrpc::Code::NOT_FOUND);
        fx.finish().await;
    });
}

// ---------------------------------------------------------------------------------------------
// Streams and health

const NO_READS: &str = r#"
package agent_policy

default ReadStreamRequest := false
default SetPolicyRequest := true
"#;

#[test]
fn denied_read_loses_nothing() {
    rt().block_on(async {
        let fx = Fx::new("read").await;
        fx.run(
            "r1",
            &["sh", "-c", "echo first-line; echo second-line; sleep 1000"],
        )
        .await;
        fx.set_policy(NO_READS).await.unwrap();
        // Give the container time to write, so that a read that consumed would lose data.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..3 {
            let msg = assert_code(fx.read("r1", "").await, ttrpc::Code::PERMISSION_DENIED);
            assert_eq!(msg, "ReadStreamRequest is blocked by policy: ");
        }
        fx.set_policy(&fixture("allow-all.rego")).await.unwrap();
        let mut out = Vec::new();
        while !String::from_utf8_lossy(&out).contains("second-line") {
            let data = fx.read("r1", "").await.unwrap();
            assert!(!data.is_empty(), "end of stream");
            out.extend_from_slice(&data);
        }
        assert_eq!(String::from_utf8_lossy(&out), "first-line\nsecond-line\n");
        fx.finish().await;
    });
}

#[test]
fn health_is_never_gated() {
    rt().block_on(async {
        let fx = Fx::new("health").await;
        let deny = deny_all();
        fx.set_policy(&deny).await.unwrap();
        assert_code(
            fx.c.get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
                .await,
            ttrpc::Code::PERMISSION_DENIED,
        );
        let r =
            fx.h.check(ctx(), &health::CheckRequest::new())
                .await
                .unwrap();
        assert_eq!(
            r.status.enum_value_or_default(),
            health::health_check_response::ServingStatus::SERVING
        );
        let v =
            fx.h.version(ctx(), &health::CheckRequest::new())
                .await
                .unwrap();
        assert!(!v.agent_version.is_empty());
        // Deny-all also denies SetPolicy: the agent keeps it until it stops.
        assert_code(
            fx.set_policy(&fixture("allow-all.rego")).await,
            ttrpc::Code::PERMISSION_DENIED,
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Upstream's genpolicy rules

#[test]
fn upstream_rules_through_set_policy() {
    rt().block_on(async {
        let fx = Fx::new("rules").await;
        let shared = fx.shared_dir();
        let data = fixture("policy-data.rego").replace("@CPATH@", &shared.display().to_string());
        let policy = format!("{}\n{}", fixture("rules.rego"), data);
        fx.set_policy(&policy).await.unwrap();

        // CopyFile of a file named as the shim names shared files: allowed and written.
        let bundle = "b".repeat(64);
        let ok = shared.join(format!("{bundle}-0123456789abcdef-hostname"));
        fx.copy_file(&ok, libc::S_IFREG | 0o644, b"pod\n")
            .await
            .unwrap();
        assert_eq!(std::fs::read(&ok).unwrap(), b"pod\n");
        // Any other name is denied, with the rules' print output as the reason.
        let other = shared.join("not-a-bundle-file");
        let msg = assert_code(
            fx.copy_file(&other, libc::S_IFREG | 0o644, b"x").await,
            ttrpc::Code::PERMISSION_DENIED,
        );
        assert!(
            msg.starts_with("CopyFileRequest is blocked by policy: "),
            "{msg}"
        );
        assert!(msg.contains("allow_copy_file"), "{msg}");
        assert!(!other.exists());
        // A container the policy data does not describe is refused; nothing is created.
        assert_code(
            fx.try_create("u1", &["sleep", "1000"]).await,
            ttrpc::Code::PERMISSION_DENIED,
        );
        assert!(!fx.agent.run_dir.join("u1").exists());
        // GuestDetails is allowed by the rules' defaults; SetPolicy is not.
        fx.c.get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
            .await
            .unwrap();
        assert_code(
            fx.set_policy(&fixture("allow-all.rego")).await,
            ttrpc::Code::PERMISSION_DENIED,
        );
    });
}

// ---------------------------------------------------------------------------------------------
// The decision log

/// At debug level (the test agents' level) each decided input is a line of the decision log, in
/// upstream's `{"kind", "request"}` form; reads and SetPolicy are left out. Below debug there is
/// no log.
#[test]
fn decision_log_at_debug_level() {
    rt().block_on(async {
        let fx = Fx::new("decision-log").await;
        let log = fx.agent.dir.path().join("policy.jsonl");
        fx.set_policy(&fixture("allow-all.rego")).await.unwrap();
        fx.c.get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
            .await
            .unwrap();
        let mut read = agent::ReadStreamRequest::new();
        read.container_id = "nope".into();
        let _ = fx.c.read_stdout(ctx(), &read).await;
        let mut signal = agent::SignalProcessRequest::new();
        signal.container_id = "nope".into();
        signal.signal = 9;
        let _ = fx.c.signal_process(ctx(), &signal).await;
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["GuestDetailsRequest", "SignalProcessRequest"],
            "{lines:?}"
        );
        assert_eq!(lines[1]["request"]["container_id"], "nope");
        assert_eq!(lines[1]["request"]["signal"], 9);
        assert_eq!(lines[1]["request"]["exec_id"], "");
        fx.finish().await;

        let quiet = Fx::with(
            "decision-log-info",
            AgentOptions {
                env: vec![("KATA_AGENT_LOG_LEVEL", "info".to_string())],
                ..Default::default()
            },
        )
        .await;
        quiet.set_policy(&fixture("allow-all.rego")).await.unwrap();
        quiet
            .c
            .get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
            .await
            .unwrap();
        assert!(!quiet.agent.dir.path().join("policy.jsonl").exists());
        quiet.finish().await;
    });
}
