//! A reload recompiles only the files that changed, and the decision cache keeps
//! the decisions of every service whose policy did not change (a real server, real
//! tokens, real gRPC checks; the reload is the server's own directory watch).

mod common;

use std::time::Duration;

use common::*;

const EMAIL_V1: &str = "service: email
rules:
  - id: payments-send
    from: {principals: ['spiffe://hopwarden.local/ns/payments/sa/payments']}
    to: [{methods: [POST], paths: [/send]}]
";

const EMAIL_V2: &str = "service: email
rules:
  - id: payments-send-v2
    from: {principals: ['spiffe://hopwarden.local/ns/payments/sa/payments']}
    to: [{methods: [POST], paths: [/send, /send/**]}]
";

/// The decision cache's hits so far, from the server's metrics.
fn hits(s: &TestServer) -> u64 {
    let page = s.handle.engine.metrics().encode();
    page.lines()
        .find_map(|l| {
            l.strip_prefix(r#"hopwarden_cache_requests_total{cache="decision",result="hit"} "#)
        })
        .map_or(0, |v| v.parse().unwrap_or_else(|e| panic!("{v}: {e}")))
}

/// Waits until the server has published a set newer than `generation`.
async fn reloaded_after(s: &TestServer, generation: u64) -> bool {
    eventually(Duration::from_secs(10), || async {
        s.handle.engine.policies().generation > generation
    })
    .await
}

#[tokio::test]
async fn an_unchanged_service_keeps_its_cached_decisions_across_a_reload() {
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY), ("email.yaml", EMAIL_V1)]);
    let s = TestServer::start(d.config("", "")).await;
    let ledger_token = token(PAYMENTS, "ledger", "ledger.read");
    let email_token = token(PAYMENTS, "email", "");
    let ledger = || Check::new("ledger", "GET", "/transactions/42").bearer(&ledger_token);
    let email = || Check::new("email", "POST", "/send").bearer(&email_token);

    // Fill the cache: each first check is a miss, each second a hit.
    for check in [ledger(), email()] {
        assert_eq!(s.check(check.clone()).await.status, 200);
        assert_eq!(s.check(check).await.status, 200);
    }
    assert_eq!(hits(&s), 2);
    let before = s.handle.engine.policies();

    // Edit the email service's file only.
    d.write_policy("email.yaml", EMAIL_V2);
    assert!(
        reloaded_after(&s, before.generation).await,
        "the edit was never picked up"
    );
    let after = s.handle.engine.policies();
    assert!(after.set.shares_policy(&before.set, "ledger"));
    assert!(!after.set.shares_policy(&before.set, "email"));

    // The ledger decision is still served from the cache...
    assert_eq!(s.check(ledger()).await.status, 200);
    assert_eq!(
        hits(&s),
        3,
        "the unchanged service's cached decision was lost"
    );
    // ...the email one is not: its policy changed, and the answer is the new rule's.
    let a = s.check(email()).await;
    assert_eq!(
        (a.status, a.rule()),
        (200, Some("payments-send-v2")),
        "{a:?}"
    );
    assert_eq!(
        hits(&s),
        3,
        "a changed service's decision came from the cache"
    );
    assert_eq!(s.check(email()).await.status, 200);
    assert_eq!(hits(&s), 4);

    // A bad edit keeps the last good set, and with it every cached decision.
    let generation = s.handle.engine.policies().generation;
    d.write_policy(
        "email.yaml",
        "service: email\nrules:\n  - {id: x, frm: {}}\n",
    );
    let failed = eventually(Duration::from_secs(10), || async {
        s.handle.engine.metrics().encode().lines().any(|l| {
            l.starts_with(r#"hopwarden_policy_reloads_total{result="error"} "#)
                && !l.ends_with(" 0")
        })
    })
    .await;
    assert!(failed, "the bad edit was never tried");
    assert_eq!(s.handle.engine.policies().generation, generation);
    assert_eq!(s.check(ledger()).await.status, 200);
    assert_eq!(s.check(email()).await.status, 200);
    assert_eq!(hits(&s), 6);
}
