//! Why a policy answered as it did: a per-rule trace for `hopwarden explain`.
//!
//! The rule order and each rule's outcome come from the evaluation itself (through
//! an [`Observer`]); each condition's verdict comes from the same per-field matchers
//! evaluation composes. Only the wording is new here, never the matching.

use std::fmt::Write as _;

use serde::Serialize;

use super::compile::{ActionClause, Callers, FromClause, Rule, ServicePolicy};
use super::eval::{claim_ok, header_ok, Enforcement, EvalInput, Observer, RuleOutcome, Verdict};
use super::spec::{Effect, Mode};
use crate::principal::Principal;
use crate::request::Action;

/// One condition a rule names, and whether it held for the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConditionTrace {
    /// Which part of the rule: `from.principals`, `to`, `when.hop`, `scopes`, …
    pub part: String,
    /// Whether it held.
    pub ok: bool,
    /// What was compared, e.g. `"spiffe://x" not in ["spiffe://y"]`.
    pub detail: String,
}

/// One rule as evaluation saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleTrace {
    /// The rule's id.
    pub rule: String,
    /// Allow or deny.
    pub effect: Effect,
    /// Enforce or dry-run.
    pub mode: Mode,
    /// What evaluation made of it.
    pub outcome: RuleOutcome,
    /// Each condition the rule names (empty when it was not evaluated).
    pub conditions: Vec<ConditionTrace>,
}

/// A policy's answer with the trace behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// Every rule in evaluation order: deny rules, then allow rules.
    pub rules: Vec<RuleTrace>,
    /// The answer, exactly as [`ServicePolicy::evaluate_traced`] gives it.
    pub verdict: Verdict,
}

/// Records each rule's outcome in the order evaluation reaches it.
#[derive(Default)]
struct Recorder<'p> {
    seen: Vec<(&'p Rule, RuleOutcome)>,
}

impl<'p> Observer<'p> for Recorder<'p> {
    fn rule(&mut self, rule: &'p Rule, outcome: RuleOutcome) {
        self.seen.push((rule, outcome));
    }
}

impl ServicePolicy {
    /// Evaluates as the server does (dry-run deny rules never deny) and says why,
    /// rule by rule.
    pub fn explain(&self, input: &EvalInput<'_>) -> Explanation {
        let mut recorder = Recorder::default();
        let verdict = self.run(input, Enforcement::AsWritten, &mut recorder);
        let rules = self
            .rules()
            .map(|rule| {
                let outcome = recorder
                    .seen
                    .iter()
                    .find(|(r, _)| std::ptr::eq(*r, rule))
                    .map_or(RuleOutcome::NotEvaluated, |(_, o)| *o);
                let conditions = if outcome == RuleOutcome::NotEvaluated {
                    Vec::new()
                } else {
                    conditions(rule, input)
                };
                RuleTrace {
                    rule: rule.id().to_string(),
                    effect: rule.effect(),
                    mode: rule.mode(),
                    outcome,
                    conditions,
                }
            })
            .collect();
        Explanation { rules, verdict }
    }
}

fn check(part: impl Into<String>, ok: bool, detail: String) -> ConditionTrace {
    ConditionTrace {
        part: part.into(),
        ok,
        detail,
    }
}

/// `["a", "b"]`
fn list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// `GET /transactions/42` (and the gRPC method, for gRPC requests).
pub fn describe_action(action: &Action) -> String {
    match &action.grpc {
        Some(g) => format!("{} {} (grpc {g})", action.method, action.path),
        None => format!("{} {}", action.method, action.path),
    }
}

/// `GET,HEAD /a /b grpc:pkg.S/M`
pub fn describe_clause(clause: &ActionClause) -> String {
    let mut out = clause
        .methods()
        .map_or_else(|| "*".to_string(), |m| m.join(","));
    for p in clause.paths() {
        let _ = write!(out, " {p}");
    }
    for g in clause.grpc() {
        let _ = write!(out, " grpc:{g}");
    }
    if clause.paths().is_empty() && clause.grpc().is_empty() {
        out.push_str(" (any path)");
    }
    out
}

fn conditions(rule: &Rule, input: &EvalInput<'_>) -> Vec<ConditionTrace> {
    let mut out = Vec::new();
    let p = input.principal;
    match (rule.from(), p) {
        (FromClause::Unrestricted, _) => {
            let ok = rule.from().matches(rule.effect(), p);
            let detail = match (rule.effect(), p) {
                (Effect::Deny, _) => "no `from`: any caller, anonymous included".to_string(),
                (Effect::Allow, Some(_)) => "no `from`: any authenticated caller".to_string(),
                (Effect::Allow, None) => {
                    "anonymous caller; an allow rule without `from` needs an authenticated one"
                        .to_string()
                }
            };
            out.push(check("from", ok, detail));
        }
        (FromClause::Anonymous, None) => {
            out.push(check("from.anonymous", true, "caller is anonymous".into()));
        }
        (FromClause::Anonymous, Some(p)) => {
            let detail = format!("caller {:?} is not anonymous", p.id);
            out.push(check("from.anonymous", false, detail));
        }
        (FromClause::Authenticated(_), None) => {
            let detail = "anonymous caller; the rule is about authenticated callers".to_string();
            out.push(check("from", false, detail));
        }
        (FromClause::Authenticated(callers), Some(p)) => callers_conditions(callers, p, &mut out),
    }
    match rule.to() {
        None => out.push(check("to", true, "no `to`: any action".into())),
        Some(clauses) => {
            let action = describe_action(input.action);
            let matched = clauses.iter().position(|c| c.matches(input.action));
            let (ok, detail) = match matched {
                Some(i) => (
                    true,
                    format!(
                        "clause {} ({}) matched {action}",
                        i + 1,
                        describe_clause(&clauses[i])
                    ),
                ),
                None => (false, format!("no clause matched ({action})")),
            };
            debug_assert_eq!(ok, rule.to_matches(input.action));
            out.push(check("to", ok, detail));
        }
    }
    let when = rule.when();
    if let Some(hop) = when.hop() {
        let ok = when.hop_ok(input.hop);
        let op = if ok { "==" } else { "!=" };
        out.push(check("when.hop", ok, format!("{} {op} {hop}", input.hop)));
    }
    for (name, values) in when.headers() {
        let ok = header_ok(name, values, input.headers);
        let detail = match input.headers.get(name) {
            None => format!("header absent; want one of {}", list(values)),
            Some(v) if ok => format!("\"{v}\" in {}", list(values)),
            Some(v) => format!("\"{v}\" not in {}", list(values)),
        };
        out.push(check(format!("when.headers.{name}"), ok, detail));
    }
    for (name, values) in when.claims() {
        let (ok, detail) = match p {
            None => (false, "anonymous caller has no claims".to_string()),
            Some(p) => {
                let ok = claim_ok(name, values, p);
                let detail = match p.claims.get(name) {
                    None => format!("claim absent; want one of {}", list(values)),
                    Some(v) if ok => format!("{v} matches {}", list(values)),
                    Some(v) => format!("{v} not in {}", list(values)),
                };
                (ok, detail)
            }
        };
        out.push(check(format!("when.claims.{name}"), ok, detail));
    }
    if !rule.scopes().is_empty() {
        let (ok, detail) = match p {
            None => (false, "anonymous caller has no scopes".to_string()),
            Some(p) if !p.has_token() => (
                false,
                format!(
                    "no token (mTLS-only caller), so no scopes; needs {}",
                    rule.scopes().join(" ")
                ),
            ),
            Some(p) => {
                let ok = p.has_scopes(rule.scopes());
                let missing: Vec<&str> = rule
                    .scopes()
                    .iter()
                    .filter(|s| !p.has_scopes(std::slice::from_ref(*s)))
                    .map(String::as_str)
                    .collect();
                let detail = if ok {
                    format!("has {}", rule.scopes().join(" "))
                } else {
                    format!("missing {}", missing.join(" "))
                };
                (ok, detail)
            }
        };
        out.push(check("scopes", ok, detail));
    }
    out
}

fn callers_conditions(callers: &Callers, p: &Principal, out: &mut Vec<ConditionTrace>) {
    if !super::explain_delegated::trace(callers, p, out, callers_fields) {
        callers_fields(callers, p, out);
    }
}

fn callers_fields(callers: &Callers, p: &Principal, out: &mut Vec<ConditionTrace>) {
    if let Some(list_) = callers.principals() {
        let ok = callers.principal_ok(p);
        let detail = match list_.iter().find(|pat| pat.matches(&p.id)) {
            Some(pat) if pat.as_str() == p.id => format!("\"{}\" listed", p.id),
            Some(pat) => format!("\"{}\" matches \"{pat}\"", p.id),
            None => format!("\"{}\" not in {}", p.id, list(list_)),
        };
        out.push(check("from.principals", ok, detail));
    }
    if let Some(list_) = callers.peers() {
        let ok = callers.peer_ok(p);
        let detail = match &p.peer {
            None => format!("no mTLS peer; want one of {}", list(list_)),
            Some(peer) => match list_.iter().find(|pat| pat.matches(peer.as_str())) {
                Some(pat) if pat.as_str() == peer.as_str() => format!("peer \"{peer}\" listed"),
                Some(pat) => format!("peer \"{peer}\" matches \"{pat}\""),
                None => format!("peer \"{peer}\" not in {}", list(list_)),
            },
        };
        out.push(check("from.peers", ok, detail));
    }
    if let Some(kinds) = callers.kinds() {
        let ok = callers.kind_ok(p);
        let op = if ok { "in" } else { "not in" };
        let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        let detail = format!("kind {} {op} [{}]", p.kind, kinds.join(", "));
        out.push(check("from.kinds", ok, detail));
    }
    if let Some(issuers) = callers.issuers() {
        let ok = callers.issuer_ok(p);
        let detail = match &p.issuer {
            None => format!(
                "no token issuer (mTLS-only caller); want one of {}",
                list(issuers)
            ),
            Some(i) if ok => format!("\"{i}\" listed"),
            Some(i) => format!("\"{i}\" not in {}", list(issuers)),
        };
        out.push(check("from.issuers", ok, detail));
    }
    if let Some(creds) = callers.credentials() {
        let ok = callers.credential_ok(p);
        let op = if ok { "in" } else { "not in" };
        let names: Vec<&str> = creds.iter().map(|c| c.as_str()).collect();
        let detail = format!(
            "credential {} {op} [{}]",
            p.credential().as_str(),
            names.join(", ")
        );
        out.push(check("from.credentials", ok, detail));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::{grpc, http, peer, token};
    use crate::policy::{Evaluation, PolicySet};
    use crate::principal::PrincipalKind;
    use crate::request::Hop;
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};

    const TD: &str = "spiffe://hopwarden.local/ns";

    fn examples_and_extra() -> PolicySet {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"));
        let mut sources = Vec::new();
        for name in ["catalog", "deploy", "email", "ledger", "media"] {
            let path = dir.join(format!("{name}.yaml"));
            sources.push((path.clone(), std::fs::read_to_string(&path).unwrap()));
        }
        sources.push((
            PathBuf::from("t.yaml"),
            "service: t
rules:
  - {id: t-trial, effect: deny, mode: dry-run, to: [{paths: [/trial]}]}
  - {id: t-anon-deny, effect: deny, from: {anonymous: true}, to: [{paths: [/anon]}]}
  - {id: t-any, to: [{paths: [/any]}]}
  - {id: t-anon, from: {anonymous: true}, to: [{paths: [/health]}]}
  - {id: t-hdr, to: [{paths: [/h]}], when: {headers: {x-tenant: [acme]}, claims: {env: [prod]}}}
  - {id: t-user, from: {kinds: [user], peers: ['spiffe://td/ns/*/sa/ui']}, to: [{paths: [/u]}], scopes: [a, b]}
  - {id: t-trial-allow, to: [{paths: ['/trial']}]}
"
            .to_string(),
        ));
        PolicySet::from_sources(&sources).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The trace's own reading: the first rule it marks `Matched` decides.
    fn traced_evaluation(e: &Explanation) -> Evaluation {
        let matched = e.rules.iter().find(|r| r.outcome == RuleOutcome::Matched);
        match matched {
            Some(r) if r.effect == Effect::Deny => Evaluation::Deny {
                rule: r.rule.as_str().into(),
            },
            Some(r) => Evaluation::Allow {
                rule: r.rule.as_str().into(),
            },
            None => match e
                .rules
                .iter()
                .find(|r| r.outcome == RuleOutcome::MissingScopes)
            {
                Some(r) if matches!(e.verdict.evaluation, Evaluation::InsufficientScope { .. }) => {
                    e.verdict.evaluation.clone().tap_rule(&r.rule)
                }
                _ => Evaluation::NoMatch,
            },
        }
    }

    trait TapRule {
        fn tap_rule(self, rule: &str) -> Evaluation;
    }

    impl TapRule for Evaluation {
        fn tap_rule(self, rule: &str) -> Evaluation {
            match self {
                Evaluation::InsufficientScope { required, .. } => Evaluation::InsufficientScope {
                    rule: rule.into(),
                    required,
                },
                other => other,
            }
        }
    }

    #[test]
    fn trace_agrees_with_evaluate() {
        let set = examples_and_extra();
        let payments = token(&format!("{TD}/payments/sa/payments"), &["ledger.read"]);
        let payments_bare = token(&format!("{TD}/payments/sa/payments"), &[]);
        let reconciler = peer(&format!("{TD}/ledger/sa/reconciler"));
        let inventory = token(
            &format!("{TD}/inventory/sa/inventory-api"),
            &["catalog.read"],
        );
        let partner = token("partner:transcribe-co", &["media.transcribe"]);
        let mut partner_user = partner.clone();
        partner_user.kind = PrincipalKind::User;
        let mut ui = token("u", &["a"]);
        ui.kind = PrincipalKind::User;
        ui.peer = Some("spiffe://td/ns/web/sa/ui".parse().unwrap());
        let mut ui_full = ui.clone();
        ui_full.scopes = vec!["a".into(), "b".into()];
        let mut prod = token("p", &[]);
        prod.claims = std::sync::Arc::new(
            serde_json::json!({"env": "prod"})
                .as_object()
                .cloned()
                .unwrap(),
        );
        let everyone: Vec<Option<&Principal>> = vec![
            None,
            Some(&payments),
            Some(&payments_bare),
            Some(&reconciler),
            Some(&inventory),
            Some(&partner),
            Some(&partner_user),
            Some(&ui),
            Some(&ui_full),
            Some(&prod),
        ];
        let actions = [
            http("GET", "/transactions/42"),
            http("GET", "/transactions"),
            http("POST", "/refunds"),
            http("POST", "/send/billing"),
            http("POST", "/environments/staging/deployments"),
            http("GET", "/environments/production"),
            http("GET", "/admin/users"),
            http("GET", "/products/1"),
            grpc("catalog.v1.Catalog/Query"),
            http("GET", "/partners/transcribe-co/jobs/1"),
            http("GET", "/exports/a.wav"),
            http("GET", "/trial"),
            http("GET", "/anon"),
            http("GET", "/any"),
            http("GET", "/health"),
            http("GET", "/h"),
            http("GET", "/u"),
        ];
        let header_sets: [HashMap<String, String>; 2] = [
            HashMap::new(),
            [("x-tenant".to_string(), "acme".to_string())].into(),
        ];
        let mut checked = 0;
        for policy in set.services() {
            for principal in &everyone {
                for action in &actions {
                    for hop in [Hop::Mesh, Hop::Gateway] {
                        for headers in &header_sets {
                            let input = EvalInput {
                                principal: *principal,
                                hop,
                                action,
                                headers,
                            };
                            let explained = policy.explain(&input);
                            let what =
                                format!("{} {principal:?} {hop} {action:?}", policy.service());
                            assert_eq!(explained.verdict, policy.evaluate_traced(&input), "{what}");
                            assert_eq!(
                                traced_evaluation(&explained),
                                policy.evaluate(&input),
                                "{what}"
                            );
                            for r in &explained.rules {
                                let non_scope_ok = r
                                    .conditions
                                    .iter()
                                    .filter(|c| c.part != "scopes")
                                    .all(|c| c.ok);
                                let all_ok = r.conditions.iter().all(|c| c.ok);
                                let consistent = match r.outcome {
                                    RuleOutcome::NotEvaluated => r.conditions.is_empty(),
                                    RuleOutcome::NotMatched => !non_scope_ok,
                                    RuleOutcome::MissingScopes => non_scope_ok && !all_ok,
                                    RuleOutcome::Matched | RuleOutcome::WouldDeny => all_ok,
                                };
                                assert!(consistent, "{what}: {r:?}");
                            }
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 1000, "{checked}");
    }

    #[test]
    fn conditions_say_what_failed() {
        let set = examples_and_extra();
        let ledger = set.get("ledger").unwrap();
        let other = token(&format!("{TD}/x/sa/x"), &[]);
        let headers = HashMap::new();
        let action = http("POST", "/refunds");
        let e = ledger.explain(&EvalInput {
            principal: Some(&other),
            hop: Hop::Gateway,
            action: &action,
            headers: &headers,
        });
        let lines: Vec<String> = e
            .rules
            .iter()
            .flat_map(|r| {
                r.conditions
                    .iter()
                    .map(move |c| format!("{} {} {}: {}", r.rule, c.ok, c.part, c.detail))
            })
            .collect();
        let want = [
            format!("payments-never-refund false from.principals: \"{TD}/x/sa/x\" not in [\"{TD}/payments/sa/payments\"]"),
            "payments-never-refund true to: clause 1 (* /refunds/**) matched POST /refunds".to_string(),
            format!("payments-read-transactions false from.principals: \"{TD}/x/sa/x\" not in [\"{TD}/payments/sa/payments\"]"),
            "payments-read-transactions true from.issuers: \"https://sts.hopwarden.local\" listed".to_string(),
            "payments-read-transactions false to: no clause matched (POST /refunds)".to_string(),
            "payments-read-transactions false scopes: missing ledger.read".to_string(),
            format!("reconciler-read-transactions false from.peers: no mTLS peer; want one of [\"{TD}/ledger/sa/reconciler\"]"),
            "reconciler-read-transactions false to: no clause matched (POST /refunds)".to_string(),
            "reconciler-read-transactions false when.hop: gateway != mesh".to_string(),
            "customer-bff-reads-for-customers false from.acting_for: the token is not delegated; the rule is about delegated calls only".to_string(),
            "customer-bff-reads-for-customers false to: no clause matched (POST /refunds)".to_string(),
            "customer-bff-reads-for-customers false scopes: missing ledger.read".to_string(),
        ];
        assert_eq!(lines, want);
        assert_eq!(e.verdict.evaluation, Evaluation::NoMatch);
    }
}
