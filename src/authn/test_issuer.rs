//! For the key-fetch tests: a real HTTP server on 127.0.0.1 serving fixed documents by
//! path, and signing keys minted at test time in their JWK form.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING,
    ECDSA_P384_SHA384_FIXED_SIGNING, ECDSA_P521_SHA512_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP/1.1 server answering each path with its (status, body), 404 elsewhere.
pub struct Issuer {
    /// `http://127.0.0.1:PORT`, no trailing `/`.
    pub url: String,
    routes: Arc<Mutex<HashMap<String, Route>>>,
}

/// What a path answers: status, an optional `location` header, body.
type Route = (u16, Option<String>, Vec<u8>);

impl Issuer {
    /// Starts serving on a free port of 127.0.0.1 (for the test's runtime's lifetime).
    pub async fn start() -> Issuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let served = routes.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let routes = served.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&got);
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    let (status, location, body) = routes
                        .lock()
                        .unwrap()
                        .get(&path)
                        .cloned()
                        .unwrap_or((404, None, Vec::new()));
                    let location = location.map_or(String::new(), |l| format!("location: {l}\r\n"));
                    let head = format!(
                        "HTTP/1.1 {status} X\r\n{location}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(&body).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Issuer { url, routes }
    }

    /// Answers `path` with `status` and `body` from now on.
    pub fn serve(&self, path: &str, status: u16, body: impl Into<Vec<u8>>) {
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_string(), (status, None, body.into()));
    }

    /// Answers `path` with a 302 to `to` from now on.
    pub fn redirect(&self, path: &str, to: &str) {
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_string(), (302, Some(to.to_string()), Vec::new()));
    }
}

/// A JWKS document holding `keys` (JWK objects).
pub fn jwks(keys: &[serde_json::Value]) -> Vec<u8> {
    serde_json::json!({ "keys": keys }).to_string().into_bytes()
}

/// The public JWK of a new EC key on `crv`: "P-256", "P-384" or "P-521".
pub fn ec_jwk(crv: &str, kid: &str) -> serde_json::Value {
    let alg = match crv {
        "P-256" => &ECDSA_P256_SHA256_FIXED_SIGNING,
        "P-384" => &ECDSA_P384_SHA384_FIXED_SIGNING,
        "P-521" => &ECDSA_P521_SHA512_FIXED_SIGNING,
        other => panic!("no such curve here: {other}"),
    };
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &SystemRandom::new()).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref()).unwrap();
    // The uncompressed point: 0x04, then x and y of equal length.
    let point = pair.public_key().as_ref();
    let (x, y) = point[1..].split_at((point.len() - 1) / 2);
    serde_json::json!({
        "kty": "EC", "kid": kid, "crv": crv,
        "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
    })
}

/// The public JWK of a new Ed25519 key (`kty: "OKP"`).
pub fn ed25519_jwk(kid: &str) -> serde_json::Value {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    serde_json::json!({
        "kty": "OKP", "kid": kid, "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
    })
}
