//! Agent configuration: kernel command line, TOML file and environment.
//!
//! Sources, in the order upstream uses them (see `docs/configuration.md`):
//!
//! 1. `--config FILE` / `-c FILE` on the agent's own command line: defaults, then the TOML file,
//!    then environment overrides. The kernel command line is not read.
//! 2. Otherwise the kernel command line (`/proc/cmdline`, or the file named by
//!    `KATA_AGENT_CMDLINE`), tokens left to right, later ones winning; then environment overrides.
//! 3. A token `agent.config_file=FILE` stops the scan: the configuration is the defaults plus that
//!    file only — earlier tokens and the environment are ignored (upstream behaviour).
//!
//! Parsing is pure ([`AgentConfig::from_sources`]) so that every rule is unit-tested; only
//! [`AgentConfig::load`] touches the real environment and files.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::logging::LogLevel;

/// Default ttRPC address: any CID, port 1024.
pub const DEFAULT_SERVER_ADDR: &str = "vsock://-1:1024";
/// Default time to wait for a hot-plugged device.
pub const DEFAULT_HOTPLUG_TIMEOUT: Duration = Duration::from_secs(3);
/// Default CDI injection retry budget.
pub const DEFAULT_CDI_TIMEOUT: Duration = Duration::from_secs(100);
/// Default wait for guest-component sockets.
pub const DEFAULT_LAUNCH_PROCESS_TIMEOUT: Duration = Duration::from_secs(6);
/// Default directory for container bundles and sandbox state.
pub const DEFAULT_RUN_DIR: &str = "/run/kata-containers";
/// Default directory of the persistent sandbox IPC/UTS namespace files.
pub const DEFAULT_SANDBOX_NS_DIR: &str = "/var/run/sandbox-ns";
/// Default resolv.conf written by CreateSandbox.
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";
/// Default sysfs mount point.
pub const DEFAULT_SYSFS_ROOT: &str = "/sys";
/// Default cgroup mount point.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Default console device (debug console on the serial line).
pub const DEFAULT_CONSOLE_PATH: &str = "/dev/console";
/// Default root of device nodes.
pub const DEFAULT_DEV_ROOT: &str = "/dev";
/// Where the kernel command line is read from.
pub const CMDLINE_PATH: &str = "/proc/cmdline";
/// Environment variable that replaces [`CMDLINE_PATH`] (tests and development).
pub const CMDLINE_PATH_ENV: &str = "KATA_AGENT_CMDLINE";

/// The agent's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// `agent.debug_console`: start a debug shell.
    pub debug_console: bool,
    /// `agent.devmode`: development mode (core dumps enabled, log level at least debug).
    pub dev_mode: bool,
    /// `agent.log`: log level.
    pub log_level: LogLevel,
    /// `agent.log_vport`: vsock port for the log stream; 0 = stderr.
    pub log_vport: u32,
    /// `agent.debug_console_vport`: vsock port of the debug console; 0 = serial console.
    pub debug_console_vport: u32,
    /// `agent.server_addr`: ttRPC listen address.
    pub server_addr: String,
    /// `agent.passfd_listener_port`: vsock port of the pass-fd stdio listener; 0 = disabled.
    pub passfd_listener_port: u32,
    /// `agent.hotplug_timeout`: how long to wait for a hot-plugged device.
    pub hotplug_timeout: Duration,
    /// `agent.cdi_timeout`: CDI injection retry budget.
    pub cdi_timeout: Duration,
    /// `agent.launch_process_timeout`: guest-component socket wait (CoCo; kept for completeness).
    pub launch_process_timeout: Duration,
    /// `agent.container_pipe_size`: size of container stdio pipes; 0 = kernel default.
    pub container_pipe_size: i32,
    /// cgroup v2 selected (`agent.`/`systemd.unified_cgroup_hierarchy`, or `cgroup_no_v1=all`).
    pub unified_cgroup_hierarchy: bool,
    /// `cgroup_no_v1`: only the value `all` is kept.
    pub cgroup_no_v1: String,
    /// `agent.trace`: export trace spans.
    pub tracing: bool,
    /// `agent.visible_cdi_devices`: make CDI devices visible to containers.
    pub visible_cdi_devices: bool,
    /// `agent.https_proxy`: validated, unused by the agent itself.
    pub https_proxy: String,
    /// `agent.no_proxy`: unused by the agent itself.
    pub no_proxy: String,
    /// Container bundles and sandbox state (`KATA_AGENT_RUN_DIR`).
    pub run_dir: PathBuf,
    /// Persistent sandbox namespace files (`KATA_AGENT_SANDBOX_NS_DIR`).
    pub sandbox_ns_dir: PathBuf,
    /// resolv.conf written by CreateSandbox (`KATA_AGENT_RESOLV_CONF`).
    pub resolv_conf: PathBuf,
    /// sysfs mount point (`KATA_AGENT_SYSFS`).
    pub sysfs_root: PathBuf,
    /// cgroup mount point (`KATA_AGENT_CGROUP_ROOT`).
    pub cgroup_root: PathBuf,
    /// Console device for the serial debug console (`KATA_AGENT_CONSOLE`).
    pub console_path: PathBuf,
    /// Where device nodes live (`KATA_AGENT_DEV_ROOT`): host `/dev/...` paths are looked up here.
    pub dev_root: PathBuf,
    /// Log stream address (`KATA_AGENT_LOG_ADDR`, `unix:///path` or `vsock://cid:port`); replaces
    /// `vsock://-1:<log_vport>`.
    pub log_addr: Option<String>,
    /// Debug console listen address (`KATA_AGENT_DEBUG_CONSOLE_ADDR`); replaces
    /// `vsock://-1:<debug_console_vport>`.
    pub debug_console_addr: Option<String>,
    /// Trace export address (`KATA_AGENT_TRACE_ADDR`); replaces `vsock://2:10240`.
    pub trace_addr: Option<String>,
    /// Rego policy file loaded at start-up (`policy_file`, `KATA_AGENT_POLICY_FILE`).
    pub policy_file: Option<PathBuf>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            debug_console: false,
            dev_mode: false,
            log_level: LogLevel::Info,
            log_vport: 0,
            debug_console_vport: 0,
            server_addr: DEFAULT_SERVER_ADDR.to_string(),
            passfd_listener_port: 0,
            hotplug_timeout: DEFAULT_HOTPLUG_TIMEOUT,
            cdi_timeout: DEFAULT_CDI_TIMEOUT,
            launch_process_timeout: DEFAULT_LAUNCH_PROCESS_TIMEOUT,
            container_pipe_size: 0,
            unified_cgroup_hierarchy: false,
            cgroup_no_v1: String::new(),
            tracing: false,
            visible_cdi_devices: false,
            https_proxy: String::new(),
            no_proxy: String::new(),
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
            sandbox_ns_dir: PathBuf::from(DEFAULT_SANDBOX_NS_DIR),
            resolv_conf: PathBuf::from(DEFAULT_RESOLV_CONF),
            sysfs_root: PathBuf::from(DEFAULT_SYSFS_ROOT),
            cgroup_root: PathBuf::from(DEFAULT_CGROUP_ROOT),
            console_path: PathBuf::from(DEFAULT_CONSOLE_PATH),
            dev_root: PathBuf::from(DEFAULT_DEV_ROOT),
            log_addr: None,
            debug_console_addr: None,
            trace_addr: None,
            policy_file: None,
        }
    }
}

/// Reads a whole file (the TOML configuration file).
pub type FileReader<'a> = &'a dyn Fn(&Path) -> io::Result<String>;
/// Looks an environment variable up.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl AgentConfig {
    /// Builds the configuration from `args` (the agent's argv, program name first), the real
    /// environment and the kernel command line. Returns the warnings to log once logging is up.
    pub fn load(args: &[String]) -> Result<(AgentConfig, Vec<String>)> {
        let cmdline = if config_file_arg(args)?.is_some() {
            None
        } else {
            let path = std::env::var_os(CMDLINE_PATH_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(CMDLINE_PATH));
            Some(std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "cannot read the kernel command line from {}",
                    path.display()
                )
            })?)
        };
        Self::from_sources(
            args,
            cmdline.as_deref(),
            &|p| std::fs::read_to_string(p),
            &|k| std::env::var(k).ok(),
        )
    }

    /// Builds the configuration from explicit sources: `args` (argv, program name first),
    /// the kernel command line (`None` is only valid with `--config`), a file reader for the
    /// TOML file and an environment lookup. Returns the configuration and the warnings to log.
    pub fn from_sources(
        args: &[String],
        cmdline: Option<&str>,
        read_file: FileReader<'_>,
        env: EnvLookup<'_>,
    ) -> Result<(AgentConfig, Vec<String>)> {
        let mut b = Builder::default();
        if let Some(path) = config_file_arg(args)? {
            b.apply_file(Path::new(path), read_file)?;
        } else {
            let cmdline = cmdline.ok_or_else(|| {
                anyhow!("no kernel command line was given to read the configuration from")
            })?;
            if let Some(path) = b.apply_cmdline(cmdline)? {
                // agent.config_file=: the file alone, without earlier tokens nor environment.
                let mut fb = Builder::default();
                fb.apply_file(Path::new(path), read_file)?;
                return fb.finish();
            }
        }
        b.imply_devmode();
        b.apply_env(env)?;
        b.finish()
    }
}

/// The file given with `--config FILE` or `-c FILE` (exact tokens, program name skipped).
fn config_file_arg(args: &[String]) -> Result<Option<&str>> {
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        if arg == "--config" || arg == "-c" {
            return match it.next() {
                Some(path) => Ok(Some(path.as_str())),
                None => bail!("option {arg} needs a configuration file argument"),
            };
        }
    }
    Ok(None)
}

#[derive(Default)]
struct Builder {
    cfg: AgentConfig,
    run_dir_set: bool,
    sandbox_ns_dir_set: bool,
    warnings: Vec<String>,
}

impl Builder {
    /// Applies every token; returns the file of an `agent.config_file=` token, which ends the scan.
    fn apply_cmdline<'a>(&mut self, cmdline: &'a str) -> Result<Option<&'a str>> {
        for token in cmdline.split_ascii_whitespace() {
            if let Some(path) = token.strip_prefix("agent.config_file=") {
                if path.is_empty() {
                    bail!("kernel command line option {token:?} has an empty value");
                }
                return Ok(Some(path));
            }
            self.apply_token(token)
                .with_context(|| format!("invalid kernel command line option {token:?}"))?;
        }
        Ok(None)
    }

    fn apply_token(&mut self, token: &str) -> Result<()> {
        // Flags match the bare token only (`agent.debug_console=1` is not the flag).
        match token {
            "agent.debug_console" => self.cfg.debug_console = true,
            "agent.devmode" => self.cfg.dev_mode = true,
            "agent.trace" => self.cfg.tracing = true,
            _ => {}
        }
        let Some((key, value)) = token.split_once('=') else {
            return Ok(());
        };
        // Numeric, level and boolean parsers want exactly one '='; strings take everything.
        let single = (!value.contains('=')).then_some(value);
        let cfg = &mut self.cfg;
        match key {
            "agent.log" => cfg.log_level = parse_level(single)?,
            "agent.log_vport" => set_port(&mut cfg.log_vport, single, token, &mut self.warnings)?,
            "agent.debug_console_vport" => set_port(
                &mut cfg.debug_console_vport,
                single,
                token,
                &mut self.warnings,
            )?,
            "agent.passfd_listener_port" => set_port(
                &mut cfg.passfd_listener_port,
                single,
                token,
                &mut self.warnings,
            )?,
            "agent.server_addr" => cfg.server_addr = non_empty(value)?.to_string(),
            "agent.hotplug_timeout" => {
                set_timeout(&mut cfg.hotplug_timeout, single, token, &mut self.warnings)
            }
            "agent.cdi_timeout" => {
                set_timeout(&mut cfg.cdi_timeout, single, token, &mut self.warnings)
            }
            "agent.launch_process_timeout" => set_timeout(
                &mut cfg.launch_process_timeout,
                single,
                token,
                &mut self.warnings,
            ),
            "agent.container_pipe_size" => cfg.container_pipe_size = parse_pipe_size(single)?,
            "agent.trace" => cfg.tracing = cmdline_bool(single, token, &mut self.warnings),
            "agent.visible_cdi_devices" => {
                cfg.visible_cdi_devices = cmdline_bool(single, token, &mut self.warnings)
            }
            "agent.unified_cgroup_hierarchy" | "systemd.unified_cgroup_hierarchy" => {
                cfg.unified_cgroup_hierarchy = cmdline_bool(single, token, &mut self.warnings)
            }
            "agent.https_proxy" => {
                cfg.https_proxy = normalize_url(non_empty(value)?).map_err(|e| anyhow!(e))?
            }
            "agent.no_proxy" => cfg.no_proxy = non_empty(value)?.to_string(),
            "cgroup_no_v1" => {
                // Only `all` matters (it selects cgroup v2); other controller lists are ignored.
                let controllers = non_empty(value)?;
                if controllers == "all" {
                    cfg.cgroup_no_v1 = controllers.to_string();
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn apply_file(&mut self, path: &Path, read_file: FileReader<'_>) -> Result<()> {
        let text = read_file(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        self.apply_toml(&text)
            .with_context(|| format!("invalid configuration file {}", path.display()))
    }

    fn apply_toml(&mut self, text: &str) -> Result<()> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map_or(1, |span| {
                text[..span.start.min(text.len())].matches('\n').count() + 1
            });
            anyhow!("not valid TOML (line {line}): {}", e.message())
        })?;
        let w = &mut self.warnings;
        let cfg = &mut self.cfg;
        for (key, value) in &table {
            let k = key.as_str();
            match k {
                "debug_console" => cfg.debug_console = toml_bool(k, value)?,
                "dev_mode" => cfg.dev_mode = toml_bool(k, value)?,
                "visible_cdi_devices" => cfg.visible_cdi_devices = toml_bool(k, value)?,
                "unified_cgroup_hierarchy" => cfg.unified_cgroup_hierarchy = toml_bool(k, value)?,
                "tracing" => cfg.tracing = toml_bool(k, value)?,
                "log_level" => {
                    cfg.log_level = toml_str(k, value)?
                        .parse()
                        .with_context(|| format!("invalid value for key {k}"))?
                }
                "hotplug_timeout" => toml_timeout(&mut cfg.hotplug_timeout, k, value, w),
                "cdi_timeout" => toml_timeout(&mut cfg.cdi_timeout, k, value, w),
                "launch_process_timeout" => {
                    toml_timeout(&mut cfg.launch_process_timeout, k, value, w)
                }
                "debug_console_vport" => toml_port(&mut cfg.debug_console_vport, k, value, w)?,
                "log_vport" => toml_port(&mut cfg.log_vport, k, value, w)?,
                "passfd_listener_port" => toml_port(&mut cfg.passfd_listener_port, k, value, w)?,
                "container_pipe_size" => {
                    let n = toml_int(k, value)?;
                    cfg.container_pipe_size =
                        i32::try_from(n).ok().filter(|n| *n >= 0).ok_or_else(|| {
                            anyhow!("key {k}: {n} is not a size between 0 and {}", i32::MAX)
                        })?;
                }
                "server_addr" => cfg.server_addr = toml_str(k, value)?.to_string(),
                "https_proxy" => {
                    let s = toml_str(k, value)?;
                    cfg.https_proxy = if s.is_empty() {
                        String::new()
                    } else {
                        normalize_url(s).map_err(|e| anyhow!("key {k}: {e}"))?
                    };
                }
                "no_proxy" => cfg.no_proxy = toml_str(k, value)?.to_string(),
                "run_dir" => {
                    cfg.run_dir = toml_path(k, value)?;
                    self.run_dir_set = true;
                }
                "sandbox_ns_dir" => {
                    cfg.sandbox_ns_dir = toml_path(k, value)?;
                    self.sandbox_ns_dir_set = true;
                }
                "resolv_conf" => cfg.resolv_conf = toml_path(k, value)?,
                "sysfs_root" => cfg.sysfs_root = toml_path(k, value)?,
                "cgroup_root" => cfg.cgroup_root = toml_path(k, value)?,
                "console_path" => cfg.console_path = toml_path(k, value)?,
                "dev_root" => cfg.dev_root = toml_path(k, value)?,
                "policy_file" => cfg.policy_file = Some(toml_path(k, value)?),
                _ => {}
            }
        }
        Ok(())
    }

    /// Development mode implies at least the debug level (an environment override still wins).
    fn imply_devmode(&mut self) {
        if self.cfg.dev_mode && self.cfg.log_level < LogLevel::Debug {
            self.cfg.log_level = LogLevel::Debug;
        }
    }

    fn apply_env(&mut self, env: EnvLookup<'_>) -> Result<()> {
        if let Some(addr) = env("KATA_AGENT_SERVER_ADDR") {
            self.cfg.server_addr = addr;
        }
        if let Some(level) = env("KATA_AGENT_LOG_LEVEL") {
            match level.parse() {
                Ok(level) => self.cfg.log_level = level,
                Err(e) => self
                    .warnings
                    .push(format!("KATA_AGENT_LOG_LEVEL ignored: {e}")),
            }
        }
        if let Some(tracing) = env("KATA_AGENT_TRACING") {
            self.cfg.tracing = parse_bool(&tracing).unwrap_or_else(|| {
                self.warnings.push(format!(
                    "KATA_AGENT_TRACING={tracing:?} is not a boolean, tracing disabled"
                ));
                false
            });
        }
        if let Some(file) = env("KATA_AGENT_POLICY_FILE").filter(|v| !v.is_empty()) {
            if !file.starts_with('/') {
                bail!("environment variable KATA_AGENT_POLICY_FILE must be an absolute path, got {file:?}");
            }
            self.cfg.policy_file = Some(PathBuf::from(file));
        }
        let cfg = &mut self.cfg;
        let overrides: [(&str, &mut PathBuf, Option<&mut bool>); 7] = [
            (
                "KATA_AGENT_RUN_DIR",
                &mut cfg.run_dir,
                Some(&mut self.run_dir_set),
            ),
            (
                "KATA_AGENT_SANDBOX_NS_DIR",
                &mut cfg.sandbox_ns_dir,
                Some(&mut self.sandbox_ns_dir_set),
            ),
            ("KATA_AGENT_RESOLV_CONF", &mut cfg.resolv_conf, None),
            ("KATA_AGENT_SYSFS", &mut cfg.sysfs_root, None),
            ("KATA_AGENT_CGROUP_ROOT", &mut cfg.cgroup_root, None),
            ("KATA_AGENT_CONSOLE", &mut cfg.console_path, None),
            ("KATA_AGENT_DEV_ROOT", &mut cfg.dev_root, None),
        ];
        let addresses: [(&str, &mut Option<String>); 3] = [
            ("KATA_AGENT_LOG_ADDR", &mut cfg.log_addr),
            ("KATA_AGENT_DEBUG_CONSOLE_ADDR", &mut cfg.debug_console_addr),
            ("KATA_AGENT_TRACE_ADDR", &mut cfg.trace_addr),
        ];
        for (var, field) in addresses {
            if let Some(value) = env(var).filter(|v| !v.is_empty()) {
                // The trace address may also be an OTLP/HTTP collector URL (see telemetry).
                let otlp = var == "KATA_AGENT_TRACE_ADDR"
                    && (value.starts_with("http://") || value.starts_with("https://"));
                if !otlp {
                    crate::endpoint::Endpoint::parse(&value)
                        .map_err(|e| anyhow!("environment variable {var}: {e}"))?;
                }
                *field = Some(value);
            }
        }
        for (var, field, set) in overrides {
            // An empty value counts as unset.
            let Some(value) = env(var).filter(|v| !v.is_empty()) else {
                continue;
            };
            if !value.starts_with('/') {
                bail!("environment variable {var} must be an absolute path, got {value:?}");
            }
            *field = PathBuf::from(value);
            if let Some(set) = set {
                *set = true;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(AgentConfig, Vec<String>)> {
        if self.run_dir_set && !self.sandbox_ns_dir_set {
            self.cfg.sandbox_ns_dir = self.cfg.run_dir.join("sandbox-ns");
        }
        if self.cfg.cgroup_no_v1 == "all" {
            self.cfg.unified_cgroup_hierarchy = true;
        }
        validate_server_addr(&self.cfg.server_addr)?;
        Ok((self.cfg, self.warnings))
    }
}

fn non_empty(value: &str) -> Result<&str> {
    if value.is_empty() {
        bail!("the value is empty");
    }
    Ok(value)
}

fn parse_level(value: Option<&str>) -> Result<LogLevel> {
    let value = value.ok_or_else(|| anyhow!("expected exactly one '='"))?;
    Ok(value.parse()?)
}

fn parse_pipe_size(value: Option<&str>) -> Result<i32> {
    let value = value.ok_or_else(|| anyhow!("expected exactly one '='"))?;
    match value.parse::<i32>() {
        Ok(n) if n >= 0 => Ok(n),
        _ => bail!("{value:?} is not a pipe size between 0 and {}", i32::MAX),
    }
}

/// Ports are parsed as `i32` like upstream; values ≤ 0 are accepted and ignored.
fn set_port(
    port: &mut u32,
    value: Option<&str>,
    token: &str,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let value = value.ok_or_else(|| anyhow!("expected exactly one '='"))?;
    let n: i32 = value
        .parse()
        .map_err(|_| anyhow!("{value:?} is not a port number"))?;
    keep_positive_port(port, i64::from(n), token, warnings);
    Ok(())
}

fn keep_positive_port(port: &mut u32, n: i64, what: &str, warnings: &mut Vec<String>) {
    if n > 0 {
        *port = n as u32;
    } else if n < 0 {
        warnings.push(format!("{what}: negative port ignored"));
    }
}

/// Timeouts never fail startup: a bad value is ignored with a warning, 0 is ignored silently.
fn set_timeout(
    timeout: &mut Duration,
    value: Option<&str>,
    token: &str,
    warnings: &mut Vec<String>,
) {
    match value
        .ok_or_else(|| "expected exactly one '='".to_string())
        .and_then(parse_duration)
    {
        Ok(d) if d.is_zero() => {}
        Ok(d) => *timeout = d,
        Err(e) => warnings.push(format!("{token}: {e}; keeping {timeout:?}")),
    }
}

/// Upstream's lenient boolean: `true`/`false` or an unsigned integer (non-zero = true).
pub fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "true" => Some(true),
        "false" => Some(false),
        v => v.parse::<u64>().ok().map(|n| n != 0),
    }
}

/// A boolean option: anything unrecognised is false (upstream), with a warning (ours).
fn cmdline_bool(value: Option<&str>, token: &str, warnings: &mut Vec<String>) -> bool {
    match value.and_then(parse_bool) {
        Some(b) => b,
        None => {
            warnings.push(format!("{token}: not a boolean, taken as false"));
            false
        }
    }
}

/// Parses a Go-style duration (`300ms`, `1h2m3.5s`, units ns/us/µs/ms/s/m/h) or a bare number
/// of seconds (`10`). Negative durations are rejected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err("empty duration".to_string());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("duration {text:?} is too large"));
    }
    let invalid =
        || format!("invalid duration {text:?} (expected e.g. 10s, 1m30s, 500ms or seconds)");
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.starts_with('-') {
        return Err(format!("negative duration {text:?}"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    let digits_end = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let end = digits_end(rest);
        let (int_part, after) = rest.split_at(end);
        rest = after;
        let mut frac_part = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let end = digits_end(after_dot);
            frac_part = &after_dot[..end];
            rest = &after_dot[end..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_end = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (unit, after) = rest.split_at(unit_end);
        rest = after;
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("missing unit in duration {text:?}")),
            _ => return Err(format!("unknown unit {unit:?} in duration {text:?}")),
        };
        let too_large = || format!("duration {text:?} is too large");
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| too_large())?
        };
        let mut part = int.checked_mul(scale).ok_or_else(too_large)?;
        // Fractions beyond nanosecond precision do not matter; 18 digits cannot overflow.
        let frac = &frac_part[..frac_part.len().min(18)];
        if !frac.is_empty() {
            let numerator: u128 = frac.parse().map_err(|_| invalid())?;
            part += numerator * scale / 10u128.pow(frac.len() as u32);
        }
        total = total.checked_add(part).ok_or_else(too_large)?;
    }
    let secs = u64::try_from(total / 1_000_000_000)
        .map_err(|_| format!("duration {text:?} is too large"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Light absolute-URL check for `https_proxy`: `scheme://authority[/...]`, port numeric if
/// present. Returns the URL with a lower-case scheme and a `/` path when it had none.
pub fn normalize_url(url: &str) -> Result<String, String> {
    let bad = |why: &str| format!("{url:?} is not an absolute URL: {why}");
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected scheme://host"))?;
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return Err(bad("invalid scheme"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("contains white space"));
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.is_empty() {
        return Err(bad("no host"));
    }
    if let Some((host, port)) = host_port.rsplit_once(':') {
        // `[::1]` alone has colons but no port.
        if !port.contains(']') {
            if host.is_empty() {
                return Err(bad("no host"));
            }
            if !port.is_empty() && port.parse::<u16>().is_err() {
                return Err(bad("invalid port"));
            }
        }
    }
    let mut normalized = format!("{}://{}", scheme.to_ascii_lowercase(), rest);
    if authority_end == rest.len() {
        normalized.push('/');
    }
    Ok(normalized)
}

/// Checks a ttRPC listen address: `vsock://CID:PORT` (CID `-1` = any), `unix:///abs/path`,
/// `unix://@abstract` or `tcp://host:port`.
pub fn validate_server_addr(addr: &str) -> Result<()> {
    const FORMS: &str = "vsock://CID:PORT, unix:///absolute/path, unix://@name or tcp://host:port";
    let invalid =
        |why: String| anyhow!("invalid server address {addr:?}: {why} (expected {FORMS})");
    let Some((scheme, rest)) = addr.split_once("://") else {
        return Err(invalid("no scheme".to_string()));
    };
    match scheme {
        "vsock" => {
            let (cid, port) = rest
                .split_once(':')
                .filter(|(_, port)| !port.contains(':'))
                .ok_or_else(|| invalid("expected CID:PORT".to_string()))?;
            if cid != "-1" && cid.parse::<u32>().is_err() {
                return Err(invalid(format!("{cid:?} is not a vsock CID")));
            }
            if port.parse::<u32>().is_err() {
                return Err(invalid(format!("{port:?} is not a vsock port")));
            }
        }
        "unix" => {
            if let Some(name) = rest.strip_prefix('@') {
                if name.is_empty() {
                    return Err(invalid("empty abstract socket name".to_string()));
                }
            } else if !rest.starts_with('/') || rest.len() < 2 {
                return Err(invalid("the socket path must be absolute".to_string()));
            }
        }
        "tcp" => {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| invalid("expected host:port".to_string()))?;
            if host.is_empty() {
                return Err(invalid("empty host".to_string()));
            }
            if port.parse::<u16>().is_err() {
                return Err(invalid(format!("{port:?} is not a TCP port")));
            }
        }
        other => return Err(invalid(format!("unsupported scheme {other:?}"))),
    }
    Ok(())
}

fn toml_bool(key: &str, value: &toml::Value) -> Result<bool> {
    value
        .as_bool()
        .ok_or_else(|| anyhow!("key {key} must be a boolean"))
}

fn toml_str<'a>(key: &str, value: &'a toml::Value) -> Result<&'a str> {
    value
        .as_str()
        .ok_or_else(|| anyhow!("key {key} must be a string"))
}

fn toml_int(key: &str, value: &toml::Value) -> Result<i64> {
    value
        .as_integer()
        .ok_or_else(|| anyhow!("key {key} must be an integer"))
}

fn toml_path(key: &str, value: &toml::Value) -> Result<PathBuf> {
    let s = toml_str(key, value)?;
    if !s.starts_with('/') {
        bail!("key {key} must be an absolute path, got {s:?}");
    }
    Ok(PathBuf::from(s))
}

fn toml_port(
    port: &mut u32,
    key: &str,
    value: &toml::Value,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let n = toml_int(key, value)?;
    if n > i64::from(i32::MAX) {
        bail!("key {key}: {n} is not a port number");
    }
    keep_positive_port(port, n, key, warnings);
    Ok(())
}

/// A timeout in the file: a duration string, an integer of seconds, or `{ secs, nanos }` /
/// `[secs, nanos]` (serde's `Duration` forms). Bad values are ignored with a warning.
fn toml_timeout(
    timeout: &mut Duration,
    key: &str,
    value: &toml::Value,
    warnings: &mut Vec<String>,
) {
    fn from_parts(
        secs: Option<&toml::Value>,
        nanos: Option<&toml::Value>,
    ) -> Result<Duration, String> {
        let secs = secs
            .and_then(toml::Value::as_integer)
            .and_then(|s| u64::try_from(s).ok())
            .ok_or("secs must be a non-negative integer")?;
        let nanos = match nanos {
            None => 0,
            Some(n) => n
                .as_integer()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n < 1_000_000_000)
                .ok_or("nanos must be an integer below 1000000000")?,
        };
        Ok(Duration::new(secs, nanos))
    }
    let parsed = match value {
        toml::Value::String(s) => parse_duration(s),
        toml::Value::Integer(n) => u64::try_from(*n)
            .map(Duration::from_secs)
            .map_err(|_| format!("negative duration {n}")),
        toml::Value::Table(t) => from_parts(t.get("secs"), t.get("nanos")),
        toml::Value::Array(a) if a.len() == 2 => from_parts(a.first(), a.get(1)),
        _ => Err(
            "expected a duration string such as \"10s\", seconds, or { secs, nanos }".to_string(),
        ),
    };
    match parsed {
        Ok(d) if d.is_zero() => {}
        Ok(d) => *timeout = d,
        Err(e) => warnings.push(format!("configuration key {key}: {e}; keeping {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    type Loaded = Result<(AgentConfig, Vec<String>)>;

    fn args(extra: &[&str]) -> Vec<String> {
        std::iter::once("kata-agent")
            .chain(extra.iter().copied())
            .map(String::from)
            .collect()
    }

    /// Runs `from_sources` with in-memory files and environment.
    fn load_with(
        argv: &[&str],
        cmdline: Option<&str>,
        env: &[(&str, &str)],
        files: &[(&str, &str)],
    ) -> Loaded {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let files: HashMap<PathBuf, String> = files
            .iter()
            .map(|(k, v)| (PathBuf::from(k), v.to_string()))
            .collect();
        let read = |p: &Path| {
            files
                .get(p)
                .cloned()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "No such file or directory"))
        };
        AgentConfig::from_sources(&args(argv), cmdline, &read, &|k| env.get(k).cloned())
    }

    fn cmd(line: &str) -> AgentConfig {
        load_with(&[], Some(line), &[], &[]).unwrap().0
    }

    fn cmd_warn(line: &str) -> (AgentConfig, Vec<String>) {
        load_with(&[], Some(line), &[], &[]).unwrap()
    }

    fn cmd_err(line: &str) -> String {
        format!("{:#}", load_with(&[], Some(line), &[], &[]).unwrap_err())
    }

    fn file(text: &str) -> Loaded {
        load_with(
            &["--config", "/etc/agent.toml"],
            None,
            &[],
            &[("/etc/agent.toml", text)],
        )
    }

    fn file_err(text: &str) -> String {
        format!("{:#}", file(text).unwrap_err())
    }

    #[test]
    fn defaults() {
        let (c, w) = cmd_warn("");
        assert!(w.is_empty());
        assert_eq!(c, AgentConfig::default());
        assert!(!c.debug_console && !c.dev_mode && !c.tracing && !c.visible_cdi_devices);
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.server_addr, "vsock://-1:1024");
        assert_eq!(
            (c.log_vport, c.debug_console_vport, c.passfd_listener_port),
            (0, 0, 0)
        );
        assert_eq!(c.hotplug_timeout, Duration::from_secs(3));
        assert_eq!(c.cdi_timeout, Duration::from_secs(100));
        assert_eq!(c.launch_process_timeout, Duration::from_secs(6));
        assert_eq!(c.container_pipe_size, 0);
        assert!(!c.unified_cgroup_hierarchy);
        assert_eq!(c.run_dir, Path::new("/run/kata-containers"));
        assert_eq!(c.sandbox_ns_dir, Path::new("/var/run/sandbox-ns"));
        assert_eq!(c.resolv_conf, Path::new("/etc/resolv.conf"));
        assert_eq!(c.sysfs_root, Path::new("/sys"));
        assert_eq!(c.cgroup_root, Path::new("/sys/fs/cgroup"));
        assert_eq!(c.console_path, Path::new("/dev/console"));
    }

    #[test]
    fn flags_match_only_bare_tokens() {
        let c = cmd("quiet agent.debug_console agent.devmode console=ttyS0");
        assert!(c.debug_console && c.dev_mode);
        let c = cmd("agent.debug_console=1 agent.devmode=true agent.debug_consolex");
        assert!(!c.debug_console && !c.dev_mode);
    }

    #[test]
    fn devmode_implies_debug_level() {
        assert_eq!(cmd("agent.devmode").log_level, LogLevel::Debug);
        assert_eq!(
            cmd("agent.log=warn agent.devmode").log_level,
            LogLevel::Debug
        );
        assert_eq!(
            cmd("agent.devmode agent.log=trace").log_level,
            LogLevel::Trace
        );
        let env_wins = load_with(
            &[],
            Some("agent.devmode"),
            &[("KATA_AGENT_LOG_LEVEL", "info")],
            &[],
        );
        assert_eq!(env_wins.unwrap().0.log_level, LogLevel::Info);
        assert_eq!(
            file("dev_mode = true").unwrap().0.log_level,
            LogLevel::Debug
        );
    }

    #[test]
    fn log_level_option() {
        assert_eq!(cmd("agent.log=debug").log_level, LogLevel::Debug);
        assert_eq!(cmd("agent.log=warning").log_level, LogLevel::Warn);
        assert_eq!(cmd("agent.log=critical").log_level, LogLevel::Error);
        assert_eq!(
            cmd("agent.log=trace agent.log=error").log_level,
            LogLevel::Error,
            "last wins"
        );
        let e = cmd_err("agent.log=verbose");
        assert!(
            e.contains("agent.log=verbose") && e.contains("unknown log level"),
            "{e}"
        );
        assert!(cmd_err("agent.log=").contains("unknown log level"));
        assert!(cmd_err("agent.log=debug=1").contains("exactly one '='"));
    }

    #[test]
    fn ports() {
        let c = cmd(
            "agent.log_vport=1025 agent.debug_console_vport=1026 agent.passfd_listener_port=1027",
        );
        assert_eq!(
            (c.log_vport, c.debug_console_vport, c.passfd_listener_port),
            (1025, 1026, 1027)
        );
        // Zero and negative ports are parsed and ignored.
        let (c, w) =
            cmd_warn("agent.log_vport=1025 agent.log_vport=0 agent.debug_console_vport=-3");
        assert_eq!((c.log_vport, c.debug_console_vport), (1025, 0));
        assert_eq!(w.len(), 1, "{w:?}");
        for bad in [
            "agent.log_vport=abc",
            "agent.debug_console_vport=",
            "agent.passfd_listener_port=99999999999",
            "agent.log_vport=1=2",
        ] {
            let e = cmd_err(bad);
            assert!(e.contains(bad), "{e}");
        }
        assert!(cmd_err("agent.log_vport=1.5").contains("is not a port number"));
    }

    #[test]
    fn server_addr_option() {
        assert_eq!(
            cmd("agent.server_addr=unix:///run/agent.sock").server_addr,
            "unix:///run/agent.sock"
        );
        assert_eq!(
            cmd("agent.server_addr=vsock://3:2000").server_addr,
            "vsock://3:2000"
        );
        assert!(cmd_err("agent.server_addr=").contains("empty"));
        assert!(cmd_err("agent.server_addr=http://x:1").contains("unsupported scheme"));
    }

    #[test]
    fn timeouts_accept_go_durations_and_seconds() {
        let c = cmd(
            "agent.hotplug_timeout=10 agent.cdi_timeout=1m30s agent.launch_process_timeout=500ms",
        );
        assert_eq!(c.hotplug_timeout, Duration::from_secs(10));
        assert_eq!(c.cdi_timeout, Duration::from_secs(90));
        assert_eq!(c.launch_process_timeout, Duration::from_millis(500));
        assert_eq!(
            cmd("agent.hotplug_timeout=2h").hotplug_timeout,
            Duration::from_secs(7200)
        );
    }

    #[test]
    fn timeouts_zero_and_invalid_keep_the_default() {
        let (c, w) = cmd_warn("agent.hotplug_timeout=0 agent.cdi_timeout=0s");
        assert_eq!(c.hotplug_timeout, DEFAULT_HOTPLUG_TIMEOUT);
        assert_eq!(c.cdi_timeout, DEFAULT_CDI_TIMEOUT);
        assert!(w.is_empty());
        for bad in [
            "abc",
            "-3s",
            "10x",
            "1..5s",
            "s",
            "",
            "3s=1",
            "99999999999999999999999h",
        ] {
            let (c, w) = cmd_warn(&format!("agent.hotplug_timeout={bad}"));
            assert_eq!(c.hotplug_timeout, DEFAULT_HOTPLUG_TIMEOUT, "{bad}");
            assert_eq!(w.len(), 1, "{bad}: {w:?}");
            assert!(w[0].starts_with("agent.hotplug_timeout="), "{w:?}");
        }
        // An earlier valid token stays when a later one is bad.
        let (c, _) = cmd_warn("agent.launch_process_timeout=9 agent.launch_process_timeout=bad");
        assert_eq!(c.launch_process_timeout, Duration::from_secs(9));
    }

    #[test]
    fn duration_parser() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("10"), Duration::from_secs(10));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("2h"), Duration::from_secs(7200));
        assert_eq!(ok("1h2m3.5s"), Duration::from_millis(3_723_500));
        assert_eq!(ok("300us"), Duration::from_micros(300));
        assert_eq!(ok("300µs"), Duration::from_micros(300));
        assert_eq!(ok("10ns"), Duration::from_nanos(10));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("+5s"), Duration::from_secs(5));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("1.0000000001s"), Duration::from_secs(1));
        for bad in [
            "",
            "s",
            "-5s",
            "5 s",
            "5sec",
            "1.2.3s",
            "1h-2m",
            ".s",
            "5S",
            "18446744073709551616",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should fail");
        }
        assert!(parse_duration("10y").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn pipe_size() {
        assert_eq!(
            cmd("agent.container_pipe_size=1048576").container_pipe_size,
            1_048_576
        );
        assert_eq!(cmd("agent.container_pipe_size=0").container_pipe_size, 0);
        for bad in ["-1", "abc", "", "2147483648"] {
            let e = cmd_err(&format!("agent.container_pipe_size={bad}"));
            assert!(e.contains("pipe size"), "{e}");
        }
    }

    #[test]
    fn trace_option_forms() {
        assert!(cmd("agent.trace").tracing);
        assert!(cmd("agent.trace=true").tracing);
        assert!(cmd("agent.trace=1").tracing);
        assert!(!cmd("agent.trace agent.trace=false").tracing);
        let (c, w) = cmd_warn("agent.trace=yes");
        assert!(!c.tracing);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn bool_parser() {
        assert_eq!(parse_bool("true"), Some(true));
        assert_eq!(parse_bool("false"), Some(false));
        assert_eq!(parse_bool("1"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("42"), Some(true));
        for bad in ["TRUE", "yes", "", "-1", "on"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
        // With two '=' a boolean is false (upstream).
        assert!(
            !cmd_warn("agent.visible_cdi_devices=true=1")
                .0
                .visible_cdi_devices
        );
    }

    #[test]
    fn visible_cdi_devices_option() {
        assert!(cmd("agent.visible_cdi_devices=true").visible_cdi_devices);
        assert!(!cmd("agent.visible_cdi_devices=0").visible_cdi_devices);
    }

    #[test]
    fn cgroup_hierarchy_selection() {
        assert!(cmd("systemd.unified_cgroup_hierarchy=1").unified_cgroup_hierarchy);
        assert!(cmd("systemd.unified_cgroup_hierarchy=true").unified_cgroup_hierarchy);
        assert!(cmd("agent.unified_cgroup_hierarchy=1").unified_cgroup_hierarchy);
        assert!(!cmd("systemd.unified_cgroup_hierarchy=0").unified_cgroup_hierarchy);
        assert!(
            !cmd("agent.unified_cgroup_hierarchy=1 systemd.unified_cgroup_hierarchy=false")
                .unified_cgroup_hierarchy
        );
        let c = cmd("cgroup_no_v1=all systemd.unified_cgroup_hierarchy=0");
        assert!(c.unified_cgroup_hierarchy, "cgroup_no_v1=all selects v2");
        assert_eq!(c.cgroup_no_v1, "all");
        let c = cmd("cgroup_no_v1=memory,cpu");
        assert!(!c.unified_cgroup_hierarchy);
        assert_eq!(c.cgroup_no_v1, "");
        assert!(cmd_err("cgroup_no_v1=").contains("empty"));
    }

    #[test]
    fn proxy_options() {
        let c = cmd(
            "agent.https_proxy=http://proxy.example.com:3128 agent.no_proxy=localhost,10.0.0.0/8",
        );
        assert_eq!(c.https_proxy, "http://proxy.example.com:3128/");
        assert_eq!(c.no_proxy, "localhost,10.0.0.0/8");
        assert_eq!(
            cmd("agent.https_proxy=HTTP://u:p@h/x?y=1").https_proxy,
            "http://u:p@h/x?y=1"
        );
        for bad in [
            "proxy:3128",
            "http://",
            "http://:80",
            "http://h:port",
            "1http://h",
        ] {
            let e = cmd_err(&format!("agent.https_proxy={bad}"));
            assert!(e.contains("not an absolute URL"), "{e}");
        }
        assert!(cmd_err("agent.https_proxy=").contains("empty"));
        assert!(cmd_err("agent.no_proxy=").contains("empty"));
        assert_eq!(normalize_url("http://[::1]").unwrap(), "http://[::1]/");
        assert_eq!(
            normalize_url("http://[::1]:8080/p").unwrap(),
            "http://[::1]:8080/p"
        );
    }

    #[test]
    fn string_option_keeps_equals_signs() {
        assert_eq!(cmd("agent.no_proxy=a=b").no_proxy, "a=b");
    }

    #[test]
    fn unknown_tokens_are_ignored() {
        let c = cmd("root=/dev/vda1 agent.unknown=3 agent.cdh_api_timeout=50 agent.mem_agent_enable=1 = agent. x=y=z");
        assert_eq!(c, AgentConfig::default());
    }

    #[test]
    fn later_tokens_win_and_whitespace_splits() {
        let c = cmd("agent.log=debug\tagent.log_vport=1\n agent.log=warn   agent.log_vport=2\n");
        assert_eq!(c.log_level, LogLevel::Warn);
        assert_eq!(c.log_vport, 2);
    }

    #[test]
    fn env_overrides_cmdline() {
        let env = [
            ("KATA_AGENT_SERVER_ADDR", "unix:///tmp/a.sock"),
            ("KATA_AGENT_LOG_LEVEL", "trace"),
            ("KATA_AGENT_TRACING", "true"),
        ];
        let (c, w) = load_with(
            &[],
            Some("agent.server_addr=vsock://-1:5 agent.log=error"),
            &env,
            &[],
        )
        .unwrap();
        assert_eq!(c.server_addr, "unix:///tmp/a.sock");
        assert_eq!(c.log_level, LogLevel::Trace);
        assert!(c.tracing);
        assert!(w.is_empty());
    }

    #[test]
    fn env_invalid_values() {
        // Invalid log level: ignored with a warning.
        let (c, w) = load_with(
            &[],
            Some("agent.log=debug"),
            &[("KATA_AGENT_LOG_LEVEL", "loud")],
            &[],
        )
        .unwrap();
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(w.len(), 1);
        // Invalid tracing value: false, even over a cmdline `true`.
        let (c, w) = load_with(
            &[],
            Some("agent.trace"),
            &[("KATA_AGENT_TRACING", "maybe")],
            &[],
        )
        .unwrap();
        assert!(!c.tracing);
        assert_eq!(w.len(), 1);
        // A bad server address from the environment is a startup error.
        let e = load_with(
            &[],
            Some(""),
            &[("KATA_AGENT_SERVER_ADDR", "localhost:1024")],
            &[],
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("invalid server address"));
    }

    #[test]
    fn env_path_overrides() {
        let env = [
            ("KATA_AGENT_RUN_DIR", "/tmp/run"),
            ("KATA_AGENT_RESOLV_CONF", "/tmp/resolv.conf"),
            ("KATA_AGENT_SYSFS", "/tmp/sys"),
            ("KATA_AGENT_CGROUP_ROOT", "/tmp/cgroup"),
            ("KATA_AGENT_CONSOLE", "/dev/ttyS1"),
        ];
        let c = load_with(&[], Some(""), &env, &[]).unwrap().0;
        assert_eq!(c.run_dir, Path::new("/tmp/run"));
        assert_eq!(
            c.sandbox_ns_dir,
            Path::new("/tmp/run/sandbox-ns"),
            "follows run_dir"
        );
        assert_eq!(c.resolv_conf, Path::new("/tmp/resolv.conf"));
        assert_eq!(c.sysfs_root, Path::new("/tmp/sys"));
        assert_eq!(c.cgroup_root, Path::new("/tmp/cgroup"));
        assert_eq!(c.console_path, Path::new("/dev/ttyS1"));

        let env = [
            ("KATA_AGENT_RUN_DIR", "/tmp/run"),
            ("KATA_AGENT_SANDBOX_NS_DIR", "/tmp/ns"),
        ];
        let c = load_with(&[], Some(""), &env, &[]).unwrap().0;
        assert_eq!(c.sandbox_ns_dir, Path::new("/tmp/ns"));

        let c = load_with(&[], Some(""), &[("KATA_AGENT_RUN_DIR", "")], &[])
            .unwrap()
            .0;
        assert_eq!(c.run_dir, Path::new(DEFAULT_RUN_DIR), "empty = unset");

        let e = load_with(&[], Some(""), &[("KATA_AGENT_SYSFS", "sys")], &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("KATA_AGENT_SYSFS must be an absolute path"),
            "{e}"
        );
    }

    #[test]
    fn env_side_channel_addresses() {
        let env = [
            ("KATA_AGENT_LOG_ADDR", "unix:///tmp/log.sock"),
            ("KATA_AGENT_DEBUG_CONSOLE_ADDR", "vsock://-1:2026"),
            ("KATA_AGENT_TRACE_ADDR", "http://10.0.0.1:4318"),
        ];
        let c = load_with(&[], Some("agent.log_vport=1025"), &env, &[])
            .unwrap()
            .0;
        assert_eq!(c.log_addr.as_deref(), Some("unix:///tmp/log.sock"));
        assert_eq!(c.debug_console_addr.as_deref(), Some("vsock://-1:2026"));
        assert_eq!(c.trace_addr.as_deref(), Some("http://10.0.0.1:4318"));
        assert_eq!(c.log_vport, 1025, "kept; the address wins where it is used");
        let c = load_with(&[], Some(""), &[("KATA_AGENT_LOG_ADDR", "")], &[])
            .unwrap()
            .0;
        assert_eq!(c.log_addr, None, "empty = unset");
        for (var, bad) in [
            ("KATA_AGENT_LOG_ADDR", "/tmp/log.sock"),
            ("KATA_AGENT_DEBUG_CONSOLE_ADDR", "http://x:1"),
            ("KATA_AGENT_TRACE_ADDR", "vsock://2"),
        ] {
            let e = load_with(&[], Some(""), &[(var, bad)], &[]).unwrap_err();
            assert!(e.to_string().contains(var), "{e}");
        }
    }

    #[test]
    fn config_file_token_stops_parsing_and_skips_env() {
        let files = [(
            "/etc/kata/agent.toml",
            "log_level = \"warn\"\nserver_addr = \"unix:///f.sock\"\n",
        )];
        let env = [
            ("KATA_AGENT_LOG_LEVEL", "trace"),
            ("KATA_AGENT_SERVER_ADDR", "unix:///env.sock"),
        ];
        let (c, _) = load_with(
            &[],
            Some("agent.debug_console agent.config_file=/etc/kata/agent.toml agent.log=debug agent.log_vport=x"),
            &env,
            &files,
        )
        .unwrap();
        assert!(
            !c.debug_console,
            "tokens before agent.config_file are discarded"
        );
        assert_eq!(
            c.log_level,
            LogLevel::Warn,
            "tokens after it and env are ignored"
        );
        assert_eq!(c.server_addr, "unix:///f.sock");

        let e = load_with(&[], Some("agent.config_file=/missing.toml"), &[], &[]).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("cannot read the configuration file /missing.toml"),
            "{e}"
        );
        assert!(load_with(&[], Some("agent.config_file="), &[], &[]).is_err());
    }

    #[test]
    fn config_argument_uses_file_and_env_not_cmdline() {
        let files = [("/a.toml", "log_level = \"warn\"\ndebug_console = true\n")];
        let env = [("KATA_AGENT_LOG_LEVEL", "error")];
        for flag in ["--config", "-c"] {
            let (c, _) =
                load_with(&[flag, "/a.toml"], Some("agent.log_vport=9"), &env, &files).unwrap();
            assert!(c.debug_console);
            assert_eq!(c.log_level, LogLevel::Error, "env overrides the file");
            assert_eq!(c.log_vport, 0, "the kernel command line is not used");
        }
        // `--config=path` is not recognised by the scan: the kernel command line is used.
        let c = load_with(
            &["--config=/a.toml"],
            Some("agent.log_vport=9"),
            &[],
            &files,
        )
        .unwrap()
        .0;
        assert_eq!(c.log_vport, 9);
        assert!(load_with(&["--config"], None, &[], &[])
            .unwrap_err()
            .to_string()
            .contains("needs a configuration file"));
        assert!(
            load_with(&[], None, &[], &[]).is_err(),
            "no cmdline and no --config"
        );
    }

    #[test]
    fn toml_every_key() {
        let text = r#"
            debug_console = true
            dev_mode = true
            log_level = "trace"
            hotplug_timeout = "10s"
            cdi_timeout = 20
            launch_process_timeout = { secs = 7, nanos = 500000000 }
            debug_console_vport = 1026
            log_vport = 1025
            passfd_listener_port = 1027
            container_pipe_size = 65536
            server_addr = "unix:///run/kata.sock"
            unified_cgroup_hierarchy = true
            tracing = true
            visible_cdi_devices = true
            https_proxy = "http://p:1"
            no_proxy = "localhost"
            run_dir = "/r"
            sandbox_ns_dir = "/ns"
            resolv_conf = "/rc"
            sysfs_root = "/s"
            cgroup_root = "/cg"
            console_path = "/dev/hvc0"
            dev_root = "/d"
            some_unknown_key = 3
            [endpoints]
            allowed = ["CreateContainerRequest"]
        "#;
        let (c, w) = file(text).unwrap();
        assert!(w.is_empty(), "{w:?}");
        let expected = AgentConfig {
            debug_console: true,
            dev_mode: true,
            log_level: LogLevel::Trace,
            log_vport: 1025,
            debug_console_vport: 1026,
            server_addr: "unix:///run/kata.sock".into(),
            passfd_listener_port: 1027,
            hotplug_timeout: Duration::from_secs(10),
            cdi_timeout: Duration::from_secs(20),
            launch_process_timeout: Duration::from_millis(7500),
            container_pipe_size: 65536,
            unified_cgroup_hierarchy: true,
            cgroup_no_v1: String::new(),
            tracing: true,
            visible_cdi_devices: true,
            https_proxy: "http://p:1/".into(),
            no_proxy: "localhost".into(),
            run_dir: "/r".into(),
            sandbox_ns_dir: "/ns".into(),
            resolv_conf: "/rc".into(),
            sysfs_root: "/s".into(),
            cgroup_root: "/cg".into(),
            console_path: "/dev/hvc0".into(),
            dev_root: "/d".into(),
            log_addr: None,
            debug_console_addr: None,
            trace_addr: None,
            policy_file: None,
        };
        assert_eq!(c, expected);
    }

    #[test]
    fn toml_timeouts() {
        let t = |v: &str| {
            let (c, w) = file(&format!("hotplug_timeout = {v}")).unwrap();
            (c.hotplug_timeout, w.len())
        };
        assert_eq!(t("[5, 0]"), (Duration::from_secs(5), 0));
        assert_eq!(t("{ secs = 4 }"), (Duration::from_secs(4), 0));
        assert_eq!(t("\"1m\""), (Duration::from_secs(60), 0));
        assert_eq!(t("0"), (DEFAULT_HOTPLUG_TIMEOUT, 0));
        for bad in [
            "-1",
            "\"soon\"",
            "true",
            "{ secs = -1 }",
            "{ nanos = 5 }",
            "{ secs = 1, nanos = 1000000000 }",
            "[1]",
            "1.5",
        ] {
            assert_eq!(t(bad), (DEFAULT_HOTPLUG_TIMEOUT, 1), "{bad}");
        }
    }

    #[test]
    fn toml_errors() {
        assert!(file_err("log_level = \"loud\"").contains("unknown log level"));
        assert!(file_err("debug_console = 1").contains("debug_console must be a boolean"));
        assert!(file_err("log_vport = \"1025\"").contains("log_vport must be an integer"));
        assert!(file_err("log_vport = 4294967296").contains("not a port number"));
        assert!(file_err("container_pipe_size = -1").contains("container_pipe_size"));
        assert!(file_err("server_addr = \"ftp://x\"").contains("invalid server address"));
        assert!(file_err("server_addr = 3").contains("must be a string"));
        assert!(file_err("https_proxy = \"nope\"").contains("not an absolute URL"));
        assert!(file_err("run_dir = \"relative\"").contains("absolute path"));
        let e = file_err("this is = not toml [");
        assert!(
            e.contains("invalid configuration file /etc/agent.toml")
                && e.contains("not valid TOML"),
            "{e}"
        );
        let (c, w) = file("log_vport = -5\nhttps_proxy = \"\"").unwrap();
        assert_eq!((c.log_vport, w.len()), (0, 1));
        assert_eq!(c.https_proxy, "");
    }

    #[test]
    fn toml_run_dir_moves_sandbox_ns_dir() {
        let c = file("run_dir = \"/r\"").unwrap().0;
        assert_eq!(c.sandbox_ns_dir, Path::new("/r/sandbox-ns"));
    }

    #[test]
    fn server_addr_forms() {
        for good in [
            "vsock://-1:1024",
            "vsock://3:1024",
            "vsock://4294967295:1",
            "unix:///run/kata/agent.sock",
            "unix://@kata-agent",
            "tcp://127.0.0.1:5000",
            "tcp://[::1]:5000",
            "tcp://localhost:1",
        ] {
            validate_server_addr(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            "vsock://-1",
            "vsock://-1:1024:1",
            "vsock://x:1024",
            "vsock://-2:1024",
            "vsock://-1:port",
            "unix://relative/path",
            "unix:///",
            "unix://@",
            "unix://",
            "tcp://:80",
            "tcp://host",
            "tcp://host:70000",
            "http://host:80",
            "/run/agent.sock",
        ] {
            let e = validate_server_addr(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("invalid server address") && e.contains("expected"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn load_with_config_argument() {
        // Only the --config path (which reads no kernel command line) is exercised in-process, so
        // that the test does not depend on the host's /proc/cmdline.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "log_vport = 7\nserver_addr = \"unix:///x.sock\"\n").unwrap();
        let argv = args(&["-c", path.to_str().unwrap()]);
        let (c, _) = AgentConfig::load(&argv).unwrap();
        assert_eq!(c.log_vport, 7);
        let missing = args(&["-c", "/nonexistent/agent.toml"]);
        let e = format!("{:#}", AgentConfig::load(&missing).unwrap_err());
        assert!(
            e.contains("cannot read the configuration file /nonexistent/agent.toml"),
            "{e}"
        );
    }
}
