//! Compatibility with the reference wire vectors in `shared/wire-vectors`:
//! every message decodes without unknown fields and equals its JSON form,
//! and the services have exactly the reference methods.

use std::collections::BTreeSet;
use std::path::PathBuf;

use protobuf::reflect::{FileDescriptor, MessageDescriptor, ReflectFieldRef, ReflectValueRef};
use protobuf::MessageDyn;
use serde_json::Value;

/// The vectors directory; a missing directory fails the test.
fn vectors_dir() -> PathBuf {
    let dir = std::env::var_os("WIRE_VECTORS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // A copy of the project's reference vectors lives beside this test, so that a
            // clean clone is self-contained.
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/wire-vectors")
        });
    assert!(
        dir.join("index.json").is_file(),
        "wire vectors not found at {} (set WIRE_VECTORS_DIR)",
        dir.display()
    );
    dir
}

fn index() -> Value {
    let path = vectors_dir().join("index.json");
    let text = std::fs::read_to_string(&path).expect("read index.json");
    serde_json::from_str(&text).expect("index.json is valid JSON")
}

fn files() -> Vec<&'static FileDescriptor> {
    vec![
        protocols::agent::file_descriptor(),
        protocols::health::file_descriptor(),
        protocols::types::file_descriptor(),
        protocols::oci::file_descriptor(),
        protocols::csi::file_descriptor(),
    ]
}

/// Finds a generated message type by its full name (e.g. `grpc.Spec`).
fn message_by_name(full_name: &str) -> Option<MessageDescriptor> {
    files()
        .into_iter()
        .find_map(|f| f.message_by_full_name(&format!(".{full_name}")))
}

/// Every message type we define, nested ones included, map entries excluded.
fn all_messages() -> BTreeSet<String> {
    fn walk(m: MessageDescriptor, out: &mut BTreeSet<String>) {
        if m.is_map_entry() {
            return;
        }
        out.insert(m.full_name().to_string());
        for nested in m.nested_messages() {
            walk(nested, out);
        }
    }
    let mut out = BTreeSet::new();
    for f in files() {
        for m in f.messages() {
            walk(m, &mut out);
        }
    }
    out
}

/// Collects the paths of messages holding unknown fields, at any depth.
fn unknown_fields(msg: &dyn MessageDyn, path: &str, found: &mut Vec<String>) {
    if msg.unknown_fields_dyn().iter().next().is_some() {
        found.push(path.to_string());
    }
    let check = |v: ReflectValueRef, p: &str, found: &mut Vec<String>| {
        if let ReflectValueRef::Message(m) = v {
            unknown_fields(&*m, p, found);
        }
    };
    for field in msg.descriptor_dyn().fields() {
        let p = format!("{path}.{}", field.name());
        match field.get_reflect(msg) {
            ReflectFieldRef::Optional(v) => {
                if let Some(v) = v.value() {
                    check(v, &p, found);
                }
            }
            ReflectFieldRef::Repeated(r) => {
                for (i, v) in r.into_iter().enumerate() {
                    check(v, &format!("{p}[{i}]"), found);
                }
            }
            ReflectFieldRef::Map(m) => {
                for (k, v) in &m {
                    check(v, &format!("{p}[{k}]"), found);
                }
            }
        }
    }
}

/// Fields of the message's own level that hold their default value.
fn unset_fields(msg: &dyn MessageDyn) -> Vec<String> {
    msg.descriptor_dyn()
        .fields()
        .filter(|field| match field.get_reflect(msg) {
            ReflectFieldRef::Optional(v) => v.value().is_none(),
            ReflectFieldRef::Repeated(r) => r.is_empty(),
            ReflectFieldRef::Map(m) => m.is_empty(),
        })
        .map(|field| field.name().to_string())
        .collect()
}

#[test]
fn messages_match_wire_vectors() {
    let dir = vectors_dir();
    let index = index();
    let names: Vec<&str> = index["messages"]
        .as_array()
        .expect("index.json has a messages list")
        .iter()
        .map(|v| v.as_str().expect("message names are strings"))
        .collect();
    assert!(!names.is_empty(), "index.json lists no messages");

    let mut failures = Vec::new();
    for name in &names {
        let Some(descriptor) = message_by_name(name) else {
            failures.push(format!("{name}: no such message in our definitions"));
            continue;
        };
        let bin = std::fs::read(dir.join(format!("{name}.bin"))).expect("read .bin vector");
        let json = std::fs::read_to_string(dir.join(format!("{name}.json"))).expect("read .json");

        let decoded = match descriptor.parse_from_bytes(&bin) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{name}: cannot decode the .bin vector: {e}"));
                continue;
            }
        };
        let mut unknown = Vec::new();
        unknown_fields(&*decoded, name, &mut unknown);
        if !unknown.is_empty() {
            failures.push(format!("{name}: unknown fields at {unknown:?}"));
        }
        // The vectors set every field, so a field left unset at the top level
        // is one the reference does not have.
        let unset = unset_fields(&*decoded);
        if !unset.is_empty() {
            failures.push(format!("{name}: fields not in the vector: {unset:?}"));
        }

        match protobuf_json_mapping::parse_dyn_from_str(&descriptor, &json) {
            Ok(from_json) => {
                if !descriptor.eq(&*decoded, &*from_json) {
                    failures.push(format!(
                        "{name}: .bin and .json values differ:\n  bin:  {decoded:?}\n  json: {from_json:?}"
                    ));
                }
            }
            Err(e) => failures.push(format!("{name}: cannot parse the .json vector: {e}")),
        }
    }

    let expected: BTreeSet<String> = names.iter().map(|s| s.to_string()).collect();
    let extra: Vec<_> = all_messages().difference(&expected).cloned().collect();
    if !extra.is_empty() {
        failures.push(format!("messages not in index.json: {extra:?}"));
    }

    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn services_match_index() {
    let index = index();
    let services = index["services"]
        .as_object()
        .expect("index.json has a services object");
    let ours = [
        ("grpc.AgentService", protocols::agent_service_methods()),
        ("grpc.Health", protocols::health_service_methods()),
    ];
    assert_eq!(
        services.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        ours.iter().map(|(name, _)| *name).collect::<BTreeSet<_>>(),
        "service names differ"
    );
    for (service, methods) in ours {
        let expected: BTreeSet<(String, String, String)> = services[service]
            .as_array()
            .expect("methods list")
            .iter()
            .map(|m| {
                let field = |k: &str| {
                    m[k].as_str()
                        .expect("method fields are strings")
                        .to_string()
                };
                (field("method"), field("input"), field("output"))
            })
            .collect();
        let actual: BTreeSet<(String, String, String)> = methods
            .iter()
            .map(|(m, i, o)| (m.to_string(), i.to_string(), o.to_string()))
            .collect();
        assert_eq!(
            actual.len(),
            methods.len(),
            "{service} has duplicate methods"
        );
        let missing: Vec<_> = expected.difference(&actual).collect();
        let extra: Vec<_> = actual.difference(&expected).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{service}: missing {missing:?}, unexpected {extra:?}"
        );
    }
}
