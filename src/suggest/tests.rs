//! Drafting from decision lines, without a server: bounds, ids, and what is reported.

use super::draft::{drafts, policy_yaml, suite_yaml};
use super::observed::{Observed, MAX_TEMPLATES_PER_CALLER};

fn line(principal: &str, peer: Option<&str>, hop: &str, method: &str, path: &str) -> String {
    serde_json::json!({
        "timestamp": "2026-01-01T00:00:00.000Z", "service": "ledger", "hop": hop,
        "principal": principal, "kind": "service", "peer": peer,
        "method": method, "path": path, "decision": "allow", "status": 200,
    })
    .to_string()
}

#[test]
fn callers_hops_and_peers() {
    let mut seen = Observed::default();
    for l in [
        line(
            "spiffe://a/ns/x/sa/api",
            Some("spiffe://a/ns/x/sa/api"),
            "mesh",
            "GET",
            "/a/1",
        ),
        // Same last segment, another caller: another rule id.
        line(
            "spiffe://a/ns/y/sa/api",
            Some("spiffe://a/ns/y/sa/p1"),
            "mesh",
            "GET",
            "/a/2",
        ),
        line(
            "spiffe://a/ns/y/sa/api",
            Some("spiffe://a/ns/y/sa/p2"),
            "gateway",
            "get",
            "/a/3",
        ),
        line("spiffe://a/ns/y/sa/api", None, "mesh", "PROPFIND", "/a/3"),
        line(
            "spiffe://a/ns/y/sa/api",
            None,
            "mesh",
            "GET",
            "<non-canonical>",
        ),
        "{\"timestamp\": \"t\", \"service\": \"ledger\", \"decision\": \"deny\"}".to_string(),
        "garbage".to_string(),
    ] {
        seen.add(&l, None);
    }
    assert_eq!(
        (seen.decisions, seen.skipped, seen.denied, seen.unusable),
        (6, 1, 1, 2)
    );
    assert_eq!(
        seen.unusable_paths.iter().collect::<Vec<_>>(),
        ["GET <non-canonical>", "PROPFIND /a/3"]
    );
    let d = drafts(&seen);
    let rules = &d[0].rules;
    let ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["ledger-api", "ledger-api-2"]);
    // The mTLS-only caller: one peer (itself), one hop.
    assert_eq!(rules[0].peer.as_deref(), Some("spiffe://a/ns/x/sa/api"));
    assert_eq!(rules[0].hop.as_deref(), Some("mesh"));
    // Two peers and two hops: neither is required.
    assert_eq!(
        (rules[1].peer.as_deref(), rules[1].hop.as_deref()),
        (None, None)
    );
    assert_eq!(
        rules[1].clauses,
        [(vec!["GET".to_string()], vec!["/a/{id}".to_string()])]
    );
    let policy = policy_yaml(&d[0], Some("https://sts"), "p");
    // The issuer is required of the token caller only, not of the mTLS-only one.
    assert_eq!(
        policy.matches("issuers: [\"https://sts\"]").count(),
        1,
        "{policy}"
    );
    let suite = suite_yaml(&d[0], Some("https://sts"));
    assert!(
        suite.contains("caller: {peer: \"spiffe://a/ns/x/sa/api\"}"),
        "{suite}"
    );
    assert!(
        suite.contains(
            "caller: {id: \"spiffe://a/ns/y/sa/api\", issuer: \"https://sts\", kind: service}"
        ),
        "{suite}"
    );
    // Another service only with --service: counted, not drafted.
    let mut only = Observed::default();
    only.add(&line("a:b", None, "mesh", "GET", "/x"), Some("other"));
    assert_eq!((only.other_services, only.services.len()), (1, 0));
}

#[test]
fn templates_per_caller_are_bounded() {
    let mut seen = Observed::default();
    // Distinct literal paths (names, not ids) past the bound.
    for i in 0..MAX_TEMPLATES_PER_CALLER + 5 {
        seen.add(
            &line("a:b", None, "mesh", "GET", &format!("/names/n{i}")),
            None,
        );
    }
    seen.add(&line("a:b", None, "mesh", "GET", "/names/n0"), None);
    let traffic = &seen.services["ledger"]["a:b"];
    assert_eq!(traffic.actions.len(), MAX_TEMPLATES_PER_CALLER);
    assert_eq!(traffic.over_bound, 5);
    let d = drafts(&seen);
    let rule = &d[0].rules[0];
    assert_eq!(rule.requests, MAX_TEMPLATES_PER_CALLER as u64 + 1);
    assert_eq!(
        rule.not_generalised,
        [format!("GET /names/*: segment 2 varies (n0, n1, n10, n100, n101, …) but is not an id: {MAX_TEMPLATES_PER_CALLER} paths listed as observed")]
    );
}

/// A line from `a:b` to ledger carrying `scopes` (`None`: logged as `null`).
fn scoped(path: &str, scopes: Option<&[&str]>, truncated: bool) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(&line("a:b", None, "mesh", "GET", path)).unwrap();
    v["scopes"] = serde_json::json!(scopes);
    if truncated {
        v["scopes_truncated"] = true.into();
    }
    v.to_string()
}

/// Each line's (scopes logged, `scopes_truncated`).
type Lines<'a> = &'a [(Option<&'a [&'a str]>, bool)];

#[test]
fn rules_require_the_scopes_every_covered_request_carried() {
    let cases: &[(Lines, &[&str], u64)] = &[
        // One request: all it carried.
        (&[(Some(&["b", "a"]), false)], &["a", "b"], 0),
        // The intersection, whatever the order.
        (
            &[
                (Some(&["a", "b", "c"]), false),
                (Some(&["c", "a"]), false),
                (Some(&["a", "c", "d"]), false),
            ],
            &["a", "c"],
            0,
        ),
        // Nothing in common, an empty list, or a request with no scopes logged
        // (an mTLS peer alone, an older log): none required.
        (&[(Some(&["a"]), false), (Some(&["b"]), false)], &[], 0),
        (&[(Some(&["a"]), false), (Some(&[]), false)], &[], 0),
        (&[(Some(&["a"]), false), (None, false)], &[], 0),
        (&[(None, false), (Some(&["a"]), false)], &[], 0),
        // A scope the log cut is never required; the rest still are, and the
        // truncation is counted.
        (
            &[(Some(&["a", "bbbb…"]), true), (Some(&["a", "bbbb…"]), true)],
            &["a"],
            2,
        ),
        // Without the flag, a scope ending in `…` is a scope like any other.
        (&[(Some(&["a", "b…"]), false)], &["a", "b…"], 0),
    ];
    for (lines, want, truncated) in cases {
        let mut seen = Observed::default();
        for (n, (scopes, cut)) in lines.iter().enumerate() {
            seen.add(&scoped(&format!("/x/{n}"), *scopes, *cut), None);
        }
        let d = drafts(&seen);
        let rule = &d[0].rules[0];
        assert_eq!(rule.scopes, *want, "{lines:?}");
        assert_eq!(rule.scopes_truncated, *truncated, "{lines:?}");
        let policy = policy_yaml(&d[0], None, "p");
        let suite = suite_yaml(&d[0], None);
        if want.is_empty() {
            assert!(!policy.contains("scopes:"), "{policy}");
            assert!(policy.contains("No scope was carried by every request"));
            assert!(!suite.contains("insufficient_scope"), "{suite}");
        } else {
            let listed: Vec<String> = want.iter().map(|s| format!("{s:?}")).collect();
            let listed = format!("scopes: [{}]", listed.join(", "));
            assert!(policy.contains(&format!("    {listed}\n")), "{policy}");
            // The observed cases carry them; one case without them is denied.
            assert!(suite.contains(&format!(", {listed}}}")), "{suite}");
            assert!(suite.contains("reason: insufficient_scope"), "{suite}");
        }
    }
}

#[test]
fn requests_over_the_template_bound_do_not_narrow_the_scopes() {
    let mut seen = Observed::default();
    for i in 0..MAX_TEMPLATES_PER_CALLER {
        seen.add(
            &scoped(&format!("/names/n{i}"), Some(&["a", "b"]), false),
            None,
        );
    }
    // Not covered by the rule (over the bound): its scopes are not the rule's business.
    seen.add(&scoped("/names/over", Some(&["b"]), false), None);
    let rule = &drafts(&seen)[0].rules[0];
    assert_eq!(rule.over_bound, 1);
    assert_eq!(rule.scopes, ["a", "b"]);
}
