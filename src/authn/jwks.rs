//! Verification keys per issuer: JWKS from a file or URL, or an HMAC secret.
//!
//! Keys are loaded at start, refreshed on an interval, and refetched when a token
//! names an unknown `kid` (at most once per `refetch_min_interval`, so a flood of
//! made-up `kid`s cannot turn into a flood of fetches). A failed fetch keeps the last
//! good set: a JWKS endpoint outage must not lock every caller out.
//!
//! At most one fetch per issuer is in flight (single flight), and it runs in a task of
//! its own. A check with an unknown `kid` waits for that fetch, started by it or by
//! anyone else, for at most `unknown_kid_wait`, then is answered `unknown_key`: a slow
//! or hanging key server costs a check that bounded wait, never a queue of fetch
//! timeouts, and never holds it past Envoy's own timeout (where `failure_mode_allow`
//! would decide instead of us).
//!
//! A new set that drops or changes a key the last one had counts a removal
//! ([`IssuerKeys::removals`]). Both caches key on the count, so a token verified with
//! a key the issuer has since withdrawn is verified again, not answered from a cache.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize as _;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::crypto;
use crate::config::{redacted_uri, Issuer, KeySource};
use crate::telemetry::Metrics;

/// JWKS documents larger than this are refused; real ones are a few KiB.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// How long one JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One verification key and the algorithms it may verify.
pub struct VerifyKey {
    /// The key, for jsonwebtoken.
    pub key: DecodingKey,
    /// Algorithms this key may be used with: its family, narrowed by the JWK's own
    /// `alg` and, for EC keys, by the curve (RFC 7518 3.4: ES256 is P-256 only).
    pub algorithms: Vec<Algorithm>,
    /// Its RSA/ECDSA forms parsed once, here, not per signature.
    parsed: crypto::Parsed,
}

impl VerifyKey {
    fn new(key: DecodingKey, algorithms: Vec<Algorithm>) -> VerifyKey {
        let parsed = crypto::Parsed::new(&key, &algorithms);
        VerifyKey {
            key,
            algorithms,
            parsed,
        }
    }

    /// Checks a token's `signature` over its `message` (see [`crypto::verify`]).
    pub fn verify(
        &self,
        signature: &str,
        message: &[u8],
        algorithm: Algorithm,
    ) -> jsonwebtoken::errors::Result<bool> {
        crypto::verify(signature, message, &self.key, &self.parsed, algorithm)
    }
}

/// A loaded key set.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    all: Vec<Arc<VerifyKey>>,
    /// A digest of each usable key as published (the whole JWK, `kid` and `alg`
    /// included; the secret for HMAC), to tell when a key is withdrawn or changed.
    digests: Vec<[u8; 32]>,
}

impl KeySet {
    /// Parses a JWKS document. Keys that are not for signatures, of unsupported types,
    /// or symmetric (`oct`: a JWKS never carries HMAC secrets for us) are skipped; a
    /// document with no usable key is an error.
    pub fn from_jwks(bytes: &[u8]) -> Result<KeySet, JwksError> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc =
            serde_json::from_slice(bytes).map_err(|e| JwksError::Parse(e.to_string()))?;
        let mut set = KeySet::default();
        for value in doc.keys {
            let Ok(jwk) = Jwk::deserialize(&value) else {
                continue;
            };
            let Some(key) = verify_key(&jwk) else {
                continue;
            };
            let key = Arc::new(key);
            if let Some(kid) = &jwk.common.key_id {
                // The first key with a kid is the one a token naming it gets; a later
                // duplicate is skipped (and left out of the digests, so which key a
                // kid reaches can only change with them).
                if set.by_kid.contains_key(kid) {
                    continue;
                }
                set.by_kid.insert(kid.clone(), key.clone());
            }
            set.all.push(key);
            set.digests.push(Sha256::digest(value.to_string()).into());
        }
        if set.all.is_empty() {
            return Err(JwksError::NoUsableKeys);
        }
        Ok(set)
    }

    /// A set holding one HMAC secret.
    pub fn from_secret(secret: &[u8]) -> Result<KeySet, JwksError> {
        // RFC 7518 3.2: the HMAC key must be at least as long as the hash output.
        if secret.len() < 32 {
            return Err(JwksError::Parse("HMAC secret shorter than 32 bytes".into()));
        }
        let key = Arc::new(VerifyKey::new(
            DecodingKey::from_secret(secret),
            vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        ));
        Ok(KeySet {
            by_kid: HashMap::new(),
            all: vec![key],
            digests: vec![Sha256::digest(secret).into()],
        })
    }

    /// Whether every key of `old` is in this set, unchanged.
    fn keeps_all_of(&self, old: &KeySet) -> bool {
        old.digests.iter().all(|d| self.digests.contains(d))
    }

    /// The key for a token header: by `kid`, or the only key usable for `alg` when
    /// the token names none.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Arc<VerifyKey>> {
        match kid {
            Some(kid) if !self.by_kid.is_empty() => self.by_kid.get(kid),
            _ => {
                let mut usable = self.all.iter().filter(|k| k.algorithms.contains(&alg));
                let first = usable.next();
                // Several candidates and no kid: refuse rather than try each key.
                if usable.next().is_some() {
                    None
                } else {
                    first
                }
            }
        }
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }
}

fn verify_key(jwk: &Jwk) -> Option<VerifyKey> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        _ => return None,
    };
    let algorithms = match &jwk.common.key_algorithm {
        None => family,
        Some(ka) => {
            let alg: Algorithm = format!("{ka:?}").parse().ok()?;
            if !family.contains(&alg) {
                return None;
            }
            vec![alg]
        }
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey::new(key, algorithms))
}

/// Why keys could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JwksError {
    /// Reading the file failed.
    #[error("reading {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// The HTTP fetch failed.
    #[error("fetching {url}: {message}")]
    Fetch {
        /// The URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The document is not a JWKS.
    #[error("invalid JWKS: {0}")]
    Parse(String),
    /// The JWKS has no key we can verify with.
    #[error("JWKS has no usable signing key")]
    NoUsableKeys,
    /// The fetch task ended without an answer (the runtime is shutting down).
    #[error("key fetch interrupted")]
    Interrupted,
}

/// Why no key was found for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLookupError {
    /// The issuer's keys have never been loaded: a server fault, not the caller's.
    Unavailable,
    /// No key matches the token's `kid` (or there are several and it names none).
    UnknownKey,
}

/// What a fetch in flight ends with: `None` until it is done, then the number of keys
/// installed or why none were.
type FetchResult = Option<Result<usize, JwksError>>;

/// The single-flight state: when the last fetch started, and the one in flight.
#[derive(Default)]
struct Flight {
    last_started: Option<Instant>,
    /// Watches the fetch in flight; `None` once it is done.
    in_flight: Option<watch::Receiver<FetchResult>>,
}

/// How long refetches triggered by unknown `kid`s wait, and how often they may start.
#[derive(Debug, Clone, Copy)]
pub struct RefetchPolicy {
    /// The shortest time between two refetches triggered by an unknown `kid`.
    pub min_interval: Duration,
    /// How long a check with an unknown `kid` waits for a fetch to finish.
    pub unknown_kid_wait: Duration,
}

/// The keys of one issuer, with their refresh state.
pub struct IssuerKeys {
    issuer: String,
    metrics: Arc<Metrics>,
    source: KeySource,
    current: ArcSwapOption<KeySet>,
    /// New sets that dropped or changed a key of the set before them.
    removals: AtomicU64,
    refetch: RefetchPolicy,
    /// Held only to read or update the state, never across a fetch.
    flight: std::sync::Mutex<Flight>,
    http: reqwest::Client,
}

impl IssuerKeys {
    /// Keys for `source`, not loaded yet.
    pub fn new(
        issuer: &str,
        source: KeySource,
        refetch: RefetchPolicy,
        http: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Self {
        IssuerKeys {
            issuer: issuer.to_string(),
            metrics,
            source,
            current: ArcSwapOption::empty(),
            removals: AtomicU64::new(0),
            refetch,
            flight: std::sync::Mutex::new(Flight::default()),
            http,
        }
    }

    /// Whether a key set has ever been loaded.
    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// Loads the keys now (or joins the fetch in flight) and waits for it to end; on
    /// failure the last good set stays.
    pub async fn refresh(self: &Arc<Self>) -> Result<usize, JwksError> {
        // (A forced fetch always starts or joins one.)
        let Some(mut done) = self.join_or_start(true) else {
            return Err(JwksError::Interrupted);
        };
        let result = match done.wait_for(Option::is_some).await {
            Ok(result) => result.clone().unwrap_or(Err(JwksError::Interrupted)),
            Err(_) => Err(JwksError::Interrupted),
        };
        result
    }

    /// The fetch in flight, or a new one if none is and one is due (`force`: always
    /// due). Only one fetch runs at a time, so an older set can never be installed
    /// over a newer one, and a burst of unknown `kid`s shares one fetch.
    fn join_or_start(self: &Arc<Self>, force: bool) -> Option<watch::Receiver<FetchResult>> {
        let mut flight = self.flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = &flight.in_flight {
            return Some(rx.clone());
        }
        let due = force
            || flight
                .last_started
                .is_none_or(|t| t.elapsed() >= self.refetch.min_interval);
        if !due {
            return None;
        }
        flight.last_started = Some(Instant::now());
        let (tx, rx) = watch::channel(None);
        flight.in_flight = Some(rx.clone());
        let keys = self.clone();
        // A task of its own: a check that stops waiting does not cancel the fetch,
        // so the next check with the new `kid` finds the key.
        tokio::spawn(async move {
            let result = keys.fetch().await.map(|set| {
                let n = set.len();
                keys.install(set);
                n
            });
            // A refresh logs its own result; a refetch has no one else to.
            if let (false, Err(e)) = (force, &result) {
                tracing::warn!(issuer = %keys.issuer, error = %e, "JWKS refetch failed; keeping the last good keys");
            }
            keys.flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .in_flight = None;
            let _ = tx.send(Some(result));
        });
        Some(rx)
    }

    /// Makes `set` current, counting a removal if it lacks a key of the set it
    /// replaces. The count goes up after the swap: a check that reads the new count
    /// (before it looks up a key) can only find the new set or a later one.
    fn install(&self, set: KeySet) {
        let set = Arc::new(set);
        let old = self.current.swap(Some(set.clone()));
        if old.is_some_and(|old| !set.keeps_all_of(&old)) {
            self.removals.fetch_add(1, Ordering::SeqCst);
            tracing::info!(
                issuer = %self.issuer,
                "a key was withdrawn or changed; cached tokens and decisions are verified again"
            );
        }
    }

    /// How many times a new set has dropped or changed a key; part of both caches'
    /// keys.
    pub fn removals(&self) -> u64 {
        self.removals.load(Ordering::SeqCst)
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        let result = self.load().await;
        self.metrics.jwks_fetch(&self.issuer, result.is_ok());
        result
    }

    async fn load(&self) -> Result<KeySet, JwksError> {
        match &self.source {
            KeySource::File(path) => KeySet::from_jwks(&read(path).await?),
            KeySource::Secret(path) => {
                let bytes = read(path).await?;
                // A trailing newline from `echo` or an editor is not part of the secret.
                let trimmed = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
                KeySet::from_secret(trimmed)
            }
            KeySource::Discovery(issuer) => super::discovery::fetch_keys(&self.http, issuer).await,
            KeySource::Url(url) => {
                // Never the whole URL: it may carry credentials (see `redacted_uri`).
                let fail = |message: String| JwksError::Fetch {
                    url: redacted_uri(url),
                    message,
                };
                let mut resp = self
                    .http
                    .get(url)
                    .timeout(FETCH_TIMEOUT)
                    .send()
                    .await
                    .map_err(|e| fail(http_error(e)))?;
                if !resp.status().is_success() {
                    return Err(fail(format!("status {}", resp.status())));
                }
                let mut body = Vec::new();
                while let Some(chunk) = resp.chunk().await.map_err(|e| fail(http_error(e)))? {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_JWKS_BYTES {
                        return Err(fail("document larger than 1 MiB".into()));
                    }
                }
                KeySet::from_jwks(&body)
            }
        }
    }

    /// The key for a token. When the `kid` is unknown, waits at most
    /// `unknown_kid_wait` for the fetch in flight, or for one it starts if one is due
    /// (rate-limited by `refetch_min_interval`), then looks again.
    pub async fn key_for(
        self: &Arc<Self>,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<VerifyKey>, KeyLookupError> {
        if let Some(set) = self.current.load_full() {
            if let Some(key) = set.find(kid, alg) {
                return Ok(key.clone());
            }
        }
        if let Some(mut done) = self.join_or_start(false) {
            // Timing out leaves the fetch running; its keys serve later checks.
            let _ = tokio::time::timeout(
                self.refetch.unknown_kid_wait,
                done.wait_for(Option::is_some),
            )
            .await;
        }
        match self.current.load_full() {
            None => Err(KeyLookupError::Unavailable),
            Some(set) => set
                .find(kid, alg)
                .cloned()
                .ok_or(KeyLookupError::UnknownKey),
        }
    }
}

/// A reqwest error's text without the URL it would repeat (reqwest puts the whole URL,
/// userinfo and query included, in its message), with its causes, which name no URL.
fn http_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The HTTP client every JWKS fetch uses. Redirects are not followed: a key set must
/// come from the URL the config names, not wherever that URL points next.
pub fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// One key store per configured issuer, none loaded yet.
pub fn key_stores(
    issuers: &[Issuer],
    http: &reqwest::Client,
    metrics: &Arc<Metrics>,
) -> Vec<(Issuer, Arc<IssuerKeys>)> {
    issuers
        .iter()
        .map(|issuer| {
            let refetch = RefetchPolicy {
                min_interval: issuer.spec.refetch_min_interval,
                unknown_kid_wait: issuer.spec.unknown_kid_wait,
            };
            let keys = IssuerKeys::new(
                &issuer.spec.issuer,
                issuer.keys.clone(),
                refetch,
                http.clone(),
                metrics.clone(),
            );
            (issuer.clone(), Arc::new(keys))
        })
        .collect()
}

async fn read(path: &PathBuf) -> Result<Vec<u8>, JwksError> {
    let bytes = tokio::fs::read(path).await.map_err(|e| JwksError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(JwksError::Read {
            path: path.display().to_string(),
            message: "file larger than 1 MiB".into(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_N: &str = "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw";

    fn jwks(keys: &str) -> Vec<u8> {
        format!(r#"{{"keys":[{keys}]}}"#).into_bytes()
    }

    #[test]
    fn parses_and_filters_keys() {
        let rsa = format!(
            r#"{{"kty":"RSA","kid":"r1","use":"sig","alg":"RS256","n":"{RSA_N}","e":"AQAB"}}"#
        );
        let enc = format!(r#"{{"kty":"RSA","kid":"r2","use":"enc","n":"{RSA_N}","e":"AQAB"}}"#);
        let oct = r#"{"kty":"oct","kid":"h1","k":"c2VjcmV0"}"#;
        let junk = r#"{"kty":"XYZ","kid":"j"}"#;
        let set = KeySet::from_jwks(&jwks(&format!("{rsa},{enc},{oct},{junk}"))).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.find(Some("r1"), Algorithm::RS256).is_some());
        assert!(set.find(Some("r2"), Algorithm::RS256).is_none());
        assert!(set.find(Some("h1"), Algorithm::HS256).is_none());
        let key = set.find(None, Algorithm::RS256).unwrap();
        assert_eq!(key.algorithms, vec![Algorithm::RS256]);
        assert!(set.find(None, Algorithm::PS256).is_none());
    }

    #[test]
    fn rejects_useless_documents() {
        assert!(matches!(KeySet::from_jwks(b"{}"), Err(JwksError::Parse(_))));
        assert!(matches!(
            KeySet::from_jwks(b"not json"),
            Err(JwksError::Parse(_))
        ));
        assert!(matches!(
            KeySet::from_jwks(&jwks(r#"{"kty":"oct","k":"c2VjcmV0"}"#)),
            Err(JwksError::NoUsableKeys)
        ));
        assert!(KeySet::from_secret(b"short").is_err());
    }

    #[test]
    fn no_kid_with_several_candidates_is_refused() {
        let a = format!(r#"{{"kty":"RSA","kid":"a","n":"{RSA_N}","e":"AQAB"}}"#);
        let b = format!(r#"{{"kty":"RSA","kid":"b","n":"{RSA_N}","e":"AQAB"}}"#);
        let set = KeySet::from_jwks(&jwks(&format!("{a},{b}"))).unwrap();
        assert!(set.find(None, Algorithm::RS256).is_none());
        assert!(set.find(Some("b"), Algorithm::RS256).is_some());
        assert!(set.find(Some("c"), Algorithm::RS256).is_none());
    }

    #[tokio::test]
    async fn a_set_that_drops_or_changes_a_key_counts_a_removal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let keys = Arc::new(IssuerKeys::new(
            "https://issuer",
            KeySource::File(path.clone()),
            RefetchPolicy {
                min_interval: Duration::from_secs(1),
                unknown_kid_wait: Duration::from_millis(100),
            },
            reqwest::Client::new(),
            Arc::new(Metrics::new()),
        ));
        // (the set published as (kid, alg) pairs, the removals counted once it loads)
        let steps: [(&[(&str, &str)], u64); 8] = [
            (&[("a", "RS256"), ("b", "RS256")], 0),
            // The same keys, reordered: nothing withdrawn.
            (&[("b", "RS256"), ("a", "RS256")], 0),
            // A key added.
            (&[("a", "RS256"), ("b", "RS256"), ("c", "RS256")], 0),
            // One withdrawn.
            (&[("a", "RS256"), ("c", "RS256")], 1),
            // One changed under the same kid.
            (&[("a", "PS256"), ("c", "RS256")], 2),
            // Unchanged again.
            (&[("c", "RS256"), ("a", "PS256")], 2),
            // A duplicate kid after the key it names: skipped, nothing changes.
            (&[("a", "PS256"), ("a", "RS256"), ("c", "RS256")], 2),
            // The duplicates swapped: kid "a" now reaches another key.
            (&[("a", "RS256"), ("a", "PS256"), ("c", "RS256")], 3),
        ];
        for (published, removals) in steps {
            let doc: Vec<String> = published
                .iter()
                .map(|(kid, alg)| {
                    format!(
                        r#"{{"kty":"RSA","kid":"{kid}","alg":"{alg}","n":"{RSA_N}","e":"AQAB"}}"#
                    )
                })
                .collect();
            std::fs::write(&path, jwks(&doc.join(","))).unwrap();
            keys.refresh().await.unwrap();
            assert_eq!(keys.removals(), removals, "{published:?}");
        }
        // A failed load keeps the last set and counts nothing.
        std::fs::write(&path, "not json").unwrap();
        assert!(keys.refresh().await.is_err());
        assert_eq!(keys.removals(), 3);
    }

    #[tokio::test]
    async fn keys_are_loaded_once_a_refresh_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), [9u8; 32]).unwrap();
        let text = "issuers:\n  - issuer: i\n    secret_file: secret\n    algorithms: [HS256]\n";
        let config = crate::config::Config::from_str(text, &dir.path().join("c.yaml")).unwrap();
        let metrics = Arc::new(Metrics::new());
        let stores = key_stores(&config.issuers, &reqwest::Client::new(), &metrics);
        let keys = &stores[0].1;
        assert!(!keys.is_loaded(), "loaded before any refresh");
        keys.refresh().await.unwrap();
        assert!(keys.is_loaded());
    }
    #[test]
    fn ec_and_ed25519_keys_verify_only_their_own_algorithm() {
        use crate::authn::test_issuer::{ec_jwk, ed25519_jwk};
        let mut p256_as_es384 = ec_jwk("P-256", "p256-es384");
        p256_as_es384["alg"] = "ES384".into();
        let mut okp_on_p256 = ed25519_jwk("okp-p256");
        okp_on_p256["crv"] = "P-256".into();
        let keys = [
            ec_jwk("P-256", "p256"),
            ec_jwk("P-384", "p384"),
            ed25519_jwk("ed"),
            // Skipped: a curve we do not verify, an `alg` outside the curve's
            // family, an octet key pair on a curve that is not Ed25519.
            ec_jwk("P-521", "p521"),
            p256_as_es384,
            okp_on_p256,
        ];
        let doc = serde_json::json!({ "keys": keys }).to_string();
        let set = KeySet::from_jwks(doc.as_bytes()).unwrap();
        assert_eq!(set.len(), 3);
        assert!(!set.is_empty());
        for (kid, alg) in [
            ("p256", Algorithm::ES256),
            ("p384", Algorithm::ES384),
            ("ed", Algorithm::EdDSA),
        ] {
            let key = set.find(Some(kid), alg).unwrap();
            assert_eq!(key.algorithms, vec![alg], "{kid}");
        }
        for kid in ["p521", "p256-es384", "okp-p256"] {
            assert!(set.find(Some(kid), Algorithm::ES256).is_none(), "{kid}");
        }
        // Without a kid, each algorithm has exactly one key.
        for alg in [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA] {
            assert_eq!(set.find(None, alg).unwrap().algorithms, vec![alg]);
        }
        assert!(set.find(None, Algorithm::RS256).is_none());
    }

    #[test]
    fn a_set_without_kids_serves_a_token_naming_any_kid_by_its_algorithm() {
        // No key has a kid: the token's kid cannot be looked up, so the one key
        // usable for its algorithm is it (as with no kid at all).
        let key = format!(r#"{{"kty":"RSA","n":"{RSA_N}","e":"AQAB"}}"#);
        let set = KeySet::from_jwks(&jwks(&key)).unwrap();
        assert!(set.find(Some("whatever"), Algorithm::RS256).is_some());
        assert!(set.find(None, Algorithm::RS256).is_some());
        assert!(set.find(Some("whatever"), Algorithm::ES256).is_none());
    }

    #[test]
    fn len_counts_the_usable_keys_and_an_empty_set_is_empty() {
        let a = format!(r#"{{"kty":"RSA","kid":"a","n":"{RSA_N}","e":"AQAB"}}"#);
        let b = format!(r#"{{"kty":"RSA","kid":"b","n":"{RSA_N}","e":"AQAB"}}"#);
        let set = KeySet::from_jwks(&jwks(&format!("{a},{b}"))).unwrap();
        assert_eq!(set.len(), 2);
        assert!(!set.is_empty());
        let empty = KeySet::default();
        assert_eq!(empty.len(), 0);
        assert!(empty.is_empty());
    }
    /// Keys of `issuer` from `source`, refetched at most every second.
    fn store(source: KeySource) -> Arc<IssuerKeys> {
        Arc::new(IssuerKeys::new(
            "https://issuer",
            source,
            RefetchPolicy {
                min_interval: Duration::from_secs(1),
                unknown_kid_wait: Duration::from_millis(500),
            },
            http_client().unwrap(),
            Arc::new(Metrics::new()),
        ))
    }

    /// The JWKS with `n` P-256 keys (kids k0, k1, ...), padded with spaces to `len`.
    fn ec_jwks(n: usize, len: usize) -> Vec<u8> {
        let keys: Vec<_> = (0..n)
            .map(|i| crate::authn::test_issuer::ec_jwk("P-256", &format!("k{i}")))
            .collect();
        let mut doc = crate::authn::test_issuer::jwks(&keys);
        doc.resize(len.max(doc.len()), b' ');
        doc
    }

    #[tokio::test]
    async fn a_jwks_url_is_fetched_bounded_and_its_failures_name_it_redacted() {
        let server = crate::authn::test_issuer::Issuer::start().await;
        // Credentials in the URL never reach an error or a log.
        let url = format!("http://u:s3cret@{}/keys?token=s3cret", &server.url[7..]);
        let keys = store(KeySource::Url(url));
        let served = "/keys?token=s3cret";
        let fetch_error = |result: Result<usize, JwksError>| match result {
            Err(JwksError::Fetch { url, message }) => {
                let host = &server.url[7..];
                assert_eq!(url, format!("http://redacted@{host}/keys?redacted"));
                assert!(!message.contains("s3cret"), "{message}");
                message
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(fetch_error(keys.refresh().await), "status 404 Not Found");
        assert!(!keys.is_loaded());

        server.serve(served, 200, ec_jwks(2, MAX_JWKS_BYTES));
        assert_eq!(keys.refresh().await.unwrap(), 2);
        assert!(keys.is_loaded());
        assert_eq!(keys.removals(), 0);

        for len in [MAX_JWKS_BYTES + 1, 3 * MAX_JWKS_BYTES + 7] {
            server.serve(served, 200, ec_jwks(1, len));
            let message = fetch_error(keys.refresh().await);
            assert_eq!(message, "document larger than 1 MiB");
        }
        server.serve(served, 503, ec_jwks(1, 0));
        assert_eq!(
            fetch_error(keys.refresh().await),
            "status 503 Service Unavailable"
        );
        // The last good keys stay through every failure.
        let key = keys.key_for(Some("k1"), Algorithm::ES256).await;
        assert_eq!(key.unwrap().algorithms, vec![Algorithm::ES256]);

        // Nothing listening: the error says why, with its causes.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let nobody = format!("http://{}/keys", closed.local_addr().unwrap());
        drop(closed);
        let result = store(KeySource::Url(nobody.clone())).refresh().await;
        let Err(JwksError::Fetch { url, message }) = result else {
            panic!("{result:?}");
        };
        assert_eq!(url, nobody);
        assert!(message.contains("Connection refused"), "{message}");
    }

    #[tokio::test]
    async fn key_files_and_secret_files_are_read_up_to_1_mib() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let keys = store(KeySource::File(path.clone()));
        std::fs::write(&path, ec_jwks(3, MAX_JWKS_BYTES)).unwrap();
        assert_eq!(keys.refresh().await.unwrap(), 3);
        std::fs::write(&path, ec_jwks(3, MAX_JWKS_BYTES + 1)).unwrap();
        let Err(JwksError::Read { message, .. }) = keys.refresh().await else {
            panic!("a file over 1 MiB was read");
        };
        assert_eq!(message, "file larger than 1 MiB");

        // A secret of 32 bytes, with or without the newline an editor adds; 31 is
        // too short either way.
        let path = dir.path().join("secret");
        let keys = store(KeySource::Secret(path.clone()));
        for (secret, ok) in [
            (vec![7u8; 32], true),
            ([vec![7u8; 32], b"\n".to_vec()].concat(), true),
            ([vec![7u8; 31], b"\n".to_vec()].concat(), false),
            (vec![7u8; 31], false),
        ] {
            std::fs::write(&path, &secret).unwrap();
            assert_eq!(keys.refresh().await.is_ok(), ok, "{} bytes", secret.len());
        }
    }
    #[tokio::test]
    async fn a_jwks_url_that_redirects_is_refused_not_followed() {
        let server = crate::authn::test_issuer::Issuer::start().await;
        server.serve("/elsewhere", 200, ec_jwks(1, 0));
        server.redirect("/keys", &format!("{}/elsewhere", server.url));
        let keys = store(KeySource::Url(format!("{}/keys", server.url)));
        let result = keys.refresh().await;
        let Err(JwksError::Fetch { message, .. }) = result else {
            panic!("{result:?}");
        };
        assert_eq!(message, "status 302 Found");
    }

    #[tokio::test]
    async fn an_unknown_kid_refetches_the_keys_at_most_once_per_min_interval() {
        let server = crate::authn::test_issuer::Issuer::start().await;
        let keys = Arc::new(IssuerKeys::new(
            "https://issuer",
            KeySource::Url(format!("{}/keys", server.url)),
            RefetchPolicy {
                min_interval: Duration::from_millis(400),
                unknown_kid_wait: Duration::from_secs(2),
            },
            http_client().unwrap(),
            Arc::new(Metrics::new()),
        ));
        // Never loaded: a server fault, not the caller's, even after a refetch fails.
        assert_eq!(
            keys.key_for(Some("k0"), Algorithm::ES256).await.err(),
            Some(KeyLookupError::Unavailable)
        );
        let one = crate::authn::test_issuer::ec_jwk("P-256", "k0");
        let two = crate::authn::test_issuer::ec_jwk("P-256", "k1");
        server.serve(
            "/keys",
            200,
            crate::authn::test_issuer::jwks(std::slice::from_ref(&one)),
        );
        // The first lookup's refetch was just now: within the interval, none starts.
        assert_eq!(
            keys.key_for(Some("k0"), Algorithm::ES256).await.err(),
            Some(KeyLookupError::Unavailable)
        );
        tokio::time::sleep(Duration::from_millis(450)).await;
        // Due again: the lookup starts a fetch and waits for it.
        assert!(keys.key_for(Some("k0"), Algorithm::ES256).await.is_ok());
        server.serve("/keys", 200, crate::authn::test_issuer::jwks(&[one, two]));
        assert_eq!(
            keys.key_for(Some("k1"), Algorithm::ES256).await.err(),
            Some(KeyLookupError::UnknownKey)
        );
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert!(keys.key_for(Some("k1"), Algorithm::ES256).await.is_ok());
        // A forced refresh is never held back by the interval.
        assert_eq!(keys.refresh().await.unwrap(), 2);
    }
}
