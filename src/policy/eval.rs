//! Evaluating a compiled [`ServicePolicy`] against one request.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::compile::{ActionClause, Callers, FromClause, Rule, ServicePolicy, When};
use super::spec::{Effect, Mode};
use crate::principal::Principal;
use crate::request::{Action, Hop};

/// Everything a rule can read about a request.
#[derive(Debug, Clone, Copy)]
pub struct EvalInput<'a> {
    /// The caller; `None` = anonymous (no token, no mTLS peer).
    pub principal: Option<&'a Principal>,
    /// Where the check happens.
    pub hop: Hop,
    /// What the caller wants to do.
    pub action: &'a Action,
    /// Request headers by lowercase name.
    pub headers: &'a HashMap<String, String>,
}

/// The policy's answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evaluation {
    /// The allow rule with this id matched.
    Allow {
        /// The matching rule's id.
        rule: Arc<str>,
    },
    /// The deny rule with this id matched.
    Deny {
        /// The matching rule's id.
        rule: Arc<str>,
    },
    /// An allow rule matched in everything but scopes, and the caller has a token
    /// (so asking for a token with more scopes could help: RFC 6750 section 3.1).
    InsufficientScope {
        /// The rule that would have allowed the request.
        rule: Arc<str>,
        /// That rule's scopes.
        required: Vec<String>,
    },
    /// No rule matched: default deny.
    NoMatch,
}

/// [`ServicePolicy::evaluate_traced`]'s answer: the evaluation and any dry-run
/// deny rule that matched on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// What the enforced rules decided.
    pub evaluation: Evaluation,
    /// The first `mode: dry-run` deny rule that matched, when no enforced deny rule
    /// did: the request would have been denied by it.
    pub would_deny: Option<Arc<str>>,
}

/// Whether `mode: dry-run` on rules is honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Enforcement {
    /// As written: a dry-run deny rule never denies (what the server does).
    AsWritten,
    /// Every rule as if enforced (what `hopwarden test` checks).
    AllEnforced,
}

/// What happened to one rule during an evaluation, in evaluation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleOutcome {
    /// `from`, `to`, `when` (and for allow rules, scopes) matched: the rule decided.
    Matched,
    /// A dry-run deny rule matched; evaluation went on as if it had not.
    WouldDeny,
    /// An allow rule matched in everything but its scopes; evaluation went on.
    MissingScopes,
    /// Some condition did not hold.
    NotMatched,
    /// Not looked at: an earlier rule decided.
    NotEvaluated,
}

/// Sees each rule as evaluation reaches it. The no-op `()` observer compiles away,
/// so `evaluate` and `explain` share one implementation of the evaluation order.
pub(super) trait Observer<'p> {
    fn rule(&mut self, rule: &'p Rule, outcome: RuleOutcome);
}

impl Observer<'_> for () {
    #[inline(always)]
    fn rule(&mut self, _: &Rule, _: RuleOutcome) {}
}

impl ServicePolicy {
    /// Evaluates the rules against one request, as the server enforces them:
    /// `mode: dry-run` deny rules never deny.
    pub fn evaluate(&self, input: &EvalInput<'_>) -> Evaluation {
        self.run_indexed(input, Enforcement::AsWritten).evaluation
    }

    /// Like [`ServicePolicy::evaluate`], also naming the dry-run deny rule that would
    /// have denied. Allocation-free, like `evaluate`.
    pub fn evaluate_traced(&self, input: &EvalInput<'_>) -> Verdict {
        self.run_indexed(input, Enforcement::AsWritten)
    }

    /// Evaluates as if every rule were `mode: enforce` (what policy tests check, so a
    /// suite keeps holding when a dry-run rule is switched on).
    pub fn evaluate_enforced(&self, input: &EvalInput<'_>) -> Evaluation {
        self.run_indexed(input, Enforcement::AllEnforced).evaluation
    }

    /// The evaluation order over only the rules the index says may be about this
    /// caller (see `index.rs`); the same answer as [`ServicePolicy::run`], which
    /// looks at every rule.
    pub(super) fn run_indexed(&self, input: &EvalInput<'_>, enforcement: Enforcement) -> Verdict {
        // A delegated token is matched against its actors as well as its subject
        // (acting_for rules by the actor's id, deny rules by any party), which the
        // index, keyed on the subject alone, does not know: such checks scan.
        let delegated = input.principal.is_some_and(|p| p.delegation.is_some());
        let Some(index) = self.index.as_ref().filter(|_| !delegated) else {
            return self.run(input, enforcement, &mut ());
        };
        // The caller's rules, less those for another first path segment.
        let path = &input.action.path;
        let (deny_path, allow_path) = (index.deny.path_key(path), index.allow.path_key(path));
        let deny = index
            .deny
            .candidates(input.principal)
            .filter(|&at| index.deny.admits(at, deny_path))
            .filter_map(|at| self.deny.get(at));
        let allow = index
            .allow
            .candidates(input.principal)
            .filter(|&at| index.allow.admits(at, allow_path))
            .filter_map(|at| self.allow.get(at));
        self.run_over(deny, allow, input, enforcement, &mut ())
    }

    /// The evaluation order over every rule, each reported to `observer` (what
    /// `explain` shows, and the property test's oracle for the indexed evaluation).
    pub(super) fn run<'p, O: Observer<'p>>(
        &'p self,
        input: &EvalInput<'_>,
        enforcement: Enforcement,
        observer: &mut O,
    ) -> Verdict {
        self.run_over(
            self.deny.iter(),
            self.allow.iter(),
            input,
            enforcement,
            observer,
        )
    }

    /// The one implementation of the evaluation order, over deny and allow rules
    /// given in file order.
    fn run_over<'p, O: Observer<'p>>(
        &'p self,
        deny: impl Iterator<Item = &'p Rule>,
        allow: impl Iterator<Item = &'p Rule>,
        input: &EvalInput<'_>,
        enforcement: Enforcement,
        observer: &mut O,
    ) -> Verdict {
        // DESIGN.md, Policies: "Default deny. Deny rules win over allow rules."
        // and the request path: "deny rules, then allow rules, else default deny".
        let mut would_deny: Option<Arc<str>> = None;
        let verdict = |evaluation, would_deny| Verdict {
            evaluation,
            would_deny,
        };

        // 1. Any enforced deny rule that matches denies, whatever the allow rules say;
        //    a dry-run one is noted and passed over.
        for rule in deny {
            if !rule.matches_except_scopes(input) {
                observer.rule(rule, RuleOutcome::NotMatched);
                continue;
            }
            if rule.mode == Mode::DryRun && enforcement == Enforcement::AsWritten {
                observer.rule(rule, RuleOutcome::WouldDeny);
                would_deny.get_or_insert_with(|| rule.id.clone());
                continue;
            }
            observer.rule(rule, RuleOutcome::Matched);
            let evaluation = Evaluation::Deny {
                rule: rule.id.clone(),
            };
            return verdict(evaluation, None);
        }
        // 2. The first allow rule that matches, scopes included, allows.
        let mut short_of_scopes: Option<&Rule> = None;
        for rule in allow {
            if !rule.matches_except_scopes(input) {
                observer.rule(rule, RuleOutcome::NotMatched);
                continue;
            }
            let held = match input.principal {
                Some(p) => p.has_scopes(&rule.scopes),
                None => rule.scopes.is_empty(),
            };
            if held {
                observer.rule(rule, RuleOutcome::Matched);
                let evaluation = Evaluation::Allow {
                    rule: rule.id.clone(),
                };
                return verdict(evaluation, would_deny);
            }
            observer.rule(rule, RuleOutcome::MissingScopes);
            short_of_scopes.get_or_insert(rule);
        }
        // 3. A caller with a token that lacks scopes gets `insufficient_scope`;
        //    without a token there is nothing to add scopes to, so plain no-match.
        if let (Some(rule), Some(p)) = (short_of_scopes, input.principal) {
            if p.has_token() {
                let evaluation = Evaluation::InsufficientScope {
                    rule: rule.id.clone(),
                    required: rule.scopes.to_vec(),
                };
                return verdict(evaluation, would_deny);
            }
        }
        // 4. Default deny.
        verdict(Evaluation::NoMatch, would_deny)
    }
}

impl Rule {
    /// Whether `from`, `to` and `when` all match.
    pub(super) fn matches_except_scopes(&self, input: &EvalInput<'_>) -> bool {
        self.from.matches(self.effect, input.principal)
            && self.to_matches(input.action)
            && self.when.matches(input)
    }

    /// Whether any `to` clause matches (or there is no `to`).
    pub(super) fn to_matches(&self, action: &Action) -> bool {
        self.to
            .as_ref()
            .is_none_or(|clauses| clauses.iter().any(|c| c.matches(action)))
    }
}

impl FromClause {
    /// Whether the caller is one the rule is about.
    pub fn matches(&self, effect: Effect, principal: Option<&Principal>) -> bool {
        match (self, principal) {
            // A deny rule with no `from` is about everyone, anonymous callers
            // included; an allow rule never lets an anonymous caller in by omission.
            (FromClause::Unrestricted, None) => effect == Effect::Deny,
            // Delegated tokens: an allow rule takes them only where it says so
            // (`from.acting_for`); a deny rule with no `from` is about everyone.
            (FromClause::Unrestricted, Some(p)) => effect == Effect::Deny || p.delegation.is_none(),
            (FromClause::Anonymous, p) => p.is_none(),
            (FromClause::Authenticated(_), None) => false,
            (FromClause::Authenticated(callers), Some(p)) => callers.matches(p),
        }
    }
}

impl Callers {
    // `matches`, which also reads delegation, is in compile/delegated.rs.

    /// `from.credentials`: the credential that identified the caller is listed.
    pub(super) fn credential_ok(&self, p: &Principal) -> bool {
        self.credentials
            .as_ref()
            .is_none_or(|list| list.contains(&p.credential()))
    }

    pub(super) fn principal_ok(&self, p: &Principal) -> bool {
        self.principals
            .as_ref()
            .is_none_or(|list| list.iter().any(|pat| pat.matches(&p.id)))
    }

    pub(super) fn peer_ok(&self, p: &Principal) -> bool {
        self.peers.as_ref().is_none_or(|list| {
            p.peer
                .as_ref()
                .is_some_and(|peer| list.iter().any(|pat| pat.matches(peer.as_str())))
        })
    }

    pub(super) fn kind_ok(&self, p: &Principal) -> bool {
        self.kinds
            .as_ref()
            .is_none_or(|list| list.contains(&p.kind))
    }

    pub(super) fn issuer_ok(&self, p: &Principal) -> bool {
        self.issuers.as_ref().is_none_or(|list| {
            p.issuer
                .as_ref()
                .is_some_and(|iss| list.iter().any(|i| i == iss))
        })
    }
}

impl ActionClause {
    /// Methods (if named) and a path or gRPC pattern (if any are named).
    pub fn matches(&self, action: &Action) -> bool {
        self.method_ok(action) && self.target_ok(action)
    }

    pub(super) fn method_ok(&self, action: &Action) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|m| m.contains(&action.method))
    }

    pub(super) fn target_ok(&self, action: &Action) -> bool {
        (self.paths.is_empty() && self.grpc.is_empty())
            || self.paths.iter().any(|p| p.matches(&action.path))
            || action
                .grpc
                .as_deref()
                .is_some_and(|g| self.grpc.iter().any(|p| p.matches(g)))
    }
}

impl When {
    /// Hop, headers and claims, each if named.
    pub fn matches(&self, input: &EvalInput<'_>) -> bool {
        self.hop_ok(input.hop)
            && self
                .headers
                .iter()
                .all(|(name, values)| header_ok(name, values, input.headers))
            && (self.claims.is_empty()
                || input.principal.is_some_and(|p| {
                    self.claims
                        .iter()
                        .all(|(name, values)| claim_ok(name, values, p))
                }))
    }

    pub(super) fn hop_ok(&self, hop: Hop) -> bool {
        self.hop.is_none_or(|want| want == hop)
    }
}

/// Whether header `name` holds one of `values` exactly.
pub(super) fn header_ok(name: &str, values: &[String], headers: &HashMap<String, String>) -> bool {
    headers
        .get(name)
        .is_some_and(|v| values.iter().any(|want| want == v))
}

/// Whether claim `name` matches one of `values`.
pub(super) fn claim_ok(name: &str, values: &[String], p: &Principal) -> bool {
    p.claims.get(name).is_some_and(|v| claim_matches(v, values))
}

/// A claim matches when it is a string equal to a wanted value, an array holding
/// such a string, or a number / bool whose text equals a wanted value.
fn claim_matches(claim: &Value, wanted: &[String]) -> bool {
    match claim {
        Value::String(s) => wanted.iter().any(|w| w == s),
        Value::Array(items) => items
            .iter()
            .any(|item| matches!(item, Value::String(s) if wanted.iter().any(|w| w == s))),
        Value::Number(n) => {
            let text = n.to_string();
            wanted.contains(&text)
        }
        Value::Bool(b) => wanted
            .iter()
            .any(|w| w == if *b { "true" } else { "false" }),
        Value::Null | Value::Object(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{allow, deny, eval, http, peer, short, token};
    use super::*;
    use crate::policy::PolicySet;
    use std::path::PathBuf;

    const NO: Evaluation = Evaluation::NoMatch;

    fn policy(yaml: &str) -> Arc<ServicePolicy> {
        let set = PolicySet::from_sources(&[(PathBuf::from("t.yaml"), yaml.to_string())])
            .unwrap_or_else(|e| panic!("{e}"));
        set.get("t").unwrap().clone()
    }

    #[test]
    fn deny_beats_allow_regardless_of_order() {
        let p = policy(
            "service: t
rules:
  - {id: allow-all, to: [{paths: [/**]}]}
  - {id: allow-a, to: [{paths: [/a]}]}
  - {id: deny-b, effect: deny, to: [{paths: [/b/**]}]}
  - {id: deny-b2, effect: deny, to: [{paths: [/b]}]}
",
        );
        let me = token("me", &[]);
        let cases: &[(&str, Evaluation)] = &[
            ("/a", allow("allow-all")),
            ("/b", deny("deny-b")),
            ("/b/c", deny("deny-b")),
            ("/c", allow("allow-all")),
        ];
        for (path, want) in cases {
            assert_eq!(
                eval(&p, Some(&me), Hop::Mesh, &http("GET", path)),
                *want,
                "{path}"
            );
        }
    }

    #[test]
    fn scopes_and_insufficient_scope() {
        let p = policy(
            "service: t
rules:
  - {id: write, to: [{methods: [POST], paths: [/x]}], scopes: [t.write]}
  - {id: admin, to: [{methods: [POST], paths: [/x]}], scopes: [t.admin, t.write]}
  - {id: read, to: [{methods: [GET], paths: [/x]}], scopes: [t.read]}
  - {id: open, to: [{methods: [GET], paths: [/open]}]}
",
        );
        let none = token("me", &[]);
        let writer = token("me", &["t.write"]);
        let admin = token("me", &["t.admin", "t.write"]);
        let mtls = peer("spiffe://td/ns/a/sa/b");
        let cases: &[(&Principal, &str, &str, Evaluation)] = &[
            (&writer, "POST", "/x", allow("write")),
            (&admin, "POST", "/x", allow("write")),
            (&none, "POST", "/x", short("write", &["t.write"])),
            (&none, "GET", "/x", short("read", &["t.read"])),
            (&writer, "GET", "/x", short("read", &["t.read"])),
            (&none, "GET", "/open", allow("open")),
            (&none, "PUT", "/x", NO),
            // No token: nothing to add scopes to, so a plain no-match.
            (&mtls, "POST", "/x", NO),
            (&mtls, "GET", "/open", allow("open")),
        ];
        for (p_, method, path, want) in cases {
            assert_eq!(
                eval(&p, Some(p_), Hop::Mesh, &http(method, path)),
                *want,
                "{} {method} {path}",
                p_.id
            );
        }
    }

    #[test]
    fn anonymous_callers() {
        let p = policy(
            "service: t
rules:
  - {id: any-auth, to: [{paths: [/auth]}]}
  - {id: anon-health, from: {anonymous: true}, to: [{paths: [/health]}]}
  - {id: star, from: {principals: ['**']}, to: [{paths: [/star]}]}
  - {id: not-anon, from: {anonymous: false}, to: [{paths: [/na]}]}
  - {id: deny-all-secret, effect: deny, to: [{paths: [/secret]}]}
  - {id: deny-auth-secret2, effect: deny, from: {kinds: [service, user]}, to: [{paths: [/secret2]}]}
  - {id: deny-anon-only, effect: deny, from: {anonymous: true}, to: [{paths: [/auth]}], when: {hop: gateway}}
",
        );
        let me = token("me", &[]);
        let cases: &[(Option<&Principal>, Hop, &str, Evaluation)] = &[
            (None, Hop::Mesh, "/auth", NO),
            (Some(&me), Hop::Mesh, "/auth", allow("any-auth")),
            (Some(&me), Hop::Gateway, "/auth", allow("any-auth")),
            (None, Hop::Gateway, "/auth", deny("deny-anon-only")),
            (None, Hop::Mesh, "/health", allow("anon-health")),
            (Some(&me), Hop::Mesh, "/health", NO),
            (None, Hop::Mesh, "/star", NO),
            (Some(&me), Hop::Mesh, "/star", allow("star")),
            (None, Hop::Mesh, "/na", NO),
            (Some(&me), Hop::Mesh, "/na", allow("not-anon")),
            (None, Hop::Mesh, "/secret", deny("deny-all-secret")),
            (Some(&me), Hop::Mesh, "/secret", deny("deny-all-secret")),
            (None, Hop::Mesh, "/secret2", NO),
            (Some(&me), Hop::Mesh, "/secret2", deny("deny-auth-secret2")),
        ];
        for (p_, hop, path, want) in cases {
            assert_eq!(
                eval(&p, *p_, *hop, &http("GET", path)),
                *want,
                "{p_:?} {hop} {path}"
            );
        }
    }

    #[test]
    fn from_fields() {
        let p = policy(
            "service: t
rules:
  - {id: by-peer, from: {peers: ['spiffe://td/ns/*/sa/job']}, to: [{paths: [/peer]}]}
  - {id: by-issuer, from: {issuers: ['https://sts.hopwarden.local']}, to: [{paths: [/iss]}]}
  - {id: by-kind, from: {kinds: [user]}, to: [{paths: [/user]}]}
  - {id: by-both, from: {principals: [a, b], kinds: [service]}, to: [{paths: [/both]}]}
",
        );
        let job = peer("spiffe://td/ns/x/sa/job");
        let mut job_with_token = token("a", &[]);
        job_with_token.peer = job.peer.clone();
        let other_job = peer("spiffe://td/ns/x/sa/other");
        let mut user = token("b", &[]);
        user.kind = crate::principal::PrincipalKind::User;
        let mut foreign = token("a", &[]);
        foreign.issuer = Some("https://other".into());
        let cases: &[(&Principal, &str, Evaluation)] = &[
            (&job, "/peer", allow("by-peer")),
            (&job_with_token, "/peer", allow("by-peer")),
            (&other_job, "/peer", NO),
            (&token("a", &[]), "/peer", NO),
            (&token("a", &[]), "/iss", allow("by-issuer")),
            (&foreign, "/iss", NO),
            (&job, "/iss", NO),
            (&user, "/user", allow("by-kind")),
            (&token("a", &[]), "/user", NO),
            (&token("a", &[]), "/both", allow("by-both")),
            (&token("c", &[]), "/both", NO),
            (&user, "/both", NO),
        ];
        for (p_, path, want) in cases {
            assert_eq!(
                eval(&p, Some(p_), Hop::Mesh, &http("GET", path)),
                *want,
                "{} {path}",
                p_.id
            );
        }
    }

    #[test]
    fn to_clauses() {
        let p = policy(
            "service: t
rules:
  - id: mixed
    to:
      - {methods: [get], paths: [/a], grpc: [pkg.S/Get]}
      - {methods: [delete]}
      - {grpc: ['pkg.T/*']}
",
        );
        let me = token("me", &[]);
        let g = |m: &str| Action {
            method: "POST".into(),
            path: format!("/{m}"),
            grpc: Some(m.into()),
        };
        let mut get_grpc = g("pkg.S/Get");
        get_grpc.method = "GET".into();
        let cases: &[(Action, Evaluation)] = &[
            (http("GET", "/a"), allow("mixed")),
            (http("POST", "/a"), NO),
            (get_grpc, allow("mixed")),
            (g("pkg.S/Get"), NO),
            (http("DELETE", "/anything/at/all"), allow("mixed")),
            (g("pkg.T/Any"), allow("mixed")),
            (http("POST", "/pkg.T/Any"), NO),
        ];
        for (action, want) in cases {
            assert_eq!(eval(&p, Some(&me), Hop::Mesh, action), *want, "{action:?}");
        }
    }

    #[test]
    fn when_conditions() {
        let p = policy(
            "service: t
rules:
  - id: tenants
    to: [{paths: [/h]}]
    when: {headers: {X-Tenant: [acme, globex], x-env: [prod]}}
  - id: claims
    to: [{paths: [/c]}]
    when: {claims: {env: [prod], groups: [ops], level: ['3'], admin: ['true']}}
  - id: gateway
    to: [{paths: [/g]}]
    when: {hop: gateway}
",
        );
        assert_eq!(p.header_inputs(), ["x-env", "x-tenant"]);
        let hdrs = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let me = token("me", &[]);
        let run = |principal: &Principal, path: &str, headers: &HashMap<String, String>| {
            let action = http("GET", path);
            p.evaluate(&EvalInput {
                principal: Some(principal),
                hop: Hop::Mesh,
                action: &action,
                headers,
            })
        };
        let cases: &[(&[(&str, &str)], Evaluation)] = &[
            (&[("x-tenant", "acme"), ("x-env", "prod")], allow("tenants")),
            (
                &[("x-tenant", "globex"), ("x-env", "prod")],
                allow("tenants"),
            ),
            (&[("x-tenant", "initech"), ("x-env", "prod")], NO),
            (&[("x-tenant", "acme")], NO),
            (&[("x-tenant", "ACME"), ("x-env", "prod")], NO),
            (&[], NO),
        ];
        for (pairs, want) in cases {
            assert_eq!(run(&me, "/h", &hdrs(pairs)), *want, "{pairs:?}");
        }

        let with_claims = |claims: serde_json::Value| {
            let mut p = token("me", &[]);
            p.claims = Arc::new(claims.as_object().cloned().unwrap_or_default());
            p
        };
        use serde_json::json;
        let ok = json!({"env": "prod", "groups": ["dev", "ops"], "level": 3, "admin": true});
        let cases: &[(serde_json::Value, Evaluation)] = &[
            (ok.clone(), allow("claims")),
            (
                json!({"env": ["prod"], "groups": "ops", "level": "3", "admin": "true"}),
                allow("claims"),
            ),
            (
                json!({"env": "dev", "groups": ["ops"], "level": 3, "admin": true}),
                NO,
            ),
            (
                json!({"env": "prod", "groups": [["ops"]], "level": 3, "admin": true}),
                NO,
            ),
            (
                json!({"env": "prod", "groups": ["ops"], "level": 3.5, "admin": true}),
                NO,
            ),
            (
                json!({"env": "prod", "groups": ["ops"], "level": 3, "admin": false}),
                NO,
            ),
            (json!({"env": "prod", "groups": ["ops"], "level": 3}), NO),
            (
                json!({"env": {"v": "prod"}, "groups": ["ops"], "level": 3, "admin": true}),
                NO,
            ),
            (
                json!({"env": null, "groups": ["ops"], "level": 3, "admin": true}),
                NO,
            ),
        ];
        for (claims, want) in cases {
            assert_eq!(
                run(&with_claims(claims.clone()), "/c", &HashMap::new()),
                *want,
                "{claims}"
            );
        }
        // A caller without a token has no claims to match.
        let mtls = peer("spiffe://td/a");
        assert_eq!(run(&mtls, "/c", &HashMap::new()), NO);

        let g = http("GET", "/g");
        assert_eq!(eval(&p, Some(&me), Hop::Gateway, &g), allow("gateway"));
        assert_eq!(eval(&p, Some(&me), Hop::Mesh, &g), NO);
    }

    #[test]
    fn dry_run_deny_rules_record_instead_of_denying() {
        let p = policy(
            "service: t
rules:
  - {id: trial-no-b, effect: deny, mode: dry-run, to: [{paths: [/b/**]}]}
  - {id: trial-no-c, effect: deny, mode: dry-run, to: [{paths: [/c]}]}
  - {id: no-c, effect: deny, to: [{paths: [/c]}]}
  - {id: trial-no-c2, effect: deny, mode: dry-run, to: [{paths: [/c]}]}
  - {id: trial-everything, effect: deny, mode: dry-run, to: [{paths: [/d]}]}
  - {id: all, to: [{paths: [/**]}], scopes: [t.x]}
",
        );
        assert!(!p.is_dry_run());
        let me = token("me", &["t.x"]);
        let bare = token("me", &[]);
        let would = |e: Evaluation, r: Option<&str>| Verdict {
            evaluation: e,
            would_deny: r.map(Into::into),
        };
        let cases: &[(&Principal, &str, Verdict, Evaluation)] = &[
            // Matched a dry-run deny rule: allowed, and the would-deny is recorded.
            (
                &me,
                "/b/1",
                would(allow("all"), Some("trial-no-b")),
                deny("trial-no-b"),
            ),
            // No dry-run rule matched: nothing recorded.
            (&me, "/a", would(allow("all"), None), allow("all")),
            // An enforced deny rule still denies; the would-deny is not reported then.
            (&me, "/c", would(deny("no-c"), None), deny("trial-no-c")),
            // Other denials keep the would-deny.
            (
                &bare,
                "/d",
                would(short("all", &["t.x"]), Some("trial-everything")),
                deny("trial-everything"),
            ),
        ];
        for (who, path, traced, enforced) in cases {
            let headers = HashMap::new();
            let action = http("GET", path);
            let input = EvalInput {
                principal: Some(who),
                hop: Hop::Mesh,
                action: &action,
                headers: &headers,
            };
            assert_eq!(p.evaluate_traced(&input), *traced, "{path}");
            assert_eq!(p.evaluate(&input), traced.evaluation, "{path}");
            // Policy tests check what would be enforced with every rule switched on.
            assert_eq!(p.evaluate_enforced(&input), *enforced, "{path}");
        }
    }

    #[test]
    fn dry_run_policy_is_flagged_not_applied_here() {
        let p = policy(
            "service: t
mode: dry-run
rules:
  - {id: a, to: [{paths: [/a]}]}
",
        );
        assert!(p.is_dry_run());
        assert_eq!(p.mode(), Mode::DryRun);
        // The policy evaluates as usual; turning a denial into an allow is the engine's job.
        let me = token("me", &[]);
        assert_eq!(eval(&p, Some(&me), Hop::Mesh, &http("GET", "/b")), NO);
        assert_eq!(
            eval(&p, Some(&me), Hop::Mesh, &http("GET", "/a")),
            allow("a")
        );
        assert!(!policy("service: t\nmode: enforce\n").is_dry_run());
        assert!(!policy("service: t\n").is_dry_run());
    }
}
