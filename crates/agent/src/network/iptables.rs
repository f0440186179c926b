//! GetIPTables / SetIPTables through `iptables-save` / `iptables-restore` (and the `ip6tables-`
//! pair), found on the agent's PATH or in the standard system directories.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::{AgentError, Result};

/// How long one save or restore may run.
pub const IPTABLES_TIMEOUT: Duration = Duration::from_secs(30);

/// Searched after the PATH (a guest started as PID 1 may have no PATH at all).
const STANDARD_DIRS: &[&str] = &[
    "/usr/sbin",
    "/sbin",
    "/usr/bin",
    "/bin",
    "/usr/local/sbin",
    "/usr/local/bin",
];

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The full path of `tool`: the first executable file of that name on PATH, then in the standard
/// directories.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|d| d.is_absolute())
        .chain(STANDARD_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
}

fn tool_name(ipv6: bool, action: &str) -> String {
    format!("{}tables-{action}", if ipv6 { "ip6" } else { "ip" })
}

async fn run(tool: &str, args: &[&str], stdin: Option<Vec<u8>>) -> Result<(i32, Vec<u8>, Vec<u8>)> {
    let bin = find_tool(tool).ok_or_else(|| {
        AgentError::failed_precondition(format!(
            "{tool} is not installed in the guest (searched PATH and {})",
            STANDARD_DIRS.join(", ")
        ))
    })?;
    let mut cmd = Command::new(&bin);
    cmd.args(args);
    let shown = bin.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        engine::reaper::run_command(&mut cmd, stdin.as_deref(), Some(IPTABLES_TIMEOUT))
    })
    .await
    .map_err(|e| AgentError::internal(format!("{tool} task failed: {e}")))?
    .map_err(|e| AgentError::internal(format!("cannot run {shown}: {e}")))?;
    if out.timed_out {
        return Err(AgentError::deadline_exceeded(format!(
            "{shown} did not finish within {} seconds and was killed",
            IPTABLES_TIMEOUT.as_secs()
        )));
    }
    Ok((out.code, out.stdout, out.stderr))
}

/// The rules of the guest (`iptables-save` output).
pub async fn get(ipv6: bool) -> Result<Vec<u8>> {
    let tool = tool_name(ipv6, "save");
    let (code, stdout, stderr) = run(&tool, &[], None).await?;
    if code != 0 {
        return Err(AgentError::internal(format!(
            "{tool} exited with status {code}: {}",
            String::from_utf8_lossy(&stderr).trim()
        )));
    }
    Ok(stdout)
}

/// Loads `data` with `iptables-restore`; a rule set the tool rejects is INVALID_ARGUMENT with the
/// tool's error output.
pub async fn set(ipv6: bool, data: &[u8]) -> Result<Vec<u8>> {
    let tool = tool_name(ipv6, "restore");
    let (code, stdout, stderr) = run(&tool, &["--wait", "5"], Some(data.to_vec())).await?;
    if code != 0 {
        return Err(AgentError::invalid_argument(format!(
            "{tool} failed (exit status {code}): {}",
            String::from_utf8_lossy(&stderr).trim()
        )));
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_lookup() {
        assert_eq!(tool_name(false, "save"), "iptables-save");
        assert_eq!(tool_name(true, "restore"), "ip6tables-restore");
        assert!(find_tool("sh").is_some());
        assert!(find_tool("no-such-tool-for-kata").is_none());
    }
}
