//! Pass-fd stdio in a real VM: our static `kata-agent` as PID 1 of a QEMU guest, booted with
//! `agent.passfd_listener_port=1027`; the host opens one hybrid-vsock connection to guest port 1027
//! per stream and names it, in CreateContainer/ExecProcess, by the host-side port of the `OK <port>`
//! reply (the peer port the guest sees). Checks, over real vsock: every byte of a few MiB both ways
//! (stdin through `cat` to stdout), stderr on its own stream, stdin's end as the host's half-close,
//! a stream mixed with the ReadStderr RPC, the exit status, and that WaitProcess answers only once
//! the output was all delivered. Uses the harness of tests/tests/vm.rs (docs/vm.md);
//! `KATA_SKIP_VM_TESTS=1` skips it.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;

use protocols::agent::{
    CreateContainerRequest, CreateSandboxRequest, DestroySandboxRequest, ExecProcessRequest,
    ReadStreamRequest, RemoveContainerRequest, SignalProcessRequest, StartContainerRequest,
    WaitProcessRequest,
};
use protocols::agent_ttrpc::AgentServiceClient;
use vmtest::{Assets, Vm, VmConfig, DEFAULT_SHARE_AT, PASSFD_PORT};

macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// Bound on a stream connection (a hang guard, not a measurement).
const STREAM_TIMEOUT: Duration = Duration::from_secs(30);

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(120).as_nanos() as i64)
}

/// What `seq 1 n` prints.
fn seq(n: u32) -> Vec<u8> {
    (1..=n)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect()
}

fn process(args: &[&str]) -> protocols::oci::Process {
    let p = kata_agent_ctl::spec::default_process_json(
        args.iter().map(|s| s.to_string()).collect(),
        false,
    );
    serde_json::from_value(p).expect("process JSON matches the protobuf shape")
}

fn spec(rootfs: &str, args: &[&str]) -> protocols::oci::Spec {
    let args = args.iter().map(|s| s.to_string()).collect();
    let v = kata_agent_ctl::spec::default_spec_json(rootfs, args, false);
    serde_json::from_value(v).expect("spec JSON matches the protobuf shape")
}

/// A pass-fd stream connection and the port that names it.
fn stream(vm: &mut Vm) -> (UnixStream, u32) {
    vm.passfd_stream(STREAM_TIMEOUT)
        .unwrap_or_else(|e| panic!("pass-fd stream: {e:#}"))
}

/// Reads a stream to its end in a thread.
fn drain(mut s: UnixStream) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        s.set_read_timeout(Some(STREAM_TIMEOUT)).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).expect("read a pass-fd stream");
        out
    })
}

/// Writes `data` to a stream in a thread, then half-closes it (end of input).
fn feed(mut s: UnixStream, data: Vec<u8>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        s.set_write_timeout(Some(STREAM_TIMEOUT)).unwrap();
        s.write_all(&data).expect("write a pass-fd stream");
        s.shutdown(Shutdown::Write).unwrap();
        // Kept open until the agent is done with it: closing would also end the guest's sends.
        let mut rest = Vec::new();
        s.set_read_timeout(Some(STREAM_TIMEOUT)).unwrap();
        let _ = s.read_to_end(&mut rest);
    })
}

async fn wait(c: &AgentServiceClient, cid: &str, exec_id: &str) -> i32 {
    let mut req = WaitProcessRequest::new();
    req.container_id = cid.into();
    req.exec_id = exec_id.into();
    c.wait_process(ctx(), &req)
        .await
        .unwrap_or_else(|e| panic!("WaitProcess {cid}/{exec_id}: {e:?}"))
        .status
}

async fn remove(c: &AgentServiceClient, cid: &str) {
    let mut req = RemoveContainerRequest::new();
    req.container_id = cid.into();
    req.timeout = 10;
    c.remove_container(ctx(), &req)
        .await
        .unwrap_or_else(|e| panic!("RemoveContainer {cid}: {e:?}"));
}

async fn start(c: &AgentServiceClient, cid: &str) {
    let mut req = StartContainerRequest::new();
    req.container_id = cid.into();
    c.start_container(ctx(), &req)
        .await
        .unwrap_or_else(|e| panic!("StartContainer {cid}: {e:?}"));
}

async fn read_stderr_all(c: &AgentServiceClient, cid: &str, exec_id: &str) -> Vec<u8> {
    let mut data = Vec::new();
    loop {
        let mut req = ReadStreamRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        req.len = 65536;
        match c.read_stderr(ctx(), &req).await {
            Ok(r) if r.data.is_empty() => return data,
            Ok(r) => data.extend_from_slice(&r.data),
            Err(_) if !data.is_empty() => return data,
            Err(e) => panic!("ReadStderr {cid}/{exec_id}: {e:?}"),
        }
    }
}

/// Compares without printing megabytes on a mismatch.
fn assert_bytes(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: {} bytes, expected {}; first difference at {at:?}",
            got.len(),
            want.len()
        );
    }
}

#[test]
fn vm_passfd_streams_over_hybrid_vsock() {
    if vmtest::skip_requested() {
        note!("VM test skipped: {}=1", vmtest::SKIP_ENV);
        return;
    }
    let assets = Assets::prepare().unwrap_or_else(|e| {
        panic!(
            "the VM tests cannot run: {e:#}\n(set {}=1 to skip them)",
            vmtest::SKIP_ENV
        )
    });
    let share = e2e::vm_share();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = VmConfig {
        name: "passfd".into(),
        kernel_params: vec![format!("agent.passfd_listener_port={PASSFD_PORT}")],
        share: Some((
            share.path().to_path_buf(),
            Some(DEFAULT_SHARE_AT.to_string()),
        )),
        ..VmConfig::default()
    };
    let mut vm = Vm::start(&assets, cfg).expect("start the VM");
    let boot = rt
        .block_on(vm.wait_ready(BOOT_TIMEOUT))
        .unwrap_or_else(|e| panic!("{e:#}"));
    note!(
        "VM passfd: boot-to-first-Check {:.2} s ({:?})",
        boot.as_secs_f64(),
        vm.accel
    );
    let (c, _) = rt.block_on(vm.clients()).unwrap();
    let rootfs = format!("{DEFAULT_SHARE_AT}/rootfs");

    rt.block_on(async {
        let mut req = CreateSandboxRequest::new();
        req.hostname = "passfd".into();
        req.sandbox_id = "vm-passfd".into();
        c.create_sandbox(ctx(), &req).await.unwrap();
    });

    // 1. A container's init with all three streams: 4 MiB of every byte value through `cat`
    //    and back; stderr (written only after stdin's end reached `cat`) on its own stream.
    {
        let input = e2e::pattern(4 << 20, 11);
        let (i, ip) = stream(&mut vm);
        let (o, op) = stream(&mut vm);
        let (e, ep) = stream(&mut vm);
        let mut req = CreateContainerRequest::new();
        req.container_id = "init".into();
        req.exec_id = "init".into();
        req.OCI = protobuf::MessageField::some(spec(
            &rootfs,
            &[
                "sh",
                "-c",
                "cat; echo stdin-closed >&2; seq 1 20000 >&2; exit 3",
            ],
        ));
        req.stdin_port = ip;
        req.stdout_port = op;
        req.stderr_port = ep;
        let (out, err) = (drain(o), drain(e));
        let fed = feed(i, input.clone());
        rt.block_on(async {
            c.create_container(ctx(), &req)
                .await
                .unwrap_or_else(|e| panic!("CreateContainer with pass-fd streams: {e:?}"));
            start(&c, "init").await;
            assert_eq!(wait(&c, "init", "").await, 3, "the init's exit status");
        });
        fed.join().unwrap();
        assert_bytes("init stdout", &out.join().unwrap(), &input);
        let mut want = b"stdin-closed\n".to_vec();
        want.extend(seq(20000));
        assert_bytes("init stderr", &err.join().unwrap(), &want);
        rt.block_on(remove(&c, "init"));
    }

    rt.block_on(async {
        let mut req = CreateContainerRequest::new();
        req.container_id = "box".into();
        req.exec_id = "box".into();
        req.OCI = protobuf::MessageField::some(spec(&rootfs, &["sleep", "100000"]));
        c.create_container(ctx(), &req).await.unwrap();
        start(&c, "box").await;
    });

    // 2. An exec with all three streams: 3 MiB stdin → stdout, then stderr, exit 7.
    {
        let input = e2e::pattern(3 << 20, 5);
        let (i, ip) = stream(&mut vm);
        let (o, op) = stream(&mut vm);
        let (e, ep) = stream(&mut vm);
        let mut req = ExecProcessRequest::new();
        req.container_id = "box".into();
        req.exec_id = "all3".into();
        req.process = protobuf::MessageField::some(process(&[
            "sh",
            "-c",
            "cat; echo eof-seen >&2; seq 1 50000 >&2; exit 7",
        ]));
        req.stdin_port = ip;
        req.stdout_port = op;
        req.stderr_port = ep;
        let (out, err) = (drain(o), drain(e));
        let fed = feed(i, input.clone());
        rt.block_on(async {
            c.exec_process(ctx(), &req)
                .await
                .unwrap_or_else(|e| panic!("ExecProcess with pass-fd streams: {e:?}"));
            assert_eq!(wait(&c, "box", "all3").await, 7, "the exec's exit status");
        });
        fed.join().unwrap();
        assert_bytes("exec stdout", &out.join().unwrap(), &input);
        let mut want = b"eof-seen\n".to_vec();
        want.extend(seq(50000));
        assert_bytes("exec stderr", &err.join().unwrap(), &want);
    }

    // 3. Only stdout on a stream (2 MiB of `seq`); stderr stays on ReadStderr.
    {
        let (o, op) = stream(&mut vm);
        let mut req = ExecProcessRequest::new();
        req.container_id = "box".into();
        req.exec_id = "mixed".into();
        req.process = protobuf::MessageField::some(process(&[
            "sh",
            "-c",
            "seq 1 300000; echo on-the-rpc >&2; exit 5",
        ]));
        req.stdout_port = op;
        let out = drain(o);
        rt.block_on(async {
            c.exec_process(ctx(), &req)
                .await
                .unwrap_or_else(|e| panic!("ExecProcess with a stdout stream: {e:?}"));
            let err = read_stderr_all(&c, "box", "mixed").await;
            assert_eq!(err, b"on-the-rpc\n");
            assert_eq!(wait(&c, "box", "mixed").await, 5);
        });
        assert_bytes("mixed stdout", &out.join().unwrap(), &seq(300000));
    }

    // 4. WaitProcess answers only after the output was delivered: nobody reads the streams
    //    until it has answered, and then all the output is already on the host. The output
    //    (48894 + 4 bytes) fits in vhost-device-vsock's credit window (64 KiB) and in the host
    //    socket's buffer, so nothing but the agent can hold it back; the guest's packets reach
    //    the host in the order they were sent, the WaitProcess reply after the output.
    {
        let (mut o, op) = stream(&mut vm);
        let (mut e, ep) = stream(&mut vm);
        let mut req = ExecProcessRequest::new();
        req.container_id = "box".into();
        req.exec_id = "order".into();
        req.process = protobuf::MessageField::some(process(&[
            "sh",
            "-c",
            "seq 1 10000; echo bye >&2; exit 4",
        ]));
        req.stdout_port = op;
        req.stderr_port = ep;
        rt.block_on(async {
            c.exec_process(ctx(), &req)
                .await
                .unwrap_or_else(|e| panic!("ExecProcess {e:?}"));
            assert_eq!(wait(&c, "box", "order").await, 4);
        });
        for (s, want) in [(&mut o, seq(10000)), (&mut e, b"bye\n".to_vec())] {
            s.set_nonblocking(true).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 65536];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
            assert_bytes("output present when WaitProcess answered", &got, &want);
            // And then the end of the stream.
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(STREAM_TIMEOUT)).unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).expect("end of a pass-fd stream");
            assert!(rest.is_empty(), "{} bytes after the output", rest.len());
        }
    }

    rt.block_on(async {
        let mut req = SignalProcessRequest::new();
        req.container_id = "box".into();
        req.signal = libc::SIGKILL as u32;
        c.signal_process(ctx(), &req).await.unwrap();
        assert_eq!(wait(&c, "box", "").await, 137);
        remove(&c, "box").await;
        c.destroy_sandbox(ctx(), &DestroySandboxRequest::new())
            .await
            .unwrap_or_else(|e| panic!("DestroySandbox: {e:?}"));
    });
    let status = vm
        .wait_exit(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("the guest did not power off:\n{}", vm.diagnostics()));
    assert!(status.success(), "QEMU {status}:\n{}", vm.console_log());
}
