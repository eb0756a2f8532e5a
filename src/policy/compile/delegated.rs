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
#[derive(Debug, Default)]
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
    ActingFor(ActingFor),
}

/// `from.acting_for` compiled: conditions on the token's subject; `None` = not named.
#[derive(Debug, Default)]
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
            (Some(spec), _) => Delegated::ActingFor(self.acting_for(index, id, spec)),
            (None, Some(true)) => Delegated::ActingFor(ActingFor::default()),
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
