//! The gRPC edge: ext_authz `Check` and `grpc.health.v1.Health` on one port.

pub mod check;
pub mod coalesce;
pub mod convert;
pub mod service;

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
use crate::listener::{self, tls::Tls, Bounds, Protocol};

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

/// Serves both services on `listener` (over `tls` when set, within `bounds`) until
/// `shutdown` completes, then lets in-flight checks finish.
pub async fn serve(
    engine: Arc<Engine>,
    options: convert::ResponseOptions,
    health: HealthServer<impl Health>,
    listener: TcpListener,
    bounds: &Bounds,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let checks = check::CheckService::new(engine, options);
    let routes = Routes {
        authz: service::AuthorizationService::new(checks, bounds.clone()),
        health,
    };
    listener::serve(Protocol::Http2, listener, routes, bounds, tls, shutdown).await
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
        if !is_grpc(req.headers()) {
            return Box::pin(async { Ok(not_grpc()) });
        }
        if req.uri().path().starts_with(HEALTH_PREFIX) {
            self.health.call(req)
        } else {
            self.authz.call(req)
        }
    }
}

/// Whether the request says it is gRPC: `application/grpc`, alone or followed by
/// `+format` or `;parameters` (gRPC over HTTP/2, "Requests").
fn is_grpc(headers: &http::HeaderMap) -> bool {
    let Some(value) = headers.get(http::header::CONTENT_TYPE) else {
        return false;
    };
    let Some(rest) = value.as_bytes().strip_prefix(b"application/grpc") else {
        return false;
    };
    matches!(rest.first(), None | Some(b'+' | b';'))
}

/// gRPC over HTTP/2: "If Content-Type does not begin with "application/grpc", gRPC
/// servers SHOULD respond with HTTP status of 415 (Unsupported Media Type). This will
/// prevent other HTTP/2 clients from interpreting a gRPC error response, which uses
/// status 200 (OK), as successful." The grpc-status is grpc-go's (INTERNAL).
fn not_grpc() -> http::Response<Body> {
    let mut response = tonic::Status::internal("invalid gRPC request content-type").into_http();
    *response.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_grpc_content_types_are_grpc() {
        let cases = [
            (Some("application/grpc"), true),
            (Some("application/grpc+proto"), true),
            (Some("application/grpc;charset=utf-8"), true),
            (None, false),
            (Some("application/json"), false),
            (Some("application/grpcx"), false),
            (Some("application/grpc-web"), false),
            (Some("text/plain"), false),
        ];
        for (value, want) in cases {
            let mut headers = http::HeaderMap::new();
            if let Some(v) = value {
                headers.insert(http::header::CONTENT_TYPE, v.parse().unwrap());
            }
            assert_eq!(is_grpc(&headers), want, "{value:?}");
        }
        let refused = not_grpc();
        assert_eq!(refused.status(), 415);
        assert_eq!(refused.headers()["grpc-status"], "13");
    }
}
