//! Behaviour behind the performance work: one thread watches the OOM events of every container,
//! RemoveContainer leaves nothing behind without waiting on watchers, and ReadStdout returns
//! everything that is ready (up to `len`) in one reply.

#[path = "support/mini.rs"]
mod mini;

use e2e::{ctx, AgentOptions};
use mini::{rt, sh, Mini};
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
