//! OCI hooks: the state JSON they get on stdin and the two ways to run them
//! (through the reaper in the engine, directly in the single-threaded setup
//! process).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use oci_spec::runtime::{Hook, Spec};

/// Default hook timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The OCI state document passed to hooks.
pub fn state_json(spec: &Spec, id: &str, status: &str, pid: i32, bundle: &Path) -> Vec<u8> {
    let annotations = spec.annotations().clone().unwrap_or_default();
    serde_json::to_vec(&serde_json::json!({
        "ociVersion": spec.version(),
        "id": id,
        "status": status,
        "pid": pid,
        "bundle": bundle,
        "annotations": annotations,
    }))
    .unwrap_or_default()
}

fn command(hook: &Hook) -> Command {
    let mut cmd = Command::new(hook.path());
    if let Some(args) = hook.args().as_deref().filter(|a| !a.is_empty()) {
        cmd.arg0(&args[0]).args(&args[1..]);
    }
    cmd.env_clear();
    for kv in hook.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            if !k.is_empty() {
                cmd.env(k, v);
            }
        }
    }
    cmd
}

fn timeout(hook: &Hook) -> Duration {
    match hook.timeout() {
        Some(t) if t > 0 => Duration::from_secs(t as u64),
        _ => DEFAULT_TIMEOUT,
    }
}

fn describe(hook: &Hook, code: i32, timed_out: bool, stderr: &[u8]) -> anyhow::Error {
    let err = String::from_utf8_lossy(stderr);
    let err = err.trim();
    if timed_out {
        anyhow!(
            "the hook {} did not finish within {} seconds and was killed",
            hook.path().display(),
            timeout(hook).as_secs()
        )
    } else if err.is_empty() {
        anyhow!("the hook {} exited with code {code}", hook.path().display())
    } else {
        anyhow!(
            "the hook {} exited with code {code}: {err}",
            hook.path().display()
        )
    }
}

/// Runs hooks in the engine's namespaces (through the reaper), in order,
/// stopping at the first failure.
pub fn run_in_engine(hooks: &[Hook], state: &[u8]) -> anyhow::Result<()> {
    run_in_engine_cancellable(hooks, state, None)
}

/// [`run_in_engine`] that `cancel` cuts short: the running hook is killed and no further hook
/// starts.
pub fn run_in_engine_cancellable(
    hooks: &[Hook],
    state: &[u8],
    cancel: Option<&crate::Cancel>,
) -> anyhow::Result<()> {
    for hook in hooks {
        tracing::debug!(subsystem = "hooks", path = %hook.path().display(), args = ?hook.args(), timeout = ?timeout(hook), "running hook");
        if cancel.is_some_and(|c| c.is_cancelled()) {
            return Err(anyhow!(
                "cancelled before the hook {}",
                hook.path().display()
            ));
        }
        let out = crate::reaper::run_command_cancellable(
            &mut command(hook),
            Some(state),
            Some(timeout(hook)),
            cancel,
        )
        .with_context(|| format!("cannot run the hook {}", hook.path().display()))?;
        tracing::debug!(subsystem = "hooks", path = %hook.path().display(), exit_code = out.code, timed_out = out.timed_out, "hook finished");
        if out.code != 0 || out.timed_out {
            return Err(describe(hook, out.code, out.timed_out, &out.stderr));
        }
    }
    Ok(())
}

/// Runs hooks from the setup process (no reaper there: it waits for its own
/// children), in order, stopping at the first failure.
pub fn run_in_child(hooks: &[Hook], state: &[u8]) -> anyhow::Result<()> {
    for hook in hooks {
        let mut cmd = command(hook);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            // Not captured: a daemon started by the hook could keep a pipe open forever.
            .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run the hook {}", hook.path().display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A hook that does not read its stdin must not block us: the state
            // is small enough for the pipe buffer, and errors are irrelevant.
            let _ = stdin.write_all(state);
        }
        let deadline = Instant::now() + timeout(hook);
        let (code, timed_out) = loop {
            match child.try_wait()? {
                Some(st) => break (exit_code(st), false),
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let st = child.wait()?;
                    break (exit_code(st), true);
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        if code != 0 || timed_out {
            return Err(describe(hook, code, timed_out, &[]));
        }
    }
    Ok(())
}

fn exit_code(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code()
        .or_else(|| st.signal().map(|s| 128 + s))
        .unwrap_or(1)
}
