//! Constant rules, and decisions while the state changes.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use regorus::Value;

use super::engine::LoadedPolicy;
use super::gate::PolicyGate;
use super::tests::{create, exec, fixture, rules_with_data as genpolicy};
use super::PolicyError;

/// Every rule decided without the interpreter gets the answer the interpreter gives, with and
/// without `AllowRequestsFailingPolicy`.
#[test]
fn constant_rules_decide_as_the_interpreter() {
    let failing_allowed =
        "package agent_policy\n\ndefault AllowRequestsFailingPolicy := true\ndefault ExecProcessRequest := false\ndefault GuestDetailsRequest := true\n";
    for (name, text) in [
        ("allow-all.rego", fixture("allow-all.rego")),
        (
            "allow-all-except-exec-process.rego",
            fixture("allow-all-except-exec-process.rego"),
        ),
        ("allow-set-policy.rego", fixture("allow-set-policy.rego")),
        ("genpolicy", genpolicy()),
        ("failing-allowed", failing_allowed.to_string()),
    ] {
        let policy = LoadedPolicy::parse(name, &text).unwrap();
        assert!(!policy.constant_rules().is_empty(), "{name}");
        for rule in policy.constant_rules().keys() {
            let fast = policy.evaluate(rule, Value::new_object()).unwrap();
            let slow = policy.interpret(rule, Value::new_object()).unwrap();
            assert_eq!(
                (fast.allowed, fast.overridden, &fast.prints),
                (slow.allowed, slow.overridden, &slow.prints),
                "{name}: {rule}"
            );
        }
    }
}

#[test]
fn only_a_lone_literal_default_is_constant() {
    let text = r#"
package agent_policy
import future.keywords.if

default GuestDetailsRequest := true
default ExecProcessRequest := false
ExecProcessRequest if { input.container_id == "c" }
default CopyFileRequest := input.path
default ReadStreamRequest := false
default WaitProcessRequest := true
WaitProcessRequest.extra := 1
default PauseContainerRequest := true
PauseContainerRequest(x) := x
"#;
    let policy = LoadedPolicy::parse("t", text).unwrap();
    let constant = policy.constant_rules();
    assert_eq!(
        constant.get("GuestDetailsRequest"),
        Some(&Value::from(true))
    );
    assert_eq!(constant.get("ReadStreamRequest"), Some(&Value::from(false)));
    for name in [
        "ExecProcessRequest",
        "CopyFileRequest",
        "WaitProcessRequest",
        "PauseContainerRequest",
    ] {
        assert!(!constant.contains_key(name), "{name}");
    }
    // genpolicy: defaults-only requests are constant, rules with bodies are not.
    let gen = LoadedPolicy::parse("genpolicy", &genpolicy()).unwrap();
    let constant = gen.constant_rules();
    assert_eq!(
        constant.get("GuestDetailsRequest"),
        Some(&Value::from(true))
    );
    assert_eq!(constant.get("SetPolicyRequest"), Some(&Value::from(false)));
    for name in [
        "CopyFileRequest",
        "CreateContainerRequest",
        "ExecProcessRequest",
    ] {
        assert!(!constant.contains_key(name), "{name}");
    }
}

/// A package below `agent_policy` makes `data.agent_policy.<name>` an object of its rules.
#[test]
fn a_package_below_the_rule_is_not_constant() {
    let text = "package agent_policy.GuestDetailsRequest\n\ndefault GuestDetailsRequest := true\n";
    let policy = LoadedPolicy::parse("t", text).unwrap();
    assert!(policy.constant_rules().is_empty());
}

/// A policy whose CreateContainer records the container, allowing only one, and whose
/// ExecProcess needs a recorded container.
const ONE_CONTAINER: &str = r#"
package agent_policy
import future.keywords.if

default CreateContainerRequest := false
default ExecProcessRequest := false

CreateContainerRequest := {"allowed": true, "ops": [{"op": "add", "path": "/pstate/only", "value": input.container_id}]} if {
    not data.pstate.only
}
ExecProcessRequest if {
    data.pstate.only == input.container_id
}
"#;

/// Installs a hook that holds each state change while its next snapshot is prepared: it reports
/// on `entered` and waits for a message on the returned sender.
fn hold_state_changes(policy: &LoadedPolicy) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    *policy.preparing_hook.lock().unwrap() = Some(Box::new(move || {
        entered_tx.send(()).unwrap();
        release_rx
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(30))
            .unwrap();
    }));
    (entered, release)
}

/// While a state change is being prepared, other decisions go on (on the state before it) and
/// do not wait for it.
#[test]
fn decisions_go_on_while_the_state_changes() {
    let policy = LoadedPolicy::parse("one.rego", ONE_CONTAINER).unwrap();
    let (entered, release) = hold_state_changes(&policy);
    let gate = Arc::new(PolicyGate::new(Some(policy)));
    let g = gate.clone();
    let creating = std::thread::spawn(move || g.check(&create("c1")));
    entered.recv_timeout(Duration::from_secs(30)).unwrap();
    // The create is held in the middle of its state change: these are decided meanwhile.
    for _ in 0..3 {
        assert!(matches!(
            gate.check(&exec("c1", &["sh"])),
            Err(PolicyError::Denied(_))
        ));
        assert!(gate.check(&exec("c2", &["sh"])).is_err());
    }
    release.send(()).unwrap();
    assert_eq!(creating.join().unwrap(), Ok(()));
    // Decided after the create answered: the new state.
    assert_eq!(gate.check(&exec("c1", &["sh"])), Ok(()));
}

/// Two state changes decided at once on the same state: the second is decided again on the state
/// the first made, so the policy's "only one container" holds.
#[test]
fn concurrent_state_changes_are_decided_one_after_the_other() {
    let policy = LoadedPolicy::parse("one.rego", ONE_CONTAINER).unwrap();
    let (entered, release) = hold_state_changes(&policy);
    let gate = Arc::new(PolicyGate::new(Some(policy)));
    let g = gate.clone();
    let first = std::thread::spawn(move || g.check(&create("c1")));
    entered.recv_timeout(Duration::from_secs(30)).unwrap();
    // The second create evaluates on the state without c1 (allowed, with ops), then waits for the
    // first change to finish; decided again, it is denied.
    let g = gate.clone();
    let second = std::thread::spawn(move || g.check(&create("c2")));
    // Give the second create time to reach the commit lock; the outcome does not depend on it.
    std::thread::sleep(Duration::from_millis(50));
    release.send(()).unwrap();
    assert_eq!(first.join().unwrap(), Ok(()));
    assert!(matches!(
        second.join().unwrap(),
        Err(PolicyError::Denied(m)) if m.starts_with("CreateContainerRequest is blocked by policy")
    ));
    assert_eq!(gate.check(&exec("c1", &["sh"])), Ok(()));
    assert!(gate.check(&exec("c2", &["sh"])).is_err());
}
