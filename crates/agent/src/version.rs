//! Version strings reported by `--version`, Health.Version and GetGuestDetails.

/// The agent's own version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The version of the agent API we implement (the value upstream reports as grpc_version).
pub const API_VERSION: &str = "0.0.1";

/// Build features that change behaviour, as reported in `extra_features`.
pub const EXTRA_FEATURES: &[&str] = &["seccomp"];

/// The line `kata-agent --version` prints.
pub fn version_line() -> String {
    format!(
        "kata-agent version {VERSION} (api version: {API_VERSION}, commit version: {}, type: rust, extra-features: [{}])",
        option_env!("KATA_AGENT_COMMIT").unwrap_or("unknown"),
        EXTRA_FEATURES.join(", ")
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_line_names_versions() {
        let line = super::version_line();
        assert!(line.starts_with("kata-agent version "));
        assert!(line.contains("api version: 0.0.1"));
        assert!(line.contains("extra-features: [seccomp]"));
    }
}
