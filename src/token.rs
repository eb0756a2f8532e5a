//! `hopwarden token`: development tokens signed with the dev key, for trying
//! policies by hand. Not an STS: it refuses any other key unless told explicitly.

use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};

/// The committed development key (`dev/dev-key.pem`), built in so `hopwarden token`
/// works anywhere the binary does. It is public: tokens it signs prove nothing.
pub const DEV_KEY_PEM: &str = include_str!("../dev/dev-key.pem");
/// The dev key's `kid` in `dev/jwks.json`.
pub const DEV_KID: &str = "hopwarden-dev-1";
/// The dev issuer in the example config.
pub const DEV_ISSUER: &str = "https://sts.hopwarden.local";

/// What to put in a token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// `aud` (a string when there is one, else an array).
    pub audiences: Vec<String>,
    /// `scope`, space-delimited.
    pub scopes: Vec<String>,
    /// `exp - iat`.
    pub lifetime: Duration,
    /// Extra claims, `name=value` (value parsed as JSON, else a string).
    pub claims: Vec<(String, String)>,
}

/// A signing key and its JWK.
pub struct SigningKey {
    key: EncodingKey,
    alg: Algorithm,
    kid: String,
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The PEM is neither an RSA nor a P-256 private key.
    #[error("key is not an RSA or P-256 EC private key in PEM form")]
    BadKey,
    /// A key other than the dev key without `--allow-non-dev-key`.
    #[error("refusing to sign with a key other than the built-in dev key (pass --allow-non-dev-key if you really mean it)")]
    NotDevKey,
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

impl SigningKey {
    /// The built-in dev key.
    pub fn dev() -> Result<SigningKey, TokenError> {
        SigningKey::from_pem(DEV_KEY_PEM, DEV_KID, false)
    }

    /// A key from PEM; anything but the dev key needs `allow_other`.
    pub fn from_pem(pem: &str, kid: &str, allow_other: bool) -> Result<SigningKey, TokenError> {
        if pem.trim() != DEV_KEY_PEM.trim() && !allow_other {
            return Err(TokenError::NotDevKey);
        }
        let (key, alg) = if let Ok(k) = EncodingKey::from_rsa_pem(pem.as_bytes()) {
            (k, Algorithm::RS256)
        } else if let Ok(k) = EncodingKey::from_ec_pem(pem.as_bytes()) {
            (k, Algorithm::ES256)
        } else {
            return Err(TokenError::BadKey);
        };
        Ok(SigningKey {
            key,
            alg,
            kid: kid.to_string(),
        })
    }

    /// Signs a token for `req` at `now` (seconds since the epoch).
    pub fn mint(&self, req: &TokenRequest, now: u64) -> Result<String, TokenError> {
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(req.issuer));
        claims.insert("sub".into(), json!(req.subject));
        claims.insert(
            "aud".into(),
            match req.audiences.as_slice() {
                [one] => json!(one),
                many => json!(many),
            },
        );
        if !req.scopes.is_empty() {
            claims.insert("scope".into(), json!(req.scopes.join(" ")));
        }
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now + req.lifetime.as_secs()));
        for (k, v) in &req.claims {
            let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.clone()));
            claims.insert(k.clone(), value);
        }
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &Value::Object(claims), &self.key)
            .map_err(|e| TokenError::Sign(e.to_string()))
    }

    /// The JWKS (public part only) that verifies this key's tokens.
    pub fn jwks(&self) -> Result<Value, TokenError> {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg)
            .map_err(|e| TokenError::Sign(e.to_string()))?;
        jwk.common.key_id = Some(self.kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(json!({ "keys": [jwk] }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_key_matches_the_committed_jwks() {
        let committed: Value =
            serde_json::from_str(include_str!("../dev/jwks.json")).expect("dev/jwks.json");
        let ours = SigningKey::dev().unwrap().jwks().unwrap();
        assert_eq!(ours["keys"][0]["n"], committed["keys"][0]["n"]);
        assert_eq!(ours["keys"][0]["e"], committed["keys"][0]["e"]);
        assert_eq!(ours["keys"][0]["kid"], committed["keys"][0]["kid"]);
    }

    #[test]
    fn other_keys_need_explicit_consent() {
        let other = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg4t47Fk/NoS0pfVIL\nDP8s3mwRH9QWZaEJoOax7IwwCE+hRANCAAQFkc/GX/ky77/fu0FaXVDpsOLxSk3A\nfgIXd1mQZe9FuVbuebQKHh+dKTAgesW0qSVm6/xcBdlELliuvLqUfZuG\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            SigningKey::from_pem(other, "k", false),
            Err(TokenError::NotDevKey)
        ));
        let key = SigningKey::from_pem(other, "k", true).unwrap();
        assert_eq!(key.alg, Algorithm::ES256);
        assert_eq!(key.jwks().unwrap()["keys"][0]["crv"], "P-256");
        assert!(SigningKey::from_pem("junk", "k", true).is_err());
    }

    #[test]
    fn claims() {
        let key = SigningKey::dev().unwrap();
        let req = TokenRequest {
            issuer: DEV_ISSUER.into(),
            subject: "spiffe://hopwarden.local/ns/payments/sa/payments".into(),
            audiences: vec!["ledger".into()],
            scopes: vec!["ledger.read".into(), "x".into()],
            lifetime: Duration::from_secs(300),
            claims: vec![("env".into(), "prod".into()), ("n".into(), "5".into())],
        };
        let token = key.mint(&req, 1000).unwrap();
        let payload = token.split('.').nth(1).unwrap();
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        let claims: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(claims["aud"], "ledger");
        assert_eq!(claims["scope"], "ledger.read x");
        assert_eq!(claims["exp"], 1300);
        assert_eq!(claims["env"], "prod");
        assert_eq!(claims["n"], 5);
    }
}
