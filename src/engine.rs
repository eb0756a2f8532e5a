//! The request path: resolve -> cache -> authn -> policy -> limits -> decision.
//!
//! ```text
//! AuthzRequest -> service + hop -> decision cache -> credential -> rules -> limits -> Decision
//! ```
//! The limits stage runs on cache hits too (a cached allow still spends budget) and
//! its 429s are never cached.
//! A deny is a normal answer; `Err` is only for server faults (keys never loaded),
//! which the gRPC edge turns into UNAVAILABLE so Envoy's `failure_mode_allow` decides.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::Instrument;

use crate::authn::jwt::{unix_now, TokenError, VerifiedToken};
use crate::authn::{Authenticator, Credential};
use crate::cache::{decision_key, DecisionCache};
use crate::decision::{Allowed, CarriedScopes, Decision, Denied, DenyReason, WouldDeny};
use crate::decision_log::{DecisionLog, DecisionRecord, DryRunRecord, Timestamp};
use crate::limits::{Buckets, Budget};
use crate::policy::{EvalInput, Evaluation, PolicySet, ServicePolicy};
use crate::principal::actor::Delegation;
use crate::principal::Principal;
use crate::request::{Action, AuthzRequest, Hop};
use crate::resolve::ServiceResolver;
use crate::telemetry::{CheckLabels, Metrics};

/// A compiled policy set and the generation it was published as.
pub struct Policies {
    /// The rules.
    pub set: PolicySet,
    /// Increases with every successful reload (metrics and logs; the decision cache
    /// keys on each service policy's own revision instead).
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
    /// The canonical action, if the path was canonical.
    pub action: Option<Action>,
    /// Whether the decision came from the cache.
    pub cached: bool,
    /// What this allowed request left of its tightest rate limit, with
    /// `rate_limits.headers_on_allow` (per request: never part of a cached decision).
    pub budget: Option<Budget>,
}

impl Outcome {
    /// An allow of `principal` (a service) by rule `payments-read` for `ledger`, for
    /// the protocol edges' tests.
    #[cfg(test)]
    pub fn allowed_for_tests(principal: &str) -> Self {
        Outcome {
            decision: Arc::new(Decision::Allow(Allowed {
                principal: principal.into(),
                kind: Some(crate::principal::PrincipalKind::Service),
                actors: None,
                api_key: None,
                scopes: None,
                rule: Arc::from("payments-read"),
                dry_run: None,
                limits: Vec::new(),
                answer: Default::default(),
            })),
            service: Some("ledger".into()),
            hop: None,
            action: None,
            cached: true,
            budget: None,
        }
    }

    /// A denial before anything about the request was known.
    pub fn denied(reason: DenyReason) -> Self {
        Outcome {
            decision: Arc::new(Decision::deny(reason)),
            service: None,
            hop: None,
            action: None,
            cached: false,
            budget: None,
        }
    }
}

/// Evaluates checks against the current policy set.
pub struct Engine {
    policies: ArcSwap<Policies>,
    resolver: ServiceResolver,
    authn: Authenticator,
    decisions: DecisionCache,
    metrics: Arc<Metrics>,
    log: DecisionLog,
    buckets: Arc<Buckets>,
    budget_headers: bool,
    traces: Option<crate::telemetry::otlp::CheckTracer>,
}

impl Engine {
    /// An engine over a policy set (generation 1), resolver, authenticator and cache.
    pub fn new(
        set: PolicySet,
        resolver: ServiceResolver,
        authn: Authenticator,
        decisions: DecisionCache,
        metrics: Arc<Metrics>,
        log: DecisionLog,
    ) -> Self {
        metrics.set_generation(1);
        metrics.set_named_principals(set.named_principals());
        Engine {
            policies: ArcSwap::from_pointee(Policies { set, generation: 1 }),
            resolver,
            authn,
            decisions,
            metrics,
            log,
            buckets: Arc::new(Buckets::default()),
            budget_headers: false,
            traces: None,
        }
    }

    /// Bounds the rate limits' bucket table to about `max_buckets` (default
    /// [`crate::limits::bucket::DEFAULT_MAX_BUCKETS`]).
    pub fn with_max_buckets(mut self, max_buckets: usize) -> Self {
        self.buckets = Arc::new(Buckets::new(max_buckets));
        self
    }

    /// Decides with `buckets` (e.g. a table a shared store syncs, `limits/redis.rs`).
    pub fn with_buckets(mut self, buckets: Arc<Buckets>) -> Self {
        self.buckets = buckets;
        self
    }

    /// Reports what an allowed request left of its tightest rate limit in
    /// [`Outcome::budget`] (`rate_limits.headers_on_allow`).
    pub fn with_budget_headers(mut self, on: bool) -> Self {
        self.budget_headers = on;
        self
    }

    /// Exports a span per sampled check (`tracing.otlp`).
    pub fn with_tracing(mut self, tracer: crate::telemetry::otlp::CheckTracer) -> Self {
        self.traces = Some(tracer);
        self
    }

    /// Exports the check spans still queued (`tracing.otlp`), bounded by a short
    /// timeout; for a graceful shutdown, after the last check.
    pub async fn flush_traces(&self) {
        if let Some(tracer) = &self.traces {
            tracer.flush().await;
        }
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Publishes a new policy set atomically; returns its generation. In-flight checks
    /// finish on the set they started with.
    pub fn publish(&self, set: PolicySet) -> u64 {
        let generation = self.policies.load().generation + 1;
        self.metrics.set_named_principals(set.named_principals());
        self.policies.store(Arc::new(Policies { set, generation }));
        self.metrics.reload(Some(generation));
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

    /// Answers a check and writes its decision log line, inside one `check` span
    /// whose fields are declared up front and filled in once known.
    pub async fn check(&self, req: &AuthzRequest) -> Result<Outcome, EngineError> {
        let span = tracing::info_span!(
            "check",
            service = tracing::field::Empty,
            principal = tracing::field::Empty,
            decision = tracing::field::Empty,
            rule = tracing::field::Empty,
        );
        let started = Instant::now();
        let trace = self.traces.as_ref().and_then(|t| t.begin(req));
        let result = self.decide(req).instrument(span.clone()).await;
        if let (Some(tracer), Some(trace)) = (&self.traces, trace) {
            tracer.end(trace, &result);
        }
        if let Ok(o) = &result {
            span.record("service", o.service.as_deref());
            span.record("decision", o.decision.as_str());
            span.record("rule", o.decision.rule());
            if let Decision::Allow(a) = &*o.decision {
                span.record("principal", a.principal.as_str());
            }
        }
        let elapsed = started.elapsed();
        span.in_scope(|| self.record(req, &result, elapsed));
        result
    }

    async fn decide(&self, req: &AuthzRequest) -> Result<Outcome, EngineError> {
        let now = unix_now();
        let mut outcome = Outcome::denied(DenyReason::BadRequest);
        let Ok(hop) = self.resolver.hop(req) else {
            return Ok(outcome);
        };
        outcome.hop = Some(hop);
        // An owned snapshot: the check may await (JWKS refetch) and must not pin a
        // guard, and it finishes on the set it started with even if a reload lands.
        let policies = self.policies.load_full();
        let service = match self.resolver.resolve(req, hop) {
            Ok((service, _)) => service,
            Err(why) => {
                let reason = DenyReason::UnknownService(why.detail());
                outcome.decision = Arc::new(Decision::deny(reason));
                return Ok(outcome);
            }
        };
        outcome.service = Some(service.to_string());
        let Some(policy) = policies.set.get(&service) else {
            outcome.decision = Arc::new(Decision::deny(DenyReason::NoPolicy));
            return Ok(outcome);
        };
        let Ok(action) = req.action() else {
            return Ok(outcome);
        };
        // Read before the evaluation uses any key (see jwks.rs).
        let removals = self.authn.key_removals();
        // The policy's revision, not the set's generation: a reload that did not
        // change this service's policy keeps its cached decisions.
        let api_keys = self.authn.api_keys().cache_inputs();
        let key = decision_key(
            policy.revision(),
            removals,
            api_keys,
            policy,
            hop,
            &action,
            req,
        );
        let hit = self.decisions.get(&key, now);
        self.metrics.cache("decision", hit.is_some());
        if let Some(decision) = hit {
            (outcome.decision, outcome.budget) = self.spend(decision, policy);
            outcome.cached = true;
            outcome.action = Some(action);
            return Ok(outcome);
        }
        let (decision, deadline) = self.evaluate(policy, hop, &action, req, now).await?;
        let decision = Arc::new(decision);
        // The allow is cached, never the 429 its limits may turn it into.
        self.decisions.insert(key, decision.clone(), deadline, now);
        (outcome.decision, outcome.budget) = self.spend(decision, policy);
        outcome.action = Some(action);
        Ok(outcome)
    }

    /// The limits stage: an allow spends one request from each of its limits'
    /// buckets, or becomes a 429 when one is empty (and then spends nothing). In a
    /// dry-run policy the 429 is only recorded: the request goes through. With
    /// budget headers on, an allow also says what its tightest limit has left.
    fn spend(
        &self,
        decision: Arc<Decision>,
        policy: &ServicePolicy,
    ) -> (Arc<Decision>, Option<Budget>) {
        let Decision::Allow(allowed) = &*decision else {
            return (decision, None);
        };
        if allowed.limits.is_empty() {
            return (decision, None);
        }
        let limited = match self.buckets.spend_all(&allowed.limits, self.buckets.now()) {
            Ok(tightest) => {
                let budget = tightest
                    .filter(|_| self.budget_headers)
                    .and_then(|t| Budget::of(&allowed.limits, t));
                return (decision, budget);
            }
            Err(limited) => limited,
        };
        self.metrics.rate_limited(policy.service(), &limited.limit);
        if policy.is_dry_run() {
            let mut allowed = allowed.clone();
            allowed.dry_run = Some(WouldDeny {
                reason: DenyReason::RateLimited(limited),
                rule: None,
            });
            return (Arc::new(Decision::Allow(allowed)), None);
        }
        let denied = Arc::new(Decision::Deny(Denied {
            reason: DenyReason::RateLimited(limited),
            rule: Some(allowed.rule.clone()),
            principal: Some(allowed.principal.clone()).filter(|p| !p.is_empty()),
            kind: allowed.kind,
            actors: allowed.actors.clone(),
            scopes: allowed.scopes.clone(),
        }));
        (denied, None)
    }

    /// Authenticates and applies the service's rules; returns the decision and the
    /// token `exp` it rests on.
    async fn evaluate(
        &self,
        policy: &ServicePolicy,
        hop: Hop,
        action: &Action,
        req: &AuthzRequest,
        now: Duration,
    ) -> Result<(Decision, Option<Duration>), EngineError> {
        // An API key is looked for first, so a request with a key and a token is
        // refused rather than decided by whichever is read first.
        let authenticated = match self.authn.api_key(req, now) {
            Some(Ok(credential)) => Ok(credential),
            Some(Err(e)) => {
                let decision = Decision::deny(DenyReason::InvalidToken(e.as_str()));
                return Ok((dry_run(decision, None, policy.is_dry_run()), None));
            }
            None => self.authn.authenticate(req, now).await,
        };
        let (principal, deadline) = match authenticated {
            Ok(Credential::Token(token, peer)) => {
                // Audience on every hop: a token minted for another service is not a
                // credential here, whatever else it says.
                if !token.is_for(policy.audiences()) {
                    let denied = wrong_audience(&token);
                    let decision = dry_run(Decision::Deny(denied), None, policy.is_dry_run());
                    return Ok((decision, token.exp));
                }
                (Some(token.principal(peer)), token.exp)
            }
            Ok(Credential::Peer(peer)) => (Some(Principal::from_peer(peer)), None),
            // The cached decision never outlives the key's `expires`.
            Ok(Credential::ApiKey(entry, peer)) => {
                (Some(Principal::from_api_key(&entry, peer)), entry.expires)
            }
            Ok(Credential::Anonymous) => (None, None),
            Err(TokenError::KeysUnavailable) => {
                return Err(EngineError::Unavailable(
                    "keys for the token's issuer are not loaded".into(),
                ))
            }
            Err(e) => {
                let decision = Decision::deny(DenyReason::InvalidToken(e.as_str()));
                return Ok((dry_run(decision, None, policy.is_dry_run()), None));
            }
        };
        let input = EvalInput {
            principal: principal.as_ref(),
            hop,
            action,
            headers: &req.headers,
        };
        let verdict = policy.evaluate_traced(&input);
        let mut decision = to_decision(verdict.evaluation, principal.as_ref());
        if let Decision::Allow(allowed) = &mut decision {
            allowed.limits = policy.limits_for(&allowed.rule, &input);
        }
        Ok((
            dry_run(decision, verdict.would_deny, policy.is_dry_run()),
            deadline,
        ))
    }
}

/// A delegated caller's actors as the decision log lists them, outermost first.
fn actor_chain(actors: Option<&Delegation>) -> Option<Vec<Cow<'_, str>>> {
    actors.map(|d| {
        d.actors()
            .iter()
            .map(|a| Cow::from(a.sub.as_str()))
            .collect()
    })
}

/// A decision's carried scopes as the decision log writes them (borrowed: already
/// bounded when the decision was made), and whether they were truncated.
fn scopes_logged(scopes: Option<&CarriedScopes>) -> (Option<Cow<'_, [String]>>, bool) {
    match scopes {
        Some(s) => (Some(Cow::Borrowed(s.as_slice())), s.truncated()),
        None => (None, false),
    }
}

/// Applies dry-run: a `mode: dry-run` deny rule that matched (`would_deny`) is noted on
/// an allow; in a dry-run policy every denial becomes an allow that says what
/// enforcement would have done. The request goes through; the log and metrics tell.
fn dry_run(decision: Decision, would_deny: Option<Arc<str>>, policy_dry_run: bool) -> Decision {
    match decision {
        Decision::Allow(mut allowed) => {
            allowed.dry_run = would_deny.map(|rule| WouldDeny {
                reason: DenyReason::DenyRule,
                rule: Some(rule),
            });
            Decision::Allow(allowed)
        }
        Decision::Deny(denied) if policy_dry_run => {
            let (reason, rule) = match (denied.rule, would_deny) {
                (Some(rule), _) => (denied.reason, Some(rule)),
                (None, Some(rule)) => (DenyReason::DenyRule, Some(rule)),
                (None, None) => (denied.reason, None),
            };
            Decision::Allow(Allowed {
                kind: denied.kind,
                actors: denied.actors,
                principal: denied.principal.unwrap_or_default(),
                api_key: None,
                scopes: denied.scopes,
                rule: Arc::from("dry-run"),
                dry_run: Some(WouldDeny { reason, rule }),
                limits: Vec::new(),
                answer: Default::default(),
            })
        }
        deny => deny,
    }
}

/// The deny for a verified token whose audience does not name the service.
pub(crate) fn wrong_audience(token: &VerifiedToken) -> Denied {
    Denied {
        reason: DenyReason::WrongAudience,
        rule: None,
        principal: Some(token.subject.clone()),
        kind: Some(token.kind),
        actors: token.delegation.clone(),
        scopes: Some(CarriedScopes::new(&token.scopes)),
    }
}

/// The decision a policy evaluation gives a caller (`None`: anonymous).
///
/// Used by the engine and by offline tools (policy tests, explain), so they can never
/// disagree about statuses.
pub fn to_decision(evaluation: Evaluation, principal: Option<&Principal>) -> Decision {
    let caller = principal.map(|p| p.id.clone());
    let actors = principal.and_then(|p| p.delegation.clone());
    // Only a token or an API key carries scopes; an mTLS peer alone has none to log.
    let scopes = principal
        .filter(|p| p.has_token())
        .map(|p| CarriedScopes::new(&p.scopes));
    let denied = |reason, rule| {
        Decision::Deny(Denied {
            reason,
            rule,
            principal: caller.clone(),
            kind: principal.map(|p| p.kind),
            actors: actors.clone(),
            scopes: scopes.clone(),
        })
    };
    match evaluation {
        Evaluation::Allow { rule } => Decision::Allow(Allowed {
            // Empty principal: a rule allowed an anonymous caller explicitly.
            principal: caller.clone().unwrap_or_default(),
            kind: principal.map(|p| p.kind),
            actors,
            api_key: principal.and_then(|p| p.api_key.clone()),
            scopes,
            rule,
            dry_run: None,
            limits: Vec::new(),
            answer: Default::default(),
        }),
        // DESIGN: with no credential at all the answer is 401, whatever refused it.
        Evaluation::Deny { rule } if principal.is_none() => {
            denied(DenyReason::MissingCredential, Some(rule))
        }
        Evaluation::Deny { rule } => denied(DenyReason::DenyRule, Some(rule)),
        Evaluation::InsufficientScope { rule, required } => {
            denied(DenyReason::InsufficientScope(required), Some(rule))
        }
        Evaluation::NoMatch if principal.is_none() => Decision::deny(DenyReason::MissingCredential),
        Evaluation::NoMatch => denied(DenyReason::NoMatchingRule, None),
    }
}

impl Engine {
    /// Counts the check and writes its decision log line. Never the token or a
    /// header value: the principal id, rule id and reason explain every answer.
    fn record(&self, req: &AuthzRequest, result: &Result<Outcome, EngineError>, elapsed: Duration) {
        let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        // A non-canonical path is logged as a marker, not echoed: it is attacker input.
        let outcome = result.as_ref().ok();
        let action = outcome.and_then(|o| o.action.as_ref());
        let timestamp = Timestamp::now();
        // Borrowed throughout: the log writes the line before this returns.
        let mut record = DecisionRecord {
            timestamp: timestamp.as_str().into(),
            request_id: req.header("x-request-id").map(Cow::from),
            service: outcome.and_then(|o| o.service.as_deref()).map(Cow::from),
            hop: outcome.and_then(|o| o.hop).map(|h| h.as_str().into()),
            principal: None,
            kind: None,
            peer: req.source_principal.as_deref().map(Cow::from),
            actors: None,
            api_key: self.authn.api_keys().presented_id(req).map(Cow::from),
            scopes: None,
            scopes_truncated: false,
            method: action
                .map_or(req.method.as_str(), |a| a.method.as_str())
                .into(),
            path: action.map_or("<non-canonical>", |a| a.path.as_str()).into(),
            decision: "error".into(),
            status: 0,
            rule: None,
            reason: None,
            detail: None,
            dry_run: None,
            cached: outcome.is_some_and(|o| o.cached),
            latency_us,
        };
        // Label values must stay bounded: only services that have a policy.
        let known_service = record
            .service
            .as_deref()
            .filter(|s| self.policies.load().set.get(s).is_some());
        let (decision, reason) = match outcome.map(|o| &*o.decision) {
            Some(Decision::Allow(a)) => {
                record.principal = Some(a.principal.as_str().into());
                record.kind = Some(a.kind_str().into());
                record.actors = actor_chain(a.actors.as_deref());
                (record.scopes, record.scopes_truncated) = scopes_logged(a.scopes.as_ref());
                record.rule = Some(a.rule.as_ref().into());
                record.status = 200;
                if let Some(would) = &a.dry_run {
                    let rule = would.rule.as_deref().unwrap_or("default");
                    record.dry_run = Some(DryRunRecord {
                        rule: rule.into(),
                        reason: would.reason.as_str().into(),
                    });
                    if let Some(service) = known_service {
                        self.metrics.would_deny(service, rule);
                    }
                }
                ("allow", "none")
            }
            Some(Decision::Deny(d)) => {
                record.principal = d.principal.as_deref().map(Cow::from);
                record.actors = actor_chain(d.actors.as_deref());
                (record.scopes, record.scopes_truncated) = scopes_logged(d.scopes.as_ref());
                record.rule = d.rule.as_deref().map(Cow::from);
                record.reason = Some(d.reason.as_str().into());
                record.detail = d.reason.detail().map(Cow::from);
                record.status = d.reason.status().code();
                ("deny", d.reason.as_str())
            }
            None => ("error", "unavailable"),
        };
        record.decision = decision.into();
        self.metrics.check(
            CheckLabels {
                service: known_service.unwrap_or("unknown").to_string(),
                decision,
                reason,
            },
            elapsed.as_secs_f64(),
        );
        if let (Some(service), Some(principal)) = (known_service, &record.principal) {
            if decision != "error" {
                self.metrics.call(principal, service, decision);
            }
        }
        if let Err(e) = result {
            tracing::warn!(error = %e, service = record.service.as_deref(), "check failed");
        }
        self.log.write(&record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(reason: DenyReason, rule: Option<&str>) -> Decision {
        Decision::Deny(Denied {
            reason,
            rule: rule.map(Arc::from),
            principal: Some("partner:acme".into()),
            kind: None,
            actors: None,
            scopes: None,
        })
    }

    #[test]
    fn dry_run_turns_a_denial_into_an_allow_that_says_why() {
        // Enforced, a denial stays one.
        let enforced = denied(DenyReason::NoMatchingRule, None);
        assert_eq!(dry_run(enforced.clone(), None, false), enforced);
        // In a dry-run policy: (denial, dry-run deny rule that matched) -> what the
        // allow says enforcement would have done.
        let cases = [
            (
                denied(DenyReason::DenyRule, Some("no-admin")),
                None,
                DenyReason::DenyRule,
                Some("no-admin"),
            ),
            (
                denied(DenyReason::NoMatchingRule, None),
                Some("shadow"),
                DenyReason::DenyRule,
                Some("shadow"),
            ),
            (
                denied(DenyReason::NoMatchingRule, None),
                None,
                DenyReason::NoMatchingRule,
                None,
            ),
        ];
        for (decision, would_deny, reason, rule) in cases {
            let Decision::Allow(allowed) = dry_run(decision, would_deny.map(Arc::from), true)
            else {
                panic!("a dry-run denial must be let through");
            };
            assert_eq!(&*allowed.rule, "dry-run");
            assert_eq!(allowed.principal, "partner:acme");
            let want = WouldDeny {
                reason,
                rule: rule.map(Arc::from),
            };
            assert_eq!(allowed.dry_run, Some(want));
        }
    }

    #[test]
    fn with_no_credential_every_refusal_is_401() {
        let rule: Arc<str> = Arc::from("no-admin");
        let anonymous = to_decision(Evaluation::Deny { rule: rule.clone() }, None);
        assert_eq!(anonymous.http_status(), 401);
        let peer: crate::principal::SpiffeId = "spiffe://td/ns/a/sa/b".parse().unwrap();
        let caller = Principal::from_peer(peer);
        let known = to_decision(Evaluation::Deny { rule }, Some(&caller));
        assert_eq!(known.http_status(), 403);
        assert_eq!(known.rule(), Some("no-admin"));
        // No rule matched: 401 without a credential, 403 with one.
        let anonymous = to_decision(Evaluation::NoMatch, None);
        assert_eq!(anonymous.http_status(), 401);
        let known = to_decision(Evaluation::NoMatch, Some(&caller));
        assert_eq!(known.http_status(), 403);
    }

    #[test]
    fn decisions_carry_the_scopes_of_a_token_or_key_never_of_a_peer_alone() {
        let peer: crate::principal::SpiffeId = "spiffe://td/ns/a/sa/b".parse().unwrap();
        let by_peer = Principal::from_peer(peer);
        let mut by_token = by_peer.clone();
        by_token.issuer = Some("https://sts".into());
        by_token.scopes = vec!["ledger.read".into(), "ledger.write".into()];
        let mut by_key = by_peer.clone();
        by_key.api_key = Some(Arc::from("k1"));
        let carried = |d: &Decision| match d {
            Decision::Allow(a) => a.scopes.clone(),
            Decision::Deny(d) => d.scopes.clone(),
        };
        let want = Some(CarriedScopes::new(&by_token.scopes));
        let rule: Arc<str> = Arc::from("r");
        for evaluation in [
            Evaluation::Allow { rule: rule.clone() },
            Evaluation::Deny { rule: rule.clone() },
            Evaluation::NoMatch,
            Evaluation::InsufficientScope {
                rule: rule.clone(),
                required: vec!["ledger.admin".into()],
            },
        ] {
            let decision = to_decision(evaluation.clone(), Some(&by_token));
            assert_eq!(carried(&decision), want, "{evaluation:?}");
            // Dry-run lets the denial through and keeps what the caller carried.
            assert_eq!(carried(&dry_run(decision, None, true)), want);
            let decision = to_decision(evaluation.clone(), Some(&by_key));
            assert_eq!(carried(&decision), Some(CarriedScopes::default()));
            let decision = to_decision(evaluation.clone(), Some(&by_peer));
            assert_eq!(carried(&decision), None, "{evaluation:?}");
            assert_eq!(carried(&to_decision(evaluation, None)), None);
        }
    }
    #[test]
    fn the_log_lists_a_delegated_callers_actors_outermost_first() {
        use crate::principal::actor::Actor;
        let actor = |sub: &str| Actor {
            sub: sub.into(),
            iss: Some("https://sts".into()),
        };
        let chain = Delegation::new(vec![actor("customer-bff"), actor("web-gateway")]).unwrap();
        let want: Vec<Cow<'_, str>> = vec!["customer-bff".into(), "web-gateway".into()];
        assert_eq!(actor_chain(Some(&chain)), Some(want));
        assert_eq!(actor_chain(None), None);
    }

    #[test]
    fn the_log_writes_the_scopes_a_decision_carried_and_whether_they_were_cut() {
        let few: Vec<String> = vec!["ledger.read".into(), "ledger.write".into()];
        let carried = CarriedScopes::new(&few);
        assert_eq!(
            scopes_logged(Some(&carried)),
            (Some(Cow::Borrowed(&few[..])), false)
        );
        let many: Vec<String> = (0..40).map(|i| format!("s{i}")).collect();
        let carried = CarriedScopes::new(&many);
        let (logged, truncated) = scopes_logged(Some(&carried));
        assert_eq!(
            logged.as_deref(),
            Some(&many[..crate::decision::MAX_SCOPES])
        );
        assert!(truncated);
        assert_eq!(scopes_logged(None), (None, false));
    }
}
