//! Envoy's ext_authz HTTP protocol <-> domain: the only code that reads its requests
//! and writes its answers.
//!
//! Envoy's HTTP service has no `context_extensions`, so the hop and the service come
//! in the path: Envoy puts its `path_prefix` (`/<hop>/<service>`, fixed per filter in
//! Envoy's config) before the client's path, and the client cannot take it off. The
//! prefix always has exactly two segments, so nothing the client writes after it can
//! be read as the hop or the service. A service of `-` names none: the service is
//! then found by host, as for gRPC checks without one. Not in the mesh, though: a
//! sidecar sends every request to its one service whatever the host, so there the
//! client would pick the policy.
//!
//! The headers are made to read as a gRPC check's do, so a rule reads the same thing
//! over both: the pseudo-headers `:authority`, `:method` and `:path` (the client's
//! path), and not the two that Envoy sets for this call (`host` on HTTP/1.1, which
//! becomes `:authority`, and `content-length`, the empty check body's).

use std::collections::HashMap;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{
    HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST, WWW_AUTHENTICATE,
};
use hyper::{Response, StatusCode};

use crate::decision::{Decision, DenyReason};
use crate::engine::Outcome;
use crate::grpc::convert::{
    ACTOR_HEADER, API_KEY_HEADER, DRY_RUN_HEADER, KIND_HEADER, PRINCIPAL_HEADER, RULE_HEADER,
};
use crate::request::{AuthzRequest, Hop, OWN_HEADER_PREFIX};

/// The response header that asks Envoy to remove request headers before the request
/// goes upstream (comma-separated names).
pub const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// The service segment that names no service.
pub const NO_SERVICE: &str = "-";

/// Why a request could not be read; answered with a clean deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// The path does not start with `/<hop>/<service>/`.
    #[error("the path does not start with /<hop>/<service>/ (Envoy's http_service path_prefix)")]
    NoPrefix,
    /// `/mesh/-`: in the mesh the service must be named.
    #[error("path_prefix /mesh/- names no service; a sidecar's must name its service")]
    MeshWithoutService,
}

/// The check Envoy asked for: the hop and service from the path prefix, the rest of
/// the path as the client sent it, and the headers Envoy forwarded.
pub fn to_authz_request(parts: &hyper::http::request::Parts) -> Result<AuthzRequest, ConvertError> {
    let path_and_query = parts.uri.path_and_query().map_or("", |p| p.as_str());
    let (hop, service, path) = split_prefix(path_and_query).ok_or(ConvertError::NoPrefix)?;
    if hop == Hop::Mesh.as_str() && service == NO_SERVICE {
        return Err(ConvertError::MeshWithoutService);
    }
    let mut headers: HashMap<String, String> = HashMap::with_capacity(parts.headers.len() + 3);
    for (name, value) in &parts.headers {
        if name == HOST || name == CONTENT_LENGTH {
            continue;
        }
        // Repeated headers are joined with "," as Envoy does for gRPC checks (RFC 9110
        // 5.3), so no repeat can shadow another. Bytes that are not UTF-8 are
        // replaced: such a token no longer verifies, and nothing is allowed on it.
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    // HTTP/2 carries the host as `:authority` (in the URI here), HTTP/1.1 as `host`.
    let host = match parts.uri.authority() {
        Some(authority) => authority.as_str().to_string(),
        None => parts
            .headers
            .get(HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
            .unwrap_or_default(),
    };
    headers.insert(":authority".into(), host.clone());
    headers.insert(":method".into(), parts.method.as_str().to_string());
    headers.insert(":path".into(), path.to_string());
    Ok(AuthzRequest {
        service: (service != NO_SERVICE).then(|| service.to_string()),
        hop: Some(hop.to_string()),
        method: parts.method.as_str().to_string(),
        path: path.to_string(),
        host,
        headers,
        // The HTTP service has no source principal: the peer comes from the header
        // `http_peer_header` names, when configured (peer.rs), or not at all.
        source_principal: None,
        destination_principal: None,
    })
}

/// `/<hop>/<service>/rest` -> (hop, service, `/rest`). Both segments non-empty; the
/// rest keeps its leading `/` (and its query).
fn split_prefix(path: &str) -> Option<(&str, &str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (hop, rest) = rest.split_once('/')?;
    let slash = rest.find('/')?;
    let (service, path) = rest.split_at(slash);
    (!hop.is_empty() && !service.is_empty()).then_some((hop, service, path))
}

/// The answer for a decision: 200 with the identity headers for an allow, the
/// denial's status, headers and body otherwise.
pub fn to_response(outcome: &Outcome, req: &AuthzRequest) -> Response<Full<Bytes>> {
    match &*outcome.decision {
        Decision::Allow(allowed) => {
            // Borrowed: HeaderValue copies each value once, below.
            let dry_run = allowed.dry_run.as_ref().map(|would| would.header());
            let mut headers: Vec<(&str, &str)> = vec![
                (PRINCIPAL_HEADER, &allowed.principal),
                (KIND_HEADER, allowed.kind_str()),
                (RULE_HEADER, &allowed.rule),
                (ACTOR_HEADER, allowed.actor().unwrap_or_default()),
            ];
            if let Some(would) = &dry_run {
                headers.push((DRY_RUN_HEADER, would));
            }
            if let Some(id) = &allowed.api_key {
                headers.push((API_KEY_HEADER, id));
            }
            // An empty value (an anonymous caller's principal) is not set but removed:
            // Envoy might not pass an empty header on, and a client's copy must not
            // stay. Client-sent x-hopwarden-* names we do not set are removed too;
            // ours overwrite theirs (Envoy's `allowed_upstream_headers` sets).
            headers.retain(|(_, value)| !value.is_empty());
            let mut forged: Vec<&str> = req
                .headers
                .keys()
                .map(String::as_str)
                .filter(|k| k.starts_with(OWN_HEADER_PREFIX))
                .filter(|k| !headers.iter().any(|(ours, _)| ours == k))
                .collect();
            if allowed.principal.is_empty() && !forged.contains(&PRINCIPAL_HEADER) {
                forged.push(PRINCIPAL_HEADER);
            }
            // Likewise the actor of a request that is not delegated.
            if allowed.actors.is_none() && !forged.contains(&ACTOR_HEADER) {
                forged.push(ACTOR_HEADER);
            }
            // And the key id of a request no API key identified.
            if allowed.api_key.is_none() && !forged.contains(&API_KEY_HEADER) {
                forged.push(API_KEY_HEADER);
            }
            let mut response = Response::new(Full::new(Bytes::new()));
            for (name, value) in headers {
                // A principal or rule id that cannot be a header value (a control
                // character in a token's subject) cannot be passed on: deny.
                let Ok(value) = HeaderValue::from_str(value) else {
                    tracing::warn!(
                        header = name,
                        "identity not representable as a header; denying"
                    );
                    return deny_response(&DenyReason::BadRequest);
                };
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(name), value);
            }
            // The budget left, for the client (Envoy's
            // `allowed_client_headers_on_success`); ids and numbers are valid values.
            for (name, value) in outcome.budget.iter().flat_map(|b| b.headers()) {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    response
                        .headers_mut()
                        .insert(HeaderName::from_static(name), value);
                }
            }
            if !forged.is_empty() {
                // Header names hyper accepted are valid in a header value.
                if let Ok(value) = HeaderValue::from_str(&forged.join(",")) {
                    response
                        .headers_mut()
                        .insert(HeaderName::from_static(HEADERS_TO_REMOVE), value);
                }
            }
            response
        }
        Decision::Deny(denied) => deny_response(&denied.reason),
    }
}

/// A denial as Envoy passes it to the client: status, challenge and JSON body.
pub fn deny_response(reason: &DenyReason) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(reason.body().as_bytes())));
    *response.status_mut() =
        StatusCode::from_u16(reason.status().code()).unwrap_or(StatusCode::FORBIDDEN);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(challenge) = reason.www_authenticate() {
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            headers.insert(WWW_AUTHENTICATE, value);
        }
    }
    for (name, value) in reason.extra_headers() {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &[u8])]) -> hyper::http::request::Parts {
        let mut req = hyper::Request::get(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn allowed(principal: &str) -> Outcome {
        Outcome::allowed_for_tests(principal)
    }

    #[test]
    fn a_request_becomes_the_check_envoy_asked_for() {
        let req = to_authz_request(&parts(
            "/gateway/ledger/transactions/42?x=1",
            &[
                ("host", b"ledger.internal"),
                ("authorization", b"Bearer t"),
                ("x-hopwarden-extra", b"a"),
                ("x-hopwarden-extra", b"b"),
                ("x-odd", b"caf\xe9"),
            ],
        ))
        .unwrap();
        assert_eq!(req.service.as_deref(), Some("ledger"));
        assert_eq!(req.hop.as_deref(), Some("gateway"));
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/transactions/42?x=1");
        // HTTP/1.1: the host comes from its header.
        assert_eq!(req.host, "ledger.internal");
        assert_eq!(req.header("authorization"), Some("Bearer t"));
        // Repeats are joined, as Envoy joins them for gRPC checks.
        assert_eq!(req.header("x-hopwarden-extra"), Some("a,b"));
        assert_eq!(req.header("x-odd"), Some("caf\u{fffd}"));
        assert_eq!(req.source_principal, None);
        // Read as a gRPC check's headers: pseudo-headers, not Envoy's own two.
        assert_eq!(req.header(":authority"), Some("ledger.internal"));
        assert_eq!(req.header(":method"), Some("GET"));
        assert_eq!(req.header(":path"), Some("/transactions/42?x=1"));
        assert_eq!(req.header("host"), None);
        assert_eq!(req.header("content-length"), None);

        // `-` names no service; an HTTP/2 authority is the host.
        let req = to_authz_request(&parts("http://email.internal:80/gateway/-/x", &[])).unwrap();
        assert_eq!(req.service, None);
        assert_eq!(req.hop.as_deref(), Some("gateway"));
        assert_eq!(req.host, "email.internal:80");

        assert_eq!(
            to_authz_request(&parts("/transactions", &[])).err(),
            Some(ConvertError::NoPrefix)
        );
        // In the mesh the host cannot choose the service.
        assert_eq!(
            to_authz_request(&parts("/mesh/-/x", &[("host", b"email.internal")])).err(),
            Some(ConvertError::MeshWithoutService)
        );
    }

    fn header<'a>(r: &'a Response<Full<Bytes>>, name: &str) -> Option<&'a str> {
        r.headers().get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn an_allow_sets_the_identity_and_removes_forgeries() {
        let plain = to_authz_request(&parts("/gateway/ledger/t", &[])).unwrap();
        let r = to_response(&allowed("spiffe://x/payments"), &plain);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, PRINCIPAL_HEADER), Some("spiffe://x/payments"));
        assert_eq!(header(&r, KIND_HEADER), Some("service"));
        assert_eq!(header(&r, RULE_HEADER), Some("payments-read"));
        assert_eq!(
            header(&r, HEADERS_TO_REMOVE),
            Some("x-hopwarden-actor,x-hopwarden-api-key")
        );

        let forged = to_authz_request(&parts(
            "/gateway/ledger/t",
            &[(PRINCIPAL_HEADER, b"evil"), ("x-hopwarden-admin", b"yes")],
        ))
        .unwrap();
        let r = to_response(&allowed("spiffe://x/payments"), &forged);
        // Ours overwrite the client's copy; the name we do not set is removed.
        assert_eq!(header(&r, PRINCIPAL_HEADER), Some("spiffe://x/payments"));
        assert_eq!(
            header(&r, HEADERS_TO_REMOVE),
            Some("x-hopwarden-admin,x-hopwarden-actor,x-hopwarden-api-key")
        );
    }

    #[test]
    fn an_allow_by_a_key_for_an_actor_sets_both_and_removes_neither() {
        use crate::decision::Allowed;
        use crate::principal::actor::{Actor, Delegation};
        let base = allowed("spiffe://x/payments");
        let Decision::Allow(a) = &*base.decision else {
            unreachable!("allowed_for_tests allows")
        };
        let actors = Delegation::new(vec![Actor {
            sub: "spiffe://x/bff".into(),
            iss: None,
        }])
        .map(std::sync::Arc::new);
        let outcome = Outcome {
            decision: std::sync::Arc::new(Decision::Allow(Allowed {
                api_key: Some("k1".into()),
                scopes: None,
                actors,
                ..a.clone()
            })),
            ..base
        };
        // Whether or not the client sent its own copies: ours overwrite them, and
        // nothing we set is also removed (Envoy would remove it after setting it).
        let forged: &[(&str, &[u8])] = &[(ACTOR_HEADER, b"evil"), (API_KEY_HEADER, b"evil")];
        for sent in [&[][..], forged] {
            let req = to_authz_request(&parts("/gateway/ledger/t", sent)).unwrap();
            let r = to_response(&outcome, &req);
            assert_eq!(header(&r, API_KEY_HEADER), Some("k1"));
            assert_eq!(header(&r, ACTOR_HEADER), Some("spiffe://x/bff"));
            assert_eq!(header(&r, HEADERS_TO_REMOVE), None);
        }
    }

    #[test]
    fn an_anonymous_allow_removes_the_principal_header() {
        let forged =
            to_authz_request(&parts("/gateway/ledger/t", &[(PRINCIPAL_HEADER, b"evil")])).unwrap();
        let r = to_response(&allowed(""), &forged);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, PRINCIPAL_HEADER), None);
        assert_eq!(
            header(&r, HEADERS_TO_REMOVE),
            Some("x-hopwarden-principal,x-hopwarden-actor,x-hopwarden-api-key")
        );
        assert_eq!(header(&r, RULE_HEADER), Some("payments-read"));
    }

    #[test]
    fn an_identity_that_cannot_be_a_header_is_denied() {
        let req = to_authz_request(&parts("/gateway/ledger/t", &[])).unwrap();
        let r = to_response(&allowed("svc\nx-injected: 1"), &req);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(header(&r, PRINCIPAL_HEADER), None);
    }

    #[test]
    fn a_denial_carries_status_challenge_and_body() {
        let r = deny_response(&DenyReason::MissingCredential);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            header(&r, "www-authenticate"),
            Some(r#"Bearer error="invalid_token""#)
        );
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        let r = deny_response(&DenyReason::BadRequest);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(header(&r, "www-authenticate"), None);
    }

    #[test]
    fn the_prefix_has_exactly_two_segments() {
        assert_eq!(
            split_prefix("/gateway/ledger/transactions/42?x=1"),
            Some(("gateway", "ledger", "/transactions/42?x=1"))
        );
        assert_eq!(split_prefix("/mesh/-/"), Some(("mesh", "-", "/")));
        // What the client wrote after the prefix is never the hop or the service.
        assert_eq!(
            split_prefix("/mesh/ledger/gateway/billing/x"),
            Some(("mesh", "ledger", "/gateway/billing/x"))
        );
        for bad in [
            "",
            "/",
            "/gateway",
            "/gateway/ledger",
            "//ledger/x",
            "/gateway//x",
            "gateway/ledger/x",
        ] {
            assert_eq!(split_prefix(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_allow_carries_its_budget_only_when_the_engine_reported_one() {
        let req = to_authz_request(&parts("/gateway/ledger/t", &[])).unwrap();
        let mut outcome = allowed("spiffe://x/payments");
        let plain = to_response(&outcome, &req);
        assert_eq!(header(&plain, "ratelimit"), None);
        assert_eq!(header(&plain, "ratelimit-policy"), None);
        outcome.budget = Some(crate::limits::Budget {
            limit: "payments-reads".into(),
            rate: crate::limits::Rate::parse("200/s").unwrap(),
            remaining: 7,
            reset: 1,
        });
        let r = to_response(&outcome, &req);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            header(&r, "ratelimit-policy"),
            Some("\"payments-reads\";q=200;w=1")
        );
        assert_eq!(header(&r, "ratelimit"), Some("\"payments-reads\";r=7;t=1"));
        // The identity headers are still there.
        assert_eq!(header(&r, RULE_HEADER), Some("payments-read"));
    }
}
