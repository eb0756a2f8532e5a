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

#[cfg(test)]
mod tests {
    use crate::policy::tests::{http, token};
    use crate::policy::{EvalInput, PolicySet};
    use crate::principal::actor::{Actor, Delegation};
    use crate::principal::{Principal, PrincipalKind};
    use crate::request::Hop;
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::Arc;

    fn delegated(subject: &str, actors: &[&str]) -> Principal {
        let mut p = token(subject, &[]);
        p.kind = PrincipalKind::User;
        let chain = actors
            .iter()
            .map(|a| Actor {
                sub: a.to_string(),
                iss: None,
            })
            .collect();
        p.delegation = Delegation::new(chain).map(Arc::new);
        p
    }

    /// Each rule's `from` lines, as `rule ok part: detail`.
    fn from_lines(p: &Principal) -> Vec<String> {
        let yaml = "service: t
rules:
  - {id: deny-mallory, effect: deny, from: {principals: [mallory]}}
  - {id: bff, from: {principals: [bff], acting_for: {kinds: [user], max_depth: 1}}}
  - {id: users, from: {kinds: [user]}}
";
        let set = PolicySet::from_sources(&[(PathBuf::from("t.yaml"), yaml.to_string())]).unwrap();
        let policy = set.get("t").unwrap();
        let headers = HashMap::new();
        let action = http("GET", "/x");
        let e = policy.explain(&EvalInput {
            principal: Some(p),
            hop: Hop::Mesh,
            action: &action,
            headers: &headers,
        });
        e.rules
            .iter()
            .flat_map(|r| {
                r.conditions
                    .iter()
                    .filter(|c| c.part.starts_with("from"))
                    .map(move |c| format!("{} {} {}: {}", r.rule, c.ok, c.part, c.detail))
            })
            .collect()
    }

    #[test]
    fn traces_name_the_party_each_field_was_matched_against() {
        assert_eq!(
            from_lines(&delegated("alice", &["bff"])),
            [
                "deny-mallory false from (any party): neither subject \"alice\" nor actors bff match",
                "bff true from.principals: \"bff\" listed",
                "bff true from (actor): the outermost actor \"bff\" matches (chain bff)",
                "bff true from.acting_for.kinds: subject kind user in [user]",
                "bff true from.acting_for.max_depth: 1 actors <= 1",
            ]
        );
        let lines = from_lines(&delegated("alice", &["web", "mallory"]));
        assert_eq!(
            lines[0],
            "deny-mallory true from (any party): actor \"mallory\" matches (a deny rule or limit applies to any party of the chain)"
        );
        let lines = from_lines(&delegated("alice", &["bff", "web"]));
        assert!(
            lines.contains(&"bff false from.acting_for.max_depth: 2 actors > 1".to_string()),
            "{lines:?}"
        );
        // The user's own rule refuses the delegated token, and says why.
        assert!(
            lines.iter().any(|l| l.starts_with(
                "users false from.delegated: the token is delegated (actor \"bff\" for \"alice\")"
            )),
            "{lines:?}"
        );
        // A direct caller: the delegated rule says it is about delegation only.
        let mut alice = token("alice", &[]);
        alice.kind = PrincipalKind::User;
        let lines = from_lines(&alice);
        assert!(
            lines.contains(&"bff false from.acting_for: the token is not delegated; the rule is about delegated calls only".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"users true from.kinds: kind user in [user]".to_string()),
            "{lines:?}"
        );
    }
}
