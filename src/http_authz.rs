//! Envoy's ext_authz HTTP service (`http_service` in the filter's config), beside the
//! gRPC one: the same engine, decisions, caches and logs, a cheaper protocol.
//!
//! Envoy sends the client's request line and the allowed headers as a bodiless HTTP
//! request, and treats a 200 as an allow (copying the headers its
//! `allowed_upstream_headers` names into the upstream request) and anything else as
//! the client's answer. With no protobuf to build and parse, Envoy spends about a
//! sixth less CPU per request than on the gRPC service (103 against 122 µs in the
//! benchmark, docs/benchmarks.md).
//! What it gives up: the mTLS peer only arrives if Envoy sends it in the header
//! `http_peer_header` names (see [`peer`]; otherwise rules naming peers do not
//! match), no dynamic metadata, and no `context_extensions`, so the hop and service
//! travel in the path prefix (see [`convert`]).

pub mod convert;
pub mod peer;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderName;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tonic::codegen::{BoxFuture, Service};

use crate::decision::DenyReason;
use crate::engine::{Engine, EngineError};
use crate::listener::{self, tls::Tls, Bounds, Protocol};

/// Serves Envoy's HTTP checks on `listener` (over `tls` when set, within `bounds`)
/// until `shutdown` completes, then lets in-flight checks finish. HTTP/1.1 and HTTP/2
/// (prior knowledge) both work; Envoy spends less per check on HTTP/2.
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    bounds: &Bounds,
    tls: Option<Arc<Tls>>,
    peer_header: Option<HeaderName>,
    shutdown: impl Future<Output = ()>,
) {
    let checks = HttpChecks {
        engine,
        bounds: Arc::new(bounds.clone()),
        peer_header: peer_header.map(Arc::new),
    };
    listener::serve(Protocol::Auto, listener, checks, bounds, tls, shutdown).await
}

/// One HTTP check per request.
#[derive(Clone)]
struct HttpChecks {
    engine: Arc<Engine>,
    bounds: Arc<Bounds>,
    /// `http_peer_header`: where Envoy puts the mTLS peer (see [`peer`]).
    peer_header: Option<Arc<HeaderName>>,
}

impl Service<Request<Incoming>> for HttpChecks {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let engine = self.engine.clone();
        // The body (present only with Envoy's `with_request_body`) is not read: no
        // rule looks at it. One larger than any request is still refused, as gRPC's is.
        let (parts, _body) = req.into_parts();
        if declared_length(&parts.headers).is_some_and(|n| n > self.bounds.max_request_bytes) {
            return Box::pin(async { Ok(refused(StatusCode::PAYLOAD_TOO_LARGE, "too_large")) });
        }
        // What the check holds while it is answered: its header block.
        let size = parts.uri.path().len()
            + parts
                .headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len())
                .sum::<usize>();
        let Some(held) = self.bounds.budget.reserve(size) else {
            return Box::pin(async { Ok(refused(StatusCode::SERVICE_UNAVAILABLE, "unavailable")) });
        };
        let peer_header = self.peer_header.clone();
        Box::pin(async move {
            let _held = held;
            let mut req = match convert::to_authz_request(&parts) {
                Ok(req) => req,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable HTTP check; denying");
                    return Ok(convert::deny_response(&DenyReason::BadRequest));
                }
            };
            if let Some(name) = &peer_header {
                if let Err(e) = peer::take(&mut req, name) {
                    tracing::warn!(error = %e, header = name.as_str(), "unreadable mTLS peer; denying");
                    return Ok(convert::deny_response(&DenyReason::BadRequest));
                }
            }
            Ok(match engine.check(&req).await {
                Ok(outcome) => convert::to_response(&outcome, &req),
                Err(e) => unavailable(&e),
            })
        })
    }
}

/// The `content-length` a request declares.
fn declared_length(headers: &hyper::HeaderMap) -> Option<usize> {
    headers
        .get(hyper::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A check refused before it is read (too large, or the request budget spent): never
/// an allow, since Envoy passes anything but a 200 on to the client.
fn refused(status: StatusCode, error: &'static str) -> Response<Full<Bytes>> {
    tracing::debug!(%status, "HTTP check refused before it was read");
    let body = format!(r#"{{"error":"{error}","message":"authorization unavailable"}}"#);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

/// A server fault: 503, which Envoy passes to the client, so the request is refused
/// (the gRPC service answers UNAVAILABLE for the same faults).
fn unavailable(e: &EngineError) -> Response<Full<Bytes>> {
    tracing::warn!(error = %e, "HTTP check not answered");
    let mut response = Response::new(Full::new(Bytes::from_static(
        br#"{"error":"unavailable","message":"authorization unavailable"}"#,
    )));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
}
