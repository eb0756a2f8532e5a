//! Bearer JWT verification (RFC 7519, with RFC 8725's best current practices).
//!
//! The header and payload are decoded here, once; `jsonwebtoken` checks only the
//! signature. Doing the claim checks ourselves keeps every rejection a named reason
//! and keeps time handling (leeway, maximum lifetime) in one readable place.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::delegation::{self, Delegation, DelegationError};
use super::jwks::{IssuerKeys, KeyLookupError};
use super::subject::{self, SubjectError};
use crate::config::Issuer;
use crate::principal::{Claims, Principal, PrincipalKind, SpiffeId};

/// Tokens longer than this are refused before any decoding; Envoy's default header
/// limit is 60 KiB, and no sane access token comes near 16 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a bearer token was rejected. All of these are the caller's fault and answer
/// 401, except [`TokenError::KeysUnavailable`], which is ours (gRPC UNAVAILABLE).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts of JSON, too long, or a required claim has the wrong type.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header has `crit`, which we do not implement (RFC 7515 4.1.11).
    #[error("token header has crit extensions")]
    CriticalHeader,
    /// The header's `typ` says this is not an access token.
    #[error("token type not accepted")]
    WrongType,
    /// `iss` names no configured issuer.
    #[error("unknown issuer")]
    UnknownIssuer,
    /// `alg` is `none`, unknown, or not in the issuer's allow-list.
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    /// No key with that `kid`.
    #[error("unknown signing key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` is missing and the issuer requires it.
    #[error("token has no exp")]
    MissingExp,
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` is in the future (beyond the leeway).
    #[error("token issued in the future")]
    IssuedInFuture,
    /// `exp - iat` is longer than the issuer's `max_lifetime`, or `iat` is missing.
    #[error("token lifetime exceeds the issuer maximum")]
    LifetimeTooLong,
    /// The principal claim is missing, empty, not a string, or has a control
    /// character (it could not be passed on as an identity header).
    #[error("token has no usable principal claim")]
    MissingPrincipal,
    /// The principal claim starts with `spiffe://` but is not a valid SPIFFE ID
    /// (a `..` or empty segment, an upper-case trust domain, `%` escapes): it
    /// could slip past rules that match SPIFFE IDs segment by segment.
    #[error("token principal claim starts with spiffe:// but is not a valid SPIFFE ID")]
    PrincipalNotSpiffeId,
    /// The issuer's keys were never loaded.
    #[error("keys for the issuer are not loaded")]
    KeysUnavailable,
    /// The delegation claims (`act`, `may_act`) are malformed or the chain is too deep.
    #[error("bad delegation: {0}")]
    Delegation(#[from] DelegationError),
}

impl TokenError {
    /// A short, stable name for the decision log.
    pub fn as_str(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "malformed",
            TokenError::CriticalHeader => "crit_header",
            TokenError::WrongType => "wrong_type",
            TokenError::UnknownIssuer => "unknown_issuer",
            TokenError::AlgorithmNotAllowed => "algorithm_not_allowed",
            TokenError::UnknownKey => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::MissingExp => "missing_exp",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::IssuedInFuture => "issued_in_future",
            TokenError::LifetimeTooLong => "lifetime_too_long",
            TokenError::MissingPrincipal => "missing_principal",
            TokenError::PrincipalNotSpiffeId => "principal_not_spiffe_id",
            TokenError::KeysUnavailable => "keys_unavailable",
            TokenError::Delegation(e) => e.as_str(),
        }
    }
}

/// A token whose signature, issuer and times checked out. The audience is checked
/// per destination service, later, because one token may serve several hops.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    /// The issuer that signed it.
    pub issuer: String,
    /// The principal claim's value.
    pub subject: String,
    /// The issuer's principal kind.
    pub kind: PrincipalKind,
    /// Scopes from `scope` or `scp`.
    pub scopes: Vec<String>,
    /// The `aud` values.
    pub audiences: Vec<String>,
    /// `exp` as time since the epoch, fraction included (RFC 7519 2: a NumericDate
    /// may be non-integer).
    pub exp: Option<Duration>,
    /// The issuer's leeway, so a cached token is held to the same clock.
    pub leeway: Duration,
    /// All claims.
    pub claims: Claims,
    /// The actors when the token is delegated (RFC 8693 `act`), outermost first.
    pub delegation: Option<Arc<Delegation>>,
}

impl VerifiedToken {
    /// Whether `aud` names one of the service's audiences (RFC 7519 4.1.3: a
    /// recipient that does not identify itself with a value in `aud` must reject).
    pub fn is_for(&self, audiences: &[String]) -> bool {
        self.audiences.iter().any(|a| audiences.contains(a))
    }

    /// Whether the token is still before `exp` (plus leeway) at `now` (time since the
    /// epoch), by the same rule as a fresh verification ([`is_expired`]).
    pub fn is_live(&self, now: Duration) -> bool {
        self.exp
            .is_none_or(|exp| !is_expired(exp, self.leeway, now))
    }

    /// The principal this token names, with the mTLS peer beside it.
    pub fn principal(&self, peer: Option<SpiffeId>) -> Principal {
        Principal {
            kind: self.kind,
            id: self.subject.clone(),
            issuer: Some(self.issuer.clone()),
            scopes: self.scopes.clone(),
            claims: self.claims.clone(),
            peer,
            delegation: self.delegation.clone(),
            api_key: None,
        }
    }
}

struct TrustedIssuer {
    config: Issuer,
    keys: Arc<IssuerKeys>,
}

/// Verifies tokens against the configured issuers.
pub struct JwtVerifier {
    issuers: HashMap<String, TrustedIssuer>,
}

/// `typ` values accepted when present: plain JWTs and OAuth access tokens (RFC 9068).
/// Anything else (`dpop+jwt`, `logout+jwt`, …) is another kind of JWT that must not
/// pass as an access token (RFC 8725 3.11).
const ACCEPTED_TYP: [&str; 3] = ["jwt", "at+jwt", "application/at+jwt"];

impl JwtVerifier {
    /// A verifier over issuers and their key stores.
    pub fn new(issuers: Vec<(Issuer, Arc<IssuerKeys>)>) -> Self {
        JwtVerifier {
            issuers: issuers
                .into_iter()
                .map(|(config, keys)| (config.spec.issuer.clone(), TrustedIssuer { config, keys }))
                .collect(),
        }
    }

    /// Every issuer's key store, for refresh tasks and readiness.
    pub fn key_stores(&self) -> impl Iterator<Item = (&str, &Arc<IssuerKeys>, &Issuer)> {
        self.issuers
            .iter()
            .map(|(name, t)| (name.as_str(), &t.keys, &t.config))
    }

    /// The issuers' key removals so far ([`IssuerKeys::removals`]), summed: it goes up
    /// whenever any issuer withdraws or changes a key.
    pub fn key_removals(&self) -> u64 {
        self.issuers.values().map(|t| t.keys.removals()).sum()
    }

    /// Verifies a compact JWS token at time `now` (time since the epoch).
    pub async fn verify(&self, token: &str, now: Duration) -> Result<VerifiedToken, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed("too long"));
        }
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("not a compact JWS"));
        };
        // Only `alg`, `kid`, `typ` and `crit` are read. `jku`, `x5u`, `jwk` and `x5c`
        // are deliberately ignored: keys come from config only (RFC 8725 3.10).
        let header: Map<String, Value> = decode_part(h64)?;
        if header.contains_key("crit") {
            return Err(TokenError::CriticalHeader);
        }
        match header.get("typ") {
            None => {}
            Some(Value::String(t)) if ACCEPTED_TYP.iter().any(|a| a.eq_ignore_ascii_case(t)) => {}
            Some(_) => return Err(TokenError::WrongType),
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.as_str()),
            Some(_) => return Err(TokenError::Malformed("kid is not a string")),
        };
        // `none` and unknown names fail to parse: there is no unsigned path.
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(|a| Algorithm::from_str(a).ok())
            .ok_or(TokenError::AlgorithmNotAllowed)?;
        let claims: Map<String, Value> = decode_part(p64)?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(TokenError::UnknownIssuer)?;
        let trusted = self.issuers.get(iss).ok_or(TokenError::UnknownIssuer)?;
        if !trusted.config.algorithms.contains(&alg) {
            return Err(TokenError::AlgorithmNotAllowed);
        }
        let key = trusted.keys.key_for(kid, alg).await.map_err(|e| match e {
            KeyLookupError::Unavailable => TokenError::KeysUnavailable,
            KeyLookupError::UnknownKey => TokenError::UnknownKey,
        })?;
        if !key.algorithms.contains(&alg) {
            return Err(TokenError::UnknownKey);
        }
        let message_len = h64.len() + 1 + p64.len();
        let message = &token.as_bytes()[..message_len];
        let valid = key
            .verify(sig, message, alg)
            .map_err(|_| TokenError::BadSignature)?;
        if !valid {
            return Err(TokenError::BadSignature);
        }
        let exp = check_times(&claims, &trusted.config, now)?;
        let spec = &trusted.config.spec;
        let subject = subject::usable(claims.get(&spec.principal_claim))
            .map_err(|e| match e {
                SubjectError::Unusable => TokenError::MissingPrincipal,
                SubjectError::NotSpiffeId => TokenError::PrincipalNotSpiffeId,
            })?
            .to_string();
        let delegation = delegation::parse(&claims, spec.max_delegation_depth)?.map(Arc::new);
        Ok(VerifiedToken {
            issuer: iss.to_string(),
            subject,
            kind: spec.kind,
            scopes: scopes(&claims),
            audiences: string_or_array(claims.get("aud")),
            exp,
            leeway: spec.leeway,
            claims: Arc::new(claims),
            delegation,
        })
    }
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed("bad base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed("bad JSON"))
}

/// RFC 7519 4.1.4/4.1.5/4.1.6 with the issuer's leeway; numeric dates must be numbers.
/// Times are compared exactly (nanoseconds, fractional claims kept), never in whole
/// seconds: a token is refused from the instant `exp + leeway` is reached.
/// Returns `exp` as checked: the caches bound their entries by this same value.
fn check_times(
    claims: &Map<String, Value>,
    issuer: &Issuer,
    now: Duration,
) -> Result<Option<Duration>, TokenError> {
    let spec = &issuer.spec;
    let leeway = spec.leeway;
    let date = |name: &str| -> Result<Option<Duration>, TokenError> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => numeric_date(v)
                .map(Some)
                .ok_or(TokenError::Malformed("numeric date claim is not a number")),
        }
    };
    let exp = date("exp")?;
    let nbf = date("nbf")?;
    let iat = date("iat")?;
    match exp {
        None if spec.require_exp => return Err(TokenError::MissingExp),
        Some(exp) if is_expired(exp, leeway, now) => return Err(TokenError::Expired),
        _ => {}
    }
    // RFC 7519 4.1.5: not accepted *before* `nbf`; at `nbf - leeway` it is.
    if nbf.is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
        return Err(TokenError::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
        return Err(TokenError::IssuedInFuture);
    }
    if let Some(max) = spec.max_lifetime {
        let (Some(exp), Some(iat)) = (exp, iat) else {
            return Err(TokenError::LifetimeTooLong);
        };
        if exp.saturating_sub(iat) > max {
            return Err(TokenError::LifetimeTooLong);
        }
    }
    Ok(exp)
}

/// RFC 7519 4.1.4: the token "MUST NOT be accepted for processing" on or after `exp`;
/// the leeway moves that instant later, nothing else does.
pub fn is_expired(exp: Duration, leeway: Duration, now: Duration) -> bool {
    now >= exp.saturating_add(leeway)
}

/// A NumericDate (RFC 7519 2): seconds since the epoch, an integer or not, as an exact
/// time; `None` for anything that is not a non-negative number. Dates past what a
/// `Duration` holds are the end of time, as they mean.
fn numeric_date(v: &Value) -> Option<Duration> {
    if let Some(secs) = v.as_u64() {
        return Some(Duration::from_secs(secs));
    }
    let secs = v.as_f64().filter(|f| f.is_finite() && *f >= 0.0)?;
    Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
}

/// Scopes from `scope` (RFC 8693 4.2: space-delimited string; some issuers send an
/// array) or, failing that, `scp` (array or string, as Azure AD and Okta do).
///
/// A string is split on U+0020 only (RFC 6749 3.3: `scope-token *( SP scope-token )`,
/// and a scope-token has no other whitespace): `"x\tledger.read"` is one scope, not
/// two, so a tab or newline cannot smuggle a scope past an issuer that checks tokens.
pub fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    let from = |v: Option<&Value>| -> Option<Vec<String>> {
        match v? {
            Value::String(s) => Some(
                s.split(' ')
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect(),
            ),
            Value::Array(items) => Some(
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
            ),
            _ => None,
        }
    };
    from(claims.get("scope"))
        .or_else(|| from(claims.get("scp")))
        .unwrap_or_default()
}

fn string_or_array(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// The time since the Unix epoch, to the nanosecond: what every time check compares.
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// Whole seconds since the Unix epoch (for minting tokens).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Proves at startup that a crypto backend is compiled in: `jsonwebtoken` without
/// one compiles fine and panics at the first verification, which in a server would
/// turn every check into an error. Better to refuse to start.
pub fn self_test() -> Result<(), String> {
    let result = std::panic::catch_unwind(|| {
        let secret = [7u8; 32];
        let header = jsonwebtoken::Header::new(Algorithm::HS256);
        let claims = serde_json::json!({"sub": "self-test"});
        let token = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .map_err(|e| e.to_string())?;
        let (message, sig) = token.rsplit_once('.').ok_or("no signature")?;
        let key = jsonwebtoken::DecodingKey::from_secret(&secret);
        match jsonwebtoken::crypto::verify(sig, message.as_bytes(), &key, Algorithm::HS256) {
            Ok(true) => Ok(()),
            Ok(false) => Err("self-signed token did not verify".to_string()),
            Err(e) => Err(e.to_string()),
        }
    });
    match result {
        Ok(r) => r.map_err(|e| format!("JWT crypto self-test failed: {e}")),
        Err(_) => Err("JWT crypto self-test panicked: no crypto backend compiled in".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn scope_parsing() {
        let cases: &[(Value, &[&str])] = &[
            (json!({"scope": "a b  c"}), &["a", "b", "c"]),
            (json!({"scope": ["a", "b"]}), &["a", "b"]),
            (json!({"scp": ["x"]}), &["x"]),
            (json!({"scp": "x y"}), &["x", "y"]),
            (json!({"scope": "a", "scp": ["x"]}), &["a"]),
            (json!({"scope": 5}), &[]),
            (json!({"scope": ""}), &[]),
            // RFC 6749 3.3: only U+0020 delimits.
            (json!({"scope": "x\tledger.read"}), &["x\tledger.read"]),
            (json!({"scope": "a\nb c"}), &["a\nb", "c"]),
            (json!({"scope": "a\u{a0}b"}), &["a\u{a0}b"]),
            (json!({"scp": "x\rledger.read"}), &["x\rledger.read"]),
            (json!({"scope": " a  b "}), &["a", "b"]),
            (json!({}), &[]),
        ];
        for (input, want) in cases {
            assert_eq!(scopes(&claims(input.clone())), *want, "{input}");
        }
    }

    fn issuer(leeway: u64, require_exp: bool, max_lifetime: Option<u64>) -> Issuer {
        let text = format!(
            "issuers:\n  - issuer: i\n    jwks_file: x\n    leeway: {leeway}s\n    require_exp: {require_exp}\n{}",
            max_lifetime.map(|m| format!("    max_lifetime: {m}s\n")).unwrap_or_default()
        );
        crate::config::Config::from_str(&text, std::path::Path::new("c.yaml"))
            .unwrap()
            .issuers
            .remove(0)
    }

    #[test]
    fn time_checks() {
        let now = 1_000_000;
        let at = Duration::from_secs(now);
        let strict = issuer(0, true, None);
        let lenient = issuer(30, true, None);
        let optional = issuer(0, false, None);
        let bounded = issuer(0, true, Some(3600));
        let cases: &[(&Issuer, Value, Result<(), TokenError>)] = &[
            (&strict, json!({"exp": now + 1}), Ok(())),
            // RFC 7519 4.1.4: on or after `exp`, refused.
            (&strict, json!({"exp": now}), Err(TokenError::Expired)),
            (&strict, json!({"exp": now - 1}), Err(TokenError::Expired)),
            (&lenient, json!({"exp": now - 29}), Ok(())),
            (&lenient, json!({"exp": now - 30}), Err(TokenError::Expired)),
            (&strict, json!({}), Err(TokenError::MissingExp)),
            (&optional, json!({}), Ok(())),
            (
                &strict,
                json!({"exp": "soon"}),
                Err(TokenError::Malformed("numeric date claim is not a number")),
            ),
            (
                &strict,
                json!({"exp": -5}),
                Err(TokenError::Malformed("numeric date claim is not a number")),
            ),
            (
                &strict,
                json!({"exp": now + 10, "nbf": now + 1}),
                Err(TokenError::NotYetValid),
            ),
            (&strict, json!({"exp": now + 10, "nbf": now}), Ok(())),
            (&lenient, json!({"exp": now + 10, "nbf": now + 30}), Ok(())),
            (
                &lenient,
                json!({"exp": now + 10, "nbf": now + 31}),
                Err(TokenError::NotYetValid),
            ),
            (
                &strict,
                json!({"exp": now + 10, "iat": now + 5}),
                Err(TokenError::IssuedInFuture),
            ),
            (&bounded, json!({"exp": now + 10, "iat": now}), Ok(())),
            (&bounded, json!({"exp": now + 3600, "iat": now}), Ok(())),
            (
                &bounded,
                json!({"exp": now + 3601, "iat": now}),
                Err(TokenError::LifetimeTooLong),
            ),
            (
                &bounded,
                json!({"exp": 1e300, "iat": now}),
                Err(TokenError::LifetimeTooLong),
            ),
            (
                &bounded,
                json!({"exp": now + 10}),
                Err(TokenError::LifetimeTooLong),
            ),
        ];
        for (issuer, input, want) in cases {
            assert_eq!(
                &check_times(&claims(input.clone()), issuer, at).map(|_| ()),
                want,
                "{input}"
            );
        }
    }

    /// Sub-second claims and clocks, compared exactly: half a second either side of
    /// `exp` and `nbf`, with and without leeway. A check that rounds a fractional
    /// `exp` up, or compares in whole seconds, accepts a token late and fails here.
    #[test]
    fn time_checks_are_exact_to_the_sub_second() {
        // The clock reads 1,000,000.75 s.
        let now = Duration::from_millis(1_000_000_750);
        let strict = issuer(0, true, None);
        let lenient = issuer(1, true, None);
        let expired = Err(TokenError::Expired);
        let early = Err(TokenError::NotYetValid);
        let cases: &[(&Issuer, Value, Result<(), TokenError>)] = &[
            // exp half a second before and after now.
            (&strict, json!({"exp": 1_000_000.25}), expired.clone()),
            (&strict, json!({"exp": 1_000_001.25}), Ok(())),
            // exp exactly now (fraction included), and a millisecond after.
            (&strict, json!({"exp": 1_000_000.75}), expired.clone()),
            (&strict, json!({"exp": 1_000_000.751}), Ok(())),
            // The integer second before now's is past, however close.
            (&strict, json!({"exp": 1_000_000}), expired.clone()),
            // With one second of leeway: exp + 1 s is the instant of refusal.
            (&lenient, json!({"exp": 999_999.75}), expired.clone()),
            (&lenient, json!({"exp": 999_999.76}), Ok(())),
            (&lenient, json!({"exp": 999_999.25}), expired.clone()),
            // nbf half a second after and before now.
            (
                &strict,
                json!({"exp": 1_000_010, "nbf": 1_000_001.25}),
                early.clone(),
            ),
            (
                &strict,
                json!({"exp": 1_000_010, "nbf": 1_000_000.25}),
                Ok(()),
            ),
            // nbf a tenth of a second ahead: still early (a check that rounds it down
            // would let it in).
            (
                &strict,
                json!({"exp": 1_000_010, "nbf": 1_000_000.85}),
                early.clone(),
            ),
            (
                &strict,
                json!({"exp": 1_000_010, "nbf": 1_000_000.75}),
                Ok(()),
            ),
            // With leeway, nbf - 1 s is the first instant of acceptance.
            (
                &lenient,
                json!({"exp": 1_000_010, "nbf": 1_000_001.75}),
                Ok(()),
            ),
            (
                &lenient,
                json!({"exp": 1_000_010, "nbf": 1_000_002.25}),
                early.clone(),
            ),
            // iat half a second ahead is in the future without leeway.
            (
                &strict,
                json!({"exp": 1_000_010, "iat": 1_000_001.25}),
                Err(TokenError::IssuedInFuture),
            ),
            (
                &strict,
                json!({"exp": 1_000_010, "iat": 1_000_000.25}),
                Ok(()),
            ),
        ];
        for (issuer, input, want) in cases {
            assert_eq!(
                &check_times(&claims(input.clone()), issuer, now).map(|_| ()),
                want,
                "{input}"
            );
        }
        // A cached token is held to the same instant.
        let token = |exp: f64, leeway: u64| VerifiedToken {
            issuer: "i".into(),
            subject: "s".into(),
            kind: PrincipalKind::Service,
            scopes: vec![],
            audiences: vec![],
            exp: numeric_date(&json!(exp)),
            leeway: Duration::from_secs(leeway),
            claims: Claims::default(),
            delegation: None,
        };
        assert!(!token(1_000_000.25, 0).is_live(now));
        assert!(!token(1_000_000.75, 0).is_live(now));
        assert!(token(1_000_001.25, 0).is_live(now));
        assert!(!token(999_999.75, 1).is_live(now));
        assert!(token(999_999.76, 1).is_live(now));
    }

    /// A token over `MAX_TOKEN_BYTES` is refused before anything else, even when it is
    /// validly signed by a trusted issuer; one just under it verifies.
    #[tokio::test]
    async fn a_validly_signed_token_over_the_size_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret = [7u8; 32];
        std::fs::write(dir.path().join("secret"), secret).unwrap();
        let text = "issuers:\n  - issuer: i\n    secret_file: secret\n    algorithms: [HS256]\n    leeway: 0s\n";
        let config = crate::config::Config::from_str(text, &dir.path().join("c.yaml")).unwrap();
        let http = reqwest::Client::new();
        let metrics = Arc::new(crate::telemetry::Metrics::new());
        let stores = super::super::jwks::key_stores(&config.issuers, &http, &metrics);
        for (_, keys) in &stores {
            keys.refresh().await.unwrap();
        }
        let verifier = JwtVerifier::new(stores);
        let now = unix_now();
        let sign = |padding: usize| {
            let claims = json!({
                "iss": "i", "sub": "svc", "exp": now.as_secs() + 60,
                "pad": "x".repeat(padding),
            });
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(&secret),
            )
            .unwrap()
        };
        // About 20 KB: refused as too long.
        let big = sign(15_000);
        assert!(
            big.len() > MAX_TOKEN_BYTES && big.len() < 21_000,
            "{}",
            big.len()
        );
        assert_eq!(
            verifier.verify(&big, now).await.err(),
            Some(TokenError::Malformed("too long"))
        );
        // Just under the limit (16 KiB, as documented): verified.
        let padding = (16 * 1024 - 200) * 3 / 4;
        let fits = sign(padding);
        assert!(fits.len() <= 16 * 1024, "{}", fits.len());
        assert_eq!(verifier.verify(&fits, now).await.unwrap().subject, "svc");
        // Exactly at the limit: verified; one byte over it: refused.
        let sized = |len: usize| {
            (0..300)
                .map(|more| sign(padding + more))
                .find(|t| t.len() == len)
                .unwrap_or_else(|| panic!("no token of {len} bytes"))
        };
        let at = sized(MAX_TOKEN_BYTES);
        assert_eq!(verifier.verify(&at, now).await.unwrap().subject, "svc");
        assert_eq!(
            verifier
                .verify(&sized(MAX_TOKEN_BYTES + 1), now)
                .await
                .err(),
            Some(TokenError::Malformed("too long"))
        );
    }

    #[test]
    fn self_test_passes_with_aws_lc() {
        assert_eq!(self_test(), Ok(()));
    }

    #[test]
    fn the_clocks_read_the_time_since_the_epoch() {
        let before = unix_now();
        let secs = now_secs();
        let after = unix_now();
        assert!(before.as_secs() > 1_700_000_000, "{before:?}");
        assert!(
            (before.as_secs()..=after.as_secs()).contains(&secs),
            "{secs}"
        );
    }

    #[test]
    fn each_refusal_has_its_own_stable_name_for_the_log() {
        let names = [
            (TokenError::Malformed("bad JSON"), "malformed"),
            (TokenError::CriticalHeader, "crit_header"),
            (TokenError::WrongType, "wrong_type"),
            (TokenError::UnknownIssuer, "unknown_issuer"),
            (TokenError::AlgorithmNotAllowed, "algorithm_not_allowed"),
            (TokenError::UnknownKey, "unknown_key"),
            (TokenError::BadSignature, "bad_signature"),
            (TokenError::MissingExp, "missing_exp"),
            (TokenError::Expired, "expired"),
            (TokenError::NotYetValid, "not_yet_valid"),
            (TokenError::IssuedInFuture, "issued_in_future"),
            (TokenError::LifetimeTooLong, "lifetime_too_long"),
            (TokenError::MissingPrincipal, "missing_principal"),
            (TokenError::PrincipalNotSpiffeId, "principal_not_spiffe_id"),
            (TokenError::KeysUnavailable, "keys_unavailable"),
            (
                TokenError::Delegation(DelegationError::ActorNotPermitted),
                "actor_not_in_may_act",
            ),
        ];
        for (e, name) in names {
            assert_eq!(e.as_str(), name, "{e}");
        }
    }

    /// A verifier trusting issuer `i` with an HS256 secret, and a signer for it.
    async fn hs256_verifier(dir: &std::path::Path) -> (JwtVerifier, impl Fn(&Value) -> String) {
        let secret = [9u8; 32];
        std::fs::write(dir.join("secret"), secret).unwrap();
        let text = "issuers:\n  - issuer: i\n    secret_file: secret\n    algorithms: [HS256]\n";
        let config = crate::config::Config::from_str(text, &dir.join("c.yaml")).unwrap();
        let metrics = Arc::new(crate::telemetry::Metrics::new());
        let stores =
            super::super::jwks::key_stores(&config.issuers, &reqwest::Client::new(), &metrics);
        for (_, keys) in &stores {
            keys.refresh().await.unwrap();
        }
        let sign = move |claims: &Value| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(Algorithm::HS256),
                claims,
                &jsonwebtoken::EncodingKey::from_secret(&secret),
            )
            .unwrap()
        };
        (JwtVerifier::new(stores), sign)
    }

    #[tokio::test]
    async fn a_principal_claim_that_is_empty_or_has_a_control_character_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (verifier, sign) = hs256_verifier(dir.path()).await;
        let now = unix_now();
        let exp = now.as_secs() + 60;
        for (sub, want) in [
            (json!("svc"), Ok("svc")),
            (json!(""), Err(TokenError::MissingPrincipal)),
            (json!("a\u{7}b"), Err(TokenError::MissingPrincipal)),
            (json!(7), Err(TokenError::MissingPrincipal)),
        ] {
            let token = sign(&json!({"iss": "i", "sub": sub, "exp": exp}));
            let got = verifier.verify(&token, now).await;
            assert_eq!(
                got.as_ref().map(|t| t.subject.as_str()),
                want.as_ref().copied(),
                "{sub}"
            );
        }
    }

    #[tokio::test]
    async fn a_principal_claim_that_looks_like_a_spiffe_id_must_be_one() {
        let dir = tempfile::tempdir().unwrap();
        let (verifier, sign) = hs256_verifier(dir.path()).await;
        let now = unix_now();
        let exp = now.as_secs() + 60;
        for (sub, want) in subject::tests::CASES {
            let token = sign(&json!({"iss": "i", "sub": sub, "exp": exp}));
            let got = verifier.verify(&token, now).await;
            let want = match want {
                Ok(()) => Ok(*sub),
                Err(SubjectError::Unusable) => Err(TokenError::MissingPrincipal),
                Err(SubjectError::NotSpiffeId) => Err(TokenError::PrincipalNotSpiffeId),
            };
            assert_eq!(
                got.as_ref().map(|t| t.subject.as_str()),
                want.as_ref().copied(),
                "{sub}"
            );
        }
    }

    #[test]
    fn audiences_are_a_string_or_an_array_of_strings() {
        let cases: &[(Option<Value>, &[&str])] = &[
            (Some(json!("ledger")), &["ledger"]),
            (Some(json!(["ledger", "email", 7])), &["ledger", "email"]),
            (Some(json!(["ledger"])), &["ledger"]),
            (Some(json!(7)), &[]),
            (None, &[]),
        ];
        for (aud, want) in cases {
            assert_eq!(string_or_array(aud.as_ref()), *want, "{aud:?}");
        }
    }

    #[tokio::test]
    async fn every_issuer_s_key_store_is_listed_for_refresh_and_readiness() {
        let dir = tempfile::tempdir().unwrap();
        let (verifier, _) = hs256_verifier(dir.path()).await;
        let listed: Vec<(&str, &str)> = verifier
            .key_stores()
            .map(|(name, _, issuer)| (name, issuer.spec.issuer.as_str()))
            .collect();
        assert_eq!(listed, [("i", "i")]);
    }
}
