//! The rpc layer: one thin handler per method, grouped by API area. Handlers validate and convert
//! the request, call the domain modules and convert the reply; they hold no state of their own.
//!
//! Every method of `grpc.AgentService` is routed here, and every one is built. Each request is first
//! decided by the agent policy (`policed!`, see `crate::policy`); `grpc.Health` never is.
//!
//! Every method except the stream ones (WriteStdin, ReadStdout, ReadStderr), GetOOMEvent and the
//! mem-agent ones runs through [`crate::traced_rpc!`]: it logs `rpc call from shim to agent` and,
//! with tracing on, runs in a span named as upstream names it (`create_container`,
//! `update_mounts` for UpdateEphemeralMounts, `get_iptables`, ...), parented from the request's
//! `traceparent` metadata.

mod containers;
mod guest;
mod health;
mod io;
mod mem_agent;
mod metrics;
mod network;
mod sandbox;
mod storage;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use protobuf::well_known_types::empty::Empty;
use protocols::{agent, agent_ttrpc, csi, health_ttrpc, types};
use ttrpc::r#async::TtrpcContext;

use crate::agent::Agent;
use crate::error::AgentError;

pub use sandbox::shutdown_cleanup;

/// The agent and health services, ready to register with the ttRPC server.
pub fn services(agent: Arc<Agent>) -> Vec<HashMap<String, ttrpc::r#async::Service>> {
    let rpc = Arc::new(AgentRpc { agent });
    vec![
        agent_ttrpc::create_agent_service(rpc.clone()),
        health_ttrpc::create_health(Arc::new(health::HealthRpc)),
    ]
}

/// Result type of the handlers.
type Reply<T> = ttrpc::Result<T>;

/// The policy gate, the one place AgentService requests are decided: `data.agent_policy.<request
/// message name>` with the request as input (`ReadStreamRequest` for ReadStdout and ReadStderr,
/// `MemAgentMemcgConfig`/`MemAgentCompactConfig` for the mem-agent methods). Runs before the
/// handler does anything; a denied request has no effect. grpc.Health is never gated.
fn allowed<M: protobuf::MessageFull>(req: &M) -> Result<(), AgentError> {
    crate::policy::gate().check(req).map_err(AgentError::from)
}

/// `policed!(req, handler future)`: decides `req`, then runs the handler.
macro_rules! policed {
    ($req:ident, $fut:expr) => {
        async {
            allowed(&$req)?;
            $fut.await
        }
    };
}

struct AgentRpc {
    agent: Arc<Agent>,
}

#[async_trait]
impl agent_ttrpc::AgentService for AgentRpc {
    async fn create_container(
        &self,
        ctx: &TtrpcContext,
        req: agent::CreateContainerRequest,
    ) -> Reply<Empty> {
        crate::traced_rpc!(
            ctx,
            "create_container",
            req,
            policed!(req, containers::create_container(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn start_container(
        &self,
        ctx: &TtrpcContext,
        req: agent::StartContainerRequest,
    ) -> Reply<Empty> {
        crate::traced_rpc!(
            ctx,
            "start_container",
            req,
            policed!(req, containers::start_container(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn remove_container(
        &self,
        ctx: &TtrpcContext,
        req: agent::RemoveContainerRequest,
    ) -> Reply<Empty> {
        crate::traced_rpc!(
            ctx,
            "remove_container",
            req,
            policed!(req, containers::remove_container(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn exec_process(
        &self,
        ctx: &TtrpcContext,
        req: agent::ExecProcessRequest,
    ) -> Reply<Empty> {
        crate::traced_rpc!(
            ctx,
            "exec_process",
            req,
            policed!(req, containers::exec_process(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn signal_process(
        &self,
        ctx: &TtrpcContext,
        req: agent::SignalProcessRequest,
    ) -> Reply<Empty> {
        crate::traced_rpc!(
            ctx,
            "signal_process",
            req,
            policed!(req, containers::signal_process(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn wait_process(
        &self,
        ctx: &TtrpcContext,
        req: agent::WaitProcessRequest,
    ) -> Reply<agent::WaitProcessResponse> {
        crate::traced_rpc!(
            ctx,
            "wait_process",
            req,
            policed!(req, containers::wait_process(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn update_container(
        &self,
        ctx: &TtrpcContext,
        req: agent::UpdateContainerRequest,
    ) -> Reply<Empty> {
        crate::traced_rpc!(
            ctx,
            "update_container",
            req,
            policed!(req, containers::update_container(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn update_ephemeral_mounts(
        &self,
        ctx: &TtrpcContext,
        req: agent::UpdateEphemeralMountsRequest,
    ) -> Reply<Empty> {
        crate::traced_rpc!(
            ctx,
            "update_mounts",
            req,
            policed!(req, storage::update_ephemeral_mounts(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn stats_container(
        &self,
        ctx: &TtrpcContext,
        req: agent::StatsContainerRequest,
    ) -> Reply<agent::StatsContainerResponse> {
        crate::traced_rpc!(
            ctx,
            "stats_container",
            req,
            policed!(req, containers::stats_container(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn pause_container(
        &self,
        ctx: &TtrpcContext,
        req: agent::PauseContainerRequest,
    ) -> Reply<Empty> {
        crate::traced_rpc!(
            ctx,
            "pause_container",
            req,
            policed!(req, containers::pause_container(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn resume_container(
        &self,
        ctx: &TtrpcContext,
        req: agent::ResumeContainerRequest,
    ) -> Reply<Empty> {
        crate::traced_rpc!(
            ctx,
            "resume_container",
            req,
            policed!(req, containers::resume_container(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn remove_stale_virtiofs_share_mounts(
        &self,
        ctx: &TtrpcContext,
        req: agent::RemoveStaleVirtiofsShareMountsRequest,
    ) -> Reply<Empty> {
        crate::traced_rpc!(
            ctx,
            "remove_stale_virtiofs_share_mounts",
            req,
            policed!(
                req,
                guest::remove_stale_virtiofs_share_mounts(&self.agent, req)
            )
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn get_diagnostic_data(
        &self,
        ctx: &TtrpcContext,
        req: agent::GetDiagnosticDataRequest,
    ) -> Reply<agent::GetDiagnosticDataResponse> {
        crate::traced_rpc!(
            ctx,
            "get_diagnostic_data",
            req,
            policed!(req, containers::get_diagnostic_data(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn write_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: agent::WriteStreamRequest,
    ) -> Reply<agent::WriteStreamResponse> {
        crate::logged_rpc!(
            "write_stdin",
            req,
            policed!(req, io::write_stdin(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn read_stdout(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> Reply<agent::ReadStreamResponse> {
        // Decided before anything is read: a denied read consumes no output.
        crate::logged_rpc!(
            "read_stdout",
            req,
            policed!(req, io::read_stdout(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn read_stderr(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> Reply<agent::ReadStreamResponse> {
        crate::logged_rpc!(
            "read_stderr",
            req,
            policed!(req, io::read_stderr(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn close_stdin(&self, ctx: &TtrpcContext, req: agent::CloseStdinRequest) -> Reply<Empty> {
        crate::traced_rpc!(
            ctx,
            "close_stdin",
            req,
            policed!(req, io::close_stdin(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn tty_win_resize(
        &self,
        ctx: &TtrpcContext,
        req: agent::TtyWinResizeRequest,
    ) -> Reply<Empty> {
        crate::traced_rpc!(
            ctx,
            "tty_win_resize",
            req,
            policed!(req, io::tty_win_resize(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn update_interface(
        &self,
        ctx: &TtrpcContext,
        req: agent::UpdateInterfaceRequest,
    ) -> Reply<types::Interface> {
        crate::traced_rpc!(
            ctx,
            "update_interface",
            req,
            policed!(req, network::update_interface(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn update_routes(
        &self,
        ctx: &TtrpcContext,
        req: agent::UpdateRoutesRequest,
    ) -> Reply<agent::Routes> {
        crate::traced_rpc!(
            ctx,
            "update_routes",
            req,
            policed!(req, network::update_routes(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn list_interfaces(
        &self,
        ctx: &TtrpcContext,
        req: agent::ListInterfacesRequest,
    ) -> Reply<agent::Interfaces> {
        crate::traced_rpc!(
            ctx,
            "list_interfaces",
            req,
            policed!(req, network::list_interfaces(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn list_routes(
        &self,
        ctx: &TtrpcContext,
        req: agent::ListRoutesRequest,
    ) -> Reply<agent::Routes> {
        crate::traced_rpc!(
            ctx,
            "list_routes",
            req,
            policed!(req, network::list_routes(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn add_arp_neighbors(
        &self,
        ctx: &TtrpcContext,
        req: agent::AddARPNeighborsRequest,
    ) -> Reply<Empty> {
        crate::traced_rpc!(
            ctx,
            "add_arp_neighbors",
            req,
            policed!(req, network::add_arp_neighbors(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn get_ip_tables(
        &self,
        ctx: &TtrpcContext,
        req: agent::GetIPTablesRequest,
    ) -> Reply<agent::GetIPTablesResponse> {
        crate::traced_rpc!(
            ctx,
            "get_iptables",
            req,
            policed!(req, network::get_ip_tables(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn set_ip_tables(
        &self,
        ctx: &TtrpcContext,
        req: agent::SetIPTablesRequest,
    ) -> Reply<agent::SetIPTablesResponse> {
        crate::traced_rpc!(
            ctx,
            "set_iptables",
            req,
            policed!(req, network::set_ip_tables(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn get_metrics(
        &self,
        ctx: &TtrpcContext,
        req: agent::GetMetricsRequest,
    ) -> Reply<agent::Metrics> {
        crate::traced_rpc!(
            ctx,
            "get_metrics",
            req,
            policed!(req, metrics::get_metrics(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn mem_agent_memcg_set(
        &self,
        _ctx: &TtrpcContext,
        req: agent::MemAgentMemcgConfig,
    ) -> Reply<Empty> {
        crate::logged_rpc!(
            "mem_agent_memcg_set",
            req,
            policed!(req, async { mem_agent::memcg_set(req) })
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn mem_agent_compact_set(
        &self,
        _ctx: &TtrpcContext,
        req: agent::MemAgentCompactConfig,
    ) -> Reply<Empty> {
        crate::logged_rpc!(
            "mem_agent_compact_set",
            req,
            policed!(req, async { mem_agent::compact_set(req) })
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn create_sandbox(
        &self,
        ctx: &TtrpcContext,
        req: agent::CreateSandboxRequest,
    ) -> Reply<Empty> {
        crate::traced_rpc!(
            ctx,
            "create_sandbox",
            req,
            policed!(req, sandbox::create_sandbox(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn destroy_sandbox(
        &self,
        ctx: &TtrpcContext,
        req: agent::DestroySandboxRequest,
    ) -> Reply<Empty> {
        crate::traced_rpc!(
            ctx,
            "destroy_sandbox",
            req,
            policed!(req, sandbox::destroy_sandbox(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn online_cpu_mem(
        &self,
        ctx: &TtrpcContext,
        req: agent::OnlineCPUMemRequest,
    ) -> Reply<Empty> {
        crate::traced_rpc!(
            ctx,
            "online_cpu_mem",
            req,
            policed!(req, storage::online_cpu_mem(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn reseed_random_dev(
        &self,
        ctx: &TtrpcContext,
        req: agent::ReseedRandomDevRequest,
    ) -> Reply<Empty> {
        crate::traced_rpc!(
            ctx,
            "reseed_random_dev",
            req,
            policed!(req, guest::reseed_random_dev(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn get_guest_details(
        &self,
        ctx: &TtrpcContext,
        req: agent::GuestDetailsRequest,
    ) -> Reply<agent::GuestDetailsResponse> {
        crate::traced_rpc!(
            ctx,
            "get_guest_details",
            req,
            policed!(req, guest::get_guest_details(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn mem_hotplug_by_probe(
        &self,
        ctx: &TtrpcContext,
        req: agent::MemHotplugByProbeRequest,
    ) -> Reply<Empty> {
        crate::traced_rpc!(
            ctx,
            "mem_hotplug_by_probe",
            req,
            policed!(req, storage::mem_hotplug_by_probe(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn set_guest_date_time(
        &self,
        ctx: &TtrpcContext,
        req: agent::SetGuestDateTimeRequest,
    ) -> Reply<Empty> {
        crate::traced_rpc!(
            ctx,
            "set_guest_date_time",
            req,
            policed!(req, guest::set_guest_date_time(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn copy_file(&self, ctx: &TtrpcContext, req: agent::CopyFileRequest) -> Reply<Empty> {
        // CopyFile is decided on its prepared form (file type, symlink target; never the data).
        crate::traced_rpc!(ctx, "copy_file", req, async {
            crate::policy::gate()
                .check_copy_file(&req)
                .map_err(AgentError::from)?;
            storage::copy_file(&self.agent, req).await
        })
        .map_err(AgentError::into_ttrpc)
    }

    async fn get_oom_event(
        &self,
        _ctx: &TtrpcContext,
        req: agent::GetOOMEventRequest,
    ) -> Reply<agent::OOMEvent> {
        crate::logged_rpc!(
            "get_oom_event",
            req,
            policed!(req, containers::get_oom_event(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn add_swap(&self, ctx: &TtrpcContext, req: agent::AddSwapRequest) -> Reply<Empty> {
        crate::traced_rpc!(
            ctx,
            "add_swap",
            req,
            policed!(req, storage::add_swap(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn add_swap_path(
        &self,
        ctx: &TtrpcContext,
        req: agent::AddSwapPathRequest,
    ) -> Reply<Empty> {
        crate::traced_rpc!(
            ctx,
            "add_swap_path",
            req,
            policed!(req, storage::add_swap_path(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn get_volume_stats(
        &self,
        ctx: &TtrpcContext,
        req: agent::VolumeStatsRequest,
    ) -> Reply<csi::VolumeStatsResponse> {
        crate::traced_rpc!(
            ctx,
            "get_volume_stats",
            req,
            policed!(req, storage::get_volume_stats(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn resize_volume(
        &self,
        ctx: &TtrpcContext,
        req: agent::ResizeVolumeRequest,
    ) -> Reply<Empty> {
        crate::traced_rpc!(
            ctx,
            "resize_volume",
            req,
            policed!(req, storage::resize_volume(&self.agent, req))
        )
        .map_err(AgentError::into_ttrpc)
    }

    async fn set_policy(&self, ctx: &TtrpcContext, req: agent::SetPolicyRequest) -> Reply<Empty> {
        // Decided by the policy in force (`SetPolicyRequest`) inside the gate itself.
        crate::traced_rpc!(ctx, "set_policy", req, async {
            crate::policy::gate()
                .set_policy(req)
                .await
                .map_err(AgentError::from)?;
            Ok(Empty::new())
        })
        .map_err(AgentError::into_ttrpc)
    }
}
