//! The memory agent in a real VM (see docs/vm.md): the Debian guest kernel has MGLRU, which the
//! agent turns on (`/sys/kernel/mm/lru_gen/enabled`, debugfs `lru_gen`). With short periods on
//! the kernel command line, the agent's log stream (vsock port 1025) shows memcg aging rounds,
//! a completed compaction, and — after the debug console read a file from a virtio-fs sandbox
//! storage, whose page cache is the guest's only evictable memory (the initramfs is tmpfs, there
//! is no swap) — an eviction that freed pages. MemAgentMemcgSet / MemAgentCompactSet then change the running
//! settings, and the task stops with the agent at power-off.
//!
//! Skipped with `KATA_SKIP_VM_TESTS=1`, like tests/tests/vm.rs.

use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use protocols::agent::{
    CreateSandboxRequest, DestroySandboxRequest, MemAgentCompactConfig, MemAgentMemcgConfig,
    Storage,
};
use serde_json::Value;
use vmtest::{Assets, VirtioFs, Vm, VmConfig};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// Rounds every 2 s; under TCG on a loaded machine a round may take a while.
const ROUND_TIMEOUT: Duration = Duration::from_secs(120);

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

/// Reads log records until one satisfies `pred`; returns it. Every line must be a JSON record.
fn wait_record(
    reader: &mut std::io::BufReader<UnixStream>,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut seen = Vec::new();
    let mut line: Vec<u8> = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "no log record {what} within {timeout:?}; mem-agent records seen: {seen:#?}"
        );
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => panic!("the log stream closed before {what}; mem-agent records: {seen:#?}"),
            Ok(_) if line.ends_with(b"\n") => {
                let record: Value = serde_json::from_slice(&line).unwrap_or_else(|e| {
                    panic!(
                        "not a JSON record ({e}): {}",
                        String::from_utf8_lossy(&line)
                    )
                });
                line.clear();
                if pred(&record) {
                    return record;
                }
                if record["subsystem"] == "mem-agent" {
                    seen.push(record);
                }
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("reading the log stream: {e}"),
        }
    }
}

/// Reads the debug console until `needle` shows up (or `timeout`).
fn read_until(stream: &mut UnixStream, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !String::from_utf8_lossy(&got).contains(needle) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn msg_is(r: &Value, msg: &str) -> bool {
    r["subsystem"] == "mem-agent" && r["msg"] == msg
}

#[test]
fn vm_mem_agent_ages_evicts_and_compacts() {
    if vmtest::skip_requested() {
        eprintln!("VM test skipped: {}=1", vmtest::SKIP_ENV);
        return;
    }
    let assets = Assets::prepare()
        .unwrap_or_else(|e| panic!("the VM tests cannot run: {e:#} (set KATA_SKIP_VM_TESTS=1)"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Served over virtio-fs (page cache in the guest): 16 MiB to read.
    let share = tempfile::Builder::new()
        .prefix("kata-vm-memagent-")
        .tempdir()
        .unwrap();
    let data: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(share.path().join("data.bin"), data).unwrap();
    let cfg = VmConfig {
        name: "memagent".into(),
        virtio_fs: Some(VirtioFs::new(share.path())),
        kernel_params: [
            "agent.log=debug",
            "agent.log_vport=1025",
            "agent.debug_console",
            "agent.debug_console_vport=1026",
            "agent.mem_agent_enable=1",
            "agent.mem_agent_memcg_period_secs=2",
            "agent.mem_agent_memcg_eviction_run_aging_count_min=1",
            "agent.mem_agent_memcg_period_psi_percent_limit=100",
            "agent.mem_agent_memcg_eviction_psi_percent_limit=100",
            "agent.mem_agent_compact_period_secs=2",
            "agent.mem_agent_compact_force_times=0",
            "agent.mem_agent_compact_period_psi_percent_limit=100",
            "agent.mem_agent_compact_psi_percent_limit=100",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..VmConfig::default()
    };
    let mut vm = Vm::start(&assets, cfg).expect("start the VM");
    let boot = rt
        .block_on(vm.wait_ready(BOOT_TIMEOUT))
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "VM memagent: boot-to-first-Check {:.2} s",
        boot.as_secs_f64()
    );
    let mut logs = std::io::BufReader::new(vm.connect_port(1025, Duration::from_secs(30)).unwrap());

    // Started with MGLRU (turned on by the agent).
    let started = wait_record(&mut logs, "memory agent started", ROUND_TIMEOUT, |r| {
        msg_is(r, "memory agent started")
    });
    assert_eq!(started["mglru"], true, "{started}");

    // Memcg aging: the kernel accepted aging commands for at least one lruvec.
    let round = wait_record(&mut logs, "a memcg round that aged", ROUND_TIMEOUT, |r| {
        msg_is(r, "memory agent memcg round done") && r["aged"].as_u64().unwrap_or(0) > 0
    });
    assert_eq!(round["errors"], 0, "{round}");
    // Eviction from the oldest generation once a memcg was aged (count_min = 1).
    let eviction = wait_record(&mut logs, "an eviction pass", ROUND_TIMEOUT, |r| {
        msg_is(r, "memcg eviction done")
    });
    eprintln!("VM memagent: {eviction}");

    // Evictable file pages: a virtio-fs sandbox storage, read from the debug console.
    let (client, _) = rt.block_on(vm.clients()).unwrap();
    let mount = "/run/kata-containers/shared/containers/memagent-vfs";
    rt.block_on(async {
        let mut st = Storage::new();
        st.driver = "virtio-fs".into();
        st.source = vmtest::SHARE_TAG.into();
        st.fstype = "virtiofs".into();
        st.options = vec!["nodev".into()];
        st.mount_point = mount.into();
        let mut req = CreateSandboxRequest::new();
        req.sandbox_id = "memagent".into();
        req.hostname = "memagent".into();
        req.storages.push(st);
        client
            .create_sandbox(ctx(), &req)
            .await
            .unwrap_or_else(|e| panic!("CreateSandbox with a virtio-fs storage: {e:?}"));
    });
    let mut console = vm.connect_port(1026, Duration::from_secs(30)).unwrap();
    let script =
        format!("cat {mount}/data.bin > /dev/null; grep file /proc/meminfo; echo read-$((6*7))\n");
    console.write_all(script.as_bytes()).unwrap();
    let answer = read_until(&mut console, "read-42", ROUND_TIMEOUT);
    assert!(
        answer.contains("read-42"),
        "debug console answered {answer:?}"
    );
    let _ = console.write_all(b"exit\n");
    // Cold after a few agings, they are evicted from the oldest generation.
    let freed = wait_record(
        &mut logs,
        "a memcg round that freed pages",
        ROUND_TIMEOUT,
        |r| {
            msg_is(r, "memory agent memcg round done") && r["pages_freed"].as_u64().unwrap_or(0) > 0
        },
    );
    eprintln!("VM memagent: {freed}");
    assert!(freed["evicted"].as_u64().unwrap_or(0) > 0, "{freed}");

    // Compaction: forced every round, completed by the kernel.
    let compaction = wait_record(&mut logs, "a completed compaction", ROUND_TIMEOUT, |r| {
        msg_is(r, "memory agent compaction done")
    });
    assert_eq!(compaction["outcome"], "Some(Completed)", "{compaction}");
    assert_eq!(compaction["decision"], "Forced", "{compaction}");

    rt.block_on(async {
        let mut req = MemAgentMemcgConfig::new();
        req.swappiness_max = Some(60);
        req.period_secs = Some(3600);
        client.mem_agent_memcg_set(ctx(), &req).await.unwrap();
        let mut req = MemAgentCompactConfig::new();
        req.disabled = Some(true);
        client.mem_agent_compact_set(ctx(), &req).await.unwrap();
    });
    let changed = wait_record(&mut logs, "memcg settings changed", ROUND_TIMEOUT, |r| {
        msg_is(r, "memory agent memcg settings changed")
    });
    let settings = changed["settings"].as_str().unwrap_or_default();
    assert!(
        settings.contains("swappiness_max: 60") && settings.contains("period_secs: 3600"),
        "{changed}"
    );
    let changed = wait_record(
        &mut logs,
        "compaction settings changed",
        ROUND_TIMEOUT,
        |r| msg_is(r, "memory agent compaction settings changed"),
    );
    assert!(
        changed["settings"]
            .as_str()
            .unwrap_or_default()
            .contains("disabled: true"),
        "{changed}"
    );

    // Power-off: the memory agent stops with the agent.
    rt.block_on(async {
        client
            .destroy_sandbox(ctx(), &DestroySandboxRequest::new())
            .await
            .unwrap_or_else(|e| panic!("DestroySandbox: {e:?}"));
    });
    wait_record(&mut logs, "memory agent stopped", ROUND_TIMEOUT, |r| {
        msg_is(r, "memory agent stopped")
    });
    stop_vm(&mut vm);
}

fn stop_vm(vm: &mut Vm) {
    let status = vm
        .wait_exit(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("the guest did not power off:\n{}", vm.diagnostics()));
    let console = vm.console_log();
    assert!(status.success(), "QEMU {status}:\n{console}");
    assert!(
        !console.contains("Kernel panic"),
        "kernel panic:\n{console}"
    );
}
