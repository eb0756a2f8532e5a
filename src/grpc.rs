//! The gRPC edge: ext_authz `Check` and `grpc.health.v1.Health` on one port.

pub mod check;
pub mod coalesce;
pub mod convert;
pub mod service;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::engine::Engine;

/// The service name health checks may ask about, besides the server-wide `""`.
pub const AUTHZ_SERVICE: &str = "envoy.service.auth.v3.Authorization";

/// Sets the health status of the server and the Authorization service together.
pub async fn set_health(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    reporter.set_service_status("", status).await;
    reporter.set_service_status(AUTHZ_SERVICE, status).await;
}

/// Serves both services on `listener` until `shutdown` completes, then lets
/// in-flight checks finish.
pub async fn serve(
    engine: Arc<Engine>,
    options: convert::ResponseOptions,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(service::AuthorizationService::new(
            check::CheckService::new(engine, options),
        ))
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
}

/// The connections a gRPC server of ours accepts. Public so the benchmark's no-op
/// server (`examples/loadgen.rs`) gets exactly hopwarden's transport.
pub fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<coalesce::Coalescing<tokio::net::TcpStream>>>
{
    // Nagle's algorithm would hold small responses for the peer's delayed ACK (40 ms
    // on Linux): every accepted connection gets TCP_NODELAY. (`Server::tcp_nodelay`
    // only applies when tonic binds the socket itself.)
    // Answers finished together leave in one write (see coalesce.rs).
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(|conn| conn.map(coalesce::Coalescing::new))
}
