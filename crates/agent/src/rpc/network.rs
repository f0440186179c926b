//! Network RPCs: interfaces, routes, ARP neighbours and iptables.

#![allow(unused_imports)]

use protobuf::well_known_types::empty::Empty;
use protocols::{agent, csi, types};

use crate::error::{AgentError, Result};
use crate::sandbox::Agent;

pub async fn update_interface(
    _agent: &Agent,
    _req: agent::UpdateInterfaceRequest,
) -> Result<types::Interface> {
    Err(AgentError::not_implemented_yet("UpdateInterface"))
}

pub async fn update_routes(
    _agent: &Agent,
    _req: agent::UpdateRoutesRequest,
) -> Result<agent::Routes> {
    Err(AgentError::not_implemented_yet("UpdateRoutes"))
}

pub async fn list_interfaces(
    _agent: &Agent,
    _req: agent::ListInterfacesRequest,
) -> Result<agent::Interfaces> {
    Err(AgentError::not_implemented_yet("ListInterfaces"))
}

pub async fn list_routes(_agent: &Agent, _req: agent::ListRoutesRequest) -> Result<agent::Routes> {
    Err(AgentError::not_implemented_yet("ListRoutes"))
}

pub async fn add_arp_neighbors(
    _agent: &Agent,
    _req: agent::AddARPNeighborsRequest,
) -> Result<Empty> {
    Err(AgentError::not_implemented_yet("AddARPNeighbors"))
}

pub async fn get_ip_tables(
    _agent: &Agent,
    _req: agent::GetIPTablesRequest,
) -> Result<agent::GetIPTablesResponse> {
    Err(AgentError::not_implemented_yet("GetIPTables"))
}

pub async fn set_ip_tables(
    _agent: &Agent,
    _req: agent::SetIPTablesRequest,
) -> Result<agent::SetIPTablesResponse> {
    Err(AgentError::not_implemented_yet("SetIPTables"))
}
