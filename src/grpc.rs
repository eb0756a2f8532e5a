//! The gRPC edge: ext_authz `Check` and `grpc.health.v1.Health` on one port.

pub mod check;
pub mod coalesce;
pub mod convert;
pub mod service;
pub mod transport;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::Incoming;
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic_health::pb::health_server::{Health, HealthServer};
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
    health: HealthServer<impl Health>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) {
    let routes = Routes {
        authz: service::AuthorizationService::new(check::CheckService::new(engine, options)),
        health,
    };
    transport::serve(transport::Protocol::Http2, listener, routes, shutdown).await
}

const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// The two services by path: health checks, and everything else to the
/// Authorization service (which answers UNIMPLEMENTED for what it does not serve).
struct Routes<H> {
    authz: service::AuthorizationService,
    health: HealthServer<H>,
}

// Not derived: that would ask `H: Clone`, and `HealthServer` shares `H` in an Arc.
impl<H> Clone for Routes<H> {
    fn clone(&self) -> Self {
        Routes {
            authz: self.authz.clone(),
            health: self.health.clone(),
        }
    }
}

impl<H: Health> Service<http::Request<Incoming>> for Routes<H> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Incoming>) -> Self::Future {
        if req.uri().path().starts_with(HEALTH_PREFIX) {
            self.health.call(req)
        } else {
            self.authz.call(req)
        }
    }
}
