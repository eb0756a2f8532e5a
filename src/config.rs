//! Server config: what `serve` and `validate` read, and how it is checked.
//!
//! Relative paths in the file (policies, JWKS, secrets) are resolved against the
//! directory of the config file, so `--config /etc/hopwarden/hopwarden.yaml` works
//! from any working directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;

use crate::principal::PrincipalKind;
use crate::yaml::{self, Location};

/// The server config file as written (`*Spec`: what serde reads).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    /// ext_authz gRPC and grpc.health.v1 on one port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Envoy's ext_authz HTTP service (`http_service`), beside gRPC; off when absent.
    #[serde(default)]
    pub http_listen: Option<SocketAddr>,
    /// The policy directory.
    #[serde(default = "default_policies")]
    pub policies: PathBuf,
    /// How to find the service when Envoy sends no `context_extensions["service"]`.
    #[serde(default)]
    pub services: ServicesSpec,
    /// Token issuers.
    #[serde(default)]
    pub issuers: Vec<IssuerSpec>,
    /// Decision and token caches.
    #[serde(default)]
    pub cache: CacheSpec,
    /// Logging.
    #[serde(default)]
    pub log: LogSpec,
    /// How long SIGTERM waits for in-flight checks before exiting anyway.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Threads serving checks; default: one per core. On a box shared with Envoy,
    /// fewer threads mean fewer cross-thread wake-ups per check (see bench/).
    #[serde(default)]
    pub worker_threads: Option<usize>,
    /// Put the decision facts in Envoy's dynamic metadata (for access logs). Envoy
    /// parses and stores them on every request: off saves it about 7% of its
    /// instructions per check (README.md, Benchmarks).
    #[serde(default = "default_true")]
    pub dynamic_metadata: bool,
    /// Admin HTTP (metrics, health); off when absent.
    #[serde(default)]
    pub admin: Option<AdminSpec>,
    /// Where the decision log goes.
    #[serde(default)]
    pub decision_log: DecisionLogSpec,
    /// Where rate limit counters live (docs/rate-limits.md).
    #[serde(default)]
    pub rate_limits: RateLimitsSpec,
}

/// The rate limits' counters: in the process, in a bounded table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsSpec {
    /// The most buckets kept; idle ones are evicted first, and past the bound a
    /// caller spends from its limit's shared `others` bucket.
    #[serde(default = "default_max_buckets")]
    pub max_buckets: usize,
}

impl Default for RateLimitsSpec {
    fn default() -> Self {
        RateLimitsSpec {
            max_buckets: default_max_buckets(),
        }
    }
}

fn default_max_buckets() -> usize {
    crate::limits::bucket::DEFAULT_MAX_BUCKETS
}

/// Admin HTTP settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSpec {
    /// `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
}

/// Decision log settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionLogSpec {
    /// `stdout`, `off`, or a file path (appended to).
    #[serde(default = "default_decision_log")]
    pub to: String,
}

impl Default for DecisionLogSpec {
    fn default() -> Self {
        DecisionLogSpec {
            to: default_decision_log(),
        }
    }
}

impl DecisionLogSpec {
    /// The target, with a relative path resolved against `base`.
    pub fn target(&self, base: &Path) -> crate::decision_log::LogTarget {
        use crate::decision_log::LogTarget;
        match self.to.as_str() {
            "stdout" | "-" => LogTarget::Stdout,
            "off" | "none" => LogTarget::Off,
            path => LogTarget::File(base.join(path)),
        }
    }
}

fn default_decision_log() -> String {
    "stdout".into()
}

/// Fallback service resolution.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicesSpec {
    /// Destination SPIFFE ID (`attributes.destination.principal`) -> service.
    #[serde(default)]
    pub by_spiffe: BTreeMap<String, String>,
    /// `:authority` (port stripped) -> service.
    #[serde(default)]
    pub by_host: BTreeMap<String, String>,
}

/// One trusted token issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSpec {
    /// The exact `iss` value.
    pub issuer: String,
    /// A JWKS file.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (https, or http on loopback only).
    pub jwks_uri: Option<String>,
    /// A file holding a shared HMAC secret; the only way HS* algorithms are allowed.
    pub secret_file: Option<PathBuf>,
    /// How often the JWKS is re-read.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
    /// The shortest time between two refetches triggered by an unknown `kid`.
    #[serde(default = "default_refetch", with = "humantime_serde")]
    pub refetch_min_interval: Duration,
    /// Allowed `alg` values.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp`, `nbf`, `iat`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Reject tokens without `exp`.
    #[serde(default = "default_true")]
    pub require_exp: bool,
    /// Reject tokens whose `exp - iat` exceeds this.
    #[serde(default, with = "humantime_serde")]
    pub max_lifetime: Option<Duration>,
    /// The claim naming the principal (`sub`, or e.g. `client_id`).
    #[serde(default = "default_principal_claim")]
    pub principal_claim: String,
    /// The kind of principal this issuer's tokens name.
    #[serde(default = "default_kind")]
    pub kind: PrincipalKind,
}

/// Cache bounds and lifetimes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Decision cache entries (0 disables the cache).
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// Verified-token cache entries (0 disables it).
    #[serde(default = "default_max_entries")]
    pub token_max_entries: u64,
    /// Lifetime of an allow (never past the token's `exp`).
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Lifetime of a deny.
    #[serde(default = "default_deny_ttl", with = "humantime_serde")]
    pub deny_ttl: Duration,
}

impl Default for CacheSpec {
    fn default() -> Self {
        CacheSpec {
            max_entries: default_max_entries(),
            token_max_entries: default_max_entries(),
            ttl: default_ttl(),
            deny_ttl: default_deny_ttl(),
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSpec {
    /// `json` or `text`.
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `hopwarden=debug`; `RUST_LOG` overrides it.
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LogSpec {
    fn default() -> Self {
        LogSpec {
            format: LogFormat::default(),
            level: default_level(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable lines.
    Text,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9191))
}
fn default_policies() -> PathBuf {
    PathBuf::from("policies")
}
fn default_drain() -> Duration {
    Duration::from_secs(10)
}
fn default_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_refetch() -> Duration {
    Duration::from_secs(30)
}
fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_true() -> bool {
    true
}
fn default_principal_claim() -> String {
    "sub".into()
}
fn default_kind() -> PrincipalKind {
    PrincipalKind::Service
}
fn default_max_entries() -> u64 {
    100_000
}
fn default_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_deny_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_level() -> String {
    "info".into()
}

/// A config that loaded and validated; paths are resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// The validated settings.
    pub spec: ConfigSpec,
    /// Issuers with parsed algorithms and resolved key sources.
    pub issuers: Vec<Issuer>,
    /// Where decision lines go (paths resolved).
    pub decision_log: crate::decision_log::LogTarget,
}

/// A validated issuer.
#[derive(Debug, Clone)]
pub struct Issuer {
    /// The spec it came from (paths resolved).
    pub spec: IssuerSpec,
    /// Where its keys come from.
    pub keys: KeySource,
    /// Parsed `algorithms`.
    pub algorithms: Vec<Algorithm>,
}

/// Where an issuer's verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS file, re-read on every refresh.
    File(PathBuf),
    /// A JWKS URL.
    Url(String),
    /// A shared HMAC secret in a file.
    Secret(PathBuf),
}

/// A config error, with the place it was found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The config path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// YAML syntax, unknown keys, wrong types.
    #[error(transparent)]
    Yaml(#[from] yaml::YamlError),
    /// A value that parses but is not allowed.
    #[error("{location}: {message}")]
    Invalid {
        /// Where.
        location: Location,
        /// What is wrong, naming the value.
        message: String,
    },
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            vec![ConfigError::Read {
                path: path.display().to_string(),
                source,
            }]
        })?;
        Config::from_str(&text, path)
    }

    /// Parses and validates config text; `path` names it in errors and anchors relative paths.
    pub fn from_str(text: &str, path: &Path) -> Result<Config, Vec<ConfigError>> {
        let mut spec: ConfigSpec =
            yaml::from_str(text, path).map_err(|e| vec![ConfigError::Yaml(e)])?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut errors = Vec::new();
        let invalid = |needle: &str, message: String| {
            let (line, column) = yaml::locate(text, needle, 0).unwrap_or((1, 1));
            ConfigError::Invalid {
                location: Location {
                    file: path.to_path_buf(),
                    line,
                    column,
                },
                message,
            }
        };
        spec.policies = base.join(&spec.policies);
        let mut issuers = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for spec_issuer in &spec.issuers {
            let mut issuer_spec = spec_issuer.clone();
            let name = issuer_spec.issuer.clone();
            if name.is_empty() {
                errors.push(invalid("issuer:", "issuer must not be empty".into()));
                continue;
            }
            if !seen.insert(name.clone()) {
                errors.push(invalid(&name, format!("duplicate issuer {name:?}")));
                continue;
            }
            let sources = [
                issuer_spec.jwks_file.is_some(),
                issuer_spec.jwks_uri.is_some(),
                issuer_spec.secret_file.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() != 1 {
                errors.push(invalid(
                    &name,
                    format!(
                        "issuer {name:?} needs exactly one of jwks_file, jwks_uri, secret_file"
                    ),
                ));
                continue;
            }
            let keys = if let Some(file) = &issuer_spec.jwks_file {
                let file = base.join(file);
                issuer_spec.jwks_file = Some(file.clone());
                KeySource::File(file)
            } else if let Some(uri) = &issuer_spec.jwks_uri {
                if let Err(message) = check_jwks_uri(uri) {
                    errors.push(invalid(uri, message));
                    continue;
                }
                KeySource::Url(uri.clone())
            } else if let Some(file) = &issuer_spec.secret_file {
                let file = base.join(file);
                issuer_spec.secret_file = Some(file.clone());
                KeySource::Secret(file)
            } else {
                continue;
            };
            let mut algorithms = Vec::new();
            if issuer_spec.algorithms.is_empty() {
                errors.push(invalid(
                    &name,
                    format!("issuer {name:?} allows no algorithms"),
                ));
            }
            for alg in &issuer_spec.algorithms {
                match alg.parse::<Algorithm>() {
                    Ok(a) => {
                        // RFC 8725 3.1/3.2: HMAC only with a configured shared secret,
                        // asymmetric algorithms only with public keys; never mixed, so
                        // a public key can never be used as an HMAC secret.
                        let hmac = a.family() == AlgorithmFamily::Hmac;
                        let secret = matches!(keys, KeySource::Secret(_));
                        if hmac != secret {
                            errors.push(invalid(
                                alg,
                                format!(
                                    "issuer {name:?}: algorithm {alg} needs {}",
                                    if hmac { "secret_file" } else { "a JWKS" }
                                ),
                            ));
                        } else {
                            algorithms.push(a);
                        }
                    }
                    Err(_) => errors.push(invalid(
                        alg,
                        format!("issuer {name:?}: unknown or forbidden algorithm {alg:?}"),
                    )),
                }
            }
            if issuer_spec.principal_claim.is_empty() {
                errors.push(invalid(
                    &name,
                    format!("issuer {name:?}: principal_claim must not be empty"),
                ));
            }
            if issuer_spec.refetch_min_interval < Duration::from_secs(1) {
                // Without a floor, made-up `kid`s would each trigger a JWKS fetch.
                errors.push(invalid(
                    &name,
                    format!("issuer {name:?}: refetch_min_interval must be at least 1s"),
                ));
            }
            if issuer_spec.refresh < Duration::from_secs(1) {
                errors.push(invalid(
                    &name,
                    format!("issuer {name:?}: refresh must be at least 1s"),
                ));
            }
            issuers.push(Issuer {
                spec: issuer_spec,
                keys,
                algorithms,
            });
        }
        for (map, what) in [
            (&spec.services.by_spiffe, "services.by_spiffe"),
            (&spec.services.by_host, "services.by_host"),
        ] {
            for (key, service) in map {
                if service.is_empty() {
                    errors.push(invalid(key, format!("{what}: empty service for {key:?}")));
                }
            }
        }
        for id in spec.services.by_spiffe.keys() {
            if id.parse::<crate::principal::SpiffeId>().is_err() {
                errors.push(invalid(
                    id,
                    format!("services.by_spiffe: {id:?} is not a SPIFFE ID"),
                ));
            }
        }
        if spec.worker_threads == Some(0) {
            errors.push(invalid(
                "worker_threads",
                "worker_threads must be at least 1".into(),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&spec.log.level) {
            errors.push(invalid(
                &spec.log.level,
                format!("log.level {:?}: {e}", spec.log.level),
            ));
        }
        let decision_log = spec.decision_log.target(base);
        if errors.is_empty() {
            Ok(Config {
                path: path.to_path_buf(),
                spec,
                issuers,
                decision_log,
            })
        } else {
            Err(errors)
        }
    }
}

/// JWKS over plain HTTP would let anyone on the path swap the keys; only loopback
/// (local development and tests) may use it.
fn check_jwks_uri(uri: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(uri).map_err(|e| format!("jwks_uri {uri:?}: {e}"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" => match url.host_str() {
            Some("127.0.0.1" | "localhost" | "[::1]") => Ok(()),
            _ => Err(format!(
                "jwks_uri {uri:?}: plain http is only allowed on loopback; use https"
            )),
        },
        other => Err(format!("jwks_uri {uri:?}: unsupported scheme {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, String> {
        Config::from_str(text, Path::new("/etc/hw/hopwarden.yaml")).map_err(|errs| {
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    #[test]
    fn defaults_and_paths() {
        let c = load("issuers:\n  - issuer: https://sts\n    jwks_file: keys/jwks.json\n").unwrap();
        assert_eq!(c.spec.listen.to_string(), "0.0.0.0:9191");
        assert_eq!(c.spec.policies, PathBuf::from("/etc/hw/policies"));
        let i = &c.issuers[0];
        assert_eq!(i.keys, KeySource::File("/etc/hw/keys/jwks.json".into()));
        assert_eq!(i.spec.leeway, Duration::from_secs(30));
        assert!(i.spec.require_exp);
        assert_eq!(i.spec.principal_claim, "sub");
        assert_eq!(i.algorithms, vec![Algorithm::RS256, Algorithm::ES256]);
        assert_eq!(c.spec.cache.deny_ttl, Duration::from_secs(5));
    }

    #[test]
    fn rejected_configs() {
        let cases: &[(&str, &str)] = &[
            ("listen: 1.2.3.4:1\nbogus: 1\n", "unknown field `bogus`"),
            (
                "issuers:\n  - {issuer: a, jwks_file: x, refetch_min_interval: 0s}\n",
                "refetch_min_interval must be at least 1s",
            ),
            ("issuers:\n  - issuer: a\n", "exactly one of"),
            (
                "issuers:\n  - issuer: a\n    jwks_file: x\n    jwks_uri: https://a/jwks\n",
                "exactly one of",
            ),
            (
                "issuers:\n  - issuer: a\n    jwks_file: x\n    algorithms: [none]\n",
                "forbidden algorithm \"none\"",
            ),
            (
                "issuers:\n  - issuer: a\n    jwks_file: x\n    algorithms: [HS256]\n",
                "algorithm HS256 needs secret_file",
            ),
            (
                "issuers:\n  - issuer: a\n    secret_file: s\n    algorithms: [RS256]\n",
                "algorithm RS256 needs a JWKS",
            ),
            (
                "issuers:\n  - issuer: a\n    jwks_uri: http://keys.example/jwks\n",
                "plain http is only allowed on loopback",
            ),
            (
                "issuers:\n  - {issuer: a, jwks_file: x}\n  - {issuer: a, jwks_file: y}\n",
                "duplicate issuer",
            ),
            (
                "services:\n  by_spiffe: {\"not-spiffe\": x}\n",
                "is not a SPIFFE ID",
            ),
            (
                "issuers:\n  - {issuer: a, jwks_file: x, leeway: soon}\n",
                "leeway",
            ),
        ];
        for (text, want) in cases {
            let err = load(text).expect_err(text);
            assert!(err.contains(want), "{text:?}: got {err:?}");
            assert!(err.starts_with("/etc/hw/hopwarden.yaml:"), "{err}");
        }
    }

    #[test]
    fn loopback_http_jwks_is_allowed() {
        assert!(
            load("issuers:\n  - {issuer: a, jwks_uri: \"http://127.0.0.1:8080/jwks\"}\n").is_ok()
        );
    }
}
