//! The listeners' transport: accepts connections, optionally terminates mTLS, and
//! serves HTTP/2 (gRPC), HTTP/1.1 or either (the ext_authz HTTP service) with hyper,
//! handing each request to one service, within the bounds of [`spec::ListenersSpec`]:
//!
//! - at most `max_connections` open per listener: past it a new connection is closed
//!   at once (a queue would only hold the peer's descriptor longer);
//! - a first request within `handshake_timeout` of accept (TLS, HTTP/2 preface and
//!   the request's headers), else the connection is closed;
//! - no request in flight for `idle_timeout`: the connection is asked to close
//!   (HTTP/2 GOAWAY), and closed if the peer does not;
//! - header blocks of at most `max_request_bytes` (hyper refuses larger ones); the
//!   services bound bodies with the same limit, `body_timeout` and the [`budget`].
//!
//! tonic's `Server` would add a stack hopwarden does not use (an axum router,
//! error-recovery, timeout and tracing layers, a boxed body: about a tenth of a cached
//! check's instructions). What goes with it: the `grpc-timeout` a client sends is not
//! enforced here. Envoy enforces its own timeout and resets the stream when it
//! passes, and hyper then drops the check.

pub mod activity;
pub mod budget;
pub mod spec;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::codegen::{http, Service, StdError};

use crate::grpc::coalesce::Coalescing;
use activity::{Activity, Tracked};
use budget::Budget;

/// How long to wait before accepting again when the process is out of file
/// descriptors or memory: without a pause the loop would spin on the same error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Concurrent requests per HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS),
/// hyper's default made explicit: Envoy's HTTP/2 pool opens another connection for
/// checks past it.
const MAX_STREAMS: u32 = 200;

/// At most one "connection limit reached" warning per listener this often.
const CAP_WARN_EVERY: Duration = Duration::from_secs(10);

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/2 only (gRPC).
    Http2,
    /// HTTP/1.1, or HTTP/2 when the client opens with its preface (Envoy's ext_authz
    /// HTTP service: its cluster may speak either).
    Auto,
    /// HTTP/1.1 only (admin).
    Http1,
}

/// The bounds every listener and service applies (from `listeners:` in the config).
#[derive(Debug, Clone)]
pub struct Bounds {
    /// Open connections per listener.
    pub max_connections: usize,
    /// Accept to first request's headers.
    pub handshake_timeout: Duration,
    /// No request in flight for this long closes the connection.
    pub idle_timeout: Duration,
    /// The largest request message or header block.
    pub max_request_bytes: usize,
    /// How long a body may take once its headers came.
    pub body_timeout: Duration,
    /// Request bytes held at once, process-wide.
    pub budget: Arc<Budget>,
}

impl Bounds {
    /// The bounds `spec` sets, with a budget of their own.
    pub fn new(spec: &spec::ListenersSpec) -> Bounds {
        Bounds {
            max_connections: spec.max_connections,
            handshake_timeout: spec.handshake_timeout,
            idle_timeout: spec.idle_timeout,
            max_request_bytes: spec.max_request_bytes,
            body_timeout: spec.body_timeout,
            budget: Budget::new(spec.request_bytes_in_flight),
        }
    }
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds::new(&spec::ListenersSpec::default())
    }
}

/// Serves `service` (speaking `protocol`, over TLS when `tls` is set) on every
/// connection `listener` accepts, within `bounds`, until `shutdown` completes; then
/// stops accepting, asks the open connections to close (HTTP/2 GOAWAY) and returns
/// once their in-flight requests have been answered. Dropping the future (the
/// server's drain timeout aborts it) closes every connection at once.
pub async fn serve<S, B>(
    protocol: Protocol,
    listener: TcpListener,
    service: S,
    bounds: &Bounds,
    tls: Option<Arc<tls::Tls>>,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + Unpin + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<StdError>,
{
    let server = Arc::new(Server {
        protocol,
        builders: Builders::new(bounds),
        service,
        bounds: bounds.clone(),
        tls,
    });
    let permits = Arc::new(Semaphore::new(bounds.max_connections));
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    let last_warned = Mutex::new(None::<Instant>);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            // A finished connection's task keeps its memory (the connection's state is
            // stored in it) until joined: join each as it ends, not at the next accept.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
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
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn_cap(&last_warned, bounds.max_connections, &listener);
            drop(stream);
            continue;
        };
        // Nagle's algorithm would hold small answers for the peer's delayed ACK (40 ms
        // on Linux).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY");
        }
        connections.spawn(server.clone().run(stream, permit, closing_rx.clone()));
    }
    // Closing the listener first: new clients are refused instead of left waiting.
    drop(listener);
    let _ = closing_tx.send(true);
    while connections.join_next().await.is_some() {}
}

fn warn_cap(last: &Mutex<Option<Instant>>, max: usize, listener: &TcpListener) {
    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_none_or(|at| at.elapsed() >= CAP_WARN_EVERY) {
        *last = Some(Instant::now());
        let addr = listener.local_addr().ok();
        tracing::warn!(
            ?addr,
            max_connections = max,
            "connection limit reached; closing new connections"
        );
    }
}

/// hyper's connection settings, one per protocol, made once per listener.
struct Builders {
    http2: http2::Builder<TokioExecutor>,
    auto: auto::Builder<TokioExecutor>,
    http1: http1::Builder,
}

impl Builders {
    fn new(bounds: &Bounds) -> Builders {
        // Flow control: a stream may send one whole message before the service reads
        // it (HTTP/2's minimum window is 65,535).
        let window = u32::try_from(bounds.max_request_bytes + 5)
            .unwrap_or(u32::MAX)
            .max(65_535);
        let header_list = u32::try_from(bounds.max_request_bytes).unwrap_or(u32::MAX);
        // hyper's smallest read buffer is 8 KiB (it panics below).
        let h1_buffer = bounds.max_request_bytes.max(8192);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(MAX_STREAMS)
            .initial_stream_window_size(window)
            .max_header_list_size(header_list)
            // Neither gRPC nor Envoy has a use for a `date` header; Envoy would parse
            // one per answer.
            .auto_date_header(false);
        let mut either = auto::Builder::new(TokioExecutor::new());
        either
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_STREAMS)
            .initial_stream_window_size(window)
            .max_header_list_size(header_list)
            .auto_date_header(false);
        either
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(bounds.handshake_timeout)
            .max_buf_size(h1_buffer)
            .auto_date_header(false);
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(bounds.handshake_timeout)
            .max_buf_size(h1_buffer);
        Builders {
            http2: h2,
            auto: either,
            http1: h1,
        }
    }
}

/// What every connection of one listener shares.
struct Server<S> {
    protocol: Protocol,
    builders: Builders,
    service: S,
    bounds: Bounds,
    tls: Option<Arc<tls::Tls>>,
}

impl<S, B> Server<S>
where
    S: Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + Unpin + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<StdError>,
{
    /// Runs one connection to its end; its slot under the cap is freed with `_permit`.
    async fn run(
        self: Arc<Self>,
        stream: TcpStream,
        _permit: OwnedSemaphorePermit,
        closing: watch::Receiver<bool>,
    ) {
        let activity = Activity::new();
        let Some(tls) = &self.tls else {
            return self.serve_io(stream, activity, closing).await;
        };
        let deadline = Instant::from_std(activity.accepted()) + self.bounds.handshake_timeout;
        let acceptor = tls.acceptor(self.protocol);
        match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => self.serve_io(stream, activity, closing).await,
            // Anyone can fail a handshake: not worth more than a debug line each.
            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!("TLS handshake timed out"),
        }
    }

    async fn serve_io<I>(&self, io: I, activity: Arc<Activity>, closing: watch::Receiver<bool>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Answers finished together leave in one write, and reads are paced so that a
        // batch of checks is answered in pieces (see grpc/coalesce.rs).
        let io = TokioIo::new(Coalescing::new(io));
        let service =
            TowerToHyperService::new(Tracked::new(self.service.clone(), activity.clone()));
        let b = &self.builders;
        match self.protocol {
            Protocol::Http2 => {
                let conn = b.http2.serve_connection(io, service);
                drive(conn, &activity, &self.bounds, closing).await;
            }
            Protocol::Auto => {
                let conn = b.auto.serve_connection(io, service);
                drive(conn, &activity, &self.bounds, closing).await;
            }
            Protocol::Http1 => {
                let conn = b.http1.serve_connection(io, service);
                drive(conn, &activity, &self.bounds, closing).await;
            }
        }
    }
}

/// Runs `conn` until it ends, closing it when it breaks a bound: no first request
/// within the handshake timeout (closed at once), or idle past the idle timeout (or
/// the server closing: asked to close, then closed if it has not after the handshake
/// timeout once idle).
async fn drive<C>(conn: C, activity: &Activity, bounds: &Bounds, mut closing: watch::Receiver<bool>)
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut conn = pin!(conn);
    let accepted = Instant::from_std(activity.accepted());
    // When the connection was asked to close (GOAWAY), if it was.
    let mut asked_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let wake = if !activity.started() {
            accepted + bounds.handshake_timeout
        } else {
            match (activity.idle_since().map(Instant::from_std), asked_at) {
                (None, _) => now + bounds.idle_timeout,
                (Some(idle), None) => idle + bounds.idle_timeout,
                (Some(idle), Some(asked)) => idle.max(asked) + bounds.handshake_timeout,
            }
        };
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            // A first request, or the last in flight ended: the deadline moves.
            () = activity.changed() => {}
            _ = closing.changed(), if asked_at.is_none() => {
                conn.as_mut().graceful_shutdown();
                asked_at = Some(Instant::now());
            }
            () = tokio::time::sleep_until(wake) => {
                if !activity.started() {
                    tracing::debug!("no request within the handshake timeout; closing");
                    return;
                }
                let Some(idle) = activity.idle_since().map(Instant::from_std) else {
                    continue;
                };
                match asked_at {
                    None if idle + bounds.idle_timeout <= Instant::now() => {
                        conn.as_mut().graceful_shutdown();
                        asked_at = Some(Instant::now());
                    }
                    Some(asked) if idle.max(asked) + bounds.handshake_timeout <= Instant::now() => {
                        tracing::debug!("asked to close, the peer did not; closing");
                        return;
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Whether an accept failed for every connection (the process is out of descriptors
/// or memory) rather than for one (a peer that reset before it was accepted).
fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
