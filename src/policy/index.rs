//! A per-service index of rules by what a request certainly has: the caller.
//!
//! A shared platform API can have thousands of callers, each with a least-privilege
//! rule of its own. Scanning them all on every cache miss makes a check cost grow
//! with the rule count; the index looks up the few rules that can be about this
//! caller instead.
//!
//! The index only *selects candidates*: a rule is filed under a key that every caller
//! it can match must have (its exact principal ids, else its exact peer ids, else its
//! kinds, else its issuers), or in a fallback list that every authenticated request
//! reads. Whether a candidate matches is still decided by the rule's own `matches`
//! functions in `eval.rs`, so a `from` field the index does not know (or a new one)
//! only makes a rule a candidate more often, never less. Candidates come back in file
//! order, so the evaluation order (deny rules, then allow rules, first match decides)
//! is the plain scan's; the property test in `index/tests.rs` holds it to that.
//! Among one caller's candidates, rules for another first path segment are skipped
//! with one comparison each (`index/segment.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use super::compile::{Callers, FromClause, Rule};
use crate::principal::{Principal, PrincipalKind};
use segment::SegmentKey;

/// Position of a rule in its list (deny or allow), in file order.
type Position = u32;

/// A service's deny rules and allow rules, each indexed.
#[derive(Debug)]
pub(super) struct PolicyIndex {
    pub(super) deny: RuleIndex,
    pub(super) allow: RuleIndex,
}

/// Set (to anything) to compile policies without an index, so every check scans every
/// rule as before: a development switch for `bench/scale.sh`, which measures both
/// ways in one run. Not a setting: the answers are the same, only the cost differs.
pub const PLAIN_SCAN_ENV: &str = "HOPWARDEN_DEV_PLAIN_SCAN";

impl PolicyIndex {
    /// Indexes a service's rules, unless [`PLAIN_SCAN_ENV`] is set.
    pub(super) fn build(deny: &[Rule], allow: &[Rule]) -> Option<PolicyIndex> {
        static PLAIN_SCAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *PLAIN_SCAN.get_or_init(|| std::env::var_os(PLAIN_SCAN_ENV).is_some()) {
            return None;
        }
        // Deny rules' paths compare ignoring ASCII case, allow rules' exactly.
        Some(PolicyIndex {
            deny: RuleIndex::build(deny, true),
            allow: RuleIndex::build(allow, false),
        })
    }
}

/// The index of one list of rules (a service's deny rules, or its allow rules).
#[derive(Debug, Default)]
pub(super) struct RuleIndex {
    /// Rules whose `from.principals` are all exact ids, under each id.
    by_principal: HashMap<Arc<str>, Positions>,
    /// Rules whose `from.peers` are all exact SPIFFE IDs, under each id.
    by_peer: HashMap<Arc<str>, Positions>,
    /// Rules keyed by neither id but naming `from.kinds`, under each kind.
    by_kind: HashMap<PrincipalKind, Vec<Position>>,
    /// Rules keyed by none of the above but naming `from.issuers`, under each issuer.
    by_issuer: HashMap<Arc<str>, Positions>,
    /// Authenticated-only rules with no key (wildcard ids, no named field).
    authenticated: Vec<Position>,
    /// `anonymous: true` rules: read only for callers with no credential.
    anonymous: Vec<Position>,
    /// Everything else (no `from`, or a `from` shape the index does not know): read
    /// for every request.
    always: Vec<Position>,
    /// Each rule's key of the first path segment it requires (see `segment.rs`).
    segments: Box<[SegmentKey]>,
    /// Whether the list's paths compare ignoring ASCII case.
    fold: bool,
}

/// The most lists one lookup merges: principal, peer, kind, issuer, authenticated,
/// always.
const MAX_LISTS: usize = 6;

impl RuleIndex {
    /// Indexes `rules` (one list, in file order); `fold`: their paths compare
    /// ignoring ASCII case.
    pub(super) fn build(rules: &[Rule], fold: bool) -> RuleIndex {
        let mut index = RuleIndex {
            segments: rules.iter().map(|r| segment::rule_key(r, fold)).collect(),
            fold,
            ..RuleIndex::default()
        };
        for (at, rule) in rules.iter().enumerate() {
            // More than u32::MAX rules cannot be loaded in memory anyway; saturate
            // rather than wrap so a position never points at an earlier rule.
            let at = Position::try_from(at).unwrap_or(Position::MAX);
            match &rule.from {
                FromClause::Anonymous => index.anonymous.push(at),
                FromClause::Authenticated(callers) => index.file(callers, at),
                _ => index.always.push(at),
            }
        }
        index.by_principal.shrink_to_fit();
        index.by_peer.shrink_to_fit();
        index.by_issuer.shrink_to_fit();
        index
    }

    /// Files an authenticated rule under the most selective key it certainly has.
    fn file(&mut self, callers: &Callers, at: Position) {
        // Keys share the patterns' own strings: one copy of each id, however many
        // places hold it.
        if let Some(ids) = exact_ids(callers.principals.as_deref()) {
            for id in ids {
                self.by_principal.entry(id).or_default().push_once(at);
            }
        } else if let Some(ids) = exact_ids(callers.peers.as_deref()) {
            for id in ids {
                self.by_peer.entry(id).or_default().push_once(at);
            }
        } else if let Some(kinds) = callers.kinds.as_deref().filter(|k| !k.is_empty()) {
            for kind in kinds {
                push_once(self.by_kind.entry(*kind).or_default(), at);
            }
        } else if let Some(issuers) = callers.issuers.as_deref().filter(|i| !i.is_empty()) {
            for issuer in issuers {
                self.by_issuer
                    .entry(issuer.as_str().into())
                    .or_default()
                    .push_once(at);
            }
        } else {
            self.authenticated.push(at);
        }
    }

    /// The key [`RuleIndex::admits`] compares rules against, for a request's path.
    pub(super) fn path_key(&self, path: &str) -> Option<SegmentKey> {
        segment::request_key(path, self.fold)
    }

    /// Whether the rule at `at` may match a request whose path has `key` (a rule
    /// for other paths' first segment cannot).
    pub(super) fn admits(&self, at: usize, key: Option<SegmentKey>) -> bool {
        self.segments
            .get(at)
            .is_none_or(|&rule| segment::admits(rule, key))
    }

    /// The positions of the rules that may match `principal`, in file order, each once.
    pub(super) fn candidates(&self, principal: Option<&Principal>) -> Candidates<'_> {
        let mut lists: [&[Position]; MAX_LISTS] = [&[]; MAX_LISTS];
        match principal {
            None => {
                lists[0] = &self.anonymous;
                lists[1] = &self.always;
            }
            Some(p) => {
                lists[0] = get(&self.by_principal, &p.id);
                lists[1] = p
                    .peer
                    .as_ref()
                    .map_or(&[][..], |peer| get(&self.by_peer, peer.as_str()));
                lists[2] = self.by_kind.get(&p.kind).map_or(&[][..], Vec::as_slice);
                lists[3] = p
                    .issuer
                    .as_deref()
                    .map_or(&[][..], |iss| get(&self.by_issuer, iss));
                lists[4] = &self.authenticated;
                lists[5] = &self.always;
            }
        }
        Candidates { lists }
    }
}

/// The list filed under `key`, or none.
fn get<'a>(map: &'a HashMap<Arc<str>, Positions>, key: &str) -> &'a [Position] {
    map.get(key).map_or(&[], Positions::as_slice)
}

/// The positions filed under one key. Most keys of a large estate name one rule
/// (one caller, one rule): that one is held inline, without a list of its own.
#[derive(Debug)]
enum Positions {
    One(Position),
    Many(Vec<Position>),
}

impl Default for Positions {
    fn default() -> Self {
        Positions::Many(Vec::new())
    }
}

impl Positions {
    fn as_slice(&self) -> &[Position] {
        match self {
            Positions::One(at) => std::slice::from_ref(at),
            Positions::Many(list) => list,
        }
    }

    fn push_once(&mut self, at: Position) {
        match self {
            Positions::Many(list) if list.is_empty() => *self = Positions::One(at),
            Positions::Many(list) => push_once(list, at),
            Positions::One(first) if *first != at => *self = Positions::Many(vec![*first, at]),
            Positions::One(_) => {}
        }
    }
}

/// The ids of a named list whose entries are all exact (no wildcard); `None` when the
/// field is not named, empty, or has a wildcard (the rule is then filed elsewhere).
fn exact_ids(list: Option<&[super::IdPattern]>) -> Option<Vec<Arc<str>>> {
    let list = list.filter(|l| !l.is_empty())?;
    list.iter().map(super::IdPattern::exact_shared).collect()
}

fn push_once(list: &mut Vec<Position>, at: Position) {
    // Rules are filed in order, so a repeat (`principals: [a, a]`) is the last entry.
    if list.last() != Some(&at) {
        list.push(at);
    }
}

/// Positions from up to [`MAX_LISTS`] sorted lists, merged in order without repeats;
/// allocation-free, so a check still never allocates to evaluate.
#[derive(Debug)]
pub(super) struct Candidates<'a> {
    lists: [&'a [Position]; MAX_LISTS],
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let next = self.lists.iter().filter_map(|l| l.first()).min().copied()?;
        for list in &mut self.lists {
            if list.first() == Some(&next) {
                *list = &list[1..];
            }
        }
        usize::try_from(next).ok()
    }
}

mod segment;
#[cfg(test)]
mod tests;
