//! `kata-agent-ctl` run with the command lines of upstream's agent API tests
//! (`tests/functional/kata-agent-apis` in kata-containers): the agent on an abstract unix
//! socket, the tool invoked as `kata-agent-ctl -l debug connect --server-address ADDR -c '...'`,
//! one invocation per step, with upstream's `json://` argument forms. Guest paths below
//! `/run/kata-containers` are the test agent's run directory here.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use e2e::{binary, rootfs, AgentOptions, TestAgent};

/// Runs the tool the way upstream's `run_agent_ctl` does.
fn run_agent_ctl(agent: &TestAgent, cmd: &str) -> Output {
    Command::new(binary("kata-agent-ctl"))
        .args(["-l", "debug", "connect", "--server-address", &agent.addr])
        .args(["-c", cmd])
        .output()
        .expect("run kata-agent-ctl")
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The command was understood and sent, and the agent refused it (exit status 1, not the
/// usage error 2).
fn refused(out: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    assert!(err.contains("failed:"), "{what}: {err}");
    err
}

fn start() -> TestAgent {
    TestAgent::start_with(AgentOptions {
        abstract_socket: true,
        ..Default::default()
    })
}

/// `/run/kata-containers/shared/containers` of the test agent.
fn shared(agent: &TestAgent) -> PathBuf {
    agent.run_dir.join("shared/containers")
}

fn copy_cmd(src: &Path, dest: &Path) -> String {
    format!(
        r#"CopyFile json://{{"src": "{}", "dest":"{}"}}"#,
        src.display(),
        dest.display()
    )
}

#[test]
fn upstream_copy_file_forms() {
    let agent = start();
    let host = tempfile::tempdir().unwrap();

    // "Copy a file": an empty temporary file.
    let src = host.path().join("tmp.empty");
    std::fs::write(&src, b"").unwrap();
    let dest = shared(&agent).join("foo");
    ok(
        &run_agent_ctl(&agent, &copy_cmd(&src, &dest)),
        "copy a file",
    );
    let meta = std::fs::symlink_metadata(&dest).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.len(), 0);

    // A file with content and mode 0640: same bytes, same permissions.
    let src = host.path().join("data");
    std::fs::write(&src, b"hello from the host\n").unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).unwrap();
    let dest = shared(&agent).join("sub/data");
    ok(&run_agent_ctl(&agent, &copy_cmd(&src, &dest)), "copy data");
    assert_eq!(std::fs::read(&dest).unwrap(), b"hello from the host\n");
    let meta = std::fs::metadata(&dest).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!(meta.uid(), std::fs::metadata(&src).unwrap().uid());

    // "Copy a symlink": the link itself, pointing where the host link points.
    let target = host.path().join("target");
    std::fs::write(&target, b"t").unwrap();
    let link = host.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let dest = shared(&agent).join("link");
    ok(
        &run_agent_ctl(&agent, &copy_cmd(&link, &dest)),
        "copy a symlink",
    );
    assert!(std::fs::symlink_metadata(&dest)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_link(&dest).unwrap(), target);

    // "Copy a directory".
    let dir = host.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    let dest = shared(&agent).join("dir");
    ok(
        &run_agent_ctl(&agent, &copy_cmd(&dir, &dest)),
        "copy a directory",
    );
    let meta = std::fs::symlink_metadata(&dest).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o777, 0o750);

    // "Copy a large file": 2 MiB plus a bit, sent in 1 MiB chunks, arrives whole.
    let big = host.path().join("large_file_2M.txt");
    let content: Vec<u8> = (0..2 * 1024 * 1024 + 4099)
        .map(|i: usize| (i.wrapping_mul(7919) >> 3) as u8)
        .collect();
    std::fs::write(&big, &content).unwrap();
    let dest = shared(&agent).join("large_file_2M.txt");
    ok(
        &run_agent_ctl(&agent, &copy_cmd(&big, &dest)),
        "copy a large file",
    );
    assert!(
        std::fs::read(&dest).unwrap() == content,
        "large file differs"
    );

    // "Copy a file to an unallowed destination" (outside the run directory, and beneath it
    // but outside shared/containers): refused by the agent, nothing written.
    let outside = std::env::temp_dir().join(format!("ctl-upstream-{}-foo", std::process::id()));
    refused(
        &run_agent_ctl(&agent, &copy_cmd(&src, &outside)),
        "copy to /tmp",
    );
    assert!(!outside.exists());
    let beneath = agent.run_dir.join("shared/foo");
    refused(
        &run_agent_ctl(&agent, &copy_cmd(&src, &beneath)),
        "copy beneath the run dir",
    );
    assert!(!beneath.exists());

    // A missing host file is the tool's own error, before anything is sent.
    let out = run_agent_ctl(&agent, &copy_cmd(&host.path().join("missing"), &dest));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

/// upstream's `deny_single_api_in_policy`: the default of one request becomes false.
fn deny_single_api(policy: &str, request: &str) -> String {
    policy
        .lines()
        .map(|l| match l.find(":= ") {
            Some(i) if l.contains(request) => format!("{}false", &l[..i + 3]),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[test]
fn upstream_set_policy_forms() {
    let agent = start();
    let host = tempfile::tempdir().unwrap();
    // upstream's allow-all.rego (the shared policy fixtures hold a copy).
    let allow_all = std::fs::read_to_string("/work/shared/policy/allow-all.rego")
        .unwrap_or_else(|_| "package agent_policy\n\ndefault CopyFileRequest := true\n".into());
    let policy_file = host.path().join("policy.rego");
    std::fs::write(&policy_file, deny_single_api(&allow_all, "CopyFileRequest")).unwrap();
    let cmd = format!(
        r#"SetPolicy json://{{"policy_file": "{}"}}"#,
        policy_file.display()
    );

    // The request carries the file's text.
    let out = Command::new(binary("kata-agent-ctl"))
        .args(["connect", "--dry-run", "-c", &cmd])
        .output()
        .unwrap();
    ok(&out, "dry run");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = std::fs::read_to_string(&policy_file).unwrap();
    assert!(text.contains("default CopyFileRequest := false"));
    assert_eq!(line["command"], "SetPolicy");
    assert_eq!(line["request"], serde_json::json!({ "policy": text }));

    // Sent to the agent: accepted, or refused with a status (until the agent enforces
    // policies); never a usage error of the tool.
    let out = run_agent_ctl(&agent, &cmd);
    if out.status.success() {
        // The policy is in force: CopyFile is denied.
        let src = host.path().join("src");
        std::fs::write(&src, b"x").unwrap();
        let dest = shared(&agent).join("denied");
        refused(
            &run_agent_ctl(&agent, &copy_cmd(&src, &dest)),
            "CopyFile under a deny policy",
        );
        assert!(!dest.exists());
    } else {
        refused(&out, "SetPolicy");
    }
}

#[test]
fn upstream_container_lifecycle_forms() {
    let agent = start();
    let host = tempfile::tempdir().unwrap();
    // An OCI bundle on the host whose rootfs is the busybox rootfs.
    let bundle = host.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    std::os::unix::fs::symlink(rootfs().canonicalize().unwrap(), bundle.join("rootfs")).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs", "readonly": true},
            "process": {"args": ["sh", "-c", "echo hello-from-bundle; exec sleep 1000"],
                        "env": ["PATH=/bin:/usr/bin"], "cwd": "/"}}"#,
    )
    .unwrap();
    let sandbox_id = format!("{}", std::process::id() % 32768);
    let container_id = format!("test_container_{}", std::process::id());

    ok(
        &run_agent_ctl(
            &agent,
            &format!(r#"CreateSandbox json://{{"sandbox_id": "{sandbox_id}"}}"#),
        ),
        "CreateSandbox",
    );
    ok(
        &run_agent_ctl(
            &agent,
            &format!(
                r#"CreateContainer json://{{"image": "{}", "id": "{container_id}"}}"#,
                bundle.display()
            ),
        ),
        "CreateContainer",
    );
    ok(
        &run_agent_ctl(
            &agent,
            &format!(r#"StartContainer json://{{"container_id": "{container_id}"}}"#),
        ),
        "StartContainer",
    );
    let out = run_agent_ctl(
        &agent,
        &format!(r#"ReadStdout json://{{"container_id": "{container_id}", "len": 100}}"#),
    );
    ok(&out, "ReadStdout");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let data: Vec<u8> = serde_json::from_value(line["data"].clone()).unwrap();
    assert_eq!(data, b"hello-from-bundle\n");
    ok(
        &run_agent_ctl(
            &agent,
            &format!(
                r#"SignalProcess json://{{"container_id": "{container_id}", "exec_id": "{container_id}", "signal": 9}}"#
            ),
        ),
        "SignalProcess",
    );
    ok(
        &run_agent_ctl(
            &agent,
            &format!(
                r#"WaitProcess json://{{"container_id": "{container_id}", "exec_id": "{container_id}"}}"#
            ),
        ),
        "WaitProcess",
    );
    ok(
        &run_agent_ctl(
            &agent,
            &format!(r#"RemoveContainer json://{{"container_id": "{container_id}"}}"#),
        ),
        "RemoveContainer",
    );
    // The container is gone.
    refused(
        &run_agent_ctl(
            &agent,
            &format!(r#"StatsContainer json://{{"container_id": "{container_id}"}}"#),
        ),
        "StatsContainer after RemoveContainer",
    );
    // upstream's stop_agent.
    ok(&run_agent_ctl(&agent, "DestroySandbox"), "DestroySandbox");
}
