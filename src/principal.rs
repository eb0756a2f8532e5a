//! Who is calling: the [`Principal`] a rule matches on, and typed SPIFFE IDs.

pub mod actor;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde_json::{Map, Value};

/// Verified JWT claims, shared between the token cache and every principal built from them.
pub type Claims = Arc<Map<String, Value>>;

/// What kind of caller a principal is; policies match on it with `from.kinds`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    /// A workload: a service, background job or integration acting for itself.
    Service,
    /// A person, or a client acting for one.
    User,
}

impl PrincipalKind {
    /// The lowercase name used in config, headers and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Service => "service",
            PrincipalKind::User => "user",
        }
    }
}

impl fmt::Display for PrincipalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which credential identified a caller; rules can require some with
/// `from.credentials` (e.g. an endpoint that refuses long-lived API keys).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CredentialType {
    /// A verified bearer JWT.
    Jwt,
    /// An API key (`hwk_…`).
    ApiKey,
    /// The mTLS peer alone (no token, no key).
    Mtls,
}

impl CredentialType {
    /// The name used in policies and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialType::Jwt => "jwt",
            CredentialType::ApiKey => "api_key",
            CredentialType::Mtls => "mtls",
        }
    }
}

/// A SPIFFE ID (`spiffe://trust-domain/path`), as found in an X.509 URI SAN.
///
/// Parsing follows the SPIFFE ID spec (section 2): lowercase scheme `spiffe`, a
/// non-empty trust domain of `[a-z0-9.-_]`, a path of non-empty segments that are
/// neither `.` nor `..`, no query or fragment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    raw: String,
    path_start: usize,
}

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The scheme is not `spiffe://`.
    #[error("SPIFFE ID {0:?} does not start with spiffe://")]
    Scheme(String),
    /// The trust domain is empty or has characters the spec forbids.
    #[error("SPIFFE ID {0:?} has an invalid trust domain")]
    TrustDomain(String),
    /// The path has an empty, `.` or `..` segment, or forbidden characters.
    #[error("SPIFFE ID {0:?} has an invalid path")]
    Path(String),
}

impl SpiffeId {
    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The trust domain, e.g. `hopwarden.local`.
    pub fn trust_domain(&self) -> &str {
        &self.raw["spiffe://".len()..self.path_start]
    }

    /// The path including its leading `/`, or `""`.
    pub fn path(&self) -> &str {
        &self.raw[self.path_start..]
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (trust_domain, _) = SpiffeId::split(s)?;
        Ok(SpiffeId {
            raw: s.to_string(),
            path_start: "spiffe://".len() + trust_domain.len(),
        })
    }
}

impl SpiffeId {
    /// Checks `s` as [`FromStr`] does and returns its trust domain and path (with its
    /// leading `/`, or `""`) borrowed from `s`: for the request path, which reads a
    /// destination's parts without keeping a copy.
    pub fn split(s: &str) -> Result<(&str, &str), SpiffeIdError> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::Scheme(s.to_string()))?;
        let td_len = rest.find('/').unwrap_or(rest.len());
        let td = &rest[..td_len];
        let td_ok = !td.is_empty()
            && td
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        if !td_ok {
            return Err(SpiffeIdError::TrustDomain(s.to_string()));
        }
        let path = &rest[td_len..];
        if !path.is_empty() {
            let segments_ok = path[1..].split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            });
            if !segments_ok {
                return Err(SpiffeIdError::Path(s.to_string()));
            }
        }
        Ok((td, path))
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// The caller of a request, as the policy sees it.
///
/// Built from a verified bearer token (then `issuer` is set and `claims` holds the
/// token's claims) or, with no token, from the mTLS peer alone (kind `service`, no
/// issuer, no scopes, no claims).
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// `service` or `user`.
    pub kind: PrincipalKind,
    /// The token's principal claim (default `sub`), or the peer's SPIFFE ID.
    pub id: String,
    /// The token issuer; `None` when the caller is identified by mTLS only.
    pub issuer: Option<String>,
    /// Granted scopes from `scope` or `scp`.
    pub scopes: Vec<String>,
    /// All verified claims (empty without a token).
    pub claims: Claims,
    /// The mTLS peer that opened the connection, if any.
    pub peer: Option<SpiffeId>,
    /// Set when the token is delegated (RFC 8693 `act`): the actors calling for this
    /// principal, outermost first. Rules match the outermost one as the caller only
    /// when they say so (`from.acting_for`; docs/delegation.md).
    pub delegation: Option<Arc<actor::Delegation>>,
    /// The id of the API key that identified the caller (never its secret).
    pub api_key: Option<Arc<str>>,
}

impl Principal {
    /// A caller known only by its mTLS peer certificate.
    pub fn from_peer(peer: SpiffeId) -> Self {
        Principal {
            kind: PrincipalKind::Service,
            id: peer.as_str().to_string(),
            issuer: None,
            scopes: Vec::new(),
            claims: Claims::default(),
            peer: Some(peer),
            delegation: None,
            api_key: None,
        }
    }

    /// A caller identified by an API key (the mTLS peer, if any, kept beside it).
    pub fn from_api_key(key: &crate::apikey::KeyEntry, peer: Option<SpiffeId>) -> Self {
        Principal {
            kind: key.kind,
            id: key.principal.clone(),
            issuer: None,
            scopes: key.scopes.clone(),
            claims: Claims::default(),
            peer,
            delegation: None,
            api_key: Some(Arc::from(key.id.as_str())),
        }
    }

    /// Which credential identified the caller.
    pub fn credential(&self) -> CredentialType {
        match (&self.api_key, &self.issuer) {
            (Some(_), _) => CredentialType::ApiKey,
            (None, Some(_)) => CredentialType::Jwt,
            (None, None) => CredentialType::Mtls,
        }
    }

    /// Whether the caller presented a credential that carries scopes: a verified
    /// bearer token or an API key (not the mTLS peer alone).
    pub fn has_token(&self) -> bool {
        self.issuer.is_some() || self.api_key.is_some()
    }

    /// Whether every scope in `required` was granted.
    pub fn has_scopes(&self, required: &[String]) -> bool {
        required.iter().all(|r| self.scopes.iter().any(|s| s == r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_types_are_named_as_policies_write_them() {
        let table = [
            (CredentialType::Jwt, "jwt"),
            (CredentialType::ApiKey, "api_key"),
            (CredentialType::Mtls, "mtls"),
        ];
        for (credential, name) in table {
            // explain prints as_str; `from.credentials` reads the serde name.
            assert_eq!(credential.as_str(), name);
            assert_eq!(serde_json::to_value(credential).unwrap(), name);
        }
    }

    #[test]
    fn spiffe_ids() {
        let cases: &[(&str, bool)] = &[
            ("spiffe://hopwarden.local/ns/payments/sa/payments", true),
            ("spiffe://td", true),
            ("spiffe://td/a", true),
            ("SPIFFE://td/a", false),
            ("https://td/a", false),
            ("spiffe:///a", false),
            ("spiffe://TD/a", false),
            ("spiffe://td/", false),
            ("spiffe://td//a", false),
            ("spiffe://td/a/../b", false),
            ("spiffe://td/./a", false),
            ("spiffe://td/a?x=1", false),
            ("spiffe://td/a#f", false),
            ("spiffe://td/a b", false),
        ];
        for (input, ok) in cases {
            assert_eq!(input.parse::<SpiffeId>().is_ok(), *ok, "{input}");
        }
        let id: SpiffeId = "spiffe://hopwarden.local/ns/x/sa/y".parse().unwrap();
        assert_eq!(id.trust_domain(), "hopwarden.local");
        assert_eq!(id.path(), "/ns/x/sa/y");
        assert_eq!(id.to_string(), "spiffe://hopwarden.local/ns/x/sa/y");
    }

    #[test]
    fn scopes_are_all_required() {
        let mut p = Principal::from_peer("spiffe://td/a".parse().unwrap());
        p.scopes = vec!["a".into(), "b".into()];
        assert!(p.has_scopes(&[]));
        assert!(p.has_scopes(&["a".into(), "b".into()]));
        assert!(!p.has_scopes(&["a".into(), "c".into()]));
    }
}
