//! The Kata agent API: protobuf messages and async ttRPC services generated
//! at build time from `proto/*.proto`, with serde JSON support.
//!
//! Modules: [`agent`], [`agent_ttrpc`], [`health`], [`health_ttrpc`],
//! [`types`], [`oci`] and [`csi`]. Every message and enum derives
//! `serde::Serialize`/`Deserialize`; see [`serde_impl`] for the JSON shape.

pub mod serde_impl;

/// Generated code; it refers to its siblings through `super::`.
macro_rules! generated {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            #[allow(
                clippy::all,
                clippy::pedantic,
                missing_docs,
                non_camel_case_types,
                non_snake_case,
                non_upper_case_globals,
                unused_imports,
                unused_mut,
                dead_code,
                unused_attributes,
                unknown_lints,
                unused_qualifications,
                unused_results,
                deprecated,
                rustdoc::all
            )]
            pub mod $name {
                include!(concat!(env!("OUT_DIR"), "/", stringify!($name), ".rs"));
            }
        )*
    };
}

generated!(
    /// Messages of `agent.proto` (package `grpc`).
    agent,
    /// Async ttRPC client and server of `grpc.AgentService`.
    agent_ttrpc,
    /// Messages of `health.proto` (package `grpc`).
    health,
    /// Async ttRPC client and server of `grpc.Health`.
    health_ttrpc,
    /// Network types of `types.proto` (package `types`).
    types,
    /// The OCI runtime spec messages of `oci.proto` (package `grpc`).
    oci,
    /// Volume statistics messages of `csi.proto` (package `grpc`).
    csi,
);

/// The methods of `grpc.AgentService` as `(method, input type, output type)`,
/// with fully qualified type names without the leading dot (for example
/// `("CreateContainer", "grpc.CreateContainerRequest", "google.protobuf.Empty")`),
/// in declaration order.
pub fn agent_service_methods() -> Vec<(&'static str, &'static str, &'static str)> {
    service_methods(agent::file_descriptor(), "AgentService")
}

/// The methods of `grpc.Health`, shaped like [`agent_service_methods`].
pub fn health_service_methods() -> Vec<(&'static str, &'static str, &'static str)> {
    service_methods(health::file_descriptor(), "Health")
}

/// Lists a service's methods from a generated file descriptor.
fn service_methods(
    file: &'static protobuf::reflect::FileDescriptor,
    service: &str,
) -> Vec<(&'static str, &'static str, &'static str)> {
    let proto: &'static protobuf::descriptor::FileDescriptorProto = file.proto();
    proto
        .service
        .iter()
        .filter(|s| s.name() == service)
        .flat_map(|s| s.method.iter())
        .map(|m| {
            (
                m.name(),
                m.input_type().trim_start_matches('.'),
                m.output_type().trim_start_matches('.'),
            )
        })
        .collect()
}
