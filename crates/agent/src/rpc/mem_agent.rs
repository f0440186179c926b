//! MemAgentMemcgSet and MemAgentCompactSet: convert the request (every field optional) and hand
//! it to the running memory agent (`crate::mem_agent`).

use protobuf::well_known_types::empty::Empty;
use protocols::agent;

use crate::config::mem_agent as config;
use crate::error::{AgentError, Result};
use crate::mem_agent;

/// A `uint32` field of the request that the settings keep as `u8`.
fn narrow(field: &str, v: Option<u32>) -> Result<Option<u8>> {
    v.map(|n| {
        u8::try_from(n).map_err(|_| {
            AgentError::invalid_argument(format!("{field} must be between 0 and 255, got {n}"))
        })
    })
    .transpose()
}

pub fn memcg_set(req: agent::MemAgentMemcgConfig) -> Result<Empty> {
    let u = config::MemcgUpdate {
        disabled: req.disabled,
        swap: req.swap,
        swappiness_max: narrow("swappiness_max", req.swappiness_max)?,
        period_secs: req.period_secs,
        period_psi_percent_limit: narrow("period_psi_percent_limit", req.period_psi_percent_limit)?,
        eviction_psi_percent_limit: narrow(
            "eviction_psi_percent_limit",
            req.eviction_psi_percent_limit,
        )?,
        eviction_run_aging_count_min: req.eviction_run_aging_count_min,
    };
    mem_agent::set_memcg(&u)?;
    Ok(Empty::new())
}

pub fn compact_set(req: agent::MemAgentCompactConfig) -> Result<Empty> {
    let u = config::CompactUpdate {
        disabled: req.disabled,
        period_secs: req.period_secs,
        period_psi_percent_limit: narrow("period_psi_percent_limit", req.period_psi_percent_limit)?,
        compact_psi_percent_limit: narrow(
            "compact_psi_percent_limit",
            req.compact_psi_percent_limit,
        )?,
        compact_sec_max: req.compact_sec_max,
        compact_order: narrow("compact_order", req.compact_order)?,
        compact_threshold: req.compact_threshold,
        compact_force_times: req.compact_force_times,
    };
    mem_agent::set_compact(&u)?;
    Ok(Empty::new())
}
