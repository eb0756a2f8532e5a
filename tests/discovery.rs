//! OIDC discovery (`discovery: true`) against a real issuer on 127.0.0.1 that serves
//! its discovery document and JWKS (keys minted at test time).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// An HTTP server answering by path (404 elsewhere), counting requests per path.
struct Issuer {
    url: String,
    routes: Arc<Mutex<HashMap<String, (u16, String)>>>,
    hits: Arc<Mutex<HashMap<String, u32>>>,
}

impl Issuer {
    async fn start() -> Issuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let routes: Arc<Mutex<HashMap<String, (u16, String)>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let (r, h) = (routes.clone(), hits.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (r, h) = (r.clone(), h.clone());
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
                    *h.lock().unwrap().entry(path.clone()).or_default() += 1;
                    let (status, body) = r
                        .lock()
                        .unwrap()
                        .get(&path)
                        .cloned()
                        .unwrap_or((404, String::new()));
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Issuer { url, routes, hits }
    }

    fn serve(&self, path: &str, status: u16, body: String) {
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_string(), (status, body));
    }

    /// Serves a discovery document naming `issuer` and `jwks_path` on this server.
    fn discovery(&self, issuer: &str, jwks_path: &str) {
        let doc = json!({
            "issuer": issuer,
            "jwks_uri": format!("{}{jwks_path}", self.url),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        });
        self.serve("/.well-known/openid-configuration", 200, doc.to_string());
    }

    fn hits(&self, path: &str) -> u32 {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn config(d: &Deployment, issuer: &str) -> hopwarden::config::Config {
    let path = d.path().join("hopwarden.yaml");
    let text = format!(
        "listen: 127.0.0.1:0\npolicies: policies\nlog: {{format: text, level: warn}}\ndecision_log: {{to: \"off\"}}\n\
         issuers:\n  - issuer: \"{issuer}\"\n    discovery: true\n    refetch_min_interval: 1s\n    leeway: 0s\n"
    );
    std::fs::write(&path, text).unwrap();
    hopwarden::config::Config::load(&path).unwrap()
}

fn token_from(issuer: &str, key: &RsaKey) -> String {
    let mut c = claims(PAYMENTS, "ledger", "ledger.read");
    c["iss"] = json!(issuer);
    key.sign(&c)
}

fn read_tx() -> Check {
    Check::new("ledger", "GET", "/transactions/42")
}

#[tokio::test]
async fn keys_come_through_the_discovery_document_and_follow_it() {
    let idp = Issuer::start().await;
    idp.discovery(&idp.url, "/keys/1");
    idp.serve("/keys/1", 200, jwks(&[key()]));
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let s = TestServer::start(config(&d, &idp.url)).await;
    assert_eq!(idp.hits("/.well-known/openid-configuration"), 1);
    assert_eq!(idp.hits("/keys/1"), 1);
    let a = s
        .check(read_tx().bearer(&token_from(&idp.url, key())))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    // A token from another issuer is not verified with these keys.
    let a = s
        .check(read_tx().bearer(&token_from("https://elsewhere", key())))
        .await;
    assert_eq!(a.status, 401, "{a:?}");

    // The issuer moves its JWKS and rotates: a new kid refetches the document too.
    idp.discovery(&idp.url, "/keys/2");
    idp.serve("/keys/2", 200, jwks(&[other_key()]));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = s
        .check(read_tx().bearer(&token_from(&idp.url, other_key())))
        .await;
    assert_eq!(a.status, 200, "new kid through the moved jwks_uri: {a:?}");
    assert_eq!(idp.hits("/keys/2"), 1);

    // The document fails: the last good keys are kept.
    idp.serve("/.well-known/openid-configuration", 500, String::new());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut made_up = claims(PAYMENTS, "ledger", "ledger.read");
    made_up["iss"] = json!(idp.url);
    let stranger = RsaKey::generate("made-up");
    assert_eq!(
        s.check(read_tx().bearer(&stranger.sign(&made_up)))
            .await
            .status,
        401
    );
    assert_eq!(idp.hits("/.well-known/openid-configuration"), 3);
    let a = s
        .check(read_tx().bearer(&token_from(&idp.url, other_key())))
        .await;
    assert_eq!(a.status, 200, "last good keys kept: {a:?}");
}

/// OIDC Discovery 4.3: the document's `issuer` must be the configured one exactly.
#[tokio::test]
async fn a_document_naming_another_issuer_is_refused() {
    let idp = Issuer::start().await;
    idp.serve("/keys", 200, jwks(&[key()]));
    let http = hopwarden::authn::jwks::http_client().unwrap();
    for named in [format!("{}/", idp.url), "https://evil.example".to_string()] {
        idp.discovery(&named, "/keys");
        let err = hopwarden::authn::discovery::fetch_keys(&http, &idp.url)
            .await
            .err()
            .expect("a mismatched issuer is refused");
        assert!(err.to_string().contains("not the configured"), "{err}");
    }
    assert_eq!(
        idp.hits("/keys"),
        0,
        "the JWKS of a refused document is never fetched"
    );
    idp.discovery(&idp.url, "/keys");
    let set = hopwarden::authn::discovery::fetch_keys(&http, &idp.url)
        .await
        .unwrap();
    assert_eq!(set.len(), 1);

    // Served: the keys never load, so checks are UNAVAILABLE (a server fault that
    // Envoy's failure_mode_allow decides), never an allow.
    idp.discovery("https://evil.example", "/keys");
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let handle = hopwarden::server::start(config(&d, &idp.url))
        .await
        .unwrap();
    let channel = Channel::from_shared(format!("http://{}", handle.local_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let s = TestServer {
        handle,
        client: envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(channel.clone()),
        channel,
    };
    let status = s
        .check_rpc(read_tx().bearer(&token_from(&idp.url, key())))
        .await
        .expect_err("no keys: no answer");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

/// A discovered `jwks_uri` must be https off loopback, like a configured one.
#[tokio::test]
async fn a_plain_http_jwks_uri_off_loopback_is_refused() {
    let idp = Issuer::start().await;
    let doc = json!({"issuer": idp.url, "jwks_uri": "http://keys.example/jwks?sig=s3cret"});
    idp.serve("/.well-known/openid-configuration", 200, doc.to_string());
    let http = hopwarden::authn::jwks::http_client().unwrap();
    let err = hopwarden::authn::discovery::fetch_keys(&http, &idp.url)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("no query") || err.contains("loopback"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "the query is never shown: {err}");
}
