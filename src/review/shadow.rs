//! Whether a deny rule shadows an allow rule, judged on the compiled patterns.
//!
//! Conservative: `Covers` only when every request the allow rule matches is
//! certainly matched by the deny rule; `Overlaps` whenever one request might match
//! both; `Disjoint` only when none can.

use crate::policy::{
    ActionClause, Callers, Delegated, FromClause, GrpcPattern, IdPattern, PathPattern, Rule, When,
};

/// How a deny rule's matches relate to an allow rule's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Relation {
    /// Every request the allow rule matches, the deny rule matches.
    Covers,
    /// Some request may match both.
    Overlaps,
    /// No request matches both.
    Disjoint,
}

impl Relation {
    fn and(self, other: Relation) -> Relation {
        use Relation::*;
        match (self, other) {
            (Disjoint, _) | (_, Disjoint) => Disjoint,
            (Covers, Covers) => Covers,
            _ => Overlaps,
        }
    }

    /// The relation of the deny set to the allow set, from per-item checks: each
    /// allow item covered by some deny item; any pair overlapping.
    fn of<D, A>(
        deny: &[D],
        allow: &[A],
        covers: impl Fn(&D, &A) -> bool,
        overlaps: impl Fn(&D, &A) -> bool,
    ) -> Relation {
        if allow.iter().all(|a| deny.iter().any(|d| covers(d, a))) {
            Relation::Covers
        } else if allow.iter().any(|a| deny.iter().any(|d| overlaps(d, a))) {
            Relation::Overlaps
        } else {
            Relation::Disjoint
        }
    }

    /// For an optional list: `None` on the deny side covers; `None` on the allow side
    /// (anything) only overlaps a named deny list.
    fn of_opt<D, A>(
        deny: Option<&[D]>,
        allow: Option<&[A]>,
        covers: impl Fn(&D, &A) -> bool,
        overlaps: impl Fn(&D, &A) -> bool,
    ) -> Relation {
        match (deny, allow) {
            (None, _) => Relation::Covers,
            (Some(_), None) => Relation::Overlaps,
            (Some(d), Some(a)) => Relation::of(d, a, covers, overlaps),
        }
    }
}

/// How `deny` relates to `allow`: from, to and when must all meet.
pub(super) fn relation(deny: &Rule, allow: &Rule) -> Relation {
    from_relation(deny.from(), allow.from())
        .and(to_relation(deny.to(), allow.to()))
        .and(when_relation(deny.when(), allow.when()))
}

fn from_relation(deny: &FromClause, allow: &FromClause) -> Relation {
    let any = Callers::default();
    let allow = match allow {
        FromClause::Anonymous => {
            return match deny {
                FromClause::Authenticated(_) => Relation::Disjoint,
                _ => Relation::Covers,
            }
        }
        FromClause::Unrestricted => &any,
        FromClause::Authenticated(c) => c,
    };
    let deny = match deny {
        FromClause::Unrestricted => return Relation::Covers,
        FromClause::Anonymous => return Relation::Disjoint,
        FromClause::Authenticated(c) => c,
    };
    let ids = |d: Option<&[IdPattern]>, a: Option<&[IdPattern]>| {
        Relation::of_opt(d, a, IdPattern::covers, IdPattern::overlaps)
    };
    ids(deny.principals(), allow.principals())
        .and(ids(deny.peers(), allow.peers()))
        .and(same(deny.kinds(), allow.kinds()))
        .and(same(deny.issuers(), allow.issuers()))
        .and(same(deny.credentials(), allow.credentials()))
        .and(delegation_relation(deny.delegated(), allow.delegated()))
}

/// Whether the delegated tokens a deny rule takes meet the ones an allow rule takes
/// (compile/delegated.rs). A deny rule that is about any party covers, as far as
/// delegation goes: its fields meet the allow rule's wherever those are matched.
fn delegation_relation(deny: &Delegated, allow: &Delegated) -> Relation {
    match (deny, allow) {
        (Delegated::AnyParty, _) | (Delegated::Direct, Delegated::Direct) => Relation::Covers,
        (Delegated::Direct, _) | (Delegated::ActingFor(_), Delegated::Direct) => Relation::Disjoint,
        (Delegated::ActingFor(_), Delegated::AnyParty) => Relation::Overlaps,
        (Delegated::ActingFor(d), Delegated::ActingFor(_)) => {
            let any_subject =
                d.principals().is_none() && d.kinds().is_none() && d.max_depth().is_none();
            if any_subject {
                Relation::Covers
            } else {
                Relation::Overlaps
            }
        }
    }
}

fn same<T: PartialEq>(deny: Option<&[T]>, allow: Option<&[T]>) -> Relation {
    Relation::of_opt(deny, allow, PartialEq::eq, PartialEq::eq)
}

fn to_relation(deny: Option<&[ActionClause]>, allow: Option<&[ActionClause]>) -> Relation {
    Relation::of_opt(
        deny,
        allow,
        |d, a| clause_relation(d, a) == Relation::Covers,
        |d, a| clause_relation(d, a) != Relation::Disjoint,
    )
}

fn clause_relation(d: &ActionClause, a: &ActionClause) -> Relation {
    let methods = same(d.methods(), a.methods());
    let d_any = d.paths().is_empty() && d.grpc().is_empty();
    let a_any = a.paths().is_empty() && a.grpc().is_empty();
    // A gRPC call's path is `/pkg.Service/Method`, so path and gRPC patterns can meet.
    let as_path = |g: &GrpcPattern| PathPattern::parse(&format!("/{g}")).ok();
    let target = if d_any {
        Relation::Covers
    } else if a_any {
        Relation::Overlaps
    } else {
        let paths_covered = a
            .paths()
            .iter()
            .all(|ap| d.paths().iter().any(|dp| dp.covers(ap)));
        let grpc_covered = a
            .grpc()
            .iter()
            .all(|ag| d.grpc().iter().any(|dg| dg.covers(ag)));
        let overlap = a.paths().iter().any(|ap| {
            d.paths().iter().any(|dp| dp.overlaps(ap))
                || d.grpc()
                    .iter()
                    .filter_map(as_path)
                    .any(|dp| dp.overlaps(ap))
        }) || a.grpc().iter().any(|ag| {
            d.grpc().iter().any(|dg| dg.overlaps(ag))
                || as_path(ag).is_some_and(|ap| d.paths().iter().any(|dp| dp.overlaps(&ap)))
        });
        if paths_covered && grpc_covered {
            Relation::Covers
        } else if overlap {
            Relation::Overlaps
        } else {
            Relation::Disjoint
        }
    };
    methods.and(target)
}

fn when_relation(deny: &When, allow: &When) -> Relation {
    let hop = match (deny.hop(), allow.hop()) {
        (None, _) => Relation::Covers,
        (Some(_), None) => Relation::Overlaps,
        (Some(d), Some(a)) if d == a => Relation::Covers,
        _ => Relation::Disjoint,
    };
    let values =
        |d: &[(String, Vec<String>)], a: &[(String, Vec<String>)], disjoint_possible: bool| {
            d.iter().fold(Relation::Covers, |acc, (name, dv)| {
                let rel = match a.iter().find(|(n, _)| n == name) {
                    None => Relation::Overlaps,
                    Some((_, av)) if av.iter().all(|v| dv.contains(v)) => Relation::Covers,
                    Some((_, av)) if disjoint_possible && !av.iter().any(|v| dv.contains(v)) => {
                        Relation::Disjoint
                    }
                    Some(_) => Relation::Overlaps,
                };
                acc.and(rel)
            })
        };
    // A header has one value, so disjoint value sets never meet; a claim can be an
    // array holding values from both sets.
    hop.and(values(deny.headers(), allow.headers(), true))
        .and(values(deny.claims(), allow.claims(), false))
}
