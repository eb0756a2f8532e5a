//! Limits: load errors with their locations, and which limits a request counts against.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::limits::{Caller, Per};
use crate::policy::tests::{http, peer, token};
use crate::policy::{EvalInput, PolicySet, ServicePolicy};
use crate::principal::Principal;
use crate::request::Hop;

fn load(text: &str) -> Result<PolicySet, Vec<String>> {
    let sources = [(PathBuf::from("a.yaml"), text.to_string())];
    PolicySet::from_sources(&sources)
        .map_err(|errs| errs.to_string().lines().map(str::to_string).collect())
}

const RULES: &str = "service: t\nrules:\n  - id: r\n    to: [{paths: [/a]}]\n";

#[test]
fn load_errors_are_located() {
    #[rustfmt::skip]
    let cases: &[(&str, &str)] = &[
        ("limits:\n  - id: l\n    rate: 0/s\n", "a.yaml:7:11: limit \"l\": invalid rate \"0/s\": the count must be at least 1 (a rate of 0 would refuse everything; use a deny rule)"),
        ("limits:\n  - id: l\n    rate: 10/d\n", "a.yaml:7:11: limit \"l\": invalid rate \"10/d\": write N/s, N/m or N/h, e.g. 200/s"),
        ("limits:\n  - id: l\n    rate: 1/s\n  - id: l\n    rate: 2/s\n", "a.yaml:8:9: duplicate limit id \"l\""),
        ("limits:\n  - id: l\n    rate: 1/s\n    per: caller\n", "a.yaml:8:10: limit \"l\": unknown per \"caller\": use principal or service"),
        ("limits:\n  - id: l\n    rate: 1/s\n    burst: 0\n", "a.yaml:8:5: limit \"l\": invalid burst 0: use 1 to 1000000000 (or omit it for the rate's count)"),
        ("limits:\n  - id: l\n    rate: 1/s\n    bogus: 1\n", "a.yaml:8:5: limits[0]: unknown field `bogus`, expected one of `id`, `description`, `from`, `to`, `when`, `rate`, `burst`, `per`"),
        ("limits:\n  - id: l\n", "a.yaml:6:5: limits[0]: missing field `rate`"),
        ("limits:\n  - id: \"bad id\"\n    rate: 1/s\n", "a.yaml:6:10: invalid limit id \"bad id\": use letters, digits, '.', '_' and '-', starting with a letter or digit"),
        ("limits:\n  - id: l\n    rate: 1/s\n    to: [{methods: [FETCH]}]\n", "a.yaml:8:21: limit \"l\": unknown method \"FETCH\""),
        ("limits:\n  - id: l\n    rate: 1/s\n    from: {principals: []}\n", "a.yaml:8:12: limit \"l\": from.principals is empty (it would match nothing); omit it instead"),
    ];
    for (limits, want) in cases {
        let text = format!("{RULES}{limits}");
        let errs = load(&text).err().unwrap_or_default();
        assert_eq!(errs, [*want], "{text}");
    }
}

#[test]
fn rules_naming_limits() {
    #[rustfmt::skip]
    let cases: &[(&str, &str)] = &[
        ("service: t\nrules:\n  - id: r\n    limits: [nope]\n", "a.yaml:4:14: rule \"r\": unknown limit \"nope\" (limits are defined under `limits:` in the same policy file)"),
        ("service: t\nrules:\n  - id: r\n    effect: deny\n    limits: [l]\nlimits:\n  - id: l\n    rate: 1/s\n", "a.yaml:5:5: rule \"r\": only allow rules can name limits (a denied request spends no budget)"),
        ("service: t\nrules:\n  - id: r\n    limits: []\nlimits:\n  - id: l\n    rate: 1/s\n", "a.yaml:4:5: rule \"r\": limits is empty; omit it instead"),
    ];
    for (text, want) in cases {
        let errs = load(text).err().unwrap_or_default();
        assert_eq!(errs, [*want], "{text}");
    }
    // Limits written before the rules are found too.
    let text =
        "service: t\nlimits:\n  - id: l\n    rate: 1/s\nrules:\n  - id: r\n    limits: [l]\n";
    let set = load(text).unwrap();
    assert!(set.get("t").unwrap().limits()[0].attached());
}

const TD: &str = "spiffe://hopwarden.local/ns";

/// `(limit id, bucket)` pairs.
type Hits = Vec<(String, Caller)>;

const POLICY: &str = r#"service: ledger
rules:
  - id: reads
    to: [{methods: [GET], paths: ["/transactions/**"]}]
  - id: writes
    to: [{methods: [POST], paths: ["/transactions"]}]
    limits: [writes-budget]
  - id: anyone-health
    from: {anonymous: true}
    to: [{paths: [/health]}]
limits:
  - id: payments-reads
    description: Payments may read 200 times a second, bursts to 400.
    from: {principals: ["spiffe://hopwarden.local/ns/payments/sa/payments"]}
    to: [{methods: [GET], paths: ["/transactions/**"]}]
    rate: 200/s
    burst: 400
  - id: everyone
    rate: 10/m
  - id: shared
    from: {kinds: [service]}
    rate: 5/h
    per: service
  - id: writes-budget
    rate: 1/s
"#;

fn hits(
    policy: &ServicePolicy,
    rule: &str,
    p: Option<&Principal>,
    method: &str,
    path: &str,
) -> Vec<(String, Caller)> {
    let headers = HashMap::new();
    let action = http(method, path);
    let input = EvalInput {
        principal: p,
        hop: Hop::Mesh,
        action: &action,
        headers: &headers,
    };
    policy
        .limits_for(rule, &input)
        .into_iter()
        .map(|h| (h.limit.to_string(), h.caller))
        .collect()
}

#[test]
fn which_limits_a_request_counts_against() {
    let set = load(POLICY).unwrap_or_else(|e| panic!("{e:?}"));
    let ledger = set.get("ledger").unwrap();
    let limits = ledger.limits();
    assert_eq!(limits.len(), 4);
    assert_eq!(limits[0].rate().to_string(), "200/s");
    assert_eq!(limits[0].burst(), 400);
    assert_eq!(limits[1].burst(), 10, "burst defaults to the rate's count");
    assert_eq!(limits[2].per(), Per::Service);
    assert!(!limits[0].attached() && limits[3].attached());

    let payments_id = format!("{TD}/payments/sa/payments");
    let payments = token(&payments_id, &[]);
    let named = || Caller::Named(payments_id.as_str().into());
    let other = token(&format!("{TD}/billing/sa/billing"), &[]);
    // A peer named by a limit keeps its own bucket even without a token.
    let payments_peer = peer(&payments_id);
    let own = |id: &str| (id.to_string(), named());
    let others = |id: &str| (id.to_string(), Caller::Others);
    let service = |id: &str| (id.to_string(), Caller::Service);
    #[rustfmt::skip]
    let cases: Vec<(&str, Option<&Principal>, &str, &str, Hits)> = vec![
        ("reads", Some(&payments), "GET", "/transactions/1", vec![own("payments-reads"), own("everyone"), service("shared")]),
        // HEAD counts with GET, as in a deny rule.
        ("reads", Some(&payments), "HEAD", "/transactions/1", vec![own("payments-reads"), own("everyone"), service("shared")]),
        ("reads", Some(&other), "GET", "/transactions/1", vec![others("everyone"), service("shared")]),
        ("reads", Some(&payments_peer), "GET", "/transactions/1", vec![own("payments-reads"), own("everyone"), service("shared")]),
        // writes-budget counts only what the rule naming it allows.
        ("writes", Some(&payments), "POST", "/transactions", vec![own("everyone"), service("shared"), own("writes-budget")]),
        ("reads", Some(&other), "POST", "/transactions", vec![others("everyone"), service("shared")]),
        // An anonymous caller matches limits with no `from`, in the shared bucket.
        ("anyone-health", None, "GET", "/health", vec![others("everyone")]),
    ];
    for (rule, p, method, path, want) in cases {
        assert_eq!(
            hits(ledger, rule, p, method, path),
            want,
            "{rule} {method} {path}"
        );
    }
}

#[test]
fn limits_header_conditions_join_the_cache_key_inputs() {
    let text =
        "service: t\nlimits:\n  - id: l\n    rate: 1/s\n    when: {headers: {x-tenant: [a]}}\n";
    let set = load(text).unwrap();
    assert_eq!(set.get("t").unwrap().header_inputs(), ["x-tenant"]);
}
