//! Protobuf <-> domain conversions: the only code that sees `envoy_types::pb`.

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::{
    CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue,
    HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use envoy_types::pb::google::rpc;

use crate::decision::{Decision, DenyStatus};
use crate::engine::Outcome;
use crate::request::{AuthzRequest, OWN_HEADER_PREFIX};

/// Identity headers hopwarden sets on allowed requests.
pub const PRINCIPAL_HEADER: &str = "x-hopwarden-principal";
/// The principal's kind.
pub const KIND_HEADER: &str = "x-hopwarden-principal-kind";
/// The allow rule's id.
pub const RULE_HEADER: &str = "x-hopwarden-rule";
/// Set when only dry-run let the request through; says what enforcement would do.
pub const DRY_RUN_HEADER: &str = "x-hopwarden-dry-run";
/// The outermost actor of a delegated token (RFC 8693 `act.sub`), calling for the
/// principal; removed when the token is not delegated.
pub const ACTOR_HEADER: &str = "x-hopwarden-actor";
/// The id of the API key that identified the caller (never the key itself); removed
/// when no key did.
pub const API_KEY_HEADER: &str = "x-hopwarden-api-key";

/// Why a `CheckRequest` could not be read; answered with a clean deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// `attributes.request.http` is missing: not an HTTP check.
    #[error("check request has no HTTP request attributes")]
    MissingHttp,
}

impl TryFrom<CheckRequest> for AuthzRequest {
    type Error = ConvertError;

    /// Takes the request apart by value: the headers (token included) are moved, not
    /// copied, on every check.
    fn try_from(check: CheckRequest) -> Result<Self, Self::Error> {
        let mut attrs = check.attributes.ok_or(ConvertError::MissingHttp)?;
        let http = attrs
            .request
            .take()
            .and_then(|r| r.http)
            .ok_or(ConvertError::MissingHttp)?;
        // Envoy sends `header_map` instead of `headers` when the filter sets
        // `encode_raw_headers: true`; accept both.
        let headers = match http.header_map {
            Some(map) if http.headers.is_empty() => {
                // Repeated headers are joined with "," as Envoy does for `headers`
                // (RFC 9110 5.3), so no repeat can shadow another.
                let mut joined: HashMap<String, String> = HashMap::new();
                for h in map.headers {
                    let value = if h.raw_value.is_empty() {
                        h.value
                    } else {
                        String::from_utf8_lossy(&h.raw_value).into_owned()
                    };
                    joined
                        .entry(h.key.to_ascii_lowercase())
                        .and_modify(|v| {
                            v.push(',');
                            v.push_str(&value);
                        })
                        .or_insert(value);
                }
                joined
            }
            _ => http.headers,
        };
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        Ok(AuthzRequest {
            service: attrs.context_extensions.remove("service"),
            hop: attrs.context_extensions.remove("hop"),
            method: http.method,
            path: http.path,
            host: http.host,
            headers,
            source_principal: attrs.source.and_then(|p| non_empty(p.principal)),
            destination_principal: attrs.destination.and_then(|p| non_empty(p.principal)),
        })
    }
}

/// Whether the request carries headers named like the ones hopwarden sets.
pub fn carries_own_headers(req: &AuthzRequest) -> bool {
    req.headers.keys().any(|k| k.starts_with(OWN_HEADER_PREFIX))
}

/// The `CheckResponse` for a decision.
pub fn to_check_response(
    outcome: &Outcome,
    req: &AuthzRequest,
    options: ResponseOptions,
) -> CheckResponse {
    let metadata = options.dynamic_metadata.then(|| metadata(outcome));
    match &*outcome.decision {
        Decision::Allow(allowed) => {
            // Always set (or, for an anonymous caller, removed), so a client's copy
            // never stays, even when Envoy's `allowed_headers` kept it from us.
            let anonymous = allowed.principal.is_empty();
            let mut headers = Vec::with_capacity(4);
            if !anonymous {
                headers.push(overwrite(PRINCIPAL_HEADER, &allowed.principal));
            }
            headers.push(overwrite(KIND_HEADER, allowed.kind_str()));
            headers.push(overwrite(RULE_HEADER, &allowed.rule));
            let actor = allowed.actor();
            if let Some(actor) = actor {
                headers.push(overwrite(ACTOR_HEADER, actor));
            }
            if let Some(id) = &allowed.api_key {
                headers.push(overwrite(API_KEY_HEADER, id));
            }
            if let Some(would) = &allowed.dry_run {
                headers.push(overwrite(DRY_RUN_HEADER, &would.header()));
            }
            // Envoy applies removals after sets, so remove only client-sent
            // x-hopwarden-* names we do not set ourselves; ours overwrite theirs.
            let ours: Vec<&str> = headers
                .iter()
                .filter_map(|h| h.header.as_ref().map(|h| h.key.as_str()))
                .collect();
            let mut headers_to_remove: Vec<String> = req
                .headers
                .keys()
                .filter(|k| k.starts_with(OWN_HEADER_PREFIX) && !ours.contains(&k.as_str()))
                .cloned()
                .collect();
            // An anonymous caller has no principal: the header is removed rather than
            // set empty (Envoy versions that drop empty values from ext_authz answers
            // would leave a client's forged copy in place), as the HTTP service does.
            if anonymous && !headers_to_remove.iter().any(|k| k == PRINCIPAL_HEADER) {
                headers_to_remove.push(PRINCIPAL_HEADER.to_string());
            }
            // Likewise the actor: a request that is not delegated never goes upstream
            // with one, whatever the client sent and whether or not we saw it.
            if actor.is_none() && !headers_to_remove.iter().any(|k| k == ACTOR_HEADER) {
                headers_to_remove.push(ACTOR_HEADER.to_string());
            }
            // And the key id: a request no API key identified never carries one.
            if allowed.api_key.is_none() && !headers_to_remove.iter().any(|k| k == API_KEY_HEADER) {
                headers_to_remove.push(API_KEY_HEADER.to_string());
            }
            CheckResponse {
                status: Some(rpc_status(tonic::Code::Ok)),
                dynamic_metadata: metadata,
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers,
                    headers_to_remove,
                    // To the client, on the upstream's answer (Envoy 1.21+).
                    response_headers_to_add: budget_headers(outcome),
                    ..Default::default()
                })),
            }
        }
        Decision::Deny(denied) => {
            let status = denied.reason.status();
            let mut headers = vec![overwrite("content-type", "application/json")];
            if let Some(challenge) = denied.reason.www_authenticate() {
                headers.push(overwrite("www-authenticate", &challenge));
            }
            for (name, value) in denied.reason.extra_headers() {
                headers.push(overwrite(name, &value));
            }
            let code = match status {
                DenyStatus::BadRequest => tonic::Code::InvalidArgument,
                DenyStatus::Unauthorized => tonic::Code::Unauthenticated,
                DenyStatus::Forbidden => tonic::Code::PermissionDenied,
                DenyStatus::TooManyRequests => tonic::Code::ResourceExhausted,
            };
            CheckResponse {
                status: Some(rpc_status(code)),
                dynamic_metadata: metadata,
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: i32::from(status.code()),
                    }),
                    headers,
                    body: denied.reason.body().to_string(),
                })),
            }
        }
    }
}

/// The RateLimit fields of what an allowed request left of its limits, when the
/// engine reported it (`rate_limits.headers_on_allow`).
fn budget_headers(outcome: &Outcome) -> Vec<HeaderValueOption> {
    outcome.budget.as_ref().map_or_else(Vec::new, |budget| {
        budget
            .headers()
            .iter()
            .map(|(name, value)| overwrite(name, value))
            .collect()
    })
}

fn rpc_status(code: tonic::Code) -> rpc::Status {
    rpc::Status {
        code: code as i32,
        ..Default::default()
    }
}

fn overwrite(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// What answers carry besides the decision.
#[derive(Debug, Clone, Copy)]
pub struct ResponseOptions {
    /// Decision facts in Envoy's dynamic metadata.
    pub dynamic_metadata: bool,
}

/// Decision facts for Envoy's dynamic metadata (namespace
/// `envoy.filters.http.ext_authz`), so access logs can show them.
fn metadata(outcome: &Outcome) -> Struct {
    let mut fields = HashMap::new();
    let mut put = |k: &str, v: &str| {
        fields.insert(
            k.to_string(),
            Value {
                kind: Some(Kind::StringValue(v.to_string())),
            },
        );
    };
    put("decision", outcome.decision.as_str());
    if let Some(service) = &outcome.service {
        put("service", service);
    }
    if let Some(rule) = outcome.decision.rule() {
        put("rule", rule);
    }
    match &*outcome.decision {
        Decision::Allow(a) => {
            put("principal", &a.principal);
            put("principal_kind", a.kind_str());
            if let Some(actors) = &a.actors {
                put("actors", &actors.chain());
            }
            if let Some(id) = &a.api_key {
                put("api_key", id);
            }
            if let Some(would) = &a.dry_run {
                put("dry_run", &would.header());
            }
        }
        Decision::Deny(d) => {
            put("reason", d.reason.as_str());
            if let Some(p) = &d.principal {
                put("principal", p);
            }
        }
    }
    Struct { fields }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::HeaderMap;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;

    fn ok(response: &CheckResponse) -> &OkHttpResponse {
        match &response.http_response {
            Some(HttpResponse::OkResponse(ok)) => ok,
            other => panic!("not an ok response: {other:?}"),
        }
    }

    fn set(ok: &OkHttpResponse, name: &str) -> Option<String> {
        ok.headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == name)
            .map(|h| h.value.clone())
    }

    #[test]
    fn an_anonymous_allow_removes_the_principal_header() {
        let options = ResponseOptions {
            dynamic_metadata: false,
        };
        let forged = AuthzRequest {
            headers: [(PRINCIPAL_HEADER.to_string(), "admin".to_string())].into(),
            ..Default::default()
        };
        for req in [AuthzRequest::default(), forged] {
            let response = to_check_response(&Outcome::allowed_for_tests(""), &req, options);
            let ok = ok(&response);
            assert_eq!(set(ok, PRINCIPAL_HEADER), None, "{ok:?}");
            assert_eq!(
                ok.headers_to_remove,
                [PRINCIPAL_HEADER, ACTOR_HEADER, API_KEY_HEADER],
                "{ok:?}"
            );
            assert!(set(ok, KIND_HEADER).is_some() && set(ok, RULE_HEADER).is_some());
        }
        // A caller with a principal gets it set, overwriting a client's copy.
        let forged = AuthzRequest {
            headers: [(PRINCIPAL_HEADER.to_string(), "admin".to_string())].into(),
            ..Default::default()
        };
        let response = to_check_response(
            &Outcome::allowed_for_tests("spiffe://x/payments"),
            &forged,
            options,
        );
        let ok = ok(&response);
        assert_eq!(
            set(ok, PRINCIPAL_HEADER).as_deref(),
            Some("spiffe://x/payments")
        );
        assert_eq!(
            ok.headers_to_remove,
            [ACTOR_HEADER, API_KEY_HEADER],
            "{ok:?}"
        );
    }

    #[test]
    fn an_allow_by_a_key_for_an_actor_sets_both_and_removes_neither() {
        use crate::decision::Allowed;
        use crate::principal::actor::{Actor, Delegation};
        let base = Outcome::allowed_for_tests("spiffe://x/payments");
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
                actors,
                ..a.clone()
            })),
            ..base
        };
        let options = ResponseOptions {
            dynamic_metadata: false,
        };
        // Whether or not the client sent its own copies: ours overwrite them, and
        // nothing we set is also removed (Envoy removes after it sets).
        let forged = AuthzRequest {
            headers: [
                (ACTOR_HEADER.to_string(), "evil".to_string()),
                (API_KEY_HEADER.to_string(), "evil".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        for req in [AuthzRequest::default(), forged] {
            let response = to_check_response(&outcome, &req, options);
            let ok = ok(&response);
            assert_eq!(set(ok, API_KEY_HEADER).as_deref(), Some("k1"));
            assert_eq!(set(ok, ACTOR_HEADER).as_deref(), Some("spiffe://x/bff"));
            assert!(ok.headers_to_remove.is_empty(), "{ok:?}");
        }
    }

    #[test]
    fn raw_header_map_joins_repeats() {
        let header = |k: &str, v: &str| HeaderValue {
            key: k.into(),
            raw_value: v.as_bytes().to_vec(),
            ..Default::default()
        };
        let check = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        header_map: Some(HeaderMap {
                            headers: vec![
                                header("X-Tenant", "acme"),
                                header("x-tenant", "evil"),
                                header("authorization", "Bearer a"),
                            ],
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let req = AuthzRequest::try_from(check).unwrap();
        assert_eq!(req.header("x-tenant"), Some("acme,evil"));
        assert_eq!(req.header("authorization"), Some("Bearer a"));
        assert_eq!(
            AuthzRequest::try_from(CheckRequest::default()).err(),
            Some(ConvertError::MissingHttp)
        );
    }

    fn check_with(http: HttpRequest, source: &str, destination: &str) -> CheckRequest {
        use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
        let peer = |principal: &str| {
            Some(Peer {
                principal: principal.into(),
                ..Default::default()
            })
        };
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(http),
                    ..Default::default()
                }),
                source: peer(source),
                destination: peer(destination),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn peers_and_header_forms() {
        // `headers` wins when Envoy sent both forms; an empty principal is none.
        let http = HttpRequest {
            headers: [("x-tenant".to_string(), "acme".to_string())].into(),
            header_map: Some(HeaderMap {
                headers: vec![HeaderValue {
                    key: "x-tenant".into(),
                    value: "evil".into(),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        };
        let req =
            AuthzRequest::try_from(check_with(http, "", "spiffe://td/ns/a/sa/ledger")).unwrap();
        assert_eq!(req.header("x-tenant"), Some("acme"));
        assert_eq!(req.source_principal, None);
        assert_eq!(
            req.destination_principal.as_deref(),
            Some("spiffe://td/ns/a/sa/ledger")
        );
        assert!(!carries_own_headers(&req));
        let http = HttpRequest {
            headers: [(KIND_HEADER.to_string(), "service".to_string())].into(),
            ..Default::default()
        };
        let req = AuthzRequest::try_from(check_with(http, "spiffe://td/ns/a/sa/p", "")).unwrap();
        assert_eq!(
            req.source_principal.as_deref(),
            Some("spiffe://td/ns/a/sa/p")
        );
        assert_eq!(req.destination_principal, None);
        assert!(carries_own_headers(&req));
    }

    fn field(s: &Struct, key: &str) -> Option<String> {
        match s.fields.get(key)?.kind.as_ref()? {
            Kind::StringValue(v) => Some(v.clone()),
            _ => None,
        }
    }

    fn overwrites(headers: &[HeaderValueOption]) -> bool {
        headers
            .iter()
            .all(|h| h.append_action == HeaderAppendAction::OverwriteIfExistsOrAdd as i32)
    }

    #[test]
    fn an_allow_overwrites_identity_headers_and_fills_metadata() {
        let options = ResponseOptions {
            dynamic_metadata: true,
        };
        let outcome = Outcome::allowed_for_tests("spiffe://x/payments");
        let response = to_check_response(&outcome, &AuthzRequest::default(), options);
        assert_eq!(response.status.as_ref().map(|s| s.code), Some(0));
        let ok = ok(&response);
        assert_eq!(set(ok, KIND_HEADER).as_deref(), Some("service"));
        assert_eq!(set(ok, RULE_HEADER).as_deref(), Some("payments-read"));
        // Appending would leave a client's forged copy beside ours.
        assert!(overwrites(&ok.headers), "{ok:?}");
        let meta = response.dynamic_metadata.expect("metadata");
        let want = [
            ("decision", "allow"),
            ("service", "ledger"),
            ("rule", "payments-read"),
            ("principal", "spiffe://x/payments"),
            ("principal_kind", "service"),
        ];
        for (key, value) in want {
            assert_eq!(field(&meta, key).as_deref(), Some(value), "{key}");
        }
        let without = ResponseOptions {
            dynamic_metadata: false,
        };
        let response = to_check_response(&outcome, &AuthzRequest::default(), without);
        assert_eq!(response.dynamic_metadata, None);
    }

    #[test]
    fn a_denial_answers_with_its_code_status_body_and_challenge() {
        use crate::decision::{Denied, DenyReason};
        let reason = DenyReason::InvalidToken("expired");
        let outcome = Outcome {
            decision: std::sync::Arc::new(Decision::Deny(Denied {
                reason: reason.clone(),
                rule: None,
                principal: Some("partner:acme".into()),
                kind: None,
                actors: None,
                scopes: None,
            })),
            service: Some("ledger".into()),
            hop: None,
            action: None,
            cached: false,
            budget: None,
        };
        let options = ResponseOptions {
            dynamic_metadata: true,
        };
        let response = to_check_response(&outcome, &AuthzRequest::default(), options);
        assert_eq!(
            response.status.as_ref().map(|s| s.code),
            Some(tonic::Code::Unauthenticated as i32)
        );
        let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
            panic!("not a denial: {response:?}");
        };
        assert_eq!(denied.status.as_ref().map(|s| s.code), Some(401));
        assert_eq!(denied.body, reason.body());
        let header = |name: &str| {
            denied
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == name)
                .map(|h| h.value.as_str())
        };
        assert_eq!(header("content-type"), Some("application/json"));
        assert_eq!(
            header("www-authenticate"),
            Some(r#"Bearer error="invalid_token""#)
        );
        assert!(overwrites(&denied.headers));
        let meta = response.dynamic_metadata.expect("metadata");
        let want = [
            ("decision", "deny"),
            ("service", "ledger"),
            ("reason", "invalid_token"),
            ("principal", "partner:acme"),
        ];
        for (key, value) in want {
            assert_eq!(field(&meta, key).as_deref(), Some(value), "{key}");
        }
        assert_eq!(field(&meta, "rule"), None);
    }

    #[test]
    fn an_allow_tells_the_client_its_budget_only_when_the_engine_reported_one() {
        let options = ResponseOptions {
            dynamic_metadata: false,
        };
        let req = AuthzRequest::default();
        let mut outcome = Outcome::allowed_for_tests("spiffe://x/payments");
        let plain = to_check_response(&outcome, &req, options);
        assert!(ok(&plain).response_headers_to_add.is_empty(), "{plain:?}");
        outcome.budget = Some(crate::limits::Budget {
            limit: "payments-reads".into(),
            rate: crate::limits::Rate::parse("200/s").unwrap(),
            remaining: 7,
            reset: 1,
        });
        let response = to_check_response(&outcome, &req, options);
        let ok = ok(&response);
        let to_client: Vec<(String, String, i32)> = ok
            .response_headers_to_add
            .iter()
            .map(|h| {
                let v = h.header.as_ref().unwrap();
                (v.key.clone(), v.value.clone(), h.append_action)
            })
            .collect();
        let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
        assert_eq!(
            to_client,
            [
                (
                    "ratelimit-policy".to_string(),
                    "\"payments-reads\";q=200;w=1".to_string(),
                    overwrite
                ),
                (
                    "ratelimit".to_string(),
                    "\"payments-reads\";r=7;t=1".to_string(),
                    overwrite
                ),
            ]
        );
        // For the client only: the upstream request gets no such header.
        assert_eq!(set(ok, "ratelimit"), None);
        assert_eq!(set(ok, "ratelimit-policy"), None);
    }
}
