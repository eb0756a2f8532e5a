//! Logging setup and the metrics registry.
//!
//! Metric labels are bounded by construction: services and issuers come from the
//! config and policies, decisions and reasons from fixed enums, and callers are named
//! only if a policy names them (everyone else is `other`). Never a token, never a raw
//! path.

use std::collections::HashSet;
use std::sync::RwLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSpec};

pub mod otlp;
pub mod trace_context;

/// Installs the global subscriber; `RUST_LOG` overrides the configured level.
/// Calling it twice is harmless (the second call does nothing).
pub fn init(spec: &LogSpec) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&spec.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let _ = match spec.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Labels of `hopwarden_checks_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// A service with a policy, or `unknown`.
    pub service: String,
    /// `allow`, `deny` or `error`.
    pub decision: &'static str,
    /// The deny reason, or `none`.
    pub reason: &'static str,
}

/// Labels of `hopwarden_calls_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// A principal named in a policy, or `other`.
    pub principal: String,
    /// A service with a policy.
    pub service: String,
    /// `allow` or `deny`.
    pub decision: &'static str,
}

/// Labels with a cache name and a result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `decision` or `token`.
    pub cache: &'static str,
    /// `hit` or `miss`.
    pub result: &'static str,
}

/// Labels of `hopwarden_jwks_fetches_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    /// A configured issuer.
    pub issuer: String,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels with only a result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels of `hopwarden_dry_run_would_deny_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DryRunLabels {
    /// A service with a policy.
    pub service: String,
    /// The dry-run rule, or `default` for a dry-run policy's default deny.
    pub rule: String,
}

/// Labels of `hopwarden_rate_limited_total`: bounded by the policies' limits.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    /// A service with a policy.
    pub service: String,
    /// The limit's id.
    pub limit: String,
}

/// Labels of `hopwarden_api_key_checks_total`: the key id only for valid keys (so
/// bounded by the key files), never for refused ones (a caller could invent ids).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiKeyLabels {
    /// The key id of a valid key, or `invalid`.
    pub key_id: String,
    /// `ok`, or why the key was refused (`api_key_unknown`, `api_key_expired`, …).
    pub result: &'static str,
}

/// Labels of `hopwarden_trace_spans_dropped_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceDropLabels {
    /// `queue_full`, `export_failed` or `shutdown`.
    pub why: &'static str,
}

/// Every metric hopwarden exports.
pub struct Metrics {
    registry: Registry,
    checks: Family<CheckLabels, Counter>,
    calls: Family<CallLabels, Counter>,
    latency: Histogram,
    cache: Family<CacheLabels, Counter>,
    jwks: Family<FetchLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    watch_errors: Counter,
    generation: Gauge,
    would_deny: Family<DryRunLabels, Counter>,
    rate_limited: Family<RateLimitLabels, Counter>,
    decision_log_dropped: Counter,
    api_keys: Family<ApiKeyLabels, Counter>,
    api_key_reloads: Family<ResultLabels, Counter>,
    trace_spans_dropped: Family<TraceDropLabels, Counter>,
    trace_spans_exported: Counter,
    named_principals: RwLock<HashSet<String>>,
    store: StoreMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hopwarden");
        let checks = Family::<CheckLabels, Counter>::default();
        registry.register(
            "checks",
            "Checks answered, by service, decision and reason",
            checks.clone(),
        );
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "calls",
            "Checks by caller principal (named in a policy, else other) and service",
            calls.clone(),
        );
        // 10us .. ~5s: cache hits sit in the first buckets, JWKS refetches in the last.
        let latency = Histogram::new([
            0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
            0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]);
        registry.register(
            "check_duration_seconds",
            "Time to answer a check",
            latency.clone(),
        );
        let cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_requests",
            "Cache lookups by cache and result",
            cache.clone(),
        );
        let jwks = Family::<FetchLabels, Counter>::default();
        registry.register(
            "jwks_fetches",
            "JWKS loads by issuer and result",
            jwks.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy reloads by result",
            reloads.clone(),
        );
        let watch_errors = Counter::default();
        registry.register(
            "policy_watch_errors",
            "Policy directory watch failures (reloads then rely on polling)",
            watch_errors.clone(),
        );
        let generation = Gauge::default();
        registry.register(
            "policy_generation",
            "The active policy generation",
            generation.clone(),
        );
        let would_deny = Family::<DryRunLabels, Counter>::default();
        registry.register(
            "dry_run_would_deny",
            "Requests allowed only because a policy or rule is in dry-run mode",
            would_deny.clone(),
        );
        let rate_limited = Family::<RateLimitLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests the policy allowed and a rate limit refused (429), by service and limit",
            rate_limited.clone(),
        );
        let decision_log_dropped = Counter::default();
        registry.register(
            "decision_log_dropped",
            "Decision log lines dropped because the writer fell behind",
            decision_log_dropped.clone(),
        );
        let store = StoreMetrics::register(&mut registry);
        let api_keys = Family::<ApiKeyLabels, Counter>::default();
        registry.register(
            "api_key_checks",
            "API keys checked, by key id (valid keys only) and result",
            api_keys.clone(),
        );
        let api_key_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "api_key_reloads",
            "Key file reloads by result (an error keeps the last good keys)",
            api_key_reloads.clone(),
        );
        let trace_spans_dropped = Family::<TraceDropLabels, Counter>::default();
        registry.register(
            "trace_spans_dropped",
            "Check spans not exported: the export queue was full or the collector failed",
            trace_spans_dropped.clone(),
        );
        let trace_spans_exported = Counter::default();
        registry.register(
            "trace_spans_exported",
            "Check spans the OTLP collector accepted",
            trace_spans_exported.clone(),
        );
        Metrics {
            store,
            api_keys,
            api_key_reloads,
            registry,
            checks,
            calls,
            latency,
            cache,
            jwks,
            reloads,
            watch_errors,
            generation,
            would_deny,
            rate_limited,
            decision_log_dropped,
            trace_spans_dropped,
            trace_spans_exported,
            named_principals: RwLock::new(HashSet::new()),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Sets the principals that keep their own label (the literal ones in policies).
    pub fn set_named_principals(&self, names: HashSet<String>) {
        if let Ok(mut guard) = self.named_principals.write() {
            *guard = names;
        }
    }

    /// Counts `n` check spans dropped before export.
    pub fn trace_spans_dropped(&self, why: &'static str, n: u64) {
        self.trace_spans_dropped
            .get_or_create(&TraceDropLabels { why })
            .inc_by(n);
    }

    /// Counts `n` check spans the collector accepted.
    pub fn trace_spans_exported(&self, n: u64) {
        self.trace_spans_exported.inc_by(n);
    }

    /// Counts one answered check.
    pub fn check(&self, labels: CheckLabels, seconds: f64) {
        self.checks.get_or_create(&labels).inc();
        self.latency.observe(seconds);
    }

    /// Counts a call by a caller to a known service.
    pub fn call(&self, principal: &str, service: &str, decision: &'static str) {
        let named = self
            .named_principals
            .read()
            .map(|n| n.contains(principal))
            .unwrap_or(false);
        let principal = if named { principal } else { "other" };
        self.calls
            .get_or_create(&CallLabels {
                principal: principal.to_string(),
                service: service.to_string(),
                decision,
            })
            .inc();
    }

    /// Counts a cache lookup.
    pub fn cache(&self, cache: &'static str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache
            .get_or_create(&CacheLabels { cache, result })
            .inc();
    }

    /// Counts a JWKS load.
    pub fn jwks_fetch(&self, issuer: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.jwks
            .get_or_create(&FetchLabels {
                issuer: issuer.to_string(),
                result,
            })
            .inc();
    }

    /// Counts a policy reload; on success, records the new generation.
    pub fn reload(&self, generation: Option<u64>) {
        let result = if generation.is_some() { "ok" } else { "error" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
        if let Some(g) = generation {
            self.set_generation(g);
        }
    }

    /// Counts an API key check: `Ok(key id)` or `Err(why it was refused)`.
    pub fn api_key_check(&self, result: Result<&str, &'static str>) {
        let labels = match result {
            Ok(id) => ApiKeyLabels {
                key_id: id.to_string(),
                result: "ok",
            },
            Err(why) => ApiKeyLabels {
                key_id: "invalid".into(),
                result: why,
            },
        };
        self.api_keys.get_or_create(&labels).inc();
    }

    /// Counts a key file reload.
    pub fn api_key_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.api_key_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a failure of the policy directory watch.
    pub fn policy_watch_error(&self) {
        self.watch_errors.inc();
    }

    /// Records the active generation (at start).
    pub fn set_generation(&self, generation: u64) {
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// Counts a request refused by rate limit `limit` of `service`.
    pub fn rate_limited(&self, service: &str, limit: &str) {
        self.rate_limited
            .get_or_create(&RateLimitLabels {
                service: service.to_string(),
                limit: limit.to_string(),
            })
            .inc();
    }

    /// Counts a request allowed only because of dry-run.
    pub fn would_deny(&self, service: &str, rule: &str) {
        self.would_deny
            .get_or_create(&DryRunLabels {
                service: service.to_string(),
                rule: rule.to_string(),
            })
            .inc();
    }

    /// The shared rate limit store's metrics.
    pub fn store(&self) -> &StoreMetrics {
        &self.store
    }

    /// Counts a dropped decision log line.
    pub fn decision_log_dropped(&self) {
        self.decision_log_dropped.inc();
    }
}

/// The shared rate limit store (Redis): its flushes and whether replicas count alone.
pub struct StoreMetrics {
    flushes: Family<ResultLabels, Counter>,
    fallback: Gauge,
}

impl StoreMetrics {
    fn register(registry: &mut Registry) -> Self {
        let flushes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "rate_limit_store_flushes",
            "Flushes of rate limit counts to the shared store (Redis), by result",
            flushes.clone(),
        );
        let fallback = Gauge::default();
        registry.register(
            "rate_limit_store_fallback",
            "1 while the shared rate limit store is unreachable and this replica limits on its own",
            fallback.clone(),
        );
        StoreMetrics { flushes, fallback }
    }

    /// Counts a flush and its result.
    pub fn flush(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.flushes.get_or_create(&ResultLabels { result }).inc();
    }

    /// Whether this replica limits on its own because the store is unreachable.
    pub fn set_fallback(&self, on: bool) {
        self.fallback.set(i64::from(on));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unnamed_principals_are_other() {
        let m = Metrics::new();
        m.set_named_principals(["spiffe://td/a".to_string()].into());
        m.call("spiffe://td/a", "ledger", "allow");
        m.call("random-subject-1", "ledger", "deny");
        m.call("random-subject-2", "ledger", "deny");
        let text = m.encode();
        assert!(text.contains(r#"hopwarden_calls_total{principal="spiffe://td/a",service="ledger",decision="allow"} 1"#), "{text}");
        assert!(
            text.contains(
                r#"hopwarden_calls_total{principal="other",service="ledger",decision="deny"} 2"#
            ),
            "{text}"
        );
        assert!(!text.contains("random-subject"));
    }
}
