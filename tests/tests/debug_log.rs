//! `agent.log=debug`: every request is logged with its method, ids, duration and (when it
//! fails) status code; storage mounts, cgroup writes and hook runs say what they do. At `info`
//! none of that appears.

use std::process::Output;

use e2e::{rootfs, AgentOptions, TestAgent};
use serde_json::{json, Value};

fn records(agent: &TestAgent) -> Vec<Value> {
    agent
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a sandbox with an ephemeral storage, a container with a cgroup and a poststart hook,
/// a stream read, and a failing request. Returns the container id.
fn exercise(agent: &TestAgent, tag: &str) -> String {
    let cid = format!("dbglog-{tag}-{}", std::process::id());
    let eph = agent.run_dir.join("sandbox/ephemeral/scratch");
    let sandbox = json!({
        "sandbox_id": format!("sb-{cid}"),
        "storages": [{"driver": "ephemeral", "source": "tmpfs", "fstype": "tmpfs",
                      "mount_point": eph.display().to_string(), "options": []}],
    });
    let mut spec = kata_agent_ctl::spec::default_spec_json(
        rootfs().canonicalize().unwrap().to_str().unwrap(),
        vec!["sh".into(), "-c".into(), "echo hi".into()],
        false,
    );
    spec["Root"]["Readonly"] = json!(true);
    spec["Linux"]["CgroupsPath"] = json!(format!("kata-e2e-{}-{cid}", std::process::id()));
    spec["Hooks"] = json!({"Poststart": [{"Path": "/bin/true", "Args": ["true"]}]});
    let req_file = agent.dir.path().join(format!("create-{tag}.json"));
    std::fs::write(
        &req_file,
        json!({"container_id": cid, "OCI": spec}).to_string(),
    )
    .unwrap();
    let create_sandbox = format!("CreateSandbox json://{sandbox}");
    let create = format!("CreateContainer file://{}", req_file.display());
    let out = agent.ctl(&[
        "-c",
        "Check",
        &create_sandbox,
        &create,
        &format!("StartContainer cid={cid}"),
        &format!("WaitProcess cid={cid}"),
        &format!("ReadStdout cid={cid} len=100"),
        &format!("RemoveContainer cid={cid}"),
    ]);
    ok(&out, "container lifecycle");
    // A failing request: INVALID_ARGUMENT for an unknown container.
    let out = agent.ctl(&["-c", "StatsContainer cid=no-such-container"]);
    assert_eq!(out.status.code(), Some(1));
    ok(&agent.ctl(&["-c", "DestroySandbox"]), "DestroySandbox");
    cid
}

fn find<'a>(recs: &'a [Value], msg: &str, pred: impl Fn(&Value) -> bool) -> Option<&'a Value> {
    recs.iter().find(|r| r["msg"] == msg && pred(r))
}

const DEBUG_MESSAGES: &[&str] = &[
    "rpc started",
    "rpc finished",
    "rpc failed",
    "rpc cancelled",
    "mount",
    "unmount",
    "setting up storage",
    "cgroup write",
    "running hook",
    "hook finished",
];

#[test]
fn debug_level_logs_requests_and_actions() {
    let mut agent = TestAgent::start_with(AgentOptions {
        cmdline: Some("agent.log=debug".into()),
        ..Default::default()
    });
    let cid = exercise(&agent, "debug");
    let _ = agent.wait_exit(std::time::Duration::from_secs(20));
    let recs = records(&agent);
    let shown = || agent.log();

    // Every request: started and finished, with method, ids and a duration.
    let created = find(&recs, "rpc finished", |r| r["method"] == "create_container")
        .unwrap_or_else(|| panic!("no create_container record:\n{}", shown()));
    assert_eq!(created["level"], "DEBG");
    assert_eq!(created["subsystem"], "rpc");
    assert_eq!(created["container_id"], cid.as_str());
    assert!(created["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(
        find(&recs, "rpc started", |r| r["method"] == "start_container"
            && r["container_id"] == cid.as_str())
        .is_some()
    );
    // Methods outside traced_rpc: the stream read and the health check.
    let read = find(&recs, "rpc finished", |r| r["method"] == "read_stdout")
        .unwrap_or_else(|| panic!("no read_stdout record:\n{}", shown()));
    assert_eq!(read["exec_id"], cid.as_str());
    assert!(find(&recs, "rpc finished", |r| r["method"] == "check").is_some());
    // The failure: its status code and message, at DEBUG (not INTERNAL).
    let failed = find(&recs, "rpc failed", |r| r["method"] == "stats_container")
        .unwrap_or_else(|| panic!("no stats_container failure:\n{}", shown()));
    assert_eq!(failed["level"], "DEBG");
    assert_eq!(failed["code"], "INVALID_ARGUMENT");
    assert_eq!(failed["container_id"], "no-such-container");
    assert!(failed["error"]
        .as_str()
        .unwrap()
        .contains("no-such-container"));

    // What the work did: the ephemeral storage's mount, cgroup writes, the hook.
    let storage = find(&recs, "setting up storage", |r| r["driver"] == "ephemeral")
        .unwrap_or_else(|| panic!("no storage record:\n{}", shown()));
    assert_eq!(storage["level"], "DEBG");
    let mount = find(&recs, "mount", |r| {
        r["fstype"] == "tmpfs"
            && r["target"]
                .as_str()
                .is_some_and(|t| t.ends_with("sandbox/ephemeral/scratch"))
    })
    .unwrap_or_else(|| panic!("no mount record:\n{}", shown()));
    assert_eq!(mount["subsystem"], "storage");
    let procs = find(&recs, "cgroup write", |r| {
        r["file"]
            .as_str()
            .is_some_and(|f| f.contains(&cid) && f.ends_with("cgroup.procs"))
    })
    .unwrap_or_else(|| panic!("no cgroup write record:\n{}", shown()));
    assert!(procs["value"].as_str().unwrap().parse::<i32>().is_ok());
    let hook = find(&recs, "hook finished", |r| r["path"] == "/bin/true")
        .unwrap_or_else(|| panic!("no hook record:\n{}", shown()));
    assert_eq!(hook["exit_code"], 0);
    assert_eq!(hook["subsystem"], "hooks");
}

#[test]
fn info_level_stays_quiet() {
    let mut agent = TestAgent::start_with(AgentOptions {
        env: vec![("KATA_AGENT_LOG_LEVEL", "info".into())],
        ..Default::default()
    });
    exercise(&agent, "info");
    let _ = agent.wait_exit(std::time::Duration::from_secs(20));
    let recs = records(&agent);
    assert!(!recs.is_empty());
    for r in &recs {
        assert_ne!(r["level"], "DEBG", "{r}");
        let msg = r["msg"].as_str().unwrap_or_default();
        assert!(!DEBUG_MESSAGES.contains(&msg), "{r}");
    }
    // The INFO announcement of each traced request is still there, as before.
    assert!(recs
        .iter()
        .any(|r| r["msg"] == "rpc call from shim to agent: \"create_container\""));
}
