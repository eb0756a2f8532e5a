//! Load errors: each kind, with its message and location.

use crate::policy::PolicySet;
use std::path::PathBuf;

/// Loads `files` and returns every error line (empty when the set loads).
fn errors(files: &[(&str, &str)]) -> Vec<String> {
    let sources: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(name, text)| (PathBuf::from(name), text.to_string()))
        .collect();
    match PolicySet::from_sources(&sources) {
        Ok(_) => Vec::new(),
        Err(errs) => errs.to_string().lines().map(str::to_string).collect(),
    }
}

/// A policy for service `t` whose single rule has `body` under `- id: r`.
fn rule(body: &str) -> String {
    format!("service: t\nrules:\n  - id: r\n{body}")
}

#[test]
fn one_error_per_kind() {
    #[rustfmt::skip]
    let cases: &[(&str, &str)] = &[
        // serde: unknown keys and wrong types, located by serde_yaml
        ("service: t\nrule: []\n", "a.yaml:2:1: unknown field `rule`, expected one of `service`, `audiences`, `mode`, `rules`, `limits`"),
        ("service: t\nrules:\n  - id: r\n    form: {}\n", "a.yaml:4:5: rules[0]: unknown field `form`, expected one of `id`, `description`, `effect`, `mode`, `from`, `to`, `scopes`, `when`, `limits`"),
        ("service: t\nrules:\n  - id: r\n    from: {principal: [a]}\n", "a.yaml:4:12: rules[0].from: unknown field `principal`, expected one of `principals`, `peers`, `kinds`, `issuers`, `anonymous`, `credentials`, `acting_for`, `delegated`"),
        ("service: t\nrules:\n  - id: r\n    effect: maybe\n", "a.yaml:4:13: rules[0].effect: unknown variant `maybe`, expected `allow` or `deny`"),
        ("service: t\nrules:\n  - id: r\n    from: {kinds: [robot]}\n", "a.yaml:4:20: rules[0].from.kinds[0]: unknown variant `robot`, expected `service` or `user`"),
        ("service: t\nrules:\n  - id: r\n    when: {hop: edge}\n", "a.yaml:4:17: rules[0].when.hop: unknown variant `edge`, expected `gateway` or `mesh`"),
        ("service: t\nrules:\n  - id: r\n    scopes: a.b\n", "a.yaml:4:13: rules[0].scopes: invalid type: string \"a.b\", expected a sequence"),
        ("service: t\nrules:\n  - description: no id\n", "a.yaml:3:5: rules[0]: missing field `id`"),
        ("rules: []\n", "a.yaml:1:1: missing field `service`"),
        // dry-run
        ("service: t\nmode: trial\n", "a.yaml:2:7: mode: unknown variant `trial`, expected `enforce` or `dry-run`"),
        (&rule("    mode: dry-run\n    to: [{paths: [/a]}]\n"), "a.yaml:4:5: rule \"r\": `mode: dry-run` is only for deny rules; to trial allow rules, put the whole policy in dry-run (`mode: dry-run` at the top of the file)"),
        ("", "a.yaml:1:1: expected a mapping at the top level, found an empty document"),
        // names
        ("service: Ledger\n", "a.yaml:1:10: invalid service name \"Ledger\": use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit"),
        ("service: -x\n", "a.yaml:1:10: invalid service name \"-x\": use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit"),
        ("service: t\nrules:\n  - id: \"bad id\"\n", "a.yaml:3:10: invalid rule id \"bad id\": use letters, digits, '.', '_' and '-', starting with a letter or digit"),
        ("service: t\naudiences: []\n", "a.yaml:2:1: audiences is empty; omit it to accept the service name"),
        // patterns, methods, headers
        (&rule("    to: [{paths: [\"/a/**/b\"]}]\n"), "a.yaml:4:20: path pattern \"/a/**/b\": \"**\" must be the last segment"),
        (&rule("    to:\n      - paths:\n          - /ok\n          - /a*b\n"), "a.yaml:7:13: path pattern \"/a*b\": \"*\" must be a whole segment"),
        (&rule("    to: [{grpc: [Ledger]}]\n"), "a.yaml:4:18: grpc pattern \"Ledger\": must be Service/Method or Service/*"),
        (&rule("    from: {peers: [\"spiffe://hopwarden.local/ns/*/sa/x*\"]}\n"), "a.yaml:4:21: peer pattern \"spiffe://hopwarden.local/ns/*/sa/x*\": \"*\" must be a whole segment"),
        (&rule("    from: {peers: [payments]}\n"), "a.yaml:4:20: peer pattern \"payments\": must be a spiffe:// ID (mTLS peers are identified by their SPIFFE ID)"),
        (&rule("    from: {principals: [\"spiffe://*/ns/a\"]}\n"), "a.yaml:4:26: principal pattern \"spiffe://*/ns/a\": the trust domain cannot be a wildcard"),
        (&rule("    to: [{methods: [get, FETCH]}]\n"), "a.yaml:4:26: rule \"r\": unknown method \"FETCH\""),
        (&rule("    to: [{methods: [G3T]}]\n"), "a.yaml:4:21: rule \"r\": unknown method \"G3T\""),
        (&rule("    when: {headers: {Authorization: [x]}}\n"), "a.yaml:4:22: rule \"r\": when.headers may not read \"Authorization\" (credentials and x-hopwarden-* headers are off limits)"),
        (&rule("    when: {headers: {cookie: [x]}}\n"), "a.yaml:4:22: rule \"r\": when.headers may not read \"cookie\" (credentials and x-hopwarden-* headers are off limits)"),
        (&rule("    when: {headers: {proxy-authorization: [x]}}\n"), "a.yaml:4:22: rule \"r\": when.headers may not read \"proxy-authorization\" (credentials and x-hopwarden-* headers are off limits)"),
        (&rule("    when: {headers: {x-hopwarden-rule: [x]}}\n"), "a.yaml:4:22: rule \"r\": when.headers may not read \"x-hopwarden-rule\" (credentials and x-hopwarden-* headers are off limits)"),
        (&rule("    when: {headers: {\"x tenant\": [x]}}\n"), "a.yaml:4:23: rule \"r\": invalid header name \"x tenant\""),
        (&rule("    when: {headers: {x-a: []}}\n"), "a.yaml:4:22: rule \"r\": header \"x-a\" has no values (it would match nothing)"),
        (&rule("    when: {headers: {X-A: [1], x-a: [2]}}\n"), "a.yaml:4:32: rule \"r\": header \"x-a\" is named twice"),
        (&rule("    when: {headers: {x-a: [1], x-a: [2]}}\n"), "a.yaml:4:21: rules[0].when.headers: duplicate entry with key \"x-a\""),
        (&rule("    when: {claims: {tier: [a], tier: [b]}}\n"), "a.yaml:4:20: rules[0].when.claims: duplicate entry with key \"tier\""),
        (&rule("    when: {claims: {env: []}}\n"), "a.yaml:4:21: rule \"r\": claim \"env\" has no values (it would match nothing)"),
        // rule structure
        (&rule("    effect: deny\n    to: [{paths: [/a]}]\n    scopes: [a.read]\n"), "a.yaml:6:5: rule \"r\": a deny rule cannot require scopes (it would stop applying to callers that lack them, which is almost always a mistake)"),
        (&rule("    to: [{}]\n"), "a.yaml:4:5: rule \"r\": to[0] names none of methods, paths or grpc"),
        (&rule("    to: []\n"), "a.yaml:4:5: rule \"r\": to is empty (it would match nothing); omit it to match every action"),
        (&rule("    to: [{paths: []}]\n"), "a.yaml:4:11: rule \"r\": to.paths is empty (it would match nothing); omit it instead"),
        (&rule("    from: {principals: []}\n"), "a.yaml:4:12: rule \"r\": from.principals is empty (it would match nothing); omit it instead"),
        (&rule("    from: {anonymous: true, kinds: [user]}\n"), "a.yaml:4:12: rule \"r\": `anonymous: true` cannot be combined with other `from` fields (an anonymous caller has no principal, peer, kind or issuer)"),
        (&rule("    from: {anonymous: true}\n    scopes: [a]\n"), "a.yaml:5:5: rule \"r\": an anonymous rule cannot require scopes (an anonymous caller has none)"),
        (&rule("    from: {anonymous: true}\n    when: {claims: {env: [prod]}}\n"), "a.yaml:5:12: rule \"r\": an anonymous rule cannot require claims (an anonymous caller has none)"),
        (&rule("    scopes: [\"a b\"]\n"), "a.yaml:4:15: rule \"r\": invalid scope \"a b\""),
    ];
    let mut failures = Vec::new();
    for (yaml, want) in cases {
        let got = errors(&[("a.yaml", yaml)]);
        if got != [want.to_string()] {
            failures.push(format!("{yaml:?}\n  want {want:?}\n  got  {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn valid_edge_cases_load() {
    let cases = [
        "service: t\n",
        "service: t\nrules: []\n",
        "service: a.b_c-1\naudiences: [a, b]\n",
        "service: t\nrules:\n  - {id: r, effect: deny}\n",
        "service: t\nrules:\n  - {id: r, effect: deny, scopes: []}\n",
        "service: t\nrules:\n  - {id: r, from: {anonymous: true}, to: [{paths: [/health]}]}\n",
        "service: t\nrules:\n  - {id: r, from: {anonymous: false, kinds: [user]}}\n",
        "service: t\nrules:\n  - {id: A.b_c-1, to: [{methods: [get, Post, PATCH]}]}\n",
    ];
    for yaml in cases {
        assert_eq!(errors(&[("a.yaml", yaml)]), Vec::<String>::new(), "{yaml}");
    }
}

#[test]
fn duplicate_rule_ids() {
    let a = "service: a\nrules:\n  - id: r1\n    description: mentions r2 first\n  - id: r2\n  - id: r2\n";
    let b = "service: b\nrules:\n  - id: other\n  - id: r1\n";
    let want = [
        "policies/a.yaml:6:9: duplicate rule id \"r2\" (first defined in policies/a.yaml)",
        "policies/b.yaml:4:9: duplicate rule id \"r1\" (first defined in policies/a.yaml)",
    ];
    assert_eq!(
        errors(&[("policies/a.yaml", a), ("policies/b.yaml", b)]),
        want
    );
}

#[test]
fn duplicate_services_and_all_errors_collected() {
    let a = "service: ledger\nrules:\n  - {id: r1, to: [{paths: [x]}]}\n  - {id: r2, effect: deny, scopes: [s]}\n";
    let b = "# the same service again\nservice: ledger\n";
    let c = "service: c\nbogus: true\n";
    let want = [
        "p/a.yaml:3:28: path pattern \"x\": must start with '/'",
        "p/a.yaml:4:28: rule \"r2\": a deny rule cannot require scopes (it would stop applying to callers that lack them, which is almost always a mistake)",
        "p/b.yaml:2:10: duplicate service \"ledger\" (also defined in p/a.yaml)",
        "p/c.yaml:2:1: unknown field `bogus`, expected one of `service`, `audiences`, `mode`, `rules`, `limits`",
    ];
    assert_eq!(
        errors(&[("p/a.yaml", a), ("p/b.yaml", b), ("p/c.yaml", c)]),
        want
    );
}

#[test]
fn errors_point_into_the_right_rule() {
    // The same bad pattern in two rules: each error points at its own rule.
    let yaml = "service: t\nrules:\n  - id: one\n    to: [{paths: [/a/**/b]}]\n  - id: two\n    to: [{paths: [/a/**/b]}]\n";
    let want = [
        "a.yaml:4:19: path pattern \"/a/**/b\": \"**\" must be the last segment",
        "a.yaml:6:19: path pattern \"/a/**/b\": \"**\" must be the last segment",
    ];
    assert_eq!(errors(&[("a.yaml", yaml)]), want);
}

#[test]
fn header_inputs_are_lowercase_sorted_and_deduped() {
    let yaml = "service: t\nrules:\n  - {id: a, when: {headers: {X-Tenant: [acme], x-b: [1]}}}\n  - {id: b, effect: deny, when: {headers: {x-tenant: [evil]}}}\n";
    let sources = [(PathBuf::from("a.yaml"), yaml.to_string())];
    let set = PolicySet::from_sources(&sources).unwrap_or_else(|e| panic!("{e}"));
    let policy = set.get("t").unwrap();
    assert_eq!(policy.header_inputs(), ["x-b", "x-tenant"]);
    let ids: Vec<&str> = policy.rules().map(|r| r.id()).collect();
    assert_eq!(ids, ["b", "a"]);
}

#[test]
fn odd_input_is_an_error_not_a_panic() {
    let cases = [
        "service: t\nrules:\n  - id: ééé\n  - id: ééé\n    to: [{paths: [\"/é/**/x\"]}]\n",
        "service: t\nrules:\n  - id: \"\"\n  - id: \"\"\n",
        "service: \"\"\n",
        "service: t\nrules:\n  - id: r\n    to: [{paths: [\"\"], grpc: [\"\"], methods: [\"\"]}]\n    scopes: [\"\"]\n",
        "service: t\nrules:\n  - id: r\n    from: {principals: [\"\"], peers: [\"\"], issuers: [\"\"]}\n    when: {headers: {\"\": [a]}, claims: {\"\": [a]}}\n",
        "\u{feff}service: t\nrules: [{id: r, to: [{paths: ['/{é}']}]}]\n",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        "a: &a [*a]\n",
        "service: t\nrules: !!str x\n",
    ];
    for yaml in cases {
        let errs = errors(&[("a.yaml", yaml)]);
        assert!(!errs.is_empty(), "{yaml:?} loaded");
        assert!(errs.iter().all(|e| e.starts_with("a.yaml")), "{errs:?}");
    }
}

#[test]
fn rules_alike_share_their_compiled_parts_and_each_reports_its_errors() {
    // The same bad `to` in two rules: both are reported, each in its own rule.
    let bad = "service: t\nrules:\n  - id: a\n    to: [{methods: [FETCH]}]\n  - id: b\n    to: [{methods: [FETCH]}]\n";
    assert_eq!(
        errors(&[("a.yaml", bad)]),
        [
            "a.yaml:4:21: rule \"a\": unknown method \"FETCH\"",
            "a.yaml:6:21: rule \"b\": unknown method \"FETCH\"",
        ]
    );
    // The same `to` in allow and deny rules compiles apart (a deny on GET covers
    // HEAD too); two allow rules alike share one compiled list.
    let text = "service: t\nrules:\n  - id: d\n    effect: deny\n    to: [{methods: [GET], paths: [/a]}]\n  - id: a1\n    to: [{methods: [GET], paths: [/a]}]\n    scopes: [s]\n  - id: a2\n    to: [{methods: [GET], paths: [/a]}]\n    scopes: [s]\n";
    let set = PolicySet::from_sources(&[(PathBuf::from("a.yaml"), text.to_string())]).unwrap();
    let policy = set.get("t").unwrap();
    let methods = |r: &crate::policy::Rule| r.to().unwrap()[0].methods.as_deref().unwrap().to_vec();
    assert_eq!(methods(&policy.deny[0]), ["GET", "HEAD"]);
    assert_eq!(methods(&policy.allow[0]), ["GET"]);
    let (a1, a2) = (&policy.allow[0], &policy.allow[1]);
    assert!(std::sync::Arc::ptr_eq(
        a1.to.as_ref().unwrap(),
        a2.to.as_ref().unwrap()
    ));
    assert!(std::sync::Arc::ptr_eq(&a1.scopes, &a2.scopes));
}

/// A policy for service `t` with `n` rules of three lines each (rule `i` starts on
/// line `3 + 3 * i`), the `i`-th rule's middle line given by `line(i)`.
fn long(n: usize, line: impl Fn(usize) -> String) -> String {
    let mut text = String::from("service: t\nrules:\n");
    for i in 0..n {
        text += &format!(
            "  - id: r{i}\n{}\n    to: [{{methods: [GET], paths: [/a]}}]\n",
            line(i)
        );
    }
    text
}

#[test]
fn long_files_compile_in_parts_and_still_say_where_each_error_is() {
    // Long enough to be parsed and compiled in parts on several threads (when there
    // are several cores): each case has its one error late in the list.
    const N: usize = 3000;
    let caller = |i: usize| format!("    from: {{principals: ['spiffe://x/ns/a/sa/c{i}']}}");
    let with =
        |at: usize, odd: &str| long(N, |i| if i == at { odd.to_string() } else { caller(i) });
    let line = |i: usize| 3 + 3 * i;
    let limits = "limits:\n  - {id: l, rate: 5/s}\n";
    let cases: Vec<(String, String)> = vec![
        (with(2990, "    scopes: ['bad scope']"), format!("a.yaml:{}:15: rule \"r2990\": invalid scope \"bad scope\"", line(2990) + 1)),
        (with(2991, "    from: {issuers: [' ']}"), format!("a.yaml:{}:12: rule \"r2991\": empty issuer \" \"", line(2991) + 1)),
        (long(N, |i| if i == 2992 { "    when: {hop: mesh}\n  - id: r7".into() } else { caller(i) }), format!("a.yaml:{}:9: duplicate rule id \"r7\" (first defined in a.yaml)", line(2992) + 2)),
        (format!("{limits}{}", with(2993, "    limits: [nope]")), format!("a.yaml:{}:14: rule \"r2993\": unknown limit \"nope\" (limits are defined under `limits:` in the same policy file)", line(2993) + 3)),
        (long(N, caller).replace("service: t", "service: T"), "a.yaml:1:10: invalid service name \"T\": use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit".into()),
        (format!("limits:\n  - {{id: l, rate: 0/s}}\n{}", long(N, caller)), "a.yaml:2:19: limit \"l\": invalid rate \"0/s\": the count must be at least 1 (a rate of 0 would refuse everything; use a deny rule)".into()),
    ];
    for (text, want) in &cases {
        assert_eq!(errors(&[("a.yaml", text)]), [want.as_str()], "{want}");
    }
    // An id another file took is that file's: this one's error, and no other.
    let first = "service: u\nrules:\n  - id: r2999\n";
    assert_eq!(
        errors(&[("a.yaml", first), ("b.yaml", &long(N, caller))]),
        [format!(
            "b.yaml:{}:9: duplicate rule id \"r2999\" (first defined in a.yaml)",
            line(2999)
        )]
    );
}

#[test]
fn long_files_compile_in_parts_to_what_one_rule_after_another_gives() {
    use super::{FileContext, RuleSpec};
    let text = long(3000, |i| match i % 4 {
        0 => format!("    from: {{principals: ['spiffe://x/ns/a/sa/c{i}']}}\n    limits: [l]"),
        1 => "    effect: deny\n    from: {peers: ['spiffe://x/ns/b/*']}".into(),
        2 => format!("    when: {{headers: {{x-t{i}: [v]}}}}"),
        _ => "    scopes: [s]".into(),
    });
    let text = format!("limits:\n  - {{id: l, rate: 5/s}}\n{text}");
    let file = std::path::Path::new("a.yaml");
    let set = PolicySet::from_sources(&[(PathBuf::from("a.yaml"), text.clone())]).unwrap();
    let parts = set.get("t").unwrap();
    let spec = crate::yaml::from_str(&text, file).unwrap();
    let one_by_one = FileContext::new(file, &text, &[] as &[RuleSpec], &[])
        .policy(spec, &mut Default::default());
    let show = |p: &super::ServicePolicy| {
        let mut named: Vec<_> = p.named_callers.iter().collect();
        named.sort();
        format!(
            "{:?} {:?} {:?} {:?} {:?} {named:?}",
            p.deny, p.allow, p.limits, p.header_inputs, p.audiences
        )
    };
    assert_eq!(parts.allow.len(), 2250);
    assert_eq!(parts.allow[0].limits.len(), 1);
    assert_eq!(show(parts), show(&one_by_one));
}
