//! What the fuzz targets share: a real engine over a small policy, built once per
//! process, and the properties an allowed check must have.
//!
//! The engine is built as `hopwarden serve` builds it (src/server.rs), from a config and
//! a policy written to a temporary directory, with an HMAC secret drawn at start-up:
//! no input can carry a token signed with it, so the only allow an input can earn is
//! the mTLS-peer rule below, and [`assert_allow_is_earned`] checks that every allow is
//! exactly that one.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use hopwarden::authn::jwks::{http_client, key_stores};
use hopwarden::authn::jwt::JwtVerifier;
use hopwarden::authn::Authenticator;
use hopwarden::cache::{DecisionCache, TokenCache};
use hopwarden::config::Config;
use hopwarden::decision_log::{DecisionLog, LogTarget};
use hopwarden::engine::Engine;
use hopwarden::policy::{PathPattern, PolicySet};
use hopwarden::request::{canonical_path, AuthzRequest};
use hopwarden::telemetry::Metrics;

/// The one caller the fuzz policy allows without a token.
pub const PEER: &str = "spiffe://fuzz.local/ns/payments/sa/reader";
/// The issuer whose HMAC secret is drawn at start-up (no input knows it).
pub const SECRET_ISSUER: &str = "https://sts.fuzz.local";
/// The issuer of the committed development key (dev/jwks.json): its kid and algorithms
/// are looked up, and no input carries a signature from its private key that verifies
/// (the fuzzer would have to forge RS256).
pub const DEV_ISSUER: &str = "https://sts.hopwarden.local";
/// The path the peer rule allows.
pub const PEER_PATH: &str = "/transactions/{id}";

/// The policy every engine target evaluates against.
pub const POLICY: &str = r#"service: ledger
rules:
  - id: peer-read
    from: {peers: ["spiffe://fuzz.local/ns/payments/sa/reader"]}
    to: [{methods: [GET], paths: ["/transactions/{id}"]}]
  - id: token-write
    from: {principals: ["svc-writer"], issuers: ["https://sts.fuzz.local"]}
    to: [{methods: [POST], paths: ["/transactions"]}]
    scopes: [ledger.write]
  - id: dev-token-read
    from: {principals: ["svc-dev"], issuers: ["https://sts.hopwarden.local"]}
    to: [{methods: [GET], paths: ["/transactions/**"]}]
  - id: no-admin
    effect: deny
    to: [{paths: ["/admin/**"]}]
"#;

/// A work directory unique to this process, with the config, policy and secret.
fn workdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hopwarden-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("policies")).expect("create the fuzz work directory");
    dir
}

/// 32 bytes nobody else sees: the hash of the clock and the process id is enough here
/// (the fuzzer cannot read this process's memory, and the secret only has to be one
/// no input was written with).
fn secret() -> Vec<u8> {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut out = Vec::with_capacity(32);
    while out.len() < 32 {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_usize(out.len());
        out.extend_from_slice(&h.finish().to_le_bytes());
    }
    out
}

/// The config of the fuzz engine, as YAML (also a seed for the config target).
pub fn config_text(dir: &std::path::Path) -> String {
    let dev_jwks = concat!(env!("CARGO_MANIFEST_DIR"), "/../dev/jwks.json");
    format!(
        "listen: 127.0.0.1:0\npolicies: {policies}\nissuers:\n  - issuer: {SECRET_ISSUER}\n    secret_file: {secret}\n    algorithms: [HS256]\n    principal_claim: sub\n    kind: service\n  - issuer: {DEV_ISSUER}\n    jwks_file: {dev_jwks}\n    algorithms: [RS256, ES256]\n    refetch_min_interval: 1h\ncache: {{max_entries: 1000, token_max_entries: 1000}}\ndecision_log: {{to: \"off\"}}\n",
        policies = dir.join("policies").display(),
        secret = dir.join("secret").display(),
    )
}

/// The engine and the runtime its checks run on, built once per process.
pub struct Harness {
    /// A current-thread runtime: checks are awaited one at a time.
    pub runtime: tokio::runtime::Runtime,
    /// The engine, as `serve` builds it.
    pub engine: Arc<Engine>,
    /// A verifier over the same issuers, for the JWT target.
    pub verifier: JwtVerifier,
    /// The HMAC secret of [`SECRET_ISSUER`].
    pub secret: Vec<u8>,
}

/// The process's harness.
pub fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(build)
}

fn build() -> Harness {
    let dir = workdir();
    let secret = secret();
    std::fs::write(dir.join("secret"), &secret).expect("write the secret");
    std::fs::write(dir.join("policies/ledger.yaml"), POLICY).expect("write the policy");
    let config_path = dir.join("config.yaml");
    let config = Config::from_str(&config_text(&dir), &config_path).expect("fuzz config");
    let set = PolicySet::load_dir(&dir.join("policies")).expect("fuzz policy");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let metrics = Arc::new(Metrics::new());
    let http = http_client().expect("http client");
    let issuers = key_stores(&config.issuers, &http, &metrics);
    runtime.block_on(async {
        for (issuer, keys) in &issuers {
            keys.refresh()
                .await
                .unwrap_or_else(|e| panic!("keys of {}: {e}", issuer.spec.issuer));
        }
    });
    let cache = &config.spec.cache;
    let authn = Authenticator::new(
        JwtVerifier::new(issuers.clone()),
        TokenCache::new(cache.token_max_entries, cache.ttl),
        metrics.clone(),
    );
    let log = DecisionLog::start(&LogTarget::Off, metrics.clone()).expect("decision log");
    let engine = Arc::new(Engine::new(
        set,
        config.services.clone(),
        authn,
        DecisionCache::new(cache.max_entries, cache.ttl, cache.deny_ttl),
        metrics,
        log,
    ));
    // Nothing is read from the directory after this.
    let _ = std::fs::remove_dir_all(&dir);
    Harness {
        runtime,
        engine,
        verifier: JwtVerifier::new(issuers),
        secret,
    }
}

/// Panics unless an allow of `req` by `rule` is one the fuzz policy grants: the peer
/// rule, for that peer, a GET, on a canonical path the rule's pattern matches.
/// (Every other rule needs a token signed with a key no input has.)
pub fn assert_allow_is_earned(req: &AuthzRequest, rule: &str) {
    assert_eq!(rule, "peer-read", "allowed by an unexpected rule: {req:?}");
    assert_eq!(
        req.source_principal.as_deref(),
        Some(PEER),
        "allowed without the peer: {req:?}"
    );
    assert!(
        req.method.eq_ignore_ascii_case("GET"),
        "allowed a {:?}: {req:?}",
        req.method
    );
    let path = canonical_path(&req.path).expect("allowed a non-canonical path");
    let pattern = PathPattern::parse(PEER_PATH).expect("peer path pattern");
    assert!(pattern.matches(&path), "allowed {path:?}: {req:?}");
    assert!(
        !path.starts_with("/admin"),
        "allowed under the deny rule: {req:?}"
    );
}
