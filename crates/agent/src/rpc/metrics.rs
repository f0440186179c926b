//! GetMetrics: the Prometheus text exposition of the agent and guest.

#![allow(unused_imports)]

use protobuf::well_known_types::empty::Empty;
use protocols::{agent, csi, types};

use crate::error::{AgentError, Result};
use crate::sandbox::Agent;

pub async fn get_metrics(_agent: &Agent, _req: agent::GetMetricsRequest) -> Result<agent::Metrics> {
    Err(AgentError::not_implemented_yet("GetMetrics"))
}
