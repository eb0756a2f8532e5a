//! The mTLS peer over hopwarden's HTTP service, end to end: the repository's
//! envoy/*-sidecar-http.yaml (real Envoy, real mTLS between Envoys) in front of the
//! real hopwarden binary with the example hopwarden.yaml (`http_peer_header`).
//!
//! Envoy 1.40 replaces a client's copy of a `headers_to_add` header when the
//! connection has a peer URI SAN, and adds nothing when it has none; so the client's
//! copy must never be forwarded (`disallowed_headers`). These tests show that with
//! the committed configs a forged peer header never allows anything, and (as a
//! control) that a gateway which does forward it would let the forgery through.
//! They fail, never skip, when Envoy is missing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::stack::{
    demo_service_binary, envoy_binary, free_port, render, repo_with_rule, start_envoy_at, Proc,
    Stack, StackSpec, APPS,
};
use common::{repo, PAYMENTS, RECONCILER};
use serde_json::Value;

/// A test-only rule: payments, known by its certificate alone (no token), reads a
/// transaction's status, on any hop. A forged peer header naming payments that got
/// through anywhere would be allowed by it.
const PEER_STATUS_RULE: &str = r#"
  - id: payments-peer-reads-status
    description: Test only. payments, by its certificate alone, reads a status.
    from: { peers: ["spiffe://hopwarden.local/ns/payments/sa/payments"] }
    to: [{ methods: [GET], paths: ["/transactions/{id}/status"] }]
"#;

const PEER_HEADER: &str = "x-peer-uri-san";

/// The repository as the stack reads it, with PEER_STATUS_RULE in ledger's policy.
fn repo_with_peer_rule(dir: &Path) -> PathBuf {
    repo_with_rule(dir, "ledger.yaml", PEER_STATUS_RULE)
}

/// The three HTTP-service sidecars, on ports of their own, pointed at the stack's
/// hopwarden HTTP listener and at each other.
struct HttpSidecars {
    inbound: BTreeMap<&'static str, u16>,
    outbound: BTreeMap<&'static str, u16>,
    _procs: Vec<Proc>,
}

fn start_http_sidecars(stack: &Stack, envoy: &Path) -> HttpSidecars {
    let apps: Vec<&'static str> = APPS.iter().filter(|(_, s)| *s).map(|(a, _)| *a).collect();
    let inbound: BTreeMap<&str, u16> = apps.iter().map(|a| (*a, free_port())).collect();
    let outbound: BTreeMap<&str, u16> = apps.iter().map(|a| (*a, free_port())).collect();
    let mut procs = Vec::new();
    for app in &apps {
        let admin = free_port();
        let mut subs: Vec<((&str, u16), u16)> = vec![
            (("127.0.0.1", 15000), admin),
            (("0.0.0.0", 15443), inbound[app]),
            (("127.0.0.1", 15001), outbound[app]),
            (("hopwarden", 9193), stack.ports.hopwarden_http),
            (("127.0.0.1", 8080), stack.ports.app[*app]),
        ];
        for other in apps.iter().filter(|o| *o != app) {
            subs.push(((*other, 15443), inbound[other]));
        }
        let file = repo().join(format!("envoy/{app}-sidecar-http.yaml"));
        let config = render(&file, &subs).unwrap_or_else(|e| panic!("{e}"));
        let name = format!("{app}-sidecar-http");
        let proc = start_envoy_at(envoy, &name, &config, &stack.dir, &stack.dir, admin)
            .unwrap_or_else(|e| panic!("{e}"));
        procs.push(proc);
    }
    HttpSidecars {
        inbound,
        outbound,
        _procs: procs,
    }
}

fn mtls_client(stack: &Stack, identity: &str) -> reqwest::Client {
    let ca = std::fs::read(stack.certs.join("ca.pem")).unwrap();
    let mut pem = std::fs::read(stack.certs.join(format!("{identity}.pem"))).unwrap();
    pem.extend(std::fs::read(stack.certs.join(format!("{identity}-key.pem"))).unwrap());
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

async fn send(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = client.request(method.parse().unwrap(), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// hopwarden's decision lines so far (on its stdout with its other logs).
fn decisions(stack: &Stack) -> Vec<Value> {
    stack
        .log("hopwarden")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("decision").is_some())
        .collect()
}

/// The `n`th decision logged for `path` (from 1), waiting for the log's flush.
async fn decision_for(stack: &Stack, path: &str, n: usize) -> Value {
    for _ in 0..100 {
        let mut found: Vec<Value> = decisions(stack)
            .into_iter()
            .filter(|d| d["path"] == path)
            .collect();
        if found.len() >= n {
            return found.swap_remove(n - 1);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!(
        "no decision {n} logged for {path}:\n{}",
        stack.log("hopwarden")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_service_sidecars_match_peers_and_forged_peer_headers_never_allow() {
    let dir = tempfile::tempdir().unwrap();
    let envoy = envoy_binary(&repo()).unwrap_or_else(|e| panic!("{e}"));
    let spec = StackSpec {
        repo: repo_with_peer_rule(dir.path()),
        dir: dir.path().to_path_buf(),
        certs: dir.path().join("certs"),
        hopwarden: PathBuf::from(env!("CARGO_BIN_EXE_hopwarden")),
        demo: demo_service_binary(),
        envoy: envoy.clone(),
        fixed_ports: false,
    };
    let stack = Stack::start(&spec).unwrap_or_else(|e| panic!("stack did not start: {e}"));
    let sidecars = start_http_sidecars(&stack, &envoy);
    let ledger_in = format!("https://127.0.0.1:{}", sidecars.inbound["ledger"]);

    // The reconciler job, known by its certificate alone, reads through ledger's
    // HTTP-service sidecar: the example's `from.peers` rule matches over HTTP.
    let reconciler = mtls_client(&stack, "reconciler");
    let (status, body) = send(
        &reconciler,
        "GET",
        &format!("{ledger_in}/transactions/42"),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["principal"], RECONCILER);
    assert_eq!(body["rule"], "reconciler-read-transactions");
    let (status, _) = send(
        &reconciler,
        "POST",
        &format!("{ledger_in}/transactions/42"),
        &[],
    )
    .await;
    assert_eq!(status, 403);

    // payments' certificate with a forged header naming the reconciler, once or
    // twice: Envoy's value (payments) replaces it, so the reconciler's grant does
    // not apply, and hopwarden logs the real peer.
    let payments = mtls_client(&stack, "payments");
    for forged in [
        vec![(PEER_HEADER, RECONCILER)],
        vec![(PEER_HEADER, RECONCILER), (PEER_HEADER, RECONCILER)],
    ] {
        let (status, body) = send(
            &payments,
            "GET",
            &format!("{ledger_in}/transactions/42"),
            &forged,
        )
        .await;
        assert_eq!(status, 403, "{forged:?}: {body}");
    }
    // The reconciler's GET and POST, then payments' two forgeries.
    for n in [3, 4] {
        let logged = decision_for(&stack, "/transactions/42", n).await;
        assert_eq!(logged["peer"], PAYMENTS, "{logged}");
        assert_eq!(logged["reason"], "no_matching_rule", "{logged}");
    }

    // East-west, Envoy to Envoy over mTLS: the payments app calls ledger through its
    // HTTP-service sidecar, forging the header on the way out. ledger's sidecar sees
    // payments' certificate, and only payments' own grant applies.
    let plain = reqwest::Client::new();
    let out = format!("http://127.0.0.1:{}", sidecars.outbound["payments"]);
    let via = [("host", "ledger"), (PEER_HEADER, RECONCILER)];
    let (status, body) = send(
        &plain,
        "GET",
        &format!("{out}/transactions/42/status"),
        &via,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["principal"], PAYMENTS);
    assert_eq!(body["rule"], "payments-peer-reads-status");
    let (status, body) = send(&plain, "GET", &format!("{out}/transactions/7"), &via).await;
    assert_eq!(status, 403, "{body}");

    // The edge gateway on the HTTP service has no client certificates: Envoy sends no
    // peer, and the client's copy is never forwarded, so a forged payments peer is an
    // anonymous caller (401), not payments.
    let gw = format!("http://127.0.0.1:{}", stack.ports.gateway_http);
    let forged = [("host", "ledger.internal"), (PEER_HEADER, PAYMENTS)];
    let (status, body) = send(
        &plain,
        "GET",
        &format!("{gw}/transactions/9/status"),
        &forged,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let logged = decision_for(&stack, "/transactions/9/status", 1).await;
    assert_eq!(logged["peer"], Value::Null, "{logged}");

    // Control: the same gateway, misconfigured to forward the header (it is in
    // allowed_headers, not in disallowed_headers). With no peer certificate Envoy
    // adds nothing, the client's copy arrives, and the forgery is believed. This is
    // the Envoy behaviour the committed configs guard against.
    let text = std::fs::read_to_string(repo().join("envoy/gateway-http.yaml")).unwrap();
    let disallow = format!("disallowed_headers: {{ patterns: [{{ exact: {PEER_HEADER} }}] }}");
    assert!(
        text.contains(&disallow),
        "gateway-http.yaml no longer disallows {PEER_HEADER}"
    );
    let unsafe_text = text.replace(&disallow, "").replace(
        "{ exact: x-request-id },",
        &format!("{{ exact: x-request-id }}, {{ exact: {PEER_HEADER} }},"),
    );
    let unsafe_file = dir.path().join("gateway-http-unsafe-source.yaml");
    std::fs::write(&unsafe_file, unsafe_text).unwrap();
    let (admin, port) = (free_port(), free_port());
    let subs = [
        (("0.0.0.0", 9902), admin),
        (("0.0.0.0", 10001), port),
        (("hopwarden", 9193), stack.ports.hopwarden_http),
        (("ledger", 8080), stack.ports.app["ledger"]),
        (("email", 8080), stack.ports.app["email"]),
    ];
    let config = render(&unsafe_file, &subs).unwrap_or_else(|e| panic!("{e}"));
    let _unsafe = start_envoy_at(
        &envoy,
        "gateway-http-unsafe",
        &config,
        dir.path(),
        dir.path(),
        admin,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let bad = format!("http://127.0.0.1:{port}");
    let (status, body) = send(
        &plain,
        "GET",
        &format!("{bad}/transactions/9/status"),
        &forged,
    )
    .await;
    assert_eq!(
        status, 200,
        "the control did not reproduce the hazard: {body}"
    );
    assert_eq!(body["principal"], PAYMENTS);
}
