//! The servers' transport: accepts connections and serves HTTP/2 on them with hyper
//! (gRPC), or HTTP/1.1 and HTTP/2 (the ext_authz HTTP service, `src/http_authz.rs`),
//! handing each request to one service.
//!
//! tonic's `Server` does the same through a stack hopwarden does not use: an axum
//! router, error-recovery, timeout and tracing layers, and a boxed request body, each
//! a future or a dynamic call per check (about a tenth of a cached check's
//! instructions). What goes with it: the `grpc-timeout` a client sends is not enforced
//! here. Envoy enforces its own timeout and resets the stream when it passes, and
//! hyper then drops the check (as it does for any client that resets its stream).

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tonic::codegen::{http, Service, StdError};

use super::coalesce::Coalescing;

/// How long to wait before accepting again when the process is out of file
/// descriptors or memory: without a pause the loop would spin on the same error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Concurrent checks per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS), hyper's
/// default made explicit: it bounds what one client can start at once, and Envoy's
/// HTTP/2 pool opens another connection for checks past it.
const MAX_STREAMS: u32 = 200;

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/2 only (gRPC).
    Http2,
    /// HTTP/1.1, or HTTP/2 when the client opens with its preface (Envoy's ext_authz
    /// HTTP service: its cluster may speak either).
    Auto,
}

/// Serves `service` (speaking `protocol`) on every connection `listener` accepts
/// until `shutdown` completes; then stops accepting, asks the open connections to
/// close (HTTP/2 GOAWAY) and returns once their in-flight requests have been answered.
/// Dropping the future (the server's drain timeout aborts it) closes every connection
/// at once.
pub async fn serve<S, B>(
    protocol: Protocol,
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<StdError>,
{
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        // Neither gRPC nor Envoy has a use for a `date` header; Envoy would parse one
        // per answer.
        .auto_date_header(false);
    let mut either = auto::Builder::new(TokioExecutor::new());
    either
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .auto_date_header(false);
    either
        .http1()
        .timer(TokioTimer::new())
        .auto_date_header(false);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if out_of_resources(&e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "accepting a connection failed");
                    continue;
                }
            },
        };
        // Finished connections' tasks, so the set does not grow with every one.
        while connections.try_join_next().is_some() {}
        // Nagle's algorithm would hold small answers for the peer's delayed ACK (40 ms
        // on Linux).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY");
        }
        // Answers finished together leave in one write, and reads are paced so that
        // a batch of checks is answered in pieces (see coalesce.rs).
        let io = TokioIo::new(Coalescing::new(stream));
        let service = TowerToHyperService::new(service.clone());
        match protocol {
            Protocol::Http2 => spawn(
                &mut connections,
                graceful.watch(h2.serve_connection(io, service)),
            ),
            Protocol::Auto => spawn(
                &mut connections,
                graceful.watch(either.serve_connection(io, service).into_owned()),
            ),
        }
    }
    // Closing the listener first: new clients are refused instead of left waiting.
    drop(listener);
    graceful.shutdown().await;
}

/// Runs a connection to its end.
fn spawn<E: std::fmt::Display>(
    connections: &mut JoinSet<()>,
    conn: impl Future<Output = Result<(), E>> + Send + 'static,
) {
    connections.spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    });
}

/// Whether an accept failed for every connection (the process is out of descriptors
/// or memory) rather than for one (a peer that reset before it was accepted).
fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
