//! grpc.Health: Check and Version. No state, no locks: always answers, even while the agent is busy.

use async_trait::async_trait;
use protocols::health::{
    health_check_response::ServingStatus, CheckRequest, HealthCheckResponse, VersionCheckResponse,
};
use protocols::health_ttrpc;
use ttrpc::r#async::TtrpcContext;

use crate::version;

pub struct HealthRpc;

#[async_trait]
impl health_ttrpc::Health for HealthRpc {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        req: CheckRequest,
    ) -> ttrpc::Result<HealthCheckResponse> {
        crate::logged_rpc!("check", req, async {
            let mut resp = HealthCheckResponse::new();
            resp.status = ServingStatus::SERVING.into();
            Ok(resp)
        })
    }

    async fn version(
        &self,
        _ctx: &TtrpcContext,
        req: CheckRequest,
    ) -> ttrpc::Result<VersionCheckResponse> {
        crate::logged_rpc!("version", req, async {
            let mut resp = VersionCheckResponse::new();
            resp.grpc_version = version::API_VERSION.to_string();
            resp.agent_version = version::VERSION.to_string();
            Ok(resp)
        })
    }
}
