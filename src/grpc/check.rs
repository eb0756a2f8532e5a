//! The `envoy.service.auth.v3.Authorization` gRPC service.

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use tonic::Status;
use tonic_prost::prost::Message;

use super::convert::{carries_own_headers, to_check_response, ResponseOptions};
use super::service::Answer;
use crate::decision::{Decision, DenyReason};
use crate::engine::{Engine, EngineError, Outcome};
use crate::request::AuthzRequest;

/// Answers Envoy's checks with the engine.
pub struct CheckService {
    engine: Arc<Engine>,
    options: ResponseOptions,
}

impl CheckService {
    /// A service over an engine.
    pub fn new(engine: Arc<Engine>, options: ResponseOptions) -> Self {
        CheckService { engine, options }
    }

    /// Answers one check.
    pub async fn check(&self, check: CheckRequest) -> Result<Answer, Status> {
        let req = match AuthzRequest::try_from(check) {
            Ok(req) => req,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable check request; denying");
                let outcome = Outcome::denied(DenyReason::BadRequest);
                return Ok(Answer::Message(to_check_response(
                    &outcome,
                    &AuthzRequest::default(),
                    self.options,
                )));
            }
        };
        match self.engine.check(&req).await {
            Ok(outcome) => Ok(answer(&outcome, &req, self.options)),
            Err(e) => Err(to_status(&e)),
        }
    }
}

/// An allow's answer depends on the request only through client-sent `x-hopwarden-*`
/// headers (removed in the answer) and the rate limit budget it left (with
/// `rate_limits.headers_on_allow`). Without them it is the same for every request the
/// decision answers, cache hits included: encoded once. (The service that dynamic
/// metadata names is the policy's, which is part of the decision's cache key.)
fn answer(outcome: &Outcome, req: &AuthzRequest, options: ResponseOptions) -> Answer {
    match &*outcome.decision {
        Decision::Allow(allowed) if !carries_own_headers(req) && outcome.budget.is_none() => {
            Answer::Encoded(allowed.answer.get_or_init(|| {
                to_check_response(outcome, req, options)
                    .encode_to_vec()
                    .into()
            }))
        }
        _ => Answer::Message(to_check_response(outcome, req, options)),
    }
}

/// Server faults become UNAVAILABLE so Envoy's `failure_mode_allow` (false in our
/// configs: deny) decides; never UNKNOWN, which Envoy treats the same but hides why.
fn to_status(e: &EngineError) -> Status {
    match e {
        EngineError::Unavailable(msg) => Status::unavailable(msg.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::ext_authz::v3::pb::{CheckResponse, HttpResponse};

    fn allowed() -> Outcome {
        Outcome::allowed_for_tests("spiffe://example.org/ns/payments/sa/api")
    }

    fn request(headers: &[(&str, &str)]) -> AuthzRequest {
        AuthzRequest {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    fn removed(response: &CheckResponse) -> Vec<String> {
        match &response.http_response {
            Some(HttpResponse::OkResponse(ok)) => ok.headers_to_remove.clone(),
            other => panic!("not an ok response: {other:?}"),
        }
    }

    #[test]
    fn an_allow_is_encoded_once_and_decodes_to_each_requests_own_answer() {
        // Checks the same decision answers: they differ in everything but
        // x-hopwarden-* headers.
        let requests = [
            request(&[("authorization", "Bearer x")]),
            request(&[("x-request-id", "2"), ("cookie", "c=1")]),
            AuthzRequest {
                method: "POST".into(),
                path: "/transactions/7?x=1".into(),
                host: "ledger.internal".into(),
                source_principal: Some("spiffe://example.org/ns/a/sa/b".into()),
                ..request(&[("authorization", "Bearer y"), ("x-tenant", "acme")])
            },
            request(&[]),
        ];
        for dynamic_metadata in [false, true] {
            let options = ResponseOptions { dynamic_metadata };
            // A new decision (and so an empty memo) per option.
            let outcome = allowed();
            let mut first: Option<Arc<[u8]>> = None;
            for req in &requests {
                let Answer::Encoded(bytes) = answer(&outcome, req, options) else {
                    panic!("an allow without x-hopwarden-* headers is pre-encoded");
                };
                // Every check after the first reused the first one's bytes...
                let first = first.get_or_insert_with(|| bytes.clone());
                assert!(Arc::ptr_eq(first, &bytes));
                // ...and they are exactly the answer built for this request.
                let decoded = Answer::Encoded(bytes).into_message().unwrap();
                assert_eq!(decoded, to_check_response(&outcome, req, options));
            }
        }
    }

    #[test]
    fn client_sent_own_headers_get_their_own_answer_and_leave_the_kept_one_alone() {
        let outcome = allowed();
        let options = ResponseOptions {
            dynamic_metadata: false,
        };
        let forged = request(&[("x-hopwarden-admin", "yes")]);
        let Answer::Message(m) = answer(&outcome, &forged, options) else {
            panic!("a request with x-hopwarden-* headers is answered for itself");
        };
        assert_eq!(
            removed(&m),
            [
                "x-hopwarden-admin",
                "x-hopwarden-actor",
                "x-hopwarden-api-key"
            ]
        );
        // Neither before nor after does the kept answer remove anything the client
        // sent (only the actor and key id headers, which a direct token caller never has).
        let plain = answer(&outcome, &request(&[]), options)
            .into_message()
            .unwrap();
        assert_eq!(
            removed(&plain),
            ["x-hopwarden-actor", "x-hopwarden-api-key"]
        );
        let Answer::Message(again) = answer(&outcome, &forged, options) else {
            panic!("still answered for itself");
        };
        assert_eq!(
            removed(&again),
            [
                "x-hopwarden-admin",
                "x-hopwarden-actor",
                "x-hopwarden-api-key"
            ]
        );
    }

    #[test]
    fn denials_are_built_per_request() {
        let outcome = Outcome::denied(DenyReason::BadRequest);
        let options = ResponseOptions {
            dynamic_metadata: false,
        };
        assert!(matches!(
            answer(&outcome, &request(&[]), options),
            Answer::Message(_)
        ));
    }

    #[test]
    fn an_allow_with_a_budget_is_answered_for_itself_and_leaves_the_kept_answer_alone() {
        let options = ResponseOptions {
            dynamic_metadata: false,
        };
        let outcome = allowed();
        let Answer::Encoded(kept) = answer(&outcome, &request(&[]), options) else {
            panic!("pre-encoded");
        };
        // The same cached decision, on a request that spent from a limit.
        let with_budget = Outcome {
            budget: Some(crate::limits::Budget {
                limit: "payments-reads".into(),
                rate: crate::limits::Rate::parse("200/s").unwrap(),
                remaining: 3,
                reset: 1,
            }),
            ..outcome.clone()
        };
        let Answer::Message(m) = answer(&with_budget, &request(&[]), options) else {
            panic!("a budget is per request: never the kept bytes");
        };
        let Some(HttpResponse::OkResponse(ok)) = &m.http_response else {
            panic!("{m:?}");
        };
        assert_eq!(ok.response_headers_to_add.len(), 2, "{ok:?}");
        // The kept answer never learned the budget.
        let Answer::Encoded(again) = answer(&outcome, &request(&[]), options) else {
            panic!("still pre-encoded");
        };
        assert!(Arc::ptr_eq(&kept, &again));
        let decoded = Answer::Encoded(again).into_message().unwrap();
        let Some(HttpResponse::OkResponse(ok)) = &decoded.http_response else {
            panic!("{decoded:?}");
        };
        assert!(ok.response_headers_to_add.is_empty(), "{ok:?}");
    }
}
