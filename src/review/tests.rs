//! Over-broad grants and shadowing, on small policies.

use std::path::PathBuf;

use super::*;

fn set(yaml: &str) -> PolicySet {
    PolicySet::from_sources(&[(PathBuf::from("t.yaml"), yaml.to_string())])
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `rule: kind, kind, …` for every allow rule's flags (not_exercised left out).
fn flag_kinds(yaml: &str) -> Vec<String> {
    let set = set(yaml);
    let policy = set.get("t").unwrap();
    policy
        .rules()
        .filter(|r| r.effect() == Effect::Allow)
        .map(|r| {
            let kinds: Vec<&str> = flags(policy, r).iter().map(|f| f.kind).collect();
            format!("{}: {}", r.id(), kinds.join(", "))
        })
        .collect()
}

#[test]
fn over_broad_grants() {
    let got = flag_kinds(
        "service: t
rules:
  - {id: any, to: [{paths: [/a]}], scopes: [s]}
  - {id: anon, from: {anonymous: true}, to: [{paths: [/health]}]}
  - {id: glob, from: {principals: ['spiffe://td/ns/*/sa/x']}, to: [{paths: ['/b/*']}], scopes: [s]}
  - {id: star, from: {principals: ['**'], peers: ['spiffe://td/ns/*/sa/y']}, scopes: [s]}
  - {id: by-issuer, from: {issuers: [https://sts]}, to: [{methods: [GET]}, {grpc: ['p.S/*']}], scopes: [s]}
  - {id: tight, from: {principals: [a]}, to: [{methods: [GET], paths: ['/c/{id}']}], scopes: [s]}
",
    );
    let want = [
        "any: any_caller",
        "anon: anonymous, no_scopes",
        "glob: wildcard_principal, wildcard_path",
        "star: wildcard_principal, wildcard_peer, any_action",
        "by-issuer: any_caller, wildcard_path, wildcard_grpc",
        "tight: ",
    ];
    assert_eq!(got, want);
}

#[test]
fn shadowing_is_certain_only_when_covered() {
    let got = flag_kinds(
        "service: t
rules:
  - {id: d-admin, effect: deny, to: [{paths: ['/admin/**']}]}
  - {id: d-a-gw, effect: deny, from: {principals: [a]}, to: [{paths: ['/x/**']}], when: {hop: gateway}}
  - {id: d-trial, effect: deny, mode: dry-run, from: {principals: ['spiffe://td/ns/*/sa/q']}, to: [{methods: [POST]}]}
  - {id: d-hdr, effect: deny, to: [{paths: [/h]}], when: {headers: {x-env: [prod]}}}
  - {id: admin-read, from: {principals: [a]}, to: [{methods: [GET], paths: ['/ADMIN/users']}], scopes: [s]}
  - {id: admin-any, from: {principals: [a]}, to: [{paths: ['/**']}], scopes: [s]}
  - {id: x-gw, from: {principals: [a, b]}, to: [{paths: ['/x/{id}']}], when: {hop: gateway}, scopes: [s]}
  - {id: x-mesh, from: {principals: [a]}, to: [{paths: ['/x/{id}']}], when: {hop: mesh}, scopes: [s]}
  - {id: x-a-gw, from: {principals: [a]}, to: [{paths: ['/x/{id}']}], when: {hop: gateway}, scopes: [s]}
  - {id: q-post, from: {principals: ['spiffe://td/ns/n/sa/q']}, to: [{methods: [POST], paths: [/q]}], scopes: [s]}
  - {id: h-dev, from: {principals: [a]}, to: [{paths: [/h]}], when: {headers: {x-env: [dev]}}, scopes: [s]}
  - {id: h-prod, from: {principals: [a]}, to: [{paths: [/h]}], when: {headers: {x-env: [prod]}}, scopes: [s]}
  - {id: grpc-admin, from: {principals: [a]}, to: [{grpc: ['admin.S/*']}], scopes: [s]}
",
    );
    let want = [
        // Deny path patterns ignore case: /ADMIN/users is denied.
        "admin-read: shadowed",
        "admin-any: wildcard_path, possibly_shadowed, possibly_shadowed, possibly_shadowed",
        "x-gw: possibly_shadowed",
        "x-mesh: ",
        "x-a-gw: shadowed",
        "q-post: shadowed",
        "h-dev: ",
        "h-prod: shadowed",
        // `/admin.S/M` is not under `/admin/**`.
        "grpc-admin: wildcard_grpc",
    ];
    assert_eq!(got, want);
    let set = set("service: t
rules:
  - {id: d, effect: deny, mode: dry-run, to: [{paths: [/a]}]}
  - {id: a, from: {principals: [a]}, to: [{paths: [/a]}], scopes: [s]}
");
    let policy = set.get("t").unwrap();
    let rule = policy.rules().find(|r| r.id() == "a").unwrap();
    assert_eq!(
        flags(policy, rule)[0].message,
        "shadowed by deny rule d (dry-run: once enforced): every request it allows is denied"
    );
}

#[test]
fn usage_lines() {
    let mut u = Usage::default();
    for line in [
        r#"{"timestamp":"2024-06-02T00:00:00Z","service":"t","principal":"a","decision":"allow","rule":"r1"}"#,
        r#"{"timestamp":"2024-06-01T00:00:00Z","service":"t","decision":"deny","reason":"no_matching_rule"}"#,
        r#"{"timestamp":"2024-06-03T00:00:00Z","fields":{"service":"t","decision":"allow","rule":"r1"}}"#,
        r#"{"timestamp":"2024-06-04T00:00:00Z","message":"policies loaded"}"#,
        "not json",
        "[1, 2]",
    ] {
        u.add(line);
    }
    assert_eq!((u.decisions, u.skipped), (3, 3));
    assert_eq!(u.count("t", "r1", "allow"), 2);
    assert_eq!(u.count("t", "r1", "deny"), 0);
    assert_eq!(u.count("t", "r2", "allow"), 0);
    assert_eq!(u.period(), "2024-06-01T00:00:00Z .. 2024-06-03T00:00:00Z");
}

#[test]
fn each_allow_rule_lists_the_limits_that_may_count_it() {
    let set = set("service: t
rules:
  - {id: d, effect: deny, to: [{paths: ['/admin/**']}]}
  - {id: reads, from: {principals: [a]}, to: [{methods: [GET], paths: ['/r/{id}']}], scopes: [s]}
  - {id: writes, from: {principals: [a]}, to: [{methods: [POST], paths: [/w]}], scopes: [s], limits: [imports]}
  - {id: other, from: {principals: [b]}, to: [{methods: [GET], paths: ['/r/{id}']}], scopes: [s]}
limits:
  - {id: a-reads, from: {principals: [a]}, to: [{methods: [GET]}], rate: 10/s}
  - {id: everyone, rate: 100/s}
  - {id: imports, rate: 1/m, per: service}
");
    let review = review(&set, Path::new("/nonexistent"), None);
    let limits: Vec<(String, Vec<String>)> = review.services[0]
        .rules
        .iter()
        .map(|r| (r.id.clone(), r.limits.clone()))
        .collect();
    let want = [
        ("d", vec![]),
        ("reads", vec!["a-reads 10/s", "everyone 100/s"]),
        ("writes", vec!["everyone 100/s", "imports 1/m"]),
        ("other", vec!["everyone 100/s"]),
    ];
    let want: Vec<(String, Vec<String>)> = want
        .iter()
        .map(|(id, l)| (id.to_string(), l.iter().map(|s| s.to_string()).collect()))
        .collect();
    assert_eq!(limits, want);
    let text = render::text(&review);
    assert!(text.lines().next().unwrap().ends_with("LIMITS"), "{text}");
    assert!(text.contains("a-reads 10/s, everyone 100/s"), "{text}");
    assert!(render::markdown(&review).contains("`imports 1/m`"));

    // No column when no policy has limits.
    let plain =
        review_of("service: t\nrules:\n  - {id: r, from: {principals: [a]}, scopes: [s]}\n");
    assert!(!render::text(&plain).contains("LIMITS"));
}

fn review_of(yaml: &str) -> Review {
    review(&set(yaml), Path::new("/nonexistent"), None)
}
