//! Where the side channels (log stream, debug console, trace export) are served, from the
//! configuration.

use anyhow::Result;

use super::AgentConfig;
use crate::endpoint::{Endpoint, CID_HOST, DEFAULT_TRACE_PORT};

impl AgentConfig {
    /// Where the log stream is served: `KATA_AGENT_LOG_ADDR`, else `agent.log_vport`, else nowhere.
    pub fn log_endpoint(&self) -> Result<Option<Endpoint>> {
        Self::side_channel(self.log_addr.as_deref(), self.log_vport)
    }

    /// Where the debug console listens: `KATA_AGENT_DEBUG_CONSOLE_ADDR`, else
    /// `agent.debug_console_vport`, else nowhere (serial console).
    pub fn debug_console_endpoint(&self) -> Result<Option<Endpoint>> {
        Self::side_channel(self.debug_console_addr.as_deref(), self.debug_console_vport)
    }

    /// Where spans are exported: `KATA_AGENT_TRACE_ADDR`, else the host's vsock port 10240.
    pub fn trace_endpoint(&self) -> Result<Endpoint> {
        match self.trace_addr.as_deref() {
            Some(addr) => Endpoint::parse(addr),
            None => Ok(Endpoint::Vsock {
                cid: CID_HOST,
                port: DEFAULT_TRACE_PORT,
            }),
        }
    }

    fn side_channel(addr: Option<&str>, vport: u32) -> Result<Option<Endpoint>> {
        match addr {
            Some(addr) => Endpoint::parse(addr).map(Some),
            None if vport > 0 => Ok(Some(Endpoint::vsock_any(vport))),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_channel_choice() {
        let mut cfg = AgentConfig::default();
        assert_eq!(cfg.log_endpoint().unwrap(), None);
        cfg.log_vport = 1025;
        assert_eq!(cfg.log_endpoint().unwrap(), Some(Endpoint::vsock_any(1025)));
        cfg.log_addr = Some("unix:///tmp/l.sock".into());
        assert_eq!(
            cfg.log_endpoint().unwrap(),
            Some(Endpoint::Unix("/tmp/l.sock".into()))
        );
        assert_eq!(
            cfg.trace_endpoint().unwrap(),
            Endpoint::Vsock {
                cid: 2,
                port: 10240
            }
        );
        assert_eq!(cfg.debug_console_endpoint().unwrap(), None);
    }
}
