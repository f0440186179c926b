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

use crate::log_level::LogLevel;

pub mod mem_agent;
mod side_channels;
mod values;
pub use values::*;

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
    /// CDI spec directories, lowest precedence first (`KATA_AGENT_CDI_SPEC_DIRS`, `:`-separated).
    pub cdi_spec_dirs: Vec<PathBuf>,
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
    /// The memory agent (`agent.mem_agent_*`, see `config::mem_agent`).
    pub mem_agent: mem_agent::MemAgentConfig,
    /// Pass-fd stdio listener address (`KATA_AGENT_PASSFD_ADDR`); replaces
    /// `vsock://-1:<passfd_listener_port>`.
    pub passfd_addr: Option<String>,
    /// Rego policy file loaded at start-up (`policy_file`, `KATA_AGENT_POLICY_FILE`).
    pub policy_file: Option<PathBuf>,
    /// The policy decision log, written at debug level (`KATA_AGENT_POLICY_LOG`).
    pub policy_log: PathBuf,
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
            cdi_spec_dirs: vec!["/etc/cdi".into(), "/var/run/cdi".into()],
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
            mem_agent: Default::default(),
            passfd_addr: None,
            policy_file: None,
            policy_log: PathBuf::from(crate::policy::DEFAULT_POLICY_LOG),
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
            _ if key.starts_with("agent.mem_agent_") => {
                if let Some(w) = cfg
                    .mem_agent
                    .apply_cmdline(&key["agent.".len()..], single)?
                {
                    self.warnings.push(w);
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
                _ if k.starts_with("mem_agent_") => cfg.mem_agent.apply_toml(k, value)?,
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
        // CDI spec directories: absolute paths separated by ':' (tests use their own).
        if let Some(dirs) = env("KATA_AGENT_CDI_SPEC_DIRS").filter(|v| !v.is_empty()) {
            let dirs: Vec<PathBuf> = dirs.split(':').map(PathBuf::from).collect();
            if let Some(bad) = dirs.iter().find(|d| !d.is_absolute()) {
                bail!(
                    "KATA_AGENT_CDI_SPEC_DIRS: {} is not an absolute path",
                    bad.display()
                );
            }
            self.cfg.cdi_spec_dirs = dirs;
        }
        if let Some(file) = env("KATA_AGENT_POLICY_FILE").filter(|v| !v.is_empty()) {
            if !file.starts_with('/') {
                bail!("environment variable KATA_AGENT_POLICY_FILE must be an absolute path, got {file:?}");
            }
            self.cfg.policy_file = Some(PathBuf::from(file));
        }
        let cfg = &mut self.cfg;
        let overrides: [(&str, &mut PathBuf, Option<&mut bool>); 8] = [
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
            ("KATA_AGENT_POLICY_LOG", &mut cfg.policy_log, None),
        ];
        let addresses: [(&str, &mut Option<String>); 4] = [
            ("KATA_AGENT_LOG_ADDR", &mut cfg.log_addr),
            ("KATA_AGENT_PASSFD_ADDR", &mut cfg.passfd_addr),
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

#[cfg(test)]
mod tests;
