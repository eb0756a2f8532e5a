//! Evaluating a compiled [`ServicePolicy`] against one request.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::compile::{ActionClause, Callers, FromClause, Rule, ServicePolicy, When};
use super::spec::Effect;
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

impl ServicePolicy {
    /// Evaluates the rules against one request.
    pub fn evaluate(&self, input: &EvalInput<'_>) -> Evaluation {
        // DESIGN.md, Policies: "Default deny. Deny rules win over allow rules."
        // and the request path: "deny rules, then allow rules, else default deny".

        // 1. Any deny rule that matches denies, whatever the allow rules say.
        if let Some(rule) = self.deny.iter().find(|r| r.matches_except_scopes(input)) {
            return Evaluation::Deny {
                rule: rule.id.clone(),
            };
        }
        // 2. The first allow rule that matches, scopes included, allows.
        let mut short_of_scopes: Option<&Rule> = None;
        for rule in self.allow.iter().filter(|r| r.matches_except_scopes(input)) {
            let held = match input.principal {
                Some(p) => p.has_scopes(&rule.scopes),
                None => rule.scopes.is_empty(),
            };
            if held {
                return Evaluation::Allow {
                    rule: rule.id.clone(),
                };
            }
            short_of_scopes.get_or_insert(rule);
        }
        // 3. A caller with a token that lacks scopes gets `insufficient_scope`;
        //    without a token there is nothing to add scopes to, so plain no-match.
        if let (Some(rule), Some(p)) = (short_of_scopes, input.principal) {
            if p.has_token() {
                return Evaluation::InsufficientScope {
                    rule: rule.id.clone(),
                    required: rule.scopes.clone(),
                };
            }
        }
        // 4. Default deny.
        Evaluation::NoMatch
    }
}

impl Rule {
    /// Whether `from`, `to` and `when` all match.
    fn matches_except_scopes(&self, input: &EvalInput<'_>) -> bool {
        self.from.matches(self.effect, input.principal)
            && self
                .to
                .as_ref()
                .is_none_or(|clauses| clauses.iter().any(|c| c.matches(input.action)))
            && self.when.matches(input)
    }
}

impl FromClause {
    /// Whether the caller is one the rule is about.
    pub fn matches(&self, effect: Effect, principal: Option<&Principal>) -> bool {
        match (self, principal) {
            // A deny rule with no `from` is about everyone, anonymous callers
            // included; an allow rule never lets an anonymous caller in by omission.
            (FromClause::Unrestricted, None) => effect == Effect::Deny,
            (FromClause::Unrestricted, Some(_)) => true,
            (FromClause::Anonymous, p) => p.is_none(),
            (FromClause::Authenticated(_), None) => false,
            (FromClause::Authenticated(callers), Some(p)) => callers.matches(p),
        }
    }
}

impl Callers {
    /// Each named field must match; within a list, any entry.
    pub fn matches(&self, p: &Principal) -> bool {
        self.principals
            .as_ref()
            .is_none_or(|list| list.iter().any(|pat| pat.matches(&p.id)))
            && self.peers.as_ref().is_none_or(|list| {
                p.peer
                    .as_ref()
                    .is_some_and(|peer| list.iter().any(|pat| pat.matches(peer.as_str())))
            })
            && self
                .kinds
                .as_ref()
                .is_none_or(|list| list.contains(&p.kind))
            && self.issuers.as_ref().is_none_or(|list| {
                p.issuer
                    .as_ref()
                    .is_some_and(|iss| list.iter().any(|i| i == iss))
            })
    }
}

impl ActionClause {
    /// Methods (if named) and a path or gRPC pattern (if any are named).
    pub fn matches(&self, action: &Action) -> bool {
        let method = self
            .methods
            .as_ref()
            .is_none_or(|m| m.contains(&action.method));
        let target = (self.paths.is_empty() && self.grpc.is_empty())
            || self.paths.iter().any(|p| p.matches(&action.path))
            || action
                .grpc
                .as_deref()
                .is_some_and(|g| self.grpc.iter().any(|p| p.matches(g)));
        method && target
    }
}

impl When {
    /// Hop, headers and claims, each if named.
    pub fn matches(&self, input: &EvalInput<'_>) -> bool {
        self.hop.is_none_or(|hop| hop == input.hop)
            && self.headers.iter().all(|(name, values)| {
                input
                    .headers
                    .get(name)
                    .is_some_and(|v| values.iter().any(|want| want == v))
            })
            && (self.claims.is_empty()
                || input.principal.is_some_and(|p| {
                    self.claims.iter().all(|(name, values)| {
                        p.claims.get(name).is_some_and(|v| claim_matches(v, values))
                    })
                }))
    }
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
    use super::super::tests::{allow, deny, eval, http, peer, short, token, STS};
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
  - {id: star, from: {principals: ['*']}, to: [{paths: [/star]}]}
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
        assert_eq!(STS, "https://sts.hopwarden.local");
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
}
