//! The rpc layer: one thin handler per method, grouped by API area. Handlers validate and convert
//! the request, call the domain modules and convert the reply; they hold no state of their own.
//!
//! Every method of `grpc.AgentService` is routed here; a method whose capability is not built yet
//! answers UNIMPLEMENTED with `<Method> is not implemented yet`.

mod containers;
mod guest;
mod health;
mod io;
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

use crate::error::AgentError;
use crate::sandbox::Agent;

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

fn unimplemented<T>(method: &str) -> Reply<T> {
    Err(AgentError::not_implemented_yet(method).into_ttrpc())
}

struct AgentRpc {
    agent: Arc<Agent>,
}

#[async_trait]
impl agent_ttrpc::AgentService for AgentRpc {
    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CreateContainerRequest,
    ) -> Reply<Empty> {
        containers::create_container(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::StartContainerRequest,
    ) -> Reply<Empty> {
        containers::start_container(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::RemoveContainerRequest,
    ) -> Reply<Empty> {
        containers::remove_container(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ExecProcessRequest,
    ) -> Reply<Empty> {
        containers::exec_process(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: agent::SignalProcessRequest,
    ) -> Reply<Empty> {
        containers::signal_process(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: agent::WaitProcessRequest,
    ) -> Reply<agent::WaitProcessResponse> {
        containers::wait_process(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateContainerRequest,
    ) -> Reply<Empty> {
        containers::update_container(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn update_ephemeral_mounts(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateEphemeralMountsRequest,
    ) -> Reply<Empty> {
        storage::update_ephemeral_mounts(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::StatsContainerRequest,
    ) -> Reply<agent::StatsContainerResponse> {
        containers::stats_container(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::PauseContainerRequest,
    ) -> Reply<Empty> {
        containers::pause_container(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ResumeContainerRequest,
    ) -> Reply<Empty> {
        containers::resume_container(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn remove_stale_virtiofs_share_mounts(
        &self,
        _ctx: &TtrpcContext,
        req: agent::RemoveStaleVirtiofsShareMountsRequest,
    ) -> Reply<Empty> {
        guest::remove_stale_virtiofs_share_mounts(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn get_diagnostic_data(
        &self,
        _ctx: &TtrpcContext,
        req: agent::GetDiagnosticDataRequest,
    ) -> Reply<agent::GetDiagnosticDataResponse> {
        containers::get_diagnostic_data(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn write_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: agent::WriteStreamRequest,
    ) -> Reply<agent::WriteStreamResponse> {
        io::write_stdin(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn read_stdout(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> Reply<agent::ReadStreamResponse> {
        io::read_stdout(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn read_stderr(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> Reply<agent::ReadStreamResponse> {
        io::read_stderr(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn close_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CloseStdinRequest,
    ) -> Reply<Empty> {
        io::close_stdin(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn tty_win_resize(
        &self,
        _ctx: &TtrpcContext,
        req: agent::TtyWinResizeRequest,
    ) -> Reply<Empty> {
        io::tty_win_resize(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn update_interface(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateInterfaceRequest,
    ) -> Reply<types::Interface> {
        network::update_interface(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn update_routes(
        &self,
        _ctx: &TtrpcContext,
        req: agent::UpdateRoutesRequest,
    ) -> Reply<agent::Routes> {
        network::update_routes(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn list_interfaces(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ListInterfacesRequest,
    ) -> Reply<agent::Interfaces> {
        network::list_interfaces(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn list_routes(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ListRoutesRequest,
    ) -> Reply<agent::Routes> {
        network::list_routes(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn add_arp_neighbors(
        &self,
        _ctx: &TtrpcContext,
        req: agent::AddARPNeighborsRequest,
    ) -> Reply<Empty> {
        network::add_arp_neighbors(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn get_ip_tables(
        &self,
        _ctx: &TtrpcContext,
        req: agent::GetIPTablesRequest,
    ) -> Reply<agent::GetIPTablesResponse> {
        network::get_ip_tables(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn set_ip_tables(
        &self,
        _ctx: &TtrpcContext,
        req: agent::SetIPTablesRequest,
    ) -> Reply<agent::SetIPTablesResponse> {
        network::set_ip_tables(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn get_metrics(
        &self,
        _ctx: &TtrpcContext,
        req: agent::GetMetricsRequest,
    ) -> Reply<agent::Metrics> {
        metrics::get_metrics(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn mem_agent_memcg_set(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::MemAgentMemcgConfig,
    ) -> Reply<Empty> {
        unimplemented("MemAgentMemcgSet")
    }

    async fn mem_agent_compact_set(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::MemAgentCompactConfig,
    ) -> Reply<Empty> {
        unimplemented("MemAgentCompactSet")
    }

    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: agent::CreateSandboxRequest,
    ) -> Reply<Empty> {
        sandbox::create_sandbox(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: agent::DestroySandboxRequest,
    ) -> Reply<Empty> {
        sandbox::destroy_sandbox(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn online_cpu_mem(
        &self,
        _ctx: &TtrpcContext,
        req: agent::OnlineCPUMemRequest,
    ) -> Reply<Empty> {
        storage::online_cpu_mem(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn reseed_random_dev(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ReseedRandomDevRequest,
    ) -> Reply<Empty> {
        guest::reseed_random_dev(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        req: agent::GuestDetailsRequest,
    ) -> Reply<agent::GuestDetailsResponse> {
        guest::get_guest_details(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn mem_hotplug_by_probe(
        &self,
        _ctx: &TtrpcContext,
        req: agent::MemHotplugByProbeRequest,
    ) -> Reply<Empty> {
        storage::mem_hotplug_by_probe(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn set_guest_date_time(
        &self,
        _ctx: &TtrpcContext,
        req: agent::SetGuestDateTimeRequest,
    ) -> Reply<Empty> {
        guest::set_guest_date_time(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn copy_file(&self, _ctx: &TtrpcContext, req: agent::CopyFileRequest) -> Reply<Empty> {
        storage::copy_file(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn get_oom_event(
        &self,
        _ctx: &TtrpcContext,
        req: agent::GetOOMEventRequest,
    ) -> Reply<agent::OOMEvent> {
        containers::get_oom_event(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn add_swap(&self, _ctx: &TtrpcContext, req: agent::AddSwapRequest) -> Reply<Empty> {
        storage::add_swap(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn add_swap_path(
        &self,
        _ctx: &TtrpcContext,
        req: agent::AddSwapPathRequest,
    ) -> Reply<Empty> {
        storage::add_swap_path(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn get_volume_stats(
        &self,
        _ctx: &TtrpcContext,
        req: agent::VolumeStatsRequest,
    ) -> Reply<csi::VolumeStatsResponse> {
        storage::get_volume_stats(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn resize_volume(
        &self,
        _ctx: &TtrpcContext,
        req: agent::ResizeVolumeRequest,
    ) -> Reply<Empty> {
        storage::resize_volume(&self.agent, req)
            .await
            .map_err(AgentError::into_ttrpc)
    }

    async fn set_policy(&self, _ctx: &TtrpcContext, _req: agent::SetPolicyRequest) -> Reply<Empty> {
        unimplemented("SetPolicy")
    }
}
