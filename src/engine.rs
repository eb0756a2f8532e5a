//! The request path: resolve -> cache -> authn -> policy -> decision.
//!
//! ```text
//! AuthzRequest -> service + hop -> decision cache -> credential -> rules -> Decision
//! ```
//! A deny is a normal answer; `Err` is only for server faults (keys never loaded),
//! which the gRPC edge turns into UNAVAILABLE so Envoy's `failure_mode_allow` decides.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::authn::jwt::{now_secs, TokenError};
use crate::authn::{Authenticator, Credential};
use crate::cache::{DecisionCache, Fingerprint};
use crate::decision::{Allowed, Decision, Denied, DenyReason};
use crate::policy::{EvalInput, Evaluation, PolicySet, ServicePolicy};
use crate::principal::Principal;
use crate::request::{Action, AuthzRequest, Hop};
use crate::resolve::ServiceResolver;

/// A compiled policy set and the generation it was published as.
pub struct Policies {
    /// The rules.
    pub set: PolicySet,
    /// Increases with every successful reload; part of every decision cache key.
    pub generation: u64,
}

/// A server fault: the check could not be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// A dependency is not ready (an issuer's keys were never loaded).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// The answer to one check and the facts behind it, for logs and metadata.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The decision.
    pub decision: Arc<Decision>,
    /// The resolved service, if any.
    pub service: Option<String>,
    /// The hop, if it was valid.
    pub hop: Option<Hop>,
    /// Whether the decision came from the cache.
    pub cached: bool,
}

/// Evaluates checks against the current policy set.
pub struct Engine {
    policies: ArcSwap<Policies>,
    resolver: ServiceResolver,
    authn: Authenticator,
    decisions: DecisionCache,
}

impl Engine {
    /// An engine over a policy set (generation 1), resolver, authenticator and cache.
    pub fn new(
        set: PolicySet,
        resolver: ServiceResolver,
        authn: Authenticator,
        decisions: DecisionCache,
    ) -> Self {
        Engine {
            policies: ArcSwap::from_pointee(Policies { set, generation: 1 }),
            resolver,
            authn,
            decisions,
        }
    }

    /// Publishes a new policy set atomically; returns its generation. In-flight checks
    /// finish on the set they started with.
    pub fn publish(&self, set: PolicySet) -> u64 {
        let generation = self.policies.load().generation + 1;
        self.policies.store(Arc::new(Policies { set, generation }));
        generation
    }

    /// The current policy set.
    pub fn policies(&self) -> Arc<Policies> {
        self.policies.load_full()
    }

    /// The authenticator (for key refresh and readiness).
    pub fn authenticator(&self) -> &Authenticator {
        &self.authn
    }

    /// Answers a check and writes its decision log line.
    pub async fn check(&self, req: &AuthzRequest) -> Result<Outcome, EngineError> {
        let started = Instant::now();
        let result = self.decide(req).await;
        log_decision(req, &result, started);
        result
    }

    async fn decide(&self, req: &AuthzRequest) -> Result<Outcome, EngineError> {
        let now = now_secs();
        let mut outcome = Outcome {
            decision: Arc::new(Decision::deny(DenyReason::BadRequest)),
            service: None,
            hop: None,
            cached: false,
        };
        let Ok(hop) = req.hop() else {
            return Ok(outcome);
        };
        outcome.hop = Some(hop);
        let policies = self.policies.load();
        let Some(service) = self.resolver.resolve(req) else {
            outcome.decision = Arc::new(Decision::deny(DenyReason::UnknownService));
            return Ok(outcome);
        };
        outcome.service = Some(service.to_string());
        let Some(policy) = policies.set.get(service) else {
            outcome.decision = Arc::new(Decision::deny(DenyReason::NoPolicy));
            return Ok(outcome);
        };
        let Ok(action) = req.action() else {
            return Ok(outcome);
        };
        let key = decision_key(policies.generation, policy, hop, &action, req);
        if let Some(decision) = self.decisions.get(&key, now) {
            outcome.decision = decision;
            outcome.cached = true;
            return Ok(outcome);
        }
        let (decision, deadline) = self.evaluate(policy, hop, &action, req, now).await?;
        let decision = Arc::new(decision);
        self.decisions.insert(key, decision.clone(), deadline, now);
        outcome.decision = decision;
        Ok(outcome)
    }

    /// Authenticates and applies the service's rules; returns the decision and the
    /// token `exp` it rests on.
    async fn evaluate(
        &self,
        policy: &ServicePolicy,
        hop: Hop,
        action: &Action,
        req: &AuthzRequest,
        now: u64,
    ) -> Result<(Decision, Option<u64>), EngineError> {
        let (principal, deadline) = match self.authn.authenticate(req, now).await {
            Ok(Credential::Token(token, peer)) => {
                // Audience on every hop: a token minted for another service is not a
                // credential here, whatever else it says.
                if !token.is_for(policy.audiences()) {
                    let denied = Denied {
                        reason: DenyReason::WrongAudience,
                        rule: None,
                        principal: Some(token.subject.clone()),
                    };
                    return Ok((Decision::Deny(denied), token.exp));
                }
                (Some(token.principal(peer)), token.exp)
            }
            Ok(Credential::Peer(peer)) => (Some(Principal::from_peer(peer)), None),
            Ok(Credential::Anonymous) => (None, None),
            Err(TokenError::KeysUnavailable) => {
                return Err(EngineError::Unavailable(
                    "keys for the token's issuer are not loaded".into(),
                ))
            }
            Err(e) => return Ok((Decision::deny(DenyReason::InvalidToken(e.as_str())), None)),
        };
        let input = EvalInput {
            principal: principal.as_ref(),
            hop,
            action,
            headers: &req.headers,
        };
        let caller = principal.as_ref().map(|p| p.id.clone());
        let denied = |reason, rule| {
            Decision::Deny(Denied {
                reason,
                rule,
                principal: caller.clone(),
            })
        };
        let decision = match policy.evaluate(&input) {
            Evaluation::Allow { rule } => match &principal {
                Some(p) => Decision::Allow(Allowed {
                    principal: p.id.clone(),
                    kind: Some(p.kind),
                    rule,
                }),
                // A rule allowed an anonymous caller explicitly (`from.anonymous`).
                None => Decision::Allow(Allowed {
                    principal: String::new(),
                    kind: None,
                    rule,
                }),
            },
            Evaluation::Deny { rule } => denied(DenyReason::DenyRule, Some(rule)),
            Evaluation::InsufficientScope { rule, required } => {
                denied(DenyReason::InsufficientScope(required), Some(rule))
            }
            Evaluation::NoMatch if principal.is_none() => {
                Decision::deny(DenyReason::MissingCredential)
            }
            Evaluation::NoMatch => denied(DenyReason::NoMatchingRule, None),
        };
        Ok((decision, deadline))
    }
}

/// The decision cache key: a digest of every input a rule of this service can read.
///
/// Generation (a reload changes rules), service, hop, method, canonical path, gRPC
/// method, the whole `authorization` header (the token decides principal, scopes and
/// claims), the mTLS peer, and the values of the headers named in `when.headers`.
/// Each field is length-prefixed so no two different inputs share an encoding.
fn decision_key(
    generation: u64,
    policy: &ServicePolicy,
    hop: Hop,
    action: &Action,
    req: &AuthzRequest,
) -> Fingerprint {
    let mut h = Sha256::new();
    let mut field = |bytes: Option<&[u8]>| match bytes {
        None => h.update([0u8]),
        Some(b) => {
            h.update([1u8]);
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        }
    };
    field(Some(&generation.to_le_bytes()));
    field(Some(policy.service().as_bytes()));
    field(Some(hop.as_str().as_bytes()));
    field(Some(action.method.as_bytes()));
    field(Some(action.path.as_bytes()));
    field(action.grpc.as_deref().map(str::as_bytes));
    field(req.header("authorization").map(str::as_bytes));
    field(req.source_principal.as_deref().map(str::as_bytes));
    for name in policy.header_inputs() {
        field(req.header(name).map(str::as_bytes));
    }
    h.finalize().into()
}

/// One structured line per decision. Never the token or a header value: the
/// principal id, rule id and reason are enough to explain every answer.
fn log_decision(req: &AuthzRequest, result: &Result<Outcome, EngineError>, started: Instant) {
    let latency_us = started.elapsed().as_micros() as u64;
    let (method, path) = match req.action() {
        Ok(a) => (a.method, a.path),
        // A non-canonical path is logged as a marker, not echoed: it is attacker input.
        Err(_) => (req.method.clone(), "<non-canonical>".to_string()),
    };
    match result {
        Ok(o) => {
            let (principal, kind, rule, reason, detail, status) = match &*o.decision {
                Decision::Allow(a) => (
                    Some(a.principal.as_str()),
                    Some(a.kind.map_or("anonymous", |k| k.as_str())),
                    Some(&*a.rule),
                    None,
                    None,
                    200,
                ),
                Decision::Deny(d) => (
                    d.principal.as_deref(),
                    None,
                    d.rule.as_deref(),
                    Some(d.reason.as_str()),
                    d.reason.detail(),
                    d.reason.status().code(),
                ),
            };
            tracing::info!(
                target: "hopwarden::decision",
                service = o.service.as_deref(),
                hop = o.hop.map(Hop::as_str),
                principal,
                kind,
                peer = req.source_principal.as_deref(),
                method = %method,
                path = %path,
                decision = o.decision.as_str(),
                status,
                rule,
                reason,
                detail,
                cached = o.cached,
                latency_us,
                request_id = req.header("x-request-id"),
                "decision"
            );
        }
        Err(e) => tracing::warn!(
            target: "hopwarden::decision",
            service = req.service.as_deref(),
            method = %method,
            path = %path,
            decision = "error",
            error = %e,
            latency_us,
            request_id = req.header("x-request-id"),
            "decision"
        ),
    }
}
