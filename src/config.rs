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
use crate::resolve::ServiceResolver;
use crate::yaml::{self, Location};

pub mod traces;
pub use traces::{OtlpProtocol, OtlpSpec, TracingSpec};

/// The server config file as written (`*Spec`: what serde reads).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    /// ext_authz gRPC and grpc.health.v1 on one port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Envoy's ext_authz HTTP service (`http_service`), beside gRPC; off when absent.
    #[serde(default)]
    pub http_listen: Option<SocketAddr>,
    /// The header the HTTP service reads the mTLS peer's SPIFFE ID from, which Envoy
    /// sets with `%DOWNSTREAM_PEER_URI_SAN%` and never forwards from the client
    /// (docs/envoy.md#the-mtls-peer-over-the-http-service); off when absent.
    #[serde(default)]
    pub http_peer_header: Option<String>,
    /// The policy directory (it may be a symlink that is re-pointed, as git-sync does).
    #[serde(default = "default_policies")]
    pub policies: PathBuf,
    /// How often the policy directory is polled for changes besides being watched;
    /// what keeps reloads working if the watch fails (0s: never).
    #[serde(default = "default_policy_poll", with = "humantime_serde")]
    #[schemars(with = "crate::schema::HumanDuration")]
    pub policy_poll_interval: Duration,
    /// How to find the service when Envoy sends no `context_extensions["service"]`.
    #[serde(default)]
    pub services: ServicesSpec,
    /// Token issuers.
    #[serde(default)]
    pub issuers: Vec<IssuerSpec>,
    /// API key files (docs/api-keys.md), each optionally with a header its keys
    /// arrive in besides `authorization: ApiKey`.
    #[serde(default)]
    pub api_keys: Vec<crate::authn::apikey::ApiKeySourceSpec>,
    /// Decision and token caches.
    #[serde(default)]
    pub cache: CacheSpec,
    /// Logging.
    #[serde(default)]
    pub log: LogSpec,
    /// How long SIGTERM waits for in-flight checks before exiting anyway.
    #[serde(default = "default_drain", with = "humantime_serde")]
    #[schemars(with = "crate::schema::HumanDuration")]
    pub drain_timeout: Duration,
    /// Threads serving checks; default: one per core. On a box shared with Envoy,
    /// fewer threads mean fewer cross-thread wake-ups per check (see bench/).
    #[serde(default)]
    pub worker_threads: Option<usize>,
    /// Put the decision facts in Envoy's dynamic metadata (for access logs). Envoy
    /// parses and stores them on every request: off saves it about 7% of its
    /// instructions per check (docs/benchmarks.md).
    #[serde(default = "default_true")]
    pub dynamic_metadata: bool,
    /// Admin HTTP (metrics, health); off when absent.
    #[serde(default)]
    pub admin: Option<AdminSpec>,
    /// Bounds on every listener (connections, timeouts, request sizes) and their mTLS.
    #[serde(default)]
    pub listeners: crate::listener::spec::ListenersSpec,
    /// Where the decision log goes.
    #[serde(default)]
    pub decision_log: DecisionLogSpec,
    /// Where rate limit counters live (docs/rate-limits.md).
    #[serde(default)]
    pub rate_limits: RateLimitsSpec,
    /// OpenTelemetry traces of checks (docs/tracing.md); off by default.
    #[serde(default)]
    pub tracing: TracingSpec,
}

/// The rate limits' counters: in the process, in a bounded table; with
/// `store: redis`, also shared by replicas through Redis.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsSpec {
    /// The most buckets kept; idle ones are evicted first, and past the bound a
    /// caller spends from its limit's shared `others` bucket.
    #[serde(default = "default_max_buckets")]
    pub max_buckets: usize,
    /// Where budgets are shared: `local` (each replica alone) or `redis`.
    #[serde(default)]
    pub store: RateLimitStore,
    /// The Redis server, with `store: redis`.
    #[serde(default)]
    pub redis: Option<crate::limits::redis::RedisSpec>,
    /// Tell clients on allowed requests what their tightest limit has left (the
    /// `ratelimit-policy` and `ratelimit` fields, as on a 429). Off by default.
    #[serde(default)]
    pub headers_on_allow: bool,
}

/// `rate_limits.store`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitStore {
    /// Counters in this process only (exact for one replica).
    #[default]
    Local,
    /// Counters shared by every replica through Redis (`rate_limits.redis`).
    Redis,
}

impl RateLimitsSpec {
    /// What is wrong with the settings: (text to point at, message).
    fn problems(&self) -> Vec<(String, String)> {
        match (self.store, &self.redis) {
            (RateLimitStore::Redis, Some(redis)) => redis.problems(),
            (RateLimitStore::Redis, None) => vec![(
                "store".to_string(),
                "rate_limits.store: redis needs a rate_limits.redis block with its url".into(),
            )],
            (RateLimitStore::Local, Some(_)) => vec![(
                "redis".to_string(),
                "rate_limits.redis is set but rate_limits.store is local: add store: redis".into(),
            )],
            (RateLimitStore::Local, None) => Vec::new(),
        }
    }
}

impl Default for RateLimitsSpec {
    fn default() -> Self {
        RateLimitsSpec {
            max_buckets: default_max_buckets(),
            store: RateLimitStore::Local,
            redis: None,
            headers_on_allow: false,
        }
    }
}

fn default_max_buckets() -> usize {
    crate::limits::bucket::DEFAULT_MAX_BUCKETS
}

/// Admin HTTP settings.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminSpec {
    /// `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
    /// Whether `listeners.tls` applies here too; `false` lets kubelet probes and a
    /// Prometheus without a client certificate in (the limits still apply).
    #[serde(default = "default_true")]
    pub tls: bool,
}

/// Decision log settings.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
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

/// How to find the service when Envoy sends no `context_extensions["service"]`
/// (Istio never does); see resolve.rs for the order.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServicesSpec {
    /// Destination SPIFFE ID (`attributes.destination.principal`) -> service.
    #[serde(default)]
    pub by_spiffe: BTreeMap<String, String>,
    /// Destination SPIFFE ID patterns, e.g.
    /// `spiffe://cluster.local/ns/{namespace}/sa/{service}`: one, or a list.
    #[serde(default, deserialize_with = "one_or_many")]
    #[schemars(schema_with = "crate::schema::one_or_many_strings")]
    pub by_spiffe_pattern: Vec<String>,
    /// The identities of gateways as Envoy reports the destination (its certificate's
    /// first URI SAN, e.g. a SPIFFE ID, else its first DNS SAN): a check at one is hop
    /// `gateway` and its service comes from the host.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// `:authority` -> service (port ignored; Kubernetes short names understood).
    #[serde(default)]
    pub by_host: BTreeMap<String, String>,
}

/// A string or a list of strings, read as a list.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// One trusted token issuer.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuerSpec {
    /// The exact `iss` value.
    pub issuer: String,
    /// A JWKS file.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (https, or http on loopback only).
    pub jwks_uri: Option<String>,
    /// Find the JWKS through `<issuer>/.well-known/openid-configuration` (OIDC
    /// discovery; the document's `issuer` must equal this one exactly).
    #[serde(default)]
    pub discovery: bool,
    /// A file holding a shared HMAC secret; the only way HS* algorithms are allowed.
    pub secret_file: Option<PathBuf>,
    /// How often the JWKS is re-read.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    #[schemars(with = "crate::schema::HumanDuration")]
    pub refresh: Duration,
    /// The shortest time between two refetches triggered by an unknown `kid`.
    #[serde(default = "default_refetch", with = "humantime_serde")]
    #[schemars(with = "crate::schema::HumanDuration")]
    pub refetch_min_interval: Duration,
    /// How long a check with an unknown `kid` waits for the key fetch in flight before
    /// it is answered 401 `unknown_key` (the fetch goes on; later checks find the key).
    #[serde(default = "default_unknown_kid_wait", with = "humantime_serde")]
    #[schemars(with = "crate::schema::HumanDuration")]
    pub unknown_kid_wait: Duration,
    /// Allowed `alg` values.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp`, `nbf`, `iat`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    #[schemars(with = "crate::schema::HumanDuration")]
    pub leeway: Duration,
    /// Reject tokens without `exp`.
    #[serde(default = "default_true")]
    pub require_exp: bool,
    /// Reject tokens whose `exp - iat` exceeds this.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<crate::schema::HumanDuration>")]
    pub max_lifetime: Option<Duration>,
    /// The claim naming the principal (`sub`, or e.g. `client_id`).
    #[serde(default = "default_principal_claim")]
    pub principal_claim: String,
    /// The kind of principal this issuer's tokens name.
    #[serde(default = "default_kind")]
    pub kind: PrincipalKind,
    /// The most actors a token's delegation chain (RFC 8693 `act`) may hold; a
    /// deeper one is an invalid token (401). 0: this issuer's tokens are never
    /// delegated. See docs/delegation.md.
    #[serde(default = "default_max_delegation_depth")]
    pub max_delegation_depth: usize,
}

/// Cache bounds and lifetimes.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
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
    #[schemars(with = "crate::schema::HumanDuration")]
    pub ttl: Duration,
    /// Lifetime of a deny.
    #[serde(default = "default_deny_ttl", with = "humantime_serde")]
    #[schemars(with = "crate::schema::HumanDuration")]
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
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
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
fn default_policy_poll() -> Duration {
    Duration::from_secs(10)
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
/// Half of Envoy's default ext_authz timeout (200 ms): a check held past Envoy's
/// timeout is answered by Envoy's `failure_mode_allow` instead of by us, and the rest
/// of the check and the network need the other half.
fn default_unknown_kid_wait() -> Duration {
    Duration::from_millis(100)
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
/// One actor: "this service, acting for that user". Longer chains are opted into.
fn default_max_delegation_depth() -> usize {
    1
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
    /// The compiled `services` section.
    pub services: ServiceResolver,
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
    /// OIDC discovery from this issuer URL, then the JWKS it names.
    Discovery(String),
    /// A shared HMAC secret in a file.
    Secret(PathBuf),
}

/// A config error, with the place it was found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not exist.
    #[error("{path}: config file not found (name it with --config FILE or the HOPWARDEN_CONFIG environment variable; the default is ./hopwarden.yaml)")]
    Missing {
        /// The config path.
        path: String,
    },
    /// The policy directory the config names does not exist or is not a directory.
    #[error("{location}: policy directory {dir} {why} (relative paths are resolved against the config file's directory)")]
    PolicyDir {
        /// The `policies:` line, or the file when the default is used.
        location: Location,
        /// The resolved directory.
        dir: String,
        /// `does not exist` or `is not a directory`.
        why: &'static str,
    },
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
    ///
    /// Unlike [`Config::from_str`], this also checks that the policy directory
    /// exists, pointing at the `policies:` line when it does not.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            let path = path.display().to_string();
            vec![match source.kind() {
                std::io::ErrorKind::NotFound => ConfigError::Missing { path },
                _ => ConfigError::Read { path, source },
            }]
        })?;
        let config = Config::from_str(&text, path)?;
        let dir = &config.spec.policies;
        let why = match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => return Ok(config),
            Ok(_) => "is not a directory",
            Err(_) => "does not exist",
        };
        let at = yaml::find_key(&text, "policies", 0, text.len());
        let location = match at {
            Some(offset) => Location::new(path, yaml::position(&text, offset)),
            None => Location::file_only(path),
        };
        Err(vec![ConfigError::PolicyDir {
            location,
            dir: format!("{:?}", dir.display().to_string()),
            why,
        }])
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
        spec.listeners.resolve(base);
        for source in &mut spec.api_keys {
            source.file = base.join(&source.file);
            if let Some(message) = source.problem(spec.http_peer_header.as_deref()) {
                let needle = source.header.clone().unwrap_or_default();
                errors.push(invalid(&needle, message));
            }
        }
        for (needle, message) in spec.listeners.problems() {
            errors.push(invalid(needle, message));
        }
        if let Some(name) = &spec.http_peer_header {
            if let Err(e) = crate::http_authz::peer::check_name(name) {
                errors.push(invalid("http_peer_header", e.to_string()));
            }
        }
        if let Some(redis) = &mut spec.rate_limits.redis {
            redis.resolve(base);
        }
        for (needle, message) in spec.rate_limits.problems() {
            errors.push(invalid(&needle, message));
        }
        spec.tracing.resolve(base);
        for (needle, message) in spec.tracing.problems() {
            errors.push(invalid(needle, message));
        }
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
                issuer_spec.discovery,
            ];
            if sources.iter().filter(|s| **s).count() != 1 {
                errors.push(invalid(
                    &name,
                    format!(
                        "issuer {name:?} needs exactly one of jwks_file, jwks_uri, secret_file, discovery: true"
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
            } else if issuer_spec.discovery {
                if let Err(message) = crate::authn::discovery::check_url("issuer", &name) {
                    errors.push(invalid(&name, message));
                    continue;
                }
                KeySource::Discovery(name.clone())
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
            if issuer_spec.max_delegation_depth > crate::authn::delegation::MAX_CONFIGURABLE_DEPTH {
                errors.push(invalid(
                    "max_delegation_depth",
                    format!(
                        "issuer {name:?}: max_delegation_depth {} is more than {}",
                        issuer_spec.max_delegation_depth,
                        crate::authn::delegation::MAX_CONFIGURABLE_DEPTH
                    ),
                ));
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
        let services = match ServiceResolver::new(&spec.services) {
            Ok(r) => r,
            Err(errs) => {
                errors.extend(errs.into_iter().map(|e| invalid(&e.value, e.message)));
                ServiceResolver::default()
            }
        };
        if spec.worker_threads == Some(0) {
            errors.push(invalid(
                "worker_threads",
                "worker_threads must be at least 1".into(),
            ));
        }
        if let Err(message) = check_log_level(&spec.log.level) {
            errors.push(invalid(&spec.log.level, message));
        }
        let decision_log = spec.decision_log.target(base);
        if errors.is_empty() {
            Ok(Config {
                path: path.to_path_buf(),
                spec,
                issuers,
                decision_log,
                services,
            })
        } else {
            Err(errors)
        }
    }
}

/// The levels `log.level` may name.
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// `log.level` is a level or comma-separated `TARGET=LEVEL` directives. `tracing`'s
/// filter syntax would also read a bare word such as `verbose` as a *target* (log
/// everything from a module named `verbose`), which silences hopwarden entirely: so
/// a bare word must be a level.
fn check_log_level(level: &str) -> Result<(), String> {
    let bad = |why: String| Err(format!("log.level {level:?}: {why}"));
    for directive in level.split(',').map(str::trim) {
        let named = match directive.split_once('=') {
            Some((target, named)) if !target.trim().is_empty() => named.trim(),
            Some(_) => return bad(format!("{directive:?} has no target before `=`")),
            None => directive,
        };
        if !LOG_LEVELS.contains(&named.to_ascii_lowercase().as_str()) {
            return bad(format!(
                "{named:?} is not a level; use one of {} (or TARGET=LEVEL, e.g. hopwarden=debug)",
                LOG_LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(level)
        .map(drop)
        .or_else(|e| bad(e.to_string()))
}

/// JWKS over plain HTTP would let anyone on the path swap the keys; only loopback
/// (local development and tests) may use it.
fn check_jwks_uri(uri: &str) -> Result<(), String> {
    let shown = redacted_uri(uri);
    let url = reqwest::Url::parse(uri).map_err(|e| format!("jwks_uri {shown:?}: {e}"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" => match url.host_str() {
            Some("127.0.0.1" | "localhost" | "[::1]") => Ok(()),
            _ => Err(format!(
                "jwks_uri {shown:?}: plain http is only allowed on loopback; use https"
            )),
        },
        other => Err(format!("jwks_uri {shown:?}: unsupported scheme {other:?}")),
    }
}

/// A URL as logs and errors may show it: userinfo and query replaced by `redacted`,
/// fragment dropped. Some key servers take credentials there (`https://user:pass@…`,
/// `?api_key=…`), and others need a query that is no secret (Azure AD B2C's `?p=`
/// policy), so such URIs are accepted, and never printed whole. A string that does not
/// parse as a URL is not shown at all.
pub fn redacted_uri(uri: &str) -> String {
    let Ok(mut url) = reqwest::Url::parse(uri) else {
        return "<unparsable URL>".into();
    };
    let had_userinfo = !url.username().is_empty() || url.password().is_some();
    let had_query = url.query().is_some();
    // Both fail only for URLs that cannot have userinfo, which then have none.
    let _ = url.set_password(None);
    let _ = url.set_username("");
    url.set_query(None);
    url.set_fragment(None);
    let mut shown = url.to_string();
    if had_userinfo {
        if let Some(at) = shown.find("://") {
            shown.insert_str(at + 3, "redacted@");
        }
    }
    if had_query {
        shown.push_str("?redacted");
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_shown_without_credentials() {
        let cases = [
            ("https://idp.example/jwks", "https://idp.example/jwks"),
            (
                "https://user:s3cret@idp.example/jwks",
                "https://redacted@idp.example/jwks",
            ),
            (
                "https://s3cret@idp.example/jwks",
                "https://redacted@idp.example/jwks",
            ),
            (
                "https://idp.example/jwks?api_key=s3cret&x=1",
                "https://idp.example/jwks?redacted",
            ),
            (
                "http://u:s3cret@127.0.0.1:8080/k?api_key=s3cret#s3cret",
                "http://redacted@127.0.0.1:8080/k?redacted",
            ),
            ("not a url s3cret", "<unparsable URL>"),
        ];
        for (uri, shown) in cases {
            assert_eq!(redacted_uri(uri), shown, "{uri}");
        }
        // Config errors show the redacted form too.
        let err = load("issuers:\n  - issuer: a\n    jwks_uri: \"http://u:s3cret@keys.example/jwks?api_key=s3cret\"\n")
            .unwrap_err();
        assert!(err.contains("plain http"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

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
        assert_eq!(i.spec.unknown_kid_wait, Duration::from_millis(100));
        assert_eq!(c.spec.policy_poll_interval, Duration::from_secs(10));
        assert!(i.spec.require_exp);
        assert_eq!(i.spec.principal_claim, "sub");
        assert_eq!(i.algorithms, vec![Algorithm::RS256, Algorithm::ES256]);
        assert_eq!(c.spec.cache.deny_ttl, Duration::from_secs(5));
        let l = &c.spec.listeners;
        assert_eq!(
            (
                l.max_connections,
                l.max_request_bytes,
                l.request_bytes_in_flight
            ),
            (1024, 65536, 64 << 20)
        );
        assert_eq!(l.handshake_timeout, Duration::from_secs(10));
        assert_eq!(l.idle_timeout, Duration::from_secs(300));
        assert_eq!(l.body_timeout, Duration::from_secs(5));
        assert!(l.tls.is_none());
    }

    #[test]
    fn listener_tls_paths_resolve_against_the_config() {
        let c = load(
            "admin: {listen: 127.0.0.1:9192, tls: false}\nlisteners:\n  tls:\n    cert: certs/hw.pem\n    key: /abs/hw-key.pem\n    client_ca: ca.pem\n    allowed_spiffe_ids: [\"spiffe://td/ns/gw/sa/gw\"]\n",
        )
        .unwrap();
        let tls = c.spec.listeners.tls.as_ref().unwrap();
        assert_eq!(tls.cert, PathBuf::from("/etc/hw/certs/hw.pem"));
        assert_eq!(tls.key, PathBuf::from("/abs/hw-key.pem"));
        assert_eq!(tls.client_ca, PathBuf::from("/etc/hw/ca.pem"));
        assert_eq!(tls.reload_interval, Duration::from_secs(10));
        assert!(!c.spec.admin.as_ref().unwrap().tls);
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
            (
                "http_peer_header: x-hopwarden-peer\n",
                "starts with x-hopwarden-",
            ),
            ("http_peer_header: authorization\n", "already uses"),
            (
                "issuers:\n  - {issuer: a, jwks_file: x, max_delegation_depth: 9}\n",
                "max_delegation_depth 9 is more than 8",
            ),
            (
                "log: {level: verbose}\n",
                "log.level \"verbose\": \"verbose\" is not a level",
            ),
            (
                "log: {level: \"info,hopwarden=loud\"}\n",
                "\"loud\" is not a level",
            ),
            ("log: {level: \"=debug\"}\n", "has no target"),
            (
                "services:\n  by_spiffe_pattern: \"spiffe://cluster.local/ns/{ns}/sa/{service}\"\n",
                "unknown placeholder \"{ns}\"",
            ),
            (
                "services:\n  by_spiffe_pattern: [\"spiffe://td/{service}\", \"spiffe://td/ns/{namespace}\"]\n",
                "has no {service} placeholder",
            ),
            ("services:\n  gateways: [\"spiffe://x/a b\"]\n", "is not a SPIFFE ID"),
            (
                "services:\n  by_host: {ledger.ns: a, ledger.ns.svc.cluster.local: b}\n",
                "different services",
            ),
            (
                "listeners: {max_connections: 0}\n",
                "listeners.max_connections must be at least 1",
            ),
            (
                "listeners: {idle_timeout: 0s}\n",
                "listeners.idle_timeout 0ns is below 10ms",
            ),
            (
                "listeners: {max_request_bytes: 100}\n",
                "listeners.max_request_bytes 100 is below 1024",
            ),
            (
                "listeners: {max_request_bytes: 1048576, request_bytes_in_flight: 65536}\n",
                "is below max_request_bytes 1048576",
            ),
            (
                "listeners:\n  tls: {cert: c.pem, key: k.pem, client_ca: ca.pem}\n",
                "listeners.tls needs allowed_spiffe_ids or allowed_dns_names",
            ),
            (
                "listeners:\n  tls: {cert: c, key: k, client_ca: ca, allowed_spiffe_ids: [gw]}\n",
                "\"gw\" is not a SPIFFE ID",
            ),
            (
                "listeners: {max_conections: 5}\n",
                "unknown field `max_conections`",
            ),
        ];
        for (text, want) in cases {
            let err = load(text).expect_err(text);
            assert!(err.contains(want), "{text:?}: got {err:?}");
            assert!(err.starts_with("/etc/hw/hopwarden.yaml:"), "{err}");
        }
    }

    #[test]
    fn api_key_headers_that_something_else_reads_are_rejected() {
        let peer = "http_peer_header: x-peer-uri\n";
        for (header, extra, why) in [
            ("authorization", "", "is reserved"),
            ("cookie", "", "is reserved"),
            ("x-request-id", "", "logged verbatim"),
            ("traceparent", "", "trace context"),
            ("tracestate", "", "trace context"),
            ("baggage", "", "trace context"),
            ("b3", "", "trace context"),
            ("x-b3-traceid", "", "trace context"),
            ("x-b3-parentspanid", "", "trace context"),
            ("x-envoy-original-path", "", "Envoy sets"),
            ("x-hopwarden-principal", "", "hopwarden writes"),
            ("x-peer-uri", peer, "is the http_peer_header"),
        ] {
            let text = format!("api_keys:\n  - {{file: k.yaml, header: {header}}}\n{extra}");
            let err = load(&text).expect_err(&text);
            let want = "/etc/hw/hopwarden.yaml:2:";
            assert!(err.starts_with(want), "{text:?}: got {err:?}");
            assert!(
                err.contains(&format!("header {header:?}")) && err.contains(why),
                "{text:?}: got {err:?}"
            );
        }
        assert!(load("api_keys:\n  - {file: k.yaml, header: x-api-key}\n").is_ok());
    }

    #[test]
    fn log_levels_and_directives_are_accepted() {
        for level in [
            "info",
            "WARN",
            "off",
            "info,hopwarden=debug",
            "hopwarden::engine=trace",
        ] {
            let text = format!("log: {{level: \"{level}\"}}\n");
            assert!(load(&text).is_ok(), "{level}: {:?}", load(&text).err());
        }
        // A typo is reported where it is written.
        let err = load("listen: 127.0.0.1:1\nlog:\n  level: verbose\n").unwrap_err();
        assert!(
            err.starts_with("/etc/hw/hopwarden.yaml:3:10: log.level"),
            "{err}"
        );
    }

    #[test]
    fn service_errors_point_at_the_value() {
        let text = "listen: 127.0.0.1:1\nservices:\n  by_spiffe_pattern:\n    - spiffe://td/sa/{service}-x\n";
        let err = load(text).unwrap_err();
        assert!(
            err.starts_with("/etc/hw/hopwarden.yaml:4:7: services.by_spiffe_pattern:"),
            "{err}"
        );
    }

    #[test]
    fn istio_services_section() {
        let one = "services:\n  by_spiffe_pattern: spiffe://cluster.local/ns/{namespace}/sa/{service}\n  gateways: [spiffe://cluster.local/ns/istio-system/sa/gw]\n";
        let c = load(one).unwrap();
        assert_eq!(c.spec.services.by_spiffe_pattern.len(), 1);
        assert_eq!(c.spec.services.gateways.len(), 1);
        let many = "services:\n  by_spiffe_pattern:\n    - spiffe://a.local/ns/{namespace}/sa/{service}\n    - spiffe://b.local/{service}\n";
        assert_eq!(load(many).unwrap().spec.services.by_spiffe_pattern.len(), 2);
    }

    #[test]
    fn discovery_issuers() {
        let c = load("issuers:\n  - {issuer: \"https://kubernetes.default.svc.cluster.local\", discovery: true}\n").unwrap();
        assert_eq!(
            c.issuers[0].keys,
            KeySource::Discovery("https://kubernetes.default.svc.cluster.local".into())
        );
        let cases: &[(&str, &str)] = &[
            (
                "issuers:\n  - {issuer: \"http://sts.example\", discovery: true}\n",
                "plain http is only allowed on loopback",
            ),
            (
                "issuers:\n  - {issuer: \"https://sts.example?x=1\", discovery: true}\n",
                "no query",
            ),
            (
                "issuers:\n  - {issuer: a, discovery: true, jwks_file: x}\n",
                "exactly one of",
            ),
        ];
        for (text, want) in cases {
            let err = load(text).expect_err(text);
            assert!(
                err.contains(want) && err.starts_with("/etc/hw/hopwarden.yaml:2:"),
                "{err}"
            );
        }
        assert!(load("issuers:\n  - {issuer: \"http://127.0.0.1:9/\", discovery: true}\n").is_ok());
    }

    #[test]
    fn loopback_http_jwks_is_allowed() {
        assert!(
            load("issuers:\n  - {issuer: a, jwks_uri: \"http://127.0.0.1:8080/jwks\"}\n").is_ok()
        );
    }
}
