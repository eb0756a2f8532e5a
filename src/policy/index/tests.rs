use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::super::eval::Enforcement;
use super::super::tests::{allow, deny, http, peer, token, STS};
use super::*;
use crate::policy::{EvalInput, Evaluation, PolicySet, ServicePolicy};
use crate::request::{Action, Hop};

const NO: Evaluation = Evaluation::NoMatch;

fn policy(yaml: &str) -> Arc<ServicePolicy> {
    let set = PolicySet::from_sources(&[(PathBuf::from("t.yaml"), yaml.to_string())])
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    set.get("t").unwrap().clone()
}

/// The indexed answer, after checking it against the plain scan.
fn both(p: &ServicePolicy, who: Option<&Principal>, hop: Hop, action: &Action) -> Evaluation {
    let headers = HashMap::new();
    let input = EvalInput {
        principal: who,
        hop,
        action,
        headers: &headers,
    };
    let scan = p.run(&input, Enforcement::AsWritten, &mut ()).evaluation;
    let indexed = p.evaluate(&input);
    assert_eq!(indexed, scan, "indexed and scanned answers differ");
    indexed
}

/// Ids of the allow rules the index offers `who`, in order.
fn offered<'a>(p: &'a ServicePolicy, who: Option<&Principal>) -> Vec<&'a str> {
    let index = p.index.as_ref().expect("policies are indexed in tests");
    index
        .allow
        .candidates(who)
        .map(|at| p.allow[at].id())
        .collect()
}

const TD: &str = "spiffe://td/ns";

#[test]
fn exact_callers_are_looked_up_and_the_rest_always_offered() {
    let p = policy(&format!(
        "service: t
rules:
  - {{id: for-a, from: {{principals: [a]}}, to: [{{paths: [/a]}}]}}
  - {{id: for-b-c, from: {{principals: [b, c]}}}}
  - {{id: wildcard, from: {{principals: ['{TD}/x/**']}}}}
  - {{id: star, from: {{principals: ['**']}}, to: [{{paths: [/star]}}]}}
  - {{id: mixed, from: {{principals: [a, '{TD}/*/sa/z']}}, to: [{{paths: [/mixed]}}]}}
  - {{id: open, to: [{{paths: [/open]}}]}}
  - {{id: for-a-again, from: {{principals: [a, a]}}, to: [{{paths: [/again]}}]}}
  - {{id: for-e-twice, from: {{principals: [e, e]}}}}
"
    ));
    let a = token("a", &[]);
    let b = token("b", &[]);
    let d = token("d", &[]);
    // File order kept across the looked-up and fallback lists, each rule once.
    assert_eq!(
        offered(&p, Some(&a)),
        ["for-a", "wildcard", "star", "mixed", "open", "for-a-again"]
    );
    assert_eq!(
        offered(&p, Some(&b)),
        ["for-b-c", "wildcard", "star", "mixed", "open"]
    );
    assert_eq!(offered(&p, Some(&d)), ["wildcard", "star", "mixed", "open"]);
    // An id named twice in the only rule for it: still offered once.
    let e = token("e", &[]);
    assert_eq!(
        offered(&p, Some(&e)),
        ["wildcard", "star", "mixed", "open", "for-e-twice"]
    );
    let mesh = Hop::Mesh;
    assert_eq!(both(&p, Some(&a), mesh, &http("GET", "/a")), allow("for-a"));
    assert_eq!(
        both(&p, Some(&b), mesh, &http("GET", "/a")),
        allow("for-b-c")
    );
    assert_eq!(both(&p, Some(&d), mesh, &http("GET", "/a")), NO);
    assert_eq!(
        both(&p, Some(&d), mesh, &http("GET", "/star")),
        allow("star")
    );
    assert_eq!(
        both(&p, Some(&a), mesh, &http("GET", "/mixed")),
        allow("mixed")
    );
    assert_eq!(both(&p, Some(&d), mesh, &http("GET", "/mixed")), NO);
    let z = token(&format!("{TD}/q/sa/z"), &[]);
    assert_eq!(
        both(&p, Some(&z), mesh, &http("GET", "/mixed")),
        allow("mixed")
    );
    let x = token(&format!("{TD}/x/sa/any"), &[]);
    assert_eq!(
        both(&p, Some(&x), mesh, &http("GET", "/zzz")),
        allow("wildcard")
    );
    assert_eq!(
        both(&p, Some(&a), mesh, &http("GET", "/again")),
        allow("for-a-again")
    );
    // Anonymous callers are offered none of these: each needs a credential or, for
    // `open` (no `from`), is an allow rule, which never admits them by omission.
    assert_eq!(offered(&p, None), ["open"]);
    assert_eq!(both(&p, None, mesh, &http("GET", "/open")), NO);
}

#[test]
fn peers_kinds_and_issuers() {
    let p = policy(&format!(
        "service: t
rules:
  - {{id: by-peer, from: {{peers: ['{TD}/x/sa/job']}}}}
  - {{id: by-peer-glob, from: {{peers: ['{TD}/*/sa/job']}}, to: [{{paths: [/glob]}}]}}
  - {{id: users, from: {{kinds: [user]}}, to: [{{paths: [/u]}}]}}
  - {{id: both-kinds, from: {{kinds: [service, user]}}, to: [{{paths: [/k]}}]}}
  - {{id: by-issuer, from: {{issuers: ['{STS}']}}, to: [{{paths: [/iss]}}]}}
  - {{id: other-issuer, from: {{issuers: ['https://other']}}, to: [{{paths: [/iss]}}]}}
  - {{id: peer-and-principal, from: {{principals: [a], peers: ['{TD}/y/sa/job']}}, to: [{{paths: [/pp]}}]}}
"
    ));
    let job = peer(&format!("{TD}/x/sa/job"));
    let other_job = peer(&format!("{TD}/y/sa/job"));
    let mut user = token("u", &[]);
    user.kind = crate::principal::PrincipalKind::User;
    let svc = token("s", &[]);
    let mut a_via_peer = token("a", &[]);
    a_via_peer.peer = other_job.peer.clone();
    let mesh = Hop::Mesh;
    assert_eq!(
        offered(&p, Some(&job)),
        ["by-peer", "by-peer-glob", "both-kinds"]
    );
    assert_eq!(
        offered(&p, Some(&user)),
        ["by-peer-glob", "users", "both-kinds", "by-issuer"]
    );
    assert_eq!(
        offered(&p, Some(&svc)),
        ["by-peer-glob", "both-kinds", "by-issuer"]
    );
    assert_eq!(
        both(&p, Some(&job), mesh, &http("GET", "/x")),
        allow("by-peer")
    );
    assert_eq!(both(&p, Some(&other_job), mesh, &http("GET", "/x")), NO);
    assert_eq!(
        both(&p, Some(&other_job), mesh, &http("GET", "/glob")),
        allow("by-peer-glob")
    );
    assert_eq!(
        both(&p, Some(&user), mesh, &http("GET", "/u")),
        allow("users")
    );
    assert_eq!(both(&p, Some(&svc), mesh, &http("GET", "/u")), NO);
    assert_eq!(
        both(&p, Some(&svc), mesh, &http("GET", "/k")),
        allow("both-kinds")
    );
    assert_eq!(
        both(&p, Some(&svc), mesh, &http("GET", "/iss")),
        allow("by-issuer")
    );
    // A peer-only caller has no issuer: no issuer-keyed rule is offered.
    assert_eq!(
        both(&p, Some(&other_job), mesh, &http("GET", "/iss")),
        NO,
        "other_job iss"
    );
    // The principal id is the key; the peer condition is still checked by the rule.
    assert_eq!(
        offered(&p, Some(&a_via_peer)).first(),
        Some(&"by-peer-glob")
    );
    assert_eq!(
        both(&p, Some(&a_via_peer), mesh, &http("GET", "/pp")),
        allow("peer-and-principal")
    );
    assert_eq!(
        both(&p, Some(&token("a", &[])), mesh, &http("GET", "/pp")),
        NO
    );
}

#[test]
fn omitted_from_and_anonymous_rules() {
    let p = policy(
        "service: t
rules:
  - {id: deny-all-secret, effect: deny, to: [{paths: [/secret]}]}
  - {id: deny-anon, effect: deny, from: {anonymous: true}, to: [{paths: [/auth]}]}
  - {id: deny-authed, effect: deny, from: {anonymous: false}, to: [{paths: [/authed-only]}]}
  - {id: anon-health, from: {anonymous: true}, to: [{paths: [/health]}]}
  - {id: any-auth, to: [{paths: [/auth, /secret, /health, /authed-only]}]}
",
    );
    let index = p.index.as_ref().unwrap();
    let deny_ids = |who| -> Vec<&str> {
        index
            .deny
            .candidates(who)
            .map(|at| p.deny[at].id())
            .collect()
    };
    let me = token("me", &[]);
    assert_eq!(deny_ids(None), ["deny-all-secret", "deny-anon"]);
    assert_eq!(deny_ids(Some(&me)), ["deny-all-secret", "deny-authed"]);
    assert_eq!(offered(&p, None), ["anon-health", "any-auth"]);
    assert_eq!(offered(&p, Some(&me)), ["any-auth"]);
    let mesh = Hop::Mesh;
    let cases: &[(Option<&Principal>, &str, Evaluation)] = &[
        (None, "/secret", deny("deny-all-secret")),
        (Some(&me), "/secret", deny("deny-all-secret")),
        (None, "/auth", deny("deny-anon")),
        (Some(&me), "/auth", allow("any-auth")),
        (None, "/health", allow("anon-health")),
        (Some(&me), "/health", allow("any-auth")),
        (Some(&me), "/authed-only", deny("deny-authed")),
        (None, "/authed-only", NO),
    ];
    for (who, path, want) in cases {
        assert_eq!(both(&p, *who, mesh, &http("GET", path)), *want, "{path}");
    }
}

#[test]
fn candidates_merge_in_order_without_repeats() {
    let lists: [&[Position]; MAX_LISTS] = [&[1, 5, 9], &[], &[0, 5], &[2], &[9, 10], &[3]];
    let got: Vec<usize> = Candidates { lists }.collect();
    assert_eq!(got, [0, 1, 2, 3, 5, 9, 10]);
    let none: Vec<usize> = Candidates {
        lists: [&[]; MAX_LISTS],
    }
    .collect();
    assert!(none.is_empty());
}

/// A small seeded generator (xorshift64*), so a failure is reproduced by its seed
/// with no extra dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
    fn some<'a>(&mut self, from: &[&'a str], max: usize) -> Vec<&'a str> {
        let n = 1 + self.below(max);
        (0..n).map(|_| self.pick(from)).collect()
    }
}

const IDS: &[&str] = &[
    "a",
    "b",
    "c",
    "spiffe://td/ns/x/sa/a",
    "spiffe://td/ns/x/sa/b",
    "spiffe://td/ns/y/sa/a",
];
const ID_PATTERNS: &[&str] = &[
    "a",
    "b",
    "c",
    "spiffe://td/ns/x/sa/a",
    "spiffe://td/ns/x/sa/b",
    "spiffe://td/ns/y/sa/a",
    "**",
    "spiffe://td/ns/*/sa/a",
    "spiffe://td/ns/x/**",
];
const PEERS: &[&str] = &[
    "spiffe://td/ns/x/sa/a",
    "spiffe://td/ns/x/sa/b",
    "spiffe://td/ns/y/sa/a",
];
const PEER_PATTERNS: &[&str] = &[
    "spiffe://td/ns/x/sa/a",
    "spiffe://td/ns/x/sa/b",
    "spiffe://td/ns/y/sa/a",
    "spiffe://td/ns/*/sa/a",
    "spiffe://td/**",
];
const KINDS: &[&str] = &["service", "user"];
const ISSUERS: &[&str] = &["https://i1", "https://i2"];
const SCOPES: &[&str] = &["s1", "s2"];
// Literal first segments (in two cases: deny rules ignore case), wildcards,
// parameters and `/` itself, for the caller index and the first-segment prefilter.
const PATHS: &[&str] = &[
    "/a", "/a/**", "/A/x", "/b", "/b/{id}", "/*", "/**", "/{id}/x", "/",
];
const REQUEST_PATHS: &[&str] = &["/a", "/a/x", "/A/x", "/b", "/b/1", "/c", "/c/x", "/"];
const GRPC: &[&str] = &["a/M", "pkg.S/*"];
const REQUEST_GRPC: &[&str] = &["a/M", "pkg.S/Get"];

fn list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("'{i}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// A random but valid policy of up to 24 rules.
fn random_policy(rng: &mut Rng) -> String {
    let mut yaml = String::from("service: t\nrules:\n");
    for n in 0..rng.below(25) {
        let deny = rng.chance(35);
        let mut fields = vec![format!("id: r{n}")];
        if deny {
            fields.push("effect: deny".into());
            if rng.chance(25) {
                fields.push("mode: dry-run".into());
            }
        }
        let anonymous = rng.chance(10);
        if anonymous {
            fields.push("from: {anonymous: true}".into());
        } else if rng.chance(80) {
            let mut from = Vec::new();
            if rng.chance(50) {
                from.push(format!("principals: {}", list(&rng.some(ID_PATTERNS, 3))));
            }
            if rng.chance(25) {
                from.push(format!("peers: {}", list(&rng.some(PEER_PATTERNS, 2))));
            }
            if rng.chance(30) {
                from.push(format!("kinds: {}", list(&rng.some(KINDS, 2))));
            }
            if rng.chance(30) {
                from.push(format!("issuers: {}", list(&rng.some(ISSUERS, 2))));
            }
            if rng.chance(10) {
                from.push("anonymous: false".into());
            }
            fields.push(format!("from: {{{}}}", from.join(", ")));
        }
        if rng.chance(70) {
            let mut clauses = Vec::new();
            for _ in 0..1 + usize::from(rng.chance(20)) {
                let mut clause = Vec::new();
                if rng.chance(90) {
                    clause.push(format!("paths: {}", list(&rng.some(PATHS, 2))));
                }
                if rng.chance(10) || clause.is_empty() {
                    clause.push(format!("grpc: {}", list(&rng.some(GRPC, 1))));
                }
                if rng.chance(40) {
                    clause.push(format!("methods: {}", list(&rng.some(&["GET", "POST"], 2))));
                }
                clauses.push(format!("{{{}}}", clause.join(", ")));
            }
            fields.push(format!("to: [{}]", clauses.join(", ")));
        }
        if !deny && !anonymous && rng.chance(30) {
            fields.push(format!("scopes: {}", list(&rng.some(SCOPES, 2))));
        }
        if rng.chance(15) {
            fields.push(format!("when: {{hop: {}}}", rng.pick(&["gateway", "mesh"])));
        }
        yaml.push_str(&format!("  - {{{}}}\n", fields.join(", ")));
    }
    yaml
}

/// A random caller: anonymous, token (with or without a peer) or peer only.
fn random_caller(rng: &mut Rng) -> Option<Principal> {
    match rng.below(4) {
        0 => None,
        1 => Some(peer(rng.pick(PEERS))),
        _ => {
            let scopes = if rng.chance(50) {
                rng.some(SCOPES, 2)
            } else {
                vec![]
            };
            let mut p = token(rng.pick(IDS), &scopes);
            p.issuer = Some(rng.pick(ISSUERS).into());
            if rng.chance(50) {
                p.kind = crate::principal::PrincipalKind::User;
            }
            if rng.chance(30) {
                p.peer = Some(rng.pick(PEERS).parse().unwrap());
            }
            Some(p)
        }
    }
}

/// The property: on random policies and requests, the indexed evaluation gives the
/// plain scan's answer (kept as the oracle), dry-run and enforced, would-deny included.
#[test]
fn indexed_evaluation_equals_the_plain_scan() {
    let seed = std::env::var("HOPWARDEN_INDEX_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1dea_u64);
    let mut rng = Rng(seed);
    let (mut checks, mut decided) = (0, 0);
    for case in 0..3_000 {
        let yaml = random_policy(&mut rng);
        let p = policy(&yaml);
        for _ in 0..20 {
            let who = random_caller(&mut rng);
            let hop = if rng.chance(50) {
                Hop::Mesh
            } else {
                Hop::Gateway
            };
            let action = if rng.chance(10) {
                super::super::tests::grpc(rng.pick(REQUEST_GRPC))
            } else {
                http(rng.pick(&["GET", "POST", "HEAD"]), rng.pick(REQUEST_PATHS))
            };
            let headers = HashMap::new();
            let input = EvalInput {
                principal: who.as_ref(),
                hop,
                action: &action,
                headers: &headers,
            };
            for enforcement in [Enforcement::AsWritten, Enforcement::AllEnforced] {
                let scan = p.run(&input, enforcement, &mut ());
                let indexed = p.run_indexed(&input, enforcement);
                assert_eq!(
                    indexed, scan,
                    "seed {seed:#x} case {case}: {who:?} {hop} {action:?}\n{yaml}"
                );
                checks += 1;
                decided += usize::from(scan.evaluation != NO);
            }
        }
    }
    // The generator must produce real decisions, not only default denials.
    assert!(decided > checks / 5, "{decided} of {checks} decided");
}

/// Ids of the rules of `list` the index offers `who` for `path` and the
/// first-segment prefilter lets through, in order.
fn admitted<'a>(
    p: &'a ServicePolicy,
    deny: bool,
    who: Option<&Principal>,
    path: &str,
) -> Vec<&'a str> {
    let index = p.index.as_ref().expect("policies are indexed in tests");
    let (list, rules) = if deny {
        (&index.deny, &p.deny)
    } else {
        (&index.allow, &p.allow)
    };
    let key = list.path_key(path);
    list.candidates(who)
        .filter(|&at| list.admits(at, key))
        .map(|at| rules[at].id())
        .collect()
}

#[test]
fn rules_for_another_first_path_segment_are_skipped() {
    let p = policy(
        "service: t
rules:
  - {id: deny-admin, effect: deny, to: [{paths: [/Admin/**]}]}
  - {id: deny-any, effect: deny, to: [{paths: ['/*/secret']}]}
  - {id: orders, to: [{paths: [/orders, '/orders/{id}']}]}
  - {id: users, to: [{methods: [GET], paths: [/users/**]}]}
  - {id: two-roots, to: [{paths: [/orders]}, {paths: [/users]}]}
  - {id: wild, to: [{paths: ['/{tenant}/orders']}]}
  - {id: grpc-too, to: [{paths: [/orders], grpc: [pkg.S/Get]}]}
  - {id: no-to, scopes: [s1]}
  - {id: root, to: [{paths: [/]}]}
",
    );
    let who = token("a", &[]);
    let who = Some(&who);
    let always = ["two-roots", "wild", "grpc-too", "no-to"];
    let with = |first: &[&'static str]| -> Vec<&'static str> {
        let mut ids: Vec<&str> = first.to_vec();
        ids.extend(always);
        ids.sort_by_key(|id| p.allow.iter().position(|r| r.id() == *id));
        ids
    };
    assert_eq!(admitted(&p, false, who, "/orders/7"), with(&["orders"]));
    assert_eq!(admitted(&p, false, who, "/users"), with(&["users"]));
    assert_eq!(admitted(&p, false, who, "/Users"), with(&[]));
    assert_eq!(admitted(&p, false, who, "/"), with(&["root"]));
    assert_eq!(admitted(&p, false, who, "/other"), with(&[]));
    // Deny rules compare ignoring case: `/admin` and `/ADMIN` are both offered it.
    for path in ["/admin/x", "/ADMIN", "/Admin/y"] {
        assert_eq!(
            admitted(&p, true, who, path),
            ["deny-admin", "deny-any"],
            "{path}"
        );
    }
    assert_eq!(admitted(&p, true, who, "/orders/secret"), ["deny-any"]);
    // And the answers are the plain scan's.
    assert_eq!(
        both(&p, who, Hop::Mesh, &http("GET", "/ADMIN/x")),
        deny("deny-admin")
    );
    assert_eq!(
        both(&p, who, Hop::Mesh, &http("GET", "/users/1")),
        allow("users")
    );
    assert_eq!(both(&p, who, Hop::Mesh, &http("GET", "/")), allow("root"));
    assert_eq!(
        both(&p, who, Hop::Mesh, &http("POST", "/acme/orders")),
        allow("wild")
    );
}

#[test]
fn a_key_filed_once_holds_its_rule_inline_and_never_twice() {
    let mut positions = Positions::default();
    assert_eq!(positions.as_slice(), &[] as &[Position]);
    positions.push_once(3);
    // One rule (most keys of a large estate): inline, no list of its own.
    assert!(matches!(positions, Positions::One(3)), "{positions:?}");
    // A repeat (`principals: [a, a]`) is filed once.
    positions.push_once(3);
    assert!(matches!(positions, Positions::One(3)), "{positions:?}");
    positions.push_once(5);
    positions.push_once(5);
    assert_eq!(positions.as_slice(), &[3, 5]);
}
