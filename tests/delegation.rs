//! Delegation chains (RFC 8693 `act`) through the real server on 127.0.0.1:0: who may
//! act for whom, the depth bound, malformed chains, the actor header over gRPC and
//! the HTTP service, the decision log and the decision cache.

mod common;

use common::*;
use serde_json::{json, Value};

const BFF: &str = "customer-bff";
/// A second issuer whose subjects are services (the first one's are users).
const SERVICE_ISSUER: &str = "https://svc.test.local";

const POLICY: &str = r#"
service: ledger
rules:
  - id: bff-for-customers
    from: { principals: [customer-bff], acting_for: { kinds: [user] } }
    to: [{ methods: [GET], paths: ["/transactions/{id}"] }]
    scopes: [ledger.read]
  - id: customers-directly
    from: { kinds: [user] }
    to: [{ methods: [GET], paths: ["/me"] }]
  - id: bff-itself
    from: { principals: [customer-bff] }
    to: [{ methods: [GET], paths: ["/health"] }]
  - id: nobody-refunds-for-users
    effect: deny
    from: { kinds: [user] }
    to: [{ paths: ["/refunds/**"] }]
  - id: any-delegated-refund
    from: { delegated: true }
    to: [{ paths: ["/refunds/**"] }]
"#;

/// The first issuer names users; the second, on the same key, names services.
async fn server(extra: &str) -> (Deployment, TestServer) {
    let d = Deployment::new(&[("ledger.yaml", POLICY)]);
    let issuers = format!(
        "    kind: user\n  - issuer: {SERVICE_ISSUER}\n    jwks_file: jwks.json\n    leeway: 0s\n"
    );
    let s = TestServer::start(d.config(&issuers, extra)).await;
    (d, s)
}

/// A user token for `sub` with extra claims (`act`, `may_act`) merged in.
fn user_token(sub: &str, extra: Value) -> String {
    let mut c = claims(sub, "ledger", "ledger.read");
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    key().sign(&c)
}

/// The decision log once it holds `n` lines (it is written every few milliseconds).
async fn logged(d: &Deployment, n: usize) -> Vec<Value> {
    for _ in 0..200 {
        let lines = d.decisions();
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!(
        "the decision log never reached {n} lines: {:?}",
        d.decisions()
    );
}

fn tx() -> Check {
    Check::new("ledger", "GET", "/transactions/42")
}

#[tokio::test]
async fn a_delegated_token_is_allowed_only_where_a_rule_lets_that_actor_act_for_that_kind() {
    let (d, s) = server("").await;
    let for_alice = user_token("alice", json!({"act": {"sub": BFF}}));

    // The BFF acting for a user: allowed, and the upstream learns both.
    let a = s
        .check(
            tx().bearer(&for_alice)
                .header("x-hopwarden-actor", "forged"),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.rule(), Some("bff-for-customers"));
    assert_eq!(a.header("x-hopwarden-principal"), Some("alice"));
    assert_eq!(a.header("x-hopwarden-principal-kind"), Some("user"));
    assert_eq!(
        a.header("x-hopwarden-actor"),
        Some(BFF),
        "ours overwrites the client's"
    );
    assert!(
        !a.headers_to_remove.iter().any(|h| h == "x-hopwarden-actor"),
        "{a:?}"
    );
    assert_eq!(a.metadata.get("actors").map(String::as_str), Some(BFF));

    // Another actor for the same user: no rule names it.
    let other = user_token("alice", json!({"act": {"sub": "other-bff"}}));
    assert_eq!(s.check(tx().bearer(&other)).await.status, 403);

    // The BFF acting for a service (a subject of the service issuer): refused.
    let mut c = claims("batch-job", "ledger", "ledger.read");
    c["iss"] = json!(SERVICE_ISSUER);
    c["act"] = json!({"sub": BFF});
    let for_service = key().sign(&c);
    let a = s.check(tx().bearer(&for_service)).await;
    assert_eq!(
        (a.status, a.reason()),
        (403, Some("no_matching_rule")),
        "{a:?}"
    );

    // A delegated token never passes a rule meant for its subject or its actor
    // calling directly...
    for path in ["/me", "/health"] {
        let a = s
            .check(Check::new("ledger", "GET", path).bearer(&for_alice))
            .await;
        assert_eq!(a.status, 403, "{path}: {a:?}");
    }
    // ...which do let them in directly, and then no actor goes upstream, whatever
    // the client sent.
    let alice = user_token("alice", json!({}));
    let a = s
        .check(
            Check::new("ledger", "GET", "/me")
                .bearer(&alice)
                .header("x-hopwarden-actor", BFF),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("x-hopwarden-actor"), None);
    assert!(
        a.headers_to_remove.iter().any(|h| h == "x-hopwarden-actor"),
        "{a:?}"
    );
    let mut c = claims(BFF, "ledger", "");
    c["iss"] = json!(SERVICE_ISSUER);
    let bff = key().sign(&c);
    let a = s
        .check(Check::new("ledger", "GET", "/health").bearer(&bff))
        .await;
    assert_eq!((a.status, a.rule()), (200, Some("bff-itself")), "{a:?}");
    assert!(
        a.headers_to_remove.iter().any(|h| h == "x-hopwarden-actor"),
        "{a:?}"
    );

    // A deny rule about users applies to a user's request through any actor.
    let a = s
        .check(Check::new("ledger", "POST", "/refunds/1").bearer(&for_alice))
        .await;
    assert_eq!(
        (a.status, a.rule()),
        (403, Some("nobody-refunds-for-users"))
    );
    let a = s
        .check(Check::new("ledger", "POST", "/refunds/1").bearer(&for_service))
        .await;
    assert_eq!((a.status, a.rule()), (200, Some("any-delegated-refund")));

    // The decision log names the subject and the actor chain; never a token.
    let lines = logged(&d, 9).await;
    let log = std::fs::read_to_string(d.path().join("decisions.log")).unwrap();
    for token in [&for_alice, &other, &for_service, &alice, &bff] {
        assert!(!log.contains(token.as_str()), "a token was logged");
    }
    let first = &lines[0];
    assert_eq!(first["principal"], "alice");
    assert_eq!(first["actors"], json!([BFF]));
    assert_eq!(first["rule"], "bff-for-customers");
    let direct = lines
        .iter()
        .find(|l| l["rule"] == "customers-directly")
        .unwrap();
    assert_eq!(direct["actors"], Value::Null);
}

#[tokio::test]
async fn malformed_or_too_deep_chains_are_invalid_tokens() {
    let (d, s) = server("").await;
    let cases: &[(Value, &str)] = &[
        // The default bound is one actor.
        (
            json!({"act": {"sub": BFF, "act": {"sub": "web"}}}),
            "delegation_too_deep",
        ),
        (json!({"act": BFF}), "act_not_an_object"),
        (json!({"act": [BFF]}), "act_not_an_object"),
        (json!({"act": {"client_id": BFF}}), "act_without_sub"),
        (json!({"act": {"sub": ""}}), "act_without_sub"),
        (
            json!({"act": {"sub": BFF}, "may_act": {"sub": "other"}}),
            "actor_not_in_may_act",
        ),
        (json!({"may_act": "x"}), "may_act_malformed"),
    ];
    for (n, (extra, detail)) in cases.iter().enumerate() {
        let a = s
            .check(tx().bearer(&user_token("alice", extra.clone())))
            .await;
        assert_eq!(
            (a.status, a.reason()),
            (401, Some("invalid_token")),
            "{extra}"
        );
        assert!(a.header("www-authenticate").is_some(), "{extra}");
        let last = logged(&d, n + 1).await.pop().unwrap();
        assert_eq!(last["detail"], *detail, "{extra}");
    }
    // The same chain the bound refused, where the issuer allows two actors; the
    // rule matches the outermost actor, the log shows both.
    let (d, s) = {
        let d = Deployment::new(&[("ledger.yaml", POLICY)]);
        let s =
            TestServer::start(d.config("    kind: user\n    max_delegation_depth: 2\n", "")).await;
        (d, s)
    };
    let two = user_token("alice", json!({"act": {"sub": BFF, "act": {"sub": "web"}}}));
    let a = s.check(tx().bearer(&two)).await;
    assert_eq!(
        (a.status, a.rule()),
        (200, Some("bff-for-customers")),
        "{a:?}"
    );
    assert_eq!(a.header("x-hopwarden-actor"), Some(BFF));
    assert_eq!(
        logged(&d, 1).await.pop().unwrap()["actors"],
        json!([BFF, "web"])
    );
    // An issuer with max_delegation_depth 0 accepts no delegated token at all.
    let d = Deployment::new(&[("ledger.yaml", POLICY)]);
    let s = TestServer::start(d.config("    kind: user\n    max_delegation_depth: 0\n", "")).await;
    let one = user_token("alice", json!({"act": {"sub": BFF}}));
    assert_eq!(s.check(tx().bearer(&one)).await.status, 401);
}

/// The decision cache never answers one actor's check with another's decision.
#[tokio::test]
async fn the_decision_cache_keeps_actors_apart() {
    let (_d, s) = server("").await;
    let bff = user_token("alice", json!({"act": {"sub": BFF}}));
    let other = user_token("alice", json!({"act": {"sub": "other-bff"}}));
    let direct = user_token("alice", json!({}));
    for round in 0..3 {
        let a = s.check(tx().bearer(&bff)).await;
        assert_eq!(
            (a.status, a.header("x-hopwarden-actor")),
            (200, Some(BFF)),
            "round {round}"
        );
        assert_eq!(
            s.check(tx().bearer(&other)).await.status,
            403,
            "round {round}"
        );
        assert_eq!(
            s.check(tx().bearer(&direct)).await.status,
            403,
            "round {round}"
        );
    }
    let metrics = s.handle.engine.metrics().encode();
    assert!(
        metrics.contains("hopwarden_cache_requests_total{cache=\"decision\",result=\"hit\"} 6\n"),
        "the later rounds came from the cache: {metrics}"
    );
}

/// The HTTP service sets the actor for a delegated token and asks Envoy to remove
/// a client's copy otherwise.
#[tokio::test]
async fn the_http_service_sets_or_removes_the_actor() {
    let (_d, s) = server("http_listen: 127.0.0.1:0\n").await;
    let addr = s.handle.http_addr.expect("http_listen is bound");
    let client = reqwest::Client::new();
    let get = |path: &str, token: &str| {
        client
            .get(format!("http://{addr}/gateway/ledger{path}"))
            .header("authorization", format!("Bearer {token}"))
            .header("x-hopwarden-actor", "forged")
            .send()
    };
    let h = |r: &reqwest::Response, k: &str| {
        r.headers().get(k).map(|v| v.to_str().unwrap().to_string())
    };
    let r = get(
        "/transactions/42",
        &user_token("alice", json!({"act": {"sub": BFF}})),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h(&r, "x-hopwarden-actor").as_deref(), Some(BFF));
    assert_eq!(h(&r, "x-hopwarden-principal").as_deref(), Some("alice"));
    // No API key identified the caller: its header is removed, whatever the client sent.
    assert_eq!(
        h(&r, "x-envoy-auth-headers-to-remove").as_deref(),
        Some("x-hopwarden-api-key")
    );
    let r = get("/me", &user_token("alice", json!({}))).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h(&r, "x-hopwarden-actor"), None);
    assert_eq!(
        h(&r, "x-envoy-auth-headers-to-remove").as_deref(),
        Some("x-hopwarden-actor,x-hopwarden-api-key")
    );
    let r = get(
        "/transactions/42",
        &user_token("alice", json!({"act": {"sub": BFF, "act": {"sub": "web"}}})),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
}
