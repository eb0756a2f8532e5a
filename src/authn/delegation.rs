//! Delegation chains: RFC 8693 (OAuth 2.0 Token Exchange) section 4.1 `act` and
//! section 4.4 `may_act`.
//!
//! A token whose `act` claim names a party means "this party, acting for the token's
//! subject". `act` may itself hold an `act` naming the party that acted before it;
//! RFC 8693 4.1: "only the top-level claims and the outermost actor are considered
//! for access control decisions; nested prior actors are informational". hopwarden
//! reads the whole chain (bounded by the issuer's `max_delegation_depth`) so the
//! decision log shows it, and rules match the outermost actor.
//!
//! A chain that cannot be read is a broken credential, refused with 401 like a bad
//! signature: `act` that is not an object, an actor without a usable `sub`, a chain
//! deeper than the bound, or a `may_act` that is malformed or names someone else than
//! the actor.

use serde_json::{Map, Value};

use super::subject::{self, SubjectError};

pub use crate::principal::actor::{Actor, Delegation};

/// The deepest chain an issuer may be configured to accept: a bound on the work and
/// the log line a token can cause, far beyond any real chain.
pub const MAX_CONFIGURABLE_DEPTH: usize = 8;

/// Why a token's delegation claims were refused. Each answers 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DelegationError {
    /// `act` (at some depth) is not a JSON object.
    #[error("act claim at depth {0} is not an object")]
    NotAnObject(usize),
    /// An actor has no `sub`, an empty one, one that is not a string or one with a
    /// control character (it could not be passed on as a header).
    #[error("act claim at depth {0} has no usable sub")]
    NoSubject(usize),
    /// An actor's `sub` starts with `spiffe://` but is not a valid SPIFFE ID (see
    /// `subject.rs`): rules match the actor as they match the subject.
    #[error(
        "act claim at depth {0} has a sub that starts with spiffe:// but is not a valid SPIFFE ID"
    )]
    SubjectNotSpiffeId(usize),
    /// An actor's `iss` is not a string.
    #[error("act claim at depth {0} has an iss that is not a string")]
    BadIssuer(usize),
    /// The chain has more actors than the issuer allows.
    #[error("delegation chain deeper than {max}")]
    TooDeep {
        /// The issuer's `max_delegation_depth`.
        max: usize,
    },
    /// `may_act` is not an object with a usable `sub`.
    #[error("may_act claim is not an object with a sub")]
    MalformedMayAct,
    /// `may_act` names another party than the token's actor.
    #[error("the actor is not the party may_act names")]
    ActorNotPermitted,
}

impl DelegationError {
    /// A short, stable name for the decision log's `detail`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DelegationError::NotAnObject(_) => "act_not_an_object",
            DelegationError::NoSubject(_) => "act_without_sub",
            DelegationError::SubjectNotSpiffeId(_) => "act_sub_not_spiffe_id",
            DelegationError::BadIssuer(_) => "act_bad_iss",
            DelegationError::TooDeep { .. } => "delegation_too_deep",
            DelegationError::MalformedMayAct => "may_act_malformed",
            DelegationError::ActorNotPermitted => "actor_not_in_may_act",
        }
    }
}

/// Reads the delegation chain of verified `claims`, allowing at most `max_depth`
/// actors (0: this issuer's tokens may not be delegated). `Ok(None)`: no `act`.
pub fn parse(
    claims: &Map<String, Value>,
    max_depth: usize,
) -> Result<Option<Delegation>, DelegationError> {
    let mut actors = Vec::new();
    let mut level = claims;
    while let Some(act) = level.get("act") {
        let depth = actors.len() + 1;
        // Checked before the actor is read: the walk never goes past the bound.
        if depth > max_depth {
            return Err(DelegationError::TooDeep { max: max_depth });
        }
        let Value::Object(act) = act else {
            return Err(DelegationError::NotAnObject(depth));
        };
        let sub = subject::usable(act.get("sub")).map_err(|e| match e {
            SubjectError::Unusable => DelegationError::NoSubject(depth),
            SubjectError::NotSpiffeId => DelegationError::SubjectNotSpiffeId(depth),
        })?;
        let iss = match act.get("iss") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(DelegationError::BadIssuer(depth)),
        };
        actors.push(Actor {
            sub: sub.to_string(),
            iss,
        });
        level = act;
    }
    let delegation = Delegation::new(actors);
    check_may_act(claims, delegation.as_ref())?;
    Ok(delegation)
}

/// RFC 8693 4.4: `may_act` names the party allowed to act for the subject. When a
/// token carries both, its actor must be that party; a `may_act` that cannot be read
/// is refused like a malformed `act`.
fn check_may_act(
    claims: &Map<String, Value>,
    delegation: Option<&Delegation>,
) -> Result<(), DelegationError> {
    let Some(may_act) = claims.get("may_act") else {
        return Ok(());
    };
    let Value::Object(may_act) = may_act else {
        return Err(DelegationError::MalformedMayAct);
    };
    let allowed =
        subject::usable(may_act.get("sub")).map_err(|_| DelegationError::MalformedMayAct)?;
    match delegation {
        Some(d) if d.actor().sub != allowed => Err(DelegationError::ActorNotPermitted),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test claims are objects"),
        }
    }

    fn subs(d: &Delegation) -> Vec<&str> {
        d.actors().iter().map(|a| a.sub.as_str()).collect()
    }

    #[test]
    fn act_chains() {
        type Want = Result<Option<Vec<&'static str>>, DelegationError>;
        let cases: Vec<(Value, usize, Want)> = vec![
            (json!({"sub": "u"}), 1, Ok(None)),
            (json!({"sub": "u"}), 0, Ok(None)),
            (json!({"act": {"sub": "bff"}}), 1, Ok(Some(vec!["bff"]))),
            (
                json!({"act": {"sub": "bff"}}),
                0,
                Err(DelegationError::TooDeep { max: 0 }),
            ),
            (
                json!({"act": {"sub": "bff", "act": {"sub": "gw"}}}),
                2,
                Ok(Some(vec!["bff", "gw"])),
            ),
            (
                json!({"act": {"sub": "bff", "act": {"sub": "gw"}}}),
                1,
                Err(DelegationError::TooDeep { max: 1 }),
            ),
            (
                json!({"act": {"sub": "a", "act": {"sub": "b", "act": {"sub": "c"}}}}),
                2,
                Err(DelegationError::TooDeep { max: 2 }),
            ),
            (
                json!({"act": "bff"}),
                1,
                Err(DelegationError::NotAnObject(1)),
            ),
            (
                json!({"act": ["bff"]}),
                1,
                Err(DelegationError::NotAnObject(1)),
            ),
            (
                json!({"act": null}),
                1,
                Err(DelegationError::NotAnObject(1)),
            ),
            (json!({"act": {}}), 1, Err(DelegationError::NoSubject(1))),
            (
                json!({"act": {"sub": ""}}),
                1,
                Err(DelegationError::NoSubject(1)),
            ),
            (
                json!({"act": {"sub": 7}}),
                1,
                Err(DelegationError::NoSubject(1)),
            ),
            (
                json!({"act": {"sub": "a\nb"}}),
                1,
                Err(DelegationError::NoSubject(1)),
            ),
            (
                json!({"act": {"sub": "a", "iss": 1}}),
                1,
                Err(DelegationError::BadIssuer(1)),
            ),
            (
                json!({"act": {"sub": "a", "act": "b"}}),
                2,
                Err(DelegationError::NotAnObject(2)),
            ),
            (
                json!({"act": {"sub": "a", "act": {"client_id": "b"}}}),
                2,
                Err(DelegationError::NoSubject(2)),
            ),
            // The depth is checked first: a too-deep chain is refused as such even
            // when its deeper actors are malformed too.
            (
                json!({"act": {"sub": "a", "act": "b"}}),
                1,
                Err(DelegationError::TooDeep { max: 1 }),
            ),
            // may_act (RFC 8693 4.4).
            (json!({"may_act": {"sub": "bff"}}), 1, Ok(None)),
            (
                json!({"act": {"sub": "bff"}, "may_act": {"sub": "bff"}}),
                1,
                Ok(Some(vec!["bff"])),
            ),
            (
                json!({"act": {"sub": "evil"}, "may_act": {"sub": "bff"}}),
                1,
                Err(DelegationError::ActorNotPermitted),
            ),
            (
                json!({"may_act": "bff"}),
                1,
                Err(DelegationError::MalformedMayAct),
            ),
            (
                json!({"may_act": {}}),
                1,
                Err(DelegationError::MalformedMayAct),
            ),
        ];
        for (input, max, want) in cases {
            let got = parse(&claims(input.clone()), max);
            let got = got.as_ref().map(|d| d.as_ref().map(subs)).map_err(|e| *e);
            assert_eq!(got, want, "{input} max {max}");
        }
    }

    #[test]
    fn the_outermost_actor_is_first_and_earlier_ones_follow() {
        let c = claims(json!({
            "sub": "alice",
            "act": {"sub": "customer-bff", "iss": "https://sts", "act": {"sub": "web"}}
        }));
        let d = parse(&c, 2).unwrap().unwrap();
        assert_eq!(d.actor().sub, "customer-bff");
        assert_eq!(d.actor().iss.as_deref(), Some("https://sts"));
        assert_eq!(d.depth(), 2);
        assert_eq!(d.chain(), "customer-bff < web");
    }

    #[test]
    fn a_very_deep_chain_is_refused_at_the_bound() {
        // 100 levels of act: refused after reading MAX_CONFIGURABLE_DEPTH of them.
        let mut v = json!({"sub": "root"});
        for i in 0..100 {
            v = json!({"sub": format!("a{i}"), "act": v});
        }
        let c = claims(json!({"sub": "u", "act": v}));
        assert_eq!(
            parse(&c, MAX_CONFIGURABLE_DEPTH),
            Err(DelegationError::TooDeep {
                max: MAX_CONFIGURABLE_DEPTH
            })
        );
    }

    #[test]
    fn each_refusal_has_its_own_stable_name_for_the_log() {
        let names = [
            (DelegationError::NotAnObject(2), "act_not_an_object"),
            (DelegationError::NoSubject(1), "act_without_sub"),
            (
                DelegationError::SubjectNotSpiffeId(1),
                "act_sub_not_spiffe_id",
            ),
            (DelegationError::BadIssuer(1), "act_bad_iss"),
            (DelegationError::TooDeep { max: 3 }, "delegation_too_deep"),
            (DelegationError::MalformedMayAct, "may_act_malformed"),
            (DelegationError::ActorNotPermitted, "actor_not_in_may_act"),
        ];
        for (e, name) in names {
            assert_eq!(e.as_str(), name, "{e}");
        }
    }

    #[test]
    fn an_actor_sub_that_looks_like_a_spiffe_id_must_be_one() {
        let good = "spiffe://hopwarden.local/ns/gw/sa/gw";
        for (sub, want) in crate::authn::subject::tests::CASES {
            let (at_1, at_2) = match want {
                Ok(()) => (Ok(vec![*sub]), Ok(vec![good, *sub])),
                Err(SubjectError::Unusable) => (
                    Err(DelegationError::NoSubject(1)),
                    Err(DelegationError::NoSubject(2)),
                ),
                Err(SubjectError::NotSpiffeId) => (
                    Err(DelegationError::SubjectNotSpiffeId(1)),
                    Err(DelegationError::SubjectNotSpiffeId(2)),
                ),
            };
            let outer = claims(json!({"sub": "u", "act": {"sub": sub}}));
            let got = parse(&outer, 2).map(|d| subs(&d.unwrap()).join(" "));
            assert_eq!(got, at_1.map(|v| v.join(" ")), "{sub:?}");
            let nested = claims(json!({"sub": "u", "act": {"sub": good, "act": {"sub": sub}}}));
            let got = parse(&nested, 2).map(|d| subs(&d.unwrap()).join(" "));
            assert_eq!(got, at_2.map(|v| v.join(" ")), "{sub:?}");
        }
        // may_act names its party as strictly.
        let bad = "spiffe://hopwarden.local/ns/gw/../sa/gw";
        let may_act = claims(json!({"act": {"sub": good}, "may_act": {"sub": bad}}));
        assert_eq!(parse(&may_act, 1), Err(DelegationError::MalformedMayAct));
    }
}
