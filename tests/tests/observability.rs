//! End-to-end tests of what an operator uses on a misbehaving sandbox: the debug console (serial
//! and listener), the log stream to the host, trace export, GetMetrics and devmode.
//!
//! Every side channel that is a vsock port in a VM is given a unix address here
//! (`KATA_AGENT_DEBUG_CONSOLE_ADDR`, `KATA_AGENT_LOG_ADDR`, `KATA_AGENT_TRACE_ADDR`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{ctx, rootfs, AgentOptions, TestAgent};
use protobuf::MessageField;
use protocols::{agent, health, oci};

const WAIT: Duration = Duration::from_secs(30);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Everything read from a terminal or socket so far, filled by a reader thread.
#[derive(Clone, Default)]
struct Transcript(Arc<Mutex<(Vec<u8>, bool)>>);

impl Transcript {
    fn follow(mut reader: impl Read + Send + 'static) -> Transcript {
        let t = Transcript::default();
        let shared = t.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(n) if n > 0 => shared.0.lock().unwrap().0.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    _ => break,
                }
            }
            shared.0.lock().unwrap().1 = true;
        });
        t
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap().0).into_owned()
    }

    fn closed(&self) -> bool {
        self.0.lock().unwrap().1
    }

    /// Waits until `find` finds something in the text after byte `from`.
    fn wait_for<T>(&self, from: usize, what: &str, find: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.text();
            if let Some(v) = text.get(from..).and_then(&find) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; transcript:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().0.len()
    }
}

/// The pids printed by `echo pid-$$-end` (the typed command itself is echoed as `pid-$$-end`).
fn pids_in(text: &str) -> Vec<i32> {
    text.split("pid-")
        .skip(1)
        .filter_map(|s| s.split_once("-end").and_then(|(p, _)| p.parse().ok()))
        .collect()
}

#[test]
fn serial_console_gives_a_shell_and_a_new_one_after_exit() {
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave_path = nix::unistd::ttyname(&pty.slave).unwrap();
    let master: OwnedFd = pty.master;
    let reader = std::fs::File::from(master.try_clone().unwrap());
    let mut writer = std::fs::File::from(master);
    let out = Transcript::follow(reader);

    let agent = TestAgent::start_with(AgentOptions {
        cmdline: Some("agent.debug_console".into()),
        env: vec![("KATA_AGENT_CONSOLE", slave_path.display().to_string())],
        ..Default::default()
    });

    writer.write_all(b"echo pid-$$-end\n").unwrap();
    let first = out.wait_for(0, "the first shell's pid", |t| pids_in(t).first().copied());
    assert!(pid_alive(first));
    writer.write_all(b"echo $((6*7))-answer\n").unwrap();
    out.wait_for(0, "a command's output", |t| {
        t.contains("42-answer").then_some(())
    });

    // The shell exits: the agent reaps it and starts another one on the same console.
    let mark = out.len();
    writer.write_all(b"exit\n").unwrap();
    wait_until("the first shell to be gone", || !pid_alive(first));
    let deadline = Instant::now() + WAIT;
    let second = loop {
        writer.write_all(b"echo pid-$$-end\n").unwrap();
        let found = (0..100).find_map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            pids_in(&out.text()[mark..])
                .into_iter()
                .find(|p| *p != first)
        });
        if let Some(p) = found {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "no new shell; transcript:\n{}\nagent log:\n{}",
            out.text(),
            agent.log()
        );
    };
    assert!(pid_alive(second));
    assert!(
        agent.log().contains("debug console shell exited"),
        "{}",
        agent.log()
    );

    // The shell is not a child of any container and is killed when the agent stops.
    drop(agent);
    wait_until("the console shell to be killed with the agent", || {
        !pid_alive(second)
    });
    drop(pty.slave);
}

/// Reads from a console connection until `pid-N-end` appears.
fn session_pid(out: &Transcript, conn: &mut UnixStream) -> i32 {
    conn.write_all(b"echo pid-$$-end\n").unwrap();
    out.wait_for(0, "the session shell's pid", |t| {
        pids_in(t).first().copied()
    })
}

#[test]
fn listener_console_gives_one_shell_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("console.sock");
    let agent = TestAgent::start_with(AgentOptions {
        cmdline: Some("agent.debug_console agent.debug_console_vport=1026".into()),
        env: vec![(
            "KATA_AGENT_DEBUG_CONSOLE_ADDR",
            format!("unix://{}", sock.display()),
        )],
        ..Default::default()
    });
    wait_until("the console listener", || sock.exists());

    let mut a = UnixStream::connect(&sock).unwrap();
    let a_out = Transcript::follow(a.try_clone().unwrap());
    let mut b = UnixStream::connect(&sock).unwrap();
    let b_out = Transcript::follow(b.try_clone().unwrap());
    let pid_a = session_pid(&a_out, &mut a);
    let pid_b = session_pid(&b_out, &mut b);
    assert_ne!(pid_a, pid_b, "each connection has its own shell");

    // A shell on a pty: `tty` names a pts device, and commands run.
    b.write_all(b"tty; echo $((6*7))-answer\n").unwrap();
    b_out.wait_for(0, "b's output", |t| {
        (t.contains("/dev/pts/") && t.contains("42-answer")).then_some(())
    });
    // It runs as root in the agent's namespaces, outside every container.
    for ns in ["mnt", "pid", "net"] {
        let shell_ns = std::fs::read_link(format!("/proc/{pid_b}/ns/{ns}")).unwrap();
        let agent_ns = std::fs::read_link(format!("/proc/{}/ns/{ns}", agent.pid())).unwrap();
        assert_eq!(shell_ns, agent_ns, "{ns} namespace");
    }

    // The host hangs up: that session's shell is killed (and reaped), the other one lives on.
    a.shutdown(std::net::Shutdown::Both).unwrap();
    drop(a);
    wait_until("the hung-up session's shell to be gone", || {
        !pid_alive(pid_a)
    });
    assert!(pid_alive(pid_b));
    let mark = b_out.len();
    b.write_all(b"echo still-$((1+1))\n").unwrap();
    b_out.wait_for(mark, "b still answering", |t| {
        t.contains("still-2").then_some(())
    });

    // The shell exits: the agent closes the connection.
    b.write_all(b"exit\n").unwrap();
    wait_until("the session to close after exit", || b_out.closed());
    wait_until("the exited shell to be reaped", || !pid_alive(pid_b));

    // A new connection gets a new shell.
    let mut c = UnixStream::connect(&sock).unwrap();
    let c_out = Transcript::follow(c.try_clone().unwrap());
    let pid_c = session_pid(&c_out, &mut c);
    assert!(pid_c != pid_a && pid_c != pid_b);
    drop(agent);
    wait_until("the last shell to be killed with the agent", || {
        !pid_alive(pid_c)
    });
}

fn json_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(str::to_string)
        .collect()
}

#[test]
fn log_stream_reaches_a_late_reader_without_losses() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("log.sock");
    let mut agent = TestAgent::start_with(AgentOptions {
        cmdline: Some("agent.log_vport=1025".into()),
        env: vec![("KATA_AGENT_LOG_ADDR", format!("unix://{}", sock.display()))],
        ..Default::default()
    });
    // Records pile up while no host is connected.
    rt().block_on(async {
        let (c, _) = agent.clients().await;
        for _ in 0..20 {
            c.get_metrics(ctx(), &agent::GetMetricsRequest::new())
                .await
                .unwrap();
        }
    });

    let conn = UnixStream::connect(&sock).unwrap();
    let mut lines = BufReader::new(conn).lines();
    let mut received = Vec::new();
    let rpc_records = |received: &[String]| {
        received
            .iter()
            .filter(|l| l.contains("rpc call from shim to agent"))
            .count()
    };
    while rpc_records(&received) < 20 {
        received.push(lines.next().expect("more records").unwrap());
    }
    // Connected: new records flow to the reader.
    rt().block_on(async {
        let (c, _) = agent.clients().await;
        c.get_metrics(ctx(), &agent::GetMetricsRequest::new())
            .await
            .unwrap();
    });
    while rpc_records(&received) < 21 {
        received.push(lines.next().expect("the new record").unwrap());
    }

    // The agent stops; the stream ends after the last record.
    agent.stop_with(libc::SIGTERM);
    for line in lines {
        received.push(line.unwrap());
    }
    let stderr = json_lines(&agent.log());
    assert_eq!(
        received, stderr,
        "the host gets exactly the records written to stderr"
    );
    let first: serde_json::Value = serde_json::from_str(&received[0]).unwrap();
    for key in [
        "ts",
        "level",
        "msg",
        "name",
        "pid",
        "source",
        "subsystem",
        "version",
    ] {
        assert!(first.get(key).is_some(), "{key} missing in {first}");
    }
    assert!(received.iter().any(|l| l.contains("\"msg\":\"announce\"")));
}

/// Frames sent to a test collector: 8-byte big-endian length, then span JSON.
fn collect_spans(listener: UnixListener) -> Arc<Mutex<Vec<serde_json::Value>>> {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let shared = spans.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let shared = shared.clone();
            std::thread::spawn(move || loop {
                let mut len = [0u8; 8];
                if conn.read_exact(&mut len).is_err() {
                    break;
                }
                let mut body = vec![0u8; u64::from_be_bytes(len) as usize];
                conn.read_exact(&mut body).expect("a whole frame");
                let span: serde_json::Value =
                    serde_json::from_slice(&body).expect("a frame holds JSON");
                shared.lock().unwrap().push(span);
            });
        }
    });
    spans
}

fn find_span(spans: &Mutex<Vec<serde_json::Value>>, name: &str) -> Option<serde_json::Value> {
    spans
        .lock()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
}

#[test]
fn rpc_spans_reach_the_collector_with_their_parents() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("trace.sock");
    let spans = collect_spans(UnixListener::bind(&sock).unwrap());
    let mut agent = TestAgent::start_with(AgentOptions {
        env: vec![
            ("KATA_AGENT_TRACING", "true".into()),
            (
                "KATA_AGENT_TRACE_ADDR",
                format!("unix://{}", sock.display()),
            ),
        ],
        ..Default::default()
    });
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    rt().block_on(async {
        let (c, h) = agent.clients().await;
        let mut with_parent = ctx();
        with_parent.add(
            "traceparent".into(),
            format!("00-{trace_id}-{parent_id}-01"),
        );
        with_parent.add("tracestate".into(), "vendor=x".into());
        c.get_metrics(with_parent, &agent::GetMetricsRequest::new())
            .await
            .unwrap();
        c.get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
            .await
            .unwrap();
        // Failing requests are traced too.
        let mut bad = agent::SignalProcessRequest::new();
        bad.container_id = "no-such-container".into();
        assert!(c.signal_process(ctx(), &bad).await.is_err());
        // Health and stream reads have no span.
        h.check(ctx(), &health::CheckRequest::new()).await.unwrap();
    });

    wait_until("the get_metrics span", || {
        find_span(&spans, "get_metrics").is_some()
    });
    let m = find_span(&spans, "get_metrics").unwrap();
    assert_eq!(m["trace_id"], trace_id, "{m}");
    assert_eq!(m["parent_span_id"], parent_id, "{m}");
    assert_eq!(m["parent_is_remote"], true);
    assert_eq!(m["trace_state"], "vendor=x");
    assert_eq!(m["attributes"]["mod"], "rpc.rs");
    assert!(m["attributes"]["req"].is_string());
    assert_eq!(m["resource"]["service.name"], "kata-agent");
    assert_eq!(m["instrumentation_scope"]["name"], "kata-agent");
    assert!(m["end_time_unix_nano"].as_u64() >= m["start_time_unix_nano"].as_u64());
    wait_until("the signal_process span", || {
        find_span(&spans, "signal_process").is_some()
    });

    // The root span covers the agent's life: it is exported when the agent stops, and spans of
    // requests without a traceparent are its children.
    agent.stop_with(libc::SIGTERM);
    wait_until("the root span", || find_span(&spans, "root-span").is_some());
    let root = find_span(&spans, "root-span").unwrap();
    assert_eq!(root["parent_span_id"], "0000000000000000");
    let g = find_span(&spans, "get_guest_details").expect("get_guest_details span");
    assert_eq!(g["trace_id"], root["trace_id"]);
    assert_eq!(g["parent_span_id"], root["span_id"]);
    assert_ne!(m["trace_id"], root["trace_id"]);
    let names: Vec<String> = spans
        .lock()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    for absent in ["check", "Check", "read_stdout", "write_stdin"] {
        assert!(!names.iter().any(|n| n == absent), "{absent} in {names:?}");
    }
}

#[test]
fn tracing_without_a_collector_does_not_disturb_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = TestAgent::start_with(AgentOptions {
        cmdline: Some("agent.trace".into()),
        env: vec![(
            "KATA_AGENT_TRACE_ADDR",
            format!("unix://{}", dir.path().join("nobody.sock").display()),
        )],
        ..Default::default()
    });
    rt().block_on(async {
        let (c, _) = agent.clients().await;
        for _ in 0..50 {
            c.get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
                .await
                .unwrap();
        }
    });
    wait_until("the export failure to be logged", || {
        agent.log().contains("cannot export spans")
    });
    assert_eq!(
        agent.log().matches("cannot export spans").count(),
        1,
        "reported once"
    );
    assert!(agent.stop_with(libc::SIGTERM).success());
}

/// One parsed sample of the Prometheus text format.
#[derive(Debug, Clone)]
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Family {
    help: String,
    kind: String,
    samples: Vec<Sample>,
}

/// A strict parser of the text exposition format (v0.0.4) as far as the agent uses it.
fn parse_prometheus(text: &str) -> Vec<(String, Family)> {
    let mut families: Vec<(String, Family)> = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(
                families.iter().all(|(n, _)| n != name),
                "family {name} declared twice"
            );
            families.push((
                name.to_string(),
                Family {
                    help: help.to_string(),
                    ..Default::default()
                },
            ));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            let (last, fam) = families.last_mut().expect("TYPE after HELP");
            assert_eq!(last, name, "TYPE for the family just declared");
            assert!(["counter", "gauge"].contains(&kind), "{kind}");
            fam.kind = kind.to_string();
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line}");
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("bad sample line {line}"),
        };
        let mut labels = BTreeMap::new();
        let mut rest = rest;
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end;
            let mut previous: Option<String> = None;
            loop {
                let start = chars.peek().expect("label or }").0;
                if body[start..].starts_with('}') {
                    end = Some(start + 1);
                    break;
                }
                let eq = body[start..].find("=\"").expect("label=\"") + start;
                let key = body[start..eq].to_string();
                if let Some(p) = &previous {
                    assert!(p < &key, "labels sorted by name in {line}");
                }
                for _ in start..eq + 2 {
                    chars.next();
                }
                let mut value = String::new();
                loop {
                    let (_, c) = chars.next().expect("closing quote");
                    match c {
                        '\\' => match chars.next().expect("escape").1 {
                            'n' => value.push('\n'),
                            other => value.push(other),
                        },
                        '"' => break,
                        other => value.push(other),
                    }
                }
                previous = Some(key.clone());
                labels.insert(key, value);
                if let Some((_, ',')) = chars.peek() {
                    chars.next();
                }
            }
            rest = &body[end.unwrap()..];
        }
        let value: f64 = rest
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("value in {line}"));
        let (fam_name, fam) = families.last_mut().expect("sample after HELP/TYPE");
        assert_eq!(fam_name, name, "sample of the family just declared");
        fam.samples.push(Sample { labels, value });
    }
    families
}

fn samples<'a>(families: &'a [(String, Family)], name: &str) -> &'a [Sample] {
    &families
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("family {name} missing"))
        .1
        .samples
}

fn value(families: &[(String, Family)], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(families, name)
        .iter()
        .find(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no {name} sample with {labels:?}"))
        .value
}

fn items(families: &[(String, Family)], name: &str) -> Vec<String> {
    samples(families, name)
        .iter()
        .map(|s| s.labels["item"].clone())
        .collect()
}

fn container_spec(cgroup: &str) -> oci::Spec {
    let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut p = oci::Process::new();
    p.Args = strs(&[
        "sh",
        "-c",
        "dd if=/dev/zero of=/tmp/f bs=1k count=64; sleep 1000",
    ]);
    p.Env = strs(&["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
    p.Cwd = "/".into();
    p.User = MessageField::some(oci::User::new());
    let mut s = oci::Spec::new();
    s.Version = "1.1.0".into();
    s.Process = MessageField::some(p);
    let mut root = oci::Root::new();
    root.Path = rootfs().canonicalize().unwrap().display().to_string();
    root.Readonly = true;
    s.Root = MessageField::some(root);
    let mount = |dest: &str, typ: &str| {
        let mut m = oci::Mount::new();
        m.destination = dest.into();
        m.type_ = typ.into();
        m.source = typ.into();
        m
    };
    s.Mounts = vec![mount("/proc", "proc"), mount("/tmp", "tmpfs")];
    let mut l = oci::Linux::new();
    let mut ns = oci::LinuxNamespace::new();
    ns.Type = "mount".into();
    l.Namespaces = vec![ns];
    l.CgroupsPath = cgroup.into();
    let mut res = oci::LinuxResources::new();
    let mut mem = oci::LinuxMemory::new();
    mem.Limit = 256 << 20;
    res.Memory = MessageField::some(mem);
    let mut pids = oci::LinuxPids::new();
    pids.Limit = 64;
    res.Pids = MessageField::some(pids);
    l.Resources = MessageField::some(res);
    s.Linux = MessageField::some(l);
    s
}

#[test]
fn metrics_are_valid_prometheus_text_with_every_family() {
    let agent = TestAgent::start();
    let cid = "obs-metrics";
    let cgroup = format!("kata-e2e-obs-{}-metrics", std::process::id());
    rt().block_on(async {
        let (c, _) = agent.clients().await;
        let scrape = || async {
            c.get_metrics(ctx(), &agent::GetMetricsRequest::new())
                .await
                .unwrap()
                .metrics
        };
        let first = parse_prometheus(&scrape().await);
        let names: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "families sorted by name");
        for (name, fam) in &first {
            assert!(!fam.samples.is_empty(), "{name} has no series");
            assert!(!fam.help.is_empty() && !fam.kind.is_empty(), "{name}");
        }
        for name in [
            "kata_agent_scrape_count",
            "kata_agent_threads",
            "kata_agent_total_time",
            "kata_agent_total_vm",
            "kata_agent_total_rss",
            "kata_agent_proc_status",
            "kata_agent_io_stat",
            "kata_agent_proc_stat",
            "kata_guest_load",
            "kata_guest_tasks",
            "kata_guest_cpu_time",
            "kata_guest_vm_stat",
            "kata_guest_netdev_stat",
            "kata_guest_diskstat",
            "kata_guest_meminfo",
        ] {
            assert!(names.contains(&name), "{name} missing: {names:?}");
        }
        let kind = |n: &str| first.iter().find(|(f, _)| f == n).unwrap().1.kind.clone();
        assert_eq!(kind("kata_agent_scrape_count"), "counter");
        assert_eq!(kind("kata_guest_meminfo"), "gauge");
        let help = |n: &str| first.iter().find(|(f, _)| f == n).unwrap().1.help.clone();
        assert_eq!(help("kata_guest_tasks"), "Guest system load.");
        assert_eq!(help("kata_agent_total_rss"), "Agent process total RSS size");
        assert!(
            names.iter().all(|n| !n.starts_with("process_")),
            "no process_* families"
        );
        assert!(!names.iter().any(|n| n.starts_with("kata_container_")));

        // Sane values.
        assert_eq!(value(&first, "kata_agent_scrape_count", &[]), 1.0);
        assert!(value(&first, "kata_agent_threads", &[]) >= 2.0);
        let rss = value(&first, "kata_agent_total_rss", &[]);
        assert!(rss > 1e5 && rss <= value(&first, "kata_agent_total_vm", &[]));
        assert_eq!(items(&first, "kata_agent_proc_status").len(), 18);
        assert!(value(&first, "kata_agent_proc_status", &[("item", "vmrss")]) > 0.0);
        assert_eq!(items(&first, "kata_guest_meminfo").len(), 58);
        let total = value(&first, "kata_guest_meminfo", &[("item", "mem_total")]);
        assert!(total > 64e6, "MemTotal in bytes: {total}");
        assert!(value(&first, "kata_guest_meminfo", &[("item", "mem_free")]) <= total);
        assert_eq!(items(&first, "kata_guest_load").len(), 3);
        let cur = value(&first, "kata_guest_tasks", &[("item", "cur")]);
        assert!(cur >= 1.0 && cur <= value(&first, "kata_guest_tasks", &[("item", "max")]));
        let cpus: Vec<&str> = samples(&first, "kata_guest_cpu_time")
            .iter()
            .filter(|s| s.labels["item"] == "user")
            .map(|s| s.labels["cpu"].as_str())
            .collect();
        assert!(cpus.contains(&"total") && cpus.contains(&"0"), "{cpus:?}");
        assert!(
            value(
                &first,
                "kata_guest_cpu_time",
                &[("cpu", "total"), ("item", "idle")]
            ) > 0.0
        );
        assert!(samples(&first, "kata_guest_netdev_stat")
            .iter()
            .any(|s| s.labels["interface"] == "lo" && s.labels["item"] == "recv_bytes"));
        assert!(samples(&first, "kata_guest_vm_stat").len() > 10);
        assert_eq!(items(&first, "kata_agent_io_stat").len(), 7);

        // A running container adds its cgroup metrics.
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = cid.into();
        req.OCI = MessageField::some(container_spec(&cgroup));
        c.create_container(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{}", agent.log()));
        let mut start = agent::StartContainerRequest::new();
        start.container_id = cid.into();
        c.start_container(ctx(), &start).await.unwrap();

        let deadline = Instant::now() + WAIT;
        let second = loop {
            let m = parse_prometheus(&scrape().await);
            let ready = m
                .iter()
                .find(|(n, _)| n == "kata_container_pids_current")
                .map(|(_, f)| f.samples.iter().any(|s| s.value >= 1.0))
                .unwrap_or(false);
            if ready {
                break m;
            }
            assert!(Instant::now() < deadline, "no container metrics");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let of = [("container_id", cid)];
        assert!(value(&second, "kata_agent_scrape_count", &[]) >= 2.0);
        assert_eq!(value(&second, "kata_container_pids_limit", &of), 64.0);
        assert_eq!(
            value(&second, "kata_container_memory_limit_bytes", &of),
            (256u64 << 20) as f64
        );
        assert!(value(&second, "kata_container_memory_usage_bytes", &of) > 0.0);
        assert!(value(&second, "kata_container_cpu_usage_seconds_total", &of) >= 0.0);
        let kind = |n: &str| second.iter().find(|(f, _)| f == n).unwrap().1.kind.clone();
        assert_eq!(kind("kata_container_cpu_usage_seconds_total"), "counter");
        assert_eq!(kind("kata_container_memory_usage_bytes"), "gauge");

        let mut rm = agent::RemoveContainerRequest::new();
        rm.container_id = cid.into();
        c.remove_container(ctx(), &rm).await.unwrap();
        let third = parse_prometheus(&scrape().await);
        assert!(
            !third.iter().any(|(n, _)| n.starts_with("kata_container_")),
            "a removed container leaves no series"
        );
    });
}

fn core_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core limit line")
        .to_string();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[4].to_string(), f[5].to_string())
}

#[test]
fn devmode_enables_core_dumps_and_debug_logs() {
    // The agent inherits a zero soft core limit; devmode raises both limits.
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut rl) };
    let saved = rl;
    rl.rlim_cur = 0;
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &rl) };

    let plain = TestAgent::start();
    let dev = TestAgent::start_with(AgentOptions {
        cmdline: Some("agent.devmode".into()),
        // An empty override is ignored: the level comes from devmode.
        env: vec![("KATA_AGENT_LOG_LEVEL", String::new())],
        ..Default::default()
    });
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &saved) };

    assert_eq!(core_limits(plain.pid()).0, "0");
    assert_eq!(
        core_limits(dev.pid()),
        ("unlimited".to_string(), "unlimited".to_string())
    );
    let announce = json_lines(&dev.log())
        .into_iter()
        .find(|l| l.contains("\"msg\":\"announce\""))
        .expect("announce");
    assert!(announce.contains("dev_mode: true"), "{announce}");
    assert!(announce.contains("log_level: Debug"), "{announce}");
}
