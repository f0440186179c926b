//! The command table: one command per API method plus the built-ins, command-line parsing
//! of a single command, and the calls themselves.

use std::time::Duration;

use agent_client::Agent;
use anyhow::{anyhow, bail, Result};
use protocols::agent::*;
use protocols::health::CheckRequest;
use serde_json::Value;

use crate::args::{self, ArgForm};
use crate::host::{self, HostInput};
use crate::request::{self, AutoValues};

/// Wraps a response for [`ToJsonSerde`] / [`ToJsonEmpty`]: responses are converted with serde,
/// except protobuf's well-known `Empty`, which has no serde support and prints as `{}`.
/// Method resolution picks `ToJsonEmpty` (implemented on `Wrap`) before `ToJsonSerde`
/// (implemented on `&Wrap`) when both could apply. Whether `protocols` uses that `Empty` or its
/// own serde-enabled one decides which of the two is needed, hence the `dead_code` allowances.
#[allow(dead_code)]
struct Wrap<'a, T>(&'a T);

#[allow(dead_code)]
trait ToJsonEmpty {
    fn to_json(&self) -> Result<Value>;
}

impl ToJsonEmpty for Wrap<'_, protobuf::well_known_types::empty::Empty> {
    fn to_json(&self) -> Result<Value> {
        Ok(Value::Object(Default::default()))
    }
}

#[allow(dead_code)]
trait ToJsonSerde {
    fn to_json(&self) -> Result<Value>;
}

impl<T: serde::Serialize> ToJsonSerde for &Wrap<'_, T> {
    fn to_json(&self) -> Result<Value> {
        Ok(serde_json::to_value(self.0)?)
    }
}

/// Declares the API commands: `"Name" => service.method(RequestType)`.
macro_rules! api_commands {
    ($($name:literal => $svc:ident . $method:ident ($req:ty)),* $(,)?) => {
        /// Names of all commands that call an API method, in API order.
        pub const API_COMMANDS: &[&str] = &[$($name),*];

        /// The default request of an API command, as JSON.
        pub fn default_request(name: &str) -> Option<Value> {
            match name {
                $($name => Some(
                    serde_json::to_value(<$req>::default())
                        .expect("request messages serialize to JSON"),
                ),)*
                _ => None,
            }
        }

        /// Checks that `req` decodes as the request message of `name`.
        fn check_request(name: &str, req: &Value) -> Result<()> {
            match name {
                $($name => {
                    serde_json::from_value::<$req>(req.clone())
                        .map_err(|e| anyhow!("the request does not match {}: {e}", stringify!($req)))?;
                })*
                _ => bail!("{name} is not an API command"),
            }
            Ok(())
        }

        /// Sends the request `req` of command `name` and returns the response as JSON.
        async fn call(
            agent: &Agent,
            name: &str,
            ctx: ttrpc::context::Context,
            req: Value,
        ) -> Result<Value, CallError> {
            match name {
                $($name => {
                    let req: $req = serde_json::from_value(req)
                        .map_err(|e| CallError::Local(anyhow!("bad request: {e}")))?;
                    let resp = agent.$svc.$method(ctx, &req).await.map_err(CallError::Rpc)?;
                    #[allow(clippy::needless_borrow)]
                    let json = (&Wrap(&resp)).to_json();
                    json.map_err(CallError::Local)
                })*
                _ => Err(CallError::Local(anyhow!("{name} is not an API command"))),
            }
        }
    };
}

api_commands! {
    "CreateContainer" => agent.create_container(CreateContainerRequest),
    "StartContainer" => agent.start_container(StartContainerRequest),
    "RemoveContainer" => agent.remove_container(RemoveContainerRequest),
    "ExecProcess" => agent.exec_process(ExecProcessRequest),
    "SignalProcess" => agent.signal_process(SignalProcessRequest),
    "WaitProcess" => agent.wait_process(WaitProcessRequest),
    "UpdateContainer" => agent.update_container(UpdateContainerRequest),
    "UpdateEphemeralMounts" => agent.update_ephemeral_mounts(UpdateEphemeralMountsRequest),
    "StatsContainer" => agent.stats_container(StatsContainerRequest),
    "PauseContainer" => agent.pause_container(PauseContainerRequest),
    "ResumeContainer" => agent.resume_container(ResumeContainerRequest),
    "RemoveStaleVirtiofsShareMounts" =>
        agent.remove_stale_virtiofs_share_mounts(RemoveStaleVirtiofsShareMountsRequest),
    "GetDiagnosticData" => agent.get_diagnostic_data(GetDiagnosticDataRequest),
    "WriteStdin" => agent.write_stdin(WriteStreamRequest),
    "ReadStdout" => agent.read_stdout(ReadStreamRequest),
    "ReadStderr" => agent.read_stderr(ReadStreamRequest),
    "CloseStdin" => agent.close_stdin(CloseStdinRequest),
    "TtyWinResize" => agent.tty_win_resize(TtyWinResizeRequest),
    "UpdateInterface" => agent.update_interface(UpdateInterfaceRequest),
    "UpdateRoutes" => agent.update_routes(UpdateRoutesRequest),
    "ListInterfaces" => agent.list_interfaces(ListInterfacesRequest),
    "ListRoutes" => agent.list_routes(ListRoutesRequest),
    "AddARPNeighbors" => agent.add_arp_neighbors(AddARPNeighborsRequest),
    "GetIPTables" => agent.get_ip_tables(GetIPTablesRequest),
    "SetIPTables" => agent.set_ip_tables(SetIPTablesRequest),
    "GetMetrics" => agent.get_metrics(GetMetricsRequest),
    "MemAgentMemcgSet" => agent.mem_agent_memcg_set(MemAgentMemcgConfig),
    "MemAgentCompactSet" => agent.mem_agent_compact_set(MemAgentCompactConfig),
    "CreateSandbox" => agent.create_sandbox(CreateSandboxRequest),
    "DestroySandbox" => agent.destroy_sandbox(DestroySandboxRequest),
    "OnlineCPUMem" => agent.online_cpu_mem(OnlineCPUMemRequest),
    "ReseedRandomDev" => agent.reseed_random_dev(ReseedRandomDevRequest),
    "GetGuestDetails" => agent.get_guest_details(GuestDetailsRequest),
    "MemHotplugByProbe" => agent.mem_hotplug_by_probe(MemHotplugByProbeRequest),
    "SetGuestDateTime" => agent.set_guest_date_time(SetGuestDateTimeRequest),
    "CopyFile" => agent.copy_file(CopyFileRequest),
    "GetOOMEvent" => agent.get_oom_event(GetOOMEventRequest),
    "AddSwap" => agent.add_swap(AddSwapRequest),
    "AddSwapPath" => agent.add_swap_path(AddSwapPathRequest),
    "GetVolumeStats" => agent.get_volume_stats(VolumeStatsRequest),
    "ResizeVolume" => agent.resize_volume(ResizeVolumeRequest),
    "SetPolicy" => agent.set_policy(SetPolicyRequest),
    "Check" => health.check(CheckRequest),
    "Version" => health.version(CheckRequest),
}

/// Built-in commands and what they do.
pub const BUILTINS: &[(&str, &str)] = &[
    ("echo", "echo <text>: print the text"),
    ("help", "help: list the commands"),
    ("list", "list: list the commands"),
    ("quit", "quit: stop processing commands"),
    (
        "repeat",
        "repeat <n>: run the next command n times (-1: forever)",
    ),
    (
        "sleep",
        "sleep <time>: pause, e.g. 'sleep 500ms', 'sleep 2s'",
    ),
];

/// One parsed command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// An API call.
    Api {
        /// The canonical method name, e.g. `CreateContainer`.
        name: &'static str,
        /// Its argument.
        form: ArgForm,
    },
    /// `echo <text>`.
    Echo(String),
    /// `sleep <duration>`.
    Sleep(Duration),
    /// `repeat <n>`; a negative count repeats forever.
    Repeat(i64),
    /// `list` / `help`.
    List,
    /// `quit`.
    Quit,
}

/// Parses one command line such as `WaitProcess cid=c1` or `sleep 1s`.
///
/// API requests are checked against their message type here, so that mistakes show before
/// anything is sent.
pub fn parse_command(line: &str) -> Result<Command> {
    let line = line.trim();
    let (word, rest) = match line.split_once(char::is_whitespace) {
        Some((w, r)) => (w, r.trim()),
        None => (line, ""),
    };
    if word.is_empty() {
        bail!("empty command");
    }
    let lower = word.to_ascii_lowercase();
    let no_args = |cmd: Command| {
        if rest.is_empty() {
            Ok(cmd)
        } else {
            Err(anyhow!("{word} takes no argument, but got {rest:?}"))
        }
    };
    match lower.as_str() {
        "echo" => return Ok(Command::Echo(rest.to_string())),
        "sleep" => return Ok(Command::Sleep(args::parse_duration(rest)?)),
        "repeat" => {
            let n: i64 = rest.parse().map_err(|_| {
                anyhow!("repeat needs a count (a number, -1 for forever), not {rest:?}")
            })?;
            return Ok(Command::Repeat(n));
        }
        "list" | "help" => return no_args(Command::List),
        "quit" | "exit" => return no_args(Command::Quit),
        _ => {}
    }
    let Some(name) = API_COMMANDS.iter().find(|n| n.eq_ignore_ascii_case(word)) else {
        bail!("{}", unknown_command_message(word));
    };
    let form = args::parse_form(rest).map_err(|e| anyhow!("{name}: {e:#}"))?;
    // Upstream-style arguments naming host files are read when the command runs.
    if host::detect(name, &form)?.is_some() {
        return Ok(Command::Api { name, form });
    }
    // Build once without auto-values to catch unknown fields and type errors early.
    let default = default_request(name).expect("every API command has a default request");
    let req = request::build(name, default, &form, &mut AutoValues::new(false))
        .map_err(|e| anyhow!("{name}: {e:#}"))?;
    check_request(name, &req).map_err(|e| anyhow!("{name}: {e:#}"))?;
    Ok(Command::Api { name, form })
}

/// The error text for an unknown command, with the closest known names.
fn unknown_command_message(word: &str) -> String {
    let lower = word.to_ascii_lowercase();
    let mut scored: Vec<(f64, &str)> = API_COMMANDS
        .iter()
        .copied()
        .chain(BUILTINS.iter().map(|(n, _)| *n))
        .map(|n| {
            let ln = n.to_ascii_lowercase();
            let mut score = strsim::jaro_winkler(&lower, &ln);
            if lower.len() >= 3 && (ln.contains(&lower) || lower.contains(&ln)) {
                score = score.max(0.9);
            }
            (score, n)
        })
        .filter(|(s, _)| *s >= 0.75)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let close: Vec<&str> = scored.iter().take(5).map(|(_, n)| *n).collect();
    if close.is_empty() {
        format!("unknown command {word:?} (the 'list' command shows all commands)")
    } else {
        format!(
            "unknown command {word:?}; did you mean: {}? (the 'list' command shows all commands)",
            close.join(", ")
        )
    }
}

/// The text printed by `list` / `help`.
pub fn list_text() -> String {
    let mut s = String::from(
        "API commands (argument: nothing, json://{...}, file:///path.json or key=value ...):\n",
    );
    for name in API_COMMANDS {
        s.push_str("  ");
        s.push_str(name);
        s.push('\n');
    }
    s.push_str("Built-in commands:\n");
    for (_, help) in BUILTINS {
        s.push_str("  ");
        s.push_str(help);
        s.push('\n');
    }
    s
}

/// How an API call failed.
#[derive(Debug)]
pub enum CallError {
    /// The agent (or the ttRPC layer) answered or failed.
    Rpc(ttrpc::Error),
    /// The request could not be built or the response not printed.
    Local(anyhow::Error),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Rpc(ttrpc::Error::RpcStatus(status)) => {
                write!(f, "{:?}: {}", status.code(), status.message())
            }
            CallError::Rpc(e) => write!(f, "{e}"),
            CallError::Local(e) => write!(f, "{e:#}"),
        }
    }
}

/// Settings and state shared by the commands of one run.
pub struct Session {
    /// The connection; `None` in dry-run mode.
    pub agent: Option<Agent>,
    /// Auto-values state.
    pub auto: AutoValues,
    /// Per-request timeout (`None`: no timeout).
    pub timeout: Option<Duration>,
    /// Bundle directory whose `config.json` provides ExecProcess' process.
    pub bundle_dir: Option<String>,
    /// Print requests on stderr before sending them.
    pub verbose: bool,
}

impl Session {
    /// Builds the request(s) of an API command, sends them (unless in dry-run mode) and returns
    /// the JSON lines to print: the response, or in dry-run mode each request as
    /// `{"command":..,"request":..}`.
    pub async fn run_api(
        &mut self,
        name: &'static str,
        form: &ArgForm,
    ) -> Result<Vec<Value>, CallError> {
        let req = match host::detect(name, form).map_err(CallError::Local)? {
            Some(HostInput::CopyFile { src, dest }) => return self.copy_file(&src, &dest).await,
            Some(HostInput::SetPolicy { policy_file }) => {
                host::set_policy_request(&policy_file).map_err(CallError::Local)?
            }
            Some(HostInput::Image { image, id }) => {
                let id = match id {
                    Some(id) => {
                        self.auto.cid = Some(id.clone());
                        id
                    }
                    None => self.auto.cid.get_or_insert_with(args::random_id).clone(),
                };
                let spec = host::image_spec(&image, &id, self.agent.is_none())
                    .map_err(CallError::Local)?;
                serde_json::json!({"container_id": id, "OCI": spec})
            }
            None => self.build_request(name, form)?,
        };
        let resp = self.send(name, req.clone()).await?;
        if name == "RemoveContainer" && self.agent.is_some() {
            if let Some(cid) = req.get("container_id").and_then(Value::as_str) {
                if let Err(e) = host::remove_pulled_image(cid) {
                    eprintln!("warning: {e:#}");
                }
            }
        }
        Ok(vec![resp])
    }

    /// The request of a command whose argument describes the request itself.
    fn build_request(&mut self, name: &'static str, form: &ArgForm) -> Result<Value, CallError> {
        let default = default_request(name).expect("every API command has a default request");
        let mut req =
            request::build(name, default, form, &mut self.auto).map_err(CallError::Local)?;
        let wants_bundle = self.auto.enabled
            && match name {
                "ExecProcess" => req.get("process").is_some_and(Value::is_null),
                "CreateContainer" => req.get("OCI").is_some_and(Value::is_null),
                _ => false,
            };
        if wants_bundle {
            if let Some(dir) = &self.bundle_dir {
                if name == "ExecProcess" {
                    req["process"] =
                        crate::bundle::process_from_bundle(dir).map_err(CallError::Local)?;
                } else {
                    req["OCI"] = crate::bundle::spec_from_bundle(dir).map_err(CallError::Local)?;
                }
            }
        }
        Ok(req)
    }

    fn context(&self) -> ttrpc::context::Context {
        let mut ctx = agent_client::ctx(self.timeout);
        if self.auto.enabled {
            ctx.add("agent-ctl-cfg".into(), "auto-values".into());
        }
        ctx
    }

    /// Sends one request (or, in dry-run mode, returns it).
    async fn send(&self, name: &'static str, req: Value) -> Result<Value, CallError> {
        if self.verbose {
            eprintln!("sending {name}: {req}");
        }
        let Some(agent) = &self.agent else {
            return Ok(serde_json::json!({"command": name, "request": req}));
        };
        call(agent, name, self.context(), req).await
    }

    /// `CopyFile src=.. dest=..`: one request per chunk of the host file.
    async fn copy_file(&self, src: &std::path::Path, dest: &str) -> Result<Vec<Value>, CallError> {
        let mut source = host::CopyFileSource::open(src, dest).map_err(CallError::Local)?;
        let mut lines = Vec::new();
        while let Some(req) = source.next_request().map_err(CallError::Local)? {
            let json = serde_json::to_value(&req).map_err(|e| CallError::Local(e.into()))?;
            if self.verbose {
                let mut shown = json.clone();
                shown["data"] = Value::String(format!("<{} bytes>", req.data.len()));
                eprintln!("sending CopyFile: {shown}");
            }
            match &self.agent {
                None => lines.push(serde_json::json!({"command": "CopyFile", "request": json})),
                Some(agent) => {
                    agent
                        .agent
                        .copy_file(self.context(), &req)
                        .await
                        .map_err(CallError::Rpc)?;
                }
            }
        }
        if self.agent.is_some() {
            lines.push(Value::Object(Default::default()));
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_command_has_a_default() {
        assert_eq!(API_COMMANDS.len(), 44);
        for name in API_COMMANDS {
            let d = default_request(name).unwrap();
            assert!(d.is_object(), "{name}");
            check_request(name, &d).unwrap();
        }
    }

    #[test]
    fn parses_commands() {
        assert_eq!(
            parse_command("getguestdetails").unwrap(),
            Command::Api {
                name: "GetGuestDetails",
                form: ArgForm::Empty
            }
        );
        assert_eq!(
            parse_command("sleep 20ms").unwrap(),
            Command::Sleep(Duration::from_millis(20))
        );
        assert_eq!(parse_command("repeat -1").unwrap(), Command::Repeat(-1));
        assert_eq!(
            parse_command("echo hello  world").unwrap(),
            Command::Echo("hello  world".into())
        );
        assert_eq!(parse_command("help").unwrap(), Command::List);
        assert!(parse_command("quit now").is_err());
        assert!(parse_command("repeat x").is_err());
        let err = parse_command("WaitProces").unwrap_err().to_string();
        assert!(err.contains("WaitProcess"), "{err}");
        let err = parse_command("Stats").unwrap_err().to_string();
        assert!(err.contains("StatsContainer"), "{err}");
        let err = parse_command("ReadStdout len=many")
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs a number"), "{err}");
        let err = parse_command(r#"StartContainer json://{"container_id": 5}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not match"), "{err}");
    }

    #[test]
    fn list_mentions_everything() {
        let t = list_text();
        assert!(t.contains("SetPolicy") && t.contains("repeat <n>") && t.contains("Version"));
    }
}
