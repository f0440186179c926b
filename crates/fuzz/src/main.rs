//! `kata-fuzz`: fuzzes a kata-agent binary. See `docs/fuzzing.md`.

use std::path::PathBuf;
use std::time::Duration;

use kata_fuzz::campaign::{self, Config};

fn usage() -> ! {
    eprintln!(
        "usage: kata-fuzz [--agent PATH] [--seed N] [--cases N] [--frames N] [--rounds N]\n\
         \x20                [--hours H | --minutes M] [--workers N] [--deadline-ms N] [--methods A,B]\n\
         \x20                [--rootfs DIR]\n\
         Runs structure-aware requests of every AgentService method and malformed ttRPC frames\n\
         against a confined agent (run as root). Exits 1 on a panic, a hang past a deadline, a\n\
         descriptor or thread leak, or a crash.\n\
         defaults: target/release/kata-agent, seed 1, 2000 cases and 200 frames a round, 2 rounds"
    );
    std::process::exit(2)
}

fn main() {
    let mut cfg = Config::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        let num = |v: String| v.parse::<u64>().unwrap_or_else(|_| usage());
        match a.as_str() {
            "--agent" => cfg.agent = PathBuf::from(value()),
            "--seed" => cfg.seed = num(value()),
            "--cases" => cfg.cases = num(value()) as usize,
            "--frames" => cfg.frames = num(value()) as usize,
            "--rounds" => cfg.rounds = num(value()) as usize,
            "--hours" => {
                let h: f64 = value().parse().unwrap_or_else(|_| usage());
                cfg.duration = Some(Duration::from_secs_f64(h * 3600.0));
            }
            "--minutes" => cfg.duration = Some(Duration::from_secs(num(value()) * 60)),
            "--workers" => cfg.workers = num(value()) as usize,
            "--deadline-ms" => cfg.deadline = Duration::from_millis(num(value())),
            "--rootfs" => {
                // The agent wants an absolute, canonical root path.
                let dir = PathBuf::from(value());
                cfg.rootfs = Some(std::fs::canonicalize(&dir).unwrap_or(dir));
            }
            "--methods" => cfg.methods = value().split(',').map(str::to_string).collect(),
            _ => usage(),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(campaign::run(&cfg)) {
        Ok(report) => {
            print!("{report}");
            std::process::exit(if report.clean() { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("kata-fuzz: {e:#}");
            std::process::exit(2);
        }
    }
}
