//! What an operator sees: Prometheus metrics and health over the admin port, and the
//! decision log, after real checks against the real server.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The value of one sample line (`name{labels} value`) in a Prometheus text page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

#[tokio::test]
async fn metrics_and_health_over_http() {
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let s = TestServer::start(d.config("", "")).await;
    let admin = s.handle.admin_addr.expect("admin enabled");
    assert_eq!(get(admin, "/healthz").await.0, 200);
    assert_eq!(get(admin, "/readyz").await.0, 200);
    assert_eq!(get(admin, "/nope").await.0, 404);

    let t = token(PAYMENTS, "ledger", "ledger.read");
    for _ in 0..3 {
        assert_eq!(
            s.check(Check::new("ledger", "GET", "/transactions/42").bearer(&t))
                .await
                .status,
            200
        );
    }
    assert_eq!(
        s.check(Check::new("ledger", "GET", "/transactions/42"))
            .await
            .status,
        401
    );
    assert_eq!(
        s.check(Check::new("ledger", "POST", "/refunds").bearer(&t))
            .await
            .status,
        403
    );
    let stranger = token("some-random-subject", "ledger", "");
    assert_eq!(
        s.check(Check::new("ledger", "GET", "/x").bearer(&stranger))
            .await
            .status,
        403
    );
    assert_eq!(
        s.check(Check::new("payroll", "GET", "/x").bearer(&t))
            .await
            .status,
        403
    );

    let (code, page) = get(admin, "/metrics").await;
    assert_eq!(code, 200);
    let cases: &[(&str, f64)] = &[
        (
            r#"hopwarden_checks_total{service="ledger",decision="allow",reason="none"}"#,
            3.0,
        ),
        (
            r#"hopwarden_checks_total{service="ledger",decision="deny",reason="missing_credential"}"#,
            1.0,
        ),
        (
            r#"hopwarden_checks_total{service="ledger",decision="deny",reason="deny_rule"}"#,
            1.0,
        ),
        (
            r#"hopwarden_checks_total{service="ledger",decision="deny",reason="no_matching_rule"}"#,
            1.0,
        ),
        // An unknown service is not a label value of its own: bounded cardinality.
        (
            r#"hopwarden_checks_total{service="unknown",decision="deny",reason="no_policy"}"#,
            1.0,
        ),
        (
            r#"hopwarden_calls_total{principal="spiffe://hopwarden.local/ns/payments/sa/payments",service="ledger",decision="allow"}"#,
            3.0,
        ),
        (
            r#"hopwarden_calls_total{principal="other",service="ledger",decision="deny"}"#,
            1.0,
        ),
        (
            r#"hopwarden_cache_requests_total{cache="decision",result="hit"}"#,
            2.0,
        ),
        (
            r#"hopwarden_jwks_fetches_total{issuer="https://sts.test.local",result="ok"}"#,
            1.0,
        ),
        ("hopwarden_policy_generation", 1.0),
        ("hopwarden_check_duration_seconds_count", 7.0),
    ];
    for (series, want) in cases {
        assert_eq!(sample(&page, series), Some(*want), "{series}\n{page}");
    }
    assert!(
        !page.contains("some-random-subject"),
        "unnamed principals must not become labels"
    );
    assert!(!page.contains("payroll"));
    assert!(!page.contains(&t[..30]));

    // A reload shows up as a result and a new generation.
    d.write_policy("ledger.yaml", "service: ledger\nrules: []\n");
    assert!(
        eventually(Duration::from_secs(10), || async {
            sample(
                &get(admin, "/metrics").await.1,
                "hopwarden_policy_generation",
            ) == Some(2.0)
        })
        .await
    );
    let page = get(admin, "/metrics").await.1;
    assert_eq!(
        sample(&page, r#"hopwarden_policy_reloads_total{result="ok"}"#),
        Some(1.0)
    );
}

/// One look at the admin port and gRPC health while the server shuts down.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Seen {
    /// `/readyz`'s status (None: the connection failed).
    readyz: Option<u16>,
    /// `/healthz`'s status.
    healthz: Option<u16>,
    /// Whether `/metrics` answered 200 with the check counters on it.
    metrics: bool,
    /// gRPC health's status (None: the RPC failed).
    grpc: Option<i32>,
}

async fn status(client: &reqwest::Client, url: String) -> Option<(u16, String)> {
    let resp = client.get(url).send().await.ok()?;
    let code = resp.status().as_u16();
    Some((code, resp.text().await.ok()?))
}

#[tokio::test]
async fn draining_goes_unready_before_the_listeners_close() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let s = TestServer::start(d.config("", "")).await;
    let admin = s.handle.admin_addr.expect("admin enabled");
    let grpc_addr = s.handle.local_addr;
    assert_eq!(get(admin, "/readyz").await.0, 200);
    let t = token(PAYMENTS, "ledger", "ledger.read");
    assert_eq!(
        s.check(Check::new("ledger", "GET", "/transactions/42").bearer(&t))
            .await
            .status,
        200
    );

    // Watch everything an operator's probes see, from just before the shutdown to
    // just after it.
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel.clone());
    let client = reqwest::Client::new();
    let shutdown = tokio::spawn(s.handle.shutdown());
    let mut seen = Vec::new();
    while !shutdown.is_finished() {
        let grpc = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()
            .map(|r| r.into_inner().status);
        let readyz = status(&client, format!("http://{admin}/readyz")).await;
        let healthz = status(&client, format!("http://{admin}/healthz")).await;
        let metrics = status(&client, format!("http://{admin}/metrics")).await;
        seen.push(Seen {
            readyz: readyz.map(|r| r.0),
            healthz: healthz.map(|r| r.0),
            metrics: metrics
                .is_some_and(|(code, page)| code == 200 && page.contains("hopwarden_checks_total")),
            grpc,
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.await.unwrap().unwrap();

    // During the grace period the admin server answered: not ready (a real 503, not a
    // refused connection), alive, with its metrics; and gRPC health said NOT_SERVING.
    assert!(
        seen.iter()
            .any(|s| s.readyz == Some(503) && s.healthz == Some(200) && s.metrics),
        "{seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.grpc == Some(ServingStatus::NotServing as i32)),
        "{seen:#?}"
    );
    // Never ready again once the drain had begun.
    let first_503 = seen.iter().position(|s| s.readyz == Some(503)).unwrap();
    assert!(
        seen[first_503..].iter().all(|s| s.readyz != Some(200)),
        "{seen:#?}"
    );
    // Then every listener closed, and the probes' open connections with them.
    assert!(status(&client, format!("http://{admin}/readyz"))
        .await
        .is_none());
    assert!(tokio::net::TcpStream::connect(admin).await.is_err());
    assert!(tokio::net::TcpStream::connect(grpc_addr).await.is_err());
}

#[tokio::test]
async fn decision_log_lines_field_by_field() {
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let s = TestServer::start(d.config("", "")).await;
    let t = token(PAYMENTS, "ledger", "ledger.read");
    let allowed = Check::new("ledger", "GET", "/transactions/42?secret=query")
        .bearer(&t)
        .peer(RECONCILER)
        .header("x-request-id", "req-1")
        .header("cookie", "session=c00kie");
    assert_eq!(s.check(allowed).await.status, 200);
    let mut expired = claims(PAYMENTS, "ledger", "ledger.read");
    expired["exp"] = json!(now() - 10);
    let expired = key().sign(&expired);
    let denied = Check::new("ledger", "GET", "/transactions/42")
        .bearer(&expired)
        .header("x-request-id", "req-2");
    assert_eq!(s.check(denied).await.status, 401);
    assert_eq!(
        s.check(Check::new("ledger", "GET", "/a/../b").header("x-request-id", "req-3"))
            .await
            .status,
        400
    );

    let lines = d.decisions_when(3).await;
    let a = &lines[0];
    assert!(a["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(a["request_id"], "req-1");
    assert_eq!(a["service"], "ledger");
    assert_eq!(a["hop"], "mesh");
    assert_eq!(a["principal"], PAYMENTS);
    assert_eq!(a["kind"], "service");
    assert_eq!(a["peer"], RECONCILER);
    assert_eq!(a["method"], "GET");
    assert_eq!(a["path"], "/transactions/42");
    assert_eq!(a["decision"], "allow");
    assert_eq!(a["status"], 200);
    assert_eq!(a["rule"], "payments-read-transactions");
    assert_eq!(a["reason"], serde_json::Value::Null);
    assert_eq!(a["cached"], false);
    assert!(a["latency_us"].as_u64().is_some());
    assert_eq!(a["scopes"], json!(["ledger.read"]));
    assert!(a.get("scopes_truncated").is_none(), "{a}");

    let b = &lines[1];
    assert_eq!(
        (b["decision"].as_str(), b["status"].as_u64()),
        (Some("deny"), Some(401))
    );
    assert_eq!(
        (b["reason"].as_str(), b["detail"].as_str()),
        (Some("invalid_token"), Some("expired"))
    );
    // A token that was refused carried nothing the log may vouch for.
    assert_eq!(b["scopes"], serde_json::Value::Null);
    let c = &lines[2];
    assert_eq!(
        (c["reason"].as_str(), c["path"].as_str()),
        (Some("bad_request"), Some("<non-canonical>"))
    );

    let text = std::fs::read_to_string(d.path().join("decisions.log")).unwrap();
    for secret in [&t[..40], &expired[..40], "c00kie", "secret=query", "Bearer"] {
        assert!(
            !text.contains(secret),
            "{secret:?} leaked into the decision log"
        );
    }
}

#[tokio::test]
async fn decision_log_records_the_scopes_a_caller_carried_bounded() {
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let s = TestServer::start(d.config("", "")).await;
    // Denied for a missing scope: the log says what the token did carry.
    let t = token(PAYMENTS, "ledger", "ledger.write audit.read");
    let check = Check::new("ledger", "GET", "/transactions/42").bearer(&t);
    assert_eq!(s.check(check).await.status, 403);
    // An mTLS peer alone carries no scopes.
    let check = Check::new("ledger", "GET", "/transactions/42").peer(RECONCILER);
    assert_eq!(s.check(check).await.status, 200);
    // Hundreds of scopes, one of them kilobytes long: bounded, and marked.
    let long = "x".repeat(4_000);
    let mut many: Vec<String> = vec!["ledger.read".into(), long];
    many.extend((0..500).map(|n| format!("extra.{n}")));
    let t = token(PAYMENTS, "ledger", &many.join(" "));
    let check = Check::new("ledger", "GET", "/transactions/42").bearer(&t);
    assert_eq!(s.check(check).await.status, 200);
    let lines = d.decisions_when(3).await;
    assert_eq!(lines[0]["reason"], "insufficient_scope");
    assert_eq!(lines[0]["scopes"], json!(["ledger.write", "audit.read"]));
    assert_eq!(lines[1]["scopes"], serde_json::Value::Null);
    let bounded = &lines[2];
    assert_eq!(bounded["scopes_truncated"], true);
    let scopes: Vec<&str> = bounded["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(scopes.len(), hopwarden::decision::MAX_SCOPES);
    assert_eq!(scopes[0], "ledger.read");
    assert_eq!(
        scopes[1],
        format!("{}…", "x".repeat(hopwarden::decision::MAX_SCOPE_BYTES))
    );
    assert_eq!(scopes[2], "extra.0");
    let text = std::fs::read_to_string(d.path().join("decisions.log")).unwrap();
    let longest = text.lines().map(str::len).max().unwrap();
    assert!(longest < 8_000, "a line of {longest} bytes");
}

#[tokio::test]
async fn dry_run_allows_and_logs_what_enforce_would_deny() {
    // A new policy rolled out in dry-run, and an enforced one with a dry-run deny rule.
    let trial = r#"
service: email
mode: dry-run
rules:
  - id: notifications-send-generic
    from: { principals: ["spiffe://hopwarden.local/ns/notifications/sa/notifications-worker"] }
    to: [{ methods: [POST], paths: ["/send/generic"] }]
    scopes: [email.send]
"#;
    let ledger = r#"
service: ledger
rules:
  - id: payments-read
    from: { principals: ["spiffe://hopwarden.local/ns/payments/sa/payments"] }
    to: [{ methods: [GET], paths: ["/transactions/**"] }]
  - id: no-archive-reads
    effect: deny
    mode: dry-run
    to: [{ paths: ["/transactions/archive/**"] }]
"#;
    let d = Deployment::new(&[("email.yaml", trial), ("ledger.yaml", ledger)]);
    let s = TestServer::start(d.config("", "")).await;
    let worker = "spiffe://hopwarden.local/ns/notifications/sa/notifications-worker";

    // Enforced, this would be a 403 (not the worker): dry-run lets it through and says so.
    let a = s
        .check(Check::new("email", "POST", "/send/generic").bearer(&token(PAYMENTS, "email", "")))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("x-hopwarden-rule"), Some("dry-run"));
    assert_eq!(
        a.header("x-hopwarden-dry-run"),
        Some("would-deny; reason=no_matching_rule")
    );
    // Missing scope: would be insufficient_scope on the rule.
    let a = s
        .check(Check::new("email", "POST", "/send/generic").bearer(&token(worker, "email", "")))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("x-hopwarden-dry-run"),
        Some("would-deny; reason=insufficient_scope; rule=notifications-send-generic")
    );
    // What the policy allows is a plain allow, with no dry-run header.
    let a = s
        .check(Check::new("email", "POST", "/send/generic").bearer(&token(
            worker,
            "email",
            "email.send",
        )))
        .await;
    assert_eq!((a.status, a.header("x-hopwarden-dry-run")), (200, None));
    assert_eq!(
        a.header("x-hopwarden-rule"),
        Some("notifications-send-generic")
    );

    // A dry-run deny rule in an enforced policy: allowed by the allow rule, marked.
    let t = token(PAYMENTS, "ledger", "");
    let a = s
        .check(Check::new("ledger", "GET", "/transactions/archive/2019").bearer(&t))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-hopwarden-rule"), Some("payments-read"));
    assert_eq!(
        a.header("x-hopwarden-dry-run"),
        Some("would-deny; reason=deny_rule; rule=no-archive-reads")
    );
    // The enforced policy still denies what no rule allows.
    assert_eq!(
        s.check(Check::new("ledger", "POST", "/transactions/1").bearer(&t))
            .await
            .status,
        403
    );

    let lines = d.decisions_when(5).await;
    assert_eq!(lines[0]["decision"], "allow");
    assert_eq!(
        lines[0]["dry_run"],
        json!({"rule": "default", "reason": "no_matching_rule"})
    );
    assert_eq!(
        lines[1]["dry_run"],
        json!({"rule": "notifications-send-generic", "reason": "insufficient_scope"})
    );
    assert_eq!(lines[2]["dry_run"], serde_json::Value::Null);
    assert_eq!(
        lines[3]["dry_run"],
        json!({"rule": "no-archive-reads", "reason": "deny_rule"})
    );
    assert_eq!(lines[4]["decision"], "deny");

    let page = get(s.handle.admin_addr.unwrap(), "/metrics").await.1;
    let cases: &[(&str, f64)] = &[
        (
            r#"hopwarden_dry_run_would_deny_total{service="email",rule="default"}"#,
            1.0,
        ),
        (
            r#"hopwarden_dry_run_would_deny_total{service="email",rule="notifications-send-generic"}"#,
            1.0,
        ),
        (
            r#"hopwarden_dry_run_would_deny_total{service="ledger",rule="no-archive-reads"}"#,
            1.0,
        ),
    ];
    for (series, want) in cases {
        assert_eq!(sample(&page, series), Some(*want), "{series}\n{page}");
    }
}
