//! The gRPC server's transport: accepts connections and serves HTTP/2 on them with
//! hyper, handing each request to one service.
//!
//! tonic's `Server` does the same through a stack hopwarden does not use: an axum
//! router, error-recovery, timeout and tracing layers, and a boxed request body, each
//! a future or a dynamic call per check (about a tenth of a cached check's
//! instructions). Envoy bounds every check with its own timeout, so the server-side
//! `grpc-timeout` enforcement is not missed; a check Envoy has given up on runs to its
//! end, as one in progress does on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tonic::codegen::{http, Service, StdError};

use super::coalesce::Coalescing;

/// How long to wait before accepting again after an accept failed (out of file
/// descriptors, say): without a pause the loop would spin on the same error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `service` on every connection `listener` accepts until `shutdown`
/// completes; then stops accepting, asks the open connections to close (HTTP/2
/// GOAWAY) and returns once their in-flight requests have been answered.
pub async fn serve<S, B>(listener: TcpListener, service: S, shutdown: impl Future<Output = ()>)
where
    S: Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<StdError>,
{
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    let connections = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a gRPC connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Nagle's algorithm would hold small answers for the peer's delayed ACK (40 ms
        // on Linux).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY");
        }
        // Answers finished together leave in one write, and reads are paced so that
        // a batch of checks is answered in pieces (see coalesce.rs).
        let io = TokioIo::new(Coalescing::new(stream));
        let conn = builder.serve_connection(io, TowerToHyperService::new(service.clone()));
        let conn = connections.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "gRPC connection ended with an error");
            }
        });
    }
    // Closing the listener first: new clients are refused instead of left waiting.
    drop(listener);
    connections.shutdown().await;
}
