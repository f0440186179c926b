//! End-to-end tests of the agent's foundation: the server, the health service, the first RPCs,
//! configuration and shutdown — all against the real `kata-agent` binary.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{binary, ctx, mounts_below, AgentOptions, TestAgent};
use protobuf::Message;
use protocols::agent::{self, CreateSandboxRequest, DestroySandboxRequest, GuestDetailsRequest};
use protocols::health::{health_check_response::ServingStatus, CheckRequest};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn code_of<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> (ttrpc::Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected an RPC status error, got {other:?}"),
    }
}

#[test]
fn health_check_and_version() {
    let agent = TestAgent::start();
    rt().block_on(async {
        let (_, health) = agent.clients().await;
        let resp = health.check(ctx(), &CheckRequest::new()).await.unwrap();
        assert_eq!(resp.status.enum_value(), Ok(ServingStatus::SERVING));
        let v = health.version(ctx(), &CheckRequest::new()).await.unwrap();
        assert_eq!(v.grpc_version, "0.0.1");
        assert_eq!(v.agent_version, env!("CARGO_PKG_VERSION"));
    });
}

#[test]
fn abstract_socket_address_is_served() {
    let agent = TestAgent::start_with(AgentOptions {
        abstract_socket: true,
        ..Default::default()
    });
    rt().block_on(async {
        let (_, health) = agent.clients().await;
        health.check(ctx(), &CheckRequest::new()).await.unwrap();
    });
}

#[test]
fn guest_details_report_the_agent() {
    let agent = TestAgent::start();
    rt().block_on(async {
        let (client, _) = agent.clients().await;
        let mut req = GuestDetailsRequest::new();
        req.mem_block_size = true;
        req.mem_hotplug_probe = true;
        let resp = client.get_guest_details(ctx(), &req).await.unwrap();
        let details = resp.agent_details.as_ref().unwrap();
        assert_eq!(details.version, env!("CARGO_PKG_VERSION"));
        assert!(
            !details.init_daemon,
            "a standalone agent is not the init daemon"
        );
        assert!(details.supports_seccomp);
        assert_eq!(details.extra_features, vec!["seccomp".to_string()]);
        // This machine's sysfs has memory blocks; the size is a power of two.
        let expected = std::fs::read_to_string("/sys/devices/system/memory/block_size_bytes")
            .map(|s| u64::from_str_radix(s.trim(), 16).unwrap())
            .unwrap_or(0);
        assert_eq!(resp.mem_block_size_bytes, expected);
        assert_eq!(
            resp.support_mem_hotplug_probe,
            std::path::Path::new("/sys/devices/system/memory/probe").exists()
        );
    });
}

#[test]
fn set_policy_is_built_and_refuses_empty_text() {
    let agent = TestAgent::start();
    rt().block_on(async {
        let (client, _) = agent.clients().await;
        // Every method is built: the memory agent (tests/tests/mem_agent.rs) and SetPolicy.
        let (code, msg) = code_of(
            client
                .set_policy(ctx(), &agent::SetPolicyRequest::new())
                .await,
        );
        // SetPolicy is built (docs/policy.md, tests/tests/policy.rs): empty text does not parse.
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    });
}

#[test]
fn create_and_destroy_sandbox_sets_up_and_undoes_everything() {
    let mut agent = TestAgent::start();
    let ns_dir = agent.dir.path().join("sandbox-ns");
    rt().block_on(async {
        let (client, _) = agent.clients().await;
        let mut req = CreateSandboxRequest::new();
        req.hostname = "sandbox-host".into();
        req.sandbox_id = "sb1".into();
        req.dns = vec!["nameserver 10.0.0.1".into(), " search example.com ".into()];
        client.create_sandbox(ctx(), &req).await.unwrap();

        let resolv = std::fs::read_to_string(&agent.resolv_conf).unwrap();
        assert_eq!(resolv, "nameserver 10.0.0.1\nsearch example.com\n");
        let mounted = mounts_below(agent.dir.path());
        assert!(
            mounted.iter().any(|m| m.ends_with("resolv.conf")),
            "resolv.conf is bind-mounted: {mounted:?}"
        );
        // The shared namespaces are pinned and differ from the agent's own.
        let ino = |p: &std::path::Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p).unwrap().ino()
        };
        assert_ne!(
            ino(&ns_dir.join("uts")),
            ino(std::path::Path::new("/proc/self/ns/uts"))
        );
        assert_ne!(
            ino(&ns_dir.join("ipc")),
            ino(std::path::Path::new("/proc/self/ns/ipc"))
        );
        // The hostname is set inside the shared UTS namespace only.
        let out = Command::new("nsenter")
            .arg(format!("--uts={}", ns_dir.join("uts").display()))
            .arg("hostname")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "sandbox-host");

        // A repeated call updates DNS without stacking a second mount.
        req.dns = vec!["nameserver 10.0.0.2".into()];
        client.create_sandbox(ctx(), &req).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&agent.resolv_conf).unwrap(),
            "nameserver 10.0.0.2\n"
        );
        let count = mounts_below(agent.dir.path())
            .iter()
            .filter(|m| m.ends_with("resolv.conf"))
            .count();
        assert_eq!(count, 1, "resolv.conf mounted once");

        client
            .destroy_sandbox(ctx(), &DestroySandboxRequest::new())
            .await
            .unwrap();
    });
    let status = agent
        .wait_exit(Duration::from_secs(15))
        .expect("the agent exits after DestroySandbox");
    assert!(status.success(), "exit status {status}");
    assert!(
        mounts_below(agent.dir.path()).is_empty(),
        "DestroySandbox left mounts: {:?}",
        mounts_below(agent.dir.path())
    );
    assert!(!ns_dir.join("uts").exists() && !ns_dir.join("ipc").exists());
    assert_eq!(
        std::fs::read_to_string(&agent.resolv_conf).unwrap(),
        "nameserver 127.0.0.53\n",
        "the guest's own resolv.conf is visible again"
    );
}

#[test]
fn create_sandbox_rejects_bad_input_and_changes_nothing() {
    let agent = TestAgent::start();
    rt().block_on(async {
        let (client, _) = agent.clients().await;
        let mut req = CreateSandboxRequest::new();
        let mut module = agent::KernelModule::new();
        module.name = "".into();
        req.kernel_modules.push(module);
        req.dns = vec!["nameserver 10.9.9.9".into()];
        let (code, _) = code_of(client.create_sandbox(ctx(), &req).await);
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);

        let mut req = CreateSandboxRequest::new();
        req.guest_hook_path = "relative/hooks".into();
        let (code, _) = code_of(client.create_sandbox(ctx(), &req).await);
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);

        assert_eq!(
            std::fs::read_to_string(&agent.resolv_conf).unwrap(),
            "nameserver 127.0.0.53\n"
        );
        assert!(mounts_below(agent.dir.path()).is_empty());
    });
}

#[test]
fn second_destroy_sandbox_is_refused_while_stopping() {
    let mut agent = TestAgent::start();
    rt().block_on(async {
        let (client, _) = agent.clients().await;
        client
            .destroy_sandbox(ctx(), &DestroySandboxRequest::new())
            .await
            .unwrap();
        // The agent may already be gone; if it still answers, it refuses.
        if let Err(ttrpc::Error::RpcStatus(s)) = client
            .destroy_sandbox(ctx(), &DestroySandboxRequest::new())
            .await
        {
            assert_eq!(s.code(), ttrpc::Code::FAILED_PRECONDITION);
        }
    });
    assert!(agent.wait_exit(Duration::from_secs(15)).unwrap().success());
}

#[test]
fn set_guest_date_time_and_reseed_random() {
    let agent = TestAgent::start();
    rt().block_on(async {
        let (client, _) = agent.clients().await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let mut req = agent::SetGuestDateTimeRequest::new();
        req.Sec = now.as_secs() as i64;
        req.Usec = now.subsec_micros() as i64;
        client.set_guest_date_time(ctx(), &req).await.unwrap();

        let mut req = agent::ReseedRandomDevRequest::new();
        req.data = vec![7u8; 64];
        client.reseed_random_dev(ctx(), &req).await.unwrap();
        let (code, msg) = code_of(
            client
                .reseed_random_dev(ctx(), &agent::ReseedRandomDevRequest::new())
                .await,
        );
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
        assert_eq!(msg, "missing entropy data");
    });
}

#[test]
fn blocked_request_does_not_stall_others_and_deadline_is_honoured() {
    let agent = TestAgent::start();
    rt().block_on(async {
        let conn = agent.connect().await;
        let client = protocols::agent_ttrpc::AgentServiceClient::new(conn.clone());
        let health = protocols::health_ttrpc::HealthClient::new(conn);
        // GetOOMEvent blocks until an OOM happens: never, here.
        let blocked = {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .get_oom_event(
                        ttrpc::context::with_timeout(0),
                        &agent::GetOOMEventRequest::new(),
                    )
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..20 {
            health.check(ctx(), &CheckRequest::new()).await.unwrap();
        }
        assert!(!blocked.is_finished());
        blocked.abort();
    });
    // A request whose timeout_nano passes gets DEADLINE_EXCEEDED from the server
    // (sent raw, so that no client-side timer can answer first).
    let path = agent.addr.trim_start_matches("unix://");
    let mut sock = UnixStream::connect(path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let payload = agent::GetOOMEventRequest::new().write_to_bytes().unwrap();
    let deadline = Duration::from_millis(300).as_nanos() as i64;
    let start = Instant::now();
    sock.write_all(&frame_with_timeout(
        1,
        "grpc.AgentService",
        "GetOOMEvent",
        &payload,
        deadline,
    ))
    .unwrap();
    let (stream, code, _) = read_response(&mut sock);
    assert_eq!((stream, code), (1, ttrpc::Code::DEADLINE_EXCEEDED as i32));
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[test]
fn many_connections_at_once() {
    let agent = TestAgent::start();
    rt().block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let addr = agent.addr.clone();
            tasks.push(tokio::spawn(async move {
                let c = ttrpc::r#async::Client::connect(&addr).await.unwrap();
                let health = protocols::health_ttrpc::HealthClient::new(c);
                for _ in 0..5 {
                    health.check(ctx(), &CheckRequest::new()).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// Encodes one ttRPC request frame by hand.
fn frame(stream_id: u32, service: &str, method: &str, payload: &[u8]) -> Vec<u8> {
    frame_with_timeout(stream_id, service, method, payload, 0)
}

/// Encodes one ttRPC request frame carrying a `timeout_nano` deadline.
fn frame_with_timeout(
    stream_id: u32,
    service: &str,
    method: &str,
    payload: &[u8],
    timeout_nano: i64,
) -> Vec<u8> {
    let mut req = ttrpc::proto::Request::new();
    req.timeout_nano = timeout_nano;
    req.service = service.into();
    req.method = method.into();
    req.payload = payload.to_vec();
    let body = req.write_to_bytes().unwrap();
    let mut out = Vec::new();
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.push(1); // request
    out.push(0);
    out.extend_from_slice(&body);
    out
}

/// Reads one response frame and returns (stream id, status code, message).
fn read_response(sock: &mut UnixStream) -> (u32, i32, String) {
    let mut header = [0u8; 10];
    sock.read_exact(&mut header).unwrap();
    let len = u32::from_be_bytes(header[0..4].try_into().unwrap()) as usize;
    let stream = u32::from_be_bytes(header[4..8].try_into().unwrap());
    let mut body = vec![0u8; len];
    sock.read_exact(&mut body).unwrap();
    let resp = ttrpc::proto::Response::parse_from_bytes(&body).unwrap();
    let status = resp.status.clone().unwrap_or_default();
    (stream, status.code.value(), status.message)
}

#[test]
fn oversized_frame_is_rejected_and_the_connection_survives() {
    let agent = TestAgent::start();
    let path = agent.addr.trim_start_matches("unix://");
    let mut sock = UnixStream::connect(path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // A 5 MiB request frame: header, then the body (which the server reads and discards).
    let len: u32 = 5 << 20;
    let mut header = Vec::new();
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&1u32.to_be_bytes());
    header.push(1);
    header.push(0);
    sock.write_all(&header).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..5 {
        sock.write_all(&chunk).unwrap();
    }
    let (stream, code, msg) = read_response(&mut sock);
    assert_eq!(stream, 1);
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT as i32);
    assert!(msg.contains("exceed maximum message size"), "{msg}");

    // The same connection still serves a normal request.
    let check = CheckRequest::new().write_to_bytes().unwrap();
    sock.write_all(&frame(3, "grpc.Health", "Check", &check))
        .unwrap();
    let (stream, code, _) = read_response(&mut sock);
    assert_eq!((stream, code), (3, 0));
}

#[test]
fn sigterm_stops_the_agent_cleanly() {
    let mut agent = TestAgent::start();
    let sock = agent.addr.trim_start_matches("unix://").to_string();
    let status = agent.stop_with(libc::SIGTERM);
    assert!(status.success(), "exit status {status}");
    assert!(!std::path::Path::new(&sock).exists(), "socket removed");
    assert!(agent.log().contains("kata-agent shutdown complete"));
}

#[test]
fn logs_are_structured_json() {
    let agent = TestAgent::start();
    // Records reach stderr through the logger's queue: the announce record may still be on its
    // way when the socket accepts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut log = agent.log();
    while !log.contains("\"announce\"") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        log = agent.log();
    }
    let first = log
        .lines()
        .find(|l| l.contains("\"announce\""))
        .unwrap_or_else(|| panic!("no announce record in:\n{log}"));
    let v: serde_json::Value = serde_json::from_str(first).unwrap();
    assert_eq!(v["name"], "kata-agent");
    assert_eq!(v["source"], "agent");
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["pid"], agent.pid().to_string());
    assert!(v["ts"].is_string() && v["subsystem"].is_string());
}

#[test]
fn version_and_help_flags() {
    let out = Command::new(binary("kata-agent"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("kata-agent version "), "{text}");
    let out = Command::new(binary("kata-agent"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: kata-agent"));
    let out = Command::new(binary("kata-agent"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_configuration_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let cmdline = dir.path().join("cmdline");
    std::fs::write(&cmdline, "quiet agent.log=verbose").unwrap();
    let out = Command::new(binary("kata-agent"))
        .env("KATA_AGENT_CMDLINE", &cmdline)
        .env(
            "KATA_AGENT_SERVER_ADDR",
            format!("unix://{}/a.sock", dir.path().display()),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agent.log"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = Command::new(binary("kata-agent"))
        .env("KATA_AGENT_CMDLINE", &cmdline)
        .env("KATA_AGENT_SERVER_ADDR", "http://nowhere")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn config_file_selects_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("from-file.sock");
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        format!(
            "server_addr = \"unix://{}\"\nlog_level = \"debug\"\nhotplug_timeout = \"5s\"\n",
            sock.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(binary("kata-agent"))
        .args(["--config", file.to_str().unwrap()])
        .env("KATA_AGENT_RUN_DIR", dir.path().join("run"))
        .env("KATA_AGENT_SANDBOX_NS_DIR", dir.path().join("ns"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "agent did not listen on the file's address"
        );
        assert!(child.try_wait().unwrap().is_none(), "agent exited");
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn kata_agent_ctl_drives_the_real_agent() {
    let mut agent = TestAgent::start();
    let out = agent.ctl(&[
        "-c",
        "Check",
        "Version",
        "GetGuestDetails mem_block_size=true",
        "CreateSandbox sandbox_id=ctl-test hostname=ctl-host",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(lines[0]["status"], 1);
    assert!(lines[1]["agent_version"].is_string());
    assert_eq!(lines[2]["agent_details"]["supports_seccomp"], true);
    assert_eq!(lines[3], serde_json::json!({}));

    // An error names the command and the status code, and the exit status is 1.
    let out = agent.ctl(&["-c", "StatsContainer cid=nope"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    // Upstream answers INVALID_ARGUMENT for an unknown container; so do we.
    assert!(
        err.contains("StatsContainer failed: INVALID_ARGUMENT"),
        "{err}"
    );

    // The same request in json:// form, then DestroySandbox stops the agent.
    let out = agent.ctl(&["-c", r#"SetGuestDateTime json://{"Sec":0}"#]);
    assert!(!out.status.success());
    let out = agent.ctl(&["-c", "DestroySandbox"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = agent
        .wait_exit(Duration::from_secs(20))
        .expect("agent exits");
    assert!(status.success());
}
