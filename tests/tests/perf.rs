//! Behaviour behind the performance work: one thread watches the OOM events of every container,
//! RemoveContainer leaves nothing behind without waiting on watchers, ReadStdout returns
//! everything that is ready (up to `len`) in one reply, and execs served by a setup process
//! started ahead of need get their stdio, terminal and pid namespace right.

#[path = "support/mini.rs"]
mod mini;

use e2e::{ctx, AgentOptions};
use mini::{children_of, rt, sh, Mini};
use protobuf::MessageField;
use protocols::{agent, oci};

fn oom_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .map(|c| c.trim() == "oom-watch")
                .unwrap_or(false)
        })
        .count()
}

#[test]
fn oom_events_of_many_containers_on_one_thread() {
    rt().block_on(async {
        let fx = Mini::new("oommany", AgentOptions::default()).await;
        let ids: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
        for id in &ids {
            let mut spec = fx.spec(id, sh("exec sleep 1000"));
            let mut mem = oci::LinuxMemory::new();
            mem.Limit = 24 << 20;
            mem.Swap = 24 << 20;
            let mut res = oci::LinuxResources::new();
            res.Memory = MessageField::some(mem);
            spec.Linux.as_mut().unwrap().Resources = MessageField::some(res);
            fx.run(id, spec).await;
        }
        assert_eq!(oom_threads(fx.agent.pid()), 1, "one OOM watcher thread");
        // Three of them run into their limit.
        for id in &ids[..3] {
            fx.exec(id, "hog", sh("dd if=/dev/zero of=/dev/null bs=64M count=1"))
                .await;
            assert_eq!(fx.wait(id, "hog").await, 137);
        }
        let mut seen = Vec::new();
        for _ in 0..3 {
            let ev =
                fx.c.get_oom_event(ctx(), &agent::GetOOMEventRequest::new())
                    .await
                    .expect("an OOM event");
            seen.push(ev.container_id);
        }
        seen.sort();
        assert_eq!(seen, ids[..3].to_vec());
        assert_eq!(oom_threads(fx.agent.pid()), 1);
        for id in &ids {
            fx.remove(id).await;
        }
        // Removing did not stop the shared watcher.
        assert_eq!(oom_threads(fx.agent.pid()), 1);
        fx.finish().await;
    });
}

#[test]
fn read_stdout_returns_everything_ready_up_to_len() {
    rt().block_on(async {
        let fx = Mini::new("gather", AgentOptions::default()).await;
        fx.run("g1", fx.spec("g1", sh("exec sleep 1000"))).await;
        // 48 separate 1 KiB writes, then a marker on stderr once they are all in the pipe.
        fx.exec(
            "g1",
            "w",
            sh(
                "i=0; while [ $i -lt 48 ]; do printf '%1023d\\n' $i; i=$((i+1)); done; \
                echo done >&2; exec sleep 1000",
            ),
        )
        .await;
        let marker = fx.read("g1", "w", true, 64).await;
        assert_eq!(marker, b"done\n");
        // A len smaller than what is ready: exactly len.
        let first = fx.read("g1", "w", false, 5000).await;
        assert_eq!(first.len(), 5000);
        // The rest, in one reply.
        let rest = fx.read("g1", "w", false, 1 << 20).await;
        assert_eq!(first.len() + rest.len(), 48 * 1024);
        let all = [first, rest].concat();
        let expected: String = (0..48).map(|i| format!("{i:>1023}\n")).collect();
        assert!(all == expected.as_bytes());
        fx.remove("g1").await;
        fx.finish().await;
    });
}

/// The agent's children that are the engine's spare setup process (the sealed copy of the agent,
/// waiting on its sync socket for an exec).
fn spares(pid: u32) -> Vec<i32> {
    children_of(pid)
        .into_iter()
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/exe"))
                .is_ok_and(|e| e.to_string_lossy().starts_with("/memfd:kata-agent"))
        })
        .collect()
}

#[test]
fn execs_after_the_first_use_a_spare_setup_process_that_goes_with_the_last_container() {
    rt().block_on(async {
        let fx = Mini::new("spare", AgentOptions::default()).await;
        let pid = fx.agent.pid();
        let mut spec = fx.spec("s1", sh("exec sleep 1000"));
        // A devpts of its own, for the terminal exec.
        let mut pts = oci::Mount::new();
        pts.destination = "/dev/pts".into();
        pts.type_ = "devpts".into();
        pts.source = "devpts".into();
        pts.options = [
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
        ]
        .map(String::from)
        .to_vec();
        spec.Mounts.push(pts);
        fx.run("s1", spec).await;
        // Creating a container starts none; an exec starts one for the next exec.
        assert!(spares(pid).is_empty());
        fx.exec("s1", "first", sh("echo first")).await;
        assert_eq!(fx.read_all("s1", "first", false).await, b"first\n");
        assert_eq!(fx.wait("s1", "first").await, 0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let spare = loop {
            if let [one] = spares(pid)[..] {
                break one;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no spare setup process"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        // The next exec is the spare (forked into the container's pid namespace): both streams
        // arrive, in the container's pid namespace (not pid 1, the container's init is).
        fx.exec(
            "s1",
            "second",
            sh("echo out $$; echo err >&2; [ -e /proc/1/exe ] && exit 7"),
        )
        .await;
        let out = String::from_utf8(fx.read_all("s1", "second", false).await).unwrap();
        assert!(out.starts_with("out ") && out.trim() != "out 1", "{out:?}");
        assert_eq!(fx.read_all("s1", "second", true).await, b"err\n");
        assert_eq!(fx.wait("s1", "second").await, 7);
        assert!(!spares(pid).contains(&spare), "the spare was used");
        // ... by this exec, not discarded for a fresh setup process.
        assert!(
            fx.agent
                .log()
                .lines()
                .any(|l| l.contains("exec served by the spare setup process")
                    && l.contains(&format!("\"setup_pid\":{spare}"))),
            "the exec did not go through the spare {spare}"
        );
        // A terminal exec through the next spare: its terminal is the container's own pty.
        let mut p = sh("tty; echo tty-ok");
        p.Terminal = true;
        fx.exec("s1", "third", p).await;
        let out = String::from_utf8(fx.read_all("s1", "third", false).await).unwrap();
        assert!(
            out.contains("/dev/pts/") && out.contains("tty-ok"),
            "{out:?}"
        );
        assert_eq!(fx.wait("s1", "third").await, 0);
        // The last container gone, so is the spare, by the time RemoveContainer answers.
        fx.remove("s1").await;
        assert!(spares(pid).is_empty(), "the spare outlived the containers");
        fx.finish().await;
    });
}
