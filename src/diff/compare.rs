//! One service's policy before and after, compared atom by atom.

use super::atoms::{Atom, Atoms};
use super::{Change, Direction, Kind};
use crate::policy::{Mode, ServicePolicy};

/// The changes in access to one service. `None` on a side: no policy there (every
/// request to the service is denied).
pub(super) fn service(old: Option<&ServicePolicy>, new: Option<&ServicePolicy>) -> Vec<Change> {
    let mut out = Vec::new();
    let (old, new) = match (old, new) {
        (None, None) => return out,
        (Some(old), None) => {
            let mut change = Change::new(Kind::PolicyRemoved, Direction::Narrows);
            change.detail = vec![format!(
                "every request to {} is now denied (no policy)",
                old.service()
            )];
            out.push(change);
            return out;
        }
        (None, Some(new)) => {
            out.push(Change::new(Kind::PolicyAdded, Direction::Neutral));
            modes(Mode::Enforce, new.mode(), &mut out);
            // Before, every request was denied: each grant is a gain; deny rules take
            // nothing away that was there.
            let after = Atoms::of(new.rules());
            allow(&[], &after.allow, &after.deny, &mut out);
            return out;
        }
        (Some(old), Some(new)) => (old, new),
    };
    modes(old.mode(), new.mode(), &mut out);
    for aud in new.audiences() {
        if !old.audiences().contains(aud) {
            let mut change = Change::new(Kind::AudienceAdded, Direction::Widens);
            change.detail = vec![format!("tokens for audience {aud} are accepted")];
            out.push(change);
        }
    }
    for aud in old.audiences() {
        if !new.audiences().contains(aud) {
            let mut change = Change::new(Kind::AudienceRemoved, Direction::Narrows);
            change.detail = vec![format!("tokens for audience {aud} are refused")];
            out.push(change);
        }
    }
    let (before, after) = (Atoms::of(old.rules()), Atoms::of(new.rules()));
    allow(&before.allow, &after.allow, &after.deny, &mut out);
    deny(&before, &after, &mut out);
    super::limits::service(old, new, &mut out);
    out
}

fn modes(old: Mode, new: Mode, out: &mut Vec<Change>) {
    let (kind, direction, detail) = match (old, new) {
        (Mode::Enforce, Mode::DryRun) => (
            Kind::DryRun,
            Direction::Widens,
            "policy switched to dry-run: denials are logged, not enforced (every request is let through)",
        ),
        (Mode::DryRun, Mode::Enforce) => (
            Kind::Enforce,
            Direction::Narrows,
            "policy switched from dry-run to enforce: its denials now take effect",
        ),
        _ => return,
    };
    let mut change = Change::new(kind, direction);
    change.detail = vec![detail.to_string()];
    out.push(change);
}

fn covered(atom: &Atom, by: &[Atom]) -> bool {
    by.iter().any(|b| b.covers(atom))
}

/// A change about `atom`, under its rule.
fn about(kind: Kind, direction: Direction, atom: &Atom) -> Change {
    let mut change = Change::new(kind, direction);
    change.rule = Some(atom.rule.clone());
    change.caller = Some(atom.caller.describe());
    change.actions = vec![atom.action()];
    change.requires = atom.requires();
    change
}

/// Grants: what `after` allows that `before` did not, and the reverse. A gain that
/// covers a related grant of `before` is that grant widened; a loss that covers a
/// related grant of `after`, that grant narrowed. A gain that an enforced deny rule
/// of `after` refuses entirely grants nothing, and says so.
fn allow(before: &[Atom], after: &[Atom], deny: &[Atom], out: &mut Vec<Change>) {
    for g in after.iter().filter(|a| !covered(a, before)) {
        let mut change = match before.iter().find(|b| g.covers(b) && g.related(b)) {
            Some(b) => {
                let mut change = about(Kind::Widened, Direction::Widens, g);
                change.detail = g.changes_from(b);
                change
            }
            None => about(Kind::Gained, Direction::Widens, g),
        };
        change.wildcard = g.is_wildcard();
        if let Some(d) = deny.iter().find(|d| d.covers(g)) {
            change.direction = Direction::Neutral;
            change.wildcard = false;
            change.detail.push(format!(
                "grants nothing: every request it allows is denied by deny rule {}",
                d.rule
            ));
        }
        out.push(change);
    }
    for l in before.iter().filter(|a| !covered(a, after)) {
        let change = match after.iter().find(|n| l.covers(n) && l.related(n)) {
            Some(n) => {
                let mut change = about(Kind::Narrowed, Direction::Narrows, n);
                change.detail = n.changes_from(l);
                change
            }
            None => about(Kind::Lost, Direction::Narrows, l),
        };
        out.push(change);
    }
}

/// Denials: what `before` denied (enforced) that `after` no longer does, and the reverse.
fn deny(before: &Atoms, after: &Atoms, out: &mut Vec<Change>) {
    for o in before.deny.iter().filter(|o| !covered(o, &after.deny)) {
        let change = if let Some(n) = after.deny.iter().find(|n| o.covers(n) && o.related(n)) {
            let mut change = about(Kind::DenyNarrowed, Direction::Widens, n);
            change.detail = n.changes_from(o);
            change
        } else if covered(o, &after.dry_run_deny) {
            about(Kind::DenyDryRun, Direction::Widens, o)
        } else {
            about(Kind::DenyRemoved, Direction::Widens, o)
        };
        out.push(change);
    }
    for n in after.deny.iter().filter(|n| !covered(n, &before.deny)) {
        let change = if let Some(o) = before.deny.iter().find(|o| n.covers(o) && n.related(o)) {
            let mut change = about(Kind::DenyWidened, Direction::Narrows, n);
            change.detail = n.changes_from(o);
            change
        } else if covered(n, &before.dry_run_deny) {
            about(Kind::DenyEnforced, Direction::Narrows, n)
        } else {
            about(Kind::DenyAdded, Direction::Narrows, n)
        };
        out.push(change);
    }
}
