//! Wiring: config -> keys, policies, engine -> gRPC server, reload, health.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::admin::Readiness;
use crate::authn::jwks::IssuerKeys;
use crate::authn::jwt::{self, JwtVerifier};
use crate::authn::Authenticator;
use crate::cache::{DecisionCache, TokenCache};
use crate::config::Config;
use crate::decision_log::DecisionLog;
use crate::engine::Engine;
use crate::listener::tls::{Tls, TlsError};
use crate::listener::Bounds;
use crate::policy::{PolicyErrors, PolicySet};
use crate::reload::{self, ReloadTrigger};
use crate::telemetry::otlp::CheckTracer;
use crate::telemetry::Metrics;

/// How long NOT_SERVING is reported before the listener closes on shutdown.
const HEALTH_GRACE: Duration = Duration::from_millis(500);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The crypto self-test failed.
    #[error("{0}")]
    SelfTest(String),
    /// The policies did not load.
    #[error("policies did not load:\n{0}")]
    Policies(PolicyErrors),
    /// A key file did not load.
    #[error("api key files did not load:\n{0}")]
    ApiKeys(crate::apikey::file::KeyFileErrors),
    /// A listen address could not be bound.
    #[error("{listener} {addr}: cannot listen: {source}")]
    Bind {
        /// The config key naming it: `listen`, `http_listen` or `admin.listen`.
        listener: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The decision log could not be opened.
    #[error("cannot open the decision log {target}: {source}")]
    DecisionLog {
        /// Where it was to go.
        target: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The HTTP client for JWKS could not be built.
    #[error("cannot build the JWKS HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// The listeners' TLS files did not load.
    #[error("listeners.tls: {0}")]
    Tls(TlsError),
    /// The shared rate limit store could not be set up.
    #[error("{0}")]
    RateLimitStore(#[from] crate::limits::redis::StoreError),
    /// The OTLP trace exporter could not be set up.
    #[error("{0}")]
    Tracing(crate::telemetry::otlp::TraceExportError),
}

/// A running server.
pub struct ServerHandle {
    /// The bound address (useful with port 0).
    pub local_addr: SocketAddr,
    /// The admin HTTP address, when enabled.
    pub admin_addr: Option<SocketAddr>,
    /// The ext_authz HTTP service's address, when enabled.
    pub http_addr: Option<SocketAddr>,
    /// The engine, for tests and tools.
    pub engine: Arc<Engine>,
    reload: ReloadTrigger,
    key_reload: Option<crate::authn::apikey::reload::KeyReloadTrigger>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    /// The admin server, stopped only once the drain is over: during it `/readyz`
    /// answers 503 and `/metrics` still shows the last checks.
    admin: Option<JoinHandle<()>>,
    drain_timeout: Duration,
}

impl ServerHandle {
    /// Requests a policy reload (what SIGHUP does).
    pub fn reload(&self) {
        self.reload.reload();
        if let Some(keys) = &self.key_reload {
            keys.reload();
        }
    }

    /// Stops accepting checks, lets in-flight ones finish (up to `drain_timeout`), and
    /// returns once the server has stopped.
    ///
    /// Readiness goes first: `/readyz` answers 503 and gRPC health NOT_SERVING for
    /// the grace period while the listeners still answer, so a load balancer (or
    /// Kubernetes during a rolling update) stops sending checks before they close.
    /// The admin server stays up until the drain is over.
    pub async fn shutdown(mut self) -> Result<(), String> {
        // The key loaders go first: the one that reports SERVING once keys load must
        // not undo the NOT_SERVING below.
        for task in &self.background {
            task.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let drained = tokio::time::timeout(self.drain_timeout, &mut self.task).await;
        if let Some(admin) = &self.admin {
            admin.abort();
        }
        let stopped = match drained {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                // The drain deadline is the operator's choice; reaching it is not a
                // failure of ours, so it is logged and the stop is still clean.
                self.task.abort();
                tracing::warn!(timeout = ?self.drain_timeout, "drain timeout: remaining connections were closed");
                Ok(())
            }
        };
        // No check is answered any more: the spans of the last ones go out now (for
        // at most a couple of seconds, whether or not the collector answers).
        self.engine.flush_traces().await;
        stopped
    }
}

/// Loads everything `config` names, binds its listen address and starts serving.
///
/// Policies must load or the server does not start. Keys load in the background:
/// health reports NOT_SERVING until every issuer has keys, and checks naming an
/// issuer without keys answer UNAVAILABLE meanwhile.
pub async fn start(config: Config) -> Result<ServerHandle, StartError> {
    jwt::self_test().map_err(StartError::SelfTest)?;
    let policy_dir = config.spec.policies.clone();
    let set = {
        let dir = policy_dir.clone();
        tokio::task::spawn_blocking(move || PolicySet::load_dir(&dir))
            .await
            .map_err(|e| StartError::SelfTest(e.to_string()))?
            .map_err(StartError::Policies)?
    };
    tracing::info!(dir = %policy_dir.display(), services = set.len(), "policies loaded");

    let metrics = Arc::new(Metrics::new());
    let log = DecisionLog::start(&config.decision_log, metrics.clone()).map_err(|source| {
        StartError::DecisionLog {
            target: format!("{:?}", config.decision_log),
            source,
        }
    })?;
    let http = crate::authn::jwks::http_client()?;
    let issuers = crate::authn::jwks::key_stores(&config.issuers, &http, &metrics);
    let cache = &config.spec.cache;
    let api_keys = Arc::new(
        crate::authn::apikey::ApiKeys::load(&config.spec.api_keys).map_err(StartError::ApiKeys)?,
    );
    let authn = Authenticator::new(
        JwtVerifier::new(issuers.clone()),
        TokenCache::new(cache.token_max_entries, cache.ttl),
        metrics.clone(),
    )
    .with_api_keys(api_keys.clone());
    let limits = &config.spec.rate_limits;
    let store = match (&limits.store, &limits.redis) {
        (crate::config::RateLimitStore::Redis, Some(spec)) => {
            Some(crate::limits::redis::Store::new(spec)?)
        }
        _ => None,
    };
    let mut buckets = crate::limits::Buckets::new(limits.max_buckets);
    if store.is_some() {
        buckets = buckets.shared();
    }
    let buckets = Arc::new(buckets);
    let mut engine = Engine::new(
        set,
        config.services.clone(),
        authn,
        DecisionCache::new(cache.max_entries, cache.ttl, cache.deny_ttl),
        metrics.clone(),
        log,
    )
    .with_buckets(buckets.clone())
    .with_budget_headers(limits.headers_on_allow);
    if let Some(otlp) = &config.spec.tracing.otlp {
        let tracer = CheckTracer::start(otlp, metrics.clone()).map_err(StartError::Tracing)?;
        engine = engine.with_tracing(tracer);
    }
    let engine = Arc::new(engine);

    let bounds = Bounds::new(&config.spec.listeners);
    let tls = match &config.spec.listeners.tls {
        Some(spec) => Some(Tls::load(spec).map_err(StartError::Tls)?),
        None => None,
    };
    let grpc_bind_error = |source| StartError::Bind {
        listener: "listen",
        addr: config.spec.listen,
        source,
    };
    let listener = TcpListener::bind(config.spec.listen)
        .await
        .map_err(grpc_bind_error)?;
    let local_addr = listener.local_addr().map_err(grpc_bind_error)?;
    let http_listener = match config.spec.http_listen {
        None => None,
        Some(addr) => {
            let bind_error = |source| StartError::Bind {
                listener: "http_listen",
                addr,
                source,
            };
            let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
            let local = listener.local_addr().map_err(bind_error)?;
            Some((listener, local))
        }
    };
    let http_addr = http_listener.as_ref().map(|(_, addr)| *addr);
    let (reporter, health_service) = tonic_health::server::health_reporter();
    crate::grpc::set_health(&reporter, false).await;
    let readiness = Arc::new(Readiness::default());

    let mut background = Vec::new();
    if let Some(store) = store {
        let sync = crate::limits::redis::sync(buckets, store, metrics.clone());
        background.push(tokio::spawn(sync));
    }
    if let Some(tls) = &tls {
        background.push(tokio::spawn(tls.clone().watch()));
    }
    let mut admin_task = None;
    let admin_addr = match &config.spec.admin {
        None => None,
        Some(admin) => {
            let bind_error = |source| StartError::Bind {
                listener: "admin.listen",
                addr: admin.listen,
                source,
            };
            let listener = crate::admin::bind(admin.listen).await.map_err(bind_error)?;
            let addr = listener.local_addr().map_err(bind_error)?;
            admin_task = Some(tokio::spawn(crate::admin::serve(
                listener,
                metrics.clone(),
                readiness.clone(),
                bounds.clone(),
                tls.clone().filter(|_| admin.tls),
            )));
            tracing::info!(addr = %addr, "admin listening");
            Some(addr)
        }
    };
    let mut loaders = Vec::new();
    for (issuer, keys) in issuers {
        let (loaded_tx, loaded_rx) = oneshot::channel();
        loaders.push(loaded_rx);
        background.push(tokio::spawn(keep_keys_fresh(
            issuer.spec.issuer.clone(),
            keys,
            issuer.spec.refresh,
            loaded_tx,
        )));
    }
    {
        let reporter = reporter.clone();
        let readiness = readiness.clone();
        background.push(tokio::spawn(async move {
            for loaded in loaders {
                let _ = loaded.await;
            }
            crate::grpc::set_health(&reporter, true).await;
            readiness.set(true);
            tracing::info!("all issuer keys loaded; serving");
        }));
    }

    let (reload, watch) =
        reload::spawn(engine.clone(), policy_dir, config.spec.policy_poll_interval);
    background.push(watch);
    for file in api_keys.files() {
        tracing::info!(file = %file.display(), "api keys loaded");
    }
    let key_reload = api_keys.is_configured().then(|| {
        let (trigger, task) = crate::authn::apikey::reload::spawn(
            api_keys.clone(),
            metrics.clone(),
            config.spec.policy_poll_interval,
        );
        background.push(task);
        trigger
    });
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let http_engine = engine.clone();
    let grpc_engine = engine.clone();
    let options = crate::grpc::convert::ResponseOptions {
        dynamic_metadata: config.spec.dynamic_metadata,
    };
    let ready_flag = readiness.clone();
    let (http_bounds, http_tls) = (bounds.clone(), tls.clone());
    let task = tokio::spawn(async move {
        // Both listeners close together, after the grace below.
        let (closing_tx, mut closing_rx) = tokio::sync::watch::channel(false);
        let shutdown = async move {
            let _ = shutdown_rx.await;
            ready_flag.set(false);
            // Tell health checkers first and give them a moment to see it, so Envoy
            // moves new checks elsewhere before the listener closes.
            crate::grpc::set_health(&reporter, false).await;
            tokio::time::sleep(HEALTH_GRACE).await;
            let _ = closing_tx.send(true);
        };
        // Validated with the config; a name that no longer parses serves no peer.
        let peer_header = config
            .spec
            .http_peer_header
            .as_deref()
            .and_then(|name| crate::http_authz::peer::check_name(name).ok());
        let http = async move {
            if let Some((listener, _)) = http_listener {
                let closing = async move {
                    let _ = closing_rx.wait_for(|closing| *closing).await;
                };
                crate::http_authz::serve(
                    http_engine,
                    listener,
                    &http_bounds,
                    http_tls,
                    peer_header,
                    closing,
                )
                .await;
            }
        };
        let grpc = crate::grpc::serve(
            grpc_engine,
            options,
            health_service,
            listener,
            &bounds,
            tls,
            shutdown,
        );
        tokio::join!(grpc, http);
    });
    tracing::info!(addr = %local_addr, "hopwarden listening");
    if let Some(addr) = http_addr {
        tracing::info!(addr = %addr, "ext_authz HTTP service listening");
    }
    Ok(ServerHandle {
        local_addr,
        admin_addr,
        http_addr,
        engine,
        reload,
        key_reload,
        shutdown: Some(shutdown_tx),
        task,
        background,
        admin: admin_task,
        drain_timeout: config.spec.drain_timeout,
    })
}

/// Loads an issuer's keys, retrying with backoff until the first success, then
/// refreshes them every `refresh`. A failed refresh keeps the last good keys.
async fn keep_keys_fresh(
    issuer: String,
    keys: Arc<IssuerKeys>,
    refresh: Duration,
    loaded: oneshot::Sender<()>,
) {
    let mut loaded = Some(loaded);
    let mut backoff = Duration::from_millis(500);
    loop {
        let wait = match keys.refresh().await {
            Ok(n) => {
                tracing::info!(issuer = %issuer, keys = n, "issuer keys loaded");
                if let Some(tx) = loaded.take() {
                    let _ = tx.send(());
                }
                refresh
            }
            Err(e) if keys.is_loaded() => {
                tracing::warn!(issuer = %issuer, error = %e, "key refresh failed; keeping the last good keys");
                refresh
            }
            Err(e) => {
                tracing::error!(issuer = %issuer, error = %e, retry_in = ?backoff, "issuer keys not loaded");
                let wait = backoff;
                backoff = (backoff * 2).min(refresh).min(Duration::from_secs(30));
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}
