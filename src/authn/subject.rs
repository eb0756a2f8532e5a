//! What a token may name as a principal: its principal claim (`sub` by default) and
//! each actor's `sub` in a delegation chain.
//!
//! Policies match principals such as `spiffe://td/ns/payments/**` segment by segment
//! (policy/matcher.rs), as they match the mTLS peer, which is parsed strictly as a
//! [`SpiffeId`]. A signed subject that only looks like one would slip past them: a
//! `sub` of `spiffe://td/ns/payments/../ledger/sa/ledger` matches that allow pattern,
//! and `spiffe://TD/…`, a trailing `/` or `%2F` miss an exact deny. So a subject that
//! starts with `spiffe://` (any case: URI schemes are case-insensitive, RFC 3986 3.1)
//! must be a valid SPIFFE ID; any other string is an opaque id, matched exactly.

use serde_json::Value;

use crate::principal::SpiffeId;

const SCHEME: &str = "spiffe://";

/// Why a token's subject cannot name a principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectError {
    /// Missing, not a string, empty, or with a control character (it could not be
    /// passed on as an identity header).
    Unusable,
    /// Starts with `spiffe://` (any case) but is not a valid SPIFFE ID.
    NotSpiffeId,
}

/// The subject in `value` if it can name a principal.
pub fn usable(value: Option<&Value>) -> Result<&str, SubjectError> {
    let s = value
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && !s.chars().any(char::is_control))
        .ok_or(SubjectError::Unusable)?;
    let spiffe_like = s
        .get(..SCHEME.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(SCHEME));
    if spiffe_like && SpiffeId::split(s).is_err() {
        return Err(SubjectError::NotSpiffeId);
    }
    Ok(s)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// The subjects a token may carry, and the ones it may not; delegation.rs and
    /// jwt.rs check that both the principal claim and an actor's `sub` use this.
    pub(crate) const CASES: &[(&str, Result<(), SubjectError>)] = &[
        ("svc", Ok(())),
        ("payments@example.com", Ok(())),
        ("spiffe-like", Ok(())),
        ("spiffe://hopwarden.local/ns/payments/sa/payments", Ok(())),
        ("spiffe://hopwarden.local", Ok(())),
        ("spiffe://td/a-b/c_d/e.f", Ok(())),
        (
            "spiffe://td/ns/payments/../ledger/sa/ledger",
            Err(SubjectError::NotSpiffeId),
        ),
        (
            "spiffe://td/ns/payments/./sa/x",
            Err(SubjectError::NotSpiffeId),
        ),
        ("spiffe://td/ns//sa/x", Err(SubjectError::NotSpiffeId)),
        (
            "spiffe://td/ns/payments/sa/x/",
            Err(SubjectError::NotSpiffeId),
        ),
        ("spiffe://TD/ns/evil/sa/x", Err(SubjectError::NotSpiffeId)),
        (
            "spiffe://td/ns/payments%2Fsa/x",
            Err(SubjectError::NotSpiffeId),
        ),
        (
            "spiffe://td/ns/%70ayments/sa/x",
            Err(SubjectError::NotSpiffeId),
        ),
        (
            "SPIFFE://td/ns/payments/sa/x",
            Err(SubjectError::NotSpiffeId),
        ),
        (
            "Spiffe://td/ns/payments/sa/x",
            Err(SubjectError::NotSpiffeId),
        ),
        ("spiffe://", Err(SubjectError::NotSpiffeId)),
        ("spiffe://td/ns/pay ments", Err(SubjectError::NotSpiffeId)),
        ("", Err(SubjectError::Unusable)),
        ("a\u{7}b", Err(SubjectError::Unusable)),
    ];

    #[test]
    fn a_subject_that_looks_like_a_spiffe_id_must_be_one() {
        for (sub, want) in CASES {
            let value = json!(sub);
            let got = usable(Some(&value)).map(|_| ());
            assert_eq!(got, *want, "{sub:?}");
        }
        assert_eq!(usable(Some(&json!(7))), Err(SubjectError::Unusable));
        assert_eq!(usable(None), Err(SubjectError::Unusable));
    }
}
