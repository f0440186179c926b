//! Exec soak in a real VM: our static `kata-agent` as PID 1 of a QEMU guest (file-descriptor limit
//! 1024), a couple of thousand execs of `/bin/true` run as the Kata shim runs them (stdout read to
//! its end, then WaitProcess). Before the fix, every exec left two descriptors in the agent and
//! exec #491 failed with "Too many open files"; now the agent's descriptors and threads are back
//! to where they were after the loop. Uses the harness of tests/tests/vm.rs (docs/vm.md);
//! `KATA_SKIP_VM_TESTS=1` skips it, `KATA_VM_EXECS` sets the number of execs (default 2000).

use std::path::Path;
use std::time::{Duration, Instant};

use protocols::agent::{
    CreateContainerRequest, CreateSandboxRequest, DestroySandboxRequest, ExecProcessRequest,
    ReadStreamRequest, RemoveContainerRequest, SignalProcessRequest, StartContainerRequest,
    WaitProcessRequest,
};
use protocols::agent_ttrpc::AgentServiceClient;
use serde_json::json;
use vmtest::{Assets, Vm, VmConfig, DEFAULT_SHARE_AT};

macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

fn spec(rootfs: &str, args: &[&str]) -> protocols::oci::Spec {
    let args = args.iter().map(|s| s.to_string()).collect();
    let mut v = kata_agent_ctl::spec::default_spec_json(rootfs, args, false);
    // The guest's /proc, read-only: the probe looks at the agent (PID 1 of the guest) there.
    v["Mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/guestproc", "source": "/proc", "type": "bind",
               "options": ["rbind", "ro"]}),
    );
    serde_json::from_value::<protocols::oci::Spec>(v).expect("spec JSON matches the protobuf shape")
}

async fn read_all(c: &AgentServiceClient, cid: &str, exec_id: &str) -> Vec<u8> {
    let mut data = Vec::new();
    loop {
        let mut req = ReadStreamRequest::new();
        req.container_id = cid.into();
        req.exec_id = exec_id.into();
        req.len = 65536;
        let r = c
            .read_stdout(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("ReadStdout {exec_id}: {e:?}"));
        if r.data.is_empty() {
            return data;
        }
        data.extend_from_slice(&r.data);
    }
}

async fn wait(c: &AgentServiceClient, cid: &str, exec_id: &str) -> i32 {
    let mut req = WaitProcessRequest::new();
    req.container_id = cid.into();
    req.exec_id = exec_id.into();
    c.wait_process(ctx(), &req)
        .await
        .unwrap_or_else(|e| panic!("WaitProcess {exec_id}: {e:?}"))
        .status
}

/// An exec as the shim runs it: stdout to its end (stderr never read), then WaitProcess.
async fn exec(c: &AgentServiceClient, cid: &str, exec_id: &str, args: &[&str]) -> (i32, String) {
    let mut req = ExecProcessRequest::new();
    req.container_id = cid.into();
    req.exec_id = exec_id.into();
    let p = kata_agent_ctl::spec::default_process_json(
        args.iter().map(|s| s.to_string()).collect(),
        false,
    );
    req.process = protobuf::MessageField::some(serde_json::from_value(p).unwrap());
    c.exec_process(ctx(), &req)
        .await
        .unwrap_or_else(|e| panic!("ExecProcess {exec_id} {args:?}: {e:?}"));
    let out = read_all(c, cid, exec_id).await;
    let status = wait(c, cid, exec_id).await;
    (status, String::from_utf8_lossy(&out).into_owned())
}

/// The agent's descriptor count, thread count and resident size (kB), seen from the container.
async fn agent_holdings(c: &AgentServiceClient, cid: &str, tag: &str) -> (usize, u64, u64) {
    let script = "ls /guestproc/1/fd | wc -l; grep -E '^(Threads|VmRSS):' /guestproc/1/status";
    let (status, out) = exec(c, cid, tag, &["sh", "-c", script]).await;
    assert_eq!(status, 0, "{out}");
    let mut lines = out.lines();
    let fds = lines.next().unwrap().trim().parse().unwrap();
    let mut threads = 0;
    let mut rss = 0;
    for l in lines {
        let v = l.split_whitespace().nth(1).unwrap().parse().unwrap();
        if l.starts_with("Threads:") {
            threads = v;
        } else {
            rss = v;
        }
    }
    (fds, threads, rss)
}

#[test]
fn vm_thousands_of_execs_leave_no_descriptor_behind() {
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
    let n: usize = std::env::var("KATA_VM_EXECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let share = e2e::vm_share();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = VmConfig {
        name: "soak".into(),
        share: Some((
            Path::new(share.path()).to_path_buf(),
            Some(DEFAULT_SHARE_AT.to_string()),
        )),
        ..VmConfig::default()
    };
    let mut vm = Vm::start(&assets, cfg).expect("start the VM");
    rt.block_on(vm.wait_ready(BOOT_TIMEOUT))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (c, _) = rt.block_on(vm.clients()).unwrap();
    rt.block_on(async {
        let mut req = CreateSandboxRequest::new();
        req.hostname = "soak".into();
        req.sandbox_id = "vm-soak".into();
        c.create_sandbox(ctx(), &req).await.unwrap();
        let rootfs = format!("{DEFAULT_SHARE_AT}/rootfs");
        let mut req = CreateContainerRequest::new();
        req.container_id = "soak".into();
        req.OCI = protobuf::MessageField::some(spec(&rootfs, &["sleep", "100000"]));
        c.create_container(ctx(), &req).await.unwrap();
        let mut req = StartContainerRequest::new();
        req.container_id = "soak".into();
        c.start_container(ctx(), &req).await.unwrap();

        // Warm-up (the runtime's pools and the allocator's arenas grow to their working size),
        // then the baseline.
        for i in 0..200 {
            assert_eq!(exec(&c, "soak", &format!("warm{i}"), &["true"]).await.0, 0);
        }
        let before = agent_holdings(&c, "soak", "probe-before").await;
        let started = Instant::now();
        for i in 0..n {
            let (status, _) = exec(&c, "soak", &format!("e{i}"), &["/bin/true"]).await;
            assert_eq!(status, 0, "exec #{i}");
        }
        let took = started.elapsed();
        // Idle blocking-pool threads retire after a while; descriptors are released at once.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut after = agent_holdings(&c, "soak", "probe-after0").await;
        let mut k = 1;
        while (after.0 != before.0 || after.1 > before.1) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(2)).await;
            after = agent_holdings(&c, "soak", &format!("probe-after{k}")).await;
            k += 1;
        }
        note!(
            "VM soak: {n} execs in {:.1} s ({:.1} ms each); agent fds {} -> {}, threads {} -> {}, RSS {} kB -> {} kB",
            took.as_secs_f64(),
            took.as_secs_f64() * 1000.0 / n as f64,
            before.0,
            after.0,
            before.1,
            after.1,
            before.2,
            after.2
        );
        assert_eq!(after.0, before.0, "the agent's descriptors grew over {n} execs");
        assert!(after.1 <= before.1, "the agent's threads grew over {n} execs");

        let mut req = SignalProcessRequest::new();
        req.container_id = "soak".into();
        req.signal = libc::SIGKILL as u32;
        c.signal_process(ctx(), &req).await.unwrap();
        assert_eq!(wait(&c, "soak", "").await, 137);
        let mut req = RemoveContainerRequest::new();
        req.container_id = "soak".into();
        req.timeout = 10;
        c.remove_container(ctx(), &req).await.unwrap();
        c.destroy_sandbox(ctx(), &DestroySandboxRequest::new())
            .await
            .unwrap();
    });
    let status = vm
        .wait_exit(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("the guest did not power off:\n{}", vm.diagnostics()));
    assert!(status.success(), "QEMU {status}:\n{}", vm.console_log());
}
