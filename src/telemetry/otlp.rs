//! One OpenTelemetry span per check, exported over OTLP (docs/tracing.md).
//!
//! The span's parent is the caller's trace context from the check's headers
//! ([`super::trace_context`]), so the check shows inside the request's trace. Sampling
//! follows the parent: a parent that is not sampled costs a few header lookups and
//! nothing else; a check without a parent starts a trace at `root_sample_ratio`.
//!
//! Why not `tracing-opentelemetry` and the SDK's tracer: the check already has a
//! `tracing` span, but every span then pays the OpenTelemetry layer (its extension
//! data, its attribute visitor, a context lookup) whether sampled or not, and the SDK's
//! batch processor wakes its thread through a channel per span and keeps its drop
//! count to itself. Here a sampled check builds the SDK's own `SpanData` once, at the
//! end, and appends it to a bounded batch that a tokio task takes every `interval` (or
//! when `max_batch` spans wait) and hands to `opentelemetry-otlp`'s exporter, as the
//! decision log does with its lines. A full queue or a failed export drops spans and
//! counts them
//! (`hopwarden_trace_spans_dropped_total`); a check never waits for the collector.
//! On a graceful shutdown [`CheckTracer::flush`] exports what is still queued, for at
//! most [`FLUSH_TIMEOUT`], so the last checks' spans arrive and a collector that is
//! down never holds the shutdown up.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanExporter, SpanLinks,
};
use opentelemetry_sdk::Resource;

use super::trace_context::{self, Parent};
use super::Metrics;
use crate::config::{OtlpProtocol, OtlpSpec};
use crate::decision::Decision;
use crate::engine::{EngineError, Outcome};
use crate::request::AuthzRequest;

/// The longest a shutdown waits for the queued spans to be exported (less when
/// `tracing.otlp.timeout` is shorter).
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// The exporter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TraceExportError {
    /// A `tracing.otlp.headers` name or value is not valid in gRPC metadata.
    #[error("tracing.otlp.headers: {0:?} is not a valid gRPC metadata name and value")]
    Header(String),
    /// The OTLP exporter refused its settings.
    #[error("tracing.otlp: {0}")]
    Build(String),
    /// `tracing.otlp.ca_file` could not be read, or holds no PEM certificate.
    #[error("tracing.otlp.ca_file {0}: {1}")]
    CaFile(std::path::PathBuf, String),
}

/// Makes and queues the spans of checks.
pub struct CheckTracer {
    /// Roots (checks without a parent) are sampled when the trace id's low 63 bits are
    /// below this, as the SDK's `TraceIdRatioBased` does; 0: never.
    root_bound: u64,
    ids: RandomIdGenerator,
    scope: InstrumentationScope,
    queue: Arc<Queue>,
    /// Asks the export task to export everything queued now; it answers on the
    /// oneshot when done.
    flushes: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
    /// How long [`CheckTracer::flush`] waits.
    flush_timeout: Duration,
}

/// Finished spans waiting for the exporter task.
struct Queue {
    pending: Mutex<Vec<SpanData>>,
    max: usize,
    /// A full batch (`max_batch` spans) wakes the exporter before its next tick, so a
    /// busy server exports as fast as the collector takes spans instead of `max_queue`
    /// per `interval`; one wake-up per batch, never one per span.
    batch: usize,
    full_batch: tokio::sync::Notify,
    metrics: Arc<Metrics>,
}

/// A sampled check's span, begun.
pub struct Started {
    context: SpanContext,
    parent_span_id: SpanId,
    start: SystemTime,
}

impl CheckTracer {
    /// Builds the exporter named by `spec` and starts its task on the current tokio
    /// runtime. The collector is connected to lazily: a collector that is down now
    /// only drops spans.
    pub fn start(spec: &OtlpSpec, metrics: Arc<Metrics>) -> Result<Self, TraceExportError> {
        let mut exporter = build_exporter(spec)?;
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name(spec.service_name.clone())
                .build(),
        );
        let queue = Arc::new(Queue {
            pending: Mutex::new(Vec::new()),
            max: spec.max_queue,
            batch: spec.max_batch,
            full_batch: tokio::sync::Notify::new(),
            metrics,
        });
        let (flushes, flush_requests) = tokio::sync::mpsc::channel(1);
        tokio::spawn(export_loop(
            queue.clone(),
            exporter,
            flush_requests,
            spec.interval,
            spec.timeout,
            spec.max_batch,
        ));
        Ok(CheckTracer {
            root_bound: (spec.root_sample_ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64,
            ids: RandomIdGenerator::default(),
            scope: InstrumentationScope::builder("hopwarden")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            queue,
            flushes,
            flush_timeout: FLUSH_TIMEOUT.min(spec.timeout),
        })
    }

    /// Exports the spans queued so far and waits for that, at most the flush timeout
    /// ([`FLUSH_TIMEOUT`], or `tracing.otlp.timeout` if shorter); spans still queued
    /// then are dropped and counted (`why="shutdown"`). For a graceful shutdown, once
    /// no more checks are answered.
    pub async fn flush(&self) {
        let (done, finished) = tokio::sync::oneshot::channel();
        let flushed = tokio::time::timeout(self.flush_timeout, async {
            self.flushes.send(done).await.is_ok() && finished.await.is_ok()
        })
        .await;
        if flushed != Ok(true) {
            let left = self.queue.take().len() as u64;
            if left > 0 {
                self.queue.metrics.trace_spans_dropped("shutdown", left);
            }
            tracing::warn!(
                timeout = ?self.flush_timeout,
                dropped = left,
                "trace export did not finish before shutdown"
            );
        }
    }

    /// Begins the check's span when it is sampled; `None` (and no other work) when not.
    pub fn begin(&self, req: &AuthzRequest) -> Option<Started> {
        let parent = trace_context::extract(req);
        let (trace_id, parent_span_id, state) = match parent {
            Some(Parent {
                sampled: Some(false),
                ..
            }) => return None,
            Some(p) => {
                let trace_id = TraceId::from(p.trace_id);
                // B3 may defer the decision to us: the root ratio decides then.
                if p.sampled.is_none() && !self.root_sampled(trace_id) {
                    return None;
                }
                let state = p
                    .trace_state
                    .and_then(|s| s.parse::<TraceState>().ok())
                    .unwrap_or_default();
                (trace_id, SpanId::from(p.span_id), state)
            }
            None if self.root_bound == 0 => return None,
            None => {
                let trace_id = self.ids.new_trace_id();
                if !self.root_sampled(trace_id) {
                    return None;
                }
                (trace_id, SpanId::INVALID, TraceState::default())
            }
        };
        Some(Started {
            context: SpanContext::new(
                trace_id,
                self.ids.new_span_id(),
                TraceFlags::SAMPLED,
                false,
                state,
            ),
            parent_span_id,
            start: SystemTime::now(),
        })
    }

    fn root_sampled(&self, trace_id: TraceId) -> bool {
        let low = u64::from_be_bytes(trace_id.to_bytes()[8..].try_into().unwrap_or_default());
        (low >> 1) < self.root_bound
    }

    /// Ends the span with the check's facts and queues it; drops it (counted) when the
    /// queue is full.
    pub fn end(&self, started: Started, result: &Result<Outcome, EngineError>) {
        let span = SpanData {
            span_context: started.context,
            parent_span_id: started.parent_span_id,
            parent_span_is_remote: started.parent_span_id != SpanId::INVALID,
            span_kind: SpanKind::Server,
            name: Cow::Borrowed("hopwarden check"),
            start_time: started.start,
            end_time: SystemTime::now(),
            attributes: attributes(result),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: match result {
                Ok(_) => Status::Unset,
                Err(e) => Status::error(e.to_string()),
            },
            instrumentation_scope: self.scope.clone(),
        };
        self.queue.push(span);
    }
}

/// The span's attributes: what decided, never a credential (the principal is the
/// token's subject or the SPIFFE ID, never the token).
fn attributes(result: &Result<Outcome, EngineError>) -> Vec<KeyValue> {
    let mut out = Vec::with_capacity(8);
    let outcome = match result {
        Ok(o) => o,
        Err(_) => {
            out.push(KeyValue::new("hopwarden.decision", "error"));
            return out;
        }
    };
    if let Some(service) = &outcome.service {
        out.push(KeyValue::new("hopwarden.service", service.clone()));
    }
    if let Some(hop) = outcome.hop {
        out.push(KeyValue::new("hopwarden.hop", hop.as_str()));
    }
    let decision = &*outcome.decision;
    out.push(KeyValue::new("hopwarden.decision", decision.as_str()));
    let principal = match decision {
        Decision::Allow(a) => Some(&*a.principal),
        Decision::Deny(d) => d.principal.as_deref(),
    };
    if let Some(p) = principal.filter(|p| !p.is_empty()) {
        out.push(KeyValue::new("hopwarden.principal", p.to_string()));
    }
    if let Some(rule) = decision.rule() {
        out.push(KeyValue::new("hopwarden.rule", rule.to_string()));
    }
    if let Decision::Deny(d) = decision {
        out.push(KeyValue::new("hopwarden.reason", d.reason.as_str()));
    }
    out.push(KeyValue::new("hopwarden.cached", outcome.cached));
    out.push(KeyValue::new(
        "http.response.status_code",
        i64::from(decision.http_status()),
    ));
    out
}

impl Queue {
    fn push(&self, span: SpanData) {
        let Ok(mut pending) = self.pending.lock() else {
            self.metrics.trace_spans_dropped("queue_full", 1);
            return;
        };
        if pending.len() >= self.max {
            drop(pending);
            self.metrics.trace_spans_dropped("queue_full", 1);
            return;
        }
        pending.push(span);
        if pending.len() == self.batch {
            drop(pending);
            self.full_batch.notify_one();
        }
    }

    fn take(&self) -> Vec<SpanData> {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }
}

/// Every `interval`, as soon as a batch is full, or when a flush asks, exports what
/// the checks queued, `max_batch` spans per request, each export bounded by `timeout`.
/// Runs until the runtime stops.
async fn export_loop(
    queue: Arc<Queue>,
    exporter: opentelemetry_otlp::SpanExporter,
    mut flushes: tokio::sync::mpsc::Receiver<tokio::sync::oneshot::Sender<()>>,
    interval: Duration,
    timeout: Duration,
    max_batch: usize,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        let flush = tokio::select! {
            _ = tick.tick() => None,
            _ = queue.full_batch.notified() => None,
            Some(done) = flushes.recv() => Some(done),
        };
        export_queued(&queue, &exporter, timeout, max_batch, &mut failing).await;
        if let Some(done) = flush {
            let _ = done.send(());
        }
    }
}

/// Exports everything queued now; a failed or timed-out export drops its spans
/// (counted) and is logged once until the collector answers again.
async fn export_queued(
    queue: &Queue,
    exporter: &opentelemetry_otlp::SpanExporter,
    timeout: Duration,
    max_batch: usize,
    failing: &mut bool,
) {
    let mut spans = queue.take();
    while !spans.is_empty() {
        let rest = spans.split_off(spans.len().min(max_batch));
        let n = spans.len() as u64;
        let result = tokio::time::timeout(timeout, exporter.export(spans)).await;
        match result {
            Ok(Ok(())) => {
                queue.metrics.trace_spans_exported(n);
                if *failing {
                    tracing::info!("trace export: the collector answers again");
                    *failing = false;
                }
            }
            Ok(Err(e)) => {
                queue.metrics.trace_spans_dropped("export_failed", n);
                if !*failing {
                    tracing::warn!(error = %e, dropped = n, "trace export failed: spans dropped until the collector answers");
                    *failing = true;
                }
            }
            Err(_) => {
                queue.metrics.trace_spans_dropped("export_failed", n);
                if !*failing {
                    tracing::warn!(
                        ?timeout,
                        dropped = n,
                        "trace export timed out: spans dropped until the collector answers"
                    );
                    *failing = true;
                }
            }
        }
        spans = rest;
    }
}

/// The PEM text of `tracing.otlp.ca_file`, checked to hold a certificate.
fn read_ca(path: &std::path::Path) -> Result<Vec<u8>, TraceExportError> {
    let fail = |why: String| TraceExportError::CaFile(path.to_path_buf(), why);
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    // Read here so a wrong file is a start-up error, not a failed export per batch.
    reqwest::Certificate::from_pem_bundle(&pem)
        .ok()
        .filter(|certs| !certs.is_empty())
        .ok_or_else(|| fail("no PEM certificate in it".into()))?;
    Ok(pem)
}

/// TLS for an `https://` gRPC endpoint: the collector's certificate chains to
/// `ca_file` when given, else to the public (webpki) roots; its name is the endpoint's
/// host. `None` for `http://`.
fn grpc_tls(
    spec: &OtlpSpec,
) -> Result<Option<tonic::transport::ClientTlsConfig>, TraceExportError> {
    if !spec.endpoint.starts_with("https://") {
        return Ok(None);
    }
    let tls = tonic::transport::ClientTlsConfig::new();
    Ok(Some(match &spec.ca_file {
        Some(path) => tls.ca_certificate(tonic::transport::Certificate::from_pem(read_ca(path)?)),
        None => tls.with_webpki_roots(),
    }))
}

/// The HTTP client for an `https://` endpoint with `ca_file`: only that CA is trusted.
fn http_client(spec: &OtlpSpec) -> Result<Option<reqwest::Client>, TraceExportError> {
    let Some(path) = &spec.ca_file else {
        return Ok(None);
    };
    let certs = reqwest::Certificate::from_pem_bundle(&read_ca(path)?)
        .map_err(|e| TraceExportError::CaFile(path.clone(), e.to_string()))?;
    reqwest::Client::builder()
        .tls_certs_only(certs)
        .timeout(spec.timeout)
        .build()
        .map(Some)
        .map_err(|e| TraceExportError::Build(e.to_string()))
}

fn build_exporter(spec: &OtlpSpec) -> Result<opentelemetry_otlp::SpanExporter, TraceExportError> {
    let built = match spec.protocol {
        OtlpProtocol::Grpc => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (name, value) in &spec.headers {
                let key = tonic::metadata::MetadataKey::from_bytes(name.as_bytes())
                    .map_err(|_| TraceExportError::Header(name.clone()))?;
                let value = value
                    .parse()
                    .map_err(|_| TraceExportError::Header(name.clone()))?;
                metadata.insert(key, value);
            }
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(spec.endpoint.clone())
                .with_timeout(spec.timeout)
                .with_metadata(metadata);
            if let Some(tls) = grpc_tls(spec)? {
                builder = builder.with_tls_config(tls);
            }
            builder.build()
        }
        OtlpProtocol::Http => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(spec.endpoint.clone())
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(spec.timeout)
                .with_headers(spec.headers.clone().into_iter().collect());
            if let Some(client) = http_client(spec)? {
                builder = builder.with_http_client(client);
            }
            builder.build()
        }
    };
    built.map_err(|e| TraceExportError::Build(e.to_string()))
}
