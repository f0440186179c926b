//! The `input` document of a decision: a request in the JSON form upstream's policies are written
//! against.
//!
//! That form is the one upstream's agent gets by serializing its rust-protobuf messages with serde:
//! every field is present, keyed by its `.proto` name — except names that are Rust keywords, which
//! carry rust-protobuf's trailing `_` (`Mount.type_`, `Device.type_`, `Interface.type_`, as
//! genpolicy's rules read them) — unset messages are `null`, repeated fields and maps are arrays and
//! objects (`[]`, `{}` when empty), enums and 64-bit integers are numbers, bytes are arrays of
//! numbers, a oneof is an object keyed by its oneof name holding `{"<CamelCaseField>": value}`
//! (or `null`), and proto3 `optional` scalars are `null` when unset.
//!
//! The input is built straight from the message through protobuf reflection into a Rego value, so
//! no JSON text is produced or parsed per decision.
//!
//! CopyFile is decided on a prepared form instead (see [`copy_file_input`]): the file's type from
//! `file_mode`, the symlink target for symlinks, the numeric fields, never the data.

use std::collections::BTreeMap;

use protobuf::reflect::{ReflectFieldRef, ReflectValueRef};
use protobuf::MessageDyn;
use protocols::agent::CopyFileRequest;
use regorus::Value;

use super::PolicyError;

/// Field names rust-protobuf escapes with a trailing `_` (Rust keywords).
const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "box", "break", "const", "continue", "crate", "dyn", "else", "enum",
    "extern", "false", "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move",
    "mut", "pub", "ref", "return", "static", "struct", "trait", "true", "try", "type", "unsafe",
    "use", "where", "while", "yield", "abstract", "become", "do", "final", "macro", "override",
    "priv", "typeof", "unsized", "virtual", "gen",
];

/// The input document of a request message.
pub fn message_input(msg: &dyn MessageDyn) -> Value {
    let descriptor = msg.descriptor_dyn();
    let mut object = BTreeMap::new();
    for field in descriptor.fields() {
        if let Some(oneof) = field.containing_oneof() {
            // A real oneof is one key (its name) for all its fields; each field is visited once,
            // and only the set one fills it in.
            let key = Value::from(oneof.name());
            let slot = object.entry(key).or_insert(Value::Null);
            if let Some(v) = field.get_singular(msg) {
                let mut variant = BTreeMap::new();
                variant.insert(Value::from(camel_case(field.name())), value(v));
                *slot = Value::from(variant);
            }
            continue;
        }
        let v = match field.get_reflect(msg) {
            ReflectFieldRef::Optional(_) => {
                let synthetic_optional = field.containing_oneof_including_synthetic().is_some();
                let is_message = matches!(
                    field.runtime_field_type(),
                    protobuf::reflect::RuntimeFieldType::Singular(
                        protobuf::reflect::RuntimeType::Message(_)
                    )
                );
                if is_message || synthetic_optional {
                    field.get_singular(msg).map(value).unwrap_or(Value::Null)
                } else {
                    value(field.get_singular_field_or_default(msg))
                }
            }
            ReflectFieldRef::Repeated(r) => {
                Value::from((0..r.len()).map(|i| value(r.get(i))).collect::<Vec<_>>())
            }
            ReflectFieldRef::Map(m) => {
                let mut map = BTreeMap::new();
                for (k, v) in &m {
                    map.insert(map_key(k), value(v));
                }
                Value::from(map)
            }
        };
        object.insert(Value::from(json_key(field.name())), v);
    }
    Value::from(object)
}

fn value(v: ReflectValueRef<'_>) -> Value {
    match v {
        ReflectValueRef::U32(n) => Value::from(n),
        ReflectValueRef::U64(n) => Value::from(n),
        ReflectValueRef::I32(n) => Value::from(n),
        ReflectValueRef::I64(n) => Value::from(n),
        ReflectValueRef::F32(n) => Value::from(f64::from(n)),
        ReflectValueRef::F64(n) => Value::from(n),
        ReflectValueRef::Bool(b) => Value::from(b),
        ReflectValueRef::String(s) => Value::from(s),
        ReflectValueRef::Bytes(b) => Value::from(
            b.iter()
                .map(|&x| Value::from(u32::from(x)))
                .collect::<Vec<_>>(),
        ),
        ReflectValueRef::Enum(_, n) => Value::from(n),
        ReflectValueRef::Message(m) => message_input(&*m),
    }
}

/// Map keys are strings in JSON; non-string keys are written as their number or boolean text.
fn map_key(k: ReflectValueRef<'_>) -> Value {
    match k {
        ReflectValueRef::String(s) => Value::from(s),
        ReflectValueRef::U32(n) => Value::from(n.to_string()),
        ReflectValueRef::U64(n) => Value::from(n.to_string()),
        ReflectValueRef::I32(n) => Value::from(n.to_string()),
        ReflectValueRef::I64(n) => Value::from(n.to_string()),
        ReflectValueRef::Bool(b) => Value::from(b.to_string()),
        other => value(other),
    }
}

/// The key of a field: its proto name, with rust-protobuf's `_` after a Rust keyword.
fn json_key(name: &str) -> String {
    if RUST_KEYWORDS.contains(&name) {
        format!("{name}_")
    } else {
        name.to_string()
    }
}

/// rust-protobuf's name of a oneof variant: the field name in CamelCase (`errnoret` -> `Errnoret`).
fn camel_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The file type CopyFile policies check, from the `S_IFMT` bits of `file_mode`.
pub fn file_type(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "Regular",
        libc::S_IFDIR => "Directory",
        libc::S_IFLNK => "Symlink",
        _ => "Unknown",
    }
}

/// The prepared CopyFile input: `path`, `file_type`, `symlink_target` (the data of a symlink as
/// UTF-8, else `null`), `file_size`, `file_mode`, `dir_mode`, `uid`, `gid`, `offset`; never the
/// data. A symlink whose target is not UTF-8 cannot be decided.
pub fn copy_file_input(req: &CopyFileRequest) -> Result<Value, PolicyError> {
    let kind = file_type(req.file_mode);
    let symlink_target = if kind == "Symlink" {
        let target = std::str::from_utf8(&req.data).map_err(|_| {
            PolicyError::Internal(
                "parsing CopyFileRequest for policy: invalid symlink content".to_string(),
            )
        })?;
        Value::from(target)
    } else {
        Value::Null
    };
    let mut object = BTreeMap::new();
    let mut put = |k: &str, v: Value| {
        object.insert(Value::from(k), v);
    };
    put("path", Value::from(req.path.as_str()));
    put("file_type", Value::from(kind));
    put("symlink_target", symlink_target);
    put("file_size", Value::from(req.file_size));
    put("file_mode", Value::from(req.file_mode));
    put("dir_mode", Value::from(req.dir_mode));
    put("uid", Value::from(req.uid));
    put("gid", Value::from(req.gid));
    put("offset", Value::from(req.offset));
    Ok(Value::from(object))
}

#[cfg(test)]
#[path = "input_tests.rs"]
mod tests;
