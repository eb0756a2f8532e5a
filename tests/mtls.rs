//! mTLS between Envoy and hopwarden, end to end: the real hopwarden binary with
//! `listeners.tls`, a real Envoy rendered from envoy/gateway.yaml and
//! envoy/gateway-http.yaml with their commented `transport_socket` block enabled, and
//! certificates made at test time by `hopwarden dev certs`. An allowed client
//! certificate gets answers; no certificate, another workload's certificate, the
//! allowed identity from another CA, or plain TCP get none (Envoy fails closed: 503).
//! These tests fail, never skip, when Envoy is missing.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::stack::{
    enable_hopwarden_tls, envoy_binary, free_port, gateway_http_subs, gateway_subs,
    hopwarden_healthy, http_get, render, Ports, Proc,
};
use common::{dev_token, repo, PAYMENTS};

const GATEWAY_ID: &str = "spiffe://hopwarden.local/ns/gateway/sa/gateway";

/// Makes the dev CA with certificates for hopwarden, the gateway and email under
/// `dir/certs`, and a second CA with its own `gateway` certificate (the allowed
/// SPIFFE ID, from a CA hopwarden does not trust) under `dir/other`.
fn certificates(dir: &Path) {
    for (out, names) in [
        (
            "certs",
            &["hopwarden:hopwarden", "gateway:gateway", "email:email"][..],
        ),
        ("other", &["gateway:gateway"][..]),
    ] {
        let status = Command::new(env!("CARGO_BIN_EXE_hopwarden"))
            .args(["dev", "certs"])
            .arg(dir.join(out))
            .args(names)
            .stdout(Stdio::null())
            .status()
            .expect("hopwarden dev certs");
        assert!(status.success(), "hopwarden dev certs {out} failed");
    }
}

/// hopwarden.yaml as the local stack runs it (loopback ports, repository paths),
/// with mTLS on every listener letting only the gateway's SPIFFE ID in.
fn start_hopwarden(dir: &Path, ports: &Ports) -> Proc {
    let repo = repo();
    let text = std::fs::read_to_string(repo.join("hopwarden.yaml")).unwrap();
    let certs = dir.join("certs");
    let mut config = text.clone();
    for (from, to) in [
        (
            "listen: 127.0.0.1:9191",
            format!("listen: 127.0.0.1:{}", ports.hopwarden),
        ),
        (
            "http_listen: 127.0.0.1:9193",
            format!("http_listen: 127.0.0.1:{}", ports.hopwarden_http),
        ),
        (
            "listen: 127.0.0.1:9192",
            format!("listen: 127.0.0.1:{}", ports.hopwarden_admin),
        ),
        ("./policies", repo.join("policies").display().to_string()),
        ("./dev/", format!("{}/", repo.join("dev").display())),
    ] {
        assert!(text.contains(from), "hopwarden.yaml no longer has {from:?}");
        config = config.replace(from, &to);
    }
    config.push_str(&format!(
        "\nlisteners:\n  tls:\n    cert: {c}/hopwarden.pem\n    key: {c}/hopwarden-key.pem\n    \
         client_ca: {c}/ca.pem\n    allowed_spiffe_ids: [\"{GATEWAY_ID}\"]\n",
        c = certs.display()
    ));
    let path = dir.join("hopwarden.yaml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hopwarden"));
    cmd.args(["serve", "--config"]).arg(&path);
    let proc = Proc::spawn("hopwarden", cmd, dir).unwrap();
    wait(&proc, Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", ports.hopwarden)).is_ok()
    });
    proc
}

fn start_ledger(dir: &Path, port: u16) -> Proc {
    let mut cmd = Command::new(common::stack::demo_service_binary());
    cmd.args(["--name", "ledger", "--listen", &format!("127.0.0.1:{port}")]);
    Proc::spawn("ledger", cmd, dir).unwrap()
}

fn wait(proc: &Proc, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{} not ready after {timeout:?}:\n{}",
        proc.name,
        proc.tail()
    );
}

/// How an Envoy reaches hopwarden in one case.
#[derive(Debug, Clone, Copy)]
enum Client {
    /// The block as committed: the gateway's certificate.
    Allowed,
    /// Email's certificate: the same CA, an identity not in the allow-list.
    OtherIdentity,
    /// The gateway's SPIFFE ID from a CA hopwarden does not trust.
    OtherCa,
    /// TLS without a client certificate.
    NoCertificate,
    /// The committed config: plain TCP.
    Plain,
}

/// A rendered Envoy config for `case`.
fn envoy_config(file: &str, subs: &[((&str, u16), u16)], case: Client) -> String {
    let rendered = render(&repo().join("envoy").join(file), subs).unwrap();
    if let Client::Plain = case {
        return rendered;
    }
    let tls = enable_hopwarden_tls(&rendered).unwrap();
    assert!(tls.contains("certificate_chain: { filename: certs/gateway.pem }"));
    match case {
        Client::Allowed => tls,
        Client::OtherIdentity => tls
            .replace("certs/gateway.pem", "certs/email.pem")
            .replace("certs/gateway-key.pem", "certs/email-key.pem"),
        Client::OtherCa => tls
            .replace("certs/gateway.pem", "other/gateway.pem")
            .replace("certs/gateway-key.pem", "other/gateway-key.pem"),
        Client::NoCertificate => tls
            .lines()
            .filter(|l| {
                !l.contains("tls_certificates:")
                    && !l.contains("certificate_chain:")
                    && !l.contains("private_key:")
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Client::Plain => unreachable!(),
    }
}

fn start_envoy(dir: &Path, name: &str, config: &str) -> Proc {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(envoy_binary(&repo()).unwrap_or_else(|e| panic!("{e}")));
    cmd.arg("-c")
        .arg(&path)
        .args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "-l",
            "warning",
        ])
        // Certificate paths in the configs are relative to the working directory.
        .current_dir(dir);
    Proc::spawn(name, cmd, dir).unwrap()
}

/// Ports for one Envoy in front of the shared hopwarden and ledger.
fn envoy_ports(shared: &Ports) -> Ports {
    let mut p = shared.clone();
    p.gateway = free_port();
    p.gateway_admin = free_port();
    p.gateway_http = free_port();
    p.gateway_http_admin = free_port();
    p
}

fn shared_ports() -> Ports {
    let mut p = Ports {
        hopwarden: free_port(),
        hopwarden_http: free_port(),
        hopwarden_admin: free_port(),
        ..Ports::default()
    };
    for app in ["ledger", "email", "media"] {
        p.app.insert(app.to_string(), free_port());
    }
    p
}

/// An allowed read through an Envoy at `port`, with `host` naming the service.
async fn read(port: u16, host: &str) -> (u16, serde_json::Value) {
    let token = dev_token(PAYMENTS, "ledger", "ledger.read");
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/transactions/42"))
        .header("host", host)
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, body)
}

/// Starts one Envoy per case, waits until each is ready (and, for the allowed one,
/// until `healthy`), then reads through each.
async fn run_cases(
    dir: &Path,
    file: &str,
    subs: impl Fn(&Ports) -> Vec<((&'static str, u16), u16)>,
    shared: &Ports,
    host: &str,
    cases: &[Client],
    grpc: bool,
) -> Vec<(Client, u16, serde_json::Value, Proc)> {
    let mut started = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let ports = envoy_ports(shared);
        let config = envoy_config(file, &subs(&ports), *case);
        let proc = start_envoy(dir, &format!("{file}-{i}"), &config);
        started.push((*case, ports, proc));
    }
    let mut out = Vec::new();
    for (case, ports, proc) in started {
        let (port, admin) = if grpc {
            (ports.gateway, ports.gateway_admin)
        } else {
            (ports.gateway_http, ports.gateway_http_admin)
        };
        wait(&proc, Duration::from_secs(30), || {
            http_get(admin, "/ready").is_some_and(|(code, _)| code == 200)
        });
        if grpc && matches!(case, Client::Allowed) {
            wait(&proc, Duration::from_secs(30), || hopwarden_healthy(admin));
        }
        // Give refused cases the same chance: a couple of health check rounds.
        if !matches!(case, Client::Allowed) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (status, body) = read(port, host).await;
        out.push((case, status, body, proc));
    }
    out
}

fn check_outcomes(outcomes: &[(Client, u16, serde_json::Value, Proc)], hopwarden: &Proc) {
    for (case, status, body, envoy) in outcomes {
        match case {
            Client::Allowed => {
                assert_eq!(*status, 200, "{case:?}: {body}\n{}", envoy.tail());
                assert_eq!(body["principal"], PAYMENTS, "{case:?}");
            }
            _ => assert_eq!(*status, 503, "{case:?}: {body}\n{}", envoy.tail()),
        }
    }
    let log = std::fs::read_to_string(&hopwarden.log).unwrap();
    assert!(
        log.contains("client certificate not in the allow-list")
            && log.contains("spiffe://hopwarden.local/ns/email/sa/email"),
        "hopwarden did not log the refused identity:\n{}",
        hopwarden.tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_checks_over_mtls_only_from_the_allowed_envoy() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let shared = shared_ports();
    let hopwarden = start_hopwarden(dir.path(), &shared);
    let _ledger = start_ledger(dir.path(), shared.app["ledger"]);
    let cases = [
        Client::Allowed,
        Client::OtherIdentity,
        Client::OtherCa,
        Client::NoCertificate,
        Client::Plain,
    ];
    let outcomes = run_cases(
        dir.path(),
        "gateway.yaml",
        gateway_subs,
        &shared,
        "ledger.localhost",
        &cases,
        true,
    )
    .await;
    check_outcomes(&outcomes, &hopwarden);
    // Admin is behind the same mTLS: plain HTTP gets no answer.
    assert_eq!(http_get(shared.hopwarden_admin, "/healthz"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_service_checks_over_mtls_only_from_the_allowed_envoy() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let shared = shared_ports();
    let hopwarden = start_hopwarden(dir.path(), &shared);
    let _ledger = start_ledger(dir.path(), shared.app["ledger"]);
    let cases = [
        Client::Allowed,
        Client::OtherIdentity,
        Client::NoCertificate,
        Client::Plain,
    ];
    let outcomes = run_cases(
        dir.path(),
        "gateway-http.yaml",
        gateway_http_subs,
        &shared,
        "ledger.internal",
        &cases,
        false,
    )
    .await;
    check_outcomes(&outcomes, &hopwarden);
}

/// The certificate hopwarden's gRPC listener presents to a client holding the
/// gateway's certificate (DER), or the handshake's error.
async fn served_certificate(addr: std::net::SocketAddr, certs: &Path) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(certs.join("ca.pem")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(certs.join("gateway.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(certs.join("gateway-key.pem")).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
    Ok(session.peer_certificates().unwrap()[0].to_vec())
}

fn leaf_der(pem: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(pem)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn certificates_are_reloaded_without_a_restart_and_a_bad_one_keeps_the_last_good() {
    let d = common::Deployment::new(&[("ledger.yaml", common::LEDGER_POLICY)]);
    certificates(d.path());
    let certs = d.path().join("certs");
    let config = d.config(
        "",
        &format!(
            "listeners:\n  tls:\n    cert: certs/hopwarden.pem\n    key: certs/hopwarden-key.pem\n    \
             client_ca: certs/ca.pem\n    allowed_spiffe_ids: [\"{GATEWAY_ID}\"]\n    reload_interval: 1s\n"
        ),
    );
    let server = hopwarden::server::start(config).await.unwrap();
    let addr = server.local_addr;
    let first = leaf_der(&certs.join("hopwarden.pem"));
    assert_eq!(served_certificate(addr, &certs).await.unwrap(), first);

    // A renewed certificate (same CA, new key), written as cert-manager would: without
    // the old files, `dev certs` keeps the valid CA and issues a new leaf.
    std::fs::remove_file(certs.join("hopwarden.pem")).unwrap();
    std::fs::remove_file(certs.join("hopwarden-key.pem")).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_hopwarden"))
        .args(["dev", "certs"])
        .arg(&certs)
        .arg("hopwarden:hopwarden")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let second = leaf_der(&certs.join("hopwarden.pem"));
    assert_ne!(first, second);
    let renewed = common::eventually(Duration::from_secs(5), || async {
        served_certificate(addr, &certs).await.ok().as_ref() == Some(&second)
    })
    .await;
    assert!(renewed, "the renewed certificate was not served within 5s");

    // A broken certificate file: the last good one stays in use.
    std::fs::write(
        certs.join("hopwarden.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(served_certificate(addr, &certs).await.unwrap(), second);
    server.shutdown().await.unwrap();
}
