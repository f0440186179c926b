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
    let c =
        cmd("agent.log_vport=1025 agent.debug_console_vport=1026 agent.passfd_listener_port=1027");
    assert_eq!(
        (c.log_vport, c.debug_console_vport, c.passfd_listener_port),
        (1025, 1026, 1027)
    );
    // Zero and negative ports are parsed and ignored.
    let (c, w) = cmd_warn("agent.log_vport=1025 agent.log_vport=0 agent.debug_console_vport=-3");
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
    let c =
        cmd("agent.hotplug_timeout=10 agent.cdi_timeout=1m30s agent.launch_process_timeout=500ms");
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
    let c =
        cmd("agent.https_proxy=http://proxy.example.com:3128 agent.no_proxy=localhost,10.0.0.0/8");
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
    let c = cmd(
        "root=/dev/vda1 agent.unknown=3 agent.cdh_api_timeout=50 agent.mem_agentx=1 = agent. x=y=z",
    );
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
fn cdi_spec_dirs_env() {
    let c = load_with(
        &[],
        Some(""),
        &[("KATA_AGENT_CDI_SPEC_DIRS", "/a:/b/c")],
        &[],
    );
    assert_eq!(
        c.unwrap().0.cdi_spec_dirs,
        [Path::new("/a"), Path::new("/b/c")]
    );
    assert!(load_with(
        &[],
        Some(""),
        &[("KATA_AGENT_CDI_SPEC_DIRS", "/a:rel")],
        &[]
    )
    .is_err());
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
        cdi_spec_dirs: AgentConfig::default().cdi_spec_dirs,
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
        mem_agent: Default::default(),
        passfd_addr: None,
        policy_file: None,
        policy_log: PathBuf::from("/tmp/policy.jsonl"),
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
        e.contains("invalid configuration file /etc/agent.toml") && e.contains("not valid TOML"),
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

#[test]
fn mem_agent_options() {
    let c = cmd("agent.mem_agent_compact_period_secs=5 agent.mem_agent_enable=1");
    assert!(c.mem_agent.enable);
    assert_eq!(c.mem_agent.compact.period_secs, 5);
    let e = cmd_err("agent.mem_agent_memcg_swappiness_max=300");
    assert!(
        e.contains("agent.mem_agent_memcg_swappiness_max=300"),
        "{e}"
    );
    let (c, _) = file("mem_agent_enable = true\nmem_agent_memcg_swap = true\n").unwrap();
    assert!(c.mem_agent.enable && c.mem_agent.memcg.swap);
    assert!(file_err("mem_agent_memcg_period_secs = 0").contains("mem_agent_memcg_period_secs"));
}
