//! Compiled rules broken into atoms: one caller, one method, one target, with the
//! scopes and conditions they need. Two policies grant the same access when each
//! one's atoms are covered by the other's, whatever the rules are called, in which
//! order they come or how their clauses are grouped.
//!
//! Coverage is judged on the compiled patterns ([`PathPattern::covers`] and friends),
//! conservatively: an atom is covered only by one atom that certainly matches every
//! request it matches, so a change may be reported that a union of rules would have
//! absorbed, but no widening goes unreported.

use crate::policy::{
    ActionClause, Callers, Effect, FromClause, GrpcPattern, IdPattern, Mode, PathPattern, Rule,
    When,
};
use crate::principal::PrincipalKind;
use crate::request::Hop;

/// Who an atom is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Who {
    /// A deny rule with no `from`: every caller, with or without a credential.
    AnyOrAnonymous,
    /// `anonymous: true`.
    Anonymous,
    /// Any authenticated caller (that meets the [`CallerConditions`]).
    Any,
    /// One `from.principals` pattern.
    Principal(IdPattern),
    /// One `from.peers` pattern, in a `from` naming no principals.
    Peer(IdPattern),
}

/// What every caller of an atom must also be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct CallerConditions {
    /// With [`Who::Principal`]: `from.peers`, which the caller's mTLS peer must match.
    peers: Option<Vec<IdPattern>>,
    kinds: Option<Vec<PrincipalKind>>,
    issuers: Option<Vec<String>>,
    /// `from` fields this module does not know (see [`Callers::other_conditions`]).
    other: String,
}

/// A caller and its conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Caller {
    pub who: Who,
    and: CallerConditions,
}

/// What an atom's requests address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// Any path (a rule with no `to`, or a clause naming only methods).
    Any,
    /// One path pattern.
    Path(PathPattern),
    /// One gRPC method pattern.
    Grpc(GrpcPattern),
}

/// The `when` conditions, as sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Conditions {
    hop: Option<Hop>,
    headers: Vec<(String, Vec<String>)>,
    claims: Vec<(String, Vec<String>)>,
    other: String,
}

/// One caller, one method, one target: the smallest grant (or denial) a rule makes.
#[derive(Debug, Clone)]
pub(super) struct Atom {
    /// The rule it comes from (shown, never compared).
    pub rule: String,
    pub caller: Caller,
    /// Uppercase; `None`: any method.
    pub method: Option<String>,
    pub target: Target,
    /// Sorted scopes an allow atom requires.
    pub scopes: Vec<String>,
    pub when: Conditions,
}

/// A service policy's atoms, by what they do.
#[derive(Debug, Default)]
pub(super) struct Atoms {
    /// From allow rules.
    pub allow: Vec<Atom>,
    /// From enforced deny rules.
    pub deny: Vec<Atom>,
    /// From deny rules in `mode: dry-run` (they deny nothing yet).
    pub dry_run_deny: Vec<Atom>,
}

impl Atoms {
    /// Every atom of `rules`.
    pub fn of<'a>(rules: impl Iterator<Item = &'a Rule>) -> Atoms {
        let mut out = Atoms::default();
        for rule in rules {
            let list = match (rule.effect(), rule.mode()) {
                (Effect::Allow, _) => &mut out.allow,
                (Effect::Deny, Mode::Enforce) => &mut out.deny,
                (Effect::Deny, Mode::DryRun) => &mut out.dry_run_deny,
            };
            list.extend(atoms(rule));
        }
        out
    }
}

fn atoms(rule: &Rule) -> Vec<Atom> {
    let callers = callers(rule);
    let actions = match rule.to() {
        None => vec![(None, Target::Any)],
        Some(clauses) => clauses.iter().flat_map(actions).collect(),
    };
    let mut scopes = rule.scopes().to_vec();
    scopes.sort();
    scopes.dedup();
    let when = conditions(rule.when());
    let mut out = Vec::with_capacity(callers.len() * actions.len());
    for caller in &callers {
        for (method, target) in &actions {
            out.push(Atom {
                rule: rule.id().to_string(),
                caller: caller.clone(),
                method: method.clone(),
                target: target.clone(),
                scopes: scopes.clone(),
                when: when.clone(),
            });
        }
    }
    out
}

fn callers(rule: &Rule) -> Vec<Caller> {
    let bare = |who| Caller {
        who,
        and: CallerConditions::default(),
    };
    let c: &Callers = match rule.from() {
        FromClause::Unrestricted if rule.effect() == Effect::Deny => {
            return vec![bare(Who::AnyOrAnonymous)]
        }
        FromClause::Unrestricted => return vec![bare(Who::Any)],
        FromClause::Anonymous => return vec![bare(Who::Anonymous)],
        FromClause::Authenticated(c) => c,
    };
    let sorted = |list: Option<&[String]>| {
        list.map(|l| {
            let mut l = l.to_vec();
            l.sort();
            l.dedup();
            l
        })
    };
    let mut kinds = c.kinds().map(<[PrincipalKind]>::to_vec);
    if let Some(k) = kinds.as_mut() {
        k.sort_by_key(|k| k.as_str());
        k.dedup();
    }
    let mut and = CallerConditions {
        peers: None,
        kinds,
        issuers: sorted(c.issuers()),
        other: c.other_conditions(rule.effect() == Effect::Deny),
    };
    match (c.principals(), c.peers()) {
        (Some(principals), peers) => {
            and.peers = peers.map(<[IdPattern]>::to_vec);
            principals
                .iter()
                .map(|p| Caller {
                    who: Who::Principal(p.clone()),
                    and: and.clone(),
                })
                .collect()
        }
        (None, Some(peers)) => peers
            .iter()
            .map(|p| Caller {
                who: Who::Peer(p.clone()),
                and: and.clone(),
            })
            .collect(),
        (None, None) => vec![Caller { who: Who::Any, and }],
    }
}

fn actions(clause: &ActionClause) -> Vec<(Option<String>, Target)> {
    let methods: Vec<Option<String>> = match clause.methods() {
        None => vec![None],
        Some(list) => list.iter().cloned().map(Some).collect(),
    };
    let mut targets: Vec<Target> = clause.paths().iter().cloned().map(Target::Path).collect();
    targets.extend(clause.grpc().iter().cloned().map(Target::Grpc));
    if targets.is_empty() {
        targets.push(Target::Any);
    }
    let mut out = Vec::with_capacity(methods.len() * targets.len());
    for m in &methods {
        for t in &targets {
            out.push((m.clone(), t.clone()));
        }
    }
    out
}

fn conditions(when: &When) -> Conditions {
    let sorted = |pairs: &[(String, Vec<String>)]| {
        let mut pairs: Vec<(String, Vec<String>)> = pairs
            .iter()
            .map(|(name, values)| {
                let mut values = values.clone();
                values.sort();
                values.dedup();
                (name.clone(), values)
            })
            .collect();
        pairs.sort();
        pairs
    };
    Conditions {
        hop: when.hop(),
        headers: sorted(when.headers()),
        claims: sorted(when.claims()),
        other: when.other_conditions(),
    }
}

/// `Some(list)` covers `Some(sub)` when `sub` is a subset; `None` covers anything.
fn set_covers<T: PartialEq>(a: &Option<Vec<T>>, b: &Option<Vec<T>>) -> bool {
    match (a, b) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => b.iter().all(|x| a.contains(x)),
    }
}

/// Opaque fingerprints of `when` conditions: none covers any (a condition only
/// narrows); otherwise only an equal one.
fn other_covers(a: &str, b: &str) -> bool {
    a.is_empty() || a == b
}

impl CallerConditions {
    fn covers(&self, other: &CallerConditions) -> bool {
        let peers = match (&self.peers, &other.peers) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b.iter().all(|q| a.iter().any(|p| p.covers(q))),
        };
        peers
            && set_covers(&self.kinds, &other.kinds)
            && set_covers(&self.issuers, &other.issuers)
            // Not a narrowing: delegation (acting_for, delegated) changes which tokens
            // the caller is matched in, so only equal conditions cover each other.
            && self.other == other.other
    }

    fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(peers) = &self.peers {
            let list: Vec<String> = peers.iter().map(ToString::to_string).collect();
            out.push(format!("peer in [{}]", list.join(", ")));
        }
        if let Some(kinds) = &self.kinds {
            let list: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
            out.push(format!("kind {}", list.join("|")));
        }
        if let Some(issuers) = &self.issuers {
            out.push(format!("issuer {}", issuers.join("|")));
        }
        if !self.other.is_empty() {
            out.push(format!("other conditions: {}", self.other));
        }
        out
    }
}

impl Caller {
    /// Whether every caller `other` admits, `self` admits too.
    pub fn covers(&self, other: &Caller) -> bool {
        let who = match (&self.who, &other.who) {
            (Who::AnyOrAnonymous, _) => true,
            (_, Who::AnyOrAnonymous) => false,
            (Who::Anonymous, Who::Anonymous) => true,
            (Who::Anonymous, _) | (_, Who::Anonymous) => false,
            (Who::Any, _) => true,
            (_, Who::Any) => false,
            (Who::Principal(a), Who::Principal(b)) | (Who::Peer(a), Who::Peer(b)) => a.covers(b),
            // A principal and a peer are different credentials: never assumed to cover.
            (Who::Principal(_), Who::Peer(_)) | (Who::Peer(_), Who::Principal(_)) => false,
        };
        who && self.and.covers(&other.and)
    }

    /// Whether it admits callers by a wildcard: any caller, or a `*`/`**` pattern.
    pub fn is_wildcard(&self) -> bool {
        match &self.who {
            Who::AnyOrAnonymous | Who::Anonymous | Who::Any => true,
            Who::Principal(p) | Who::Peer(p) => p.has_wildcard(),
        }
    }

    /// `principal spiffe://… (kind service, issuer …)`.
    pub fn describe(&self) -> String {
        let who = match &self.who {
            Who::AnyOrAnonymous => "any caller, anonymous included".to_string(),
            Who::Anonymous => "anonymous callers".to_string(),
            Who::Any => "any authenticated caller".to_string(),
            Who::Principal(p) => format!("principal {p}"),
            Who::Peer(p) => format!("peer {p}"),
        };
        let and = self.and.describe();
        if and.is_empty() {
            who
        } else {
            format!("{who} ({})", and.join(", "))
        }
    }
}

impl Target {
    fn covers(&self, other: &Target) -> bool {
        match (self, other) {
            (Target::Any, _) => true,
            (Target::Path(a), Target::Path(b)) => a.covers(b),
            (Target::Grpc(a), Target::Grpc(b)) => a.covers(b),
            // A path pattern may match a gRPC request's path too, but is not assumed to.
            _ => false,
        }
    }

    fn is_wildcard(&self) -> bool {
        match self {
            Target::Any => true,
            Target::Path(p) => p.has_wildcard(),
            Target::Grpc(g) => g.has_wildcard(),
        }
    }
}

impl Conditions {
    /// Whether every request `other` admits, `self` admits too (fewer or looser
    /// conditions).
    fn covers(&self, other: &Conditions) -> bool {
        let pairs = |a: &[(String, Vec<String>)], b: &[(String, Vec<String>)]| {
            a.iter().all(|(name, values)| {
                b.iter()
                    .any(|(n, v)| n == name && v.iter().all(|x| values.contains(x)))
            })
        };
        (self.hop.is_none() || self.hop == other.hop)
            && pairs(&self.headers, &other.headers)
            && pairs(&self.claims, &other.claims)
            && other_covers(&self.other, &other.other)
    }

    /// `hop mesh`, `header x-env in [prod]`, …
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(hop) = self.hop {
            out.push(format!("hop {hop}"));
        }
        for (name, values) in &self.headers {
            out.push(format!("header {name} in [{}]", values.join(", ")));
        }
        for (name, values) in &self.claims {
            out.push(format!("claim {name} in [{}]", values.join(", ")));
        }
        if !self.other.is_empty() {
            out.push(format!("other conditions: {}", self.other));
        }
        out
    }
}

impl Atom {
    /// Whether `self` matches every request `other` matches and requires no scope
    /// `other` does not: replacing `other` by `self` takes nothing away.
    pub fn covers(&self, other: &Atom) -> bool {
        self.caller.covers(&other.caller)
            && (self.method.is_none() || self.method == other.method)
            && self.target.covers(&other.target)
            && self.scopes.iter().all(|s| other.scopes.contains(s))
            && self.when.covers(&other.when)
    }

    /// Whether the two are about the same caller, or the same action: one is then
    /// reported as the other widened or narrowed rather than as a gain and a loss.
    pub fn related(&self, other: &Atom) -> bool {
        self.caller.who == other.caller.who || self.action() == other.action()
    }

    /// A caller or target wildcard.
    pub fn is_wildcard(&self) -> bool {
        self.caller.is_wildcard() || self.target.is_wildcard()
    }

    /// `GET /transactions/{id}`, `* grpc:pkg.S/M`, `any action`.
    pub fn action(&self) -> String {
        let method = self.method.as_deref().unwrap_or("*");
        match &self.target {
            Target::Any if self.method.is_none() => "any action".to_string(),
            Target::Any => format!("{method} (any path)"),
            Target::Path(p) => format!("{method} {p}"),
            Target::Grpc(g) => format!("{method} grpc:{g}"),
        }
    }

    /// `scopes a, b`, then the `when` conditions.
    pub fn requires(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.scopes.is_empty() {
            out.push(format!("scopes {}", self.scopes.join(", ")));
        }
        out.extend(self.when.describe());
        out
    }

    /// What differs from `before`, one entry per aspect: `from: … -> …`.
    pub fn changes_from(&self, before: &Atom) -> Vec<String> {
        let mut out = Vec::new();
        let mut aspect = |name: &str, was: String, now: String| {
            if was != now {
                out.push(format!("{name}: {was} -> {now}"));
            }
        };
        aspect("from", before.caller.describe(), self.caller.describe());
        aspect("action", before.action(), self.action());
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        aspect("scopes", list(&before.scopes), list(&self.scopes));
        aspect(
            "conditions",
            list(&before.when.describe()),
            list(&self.when.describe()),
        );
        out
    }
}
