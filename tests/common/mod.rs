//! Shared test support: keys and tokens minted at test time, a real hopwarden server
//! on 127.0.0.1:0, a real gRPC client, and a tiny JWKS HTTP server.
#![allow(dead_code)]

pub mod golden;
pub mod stack;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

pub const ISSUER: &str = "https://sts.test.local";

/// An RSA signing key with its kid and public JWK.
pub struct RsaKey {
    pub kid: String,
    pub encoding: EncodingKey,
    pub jwk: Value,
    /// The SubjectPublicKeyInfo DER, for the HS256 key-confusion attack.
    pub public_pem: String,
}

impl RsaKey {
    pub fn generate(kid: &str) -> RsaKey {
        let pair = KeyPair::generate(KeySize::Rsa2048).expect("rsa keygen");
        let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).expect("pkcs8");
        let private_pem = pem("PRIVATE KEY", pkcs8.as_ref());
        let encoding = EncodingKey::from_rsa_pem(private_pem.as_bytes()).expect("encoding key");
        let public = pair.public_key();
        let n = public.modulus().big_endian_without_leading_zero().to_vec();
        let e = public.exponent().big_endian_without_leading_zero().to_vec();
        let spki = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(public).expect("spki");
        RsaKey {
            kid: kid.to_string(),
            encoding,
            jwk: json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(n), "e": URL_SAFE_NO_PAD.encode(e),
            }),
            public_pem: pem("PUBLIC KEY", spki.as_ref()),
        }
    }

    /// A token signed with this key.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The key most tests sign with (generated once per test binary: RSA keygen is slow).
pub fn key() -> &'static RsaKey {
    static KEY: OnceLock<RsaKey> = OnceLock::new();
    KEY.get_or_init(|| RsaKey::generate("k1"))
}

/// A second key that is in no JWKS unless a test puts it there.
pub fn other_key() -> &'static RsaKey {
    static KEY: OnceLock<RsaKey> = OnceLock::new();
    KEY.get_or_init(|| RsaKey::generate("k2"))
}

pub fn jwks(keys: &[&RsaKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `scripts/SCRIPT` (one of the idempotent install scripts, which prints the path
/// of what it installed on its last line) once per test binary, and returns that path.
/// A failed install fails the calling test: the tools are installed, never skipped.
pub fn installed(script: &str) -> PathBuf {
    static DONE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    // Held while the script runs, so that parallel tests install once, one at a time.
    let mut done = DONE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(path) = done.get(script) {
        return path.clone();
    }
    let out = std::process::Command::new(repo().join("scripts").join(script))
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{script}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{script} failed (the tests need what it installs):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(
        path.exists(),
        "scripts/{script} printed {path:?}, which does not exist"
    );
    done.insert(script.to_string(), path.clone());
    path
}

/// Runs the `hopwarden` binary in `cwd`: exit code, stdout, stderr. A
/// `HOPWARDEN_CONFIG` from the caller's shell is removed so it cannot change results.
pub fn run_bin(args: &[&str], cwd: &Path) -> (i32, String, String) {
    run_bin_with(args, cwd, |c| c)
}

/// [`run_bin`] with more settings on the command (environment, say).
pub fn run_bin_with(
    args: &[&str],
    cwd: &Path,
    env: impl FnOnce(&mut std::process::Command) -> &mut std::process::Command,
) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hopwarden"));
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("HOPWARDEN_CONFIG");
    let out = env(&mut cmd).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Standard claims for a service token: issuer, subject, audience, scopes, 5 minutes.
pub fn claims(sub: &str, aud: &str, scope: &str) -> Value {
    let now = now();
    json!({"iss": ISSUER, "sub": sub, "aud": aud, "scope": scope, "iat": now, "exp": now + 300})
}

pub fn token(sub: &str, aud: &str, scope: &str) -> String {
    key().sign(&claims(sub, aud, scope))
}

/// A token signed with the committed dev key (`dev/dev-key.pem`, kid
/// `hopwarden-dev-1`), which the example config trusts: any claims.
pub fn dev_signed(claims: &Value) -> String {
    let pem = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/dev/dev-key.pem")).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("hopwarden-dev-1".into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

/// A dev-key token from the example config's issuer, valid for 5 minutes.
pub fn dev_token(sub: &str, aud: &str, scope: &str) -> String {
    let now = now();
    dev_signed(
        &json!({"iss": "https://sts.hopwarden.local", "sub": sub, "aud": aud, "scope": scope, "iat": now, "exp": now + 300}),
    )
}

pub const PAYMENTS: &str = "spiffe://hopwarden.local/ns/payments/sa/payments";
pub const RECONCILER: &str = "spiffe://hopwarden.local/ns/ledger/sa/reconciler";

/// The ledger policy most tests use.
pub const LEDGER_POLICY: &str = r#"
service: ledger
rules:
  - id: payments-read-transactions
    from: { principals: ["spiffe://hopwarden.local/ns/payments/sa/payments"] }
    to: [{ methods: [GET], paths: ["/transactions/{id}", "/transactions/{id}/status"] }]
    scopes: [ledger.read]
  - id: payments-any-ledger-path
    from: { principals: ["spiffe://hopwarden.local/ns/payments/sa/payments"] }
    to: [{ paths: ["/**"] }]
    scopes: [ledger.admin]
  - id: payments-never-refund
    effect: deny
    from: { principals: ["spiffe://hopwarden.local/ns/payments/sa/payments"] }
    to: [{ paths: ["/refunds", "/refunds/**"] }]
  - id: reconciler-reads
    from: { peers: ["spiffe://hopwarden.local/ns/ledger/sa/reconciler"] }
    to: [{ methods: [GET], paths: ["/transactions/**"] }]
"#;

/// A temporary deployment: config, JWKS file and policy directory.
pub struct Deployment {
    pub dir: tempfile::TempDir,
}

impl Deployment {
    pub fn new(policies: &[(&str, &str)]) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("jwks.json"), jwks(&[key()])).unwrap();
        let d = Deployment { dir };
        for (name, text) in policies {
            d.write_policy(name, text);
        }
        d
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The decision log lines written so far, parsed.
    pub fn decisions(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("decisions.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// The decision log once it has exactly `n` lines (it is flushed in the
    /// background); panics with what it has after 5 s.
    pub async fn decisions_when(&self, n: usize) -> Vec<serde_json::Value> {
        let written = eventually(Duration::from_secs(5), || async {
            self.decisions().len() == n
        })
        .await;
        let lines = self.decisions();
        assert!(written, "expected {n} decision log lines, have {lines:#?}");
        lines
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    /// Writes a policy file atomically (temp file + rename), as editors and
    /// ConfigMap updates do.
    pub fn write_policy(&self, name: &str, text: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.policy_dir().join(name)).unwrap();
    }

    /// The default config: file JWKS, leeway 0 (so expiry tests are exact), port 0.
    pub fn config_text(&self, issuer_extra: &str, extra: &str) -> String {
        format!(
            "listen: 127.0.0.1:0\npolicies: policies\nlog: {{format: text, level: warn}}\n\
             admin: {{listen: \"127.0.0.1:0\"}}\ndecision_log: {{to: decisions.log}}\n\
             issuers:\n  - issuer: {ISSUER}\n    jwks_file: jwks.json\n    leeway: 0s\n{issuer_extra}{extra}"
        )
    }

    pub fn config(&self, issuer_extra: &str, extra: &str) -> hopwarden::config::Config {
        let path = self.dir.path().join("hopwarden.yaml");
        let text = self.config_text(issuer_extra, extra);
        std::fs::write(&path, &text).unwrap();
        hopwarden::config::Config::load(&path).unwrap_or_else(|e| panic!("config: {e:?}\n{text}"))
    }
}

/// A running server and a connected client.
pub struct TestServer {
    pub handle: hopwarden::server::ServerHandle,
    pub client: AuthorizationClient<Channel>,
    pub channel: Channel,
}

impl TestServer {
    pub async fn start(config: hopwarden::config::Config) -> TestServer {
        let handle = hopwarden::server::start(config)
            .await
            .expect("server starts");
        let channel = Channel::from_shared(format!("http://{}", handle.local_addr))
            .unwrap()
            .connect()
            .await
            .expect("connect");
        let server = TestServer {
            handle,
            client: AuthorizationClient::new(channel.clone()),
            channel,
        };
        server.wait_serving().await;
        server
    }

    /// Waits until grpc.health.v1 reports SERVING (keys loaded).
    pub async fn wait_serving(&self) {
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        for _ in 0..100 {
            let resp = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            if resp.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server never became SERVING");
    }

    pub async fn check(&self, req: Check) -> Answer {
        let resp = self
            .client
            .clone()
            .check(req.build())
            .await
            .expect("check RPC");
        Answer::from(resp.into_inner())
    }

    pub async fn check_rpc(&self, req: Check) -> Result<Answer, tonic::Status> {
        self.client
            .clone()
            .check(req.build())
            .await
            .map(|r| Answer::from(r.into_inner()))
    }
}

/// A check request, as Envoy would send it.
#[derive(Clone, Default)]
pub struct Check {
    pub service: Option<String>,
    pub hop: Option<String>,
    pub method: String,
    pub path: String,
    pub host: String,
    pub headers: HashMap<String, String>,
    pub peer: Option<String>,
    pub destination: Option<String>,
}

impl Check {
    pub fn new(service: &str, method: &str, path: &str) -> Check {
        Check {
            service: Some(service.to_string()),
            method: method.to_string(),
            path: path.to_string(),
            host: format!("{service}.internal"),
            ..Default::default()
        }
    }

    pub fn bearer(mut self, token: &str) -> Check {
        self.headers
            .insert("authorization".into(), format!("Bearer {token}"));
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Check {
        self.headers.insert(k.to_string(), v.to_string());
        self
    }

    pub fn peer(mut self, spiffe: &str) -> Check {
        self.peer = Some(spiffe.to_string());
        self
    }

    pub fn hop(mut self, hop: &str) -> Check {
        self.hop = Some(hop.to_string());
        self
    }

    pub fn build(&self) -> CheckRequest {
        let mut ext = HashMap::new();
        if let Some(s) = &self.service {
            ext.insert("service".to_string(), s.clone());
        }
        if let Some(h) = &self.hop {
            ext.insert("hop".to_string(), h.clone());
        }
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    principal: self.peer.clone().unwrap_or_default(),
                    ..Default::default()
                }),
                destination: Some(Peer {
                    principal: self.destination.clone().unwrap_or_default(),
                    ..Default::default()
                }),
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: self.method.clone(),
                        path: self.path.clone(),
                        host: self.host.clone(),
                        headers: self.headers.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                context_extensions: ext,
                ..Default::default()
            }),
        }
    }
}

/// What Envoy would do with a response.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status Envoy would send (200 = forwarded upstream).
    pub status: u16,
    /// gRPC status code inside the CheckResponse.
    pub grpc_code: i32,
    /// Headers set on the upstream request (allow) or the client response (deny).
    pub headers: HashMap<String, String>,
    pub headers_to_remove: Vec<String>,
    pub body: String,
    pub metadata: HashMap<String, String>,
}

impl Answer {
    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers.get(k).map(String::as_str)
    }
    pub fn rule(&self) -> Option<&str> {
        self.metadata.get("rule").map(String::as_str)
    }
    pub fn reason(&self) -> Option<&str> {
        self.metadata.get("reason").map(String::as_str)
    }
}

fn header_map(headers: &[HeaderValueOption]) -> HashMap<String, String> {
    headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

impl From<CheckResponse> for Answer {
    fn from(r: CheckResponse) -> Answer {
        let grpc_code = r.status.as_ref().map_or(-1, |s| s.code);
        let metadata = r
            .dynamic_metadata
            .map(|s| {
                s.fields
                    .into_iter()
                    .filter_map(|(k, v)| match v.kind {
                        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => {
                            Some((k, s))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        match r.http_response {
            Some(HttpResponse::OkResponse(ok)) if grpc_code == 0 => Answer {
                status: 200,
                grpc_code,
                headers: header_map(&ok.headers),
                headers_to_remove: ok.headers_to_remove,
                body: String::new(),
                metadata,
            },
            Some(HttpResponse::DeniedResponse(d)) => Answer {
                status: d.status.map_or(403, |s| s.code as u16),
                grpc_code,
                headers: header_map(&d.headers),
                headers_to_remove: Vec::new(),
                body: d.body,
                metadata,
            },
            other => panic!("unexpected response: code {grpc_code}, {other:?}"),
        }
    }
}

/// A minimal HTTP/1.1 server on 127.0.0.1:0 that serves one mutable body at any path
/// and counts requests: a JWKS endpoint we can rotate.
pub struct JwksServer {
    pub addr: SocketAddr,
    pub body: Arc<Mutex<String>>,
    pub hits: Arc<Mutex<u32>>,
    pub status: Arc<Mutex<u16>>,
    /// How long each response is held back (a slow key server).
    pub delay: Arc<Mutex<Duration>>,
}

impl JwksServer {
    pub async fn start(body: String) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new(body));
        let hits = Arc::new(Mutex::new(0));
        let status = Arc::new(Mutex::new(200));
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let (b, h, s, d) = (body.clone(), hits.clone(), status.clone(), delay.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (b, h, s, d) = (b.clone(), h.clone(), s.clone(), d.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    *h.lock().unwrap() += 1;
                    let wait = *d.lock().unwrap();
                    tokio::time::sleep(wait).await;
                    let body = b.lock().unwrap().clone();
                    let status = *s.lock().unwrap();
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        JwksServer {
            addr,
            body,
            hits,
            status,
            delay,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    pub fn hits(&self) -> u32 {
        *self.hits.lock().unwrap()
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
