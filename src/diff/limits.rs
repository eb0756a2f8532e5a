//! One service's rate limits before and after: limits added or removed, a rate or
//! burst raised or lowered, whose budget (`per`) changed, the requests a limit counts
//! (`from` / `to` / `when`) narrowed or widened, and which allow rules' requests count
//! against it (a rule's `limits:`).
//!
//! A limit only ever refuses, so a change that makes it refuse less (removed, raised,
//! counting fewer requests, a budget per caller instead of one shared) widens access,
//! and `--fail-on broaden` counts it.

use std::cmp::Ordering;

use super::atoms::{Atom, Atoms};
use super::{Change, Direction, Kind};
use crate::limits::{Per, Rate};
use crate::policy::{Effect, Limit, ServicePolicy};

/// What one limit is, for comparing: everything but its id and description.
struct Compiled<'a> {
    index: usize,
    limit: &'a Limit,
    selector: Vec<Atom>,
}

impl<'a> Compiled<'a> {
    fn of(policy: &'a ServicePolicy) -> Vec<Compiled<'a>> {
        policy
            .limits()
            .iter()
            .enumerate()
            .map(|(index, limit)| {
                // The selector is compiled as a deny rule: its atoms are in `deny`
                // (or `dry_run_deny`); all of them are what the limit counts.
                let atoms = Atoms::of(std::iter::once(limit.selector()));
                let selector = atoms
                    .allow
                    .into_iter()
                    .chain(atoms.deny)
                    .chain(atoms.dry_run_deny)
                    .collect();
                Compiled {
                    index,
                    limit,
                    selector,
                }
            })
            .collect()
    }

    fn id(&self) -> &str {
        self.limit.id()
    }

    /// Who and what it counts, for the report: callers, actions, conditions.
    fn describe(&self) -> (Option<String>, Vec<String>, Vec<String>) {
        let mut callers: Vec<String> = self.selector.iter().map(|a| a.caller.describe()).collect();
        callers.dedup();
        let mut actions: Vec<String> = self.selector.iter().map(Atom::action).collect();
        actions.sort();
        actions.dedup();
        let requires = self
            .selector
            .first()
            .map(|a| a.when.describe())
            .unwrap_or_default();
        (Some(callers.join("; ")), actions, requires)
    }

    /// `200/s, burst 400, per principal`.
    fn terms(&self) -> String {
        let l = self.limit;
        format!(
            "{}, burst {}, per {}",
            l.rate(),
            l.burst(),
            l.per().as_str()
        )
    }

    /// The same limit under another id: every term and every request counted alike.
    fn same_as(&self, other: &Compiled, old: &ServicePolicy, new: &ServicePolicy) -> bool {
        let (a, b) = (self.limit, other.limit);
        a.rate() == b.rate()
            && a.burst() == b.burst()
            && a.per() == b.per()
            && a.attached() == b.attached()
            && old.rules_naming(self.index) == new.rules_naming(other.index)
            && all_covered(&self.selector, &other.selector)
            && all_covered(&other.selector, &self.selector)
    }
}

/// Whether every atom of `these` is covered by one of `by`.
fn all_covered(by: &[Atom], these: &[Atom]) -> bool {
    these.iter().all(|t| by.iter().any(|b| b.covers(t)))
}

/// Requests per unit time, compared exactly (`count / period`).
fn compare_rates(a: Rate, b: Rate) -> Ordering {
    let lhs = u128::from(a.count) * b.period.as_nanos();
    let rhs = u128::from(b.count) * a.period.as_nanos();
    lhs.cmp(&rhs)
}

/// A change about limit `l`, with what it counts.
fn about(kind: Kind, direction: Direction, l: &Compiled) -> Change {
    let mut change = Change::new(kind, direction);
    let (caller, actions, requires) = l.describe();
    change.caller = caller;
    change.actions = actions;
    change.requires = requires;
    change.limit = Some(l.id().to_string());
    change
}

/// The changes in rate limits between two policies for the same service.
pub(super) fn service(old: &ServicePolicy, new: &ServicePolicy, out: &mut Vec<Change>) {
    let (before, after) = (Compiled::of(old), Compiled::of(new));
    // Pairs by id; then an unpaired limit equal in every term to an unpaired one on
    // the other side is that limit renamed: no change.
    let mut pairs: Vec<(&Compiled, &Compiled)> = Vec::new();
    let mut removed: Vec<&Compiled> = Vec::new();
    for b in &before {
        match after.iter().find(|a| a.id() == b.id()) {
            Some(a) => pairs.push((b, a)),
            None => removed.push(b),
        }
    }
    let mut added: Vec<&Compiled> = after
        .iter()
        .filter(|a| !before.iter().any(|b| b.id() == a.id()))
        .collect();
    removed.retain(
        |b| match added.iter().position(|a| b.same_as(a, old, new)) {
            Some(at) => {
                pairs.push((b, added.remove(at)));
                false
            }
            None => true,
        },
    );
    for b in removed {
        let mut change = about(Kind::LimitRemoved, Direction::Widens, b);
        change.detail = vec![format!("was {}", b.terms())];
        out.push(change);
    }
    for a in added {
        let mut change = about(Kind::LimitAdded, Direction::Narrows, a);
        change.detail = vec![a.terms()];
        out.push(change);
    }
    for (b, a) in pairs {
        terms(b, a, out);
        selector(b, a, out);
        rules(old, new, b, a, out);
    }
}

/// Rate, burst and `per`.
fn terms(b: &Compiled, a: &Compiled, out: &mut Vec<Change>) {
    let (was, now) = (b.limit, a.limit);
    let mut step = |order: Ordering, detail: String| {
        let (kind, direction) = match order {
            Ordering::Equal => return,
            Ordering::Greater => (Kind::LimitRaised, Direction::Widens),
            Ordering::Less => (Kind::LimitLowered, Direction::Narrows),
        };
        let mut change = about(kind, direction, a);
        change.detail = vec![detail];
        out.push(change);
    };
    // The same rate written another way (`60/m`, `1/s`) is no change.
    step(
        compare_rates(now.rate(), was.rate()),
        format!("rate: {} -> {}", was.rate(), now.rate()),
    );
    step(
        now.burst().cmp(&was.burst()),
        format!("burst: {} -> {}", was.burst(), now.burst()),
    );
    let direction = match (was.per(), now.per()) {
        (x, y) if x == y => return,
        // One budget for every caller it matches, where each had its own.
        (Per::Principal, Per::Service) => Direction::Narrows,
        (Per::Service, Per::Principal) => Direction::Widens,
        _ => return,
    };
    let mut change = about(Kind::LimitPer, direction, a);
    change.detail = vec![format!(
        "per: {} -> {}",
        was.per().as_str(),
        now.per().as_str()
    )];
    out.push(change);
}

/// The requests the limit counts (`from` / `to` / `when`).
fn selector(b: &Compiled, a: &Compiled, out: &mut Vec<Change>) {
    let now_covers_was = all_covered(&a.selector, &b.selector);
    let was_covers_now = all_covered(&b.selector, &a.selector);
    let describe = |c: &Compiled| {
        let (caller, actions, requires) = c.describe();
        let mut s = format!("{} {}", caller.unwrap_or_default(), actions.join(", "));
        if !requires.is_empty() {
            s.push_str(&format!(" when {}", requires.join(", ")));
        }
        s
    };
    let detail = format!("counts: {} -> {}", describe(b), describe(a));
    // Counting fewer requests lets some through that it refused: widens. Counting
    // more narrows. Moved (neither covers the other) is both.
    if !now_covers_was {
        let mut change = about(Kind::LimitNarrowed, Direction::Widens, a);
        change.detail = vec![detail.clone()];
        out.push(change);
    }
    if !was_covers_now {
        let mut change = about(Kind::LimitWidened, Direction::Narrows, a);
        change.detail = vec![detail];
        out.push(change);
    }
}

/// Which allow rules' requests count against the limit: every rule's when no rule
/// names it, else only the naming rules'. Rules on one side only are reported as
/// grants gained or lost, not here.
fn rules(
    old: &ServicePolicy,
    new: &ServicePolicy,
    b: &Compiled,
    a: &Compiled,
    out: &mut Vec<Change>,
) {
    let counts = |policy: &ServicePolicy, c: &Compiled, rule: &str| {
        !c.limit.attached() || policy.rules_naming(c.index).contains(&rule)
    };
    let allow = |p: &ServicePolicy| -> Vec<String> {
        p.rules()
            .filter(|r| r.effect() == Effect::Allow)
            .map(|r| r.id().to_string())
            .collect()
    };
    let (old_rules, new_rules) = (allow(old), allow(new));
    for rule in old_rules.iter().filter(|r| new_rules.contains(r)) {
        let (was, now) = (counts(old, b, rule), counts(new, a, rule));
        let (kind, direction, says) = match (was, now) {
            (true, false) => (Kind::LimitDetached, Direction::Widens, "no longer count"),
            (false, true) => (Kind::LimitAttached, Direction::Narrows, "now count"),
            _ => continue,
        };
        let mut change = Change::new(kind, direction);
        change.rule = Some(rule.clone());
        change.limit = Some(a.id().to_string());
        change.detail = vec![format!(
            "the requests rule {rule} allows {says} against limit {} ({})",
            a.id(),
            a.terms()
        )];
        out.push(change);
    }
}
