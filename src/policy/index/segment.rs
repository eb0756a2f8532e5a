//! A prefilter by the request path's first segment, for the rules of one caller.
//!
//! The caller index narrows a check to the rules about its caller, but one caller
//! can have many rules, one per route (a backend-for-frontend, a gateway's public
//! routes): those are all candidates, and each costs a full match. Most route rules
//! start with a literal segment (`/orders/...`), so each rule carries a key of the
//! first segment all its paths require, and a candidate whose key is not the
//! request's is skipped with one comparison.
//!
//! Like the caller index this only skips rules that cannot match: a rule whose
//! paths do not all start with one literal (a wildcard, a parameter, several
//! literals, a gRPC pattern, no `to`) has the key [`ANY`] and is always matched in
//! full. Keys are hashes; two segments with one hash only make a rule a candidate
//! more often, never less.

use crate::policy::compile::Rule;

/// What a rule's paths require of a request path's first segment.
pub(super) type SegmentKey = u64;

/// Nothing certain: the rule is matched in full.
pub(super) const ANY: SegmentKey = 0;

/// The key of what every path of `rule` requires, or [`ANY`]. `fold`: the list's
/// paths compare ignoring ASCII case (deny rules); a pattern that does not is
/// [`ANY`] rather than keyed the other way.
pub(super) fn rule_key(rule: &Rule, fold: bool) -> SegmentKey {
    let Some(clauses) = rule.to() else {
        return ANY;
    };
    let mut found = None;
    for clause in clauses {
        // A clause without paths matches any path (or any gRPC method).
        if clause.paths.is_empty() || !clause.grpc.is_empty() {
            return ANY;
        }
        for path in clause.paths.iter() {
            let (Some(first), true) = (path.first_literal(), path.ignores_case() == fold) else {
                return ANY;
            };
            let key = key(first, fold);
            if *found.get_or_insert(key) != key {
                return ANY;
            }
        }
    }
    found.unwrap_or(ANY)
}

/// The key of `path`'s first segment; `None` when `path` is not one a path
/// pattern can match (it does not start with `/`).
pub(super) fn request_key(path: &str, fold: bool) -> Option<SegmentKey> {
    let body = path.strip_prefix('/')?;
    let first = (!body.is_empty()).then(|| body.split('/').next().unwrap_or(body));
    Some(key(first, fold))
}

/// Whether a rule with `rule` may match a request with `request`.
pub(super) fn admits(rule: SegmentKey, request: Option<SegmentKey>) -> bool {
    rule == ANY || request == Some(rule)
}

/// FNV-1a over the segment (ASCII-lowercased when `fold`), marked so that "no
/// segment" and every segment differ, and never [`ANY`].
fn key(segment: Option<&str>, fold: bool) -> SegmentKey {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut add = |byte: u8| hash = (hash ^ u64::from(byte)).wrapping_mul(PRIME);
    match segment {
        None => add(0),
        Some(segment) => {
            add(1);
            for byte in segment.bytes() {
                add(if fold {
                    byte.to_ascii_lowercase()
                } else {
                    byte
                });
            }
        }
    }
    hash | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_keys_are_the_first_segment() {
        let k = |path, fold| request_key(path, fold);
        assert_eq!(k("/orders/1", false), k("/orders", false));
        assert_eq!(k("/orders/", false), k("/orders", false));
        assert_ne!(k("/orders/1", false), k("/order/1", false));
        assert_ne!(k("/Orders", false), k("/orders", false));
        assert_eq!(k("/Orders", true), k("/orders", true));
        assert_ne!(k("/", false), k("//x", false));
        assert_eq!(k("//x", false), Some(key(Some(""), false)));
        assert_eq!(k("orders", false), None);
        for path in ["/", "/a", "/a/b", "//"] {
            assert_ne!(k(path, false), Some(ANY), "{path}");
        }
    }

    #[test]
    fn admits_any_or_the_same_key() {
        let orders = key(Some("orders"), false);
        assert!(admits(ANY, None));
        assert!(admits(ANY, Some(orders)));
        assert!(admits(orders, Some(orders)));
        assert!(!admits(orders, Some(key(Some("users"), false))));
        assert!(!admits(orders, None));
    }
}
