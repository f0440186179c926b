//! Fuzzing of the agent API against the real agent binary.
//!
//! * [`gen`]: structure-aware requests for every `grpc.AgentService` method, built over protobuf
//!   reflection from an [`arbitrary::Unstructured`] byte source;
//! * [`wire`]: a minimal ttRPC client that frames requests by hand, so that the harness can wait
//!   past a request's deadline (a hang is a finding) and send malformed frames;
//! * [`target`]: the agent under test, started in private mount, network, UTS and IPC namespaces
//!   with the system calls whose effect would leave them (clock, swap, kernel modules, reboot)
//!   answered `EPERM` by a seccomp filter, and a scratch sysfs for CPU and memory hot-plug;
//! * [`campaign`]: runs the cases, checks that the agent neither panics nor hangs past a deadline
//!   nor leaks descriptors or threads, and reports.
//!
//! `cargo run --release -p kata-fuzz -- --help` lists the options; `docs/fuzzing.md` explains how
//! to run it for hours. A short fixed-seed run is part of `cargo test` (`tests/smoke.rs`).

pub mod campaign;
pub mod gen;
pub mod target;
pub mod wire;

use std::path::PathBuf;

/// The wire vectors kept in the repository (the mutation seeds).
pub fn wire_vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../protocols/tests/wire-vectors")
}

/// A small deterministic generator (SplitMix64) that feeds [`arbitrary::Unstructured`]: the same
/// seed gives the same cases.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
