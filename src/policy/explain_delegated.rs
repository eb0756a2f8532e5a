//! `explain`'s trace of a `from` block for delegated tokens (RFC 8693 `act`): which
//! party each field was matched against, and why a rule that is not about delegation
//! did not take a delegated token. The verdicts come from the matchers evaluation uses.

use super::compile::delegated::{Delegated, ACTOR_KIND};
use super::compile::Callers;
use super::explain::ConditionTrace;
use crate::principal::Principal;

/// The per-field traces of a `from` block against one principal.
pub(super) type FieldTraces = fn(&Callers, &Principal, &mut Vec<ConditionTrace>);

/// Traces `callers` against `p` where delegation decides how; `false` when it does
/// not (a direct caller of a rule that takes direct callers), and `fields` alone
/// traces the block.
pub(super) fn trace(
    callers: &Callers,
    p: &Principal,
    out: &mut Vec<ConditionTrace>,
    fields: FieldTraces,
) -> bool {
    let check = |part: &str, ok: bool, detail: String| ConditionTrace {
        part: part.into(),
        ok,
        detail,
    };
    let Some(d) = p.delegation.as_deref() else {
        if matches!(callers.delegated(), Delegated::ActingFor(_)) {
            let detail =
                "the token is not delegated; the rule is about delegated calls only".into();
            out.push(check("from.acting_for", false, detail));
            return true;
        }
        return false;
    };
    let actor = &d.actor().sub;
    match callers.delegated() {
        Delegated::Direct => {
            let detail = format!(
                "the token is delegated (actor \"{actor}\" for \"{}\"); the rule names no acting_for, so it takes direct callers only",
                p.id
            );
            out.push(check("from.delegated", false, detail));
        }
        Delegated::AnyParty => {
            let subject = callers
                .party_ok(p, &p.id, p.kind)
                .then(|| format!("subject \"{}\"", p.id));
            let matched = subject.or_else(|| {
                d.actors()
                    .iter()
                    .find(|a| callers.party_ok(p, &a.sub, ACTOR_KIND))
                    .map(|a| format!("actor \"{}\"", a.sub))
            });
            let (ok, detail) = match matched {
                Some(party) => (
                    true,
                    format!(
                        "{party} matches (a deny rule or limit applies to any party of the chain)"
                    ),
                ),
                None => (
                    false,
                    format!(
                        "neither subject \"{}\" nor actors {} match",
                        p.id,
                        d.chain()
                    ),
                ),
            };
            out.push(check("from (any party)", ok, detail));
        }
        Delegated::ActingFor(acting_for) => {
            // The fields are about the outermost actor (RFC 8693 4.1).
            let as_actor = Principal {
                id: actor.clone(),
                kind: ACTOR_KIND,
                delegation: None,
                ..p.clone()
            };
            fields(callers, &as_actor, out);
            let ok = callers.party_ok(p, actor, ACTOR_KIND);
            let verb = if ok { "matches" } else { "does not match" };
            out.push(check(
                "from (actor)",
                ok,
                format!(
                    "the outermost actor \"{actor}\" {verb} (chain {})",
                    d.chain()
                ),
            ));
            if let Some(list) = acting_for.principals() {
                let ok = acting_for.principal_ok(&p.id);
                let names: Vec<&str> = list.iter().map(|p| p.as_str()).collect();
                let op = if ok { "in" } else { "not in" };
                out.push(check(
                    "from.acting_for.principals",
                    ok,
                    format!("subject \"{}\" {op} [{}]", p.id, names.join(", ")),
                ));
            }
            if let Some(kinds) = acting_for.kinds() {
                let ok = acting_for.kind_ok(p.kind);
                let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
                let op = if ok { "in" } else { "not in" };
                out.push(check(
                    "from.acting_for.kinds",
                    ok,
                    format!("subject kind {} {op} [{}]", p.kind, kinds.join(", ")),
                ));
            }
            if let Some(max) = acting_for.max_depth() {
                let ok = acting_for.depth_ok(d.depth());
                let op = if ok { "<=" } else { ">" };
                out.push(check(
                    "from.acting_for.max_depth",
                    ok,
                    format!("{} actors {op} {max}", d.depth()),
                ));
            }
        }
    }
    true
}
