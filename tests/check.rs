//! The real server on 127.0.0.1:0, called with envoy-types' AuthorizationClient.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

async fn ledger_server() -> (Deployment, TestServer) {
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let s = TestServer::start(d.config("", "")).await;
    (d, s)
}

fn read_tx() -> Check {
    Check::new("ledger", "GET", "/transactions/42")
}

#[tokio::test]
async fn allowed_with_identity_headers_and_metadata() {
    let (_d, s) = ledger_server().await;
    let a = s
        .check(
            read_tx()
                .bearer(&token(PAYMENTS, "ledger", "ledger.read"))
                .header("x-hopwarden-principal", "forged")
                .header("x-hopwarden-extra", "forged"),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("x-hopwarden-principal"), Some(PAYMENTS));
    assert_eq!(a.header("x-hopwarden-principal-kind"), Some("service"));
    assert_eq!(
        a.header("x-hopwarden-rule"),
        Some("payments-read-transactions")
    );
    // Client-sent x-hopwarden-* headers we do not overwrite are removed, and the
    // actor header always is for a token that is not delegated.
    assert_eq!(
        a.headers_to_remove,
        [
            "x-hopwarden-extra",
            "x-hopwarden-actor",
            "x-hopwarden-api-key"
        ]
    );
    assert_eq!(
        a.metadata.get("decision").map(String::as_str),
        Some("allow")
    );
    assert_eq!(
        a.metadata.get("service").map(String::as_str),
        Some("ledger")
    );
}

/// Every answer is counted (by service, decision and reason) and, for a caller the
/// policies name, by caller.
#[tokio::test]
async fn checks_are_counted_by_service_decision_and_caller() {
    let (_d, s) = ledger_server().await;
    let allowed = s
        .check(read_tx().bearer(&token(PAYMENTS, "ledger", "ledger.read")))
        .await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    let denied = s.check(read_tx()).await;
    assert_eq!(denied.status, 401, "{denied:?}");
    let page = s.handle.engine.metrics().encode();
    let calls = format!(
        r#"hopwarden_calls_total{{principal="{PAYMENTS}",service="ledger",decision="allow"}} 1"#
    );
    for want in [
        r#"hopwarden_checks_total{service="ledger",decision="allow",reason="none"} 1"#,
        r#"hopwarden_checks_total{service="ledger",decision="deny",reason="missing_credential"} 1"#,
        &calls,
    ] {
        assert!(page.contains(want), "{want}\n{page}");
    }
}

#[tokio::test]
async fn dynamic_metadata_can_be_turned_off() {
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let s = TestServer::start(d.config("", "dynamic_metadata: false\n")).await;
    let allowed = s
        .check(read_tx().bearer(&token(PAYMENTS, "ledger", "ledger.read")))
        .await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(allowed.header("x-hopwarden-principal"), Some(PAYMENTS));
    assert!(allowed.metadata.is_empty(), "{allowed:?}");
    let denied = s.check(read_tx()).await;
    assert_eq!(denied.status, 401, "{denied:?}");
    assert!(denied.metadata.is_empty(), "{denied:?}");
}

/// Answers leave in batches (grpc/coalesce.rs): many checks in flight on one
/// connection must each get their own answer.
#[tokio::test]
async fn concurrent_checks_on_one_connection_get_their_own_answers() {
    let (_d, s) = ledger_server().await;
    let good = token(PAYMENTS, "ledger", "ledger.read");
    let mut tasks = Vec::new();
    for i in 0..300u32 {
        let s_client = s.client.clone();
        let check = match i % 3 {
            0 => Check::new("ledger", "GET", &format!("/transactions/{i}")).bearer(&good),
            1 => Check::new("ledger", "POST", &format!("/refunds/{i}")).bearer(&good),
            _ => Check::new("ledger", "GET", &format!("/transactions/{i}")),
        };
        tasks.push(tokio::spawn(async move {
            let mut client = s_client;
            let r = client.check(check.build()).await.expect("check RPC");
            (i, Answer::from(r.into_inner()))
        }));
    }
    for t in tasks {
        let (i, a) = t.await.unwrap();
        match i % 3 {
            0 => {
                assert_eq!(a.status, 200, "{i}: {a:?}");
                assert_eq!(
                    a.header("x-hopwarden-rule"),
                    Some("payments-read-transactions")
                );
            }
            1 => {
                assert_eq!(a.status, 403, "{i}: {a:?}");
                assert_eq!(a.rule(), Some("payments-never-refund"), "{i}: {a:?}");
            }
            _ => assert_eq!(a.status, 401, "{i}: {a:?}"),
        }
    }
}

#[tokio::test]
async fn missing_token_is_401_with_challenge() {
    let (_d, s) = ledger_server().await;
    let a = s.check(read_tx()).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.grpc_code, tonic::Code::Unauthenticated as i32);
    assert_eq!(
        a.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token""#)
    );
    assert_eq!(a.reason(), Some("missing_credential"));
    let body: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(body["error"], "unauthenticated");
}

#[tokio::test]
async fn bad_tokens_are_401() {
    let (_d, s) = ledger_server().await;
    let good = token(PAYMENTS, "ledger", "ledger.read");
    let now = now();

    // Signed by a key that is not in the JWKS, but claiming the trusted kid.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key().kid.clone());
    let forged = jsonwebtoken::encode(
        &header,
        &claims(PAYMENTS, "ledger", "ledger.read"),
        &other_key().encoding,
    )
    .unwrap();

    // alg: none, no signature.
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims(PAYMENTS, "ledger", "ledger.read").to_string());
    let alg_none = format!("{none_header}.{payload}.");

    // HS256 with the RSA public key as the HMAC secret (key confusion, RFC 8725 2.1).
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(key().kid.clone());
    let confused = jsonwebtoken::encode(
        &hs,
        &claims(PAYMENTS, "ledger", "ledger.read"),
        &EncodingKey::from_secret(key().public_pem.as_bytes()),
    )
    .unwrap();

    // Tampered payload with the original signature.
    let parts: Vec<&str> = good.split('.').collect();
    let tampered_payload =
        URL_SAFE_NO_PAD.encode(claims(PAYMENTS, "ledger", "ledger.read ledger.admin").to_string());
    let tampered = format!("{}.{}.{}", parts[0], tampered_payload, parts[2]);

    let mut c = claims(PAYMENTS, "ledger", "ledger.read");
    c["exp"] = json!(now - 5);
    c["iat"] = json!(now - 60);
    let expired = key().sign(&c);
    let mut c = claims(PAYMENTS, "ledger", "ledger.read");
    c["nbf"] = json!(now + 120);
    let not_yet = key().sign(&c);
    let mut c = claims(PAYMENTS, "ledger", "ledger.read");
    c.as_object_mut().unwrap().remove("exp");
    let no_exp = key().sign(&c);
    let mut c = claims(PAYMENTS, "ledger", "ledger.read");
    c["iss"] = json!("https://evil.example");
    let wrong_issuer = key().sign(&c);
    let wrong_audience = token(PAYMENTS, "email", "ledger.read");
    let mut unknown_kid_header = Header::new(Algorithm::RS256);
    unknown_kid_header.kid = Some("nope".into());
    let unknown_kid = jsonwebtoken::encode(
        &unknown_kid_header,
        &claims(PAYMENTS, "ledger", "ledger.read"),
        &key().encoding,
    )
    .unwrap();
    let oversized = format!("{}.{}.{}", parts[0], "A".repeat(20_000), parts[2]);
    let mut typed = Header::new(Algorithm::RS256);
    typed.kid = Some(key().kid.clone());
    typed.typ = Some("dpop+jwt".into());
    let wrong_typ = jsonwebtoken::encode(
        &typed,
        &claims(PAYMENTS, "ledger", "ledger.read"),
        &key().encoding,
    )
    .unwrap();
    // A `crit` header (even null) names extensions we do not implement.
    let crit_header = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"alg":"RS256","kid":"{}","crit":null}}"#,
        key().kid
    ));
    let crit_message = format!("{crit_header}.{payload}");
    let crit_sig =
        jsonwebtoken::crypto::sign(crit_message.as_bytes(), &key().encoding, Algorithm::RS256)
            .unwrap();
    let crit = format!("{crit_message}.{crit_sig}");

    let cases: &[(&str, String, &str)] = &[
        ("bad signature", forged, "invalid_token"),
        ("alg none", alg_none, "invalid_token"),
        ("hs256 with rsa public key", confused, "invalid_token"),
        ("tampered payload", tampered, "invalid_token"),
        ("expired beyond leeway", expired, "invalid_token"),
        ("nbf in the future", not_yet, "invalid_token"),
        ("no exp", no_exp, "invalid_token"),
        ("unknown issuer", wrong_issuer, "invalid_token"),
        ("another audience", wrong_audience, "wrong_audience"),
        ("unknown kid", unknown_kid, "invalid_token"),
        ("garbage", "not-a-jwt".into(), "invalid_token"),
        ("two parts", "a.b".into(), "invalid_token"),
        ("oversized", oversized, "invalid_token"),
        ("typ dpop+jwt", wrong_typ, "invalid_token"),
        ("crit header", crit, "invalid_token"),
    ];
    for (name, token, reason) in cases {
        let a = s.check(read_tx().bearer(token)).await;
        assert_eq!(a.status, 401, "{name}: {a:?}");
        assert_eq!(a.reason(), Some(*reason), "{name}");
        assert_eq!(
            a.header("www-authenticate"),
            Some(r#"Bearer error="invalid_token""#),
            "{name}"
        );
    }
    // Non-bearer schemes are refused, never ignored.
    let a = s
        .check(read_tx().header("authorization", "Basic dXNlcjpwYXNz"))
        .await;
    assert_eq!(a.status, 401);
    // A broken token is 401 even when the mTLS peer alone would be allowed.
    let a = s
        .check(read_tx().peer(RECONCILER).bearer("not.a.jwt"))
        .await;
    assert_eq!(a.status, 401);
    // The good token still works: none of the above poisoned a cache.
    assert_eq!(s.check(read_tx().bearer(&good)).await.status, 200);
}

#[tokio::test]
async fn missing_scope_is_403_insufficient_scope() {
    let (_d, s) = ledger_server().await;
    let a = s
        .check(read_tx().bearer(&token(PAYMENTS, "ledger", "ledger.write")))
        .await;
    assert_eq!(a.status, 403, "{a:?}");
    assert_eq!(a.grpc_code, tonic::Code::PermissionDenied as i32);
    assert_eq!(
        a.header("www-authenticate"),
        Some(r#"Bearer error="insufficient_scope", scope="ledger.read""#)
    );
    assert_eq!(a.reason(), Some("insufficient_scope"));
    assert!(
        !a.body.contains("ledger.read"),
        "the body must not reveal policy: {}",
        a.body
    );
}

#[tokio::test]
async fn deny_rule_beats_allow() {
    let (_d, s) = ledger_server().await;
    // ledger.admin matches the broad allow on /**, but the deny rule wins.
    let t = token(PAYMENTS, "ledger", "ledger.read ledger.admin");
    let a = s
        .check(Check::new("ledger", "POST", "/refunds/7").bearer(&t))
        .await;
    assert_eq!(a.status, 403);
    assert_eq!(a.rule(), Some("payments-never-refund"));
    assert_eq!(a.reason(), Some("deny_rule"));
    assert_eq!(a.header("www-authenticate"), None);
    // The same token elsewhere is allowed by the broad rule.
    let a = s
        .check(Check::new("ledger", "POST", "/accounts/7").bearer(&t))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.rule(), Some("payments-any-ledger-path"));
}

#[tokio::test]
async fn deny_rules_cover_other_spellings_and_head() {
    let policy = r#"
service: ledger
rules:
  - id: anyone-anything
    from: { principals: ["**"] }
  - id: no-admin-reads
    effect: deny
    to: [{ methods: [GET], paths: ["/admin/**"] }]
"#;
    let d = Deployment::new(&[("ledger.yaml", policy)]);
    let s = TestServer::start(d.config("", "")).await;
    let t = token(PAYMENTS, "ledger", "");
    for (method, path) in [
        ("GET", "/admin/users"),
        ("GET", "/ADMIN/users"),
        ("HEAD", "/Admin"),
        ("GET", "/admin/"),
    ] {
        let a = s.check(Check::new("ledger", method, path).bearer(&t)).await;
        assert_eq!(
            (a.status, a.rule()),
            (403, Some("no-admin-reads")),
            "{method} {path}"
        );
    }
    // Matrix parameters are refused outright (`/admin;x` is `/admin` to servlet routers).
    let a = s
        .check(Check::new("ledger", "GET", "/admin;x/users").bearer(&t))
        .await;
    assert_eq!((a.status, a.reason()), (400, Some("bad_request")));
    // The deny is about reads; other methods and paths fall through to the allow.
    assert_eq!(
        s.check(Check::new("ledger", "POST", "/admin/users").bearer(&t))
            .await
            .status,
        200
    );
    assert_eq!(
        s.check(Check::new("ledger", "GET", "/administrator").bearer(&t))
            .await
            .status,
        200
    );
    // An anonymous caller hitting the deny rule is told to authenticate: 401.
    let a = s.check(Check::new("ledger", "GET", "/admin/users")).await;
    assert_eq!((a.status, a.reason()), (401, Some("missing_credential")));
}

#[tokio::test]
async fn anonymous_allow_removes_a_forged_principal_header() {
    let policy = r#"
service: ledger
rules:
  - id: public-health
    from: { anonymous: true }
    to: [{ methods: [GET], paths: ["/healthz"] }]
"#;
    let d = Deployment::new(&[("ledger.yaml", policy)]);
    let s = TestServer::start(d.config("", "")).await;
    let a = s
        .check(Check::new("ledger", "GET", "/healthz").header("x-hopwarden-principal", "admin"))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    // No principal: the client's copy is removed, not set to an empty value.
    assert_eq!(a.header("x-hopwarden-principal"), None, "{a:?}");
    assert_eq!(
        a.headers_to_remove,
        [
            "x-hopwarden-principal",
            "x-hopwarden-actor",
            "x-hopwarden-api-key"
        ],
        "{a:?}"
    );
    assert_eq!(a.header("x-hopwarden-principal-kind"), Some("anonymous"));
    assert_eq!(a.header("x-hopwarden-rule"), Some("public-health"));
    // The rule is for anonymous callers only; a token does not make it match.
    let a = s
        .check(Check::new("ledger", "GET", "/healthz").bearer(&token(PAYMENTS, "ledger", "")))
        .await;
    assert_eq!(a.status, 403);
}

#[tokio::test]
async fn unknown_service_and_no_service_are_denied() {
    let (_d, s) = ledger_server().await;
    let t = token(PAYMENTS, "ledger", "ledger.read");
    let a = s
        .check(Check::new("payroll", "GET", "/transactions/42").bearer(&t))
        .await;
    assert_eq!((a.status, a.reason()), (403, Some("no_policy")));
    let mut c = read_tx().bearer(&t);
    c.service = None;
    c.host = "unmapped.internal".into();
    let a = s.check(c).await;
    assert_eq!((a.status, a.reason()), (403, Some("unknown_service")));
}

#[tokio::test]
async fn service_from_spiffe_or_host_mapping() {
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let extra = "services:\n  by_spiffe: {\"spiffe://hopwarden.local/ns/ledger/sa/ledger\": ledger}\n  by_host: {\"ledger.svc\": ledger}\n";
    let s = TestServer::start(d.config("", extra)).await;
    let t = token(PAYMENTS, "ledger", "ledger.read");
    let mut c = read_tx().bearer(&t);
    c.service = None;
    c.destination = Some("spiffe://hopwarden.local/ns/ledger/sa/ledger".into());
    assert_eq!(s.check(c.clone()).await.status, 200);
    c.destination = None;
    c.host = "ledger.svc:8443".into();
    assert_eq!(s.check(c).await.status, 200);
}

/// Istio sends no context_extensions: the destination workload's identity and the
/// host are all there is.
const ISTIO_SERVICES: &str = "services:\n  by_spiffe_pattern: \"spiffe://cluster.local/ns/{namespace}/sa/{service}\"\n  gateways: [\"spiffe://cluster.local/ns/istio-system/sa/ingress\"]\n  by_host: {\"ledger.ledger.svc.cluster.local\": ledger}\n";

fn istio_check(destination: &str, host: &str) -> Check {
    let mut c = read_tx().bearer(&token(PAYMENTS, "ledger", "ledger.read"));
    c.service = None;
    c.destination = Some(destination.into());
    c.host = host.into();
    c
}

/// The host is the caller's to write; a sidecar delivers to its own workload whatever
/// it says. A workload that no mapping names is denied, never judged by the policy of
/// the service the host names.
#[tokio::test]
async fn an_unmapped_destination_is_denied_whatever_the_host() {
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    // The pattern needs namespace `ns` segments: `other.td` and `/x/nopolicy` match none.
    let s = TestServer::start(d.config("", ISTIO_SERVICES)).await;
    let host = "ledger.ledger.svc.cluster.local";
    for dest in [
        "spiffe://other.td/ns/other/sa/nopolicy",
        "spiffe://cluster.local/x/nopolicy",
    ] {
        let a = s.check(istio_check(dest, host)).await;
        assert_eq!(
            (a.status, a.reason()),
            (403, Some("unknown_service")),
            "{dest}: {a:?}"
        );
        assert_eq!(a.metadata.get("service"), None, "{a:?}");
    }
    // A workload the pattern maps is judged by its own service's policy: here one
    // with no policy file, so denied too, and not by ledger's rules.
    let a = s
        .check(istio_check(
            "spiffe://cluster.local/ns/other/sa/nopolicy",
            host,
        ))
        .await;
    assert_eq!((a.status, a.reason()), (403, Some("no_policy")), "{a:?}");
    assert_eq!(
        a.metadata.get("service").map(String::as_str),
        Some("nopolicy")
    );
    // The mapped ledger workload is allowed by ledger's rule, whatever the host.
    let a = s
        .check(istio_check(
            "spiffe://cluster.local/ns/ledger/sa/ledger",
            "evil.example",
        ))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.rule(), Some("payments-read-transactions"));
    let log = d.decisions_when(4).await;
    let unmapped = &log[0];
    assert_eq!(unmapped["reason"], "unknown_service", "{unmapped}");
    assert!(
        unmapped["detail"]
            .as_str()
            .is_some_and(|d| d.contains("destination workload not in services.by_spiffe")),
        "{unmapped}"
    );
}

/// At a gateway identity the host chooses the service, in any Kubernetes form, and
/// the hop is `gateway`.
#[tokio::test]
async fn a_gateway_identity_resolves_by_host_at_hop_gateway() {
    let policy = r#"
service: ledger
rules:
  - id: edge-reads
    from: { principals: ["spiffe://hopwarden.local/ns/payments/sa/payments"] }
    to: [{ methods: [GET], paths: ["/transactions/{id}"] }]
    when: { hop: gateway }
"#;
    let d = Deployment::new(&[("ledger.yaml", policy)]);
    let s = TestServer::start(d.config("", ISTIO_SERVICES)).await;
    let gateway = "spiffe://cluster.local/ns/istio-system/sa/ingress";
    for host in [
        "ledger.ledger.svc.cluster.local:80",
        "ledger.ledger",
        "ledger",
    ] {
        let a = s.check(istio_check(gateway, host)).await;
        assert_eq!(a.status, 200, "{host}: {a:?}");
        assert_eq!(a.rule(), Some("edge-reads"));
    }
    let a = s.check(istio_check(gateway, "unknown.example")).await;
    assert_eq!(
        (a.status, a.reason()),
        (403, Some("unknown_service")),
        "{a:?}"
    );
    // The ledger workload itself is hop mesh: the gateway-only rule does not match.
    let a = s
        .check(istio_check(
            "spiffe://cluster.local/ns/ledger/sa/ledger",
            "ledger",
        ))
        .await;
    assert_eq!(
        (a.status, a.reason()),
        (403, Some("no_matching_rule")),
        "{a:?}"
    );
    let hops: Vec<_> = d
        .decisions_when(5)
        .await
        .iter()
        .map(|l| l["hop"].clone())
        .collect();
    assert_eq!(hops, ["gateway", "gateway", "gateway", "gateway", "mesh"]);
}

#[tokio::test]
async fn mtls_peer_allowed_by_peers() {
    let (_d, s) = ledger_server().await;
    let a = s.check(read_tx().peer(RECONCILER)).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("x-hopwarden-principal"), Some(RECONCILER));
    assert_eq!(a.rule(), Some("reconciler-reads"));
    // The same peer may not write, and a peer-only caller is 403 (known, not permitted).
    let a = s
        .check(Check::new("ledger", "POST", "/transactions/42").peer(RECONCILER))
        .await;
    assert_eq!((a.status, a.reason()), (403, Some("no_matching_rule")));
    // Another workload's certificate gets nothing.
    let a = s
        .check(read_tx().peer("spiffe://hopwarden.local/ns/x/sa/intruder"))
        .await;
    assert_eq!(a.status, 403);
    // A token for payments presented from the reconciler's connection: the token is
    // the caller, the peer rides along.
    let a = s
        .check(
            read_tx()
                .peer(RECONCILER)
                .bearer(&token(PAYMENTS, "ledger", "ledger.read")),
        )
        .await;
    assert_eq!(a.header("x-hopwarden-principal"), Some(PAYMENTS));
}

#[tokio::test]
async fn non_canonical_paths_and_bad_hops_are_denied() {
    let (_d, s) = ledger_server().await;
    let t = token(PAYMENTS, "ledger", "ledger.read");
    for path in [
        "/transactions/../refunds",
        "/transactions//42",
        "/transactions%2F42",
        "/transactions/42%5c",
        "/%2e%2e/refunds",
    ] {
        let a = s.check(Check::new("ledger", "GET", path).bearer(&t)).await;
        assert_eq!((a.status, a.reason()), (400, Some("bad_request")), "{path}");
    }
    // The query is not part of the matched path.
    let a = s
        .check(Check::new("ledger", "GET", "/transactions/42?next=/refunds").bearer(&t))
        .await;
    assert_eq!(a.status, 200);
    let a = s.check(read_tx().bearer(&t).hop("edge")).await;
    assert_eq!((a.status, a.reason()), (400, Some("bad_request")));
}

#[tokio::test]
async fn cache_hit_same_answer_and_expired_token_not_served_from_cache() {
    let (_d, s) = ledger_server().await;
    let now = now();
    let mut c = claims(PAYMENTS, "ledger", "ledger.read");
    c["exp"] = json!(now + 2);
    let short = key().sign(&c);
    let first = s.check(read_tx().bearer(&short)).await;
    assert_eq!(decision_cache_hits(&s), 0);
    let second = s.check(read_tx().bearer(&short)).await;
    assert_eq!(first.status, 200);
    assert_eq!(second.status, 200);
    // The second answer came from the cache, and is the same answer.
    assert_eq!(decision_cache_hits(&s), 1);
    assert_eq!(first.headers, second.headers);
    assert_eq!(first.headers_to_remove, second.headers_to_remove);
    // Wait past exp (leeway 0): the cached allow must not be served.
    tokio::time::sleep(Duration::from_millis(
        (now + 3).saturating_sub(common::now()) * 1000 + 200,
    ))
    .await;
    let third = s.check(read_tx().bearer(&short)).await;
    assert_eq!(third.status, 401, "{third:?}");
    assert_eq!(decision_cache_hits(&s), 1);
    // Denies are cached too and give the same answer.
    let bad = s.check(read_tx()).await;
    let bad2 = s.check(read_tx()).await;
    assert_eq!((bad.status, bad2.status), (401, 401));
    assert_eq!(bad.body, bad2.body);
    assert_eq!(decision_cache_hits(&s), 2);
}

/// The decision cache's hits so far, from the server's metrics.
fn decision_cache_hits(s: &TestServer) -> u64 {
    let page = s.handle.engine.metrics().encode();
    page.lines()
        .find_map(|l| {
            l.strip_prefix(r#"hopwarden_cache_requests_total{cache="decision",result="hit"} "#)
        })
        .map_or(0, |v| v.parse().unwrap_or_else(|e| panic!("{v}: {e}")))
}

/// RFC 7519 NumericDate may have a fraction: the caches must still stop at `exp`.
#[tokio::test]
async fn fractional_exp_is_not_served_from_cache_after_expiry() {
    let (_d, s) = ledger_server().await;
    let now = now();
    let mut c = claims(PAYMENTS, "ledger", "ledger.read");
    c["exp"] = json!(now as f64 + 2.5);
    let short = key().sign(&c);
    assert_eq!(s.check(read_tx().bearer(&short)).await.status, 200);
    assert_eq!(s.check(read_tx().bearer(&short)).await.status, 200);
    tokio::time::sleep(Duration::from_millis(
        (now + 4).saturating_sub(common::now()) * 1000 + 200,
    ))
    .await;
    let late = s.check(read_tx().bearer(&short)).await;
    assert_eq!(late.status, 401, "{late:?}");
}

#[tokio::test]
async fn cache_key_covers_inputs() {
    let (_d, s) = ledger_server().await;
    let t = token(PAYMENTS, "ledger", "ledger.read");
    assert_eq!(s.check(read_tx().bearer(&t)).await.status, 200);
    // Same token, different method / path / service / hop: each evaluated on its own.
    assert_eq!(
        s.check(Check::new("ledger", "DELETE", "/transactions/42").bearer(&t))
            .await
            .status,
        403
    );
    assert_eq!(
        s.check(Check::new("ledger", "GET", "/transactions/42/status").bearer(&t))
            .await
            .status,
        200
    );
    assert_eq!(
        s.check(Check::new("ledger", "GET", "/accounts/1").bearer(&t))
            .await
            .status,
        403
    );
    assert_eq!(
        s.check(Check::new("email", "GET", "/transactions/42").bearer(&t))
            .await
            .status,
        403
    );
    // A different token for the same request.
    assert_eq!(
        s.check(read_tx().bearer(&token(PAYMENTS, "ledger", "x")))
            .await
            .status,
        403
    );
}

#[tokio::test]
async fn the_hop_is_part_of_the_cache_key() {
    let policy = r#"
service: ledger
rules:
  - id: payments-reads-in-the-mesh
    from: { principals: ["spiffe://hopwarden.local/ns/payments/sa/payments"] }
    to: [{ methods: [GET], paths: ["/transactions/{id}"] }]
    when: { hop: mesh }
"#;
    let d = Deployment::new(&[("ledger.yaml", policy)]);
    let s = TestServer::start(d.config("", "")).await;
    let t = token(PAYMENTS, "ledger", "");
    let a = s.check(read_tx().bearer(&t).hop("mesh")).await;
    assert_eq!(
        (a.status, a.rule()),
        (200, Some("payments-reads-in-the-mesh"))
    );
    // The same token and path at the gateway: the mesh allow must not answer it.
    let a = s.check(read_tx().bearer(&t).hop("gateway")).await;
    assert_eq!((a.status, a.reason()), (403, Some("no_matching_rule")));
}

/// A signed `sub` that looks like a SPIFFE ID must be one: `payments/../ledger` would
/// match `payments/**` segment by segment, so the token is refused as invalid (401).
#[tokio::test]
async fn a_token_subject_that_is_not_a_valid_spiffe_id_is_401() {
    let policy = r#"
service: ledger
rules:
  - id: payments-namespace-reads
    from: { principals: ["spiffe://hopwarden.local/ns/payments/**"] }
    to: [{ methods: [GET], paths: ["/transactions/{id}"] }]
"#;
    let d = Deployment::new(&[("ledger.yaml", policy)]);
    let s = TestServer::start(d.config("", "")).await;
    let a = s
        .check(read_tx().bearer(&token(PAYMENTS, "ledger", "")))
        .await;
    assert_eq!(
        (a.status, a.rule()),
        (200, Some("payments-namespace-reads"))
    );
    let dotted = "spiffe://hopwarden.local/ns/payments/../ledger/sa/ledger";
    let a = s
        .check(read_tx().bearer(&token(dotted, "ledger", "")))
        .await;
    assert_eq!(
        (a.status, a.reason()),
        (401, Some("invalid_token")),
        "{a:?}"
    );
    assert_eq!(
        a.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token""#)
    );
    assert!(a.header("x-hopwarden-principal").is_none(), "{a:?}");
    let refused = &d.decisions_when(2).await[1];
    assert_eq!(refused["decision"], "deny", "{refused}");
    assert_eq!(refused["detail"], "principal_not_spiffe_id", "{refused}");
}

#[tokio::test]
async fn header_conditions_are_part_of_the_cache_key() {
    let policy = r#"
service: ledger
rules:
  - id: tenant-acme-only
    from: { principals: ["spiffe://hopwarden.local/ns/payments/sa/payments"] }
    to: [{ methods: [GET], paths: ["/transactions/{id}"] }]
    when: { headers: { x-tenant: [acme] } }
"#;
    let d = Deployment::new(&[("ledger.yaml", policy)]);
    let s = TestServer::start(d.config("", "")).await;
    let t = token(PAYMENTS, "ledger", "");
    assert_eq!(
        s.check(read_tx().bearer(&t).header("x-tenant", "acme"))
            .await
            .status,
        200
    );
    assert_eq!(
        s.check(read_tx().bearer(&t).header("x-tenant", "globex"))
            .await
            .status,
        403
    );
    assert_eq!(s.check(read_tx().bearer(&t)).await.status, 403);
}

/// Makes `edit`, then waits until a policy reload has failed (the server's failed-reload
/// counter goes up): unlike a fixed sleep, this proves the reload was tried before the
/// test asserts it changed nothing. False if none failed within 10 s.
async fn reload_fails_after(s: &TestServer, edit: impl FnOnce()) -> bool {
    let failed = || {
        s.handle
            .engine
            .metrics()
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(r#"hopwarden_policy_reloads_total{result="error"} "#))
            .map_or(0, |n| n.trim().parse::<u64>().expect("a counter"))
    };
    let before = failed();
    edit();
    eventually(Duration::from_secs(10), || async { failed() > before }).await
}

const FLIPPED: &str = r#"
service: ledger
rules:
  - id: payments-read-status-only
    from: { principals: ["spiffe://hopwarden.local/ns/payments/sa/payments"] }
    to: [{ methods: [GET], paths: ["/transactions/{id}/status"] }]
    scopes: [ledger.read]
"#;

#[tokio::test]
async fn reload_flips_a_decision_and_invalid_reload_keeps_the_old_one() {
    let (d, s) = ledger_server().await;
    let t = token(PAYMENTS, "ledger", "ledger.read");
    assert_eq!(s.check(read_tx().bearer(&t)).await.status, 200);
    let gen = s.handle.engine.policies().generation;

    d.write_policy("ledger.yaml", FLIPPED);
    let flipped = eventually(Duration::from_secs(10), || async {
        s.check(read_tx().bearer(&t)).await.status == 403
    })
    .await;
    assert!(flipped, "the edit was never picked up");
    assert!(s.handle.engine.policies().generation > gen);
    assert_eq!(
        s.check(Check::new("ledger", "GET", "/transactions/42/status").bearer(&t))
            .await
            .status,
        200
    );

    // An invalid set (unknown key) is rejected; the last good set keeps serving.
    let gen = s.handle.engine.policies().generation;
    assert!(
        reload_fails_after(&s, || d.write_policy(
            "ledger.yaml",
            "service: ledger\nrules:\n  - id: x\n    frm: {}\n",
        ))
        .await,
        "the invalid edit was never tried"
    );
    assert_eq!(s.handle.engine.policies().generation, gen);
    assert_eq!(s.check(read_tx().bearer(&t)).await.status, 403);
    assert_eq!(
        s.check(Check::new("ledger", "GET", "/transactions/42/status").bearer(&t))
            .await
            .status,
        200
    );

    // While any file is invalid, nothing else is published either: the set is all or nothing.
    assert!(
        reload_fails_after(&s, || d
            .write_policy("email.yaml", "service: email\nrules: []\n"))
        .await,
        "the reload with an invalid file beside it was never tried"
    );
    assert_eq!(s.handle.engine.policies().generation, gen);

    // Adding a file adds a service; deleting it removes it.
    d.write_policy("ledger.yaml", FLIPPED);
    d.write_policy("email.yaml", "service: email\nrules:\n  - id: e1\n    from: {principals: [\"**\"]}\n    to: [{paths: [\"/send\"]}]\n");
    let t_email = token(PAYMENTS, "email", "");
    assert!(
        eventually(Duration::from_secs(10), || async {
            s.check(Check::new("email", "POST", "/send").bearer(&t_email))
                .await
                .status
                == 200
        })
        .await
    );
    std::fs::remove_file(d.policy_dir().join("email.yaml")).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            s.check(Check::new("email", "POST", "/send").bearer(&t_email))
                .await
                .reason()
                == Some("no_policy")
        })
        .await
    );
}

#[tokio::test]
async fn explicit_reload_trigger_reloads() {
    let (d, s) = ledger_server().await;
    let gen = s.handle.engine.policies().generation;
    // Write without the watcher noticing is impossible to arrange portably, so check
    // that a trigger alone also publishes a new generation.
    s.handle.reload();
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.handle.engine.policies().generation > gen
        })
        .await
    );
    drop(d);
}

#[tokio::test]
async fn jwks_url_is_fetched_and_rotation_is_picked_up() {
    let jwks_server = JwksServer::start(jwks(&[key()])).await;
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let path = d.path().join("hopwarden.yaml");
    let text = format!(
        "listen: 127.0.0.1:0\npolicies: policies\nlog: {{format: text, level: warn}}\nissuers:\n  - issuer: {ISSUER}\n    jwks_uri: \"{}\"\n    refetch_min_interval: 1s\n    unknown_kid_wait: 10s\n    leeway: 0s\n",
        jwks_server.url()
    );
    // unknown_kid_wait: the default 100 ms is shorter than a fetch can take on a
    // loaded CI machine, and this test is about whether the refetch happens.
    std::fs::write(&path, text).unwrap();
    let s = TestServer::start(hopwarden::config::Config::load(&path).unwrap()).await;
    assert!(jwks_server.hits() >= 1);
    let t1 = token(PAYMENTS, "ledger", "ledger.read");
    assert_eq!(s.check(read_tx().bearer(&t1)).await.status, 200);

    // Rotate: the issuer now signs with k2 and publishes both keys.
    *jwks_server.body.lock().unwrap() = jwks(&[key(), other_key()]);
    let t2 = other_key().sign(&claims(PAYMENTS, "ledger", "ledger.read"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = s.check(read_tx().bearer(&t2)).await;
    assert_eq!(a.status, 200, "new kid must trigger a refetch: {a:?}");

    // Unknown kids do not cause a fetch per request (rate limit per interval).
    let hits = jwks_server.hits();
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("made-up".into());
    for _ in 0..20 {
        let t = jsonwebtoken::encode(
            &h,
            &claims(PAYMENTS, "ledger", "ledger.read"),
            &key().encoding,
        )
        .unwrap();
        assert_eq!(s.check(read_tx().bearer(&t)).await.status, 401);
    }
    assert!(
        jwks_server.hits() <= hits + 1,
        "refetches: {}",
        jwks_server.hits() - hits
    );

    // The endpoint fails: the last good keys keep working.
    *jwks_server.status.lock().unwrap() = 500;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("another-made-up".into());
    let t = jsonwebtoken::encode(
        &h,
        &claims(PAYMENTS, "ledger", "ledger.read"),
        &key().encoding,
    )
    .unwrap();
    assert_eq!(s.check(read_tx().bearer(&t)).await.status, 401);
    let fresh = other_key().sign(&claims(PAYMENTS, "ledger", "ledger.read ledger.x"));
    assert_eq!(s.check(read_tx().bearer(&fresh)).await.status, 200);
}

#[tokio::test]
async fn keys_never_loaded_is_unavailable_not_a_deny() {
    // A JWKS URL nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = listener.local_addr().unwrap();
    drop(listener);
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let path = d.path().join("hopwarden.yaml");
    std::fs::write(
        &path,
        format!("listen: 127.0.0.1:0\npolicies: policies\nissuers:\n  - issuer: {ISSUER}\n    jwks_uri: \"http://{dead}/jwks\"\n"),
    )
    .unwrap();
    let handle = hopwarden::server::start(hopwarden::config::Config::load(&path).unwrap())
        .await
        .unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", handle.local_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    let mut client =
        envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(
            channel,
        );
    let err = client
        .check(
            read_tx()
                .bearer(&token(PAYMENTS, "ledger", "ledger.read"))
                .build(),
        )
        .await
        .expect_err("no keys: RPC error");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    // Requests without a token do not need keys and are answered normally.
    let ok = client.check(read_tx().build()).await.unwrap().into_inner();
    assert_eq!(ok.status.unwrap().code, tonic::Code::Unauthenticated as i32);
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_check_requests_are_clean_denies() {
    let (_d, s) = ledger_server().await;
    let empty = envoy_types::pb::envoy::service::auth::v3::CheckRequest::default();
    let resp = s.client.clone().check(empty).await.unwrap().into_inner();
    // A deny (400 bad_request), not an RPC error.
    assert_eq!(
        resp.status.unwrap().code,
        tonic::Code::InvalidArgument as i32
    );
    // A large header value is a clean deny, not a panic.
    let a = s
        .check(read_tx().header("authorization", &format!("Bearer {}", "a".repeat(50_000))))
        .await;
    assert_eq!(a.status, 401);
    // One past the message limit (listeners.max_request_bytes, 64 KiB) is refused
    // unread: Envoy fails closed on the error.
    let huge = read_tx().header("authorization", &format!("Bearer {}", "a".repeat(100_000)));
    let refused = s.check_rpc(huge).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_an_in_flight_check() {
    let jwks_server = JwksServer::start(jwks(&[key()])).await;
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let path = d.path().join("hopwarden.yaml");
    let text = format!(
        "listen: 127.0.0.1:0\npolicies: policies\nlog: {{format: text, level: warn}}\nissuers:\n  - issuer: {ISSUER}\n    jwks_uri: \"{}\"\n    refetch_min_interval: 1s\n    unknown_kid_wait: 3s\n",
        jwks_server.url()
    );
    std::fs::write(&path, text).unwrap();
    let s = TestServer::start(hopwarden::config::Config::load(&path).unwrap()).await;
    // A token with a new kid makes the check wait on a slow JWKS refetch (up to
    // unknown_kid_wait, longer than the fetch takes here).
    *jwks_server.body.lock().unwrap() = jwks(&[key(), other_key()]);
    *jwks_server.delay.lock().unwrap() = Duration::from_millis(1500);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t2 = other_key().sign(&claims(PAYMENTS, "ledger", "ledger.read"));
    let mut client = s.client.clone();
    let fetches = jwks_server.hits();
    let in_flight = tokio::spawn(async move { client.check(read_tx().bearer(&t2).build()).await });
    // In flight: the check's refetch has reached the (slow) JWKS server.
    assert!(
        eventually(Duration::from_secs(5), || async {
            jwks_server.hits() > fetches
        })
        .await
    );
    let started = std::time::Instant::now();
    s.handle.shutdown().await.expect("clean shutdown");
    let answer = in_flight
        .await
        .unwrap()
        .expect("the in-flight check is answered, not cut off");
    assert_eq!(Answer::from(answer.into_inner()).status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "shutdown waited for the check"
    );
}

#[tokio::test]
async fn graceful_shutdown_stops_serving() {
    let (_d, s) = ledger_server().await;
    let addr = s.handle.local_addr;
    s.handle.shutdown().await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn other_grpc_methods_are_unimplemented_on_the_same_port() {
    use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
    let (_d, s) = ledger_server().await;
    let mut grpc = tonic::client::Grpc::new(s.channel.clone());
    for path in [
        "/envoy.service.auth.v2.Authorization/Check",
        "/envoy.service.auth.v3.Authorization/Other",
        "/grpc.health.v1.Health/Other",
        "/",
    ] {
        grpc.ready().await.unwrap();
        let err = grpc
            .unary(
                tonic::Request::new(CheckRequest::default()),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::<CheckRequest, CheckResponse>::default(),
            )
            .await
            .expect_err(path);
        assert_eq!(err.code(), tonic::Code::Unimplemented, "{path}");
    }
    // The connection still serves checks and health checks afterwards.
    assert_eq!(s.check(read_tx()).await.status, 401);
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_withdrawn_key_stops_allowing_at_the_next_refresh_not_after_the_cache_ttl() {
    let jwks_server = JwksServer::start(jwks(&[key(), other_key()])).await;
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let path = d.path().join("hopwarden.yaml");
    // Caches hold answers for up to an hour; keys are re-read every second.
    let text = format!(
        "listen: 127.0.0.1:0\npolicies: policies\nlog: {{format: text, level: warn}}\n\
         cache: {{ttl: 1h}}\nissuers:\n  - issuer: {ISSUER}\n    jwks_uri: \"{}\"\n    refresh: 1s\n    leeway: 0s\n",
        jwks_server.url()
    );
    std::fs::write(&path, text).unwrap();
    let s = TestServer::start(hopwarden::config::Config::load(&path).unwrap()).await;
    let withdrawn = token(PAYMENTS, "ledger", "ledger.read");
    let kept = other_key().sign(&claims(PAYMENTS, "ledger", "ledger.read"));
    for _ in 0..2 {
        assert_eq!(s.check(read_tx().bearer(&withdrawn)).await.status, 200);
        assert_eq!(s.check(read_tx().bearer(&kept)).await.status, 200);
    }
    // The second round was answered from the decision cache.
    let metrics = s.handle.engine.metrics().encode();
    assert!(
        metrics.contains("hopwarden_cache_requests_total{cache=\"decision\",result=\"hit\"} 2\n"),
        "{metrics}"
    );

    // The issuer withdraws the first key (say it leaked).
    *jwks_server.body.lock().unwrap() = jwks(&[other_key()]);
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.check(read_tx().bearer(&withdrawn)).await.status == 401
        })
        .await,
        "a token signed with a withdrawn key was still answered from a cache"
    );
    assert_eq!(s.check(read_tx().bearer(&kept)).await.status, 200);
}

/// Envoy's ext_authz HTTP service (`http_listen`): the same decisions as gRPC, over
/// HTTP/1.1 and HTTP/2, with the hop and service from the path prefix.
#[tokio::test]
async fn http_service_answers_over_http1_and_http2() {
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let s = TestServer::start(d.config("", "http_listen: 127.0.0.1:0\n")).await;
    let addr = s.handle.http_addr.expect("http_listen is bound");
    let read = format!("Bearer {}", token(PAYMENTS, "ledger", "ledger.read"));
    for (name, client) in [
        ("HTTP/1.1", reqwest::Client::new()),
        (
            "HTTP/2",
            reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .unwrap(),
        ),
    ] {
        let get = |path: &str, headers: &[(&str, &str)]| {
            let mut req = client.get(format!("http://{addr}{path}"));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.send()
        };
        let r = get(
            "/gateway/ledger/transactions/42",
            &[("authorization", &read), ("x-hopwarden-extra", "forged")],
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let h = |k: &str| r.headers().get(k).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            h("x-hopwarden-principal").as_deref(),
            Some(PAYMENTS),
            "{name}"
        );
        assert_eq!(
            h("x-hopwarden-rule").as_deref(),
            Some("payments-read-transactions")
        );
        assert_eq!(
            h("x-envoy-auth-headers-to-remove").as_deref(),
            Some("x-hopwarden-extra,x-hopwarden-actor,x-hopwarden-api-key")
        );
        let r = get("/gateway/ledger/transactions/42", &[]).await.unwrap();
        assert_eq!(r.status(), 401, "{name}");
        assert!(r.headers().contains_key("www-authenticate"));
        // No prefix, an unknown hop (400: unreadable), a service nothing names (403):
        // clean denials.
        for (path, status) in [
            ("/transactions/42", 400),
            ("/edge/ledger/transactions/42", 400),
            ("/gateway/-/transactions/42", 403),
            ("/gateway/payroll/transactions/42", 403),
        ] {
            let r = get(path, &[("authorization", &read)]).await.unwrap();
            assert_eq!(r.status(), status, "{name} {path}");
        }
    }
    // The decision log records the HTTP checks like any other: 5 per client (a
    // request without the prefix is refused before the engine, as an unreadable gRPC
    // check is, and not logged).
    let decisions = d.decisions_when(10).await;
    let allowed: Vec<_> = decisions
        .iter()
        .filter(|r| r["decision"] == "allow")
        .collect();
    assert_eq!(allowed.len(), 2, "{decisions:?}");
    assert_eq!(allowed[0]["service"], "ledger");
    assert_eq!(allowed[0]["hop"], "gateway");
    s.handle.shutdown().await.unwrap();
}

/// A principal claim with a control character could not be passed on as an identity
/// header (and on the HTTP service would have been logged as an allow and then
/// refused): the token is refused as having no usable principal, on both protocols.
#[tokio::test]
async fn a_principal_with_a_control_character_is_an_invalid_token() {
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let s = TestServer::start(d.config("", "http_listen: 127.0.0.1:0\n")).await;
    let forged = token(
        &format!("{PAYMENTS}\nx-injected: 1"),
        "ledger",
        "ledger.read",
    );
    let a = s.check(read_tx().bearer(&forged)).await;
    assert_eq!(a.status, 401, "{a:?}");
    let r = reqwest::Client::new()
        .get(format!(
            "http://{}/gateway/ledger/transactions/42",
            s.handle.http_addr.unwrap()
        ))
        .header("authorization", format!("Bearer {forged}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The same subject without the control character is allowed.
    let a = s
        .check(read_tx().bearer(&token(PAYMENTS, "ledger", "ledger.read")))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
}

#[tokio::test]
async fn an_anonymous_caller_refused_by_a_limit_is_logged_without_a_principal() {
    let policy = "service: ledger
rules:
  - {id: open-health, from: {anonymous: true}, to: [{paths: [/health]}]}
limits:
  - {id: health, rate: 1/m}
";
    let d = Deployment::new(&[("ledger.yaml", policy)]);
    let s = TestServer::start(d.config("", "")).await;
    let health = || Check::new("ledger", "GET", "/health");
    assert_eq!(s.check(health()).await.status, 200);
    let a = s.check(health()).await;
    assert_eq!(a.status, 429, "{a:?}");
    let limited = &d.decisions_when(2).await[1];
    assert_eq!(limited["reason"], "rate_limited", "{limited}");
    assert_eq!(limited["rule"], "open-health", "{limited}");
    // No credential, so no principal: not an empty one.
    assert!(limited["principal"].is_null(), "{limited}");
}

#[tokio::test]
async fn flushing_the_traces_exports_the_spans_queued_so_far() {
    // Nothing listens there: an export fails at once, and counts its spans dropped.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    // An interval far longer than the test: only the flush exports.
    let config = format!(
        "tracing:\n  otlp:\n    endpoint: \"http://{addr}\"\n    interval: 1h\n    timeout: 5s\n"
    );
    let s = TestServer::start(d.config("", &config)).await;
    let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let check = read_tx()
        .bearer(&token(PAYMENTS, "ledger", "ledger.read"))
        .header("traceparent", sampled);
    assert_eq!(s.check(check).await.status, 200);
    let engine = &s.handle.engine;
    let failed = || {
        let page = engine.metrics().encode();
        let series = "hopwarden_trace_spans_dropped_total{why=\"export_failed\"} ";
        page.lines()
            .find_map(|l| l.strip_prefix(series).map(|n| n.trim().to_string()))
            .unwrap_or_default()
    };
    assert_eq!(failed(), "", "exported before the flush");
    engine.flush_traces().await;
    assert_eq!(failed(), "1");
}
