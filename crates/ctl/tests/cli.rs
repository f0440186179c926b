//! Command-line tests of `kata-agent-ctl`: argument parsing (with `--dry-run`, no agent), and
//! runs of the real binary against a small fake ttRPC agent on a temporary unix socket.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use protocols::agent::{
    GuestDetailsRequest, GuestDetailsResponse, SignalProcessRequest, StatsContainerRequest,
    StatsContainerResponse,
};
use protocols::health::{CheckRequest, HealthCheckResponse, VersionCheckResponse};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use ttrpc::r#async::TtrpcContext;

const BIN: &str = env!("CARGO_BIN_EXE_kata-agent-ctl");

fn ctl(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stdout_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `connect --dry-run` and returns the printed requests.
fn dry_run(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["connect", "--dry-run"];
    all.extend_from_slice(args);
    let out = ctl(&all);
    assert!(out.status.success(), "{args:?} failed: {}", stderr(&out));
    stdout_lines(&out)
}

#[test]
fn help_version_examples() {
    let out = ctl(&["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("connect"));
    let out = ctl(&["connect", "--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for opt in [
        "--server-address",
        "--hybrid-vsock",
        "--hybrid-vsock-port",
        "--bundle-dir",
        "--timeout",
        "--no-auto-values",
        "--interactive",
        "--ignore-errors",
        "--cmd",
    ] {
        assert!(text.contains(opt), "{opt} missing from help");
    }
    let out = ctl(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("kata-agent-ctl "));
    let out = ctl(&["examples"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("unix:///") && text.contains("--hybrid-vsock"),
        "{text}"
    );
}

#[test]
fn several_commands_after_one_c_and_repeated_c() {
    let reqs = dry_run(&[
        "-n",
        "-c",
        "StartContainer cid=a",
        "StartContainer cid=b",
        "-c",
        "StartContainer cid=c",
        "--cmd",
        "echo {\"hello\":1}",
        "Check",
    ]);
    assert_eq!(reqs.len(), 5, "{reqs:?}");
    assert_eq!(
        reqs[0],
        json!({"command": "StartContainer", "request": {"container_id": "a"}})
    );
    assert_eq!(reqs[1]["request"]["container_id"], "b");
    assert_eq!(reqs[2]["request"]["container_id"], "c");
    assert_eq!(reqs[3], json!({"hello": 1}));
    assert_eq!(reqs[4]["command"], "Check");
}

#[test]
fn argument_forms() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("req.json");
    std::fs::write(&file, r#"{"container_id":"f1","exec_id":"e","len":7}"#).unwrap();
    let file_arg = format!("ReadStdout file://{}", file.display());
    let reqs = dry_run(&[
        "-n",
        "-c",
        "SignalProcess",
        r#"SignalProcess json://{"container_id":"j1","signal":15}"#,
        "SignalProcess cid=p1 exec_id=e1 signal=SIGTERM",
        &file_arg,
        "WriteStdin cid=c exec_id=e data=hex:68690a",
        "WriteStdin cid=c data='hi there'",
        "TtyWinResize cid=c row=24 column=80",
    ]);
    let r: Vec<&Value> = reqs.iter().map(|r| &r["request"]).collect();
    assert_eq!(
        *r[0],
        json!({"container_id": "", "exec_id": "", "signal": 0})
    );
    assert_eq!(
        *r[1],
        json!({"container_id": "j1", "exec_id": "", "signal": 15})
    );
    assert_eq!(
        *r[2],
        json!({"container_id": "p1", "exec_id": "e1", "signal": 15})
    );
    assert_eq!(
        *r[3],
        json!({"container_id": "f1", "exec_id": "e", "len": 7})
    );
    assert_eq!(r[4]["data"], json!([104, 105, 10]));
    assert_eq!(r[5]["data"], json!(b"hi there".to_vec()));
    assert_eq!(
        (r[6]["row"].clone(), r[6]["column"].clone()),
        (json!(24), json!(80))
    );
}

#[test]
fn auto_values() {
    let reqs = dry_run(&[
        "-c",
        "SignalProcess",
        "WaitProcess",
        "SignalProcess cid=mine signal=0",
        r#"WaitProcess json://{"container_id":"other","exec_id":"x"}"#,
        "CreateSandbox",
    ]);
    let cid = reqs[0]["request"]["container_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(cid.len(), 64);
    assert_eq!(reqs[0]["request"]["exec_id"], cid.as_str());
    assert_eq!(reqs[0]["request"]["signal"], 9);
    assert_eq!(reqs[1]["request"]["container_id"], cid.as_str());
    // Explicit values win over auto-values.
    assert_eq!(
        reqs[2]["request"],
        json!({"container_id": "mine", "exec_id": "mine", "signal": 0})
    );
    assert_eq!(
        reqs[3]["request"],
        json!({"container_id": "other", "exec_id": "x"})
    );
    assert_eq!(reqs[4]["request"]["sandbox_id"].as_str().unwrap().len(), 64);
}

#[test]
fn create_container_and_exec_conveniences() {
    let reqs = dry_run(&[
        "-c",
        r#"CreateContainer rootfs=/run/r args='sh -c "echo hi"' id=c1 terminal=true"#,
        "ExecProcess cid=c1 exec_id=e1 args='ls -l'",
    ]);
    let oci = &reqs[0]["request"]["OCI"];
    assert_eq!(reqs[0]["request"]["container_id"], "c1");
    assert_eq!(oci["Root"]["Path"], "/run/r");
    assert_eq!(oci["Process"]["Args"], json!(["sh", "-c", "echo hi"]));
    assert_eq!(oci["Process"]["Terminal"], true);
    assert_eq!(oci["Mounts"].as_array().unwrap().len(), 6);
    let p = &reqs[1]["request"]["process"];
    assert_eq!(p["Args"], json!(["ls", "-l"]));
    assert_eq!(p["Capabilities"]["Bounding"].as_array().unwrap().len(), 14);
}

#[test]
fn upstream_host_input_forms() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::write(&src, b"abc").unwrap();
    let policy = dir.path().join("p.rego");
    std::fs::write(
        &policy,
        "package agent_policy\ndefault CopyFileRequest := false\n",
    )
    .unwrap();
    let cmds = [
        format!(
            r#"CopyFile json://{{"src": "{}", "dest":"/run/kata-containers/shared/containers/foo"}}"#,
            src.display()
        ),
        format!(r#"SetPolicy json://{{"policy_file": "{}"}}"#, policy.display()),
        format!("CopyFile src={} dest=/g/x", src.display()),
        r#"CreateContainer json://{"image": "ghcr.io/linuxcontainers/alpine:latest", "id": "test_container_1"}"#.to_string(),
        r#"StartContainer json://{"container_id": "test_container_1"}"#.to_string(),
        "GetGuestDetails".to_string(),
        "SetGuestDateTime sec=12 usec=34".to_string(),
        "MemHotplugByProbe memHotplugProbeAddr=0x100000000,0x108000000".to_string(),
        "SignalProcess signal=usr1 sid=s1 cid=c1".to_string(),
    ];
    let mut args = vec!["-c"];
    args.extend(cmds.iter().map(String::as_str));
    let lines = dry_run(&args);
    assert_eq!(lines.len(), 9, "{lines:?}");
    let cf = &lines[0]["request"];
    assert_eq!(cf["path"], "/run/kata-containers/shared/containers/foo");
    assert_eq!(cf["data"], json!(b"abc".to_vec()));
    assert_eq!(cf["file_size"], 3);
    assert_eq!(cf["offset"], 0);
    assert_eq!(cf["dir_mode"], 0o20000000750u32);
    assert_eq!(
        cf["file_mode"].as_u64().unwrap() as u32 & libc_s_ifmt(),
        0o100000
    );
    assert_eq!(
        lines[1]["request"],
        json!({"policy": "package agent_policy\ndefault CopyFileRequest := false\n"})
    );
    assert_eq!(lines[2]["request"]["path"], "/g/x");
    assert_eq!(lines[3]["request"]["container_id"], "test_container_1");
    assert_eq!(
        lines[3]["request"]["OCI"]["Root"]["Path"],
        "/run/kata-containers/testing/test_container_1/rootfs"
    );
    assert_eq!(
        lines[4]["request"],
        json!({"container_id": "test_container_1"})
    );
    assert_eq!(
        lines[5]["request"],
        json!({"mem_block_size": true, "mem_hotplug_probe": true})
    );
    assert_eq!(lines[6]["request"], json!({"Sec": 12, "Usec": 34}));
    assert_eq!(
        lines[7]["request"]["memHotplugProbeAddr"],
        json!([0x100000000u64, 0x108000000u64])
    );
    assert_eq!(lines[8]["request"]["signal"], 10);

    // Only src and dest go together; a missing host file fails when the command runs.
    let out = ctl(&[
        "connect",
        "--dry-run",
        "-c",
        r#"CopyFile json://{"src": "/a"}"#,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("needs both src"), "{}", stderr(&out));
    let out = ctl(&[
        "connect",
        "--dry-run",
        "-c",
        r#"CopyFile json://{"src": "/a", "dest": "/b", "uid": 0}"#,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = ctl(&[
        "connect",
        "--dry-run",
        "-c",
        r#"CopyFile json://{"src": "/nonexistent/x", "dest": "/b"}"#,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read /nonexistent/x"),
        "{}",
        stderr(&out)
    );

    // An OCI bundle as CreateContainer's image, and as --bundle-dir.
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"hostname":"h",
            "process":{"args":["ls","-l"],"cwd":"/"},
            "linux":{"namespaces":[{"type":"pid"}]}}"#,
    )
    .unwrap();
    let rootfs = bundle.join("rootfs").canonicalize().unwrap();
    let image = format!(
        r#"CreateContainer json://{{"image": "{}", "id": "c7"}}"#,
        bundle.display()
    );
    let lines = dry_run(&["-c", &image]);
    assert_eq!(
        lines[0]["request"]["OCI"]["Root"]["Path"],
        rootfs.to_str().unwrap()
    );
    assert_eq!(
        lines[0]["request"]["OCI"]["Process"]["Args"],
        json!(["ls", "-l"])
    );
    let b = bundle.to_str().unwrap();
    let lines = dry_run(&[
        "--bundle-dir",
        b,
        "-c",
        "CreateContainer cid=c8",
        "ExecProcess exec_id=e1",
    ]);
    let oci = &lines[0]["request"]["OCI"];
    assert_eq!(oci["Hostname"], "h");
    assert_eq!(oci["Root"]["Path"], bundle.join("rootfs").to_str().unwrap());
    assert_eq!(oci["Linux"]["Namespaces"][0]["Type"], "pid");
    assert_eq!(lines[1]["request"]["process"]["Args"], json!(["ls", "-l"]));
    // ExecProcess spec=file:// of a runtime-spec config.
    let spec = format!("ExecProcess cid=c8 exec_id=e2 spec=file://{b}/config.json");
    let lines = dry_run(&["-n", "-c", &spec]);
    assert_eq!(lines[0]["request"]["process"]["Args"], json!(["ls", "-l"]));

    // Built-ins alone need no agent (upstream's `-c list`).
    let out = ctl(&[
        "connect",
        "--server-address",
        "unix:///nonexistent/agent.sock",
        "-c",
        "list",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("CopyFile"));

    // Random ids.
    for sub in ["generate-cid", "generate-sid"] {
        let out = ctl(&[sub]);
        assert!(out.status.success());
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(id.len(), 64);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    }
}

fn libc_s_ifmt() -> u32 {
    0o170000
}

#[test]
fn repeat_sleep_quit() {
    let reqs = dry_run(&[
        "-n",
        "-c",
        "repeat 3",
        "Check",
        "sleep 10ms",
        "echo {}",
        "quit",
        "Version",
    ]);
    assert_eq!(reqs.len(), 4, "{reqs:?}");
    assert!(reqs[..3].iter().all(|r| r["command"] == "Check"));
}

#[test]
fn bad_json_is_a_clear_error() {
    let out = ctl(&[
        "connect",
        "--server-address",
        "unix:///nonexistent",
        "-c",
        "StartContainer json://{oops",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("StartContainer") && err.contains("not valid JSON"),
        "{err}"
    );
    assert!(
        !err.contains("cannot connect"),
        "must fail before connecting: {err}"
    );

    let out = ctl(&[
        "connect",
        "--dry-run",
        "-c",
        r#"StartContainer json://{"container_id":5}"#,
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not match"), "{}", stderr(&out));

    let out = ctl(&["connect", "--dry-run", "-c", "StartContainer nope=1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no field \"nope\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unknown_command_lists_close_names() {
    let out = ctl(&["connect", "--dry-run", "-c", "WaitProces"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("unknown command") && err.contains("WaitProcess"),
        "{err}"
    );
}

#[test]
fn bad_timeout_and_missing_address() {
    let out = ctl(&[
        "connect",
        "--server-address",
        "unix:///x",
        "--timeout",
        "10parsecs",
        "-c",
        "Check",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unknown unit"), "{}", stderr(&out));
    let out = ctl(&["connect", "-c", "Check"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--server-address"),
        "{}",
        stderr(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// Fake agent

/// One call seen by the fake agent: method, request JSON, timeout_nano, metadata.
type Call = (String, Value, i64, HashMap<String, Vec<String>>);

/// What the fake agent saw.
#[derive(Default)]
struct Seen {
    calls: Vec<Call>,
}

#[derive(Clone, Default)]
struct Fake {
    seen: Arc<Mutex<Seen>>,
}

impl Fake {
    fn record(&self, method: &str, req: Value, ctx: &TtrpcContext) {
        self.seen.lock().unwrap().calls.push((
            method.to_string(),
            req,
            ctx.timeout_nano,
            ctx.metadata.clone(),
        ));
    }
}

#[async_trait]
impl protocols::health_ttrpc::Health for Fake {
    async fn check(
        &self,
        ctx: &TtrpcContext,
        req: CheckRequest,
    ) -> ttrpc::Result<HealthCheckResponse> {
        self.record("Check", serde_json::to_value(&req).unwrap(), ctx);
        Ok(serde_json::from_value(json!({"status": 1})).unwrap())
    }

    async fn version(
        &self,
        ctx: &TtrpcContext,
        req: CheckRequest,
    ) -> ttrpc::Result<VersionCheckResponse> {
        self.record("Version", serde_json::to_value(&req).unwrap(), ctx);
        Ok(
            serde_json::from_value(json!({"grpc_version": "0.0.1", "agent_version": "fake-1"}))
                .unwrap(),
        )
    }
}

#[async_trait]
impl protocols::agent_ttrpc::AgentService for Fake {
    async fn get_guest_details(
        &self,
        ctx: &TtrpcContext,
        req: GuestDetailsRequest,
    ) -> ttrpc::Result<GuestDetailsResponse> {
        self.record("GetGuestDetails", serde_json::to_value(&req).unwrap(), ctx);
        Ok(serde_json::from_value(json!({
            "mem_block_size_bytes": 134217728,
            "agent_details": {"version": "fake-1", "init_daemon": true}
        }))
        .unwrap())
    }

    async fn signal_process(
        &self,
        ctx: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<protobuf::well_known_types::empty::Empty> {
        self.record("SignalProcess", serde_json::to_value(&req).unwrap(), ctx);
        Ok(Default::default())
    }

    async fn stats_container(
        &self,
        ctx: &TtrpcContext,
        req: StatsContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        self.record("StatsContainer", serde_json::to_value(&req).unwrap(), ctx);
        Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::NOT_FOUND,
            format!("container {} not found", req.container_id),
        )))
    }
}

/// A fake agent serving on `unix://<path>`; stopped when dropped.
struct FakeAgent {
    server: ttrpc::r#async::Server,
    fake: Fake,
}

impl FakeAgent {
    async fn start(path: &Path) -> FakeAgent {
        let fake = Fake::default();
        let mut services = protocols::agent_ttrpc::create_agent_service(Arc::new(fake.clone()));
        services.extend(protocols::health_ttrpc::create_health(Arc::new(
            fake.clone(),
        )));
        let mut server = ttrpc::r#async::Server::new()
            .bind(&format!("unix://{}", path.display()))
            .unwrap()
            .register_service(services);
        server.start().await.unwrap();
        FakeAgent { server, fake }
    }

    fn calls(&self) -> Vec<Call> {
        self.fake.seen.lock().unwrap().calls.clone()
    }

    async fn stop(mut self) {
        let _ = self.server.shutdown().await;
    }
}

/// Runs the binary without blocking the runtime that serves the fake agent.
async fn ctl_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || Command::new(BIN).args(&args).output().unwrap())
        .await
        .unwrap()
}

fn sock_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talks_to_a_fake_agent() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock_path(&dir, "agent.sock");
    let agent = FakeAgent::start(&path).await;
    let addr = format!("unix://{}", path.display());

    let out = ctl_async(strings(&[
        "connect",
        "--server-address",
        &addr,
        "--timeout",
        "5s",
        "-c",
        "Check",
        "GetGuestDetails",
        "Version",
        "SignalProcess cid=c1 signal=TERM",
    ]))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0]["status"], 1);
    assert_eq!(lines[1]["mem_block_size_bytes"], 134217728);
    assert_eq!(lines[1]["agent_details"]["version"], "fake-1");
    assert_eq!(lines[1]["agent_details"]["init_daemon"], true);
    assert_eq!(lines[2]["agent_version"], "fake-1");
    assert_eq!(lines[3], json!({}));

    let calls = agent.calls();
    assert_eq!(calls.len(), 4);
    assert_eq!(calls[3].0, "SignalProcess");
    assert_eq!(
        calls[3].1,
        json!({"container_id": "c1", "exec_id": "c1", "signal": 15})
    );
    for (method, _, timeout, md) in &calls {
        assert_eq!(*timeout, 5_000_000_000, "{method}");
        assert_eq!(
            md.get("agent-ctl-cfg"),
            Some(&vec!["auto-values".to_string()]),
            "{method}"
        );
    }

    // An error status: code name on stderr, non-zero exit, later commands skipped.
    let out = ctl_async(strings(&[
        "connect",
        "--server-address",
        &addr,
        "-n",
        "-c",
        "StatsContainer cid=c9",
        "Check",
    ]))
    .await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("NOT_FOUND") && err.contains("container c9 not found"),
        "{err}"
    );
    assert!(stdout_lines(&out).is_empty());
    // Without auto-values no metadata is sent.
    let calls = agent.calls();
    assert!(!calls.last().unwrap().3.contains_key("agent-ctl-cfg"));

    // --ignore-errors goes on; a method the fake does not implement also answers NOT_FOUND.
    let out = ctl_async(strings(&[
        "connect",
        "--server-address",
        &addr,
        "--ignore-errors",
        "-c",
        "StatsContainer cid=c9",
        "PauseContainer",
        "Check",
    ]))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("PauseContainer is not supported"), "{err}");
    assert_eq!(stdout_lines(&out), vec![json!({"status": 1})]);

    agent.stop().await;
}

/// A fake hybrid-vsock socket: answers `CONNECT <port>` with `OK ...` and then relays the
/// stream to the fake agent's socket.
async fn hybrid_vsock_proxy(listen: PathBuf, agent: PathBuf, ports: Arc<Mutex<Vec<String>>>) {
    let listener = UnixListener::bind(&listen).unwrap();
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            return;
        };
        let agent = agent.clone();
        let ports = ports.clone();
        tokio::spawn(async move {
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while conn.read(&mut b).await.unwrap_or(0) == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            ports
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&line).into_owned());
            conn.write_all(b"OK 1073741824\n").await.unwrap();
            let mut upstream = UnixStream::connect(&agent).await.unwrap();
            let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talks_through_a_fake_hybrid_vsock() {
    let dir = tempfile::tempdir().unwrap();
    let agent_path = sock_path(&dir, "agent.sock");
    let hv_path = sock_path(&dir, "kata.hvsock");
    let agent = FakeAgent::start(&agent_path).await;
    let ports = Arc::new(Mutex::new(Vec::new()));
    let proxy = tokio::spawn(hybrid_vsock_proxy(
        hv_path.clone(),
        agent_path.clone(),
        ports.clone(),
    ));

    let out = ctl_async(strings(&[
        "connect",
        "--server-address",
        &format!("unix://{}", hv_path.display()),
        "--hybrid-vsock",
        "--hybrid-vsock-port",
        "2048",
        "-c",
        "Check",
        "GetGuestDetails",
    ]))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = stdout_lines(&out);
    assert_eq!(lines[0]["status"], 1);
    assert_eq!(lines[1]["agent_details"]["version"], "fake-1");
    // Two connections (AgentService and Health), each with its own handshake.
    assert_eq!(*ports.lock().unwrap(), vec!["CONNECT 2048", "CONNECT 2048"]);

    proxy.abort();
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_agent_fails() {
    let out = ctl_async(strings(&[
        "connect",
        "--server-address",
        "unix:///nonexistent/agent.sock",
        "--connect-retries",
        "2",
        "-c",
        "Check",
    ]))
    .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot connect to the agent"),
        "{}",
        stderr(&out)
    );
}
