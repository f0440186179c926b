//! `kata-agent-ctl`: sends individual API requests to a Kata agent, for testing and debugging.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use agent_client::{Agent, ConnectOptions};
use clap::{Parser, Subcommand};

use kata_agent_ctl::commands::{self, Command, Session};
use kata_agent_ctl::request::AutoValues;

/// Low-level control tool for the Kata agent: sends API requests one command at a time.
#[derive(Parser, Debug)]
#[command(name = "kata-agent-ctl", version, about, long_about = None)]
struct Cli {
    /// Log level: trace, debug, info, warn, error or critical (debug and trace print every
    /// request on stderr).
    #[arg(short = 'l', long = "log-level", default_value = "info", global = true)]
    log_level: String,

    #[command(subcommand)]
    command: Sub,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Connect to the agent and run commands.
    Connect(ConnectArgs),
    /// Print example invocations.
    Examples,
    /// Print a random container id (64 hex digits).
    #[command(name = "generate-cid")]
    GenerateCid,
    /// Print a random sandbox id (64 hex digits).
    #[command(name = "generate-sid")]
    GenerateSid,
}

#[derive(clap::Args, Debug)]
struct ConnectArgs {
    /// Agent address: unix:///path, unix://@abstract, vsock://CID:PORT.
    #[arg(long = "server-address", required_unless_present = "dry_run")]
    server_address: Option<String>,

    /// The unix socket is a hypervisor hybrid-vsock socket (Firecracker, Cloud Hypervisor).
    #[arg(long = "hybrid-vsock")]
    hybrid_vsock: bool,

    /// Guest port to ask for in the hybrid-vsock CONNECT line.
    #[arg(long = "hybrid-vsock-port", default_value_t = agent_client::DEFAULT_AGENT_PORT)]
    hybrid_vsock_port: u32,

    /// OCI bundle whose config.json gives ExecProcess' process when none is given.
    #[arg(long = "bundle-dir")]
    bundle_dir: Option<String>,

    /// Timeout of every request, e.g. 10s, 500ms, 1m (0: none).
    #[arg(long, value_parser = parse_timeout)]
    timeout: Option<Duration>,

    /// Do not fill in container ids, exec ids, signals and sandbox ids automatically.
    #[arg(short = 'n', long = "no-auto-values")]
    no_auto_values: bool,

    /// After the -c commands, read further commands from standard input.
    #[arg(short = 'i', long)]
    interactive: bool,

    /// Go on with the next command after a failed one.
    #[arg(long = "ignore-errors")]
    ignore_errors: bool,

    /// Print each request as JSON instead of sending it (no agent needed).
    #[arg(long = "dry-run")]
    dry_run: bool,

    /// Connection attempts (10 ms apart) before giving up.
    #[arg(long = "connect-retries", default_value_t = 300)]
    connect_retries: u32,

    /// Commands to run, in order: several may follow one -c, and -c may be repeated.
    #[arg(short = 'c', long = "cmd", num_args = 1.., action = clap::ArgAction::Append)]
    cmd: Vec<String>,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    kata_agent_ctl::args::parse_duration(s).map_err(|e| e.to_string())
}

const EXAMPLES: &str = r#"Examples (the agent listens on vsock port 1024 in a VM, or on a unix socket in development):

  # Is the agent up, and which version is it?
  kata-agent-ctl connect --server-address unix:///run/kata-agent.sock -c Check Version

  # The same against a VM's vsock, and through a Firecracker / Cloud Hypervisor hybrid vsock
  kata-agent-ctl connect --server-address vsock://3:1024 -c Check
  kata-agent-ctl connect --server-address unix:///run/vc/vm/ID/kata.hvsock --hybrid-vsock -c GetGuestDetails

  # Create a sandbox, run a container from a rootfs already inside the guest, wait for it
  kata-agent-ctl connect --server-address unix:///run/kata-agent.sock \
      -c 'CreateSandbox json://{"sandbox_id":"sb1","hostname":"demo"}' \
      -c "CreateContainer rootfs=/run/rootfs args='sh -c \"echo hi\"' id=c1" \
         'StartContainer cid=c1' 'ReadStdout cid=c1 len=1024' 'WaitProcess cid=c1'

  # Run a second process in it and talk to its stdin
  kata-agent-ctl connect --server-address unix:///run/kata-agent.sock \
      -c "ExecProcess cid=c1 exec_id=e1 args='cat'" 'WriteStdin cid=c1 exec_id=e1 data=hello' \
         'CloseStdin cid=c1 exec_id=e1' 'ReadStdout cid=c1 exec_id=e1 len=100' \
         'WaitProcess cid=c1 exec_id=e1'

  # Signals by name, full requests as JSON or from a file, repeats and pauses
  kata-agent-ctl connect --server-address unix:///run/kata-agent.sock \
      -c 'SignalProcess cid=c1 exec_id=c1 signal=TERM' \
      -c 'repeat 3' 'StatsContainer cid=c1' 'sleep 500ms' \
      -c 'RemoveContainer json://{"container_id":"c1","timeout":0}' \
      -c 'CreateContainer file:///tmp/create-request.json'

  # Upstream's forms: copy a host file (or symlink, or directory) into the guest, send a
  # policy file, a container from an OCI bundle / rootfs directory / pulled image
  kata-agent-ctl connect --server-address unix://@/tmp/kata-agent.socket \
      -c 'CopyFile json://{"src": "/etc/hosts", "dest": "/run/kata-containers/shared/containers/hosts"}' \
      -c 'SetPolicy json://{"policy_file": "/opt/kata/test.rego"}' \
      -c 'CreateContainer json://{"image": "/srv/bundle", "id": "c2"}' 'StartContainer cid=c2'

  # Show the requests instead of sending them
  kata-agent-ctl connect --dry-run -c 'SignalProcess cid=c1' 'WriteStdin data=hex:68690a'

  # Tear everything down (the tool stops after a successful DestroySandbox)
  kata-agent-ctl connect --server-address unix:///run/kata-agent.sock --timeout 10s -c DestroySandbox

Inside a command, use 'list' for all command names.
"#;

fn main() -> ExitCode {
    // Like other command-line tools, end quietly when the reader of our output goes away
    // (`kata-agent-ctl ... | head`) instead of panicking on a failed print.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let verbose = match cli.log_level.to_ascii_lowercase().as_str() {
        "trace" | "debug" => true,
        "info" | "warn" | "warning" | "error" | "critical" => false,
        other => {
            eprintln!(
                "error: unknown log level {other:?} (trace, debug, info, warn, error, critical)"
            );
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Sub::Examples => {
            print!("{EXAMPLES}");
            ExitCode::SUCCESS
        }
        Sub::GenerateCid | Sub::GenerateSid => {
            println!("{}", kata_agent_ctl::args::random_id());
            ExitCode::SUCCESS
        }
        Sub::Connect(args) => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(connect(args, verbose))
        }
    }
}

/// Runs the `connect` subcommand.
async fn connect(args: ConnectArgs, verbose: bool) -> ExitCode {
    // Parse every command before connecting so that typos fail fast.
    let mut parsed = Vec::new();
    for text in &args.cmd {
        match commands::parse_command(text) {
            Ok(c) => parsed.push(c),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        }
    }
    if parsed.is_empty() && !args.interactive {
        eprintln!(
            "error: no command given: use -c 'Command [args]' (or -i to read commands from stdin)"
        );
        return ExitCode::from(2);
    }

    // Like upstream, built-ins alone (`-c list`) need no agent.
    let needs_agent = args.interactive || parsed.iter().any(|c| matches!(c, Command::Api { .. }));
    let agent = if args.dry_run || !needs_agent {
        None
    } else {
        let addr = args.server_address.as_deref().unwrap_or_default();
        let opts = ConnectOptions {
            hybrid_vsock: args.hybrid_vsock,
            hybrid_vsock_port: args.hybrid_vsock_port,
            retries: args.connect_retries,
            ..ConnectOptions::default()
        };
        match Agent::connect(addr, &opts).await {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    };

    let mut session = Session {
        agent,
        auto: AutoValues::new(!args.no_auto_values),
        timeout: args.timeout.filter(|t| !t.is_zero()),
        bundle_dir: args.bundle_dir.clone(),
        verbose,
    };
    let mut runner = Runner {
        session: &mut session,
        ignore_errors: args.ignore_errors,
        pending_repeat: None,
        failed: false,
    };

    for cmd in parsed {
        match runner.run(cmd).await {
            Step::Continue => {}
            Step::Stop => return runner.exit_code(),
            Step::Fail => return ExitCode::FAILURE,
        }
    }
    if args.interactive {
        let stdin = std::io::stdin();
        let prompt = stdin.is_terminal();
        let mut lines = stdin.lock().lines();
        loop {
            if prompt {
                eprint!("> ");
                let _ = std::io::stderr().flush();
            }
            let Some(Ok(line)) = lines.next() else { break };
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            match commands::parse_command(&line) {
                Ok(cmd) => match runner.run(cmd).await {
                    Step::Continue => {}
                    Step::Stop => return runner.exit_code(),
                    // Interactively, a failure is reported and the next line is read.
                    Step::Fail => runner.failed = false,
                },
                Err(e) => eprintln!("error: {e:#}"),
            }
        }
    }
    runner.exit_code()
}

/// What to do after a command.
enum Step {
    Continue,
    Stop,
    Fail,
}

struct Runner<'a> {
    session: &'a mut Session,
    ignore_errors: bool,
    pending_repeat: Option<i64>,
    failed: bool,
}

impl Runner<'_> {
    fn exit_code(&self) -> ExitCode {
        if self.failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    }

    /// Runs one command, as many times as a preceding `repeat` asks.
    async fn run(&mut self, cmd: Command) -> Step {
        if let Command::Repeat(n) = cmd {
            self.pending_repeat = Some(n);
            return Step::Continue;
        }
        let times = self.pending_repeat.take().unwrap_or(1);
        let mut done = 0i64;
        while times < 0 || done < times {
            done += 1;
            match self.run_once(&cmd).await {
                Step::Continue => {}
                other => return other,
            }
        }
        Step::Continue
    }

    async fn run_once(&mut self, cmd: &Command) -> Step {
        match cmd {
            Command::Echo(text) => println!("{text}"),
            Command::Sleep(d) => tokio::time::sleep(*d).await,
            Command::List => print!("{}", commands::list_text()),
            Command::Quit => return Step::Stop,
            Command::Repeat(_) => unreachable!("repeat is handled by run"),
            Command::Api { name, form } => match self.session.run_api(name, form).await {
                Ok(lines) => {
                    for line in lines {
                        println!("{line}");
                    }
                    let _ = std::io::stdout().flush();
                    if *name == "DestroySandbox" && self.session.agent.is_some() {
                        return Step::Stop;
                    }
                }
                Err(e) => {
                    eprintln!("error: {name} failed: {e}");
                    if self.ignore_errors {
                        return Step::Continue;
                    }
                    self.failed = true;
                    return Step::Fail;
                }
            },
        }
        Step::Continue
    }
}
