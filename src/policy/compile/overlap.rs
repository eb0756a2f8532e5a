//! Whether two compiled rules could match one request: how `review` tells which
//! rate limits may count an allow rule's requests. It errs towards "could": what
//! patterns cannot decide (header and claim conditions, delegation, a principal
//! pattern against a peer pattern, a path against a gRPC method) counts as a
//! possible overlap, so a limit left out counts none of the rule's allows.

use super::{ActionClause, Callers, FromClause, Rule};

impl Rule {
    /// Whether some request could match both rules, scopes aside.
    pub fn may_overlap(&self, other: &Rule) -> bool {
        let hops = match (self.when.hop, other.when.hop) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        hops && froms_overlap(&self.from, &other.from) && tos_overlap(self.to(), other.to())
    }
}

fn froms_overlap(a: &FromClause, b: &FromClause) -> bool {
    match (a, b) {
        // Without `from` a deny rule (and a limit) also matches anonymous callers.
        (FromClause::Unrestricted, _) | (_, FromClause::Unrestricted) => true,
        (FromClause::Anonymous, FromClause::Anonymous) => true,
        (FromClause::Anonymous, _) | (_, FromClause::Anonymous) => false,
        (FromClause::Authenticated(a), FromClause::Authenticated(b)) => callers_overlap(a, b),
    }
}

/// Every condition both name must have a value in common; one that only one of
/// them names leaves the other free.
fn callers_overlap(a: &Callers, b: &Callers) -> bool {
    fn both<T>(a: &Option<Box<[T]>>, b: &Option<Box<[T]>>, meet: impl Fn(&T, &T) -> bool) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => a.iter().any(|x| b.iter().any(|y| meet(x, y))),
            _ => true,
        }
    }
    both(&a.principals, &b.principals, |x, y| x.overlaps(y))
        && both(&a.peers, &b.peers, |x, y| x.overlaps(y))
        && both(&a.kinds, &b.kinds, |x, y| x == y)
        && both(&a.issuers, &b.issuers, |x, y| x == y)
        && both(&a.credentials, &b.credentials, |x, y| x == y)
}

fn tos_overlap(a: Option<&[ActionClause]>, b: Option<&[ActionClause]>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().any(|x| b.iter().any(|y| actions_overlap(x, y))),
        _ => true,
    }
}

fn actions_overlap(a: &ActionClause, b: &ActionClause) -> bool {
    // A limit's (and a deny rule's) GET also counts HEAD.
    let same_method =
        |x: &str, y: &str| x == y || matches!((x, y), ("GET", "HEAD") | ("HEAD", "GET"));
    let methods = match (&a.methods, &b.methods) {
        (Some(a), Some(b)) => a.iter().any(|x| b.iter().any(|y| same_method(x, y))),
        _ => true,
    };
    let any_target = |c: &ActionClause| c.paths.is_empty() && c.grpc.is_empty();
    let mixed =
        (!a.paths.is_empty() && !b.grpc.is_empty()) || (!a.grpc.is_empty() && !b.paths.is_empty());
    let targets = any_target(a)
        || any_target(b)
        || mixed
        || a.paths
            .iter()
            .any(|x| b.paths.iter().any(|y| x.overlaps(y)))
        || a.grpc.iter().any(|x| b.grpc.iter().any(|y| x.overlaps(y)));
    methods && targets
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::policy::PolicySet;

    /// Whether limit `l` may count allow rule `r` of a policy whose rules are
    /// `rules` and whose only limit is `limit`.
    fn overlap(rule: &str, limit: &str) -> bool {
        let yaml = format!("service: t\nrules:\n  - {rule}\nlimits:\n  - {limit}\n");
        let set = PolicySet::from_sources(&[(PathBuf::from("t.yaml"), yaml)])
            .unwrap_or_else(|e| panic!("{e}"));
        let policy = set.get("t").unwrap();
        let rule = policy.rules().next().unwrap();
        policy.limits()[0].selector().may_overlap(rule)
    }

    #[test]
    fn limits_that_may_count_a_rule() {
        let rule = "{id: r, from: {principals: ['spiffe://td/ns/a/sa/x'], issuers: [https://i]}, to: [{methods: [GET], paths: ['/t/{id}']}], when: {hop: mesh}}";
        let cases: &[(&str, bool)] = &[
            ("{id: l, rate: 1/s}", true),
            (
                "{id: l, rate: 1/s, from: {principals: ['spiffe://td/ns/a/sa/x']}}",
                true,
            ),
            (
                "{id: l, rate: 1/s, from: {principals: ['spiffe://td/ns/a/sa/*']}}",
                true,
            ),
            (
                "{id: l, rate: 1/s, from: {principals: ['spiffe://td/ns/b/sa/x']}}",
                false,
            ),
            (
                "{id: l, rate: 1/s, from: {issuers: [https://other]}}",
                false,
            ),
            (
                "{id: l, rate: 1/s, from: {issuers: [https://i]}, to: [{paths: ['/t/**']}]}",
                true,
            ),
            ("{id: l, rate: 1/s, from: {anonymous: true}}", false),
            ("{id: l, rate: 1/s, from: {kinds: [user]}}", true),
            ("{id: l, rate: 1/s, to: [{methods: [POST]}]}", false),
            ("{id: l, rate: 1/s, to: [{methods: [HEAD]}]}", true),
            ("{id: l, rate: 1/s, to: [{paths: ['/u/**']}]}", false),
            ("{id: l, rate: 1/s, to: [{paths: ['/T/1']}]}", true),
            ("{id: l, rate: 1/s, to: [{grpc: ['p.S/*']}]}", true),
            ("{id: l, rate: 1/s, when: {hop: gateway}}", false),
            ("{id: l, rate: 1/s, when: {hop: mesh}}", true),
            ("{id: l, rate: 1/s, when: {headers: {x-env: [prod]}}}", true),
        ];
        for (limit, want) in cases {
            assert_eq!(overlap(rule, limit), *want, "{limit}");
        }
    }

    #[test]
    fn anonymous_rules_meet_only_limits_that_count_anonymous_callers() {
        let rule = "{id: r, from: {anonymous: true}, to: [{paths: [/health]}]}";
        assert!(overlap(rule, "{id: l, rate: 1/s}"));
        assert!(overlap(rule, "{id: l, rate: 1/s, from: {anonymous: true}}"));
        assert!(!overlap(
            rule,
            "{id: l, rate: 1/s, from: {kinds: [service]}}"
        ));
    }
}
