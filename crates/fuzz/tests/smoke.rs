//! The short fuzzing run of `cargo test`: a fixed seed, a few thousand requests over every method
//! and a few hundred malformed frames against the debug agent, which must neither panic, nor
//! hang past a deadline, nor leak descriptors or threads between rounds.

use std::time::Duration;

use kata_fuzz::campaign::{self, Config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_seed_campaign_runs_clean() {
    let cfg = Config {
        agent: e2e::binary("kata-agent"),
        seed: 0x5eed,
        cases: 1000,
        frames: 100,
        rounds: 2,
        rootfs: Some(e2e::rootfs()),
        ..Config::default()
    };
    let report = campaign::run(&cfg).await.expect("campaign");
    println!("{report}");
    assert!(report.clean(), "fuzzing found problems:\n{report}");
    assert_eq!(report.rounds, 2);
    assert!(report.outcomes.len() >= 38, "every method was exercised");
    assert!(report.elapsed < Duration::from_secs(3600));
}
