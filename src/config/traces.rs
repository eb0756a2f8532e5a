//! The `tracing:` block of the server config: OpenTelemetry traces of checks over OTLP
//! (docs/tracing.md). Off unless `tracing.otlp` is given.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Traces of checks (`tracing:` in the config).
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingSpec {
    /// Export one span per check over OTLP; off when absent.
    #[serde(default)]
    pub otlp: Option<OtlpSpec>,
}

/// Where and how spans are exported.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OtlpSpec {
    /// The collector: `http://127.0.0.1:4317` for gRPC, or the full URL of the traces
    /// resource for HTTP (`http://127.0.0.1:4318/v1/traces`); `https://` for TLS.
    pub endpoint: String,
    /// With an `https://` endpoint: the PEM CA certificate(s) the collector's
    /// certificate must chain to, instead of the public roots (a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `grpc` (default) or `http` (protobuf over HTTP).
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Extra request headers or gRPC metadata sent with every export (a collector's
    /// API key, say); never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The `service.name` resource attribute of the spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The share of checks *without* a trace context (no `traceparent` or B3 header)
    /// that start a trace of their own, 0.0 to 1.0; checks with one follow its
    /// sampled flag.
    #[serde(default)]
    pub root_sample_ratio: f64,
    /// Finished spans held for export; past it new ones are dropped and counted
    /// (`hopwarden_trace_spans_dropped_total`), so a slow collector never slows a check.
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    /// The most spans sent in one export request.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How often held spans are exported.
    #[serde(default = "default_interval", with = "humantime_serde")]
    #[schemars(with = "crate::schema::HumanDuration")]
    pub interval: Duration,
    /// How long one export may take before its spans are dropped.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "crate::schema::HumanDuration")]
    pub timeout: Duration,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    /// OTLP/gRPC (the collector's port 4317).
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (the collector's port 4318).
    Http,
}

fn default_service_name() -> String {
    "hopwarden".into()
}
fn default_max_queue() -> usize {
    2048
}
fn default_max_batch() -> usize {
    512
}
fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl TracingSpec {
    /// Resolves `ca_file` against the config file's directory.
    pub fn resolve(&mut self, base: &Path) {
        if let Some(file) = self.otlp.as_mut().and_then(|o| o.ca_file.as_mut()) {
            *file = base.join(&*file);
        }
    }

    /// What is wrong with the values: (a word to find in the file, the message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let Some(otlp) = &self.otlp else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let scheme_ok =
            otlp.endpoint.starts_with("http://") || otlp.endpoint.starts_with("https://");
        if !scheme_ok || otlp.endpoint.parse::<hyper::Uri>().is_err() {
            out.push((
                "endpoint",
                format!(
                    "tracing.otlp.endpoint {:?} is not an http:// or https:// URL",
                    otlp.endpoint
                ),
            ));
        }
        // A CA for a plain-text endpoint would be silently unused: the spans would go
        // out unencrypted while the config says otherwise.
        if otlp.ca_file.is_some() && !otlp.endpoint.starts_with("https://") {
            out.push((
                "ca_file",
                format!(
                    "tracing.otlp.ca_file needs an https:// endpoint, not {:?}",
                    otlp.endpoint
                ),
            ));
        }
        if !(0.0..=1.0).contains(&otlp.root_sample_ratio) {
            out.push((
                "root_sample_ratio",
                format!(
                    "tracing.otlp.root_sample_ratio {} is not between 0.0 and 1.0",
                    otlp.root_sample_ratio
                ),
            ));
        }
        for (key, value) in [("max_queue", otlp.max_queue), ("max_batch", otlp.max_batch)] {
            if value == 0 {
                out.push((key, format!("tracing.otlp.{key} must be at least 1")));
            }
        }
        for (key, value) in [("interval", otlp.interval), ("timeout", otlp.timeout)] {
            if value < Duration::from_millis(10) {
                out.push((key, format!("tracing.otlp.{key} {value:?} is below 10ms")));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn otlp(yaml: &str) -> TracingSpec {
        crate::yaml::from_str(yaml, std::path::Path::new("t.yaml")).unwrap()
    }

    #[test]
    fn defaults_are_off_grpc_and_bounded() {
        assert!(TracingSpec::default().otlp.is_none());
        let spec = otlp("otlp: {endpoint: 'http://127.0.0.1:4317'}");
        let o = spec.otlp.as_ref().unwrap();
        assert_eq!(o.protocol, OtlpProtocol::Grpc);
        assert_eq!((o.max_queue, o.max_batch), (2048, 512));
        assert_eq!(o.root_sample_ratio, 0.0);
        assert!(spec.problems().is_empty());
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("otlp: {endpoint: 'collector:4317'}", "endpoint"),
            (
                "otlp: {endpoint: 'http://c:4317', root_sample_ratio: 1.5}",
                "root_sample_ratio",
            ),
            (
                "otlp: {endpoint: 'http://c:4317', max_queue: 0}",
                "max_queue",
            ),
            (
                "otlp: {endpoint: 'http://c:4317', interval: 1ms}",
                "interval",
            ),
            (
                "otlp: {endpoint: 'http://c:4317', ca_file: ca.pem}",
                "ca_file",
            ),
        ];
        for (yaml, key) in cases {
            let problems = otlp(yaml).problems();
            assert_eq!(problems.len(), 1, "{yaml}: {problems:?}");
            assert_eq!(problems[0].0, key, "{yaml}");
            assert!(problems[0].1.contains(key), "{yaml}: {problems:?}");
        }
    }

    #[test]
    fn https_with_or_without_a_ca_file() {
        for yaml in [
            "otlp: {endpoint: 'https://c:4317'}",
            "otlp: {endpoint: 'https://c:4317', ca_file: ca.pem}",
            "otlp: {endpoint: 'https://c/v1/traces', protocol: http, ca_file: ca.pem}",
        ] {
            assert!(otlp(yaml).problems().is_empty(), "{yaml}");
        }
        let mut spec = otlp("otlp: {endpoint: 'https://c:4317', ca_file: certs/ca.pem}");
        spec.resolve(Path::new("/etc/hopwarden"));
        assert_eq!(
            spec.otlp.unwrap().ca_file.unwrap(),
            Path::new("/etc/hopwarden/certs/ca.pem")
        );
    }

    #[test]
    fn protocol_is_grpc_or_http() {
        let spec = otlp("otlp: {endpoint: 'http://c:4318/v1/traces', protocol: http}");
        assert_eq!(spec.otlp.unwrap().protocol, OtlpProtocol::Http);
        let err = crate::yaml::from_str::<TracingSpec>(
            "otlp: {endpoint: 'http://c', protocol: thrift}",
            std::path::Path::new("t.yaml"),
        );
        assert!(err.is_err());
    }
}
