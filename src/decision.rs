//! The answer to a check, and how each kind of denial maps to an HTTP status.

use std::sync::{Arc, OnceLock};

use crate::limits::{LimitHit, RateLimited};
use crate::principal::actor::Delegation;
use crate::principal::PrincipalKind;

pub mod scopes;
pub use scopes::{CarriedScopes, MAX_SCOPES, MAX_SCOPE_BYTES};

/// The outcome of a check: what Envoy is told to do with the request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Let the request through, with identity headers for the upstream.
    Allow(Allowed),
    /// Answer the client directly with 400, 401, 403 or 429.
    Deny(Denied),
}

/// An allowed request: who called and which rule let them.
#[derive(Debug, Clone, PartialEq)]
pub struct Allowed {
    /// The caller's principal id (token subject or SPIFFE ID); empty for an anonymous
    /// caller that a rule allowed explicitly.
    pub principal: String,
    /// The caller's kind; `None` for an anonymous caller.
    pub kind: Option<PrincipalKind>,
    /// The actors calling for the principal when its token is delegated (RFC 8693
    /// `act`), outermost first; the outermost goes upstream as `x-hopwarden-actor`.
    pub actors: Option<Arc<Delegation>>,
    /// The id of the API key that identified the caller, if one did (never its secret).
    pub api_key: Option<Arc<str>>,
    /// The scopes the caller's token or API key carried, bounded for the log; `None`
    /// when no credential that carries scopes identified it (mTLS peer alone, anonymous).
    pub scopes: Option<CarriedScopes>,
    /// The allow rule that matched (`dry-run` when only dry-run let it through).
    pub rule: Arc<str>,
    /// Set when enforcement would have denied the request but a `mode: dry-run`
    /// policy or rule let it through.
    pub dry_run: Option<WouldDeny>,
    /// The rate limits the request counts against; the engine spends from them on
    /// every allow, cached or not.
    pub limits: Vec<LimitHit>,
    /// The answer the transport encoded for this decision, kept so a cached decision
    /// is encoded once rather than on every hit (see `answer` in grpc/check.rs).
    pub answer: AnswerMemo,
}

/// Bytes the transport keeps with a decision: opaque here, set once, and no part of
/// what the decision is (equality ignores it; a clone starts empty, since a clone may
/// be changed into another decision).
#[derive(Default)]
pub struct AnswerMemo(OnceLock<Arc<[u8]>>);

impl AnswerMemo {
    /// The kept bytes, made by `make` the first time.
    pub fn get_or_init(&self, make: impl FnOnce() -> Arc<[u8]>) -> Arc<[u8]> {
        self.0.get_or_init(make).clone()
    }
}

impl Clone for AnswerMemo {
    fn clone(&self) -> Self {
        AnswerMemo::default()
    }
}

impl PartialEq for AnswerMemo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for AnswerMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "AnswerMemo(set)"
        } else {
            "AnswerMemo(empty)"
        })
    }
}

/// A denial that dry-run mode turned into an allow.
#[derive(Debug, Clone, PartialEq)]
pub struct WouldDeny {
    /// Why enforcement would have denied.
    pub reason: DenyReason,
    /// The rule that would have denied, if one did.
    pub rule: Option<Arc<str>>,
}

impl WouldDeny {
    /// The `x-hopwarden-dry-run` header value, e.g. `would-deny; reason=deny_rule; rule=x`.
    pub fn header(&self) -> String {
        match &self.rule {
            Some(rule) => format!("would-deny; reason={}; rule={rule}", self.reason.as_str()),
            None => format!("would-deny; reason={}", self.reason.as_str()),
        }
    }
}

impl Allowed {
    /// The kind as headers and logs show it: `service`, `user` or `anonymous`.
    pub fn kind_str(&self) -> &'static str {
        self.kind.map_or("anonymous", PrincipalKind::as_str)
    }

    /// The outermost actor's id when the token is delegated.
    pub fn actor(&self) -> Option<&str> {
        self.actors.as_deref().map(|d| d.actor().sub.as_str())
    }
}

/// A denied request.
#[derive(Debug, Clone, PartialEq)]
pub struct Denied {
    /// Why; decides the status, the `www-authenticate` header and the log line.
    pub reason: DenyReason,
    /// The deny rule that matched, when one did.
    pub rule: Option<Arc<str>>,
    /// The caller, when one was identified.
    pub principal: Option<String>,
    /// The caller's kind, when one was identified.
    pub kind: Option<PrincipalKind>,
    /// The actors calling for the principal, when its token is delegated.
    pub actors: Option<Arc<Delegation>>,
    /// The scopes the caller's verified token or API key carried, bounded for the log.
    pub scopes: Option<CarriedScopes>,
}

/// Why a request was denied. The variant names are what logs and metrics show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// No service could be resolved for the request; the detail says why.
    UnknownService(&'static str),
    /// The service has no policy file: default deny.
    NoPolicy,
    /// The request cannot be read as rules read it: a non-canonical path, a path with
    /// `#`, a method that is not upper-case, an unknown hop.
    BadRequest,
    /// No credential at all, and no rule allows anonymous callers.
    MissingCredential,
    /// The bearer token is malformed, unverifiable, expired or for another issuer.
    InvalidToken(&'static str),
    /// The token is valid but not for this service (`aud`).
    WrongAudience,
    /// An allow rule matched except for these scopes.
    InsufficientScope(Vec<String>),
    /// A deny rule matched.
    DenyRule,
    /// No allow rule matched: default deny.
    NoMatchingRule,
    /// The policy allowed the request but a rate limit's budget is spent.
    RateLimited(RateLimited),
}

/// The HTTP status a denial answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyStatus {
    /// 400: the request itself is malformed; no rule was read.
    BadRequest,
    /// 401: the caller must present (valid) credentials.
    Unauthorized,
    /// 403: the caller is known but not permitted.
    Forbidden,
    /// 429: permitted, but over a rate limit.
    TooManyRequests,
}

impl DenyStatus {
    /// The numeric HTTP status code.
    pub fn code(self) -> u16 {
        match self {
            DenyStatus::BadRequest => 400,
            DenyStatus::Unauthorized => 401,
            DenyStatus::Forbidden => 403,
            DenyStatus::TooManyRequests => 429,
        }
    }
}

impl DenyReason {
    /// A short, stable name for logs and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            DenyReason::UnknownService(_) => "unknown_service",
            DenyReason::NoPolicy => "no_policy",
            DenyReason::BadRequest => "bad_request",
            DenyReason::MissingCredential => "missing_credential",
            DenyReason::InvalidToken(_) => "invalid_token",
            DenyReason::WrongAudience => "wrong_audience",
            DenyReason::InsufficientScope(_) => "insufficient_scope",
            DenyReason::DenyRule => "deny_rule",
            DenyReason::NoMatchingRule => "no_matching_rule",
            DenyReason::RateLimited(_) => "rate_limited",
        }
    }

    /// The detail behind the reason, for the decision log only (never sent to the client).
    /// For `rate_limited`, the limit's id.
    pub fn detail(&self) -> Option<&str> {
        match self {
            DenyReason::InvalidToken(why) | DenyReason::UnknownService(why) => Some(why),
            DenyReason::RateLimited(limited) => Some(&limited.limit),
            _ => None,
        }
    }

    /// 400 for a request no rule can read, 401 for credential problems, 403 for
    /// everything the policy refused.
    pub fn status(&self) -> DenyStatus {
        match self {
            DenyReason::BadRequest => DenyStatus::BadRequest,
            DenyReason::MissingCredential
            | DenyReason::InvalidToken(_)
            | DenyReason::WrongAudience => DenyStatus::Unauthorized,
            DenyReason::RateLimited(_) => DenyStatus::TooManyRequests,
            _ => DenyStatus::Forbidden,
        }
    }

    /// The `www-authenticate` challenge (RFC 6750 section 3), when one applies.
    pub fn www_authenticate(&self) -> Option<String> {
        match self {
            DenyReason::MissingCredential
            | DenyReason::InvalidToken(_)
            | DenyReason::WrongAudience => Some(r#"Bearer error="invalid_token""#.to_string()),
            DenyReason::InsufficientScope(scopes) => Some(format!(
                r#"Bearer error="insufficient_scope", scope="{}""#,
                scopes.join(" ")
            )),
            _ => None,
        }
    }

    /// The short JSON body sent to the client: generic on purpose, so a denial never
    /// reveals policy contents. Details go to the decision log.
    pub fn body(&self) -> &'static str {
        match self {
            DenyReason::MissingCredential
            | DenyReason::InvalidToken(_)
            | DenyReason::WrongAudience => {
                r#"{"error":"unauthenticated","message":"missing or invalid credentials"}"#
            }
            DenyReason::InsufficientScope(_) => {
                r#"{"error":"insufficient_scope","message":"the token lacks a required scope"}"#
            }
            DenyReason::BadRequest => r#"{"error":"bad_request","message":"request not allowed"}"#,
            DenyReason::RateLimited(_) => {
                r#"{"error":"rate_limited","message":"too many requests; retry later"}"#
            }
            _ => r#"{"error":"forbidden","message":"access denied"}"#,
        }
    }
}

impl DenyReason {
    /// Response headers besides the challenge: for a 429, `retry-after` (whole
    /// seconds) and the `ratelimit-policy` / `ratelimit` fields of
    /// draft-ietf-httpapi-ratelimit-headers.
    pub fn extra_headers(&self) -> Vec<(&'static str, String)> {
        match self {
            DenyReason::RateLimited(limited) => vec![
                ("retry-after", limited.retry_after.to_string()),
                ("ratelimit-policy", limited.policy_field()),
                ("ratelimit", limited.field()),
            ],
            _ => Vec::new(),
        }
    }
}

impl Decision {
    /// The HTTP status Envoy answers with: 200 (forwarded upstream), 400, 401, 403 or 429.
    pub fn http_status(&self) -> u16 {
        match self {
            Decision::Allow(_) => 200,
            Decision::Deny(d) => d.reason.status().code(),
        }
    }

    /// `allow` or `deny`, for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Allow(_) => "allow",
            Decision::Deny(_) => "deny",
        }
    }

    /// The rule that decided, if any.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Decision::Allow(a) => Some(&a.rule),
            Decision::Deny(d) => d.rule.as_deref(),
        }
    }

    /// A denial with no rule and no known caller.
    pub fn deny(reason: DenyReason) -> Self {
        Decision::Deny(Denied {
            reason,
            rule: None,
            principal: None,
            kind: None,
            actors: None,
            scopes: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_challenges() {
        let cases: &[(DenyReason, u16, Option<&str>)] = &[
            (
                DenyReason::MissingCredential,
                401,
                Some(r#"Bearer error="invalid_token""#),
            ),
            (
                DenyReason::InvalidToken("expired"),
                401,
                Some(r#"Bearer error="invalid_token""#),
            ),
            (
                DenyReason::WrongAudience,
                401,
                Some(r#"Bearer error="invalid_token""#),
            ),
            (
                DenyReason::InsufficientScope(vec!["a.read".into(), "b".into()]),
                403,
                Some(r#"Bearer error="insufficient_scope", scope="a.read b""#),
            ),
            (DenyReason::DenyRule, 403, None),
            (DenyReason::NoMatchingRule, 403, None),
            (DenyReason::NoPolicy, 403, None),
            (DenyReason::UnknownService("x"), 403, None),
            (DenyReason::BadRequest, 400, None),
            (
                DenyReason::RateLimited(RateLimited {
                    limit: "reads".into(),
                    rate: crate::limits::Rate::parse("5/m").unwrap(),
                    retry_after: 12,
                }),
                429,
                None,
            ),
        ];
        for (reason, code, challenge) in cases {
            assert_eq!(reason.status().code(), *code, "{reason:?}");
            assert_eq!(
                reason.www_authenticate().as_deref(),
                *challenge,
                "{reason:?}"
            );
            let body: serde_json::Value = serde_json::from_str(reason.body()).unwrap();
            assert!(body["error"].is_string());
            let extra = reason.extra_headers();
            if *code == 429 {
                assert_eq!(body["error"], "rate_limited");
                assert_eq!(reason.detail(), Some("reads"));
                let want = [
                    ("retry-after", "12".to_string()),
                    ("ratelimit-policy", "\"reads\";q=5;w=60".to_string()),
                    ("ratelimit", "\"reads\";r=0;t=12".to_string()),
                ];
                assert_eq!(extra, want);
            } else {
                assert!(extra.is_empty(), "{reason:?}");
            }
        }
    }

    #[test]
    fn names_bodies_and_details() {
        let limited = DenyReason::RateLimited(RateLimited {
            limit: "reads".into(),
            rate: crate::limits::Rate::parse("5/m").unwrap(),
            retry_after: 12,
        });
        // (reason, name in logs and metrics, the body's "error", the log's detail)
        let cases: &[(DenyReason, &str, &str, Option<&str>)] = &[
            (
                DenyReason::UnknownService("no host"),
                "unknown_service",
                "forbidden",
                Some("no host"),
            ),
            (DenyReason::NoPolicy, "no_policy", "forbidden", None),
            (DenyReason::BadRequest, "bad_request", "bad_request", None),
            (
                DenyReason::MissingCredential,
                "missing_credential",
                "unauthenticated",
                None,
            ),
            (
                DenyReason::InvalidToken("expired"),
                "invalid_token",
                "unauthenticated",
                Some("expired"),
            ),
            (
                DenyReason::WrongAudience,
                "wrong_audience",
                "unauthenticated",
                None,
            ),
            (
                DenyReason::InsufficientScope(vec!["a".into()]),
                "insufficient_scope",
                "insufficient_scope",
                None,
            ),
            (DenyReason::DenyRule, "deny_rule", "forbidden", None),
            (
                DenyReason::NoMatchingRule,
                "no_matching_rule",
                "forbidden",
                None,
            ),
            (limited, "rate_limited", "rate_limited", Some("reads")),
        ];
        for (reason, name, error, detail) in cases {
            assert_eq!(reason.as_str(), *name);
            let body: serde_json::Value = serde_json::from_str(reason.body()).unwrap();
            assert_eq!(body["error"], *error, "{reason:?}");
            assert!(body["message"].is_string(), "{reason:?}");
            assert_eq!(reason.detail(), *detail, "{reason:?}");
            let decision = Decision::deny(reason.clone());
            assert_eq!(decision.http_status(), reason.status().code());
            assert_eq!((decision.as_str(), decision.rule()), ("deny", None));
        }
    }

    #[test]
    fn allows_and_dry_run_headers() {
        let allowed = Allowed {
            principal: "spiffe://td/ns/a/sa/b".into(),
            kind: Some(PrincipalKind::Service),
            rule: Arc::from("reads"),
            dry_run: None,
            limits: Vec::new(),
            actors: None,
            api_key: None,
            scopes: None,
            answer: AnswerMemo::default(),
        };
        assert_eq!(allowed.kind_str(), "service");
        let anonymous = Allowed {
            kind: None,
            ..allowed.clone()
        };
        assert_eq!(anonymous.kind_str(), "anonymous");
        let allow = Decision::Allow(allowed);
        assert_eq!(
            (allow.http_status(), allow.as_str(), allow.rule()),
            (200, "allow", Some("reads"))
        );
        let deny = Decision::Deny(Denied {
            reason: DenyReason::DenyRule,
            rule: Some(Arc::from("no-admin")),
            principal: None,
            kind: None,
            actors: None,
            scopes: None,
        });
        assert_eq!((deny.http_status(), deny.rule()), (403, Some("no-admin")));
        let by_rule = WouldDeny {
            reason: DenyReason::DenyRule,
            rule: Some(Arc::from("no-admin")),
        };
        assert_eq!(
            by_rule.header(),
            "would-deny; reason=deny_rule; rule=no-admin"
        );
        let by_default = WouldDeny {
            reason: DenyReason::NoMatchingRule,
            rule: None,
        };
        assert_eq!(by_default.header(), "would-deny; reason=no_matching_rule");
    }

    #[test]
    fn an_answer_is_made_once_and_is_no_part_of_the_decision() {
        let memo = AnswerMemo::default();
        assert_eq!(format!("{memo:?}"), "AnswerMemo(empty)");
        let first = memo.get_or_init(|| Arc::from(&b"answer"[..]));
        let again = memo.get_or_init(|| panic!("made twice"));
        assert_eq!(&*first, b"answer");
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(format!("{memo:?}"), "AnswerMemo(set)");
        // A clone starts empty (it may be changed into another decision), and
        // equality ignores the memo.
        let clone = memo.clone();
        assert_eq!(format!("{clone:?}"), "AnswerMemo(empty)");
        assert_eq!(clone, memo);
    }
}
