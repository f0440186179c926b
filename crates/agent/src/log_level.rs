//! The agent's log level: its names (upstream's), parsing and ordering. A leaf module, so that the
//! configuration and the logger can both use it without importing each other.

use std::fmt;
use std::str::FromStr;

use tracing::Level;

/// The agent's log levels, from the most to the least verbose.
///
/// Upstream also has `critical` (aliases `fatal`, `panic`); `tracing` has no such level, so those
/// names parse to [`LogLevel::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
    Trace = 4,
}

impl LogLevel {
    /// The accepted names, for error messages.
    pub const NAMES: &'static str =
        "trace, debug, info, warn, warning, error, critical, fatal, panic";

    pub(crate) fn from_u8(v: u8) -> LogLevel {
        match v {
            0 => LogLevel::Error,
            1 => LogLevel::Warn,
            2 => LogLevel::Info,
            3 => LogLevel::Debug,
            _ => LogLevel::Trace,
        }
    }

    pub(crate) fn of(level: &Level) -> LogLevel {
        match *level {
            Level::ERROR => LogLevel::Error,
            Level::WARN => LogLevel::Warn,
            Level::INFO => LogLevel::Info,
            Level::DEBUG => LogLevel::Debug,
            Level::TRACE => LogLevel::Trace,
        }
    }

    /// The short name used in the `level` key of a record.
    pub fn short_name(self) -> &'static str {
        match self {
            LogLevel::Error => "ERRO",
            LogLevel::Warn => "WARN",
            LogLevel::Info => "INFO",
            LogLevel::Debug => "DEBG",
            LogLevel::Trace => "TRCE",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        })
    }
}

/// Error returned when a log level name is not one of [`LogLevel::NAMES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownLogLevel(pub String);

impl fmt::Display for UnknownLogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown log level {:?} (expected one of {})",
            self.0,
            LogLevel::NAMES
        )
    }
}

impl std::error::Error for UnknownLogLevel {}

impl FromStr for LogLevel {
    type Err = UnknownLogLevel;

    /// Parses the upstream level names (case-sensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "trace" => LogLevel::Trace,
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" | "warning" => LogLevel::Warn,
            "error" | "critical" | "fatal" | "panic" => LogLevel::Error,
            _ => return Err(UnknownLogLevel(s.to_string())),
        })
    }
}
