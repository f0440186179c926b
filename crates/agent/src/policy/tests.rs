use super::engine::LoadedPolicy;
use super::gate::{load_startup, PolicyGate};
use super::PolicyError;
use protobuf::MessageDyn;
use protocols::agent::CopyFileRequest;
use protocols::agent::{
    CreateContainerRequest, DestroySandboxRequest, ExecProcessRequest, GuestDetailsRequest,
    ReadStreamRequest, RemoveContainerRequest, SetPolicyRequest, VolumeStatsRequest,
};
use protocols::oci::{Process, Spec};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/policy/");

pub(super) fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{DATA}{name}")).unwrap()
}

fn gate_with(text: &str) -> PolicyGate {
    PolicyGate::new(Some(LoadedPolicy::parse("test.rego", text).unwrap()))
}

pub(super) fn exec(cid: &str, args: &[&str]) -> ExecProcessRequest {
    ExecProcessRequest {
        container_id: cid.into(),
        exec_id: "e1".into(),
        process: Some(Process {
            Args: args.iter().map(|s| s.to_string()).collect(),
            Cwd: "/".into(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

pub(super) fn create(cid: &str) -> CreateContainerRequest {
    CreateContainerRequest {
        container_id: cid.into(),
        OCI: Some(Spec::default()).into(),
        ..Default::default()
    }
}

#[test]
fn no_policy_allows_everything() {
    let gate = PolicyGate::new(None);
    assert_eq!(gate.check(&exec("c", &["sh"])), Ok(()));
    assert_eq!(gate.check_copy_file(&Default::default()), Ok(()));
}

/// Every request message of allow-all.rego is allowed; the list covers the service's methods
/// (except the few upstream never put in it).
#[test]
fn allow_all_fixture_allows_every_request_it_names() {
    let text = fixture("allow-all.rego");
    let policy = LoadedPolicy::parse("allow-all.rego", &text).unwrap();
    for (_, input, _) in protocols::agent_service_methods() {
        let name = input.trim_start_matches("grpc.");
        if !text.contains(&format!("default {name} := true")) {
            continue;
        }
        let outcome = policy.evaluate(name, regorus::Value::new_object()).unwrap();
        assert!(outcome.allowed, "{name}");
    }
    for name in [
        "CreateContainerRequest",
        "ReadStreamRequest",
        "MemAgentMemcgConfig",
    ] {
        assert!(text.contains(name), "{name}");
    }
}

#[test]
fn allow_all_except_exec_denies_exec_only() {
    let gate = gate_with(&fixture("allow-all-except-exec-process.rego"));
    assert_eq!(gate.check(&create("c1")), Ok(()));
    assert_eq!(
        gate.check(&exec("c1", &["sh"])),
        Err(PolicyError::Denied(
            "ExecProcessRequest is blocked by policy: ".into()
        ))
    );
}

#[test]
fn allow_set_policy_fixture() {
    let gate = gate_with(&fixture("allow-set-policy.rego"));
    // Undefined rules cannot be decided: an evaluation error (INTERNAL), as upstream.
    assert!(matches!(
        gate.check(&create("c1")),
        Err(PolicyError::Internal(m)) if m.starts_with("CreateContainerRequest: internal error")
    ));
    assert_eq!(gate.check(&SetPolicyRequest::default()), Ok(()));
}

/// genpolicy's rules read `policy_data`, which genpolicy appends; alone they do not compile (as in
/// OPA): refused with the reason.
#[test]
fn rules_rego_needs_policy_data() {
    match LoadedPolicy::parse("rules.rego", &fixture("rules.rego")) {
        Err(PolicyError::Invalid(m)) => assert!(m.contains("policy_data"), "{m}"),
        other => panic!("{other:?}"),
    }
    let empty = format!("{}\npolicy_data := {{}}\n", fixture("rules.rego"));
    let gate = gate_with(&empty);
    assert_eq!(gate.check(&DestroySandboxRequest::default()), Ok(()));
    assert_eq!(gate.check(&GuestDetailsRequest::default()), Ok(()));
    assert!(matches!(
        gate.check(&create("c1")),
        Err(PolicyError::Denied(m)) if m.starts_with("CreateContainerRequest is blocked by policy: ")
    ));
    assert!(matches!(
        gate.check(&VolumeStatsRequest::default()),
        Err(PolicyError::Denied(_))
    ));
}

pub(super) fn rules_with_data() -> String {
    let data =
        fixture("policy-data.rego").replace("@CPATH@", "/run/kata-containers/shared/containers");
    format!("{}\n{}", fixture("rules.rego"), data)
}

#[test]
fn rules_rego_decides_copy_file_and_streams() {
    let gate = gate_with(&rules_with_data());
    let bundle = "a".repeat(64);
    let ok = CopyFileRequest {
        path: format!("/run/kata-containers/shared/containers/{bundle}-0123456789abcdef-hosts"),
        file_mode: libc::S_IFREG | 0o644,
        ..Default::default()
    };
    assert_eq!(gate.check_copy_file(&ok), Ok(()));
    let outside = CopyFileRequest {
        path: "/etc/passwd".into(),
        ..ok.clone()
    };
    assert!(matches!(
        gate.check_copy_file(&outside),
        Err(PolicyError::Denied(m)) if m.starts_with("CopyFileRequest is blocked by policy: ")
    ));
    let traversal = CopyFileRequest {
        path: format!("/run/kata-containers/shared/containers/{bundle}-0123456789abcdef-../../x"),
        ..ok.clone()
    };
    assert!(gate.check_copy_file(&traversal).is_err());
    let absolute_link = CopyFileRequest {
        path: format!("/run/kata-containers/shared/containers/{bundle}-0123456789abcdef-d/l"),
        file_mode: libc::S_IFLNK | 0o777,
        data: b"/etc/shadow".to_vec(),
        ..Default::default()
    };
    assert!(gate.check_copy_file(&absolute_link).is_err());
    let relative_link = CopyFileRequest {
        data: b"..data/token".to_vec(),
        ..absolute_link
    };
    assert_eq!(gate.check_copy_file(&relative_link), Ok(()));
    // request_defaults.ReadStreamRequest is true in the test data.
    assert_eq!(gate.check(&ReadStreamRequest::default()), Ok(()));
    // The container was never created: ExecProcess has no recorded container to match.
    assert!(gate.check(&exec("c1", &["echo", "ready"])).is_err());
}

const STATEFUL: &str = r#"
package agent_policy
import future.keywords.if

default CreateContainerRequest := false
default ExecProcessRequest := false
default RemoveContainerRequest := false

CreateContainerRequest := {"allowed": true, "ops": [{"op": "add", "path": concat("/", ["/pstate", input.container_id]), "value": true}]} if {
    startswith(input.container_id, "ok-")
}
CreateContainerRequest := {"allowed": false, "ops": [{"op": "add", "path": "/pstate/denied", "value": true}]} if {
    startswith(input.container_id, "no-")
}
ExecProcessRequest if {
    data.pstate[input.container_id]
}
RemoveContainerRequest := {"allowed": true, "ops": [{"op": "remove", "path": concat("/", ["/pstate", input.container_id])}]} if {
    true
}
"#;

#[test]
fn state_ops_recorded_and_read() {
    let policy = LoadedPolicy::parse("stateful.rego", STATEFUL).unwrap();
    let gate = PolicyGate::new(Some(policy));
    assert!(gate.check(&exec("ok-1", &["sh"])).is_err());
    assert_eq!(gate.check(&create("ok-1")), Ok(()));
    assert_eq!(gate.check(&exec("ok-1", &["sh"])), Ok(()));
    assert!(gate.check(&exec("ok-2", &["sh"])).is_err());
    // A denied result's ops change nothing.
    assert!(gate.check(&create("no-1")).is_err());
    let state = serde_json::to_value(gate.current().unwrap().state()).unwrap();
    assert_eq!(state, serde_json::json!({"ok-1": true}));
    // Removing the record closes exec again.
    let remove = RemoveContainerRequest {
        container_id: "ok-1".into(),
        ..Default::default()
    };
    assert_eq!(gate.check(&remove), Ok(()));
    assert!(gate.check(&exec("ok-1", &["sh"])).is_err());
    // An op that cannot apply (removing a missing key) is an evaluation error, not an allow.
    assert!(matches!(gate.check(&remove), Err(PolicyError::Internal(_))));
}

#[test]
fn allow_requests_failing_policy_turns_denials_into_warnings() {
    let text = "package agent_policy\n\ndefault AllowRequestsFailingPolicy := true\ndefault ExecProcessRequest := false\n";
    let policy = LoadedPolicy::parse("t", text).unwrap();
    assert!(policy.allow_failures());
    let gate = PolicyGate::new(Some(policy));
    assert_eq!(gate.check(&exec("c", &["sh"])), Ok(()));
    // Undefined rules too.
    assert_eq!(gate.check(&create("c")), Ok(()));
}

#[test]
fn malformed_policies_are_refused() {
    for text in [
        "package agent_policy\n\ndefault CreateContainerRequest := \n",
        "this is not rego",
        "package agent_policy\n\nExecProcessRequest { unbound == 1 }\n",
    ] {
        assert!(
            matches!(
                LoadedPolicy::parse("bad", text),
                Err(PolicyError::Invalid(_))
            ),
            "{text}"
        );
    }
}

#[test]
fn print_output_is_the_denial_message() {
    let text = "package agent_policy\nimport future.keywords.if\n\ndefault ExecProcessRequest := false\nExecProcessRequest if {\n    print(\"args:\", input.process.Args)\n    input.process.Args[0] == \"ls\"\n}\n";
    let gate = gate_with(text);
    assert_eq!(gate.check(&exec("c", &["ls"])), Ok(()));
    match gate.check(&exec("c", &["rm", "-rf"])) {
        Err(PolicyError::Denied(m)) => {
            assert!(
                m.starts_with("ExecProcessRequest is blocked by policy: "),
                "{m}"
            );
            assert!(m.contains("args:") && m.contains("rm"), "{m}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn set_policy_is_decided_and_swaps_whole() {
    let gate = gate_with(&fixture("allow-all.rego"));
    // Text that does not parse: INVALID_ARGUMENT, the policy in force stays.
    let bad = SetPolicyRequest {
        policy: "package agent_policy\ndefault X := \n".into(),
        ..Default::default()
    };
    assert!(matches!(
        gate.set_policy(bad).await,
        Err(PolicyError::Invalid(_))
    ));
    assert_eq!(gate.check(&exec("c", &["sh"])), Ok(()));
    // A policy that allows nothing but SetPolicy... then one that locks itself.
    let lock = SetPolicyRequest {
        policy: "package agent_policy\n\ndefault SetPolicyRequest := false\ndefault ExecProcessRequest := false\n".into(),
        ..Default::default()
    };
    gate.set_policy(lock).await.unwrap();
    assert!(matches!(
        gate.check(&exec("c", &["sh"])),
        Err(PolicyError::Denied(_))
    ));
    let again = SetPolicyRequest {
        policy: fixture("allow-all.rego"),
        ..Default::default()
    };
    assert_eq!(
        gate.set_policy(again).await,
        Err(PolicyError::Denied(
            "SetPolicyRequest is blocked by policy: ".into()
        ))
    );
    assert!(gate.check(&exec("c", &["sh"])).is_err());
}

#[test]
fn startup_loading_order() {
    let dir = tempfile::tempdir().unwrap();
    let default = dir.path().join("default-policy.rego");
    let configured = dir.path().join("configured.rego");
    // Nothing configured, no default file: allow all.
    assert!(load_startup(None, &default).unwrap().is_none());
    std::fs::write(&default, fixture("allow-set-policy.rego")).unwrap();
    let p = load_startup(None, &default).unwrap().unwrap();
    assert!(p.origin().ends_with("default-policy.rego"));
    // The configured file wins over the default one.
    std::fs::write(&configured, fixture("allow-all.rego")).unwrap();
    let p = load_startup(Some(&configured), &default).unwrap().unwrap();
    assert!(p.origin().ends_with("configured.rego"));
    // A configured file that is missing, or that does not parse, is an error.
    assert!(load_startup(Some(&dir.path().join("missing.rego")), &default).is_err());
    std::fs::write(&configured, "package agent_policy\ndefault X := \n").unwrap();
    let e = load_startup(Some(&configured), &default).unwrap_err();
    assert!(e.to_string().contains("does not parse"), "{e}");
}

/// The names the gate uses are the request message names upstream's policies use.
#[test]
fn request_names() {
    assert_eq!(
        ReadStreamRequest::default().descriptor_dyn().name(),
        "ReadStreamRequest"
    );
    assert_eq!(
        protocols::agent::MemAgentMemcgConfig::default()
            .descriptor_dyn()
            .name(),
        "MemAgentMemcgConfig"
    );
}

/// genpolicy's rules with the constant `policy_data` hoisted into the data document and the
/// agent's `regex.match` decide exactly as regorus does on the unchanged text: same result, same
/// print output, on allowed and denied requests of several kinds.
#[test]
fn hoisted_constants_and_regex_builtin_decide_as_the_plain_policy() {
    use std::num::{NonZeroU32, NonZeroUsize};
    let text = rules_with_data();
    // The comparison below is only worth something if policy_data was in fact hoisted.
    let hoisted = super::hoist::hoist(&text);
    assert!(
        hoisted
            .data
            .as_ref()
            .is_some_and(
                |d| d[super::hoist::DATA_ROOT]["agent_policy"]["policy_data"]["containers"]
                    != regorus::Value::Undefined
            ),
        "policy_data was not hoisted"
    );
    assert!(hoisted
        .text
        .contains("policy_data := data.kata_agent_constants."));
    let loaded = LoadedPolicy::parse("rules.rego", &text).unwrap();

    let mut plain = regorus::Engine::new();
    plain.set_rego_v0(true);
    plain.set_strict_builtin_errors(false);
    plain.set_gather_prints(true);
    plain.set_policy_length_config(regorus::PolicyLengthConfig {
        max_col: NonZeroU32::new(64 * 1024).unwrap(),
        max_file_bytes: NonZeroUsize::new(16 << 20).unwrap(),
        max_lines: NonZeroUsize::new(200_000).unwrap(),
    });
    plain
        .add_data(regorus::Value::from_json_str(r#"{"pstate": {}}"#).unwrap())
        .unwrap();
    plain.add_policy("rules.rego".into(), text).unwrap();

    let bundle = "a".repeat(64);
    let shared = format!("/run/kata-containers/shared/containers/{bundle}-0123456789abcdef");
    let regular = CopyFileRequest {
        path: format!("{shared}-hosts"),
        file_mode: libc::S_IFREG | 0o644,
        ..Default::default()
    };
    let link = CopyFileRequest {
        path: format!("{shared}-d/l"),
        file_mode: libc::S_IFLNK | 0o777,
        data: b"..data/token".to_vec(),
        ..Default::default()
    };
    let copies = [
        regular.clone(),
        CopyFileRequest {
            path: "/etc/passwd".into(),
            ..regular.clone()
        },
        CopyFileRequest {
            path: format!("{shared}-../../x"),
            ..regular.clone()
        },
        CopyFileRequest {
            file_mode: libc::S_IFDIR | 0o755,
            ..regular
        },
        link.clone(),
        CopyFileRequest {
            data: b"/etc/shadow".to_vec(),
            ..link
        },
    ];
    let mut cases: Vec<(String, regorus::Value)> = copies
        .iter()
        .map(|r| {
            (
                "CopyFileRequest".to_string(),
                super::input::copy_file_input(r).unwrap(),
            )
        })
        .collect();
    let upstream: serde_json::Value = serde_json::from_str(&fixture("upstream-form.json")).unwrap();
    for (name, input) in upstream.as_object().unwrap() {
        cases.push((name.clone(), serde_json::from_value(input.clone()).unwrap()));
    }
    cases.push((
        "ExecProcessRequest".into(),
        super::input::message_input(&exec("c1", &["echo", "ready"])),
    ));
    cases.push((
        "GuestDetailsRequest".into(),
        super::input::message_input(&GuestDetailsRequest::default()),
    ));

    let mut allowed = 0;
    for (name, input) in cases {
        plain.set_input(input.clone());
        let want = plain
            .eval_rule(format!("data.agent_policy.{name}"))
            .unwrap();
        let want_prints = plain.take_prints().unwrap().join(" ");
        let got = loaded.evaluate(&name, input).unwrap();
        assert_eq!(got.allowed, want == regorus::Value::Bool(true), "{name}");
        assert_eq!(got.prints, want_prints, "{name}");
        allowed += usize::from(got.allowed);
    }
    // Both kinds of decision were compared.
    assert!(allowed >= 2, "{allowed}");
}
