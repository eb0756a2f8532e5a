//! `hopwarden suggest` from a real decision log: a dry-run rollout of the real server
//! answers a scripted mix of callers and paths, `suggest` drafts policies from its
//! log, and the draft is then validated, tested, and enforced by a real server that
//! must allow every observed request and deny the unobserved ones nearby.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use hopwarden::policy::{FromClause, PolicySet};

const INVENTORY: &str = "spiffe://hopwarden.local/ns/inventory/sa/inventory-api";
const PARTNER: &str = "partner:acme";
const UUID: &str = "6f1c2b9e-3a4d-4e5f-8a9b-0c1d2e3f4a5b";

/// One scripted request: caller (a token subject, or an mTLS-only peer), service, hop,
/// method, path.
#[derive(Clone, Copy)]
enum Who {
    Token(&'static str),
    /// A token carrying exactly these scopes (space-separated).
    Scoped(&'static str, &'static str),
    Peer(&'static str),
    Anonymous,
}

type Request = (Who, &'static str, &'static str, &'static str, String);

async fn request(server: &TestServer, r: &Request) -> Answer {
    let (who, service, hop, method, path) = r.clone();
    let mut check = Check::new(service, method, &path).hop(hop);
    match who {
        Who::Token(sub) => check = check.bearer(&token(sub, service, scopes(sub, &path))),
        Who::Scoped(sub, scope) => check = check.bearer(&token(sub, service, scope)),
        Who::Peer(spiffe) => check = check.peer(spiffe),
        Who::Anonymous => {}
    }
    server.check(check).await
}

/// The scopes each caller's tokens carry during the rollout: payments' differ by path
/// (so the draft requires what they share, `ledger.read`); the partner's carry none.
fn scopes(sub: &str, path: &str) -> &'static str {
    match sub {
        PAYMENTS if path.ends_with("/status") => "ledger.status ledger.read",
        PAYMENTS => "ledger.read audit.read",
        INVENTORY => "catalog.write catalog.read",
        _ => "",
    }
}

/// What the services are seen doing during the dry-run rollout.
fn observed() -> Vec<Request> {
    use Who::*;
    let mut out: Vec<Request> = Vec::new();
    for id in [41, 42, 43, 1234] {
        out.push((
            Token(PAYMENTS),
            "ledger",
            "mesh",
            "GET",
            format!("/transactions/{id}"),
        ));
    }
    out.push((
        Token(PAYMENTS),
        "ledger",
        "mesh",
        "GET",
        "/transactions/42/status".into(),
    ));
    out.push((
        Token(PAYMENTS),
        "ledger",
        "mesh",
        "HEAD",
        "/transactions/7/status".into(),
    ));
    out.push((
        Peer(RECONCILER),
        "ledger",
        "mesh",
        "GET",
        "/transactions".into(),
    ));
    out.push((
        Peer(RECONCILER),
        "ledger",
        "mesh",
        "GET",
        "/transactions/2024/06".into(),
    ));
    out.push((
        Peer(RECONCILER),
        "ledger",
        "mesh",
        "GET",
        "/transactions/2025/01".into(),
    ));
    out.push((
        Token(INVENTORY),
        "catalog",
        "mesh",
        "GET",
        "/products".into(),
    ));
    out.push((
        Token(INVENTORY),
        "catalog",
        "mesh",
        "GET",
        format!("/products/{UUID}"),
    ));
    out.push((
        Token(INVENTORY),
        "catalog",
        "mesh",
        "PUT",
        "/products/981/stock".into(),
    ));
    out.push((
        Token(PARTNER),
        "catalog",
        "gateway",
        "GET",
        "/partners/acme/feeds/alpha".into(),
    ));
    out.push((
        Token(PARTNER),
        "catalog",
        "gateway",
        "GET",
        "/partners/acme/feeds/beta".into(),
    ));
    out
}

/// Nearby requests nobody made: (request, whether the draft should allow it).
fn nearby() -> Vec<(Request, bool)> {
    use Who::*;
    vec![
        // Another id is the same resource type: allowed.
        (
            (
                Token(PAYMENTS),
                "ledger",
                "mesh",
                "GET",
                "/transactions/99".into(),
            ),
            true,
        ),
        (
            (
                Token(PAYMENTS),
                "ledger",
                "mesh",
                "GET",
                "/transactions/5/status".into(),
            ),
            true,
        ),
        (
            (
                Peer(RECONCILER),
                "ledger",
                "mesh",
                "GET",
                "/transactions/2023/12".into(),
            ),
            true,
        ),
        (
            (
                Token(INVENTORY),
                "catalog",
                "mesh",
                "GET",
                "/products/00000000-0000-4000-8000-000000000000".into(),
            ),
            true,
        ),
        // The same caller and request without the scopes the draft requires: denied.
        (
            (
                Scoped(PAYMENTS, "audit.read ledger.status"),
                "ledger",
                "mesh",
                "GET",
                "/transactions/41".into(),
            ),
            false,
        ),
        (
            (
                Scoped(INVENTORY, "catalog.read"),
                "catalog",
                "mesh",
                "PUT",
                "/products/981/stock".into(),
            ),
            false,
        ),
        // Another collection, method, hop or caller: denied.
        (
            (
                Token(PAYMENTS),
                "ledger",
                "mesh",
                "GET",
                "/refunds/42".into(),
            ),
            false,
        ),
        (
            (
                Token(PAYMENTS),
                "ledger",
                "mesh",
                "GET",
                "/transactions".into(),
            ),
            false,
        ),
        (
            (
                Token(PAYMENTS),
                "ledger",
                "mesh",
                "DELETE",
                "/transactions/41".into(),
            ),
            false,
        ),
        (
            (
                Token(PAYMENTS),
                "ledger",
                "mesh",
                "GET",
                "/transactions/42/items".into(),
            ),
            false,
        ),
        (
            (
                Token(PAYMENTS),
                "ledger",
                "gateway",
                "GET",
                "/transactions/41".into(),
            ),
            false,
        ),
        (
            (
                Token(PAYMENTS),
                "catalog",
                "mesh",
                "GET",
                "/products".into(),
            ),
            false,
        ),
        (
            (
                Token(INVENTORY),
                "ledger",
                "mesh",
                "GET",
                "/transactions/41".into(),
            ),
            false,
        ),
        (
            (
                Peer(RECONCILER),
                "ledger",
                "mesh",
                "POST",
                "/transactions".into(),
            ),
            false,
        ),
        (
            (
                Token(INVENTORY),
                "catalog",
                "mesh",
                "PUT",
                "/products/981".into(),
            ),
            false,
        ),
        (
            (
                Token(INVENTORY),
                "catalog",
                "mesh",
                "PUT",
                "/orders/981/stock".into(),
            ),
            false,
        ),
        (
            (
                Token(PARTNER),
                "catalog",
                "gateway",
                "GET",
                "/partners/acme/feeds/gamma".into(),
            ),
            false,
        ),
        (
            (
                Token(PARTNER),
                "catalog",
                "gateway",
                "GET",
                "/partners/other/feeds/alpha".into(),
            ),
            false,
        ),
        (
            (
                Anonymous,
                "ledger",
                "mesh",
                "GET",
                "/transactions/41".into(),
            ),
            false,
        ),
    ]
}

async fn wait_for_lines(d: &Deployment, n: usize) {
    let ok = eventually(Duration::from_secs(5), || async {
        d.decisions().len() >= n
    })
    .await;
    assert!(ok, "{} decision lines, want {n}", d.decisions().len());
}

fn run_ok(args: &[&str], cwd: &Path) -> String {
    let (code, out, err) = run_bin(args, cwd);
    assert_eq!(code, 0, "hopwarden {args:?}\n{out}\n{err}");
    out
}

#[tokio::test]
async fn a_draft_from_a_dry_run_allows_what_was_observed_and_nothing_near_it() {
    // The rollout: both services in dry-run with no rules, so every request is let
    // through and logged with what enforcement would have done.
    let rollout = Deployment::new(&[
        ("ledger.yaml", "service: ledger\nmode: dry-run\n"),
        ("catalog.yaml", "service: catalog\nmode: dry-run\n"),
    ]);
    let server = TestServer::start(rollout.config("", "")).await;
    let seen = observed();
    // Each twice (the second from the decision cache), plus one anonymous request.
    for r in seen.iter().chain(&seen) {
        assert_eq!(request(&server, r).await.status, 200, "{}", r.4);
    }
    let anonymous: Request = (
        Who::Anonymous,
        "ledger",
        "mesh",
        "GET",
        "/transactions/1".into(),
    );
    request(&server, &anonymous).await;
    wait_for_lines(&rollout, 2 * seen.len() + 1).await;
    drop(server);

    let log = rollout.path().join("decisions.log");
    let out = run_ok(
        &[
            "suggest",
            "--usage",
            log.to_str().unwrap(),
            "--out",
            "draft",
        ],
        rollout.path(),
    );
    let draft = rollout.path().join("draft");
    assert!(
        out.contains("catalog: 2 rule(s) covering 10 request(s)"),
        "{out}"
    );
    assert!(
        out.contains("ledger: 2 rule(s) covering 18 request(s)"),
        "{out}"
    );
    assert!(
        out.contains("  ledger-payments: 12 request(s), 2 path template(s), caller spiffe://hopwarden.local/ns/payments/sa/payments\n"),
        "{out}"
    );
    assert!(
        out.contains("not generalised: GET /partners/acme/feeds/*: segment 4 varies (alpha, beta) but is not an id"),
        "{out}"
    );
    assert!(out.contains("not drafted: 1 anonymous request(s)"), "{out}");
    // Each rule requires the scopes all its requests carried, and says when none.
    assert!(
        out.contains("caller spiffe://hopwarden.local/ns/payments/sa/payments\n    scopes required: ledger.read\n"),
        "{out}"
    );
    assert!(
        out.contains("    scopes required: catalog.read catalog.write\n"),
        "{out}"
    );
    assert!(
        out.contains("caller partner:acme\n    scopes: none carried by every request"),
        "{out}"
    );
    assert_eq!(out.matches("scopes: none carried").count(), 2, "{out}");

    // The draft validates with the server's own config, and passes its own suites.
    let config = std::fs::read_to_string(rollout.path().join("hopwarden.yaml"))
        .unwrap()
        .replace("policies: policies", "policies: draft");
    std::fs::write(rollout.path().join("draft.yaml"), config).unwrap();
    let validated = run_ok(&["validate", "-c", "draft.yaml"], rollout.path());
    assert!(
        validated.starts_with("ok: 1 issuer(s), 2 service policy(ies), 4 rule(s)"),
        "{validated}"
    );
    let tested = run_ok(&["test", "draft"], rollout.path());
    assert!(tested.contains(" passed, 0 failed"), "{tested}");
    assert!(!tested.contains("not exercised"), "{tested}");

    // Never a wildcard: every rule names one principal exactly, every path is literal
    // or `{param}`.
    let set = PolicySet::load_dir(&draft).unwrap();
    for policy in set.services() {
        for rule in policy.rules() {
            let FromClause::Authenticated(callers) = rule.from() else {
                panic!("{}: no named caller", rule.id());
            };
            let principals = callers.principals().expect("principals named");
            assert_eq!(principals.len(), 1, "{}", rule.id());
            assert!(principals[0].exact().is_some(), "{}", rule.id());
            for clause in rule.to().expect("to named") {
                assert!(clause.methods().is_some(), "{}", rule.id());
                assert!(!clause.paths().is_empty(), "{}", rule.id());
                assert!(
                    clause.paths().iter().all(|p| !p.has_wildcard()),
                    "{}",
                    rule.id()
                );
            }
        }
    }
    let text = std::fs::read_to_string(draft.join("ledger.yaml")).unwrap();
    assert!(text.contains("\"/transactions/{id}\""), "{text}");
    assert!(text.contains("\"/transactions/{id}/{id2}\""), "{text}");
    assert!(text.contains("    scopes: [\"ledger.read\"]\n"), "{text}");
    let suite = std::fs::read_to_string(draft.join("ledger_test.yaml")).unwrap();
    assert!(suite.contains("reason: insufficient_scope"), "{suite}");
    assert!(!text.contains('*'), "{text}");

    // Enforced by a real server: every observed request allowed by its caller's rule,
    // the nearby ones as expected.
    let files: Vec<(String, String)> = ["ledger.yaml", "catalog.yaml"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                std::fs::read_to_string(draft.join(n)).unwrap(),
            )
        })
        .collect();
    let policies: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let enforced = Deployment::new(&policies);
    let server = TestServer::start(enforced.config("", "")).await;
    for r in &seen {
        let answer = request(&server, r).await;
        assert_eq!(answer.status, 200, "observed {} {} {}", r.1, r.3, r.4);
        assert!(answer.header("x-hopwarden-dry-run").is_none());
    }
    for (r, allowed) in nearby() {
        let status = request(&server, &r).await.status;
        let want: &[u16] = if allowed { &[200] } else { &[401, 403] };
        assert!(
            want.contains(&status),
            "nearby {} {} {} {}: {status}",
            r.1,
            r.2,
            r.3,
            r.4
        );
    }
}

#[test]
fn suggest_refuses_what_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    // No decision lines.
    std::fs::write(dir.path().join("empty.log"), "not json\n").unwrap();
    let (code, _, err) = run_bin(&["suggest", "--usage", "empty.log"], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("no allowed request with a caller"), "{err}");
    // A missing log.
    let (code, _, err) = run_bin(&["suggest", "--usage", "nope.log"], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("nope.log: cannot read decision log"), "{err}");
    // Never over existing files.
    let line = r#"{"timestamp":"2026-01-01T00:00:00.000Z","service":"ledger","hop":"mesh","principal":"a:b","kind":"service","peer":null,"method":"GET","path":"/x/1","decision":"allow","status":200}"#;
    std::fs::write(dir.path().join("d.log"), format!("{line}\n")).unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/ledger.yaml"), "service: ledger\n").unwrap();
    let (code, _, err) = run_bin(
        &["suggest", "--usage", "d.log", "--out", "policies"],
        dir.path(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("exists and is not empty"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("policies/ledger.yaml")).unwrap(),
        "service: ledger\n"
    );
    // --service limits the draft; another service's requests are counted, not drafted.
    let (code, out, err) = run_bin(
        &[
            "suggest",
            "--usage",
            "d.log",
            "--service",
            "other",
            "--out",
            "o",
        ],
        dir.path(),
    );
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("to service \"other\""), "{err}");
    let out = run_ok(
        &[
            "suggest",
            "--usage",
            "d.log",
            "--service",
            "ledger",
            "--out",
            "o",
        ],
        dir.path(),
    );
    assert!(
        out.starts_with("ledger: 1 rule(s) covering 1 request(s)"),
        "{out}"
    );
    let text = std::fs::read_to_string(dir.path().join("o/ledger.yaml")).unwrap();
    assert!(text.contains("paths: [\"/x/{id}\"]"), "{text}");
}
