//! Generates the rust-protobuf messages and async ttRPC services of the
//! Kata agent API from `proto/*.proto`, with serde derives on every type.

use std::path::PathBuf;

use protobuf::reflect::{
    EnumDescriptor, FieldDescriptor, MessageDescriptor, OneofDescriptor, RuntimeFieldType,
    RuntimeType,
};
use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize, ProtobufCustomizeCallback};

const PROTOS: &[&str] = &["types", "oci", "csi", "health", "agent"];

/// Rust keywords that rust-protobuf escapes with a trailing `_`.
const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "box", "break", "const", "continue", "crate", "dyn", "else", "enum",
    "extern", "false", "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move",
    "mut", "pub", "ref", "return", "static", "struct", "trait", "true", "try", "type", "unsafe",
    "use", "where", "while", "yield", "abstract", "become", "do", "final", "macro", "override",
    "priv", "typeof", "unsized", "virtual", "gen",
];

/// Adds serde support to the generated code; JSON keys are the proto field names.
struct SerdeCallback;

impl ProtobufCustomizeCallback for SerdeCallback {
    fn message(&self, _message: &MessageDescriptor) -> ProtobufCustomize {
        ProtobufCustomize::default()
            .before("#[derive(::serde::Serialize, ::serde::Deserialize)]\n#[serde(default)]")
    }

    fn enumeration(&self, _enum_type: &EnumDescriptor) -> ProtobufCustomize {
        ProtobufCustomize::default().before("#[derive(::serde::Serialize, ::serde::Deserialize)]")
    }

    fn oneof(&self, _oneof: &OneofDescriptor) -> ProtobufCustomize {
        // Variants are the CamelCase form of snake_case proto names.
        ProtobufCustomize::default().before(
            "#[derive(::serde::Serialize, ::serde::Deserialize)]\n#[serde(rename_all = \"snake_case\")]",
        )
    }

    fn special_field(&self, _message: &MessageDescriptor, _field: &str) -> ProtobufCustomize {
        ProtobufCustomize::default().before("#[serde(skip)]")
    }

    fn field(&self, field: &FieldDescriptor) -> ProtobufCustomize {
        let mut attrs = Vec::new();
        let name = field.name();
        if RUST_KEYWORDS.contains(&name) {
            attrs.push(format!(
                "#[serde(rename = \"{name}\", alias = \"{name}_\")]"
            ));
        }
        let optional = field.proto().proto3_optional();
        let helper = match field.runtime_field_type() {
            RuntimeFieldType::Singular(RuntimeType::Message(_)) => Some("message_field"),
            RuntimeFieldType::Singular(RuntimeType::Enum(_)) if !optional => Some("enum_field"),
            RuntimeFieldType::Singular(RuntimeType::Enum(_)) => Some("optional_enum_field"),
            RuntimeFieldType::Repeated(RuntimeType::Enum(_)) => Some("repeated_enum_field"),
            RuntimeFieldType::Singular(RuntimeType::U64 | RuntimeType::I64) if optional => {
                Some("optional_int64")
            }
            RuntimeFieldType::Singular(RuntimeType::U64 | RuntimeType::I64) => Some("int64"),
            RuntimeFieldType::Repeated(RuntimeType::U64 | RuntimeType::I64) => {
                Some("repeated_int64")
            }
            _ => None,
        };
        if let Some(helper) = helper {
            attrs.push(format!("#[serde(with = \"crate::serde_impl::{helper}\")]"));
        }
        if attrs.is_empty() {
            ProtobufCustomize::default()
        } else {
            ProtobufCustomize::default().before(&attrs.join("\n"))
        }
    }
}

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let proto_dir = manifest_dir.join("../../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    println!("cargo:rerun-if-changed=build.rs");

    let inputs: Vec<PathBuf> = PROTOS
        .iter()
        .map(|name| proto_dir.join(format!("{name}.proto")))
        .collect();
    for input in &inputs {
        println!("cargo:rerun-if-changed={}", input.display());
    }

    Codegen::new()
        .out_dir(&out_dir)
        .inputs(&inputs)
        .include(&proto_dir)
        .rust_protobuf()
        .rust_protobuf_customize_callback(SerdeCallback)
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .run()
        .expect("generating code from the proto files failed");

    // The generated files start with inner attributes and doc comments, which
    // `include!` cannot take; `src/lib.rs` puts the allowances on the modules.
    for name in PROTOS.iter().map(|p| p.to_string()).chain(
        ["agent_ttrpc", "health_ttrpc"]
            .iter()
            .map(|p| p.to_string()),
    ) {
        let path = out_dir.join(format!("{name}.rs"));
        let code = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let stripped: String = code
            .lines()
            .filter(|line| {
                let line = line.trim_start();
                !line.starts_with("#![") && !line.starts_with("//!")
            })
            .flat_map(|line| [line, "\n"])
            .collect();
        std::fs::write(&path, stripped)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}
