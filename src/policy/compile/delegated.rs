//! Delegated callers in rules (`from.acting_for`, `from.delegated`): how a `from`
//! block treats a token whose subject is called for by an actor (RFC 8693 `act`).
//!
//! RFC 8693 4.1: "only the top-level claims and the outermost actor are considered
//! for access control decisions". So a rule that is about delegation matches its
//! `from` fields against the outermost actor (the party calling) and `acting_for`
//! against the token's subject (whom it calls for). A rule that says nothing about
//! delegation must not let a delegated token through by accident: an allow rule then
//! takes direct callers only, while a deny rule or a limit applies whenever any party
//! of the chain (the subject or any actor) matches it. Fail closed both ways.

use super::{Callers, FileContext};
use crate::policy::matcher::IdPattern;
use crate::policy::spec::ActingForSpec;
use crate::principal::actor::Delegation;
use crate::principal::{Principal, PrincipalKind};

/// The kind an actor has when a rule matches it: actors are workloads acting for
/// someone (a BFF, a gateway, a job), never people.
pub const ACTOR_KIND: PrincipalKind = PrincipalKind::Service;

/// How a `from` block treats delegated tokens.
#[derive(Clone, Debug, Default)]
pub enum Delegated {
    /// Direct callers only: a delegated token never matches. Allow rules without
    /// `acting_for`, and `delegated: false`.
    #[default]
    Direct,
    /// Direct callers, and delegated tokens where the subject or any actor matches
    /// the fields. Deny rules and limits that say nothing about delegation.
    AnyParty,
    /// Delegated tokens only: the fields match the outermost actor, `acting_for`
    /// the subject. `acting_for`, or `delegated: true` (acting for anyone).
    ActingFor(Box<ActingFor>),
}

/// `from.acting_for` compiled: conditions on the token's subject; `None` = not named.
#[derive(Clone, Debug, Default)]
pub struct ActingFor {
    pub(in crate::policy) principals: Option<Vec<IdPattern>>,
    pub(in crate::policy) kinds: Option<Vec<PrincipalKind>>,
    pub(in crate::policy) max_depth: Option<usize>,
}

impl ActingFor {
    /// Whether the delegated token's subject `p` (with chain `d`) is one the rule
    /// lets the actor call for.
    pub fn matches(&self, p: &Principal, d: &Delegation) -> bool {
        self.principal_ok(&p.id) && self.kind_ok(p.kind) && self.depth_ok(d.depth())
    }

    /// `acting_for.principals`, if named.
    pub fn principals(&self) -> Option<&[IdPattern]> {
        self.principals.as_deref()
    }

    /// `acting_for.kinds`, if named.
    pub fn kinds(&self) -> Option<&[PrincipalKind]> {
        self.kinds.as_deref()
    }

    /// `acting_for.max_depth`, if named.
    pub fn max_depth(&self) -> Option<usize> {
        self.max_depth
    }

    pub(in crate::policy) fn principal_ok(&self, id: &str) -> bool {
        self.principals
            .as_ref()
            .is_none_or(|list| list.iter().any(|pat| pat.matches(id)))
    }

    pub(in crate::policy) fn kind_ok(&self, kind: PrincipalKind) -> bool {
        self.kinds.as_ref().is_none_or(|list| list.contains(&kind))
    }

    pub(in crate::policy) fn depth_ok(&self, depth: usize) -> bool {
        self.max_depth.is_none_or(|max| depth <= max)
    }
}

impl Callers {
    /// Each named field must match the party the rule is about (see [`Delegated`]);
    /// within a list, any entry.
    pub fn matches(&self, p: &Principal) -> bool {
        match (&self.delegated, p.delegation.as_deref()) {
            (Delegated::ActingFor(_), None) => false,
            (_, None) => self.party_ok(p, &p.id, p.kind),
            (Delegated::Direct, Some(_)) => false,
            (Delegated::AnyParty, Some(d)) => {
                self.party_ok(p, &p.id, p.kind)
                    || d.actors()
                        .iter()
                        .any(|a| self.party_ok(p, &a.sub, ACTOR_KIND))
            }
            (Delegated::ActingFor(acting_for), Some(d)) => {
                self.party_ok(p, &d.actor().sub, ACTOR_KIND) && acting_for.matches(p, d)
            }
        }
    }

    /// How the block treats delegated tokens.
    pub fn delegated(&self) -> &Delegated {
        &self.delegated
    }

    /// The fields against one party (`id`, `kind`); the mTLS peer and the token
    /// issuer are the same for every party of a token.
    pub(in crate::policy) fn party_ok(&self, p: &Principal, id: &str, kind: PrincipalKind) -> bool {
        self.principal_id_ok(id)
            && self.kinds.as_ref().is_none_or(|list| list.contains(&kind))
            && self.peer_ok(p)
            && self.issuer_ok(p)
            && self.credential_ok(p)
    }

    pub(in crate::policy) fn principal_id_ok(&self, id: &str) -> bool {
        self.principals
            .as_ref()
            .is_none_or(|list| list.iter().any(|pat| pat.matches(id)))
    }
}

impl FileContext<'_> {
    /// Compiles `from.acting_for` and `from.delegated`. `deny_like`: a deny rule or a
    /// limit, whose default is [`Delegated::AnyParty`].
    pub(super) fn delegated(
        &mut self,
        index: usize,
        id: &str,
        acting_for: Option<ActingForSpec>,
        delegated: Option<bool>,
        deny_like: bool,
    ) -> Delegated {
        match (acting_for, delegated) {
            (Some(_), Some(false)) => {
                let at = self.key_in(index, "delegated");
                let message = format!(
                    "rule {id:?}: `delegated: false` contradicts `acting_for` (which is only about delegated calls)"
                );
                self.error(at, message);
                Delegated::Direct
            }
            (Some(spec), _) => Delegated::ActingFor(Box::new(self.acting_for(index, id, spec))),
            (None, Some(true)) => Delegated::ActingFor(Box::default()),
            (None, Some(false)) => Delegated::Direct,
            (None, None) if deny_like => Delegated::AnyParty,
            (None, None) => Delegated::Direct,
        }
    }

    fn acting_for(&mut self, index: usize, id: &str, spec: ActingForSpec) -> ActingFor {
        self.non_empty(index, id, "acting_for.principals", &spec.principals);
        self.non_empty(index, id, "acting_for.kinds", &spec.kinds);
        if spec.max_depth == Some(0) {
            let at = self.key_in(index, "max_depth");
            let message = format!(
                "rule {id:?}: acting_for.max_depth is 0 (a delegated call has at least one actor, so it would match nothing); omit acting_for instead"
            );
            self.error(at, message);
        }
        ActingFor {
            principals: spec
                .principals
                .map(|list| self.patterns(index, &list, IdPattern::principal)),
            kinds: spec.kinds,
            max_depth: spec.max_depth,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::{allow, deny, eval, http, peer, token};
    use crate::policy::{Evaluation, PolicySet, ServicePolicy};
    use crate::principal::actor::Actor;
    use crate::request::Hop;
    use std::path::PathBuf;
    use std::sync::Arc;

    const NO: Evaluation = Evaluation::NoMatch;

    fn policy(yaml: &str) -> Arc<ServicePolicy> {
        let set = PolicySet::from_sources(&[(PathBuf::from("t.yaml"), yaml.to_string())])
            .unwrap_or_else(|e| panic!("{e}"));
        set.get("t").unwrap().clone()
    }

    fn errors(yaml: &str) -> String {
        match PolicySet::from_sources(&[(PathBuf::from("t.yaml"), yaml.to_string())]) {
            Ok(_) => panic!("compiled: {yaml}"),
            Err(e) => e.to_string(),
        }
    }

    /// `subject` of `kind`, called for by `actors` (outermost first).
    fn delegated(subject: &str, kind: PrincipalKind, actors: &[&str]) -> Principal {
        let mut p = token(subject, &["shop.read"]);
        p.kind = kind;
        let actors = actors
            .iter()
            .map(|a| Actor {
                sub: a.to_string(),
                iss: None,
            })
            .collect();
        p.delegation = Delegation::new(actors).map(Arc::new);
        p
    }

    fn user(id: &str) -> Principal {
        let mut p = token(id, &["shop.read"]);
        p.kind = PrincipalKind::User;
        p
    }

    const SHOP: &str = "service: t
rules:
  - id: bff-for-users
    from: {principals: [customer-bff], acting_for: {kinds: [user]}}
    to: [{paths: [/orders]}]
  - id: bff-for-alice-shallow
    from: {principals: [customer-bff], acting_for: {principals: [alice], max_depth: 1}}
    to: [{paths: [/alice]}]
  - id: users-directly
    from: {kinds: [user]}
    to: [{paths: [/orders, /profile]}]
  - id: bff-itself
    from: {principals: [customer-bff]}
    to: [{paths: [/health]}]
  - id: anyone-direct
    to: [{paths: [/open]}]
  - id: delegated-any
    from: {delegated: true}
    to: [{paths: [/delegated]}]
";

    #[test]
    fn acting_for_matches_the_actor_and_the_subject_separately() {
        let p = policy(SHOP);
        let u = PrincipalKind::User;
        let s = PrincipalKind::Service;
        let cases: Vec<(Principal, &str, Evaluation)> = vec![
            // The BFF acting for a user: only the rule that names that pair.
            (
                delegated("alice", u, &["customer-bff"]),
                "/orders",
                allow("bff-for-users"),
            ),
            (
                delegated("bob", u, &["customer-bff"]),
                "/orders",
                allow("bff-for-users"),
            ),
            // Another actor for the same user: no rule names it.
            (delegated("alice", u, &["other-bff"]), "/orders", NO),
            // The BFF acting for a service: the subject kind does not match.
            (delegated("batch", s, &["customer-bff"]), "/orders", NO),
            // The user calling directly: the ordinary rule, not the delegated one.
            (user("alice"), "/orders", allow("users-directly")),
            // A delegated token never passes a rule meant for the subject itself...
            (delegated("alice", u, &["customer-bff"]), "/profile", NO),
            // ...nor one meant for the actor calling for itself...
            (delegated("alice", u, &["customer-bff"]), "/health", NO),
            (token("customer-bff", &[]), "/health", allow("bff-itself")),
            // ...nor an allow rule without `from`.
            (delegated("alice", u, &["customer-bff"]), "/open", NO),
            (token("x", &[]), "/open", allow("anyone-direct")),
            // `delegated: true`: any delegated call; never a direct one.
            (
                delegated("alice", u, &["x"]),
                "/delegated",
                allow("delegated-any"),
            ),
            (user("alice"), "/delegated", NO),
            // Rule-level depth: one actor, not two.
            (
                delegated("alice", u, &["customer-bff"]),
                "/alice",
                allow("bff-for-alice-shallow"),
            ),
            (
                delegated("alice", u, &["customer-bff", "web"]),
                "/alice",
                NO,
            ),
            (delegated("bob", u, &["customer-bff"]), "/alice", NO),
            // Only the outermost actor is the caller: an earlier one is not.
            (
                delegated("alice", u, &["web", "customer-bff"]),
                "/orders",
                NO,
            ),
            // A peer-only caller is never delegated.
            (peer("spiffe://hopwarden.local/ns/a/sa/b"), "/delegated", NO),
        ];
        for (who, path, want) in cases {
            assert_eq!(
                eval(&p, Some(&who), Hop::Gateway, &http("GET", path)),
                want,
                "{} {:?} {path}",
                who.id,
                who.delegation.as_ref().map(|d| d.chain())
            );
        }
    }

    #[test]
    fn deny_rules_apply_whenever_a_named_party_takes_part() {
        let p = policy(
            "service: t
rules:
  - {id: all, from: {delegated: true}, to: [{paths: [/**]}]}
  - {id: all-direct, to: [{paths: [/**]}]}
  - {id: no-mallory, effect: deny, from: {principals: [mallory]}}
  - {id: no-users-admin, effect: deny, from: {kinds: [user]}, to: [{paths: [/admin]}]}
  - {id: no-delegated-payouts, effect: deny, from: {delegated: true}, to: [{paths: [/payouts]}]}
  - {id: direct-only-ops, effect: deny, from: {delegated: false, principals: [ops]}, to: [{paths: [/ops]}]}
",
        );
        let u = PrincipalKind::User;
        let s = PrincipalKind::Service;
        let cases: Vec<(Principal, &str, Evaluation)> = vec![
            (token("mallory", &[]), "/x", deny("no-mallory")),
            // Mallory as the subject, as the actor, or as an earlier actor.
            (delegated("mallory", u, &["bff"]), "/x", deny("no-mallory")),
            (
                delegated("alice", u, &["mallory"]),
                "/x",
                deny("no-mallory"),
            ),
            (
                delegated("alice", u, &["bff", "mallory"]),
                "/x",
                deny("no-mallory"),
            ),
            (delegated("alice", u, &["bff"]), "/x", allow("all")),
            // A user's request through a BFF is still a user's request.
            (
                delegated("alice", u, &["bff"]),
                "/admin",
                deny("no-users-admin"),
            ),
            (delegated("job", s, &["bff"]), "/admin", allow("all")),
            (
                delegated("job", s, &["bff"]),
                "/payouts",
                deny("no-delegated-payouts"),
            ),
            (token("job", &[]), "/payouts", allow("all-direct")),
            // `delegated: false` narrows a deny rule to direct callers.
            (token("ops", &[]), "/ops", deny("direct-only-ops")),
            (delegated("alice", u, &["ops"]), "/ops", allow("all")),
        ];
        for (who, path, want) in cases {
            assert_eq!(
                eval(&p, Some(&who), Hop::Gateway, &http("GET", path)),
                want,
                "{} {:?} {path}",
                who.id,
                who.delegation.as_ref().map(|d| d.chain())
            );
        }
    }

    #[test]
    fn limits_count_a_delegated_request_against_any_party_they_name() {
        let p = policy(
            "service: t
rules:
  - {id: bff, from: {principals: [bff], acting_for: {}}, to: [{paths: [/x]}]}
  - {id: direct, to: [{paths: [/x]}]}
limits:
  - {id: bff-calls, from: {principals: [bff]}, rate: 10/s}
  - {id: alice-calls, from: {principals: [alice]}, rate: 10/s}
  - {id: bff-for-users, from: {principals: [bff], acting_for: {kinds: [user]}}, rate: 10/s}
",
        );
        let headers = std::collections::HashMap::new();
        let action = http("GET", "/x");
        let hits = |who: &Principal, rule: &str| -> Vec<String> {
            let input = crate::policy::EvalInput {
                principal: Some(who),
                hop: Hop::Mesh,
                action: &action,
                headers: &headers,
            };
            p.limits_for(rule, &input)
                .iter()
                .map(|h| h.limit.to_string())
                .collect()
        };
        let u = PrincipalKind::User;
        assert_eq!(
            hits(&delegated("alice", u, &["bff"]), "bff"),
            ["bff-calls", "alice-calls", "bff-for-users"]
        );
        assert_eq!(
            hits(&delegated("job", PrincipalKind::Service, &["bff"]), "bff"),
            ["bff-calls"]
        );
        // Called directly, neither is acting for anyone.
        assert_eq!(hits(&token("bff", &[]), "direct"), ["bff-calls"]);
        assert_eq!(hits(&user("alice"), "direct"), ["alice-calls"]);
    }

    #[test]
    fn contradictions_and_empty_lists_are_refused() {
        let cases: &[(&str, &str)] = &[
            (
                "{id: r, from: {acting_for: {kinds: [user]}, delegated: false}}",
                "`delegated: false` contradicts `acting_for`",
            ),
            (
                "{id: r, from: {acting_for: {principals: []}}}",
                "acting_for.principals is empty",
            ),
            (
                "{id: r, from: {acting_for: {kinds: []}}}",
                "acting_for.kinds is empty",
            ),
            (
                "{id: r, from: {acting_for: {max_depth: 0}}}",
                "acting_for.max_depth is 0",
            ),
            (
                "{id: r, from: {anonymous: true, delegated: true}}",
                "`anonymous: true` cannot be combined",
            ),
            (
                "{id: r, from: {acting_for: {kind: [user]}}}",
                "unknown field `kind`",
            ),
        ];
        for (rule, want) in cases {
            let err = errors(&format!("service: t\nrules:\n  - {rule}\n"));
            assert!(err.contains(want), "{rule}: {err}");
        }
    }
}
