//! Network RPCs: interfaces, routes, ARP neighbours and iptables (domain code in `crate::network`).

use protobuf::well_known_types::empty::Empty;
use protocols::{agent, types};

use crate::agent::Agent;
use crate::error::Result;
use crate::network;

pub async fn update_interface(
    agent: &Agent,
    req: agent::UpdateInterfaceRequest,
) -> Result<types::Interface> {
    network::update_interface(agent, req.interface.as_ref()).await
}

pub async fn update_routes(
    _agent: &Agent,
    req: agent::UpdateRoutesRequest,
) -> Result<agent::Routes> {
    let routes = network::update_routes(req.routes.as_ref()).await?;
    Ok(agent::Routes {
        Routes: routes,
        ..Default::default()
    })
}

pub async fn list_interfaces(
    _agent: &Agent,
    _req: agent::ListInterfacesRequest,
) -> Result<agent::Interfaces> {
    Ok(agent::Interfaces {
        Interfaces: network::list_interfaces().await?,
        ..Default::default()
    })
}

pub async fn list_routes(_agent: &Agent, _req: agent::ListRoutesRequest) -> Result<agent::Routes> {
    Ok(agent::Routes {
        Routes: network::list_routes().await?,
        ..Default::default()
    })
}

pub async fn add_arp_neighbors(
    _agent: &Agent,
    req: agent::AddARPNeighborsRequest,
) -> Result<Empty> {
    network::add_arp_neighbors(req.neighbors.as_ref()).await?;
    Ok(Empty::new())
}

pub async fn get_ip_tables(
    _agent: &Agent,
    req: agent::GetIPTablesRequest,
) -> Result<agent::GetIPTablesResponse> {
    Ok(agent::GetIPTablesResponse {
        data: network::get_ip_tables(req.is_ipv6).await?,
        ..Default::default()
    })
}

pub async fn set_ip_tables(
    _agent: &Agent,
    req: agent::SetIPTablesRequest,
) -> Result<agent::SetIPTablesResponse> {
    Ok(agent::SetIPTablesResponse {
        data: network::set_ip_tables(req.is_ipv6, &req.data).await?,
        ..Default::default()
    })
}
