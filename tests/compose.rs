//! docker-compose.yml: Debian's `docker-compose config` accepts it, it runs the very
//! envoy/ files and Envoy version that the end-to-end tests run, and the stack it
//! describes runs and answers the README walkthrough (on podman where
//! there is no Docker engine: tests/compose/podman.rs).

mod common;
#[path = "compose/podman.rs"]
mod podman;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::stack::{hopwarden_healthy, http_get};
use common::{dev_token, repo, PAYMENTS, RECONCILER};
use podman::Compose;
use serde_json::Value;

#[test]
fn docker_compose_config_is_valid() {
    let out = Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(repo())
        .output()
        .expect("docker-compose is not installed: scripts/test.sh installs it (apt-get install docker-compose)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn compose_runs_the_tested_envoy_files_and_version() {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let compose: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let services = compose["services"].as_mapping().unwrap();

    // Every Envoy config in envoy/ is mounted, and every mounted one exists.
    let mut mounted = Vec::new();
    for (_, svc) in services {
        for volume in svc["volumes"].as_sequence().into_iter().flatten() {
            let v = volume.as_str().unwrap();
            if let Some(rest) = v.strip_prefix("./envoy/") {
                mounted.push(rest.split(':').next().unwrap().to_string());
            }
        }
    }
    mounted.sort();
    let mut files: Vec<String> = std::fs::read_dir(repo().join("envoy"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    assert_eq!(mounted, files);

    // The image tag is the Envoy version the tests install and run.
    let script = std::fs::read_to_string(repo().join("scripts/install-envoy.sh")).unwrap();
    let version = script
        .lines()
        .find_map(|l| l.strip_prefix("ENVOY_VERSION="))
        .and_then(|l| l.split_whitespace().next())
        .unwrap();
    assert!(
        text.contains(&format!("envoyproxy/envoy:v{version}")),
        "compose must use envoyproxy/envoy:v{version}"
    );
    let envoy = common::stack::envoy_binary(&repo()).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(envoy).arg("--version").output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(&format!("/{version}/")),
        "tested Envoy is {printed}"
    );
}

#[test]
fn envoy_configs_validate_with_the_real_envoy() {
    let envoy = common::stack::envoy_binary(&repo()).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_hopwarden"))
        .args(["dev", "certs"])
        .arg(dir.path().join("certs"))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    for entry in std::fs::read_dir(repo().join("envoy")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            // envoy/istio/: shaped as istiod builds them, run by tests/istio.rs.
            continue;
        }
        let out = Command::new(&envoy)
            .args(["--mode", "validate", "-c"])
            .arg(&path)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The README walkthrough against docker-compose.yml itself: the images scripts/images.sh
/// builds (hopwarden's from this build's binaries), the published ports on 127.0.0.1,
/// every answer the README promises, and a clean stop whatever happens.
#[test]
fn compose_stack_answers_the_readme_walkthrough() {
    let repo = repo();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_hopwarden")).parent().unwrap();
    assert!(
        bin_dir.join("examples/demo-service").exists(),
        "{}/examples/demo-service is missing: run scripts/test.sh, or cargo build --examples first",
        bin_dir.display()
    );
    let started = Instant::now();
    podman::build_images(&repo, bin_dir).unwrap_or_else(|e| panic!("images: {e}"));
    eprintln!("images ready after {:.1?}", started.elapsed());
    let project = format!("hopwarden-test-{}", std::process::id());
    let stack = Compose::up(&repo, &project).unwrap_or_else(|e| panic!("{e}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        wait_until_ready(&stack).await;
        eprintln!("stack ready after {:.1?}", started.elapsed());
        walkthrough(&stack).await;
    });
    eprintln!("walkthrough done after {:.1?}", started.elapsed());
}

/// Every service of the compose file, from the file.
fn compose_services() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let compose: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut names: Vec<String> = compose["services"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// The services with a healthcheck in the compose file: hopwarden and every Envoy.
fn healthchecked_services() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let compose: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut names: Vec<String> = compose["services"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, svc)| svc.get("healthcheck").is_some())
        .map(|(k, _)| k.as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Runs every compose healthcheck once: the first failure, if any.
fn healthchecks(stack: &Compose) -> Result<(), String> {
    let wanted = healthchecked_services();
    assert_eq!(
        wanted,
        [
            "email-sidecar",
            "gateway",
            "gateway-http",
            "hopwarden",
            "ledger-sidecar",
            "payments-sidecar"
        ],
        "hopwarden and every Envoy have a healthcheck"
    );
    let containers = stack.containers()?;
    for c in containers.iter().filter(|c| wanted.contains(&c.service)) {
        stack.healthcheck(c)?;
    }
    Ok(())
}

/// Fails unless every service has its container, the certs step exited 0 and every
/// other service still runs.
fn assert_all_up(stack: &Compose) {
    let containers = stack.containers().unwrap_or_else(|e| panic!("{e}"));
    let mut seen: Vec<String> = containers.iter().map(|c| c.service.clone()).collect();
    seen.sort();
    assert_eq!(seen, compose_services(), "one container per service");
    for c in &containers {
        if c.service == "certs" {
            assert!(
                c.state == "exited" && c.exit_code == 0,
                "certs: {} ({})\n{}",
                c.state,
                c.exit_code,
                stack.log("certs")
            );
        } else {
            assert_eq!(c.state, "running", "{} is not running", c.service);
        }
    }
}

/// hopwarden ready, both gateways ready with hopwarden healthy in Envoy's gRPC health
/// check, every compose healthcheck passing, and every sidecar passing an east-west
/// call; services checked all along.
async fn wait_until_ready(stack: &Compose) {
    let http = client();
    let read = format!("Bearer {}", dev_token(PAYMENTS, "ledger", "ledger.read"));
    let notify = "spiffe://hopwarden.local/ns/notifications/sa/notifications-worker";
    let send_token = format!("Bearer {}", dev_token(notify, "email", "email.send"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert_all_up(stack);
        let admin_ok = tokio::task::spawn_blocking(|| {
            http_get(9192, "/readyz").is_some_and(|(c, _)| c == 200)
                && http_get(9901, "/ready").is_some_and(|(c, _)| c == 200)
                && http_get(9902, "/ready").is_some_and(|(c, _)| c == 200)
                && hopwarden_healthy(9901)
        })
        .await
        .unwrap();
        let ok = |r: Option<Reply>| r.is_some_and(|r| r.status == 200);
        let health = if admin_ok {
            healthchecks(stack)
        } else {
            Err("not ready".into())
        };
        if health.is_ok()
            && ok(try_send(
                &http,
                "GET",
                "http://127.0.0.1:8081/call/ledger/transactions/42",
                &[("x-call-authorization", &read)],
            )
            .await)
            && ok(try_send(
                &http,
                "POST",
                "http://127.0.0.1:8082/call/email/send/generic",
                &[("x-call-authorization", &send_token)],
            )
            .await)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the stack was not ready after 120 s ({health:?})\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn walkthrough(stack: &Compose) {
    let http = client();
    let read = dev_token(PAYMENTS, "ledger", "ledger.read");
    let bearer = |t: &str| format!("Bearer {t}");
    let gateway = "http://127.0.0.1:10000/transactions/42";
    let ledger = ("host", "ledger.localhost");

    // North-south: no token, 401 with a challenge.
    let r = send(&http, "GET", gateway, &[ledger]).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        r.headers["www-authenticate"],
        r#"Bearer error="invalid_token""#
    );
    // A token: 200, and the upstream saw hopwarden's principal, not the client's forgery.
    let auth = bearer(&read);
    let forged = (
        "x-hopwarden-principal",
        "spiffe://hopwarden.local/ns/x/sa/admin",
    );
    let r = send(
        &http,
        "GET",
        gateway,
        &[ledger, ("authorization", &auth), forged],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["service"], "ledger");
    assert_eq!(r.body["principal"], PAYMENTS);
    assert_eq!(r.body["rule"], "payments-read-transactions");
    assert_eq!(
        r.body["hopwarden_headers"]["x-hopwarden-principal"],
        PAYMENTS
    );
    // No scope: 403 insufficient_scope.
    let unscoped = bearer(&dev_token(PAYMENTS, "ledger", ""));
    let r = send(
        &http,
        "GET",
        gateway,
        &[ledger, ("authorization", &unscoped)],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        r.headers["www-authenticate"],
        r#"Bearer error="insufficient_scope", scope="ledger.read""#
    );
    // The deny rule: 403, and hopwarden's decision log names the rule.
    let refunds = "http://127.0.0.1:10000/refunds";
    let r = send(&http, "POST", refunds, &[ledger, ("authorization", &auth)]).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.body["error"], "forbidden");
    let log = stack.log("hopwarden");
    assert!(log.contains("payments-never-refund"), "{log}");
    assert!(!log.contains(&read[7..47]), "a token in hopwarden's log");
    // A token for another audience: 401.
    let email = bearer(&dev_token(PAYMENTS, "email", "ledger.read"));
    let r = send(&http, "GET", gateway, &[ledger, ("authorization", &email)]).await;
    assert_eq!(r.status, 401, "{}", r.body);

    // The same edge on hopwarden's HTTP service.
    let r = send(
        &http,
        "GET",
        "http://127.0.0.1:10001/transactions/42",
        &[("host", "ledger.internal"), ("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["principal"], PAYMENTS);
    assert_eq!(r.body["rule"], "payments-read-transactions");

    // East-west over the sidecars' mTLS.
    let call = [("x-call-authorization", auth.as_str())];
    let r = send(
        &http,
        "GET",
        "http://127.0.0.1:8081/call/ledger/transactions/42",
        &call,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["body"]["principal"], PAYMENTS);
    assert_eq!(r.body["body"]["service"], "ledger");
    let r = send(
        &http,
        "POST",
        "http://127.0.0.1:8081/call/ledger/refunds",
        &call,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    // ledger replays the token it received to email: its audience is ledger, 401.
    let r = send(
        &http,
        "POST",
        "http://127.0.0.1:8082/call/email/send/generic",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);

    // The reconciler job, known only by the certificate the certs step wrote; the
    // client trusts only that step's CA, so ledger's sidecar presents one of its too.
    let certs = repo().join("dev/certs");
    let reconciler = mtls_client(&certs, Some("reconciler"));
    let inbound = "https://127.0.0.1:15443/transactions/42";
    let r = send(&reconciler, "GET", inbound, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["principal"], RECONCILER);
    assert_eq!(r.body["rule"], "reconciler-read-transactions");
    let anonymous = mtls_client(&certs, None);
    let err = anonymous.get(inbound).send().await;
    assert!(
        err.is_err(),
        "no client certificate, yet {:?}",
        err.map(|r| r.status())
    );

    // Fail closed: every service up and healthy until now; with hopwarden stopped,
    // Envoy says 503.
    assert_all_up(stack);
    healthchecks(stack).unwrap_or_else(|e| panic!("{e}"));
    stack
        .compose(
            &["stop", "--timeout", "10", "hopwarden"],
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    for (url, host) in [
        (gateway, "ledger.localhost"),
        ("http://127.0.0.1:10001/transactions/42", "ledger.internal"),
    ] {
        let r = send(
            &http,
            "GET",
            url,
            &[("host", host), ("authorization", &auth)],
        )
        .await;
        assert_eq!(r.status, 503, "hopwarden is stopped: {url}: {}", r.body);
    }
    let r = send(
        &http,
        "GET",
        "http://127.0.0.1:8081/call/ledger/transactions/42",
        &call,
    )
    .await;
    assert_eq!(
        r.body["status"], 503,
        "hopwarden is stopped: east-west: {}",
        r.body
    );
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn mtls_client(certs: &Path, identity: Option<&str>) -> reqwest::Client {
    let ca = std::fs::read(certs.join("ca.pem")).unwrap();
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()]);
    if let Some(name) = identity {
        let mut pem = std::fs::read(certs.join(format!("{name}.pem"))).unwrap();
        pem.extend(std::fs::read(certs.join(format!("{name}-key.pem"))).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

async fn try_send(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Option<Reply> {
    let mut req = client.request(method.parse().unwrap(), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.ok()?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.ok()?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Some(Reply {
        status,
        headers,
        body,
    })
}

async fn send(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Reply {
    try_send(client, method, url, headers)
        .await
        .unwrap_or_else(|| panic!("{method} {url}: no answer"))
}
