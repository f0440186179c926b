//! GetMetrics: the Prometheus text exposition of the agent, the guest and the containers.

use protocols::agent;

use crate::agent::Agent;
use crate::error::Result;

pub async fn get_metrics(agent: &Agent, _req: agent::GetMetricsRequest) -> Result<agent::Metrics> {
    let text = crate::metrics::gather(agent).await?;
    Ok(agent::Metrics {
        metrics: text,
        ..Default::default()
    })
}
