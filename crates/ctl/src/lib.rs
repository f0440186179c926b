//! Library part of `kata-agent-ctl`: argument parsing, request building and the command
//! table, shared by the binary and its tests.

pub mod args;
pub mod bundle;
pub mod commands;
pub mod host;
pub mod request;
pub mod spec;
