//! The offline tools as a user runs them: `hopwarden test`, `explain` and `review`.
//!
//! Outputs are compared with golden files in `tests/golden/`; after a deliberate
//! change, regenerate them with `UPDATE_GOLDEN=1 cargo test --test tooling` (which
//! fails, having compared nothing), review the diff by hand and run again without it.
//! Tokens are minted at test time with the dev key, and
//! nothing volatile (exp, temp paths) appears in golden text.

mod common;

use serde_json::json;

use common::golden::Golden;
use common::{dev_signed, now, repo, run_bin as run, run_bin_with};
const TD: &str = "spiffe://hopwarden.local/ns";
const STS: &str = "https://sts.hopwarden.local";

fn token(sub: &str, aud: &str, scope: &str) -> String {
    let (code, out, err) = run(
        &["token", "--sub", sub, "--aud", aud, "--scope", scope],
        &repo(),
    );
    assert_eq!(code, 0, "{err}");
    out.trim().to_string()
}

// ---- hopwarden test ----

#[test]
fn test_passes_on_the_examples() {
    let (code, out, err) = run(&["test", "policies"], &repo());
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("running 10 cases from policies/catalog_test.yaml\ncase inventory lists products ... ok\n"),
        "{out}"
    );
    assert!(!out.contains("FAILED") && !out.contains("warning"), "{out}");
    let last = out.lines().last().unwrap();
    let passed: usize = last
        .strip_suffix(" passed, 0 failed")
        .unwrap_or_else(|| panic!("{last}"))
        .parse()
        .unwrap();
    assert!(passed >= 40, "{last}");
    // Without DIR, the config's policy directory.
    let (code, again, _) = run(&["test"], &repo());
    assert_eq!((code, again.replace("./policies/", "policies/")), (0, out));
}

/// A policy directory with the ledger policy and `suite` as its test file.
fn ledger_dir(suite: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("policies/ledger.yaml"),
        dir.path().join("ledger.yaml"),
    )
    .unwrap();
    std::fs::write(dir.path().join("ledger_test.yaml"), suite).unwrap();
    dir
}

const PAYMENTS: &str = "{id: \"spiffe://hopwarden.local/ns/payments/sa/payments\", issuer: \"https://sts.hopwarden.local\", scopes: [ledger.read]}";

#[test]
fn test_reports_a_wrong_expectation() {
    let suite = format!(
        "service: ledger
cases:
  - name: payments reads a transaction
    caller: {PAYMENTS}
    request: {{path: /transactions/42}}
    expect: {{decision: allow}}
  - name: payments refund is denied
    caller: {PAYMENTS}
    request: {{method: GET, path: /transactions/7}}
    expect: {{decision: deny, rule: payments-never-refund, status: 403}}
"
    );
    let dir = ledger_dir(&suite);
    let (code, out, err) = run(&["test", "."], dir.path());
    assert_eq!(code, 1, "{out}{err}");
    let want = "running 2 cases from ./ledger_test.yaml
case payments reads a transaction ... ok
case payments refund is denied ... FAILED

failures:
---- ./ledger_test.yaml: payments refund is denied ----
expected deny (rule payments-never-refund, status 403), got allow (rule payments-read-transactions, status 200)

warning: 3 rule(s) not exercised by any case:
  ledger: payments-never-refund
  ledger: reconciler-read-transactions
  ledger: customer-bff-reads-for-customers

1 passed, 1 failed
";
    assert_eq!(out, want);
}

#[test]
fn test_refuses_broken_suites_with_locations() {
    let cases: &[(&str, &str)] = &[
        (
            "service: ledger\ncases:\n  - name: a\n    caller: anonymous\n    request: {path: /x}\n    expekt: {decision: deny}\n",
            "ledger_test.yaml:6:5: cases[0]: unknown field `expekt`, expected one of `name`, `caller`, `request`, `expect`",
        ),
        (
            "service: ledgr\ncases:\n  - name: a\n    caller: anonymous\n    request: {path: /x}\n    expect: {decision: deny}\n",
            "ledger_test.yaml:1:10: unknown service \"ledgr\" (no policy file defines it)",
        ),
        (
            "service: ledger\ncases:\n  - name: a\n    caller: anonymous\n    request: {path: /x, service: mail}\n    expect: {decision: deny}\n",
            "ledger_test.yaml:5:34: case \"a\": unknown service \"mail\" (no policy file defines it)",
        ),
        (
            "service: ledger\ncases:\n  - name: a\n    caller: anonymous\n    request: {path: /x}\n    expect: {decision: deny, rule: never-refund}\n",
            "ledger_test.yaml:6:36: case \"a\": service \"ledger\" has no rule \"never-refund\"",
        ),
        (
            "service: ledger\ncases:\n  - name: a\n    caller: anonymous\n    request: {path: /x}\n    expect: {decision: allow, status: 401}\n",
            "ledger_test.yaml:6:31: case \"a\": status 401 cannot go with allow (allow is 200; deny is 400, 401 or 403)",
        ),
        (
            "service: ledger\ncases:\n  - name: a\n    caller: {scopes: [ledger.read]}\n    request: {path: /x}\n    expect: {decision: deny}\n",
            "ledger_test.yaml:4:5: case \"a\": a caller is `anonymous`, a token caller (`id` and `issuer`, with optional kind, scopes, claims, peer, actors), an mTLS-only caller (`peer` alone) or an API key caller (`id` and `api_key`, with optional kind, scopes, peer)",
        ),
        (
            "service: ledger\ncases:\n  - name: a\n    caller: {id: alice, issuer: i, actors: [\"\"]}\n    request: {path: /x}\n    expect: {decision: deny}\n",
            "ledger_test.yaml:4:36: case \"a\": actor \"\" is empty or has a control character",
        ),
        (
            "service: ledger\ncases:\n  - name: a\n    caller: nobody\n    request: {path: /x}\n    expect: {decision: deny}\n",
            "ledger_test.yaml:4:13: cases[0].caller: invalid value: string \"nobody\", expected `anonymous` or a mapping with kind, id, issuer, scopes, claims, peer, actors",
        ),
    ];
    for (suite, want) in cases {
        let dir = ledger_dir(suite);
        let (code, out, err) = run(&["test", "."], dir.path());
        assert_eq!(code, 1, "{suite}\n{out}{err}");
        let want = format!("error: ./{want}\n");
        assert_eq!(err, want, "{suite}");
        assert_eq!(
            out.lines().last(),
            Some("0 passed, 0 failed, 1 suite did not load: FAILED"),
            "{out}"
        );
    }
    // No suites at all is an error, not a silent pass.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("policies/ledger.yaml"),
        dir.path().join("ledger.yaml"),
    )
    .unwrap();
    let (code, _, err) = run(&["test", "."], dir.path());
    assert_eq!(code, 1);
    assert_eq!(err, "error: .: no policy test suites (*_test.yaml)\n");
}

#[test]
fn test_checks_dry_run_rules_as_enforced() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("p")).unwrap();
    std::fs::write(
        dir.path().join("p/t.yaml"),
        "service: t
mode: dry-run
rules:
  - {id: trial-no-b, effect: deny, mode: dry-run, to: [{paths: [/b]}]}
  - {id: all, to: [{paths: ['/**']}]}
",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p/t_test.yaml"),
        "service: t
cases:
  - name: the trialled deny rule is checked as if enforced
    caller: {peer: spiffe://td/a}
    request: {path: /b}
    expect: {decision: deny, rule: trial-no-b, status: 403}
  - name: everything else is allowed
    caller: {peer: spiffe://td/a}
    request: {path: /c}
    expect: {decision: allow, rule: all}
  - name: the policy-level dry-run does not turn denials into allows here
    caller: anonymous
    request: {path: /c}
    expect: {decision: deny, status: 401}
",
    )
    .unwrap();
    let (code, out, err) = run(&["test", "p"], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("\n3 passed, 0 failed\n"), "{out}");
    assert!(
        out.starts_with("running 3 cases from p/t_test.yaml (dry-run modes ignored: every rule is checked as enforced)\n"),
        "{out}"
    );
    // explain shows what the server does: the dry-run rule only records a would-deny.
    std::fs::write(dir.path().join("hopwarden.yaml"), "policies: p\n").unwrap();
    let (code, out, err) = run(
        &[
            "explain",
            "--service",
            "t",
            "--path",
            "/b",
            "--peer",
            "spiffe://td/a",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("mode:        dry-run policy"), "{out}");
    assert!(
        out.contains(
            "  deny  trial-no-b [dry-run]: matched, but dry-run: would deny; evaluation goes on\n"
        ),
        "{out}"
    );
    assert!(
        out.ends_with("would deny:  trial-no-b (dry-run deny rule)\ndecision:    allow (rule all, status 200)\n"),
        "{out}"
    );
}

// ---- hopwarden explain ----

fn explain(args: &[&str]) -> String {
    let mut all = vec!["explain"];
    all.extend_from_slice(args);
    let (code, out, err) = run(&all, &repo());
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "{err}");
    out
}

#[test]
fn explain_allowed_via_token() {
    let mut golden = Golden::new();
    let t = token(
        &format!("{TD}/payments/sa/payments"),
        "ledger",
        "ledger.read",
    );
    let out = explain(&[
        "--service",
        "ledger",
        "--path",
        "/transactions/42?expand=1",
        "--token",
        &t,
    ]);
    golden.check("explain_allowed_token.txt", &out);
}

#[test]
fn explain_rejected_tokens() {
    let mut golden = Golden::new();
    let sub = format!("{TD}/payments/sa/payments");
    let now = now();
    let expired = dev_signed(&json!({
        "iss": STS, "sub": sub, "aud": "ledger", "scope": "ledger.read",
        "iat": now - 3600, "exp": now - 600,
    }));
    let out = explain(&[
        "--service",
        "ledger",
        "--path",
        "/transactions/42",
        "--token",
        &expired,
    ]);
    golden.check("explain_expired_token.txt", &out);

    let for_email = token(&sub, "email", "ledger.read");
    let out = explain(&[
        "--service",
        "ledger",
        "--path",
        "/transactions/42",
        "--token",
        &for_email,
        "--format",
        "json",
    ]);
    golden.check("explain_wrong_audience.json", &out);
}

#[test]
fn explain_deny_rule_and_insufficient_scope() {
    let mut golden = Golden::new();
    let sub = format!("{TD}/payments/sa/payments");
    let t = token(&sub, "ledger", "ledger.read ledger.write");
    let out = explain(&[
        "--service",
        "ledger",
        "-X",
        "POST",
        "--path",
        "/refunds",
        "--token",
        &t,
    ]);
    golden.check("explain_deny_rule.txt", &out);

    let bare = token(&format!("{TD}/billing/sa/billing"), "email", "email.send");
    let out = explain(&[
        "--host",
        "email.internal:8080",
        "-X",
        "POST",
        "--path",
        "/send/billing",
        "--token",
        &bare,
    ]);
    golden.check("explain_insufficient_scope.txt", &out);
}

#[test]
fn explain_mtls_only_caller() {
    let mut golden = Golden::new();
    let peer = format!("{TD}/ledger/sa/reconciler");
    for (hop, name) in [
        ("mesh", "explain_mtls_mesh.txt"),
        ("gateway", "explain_mtls_gateway.txt"),
    ] {
        let out = explain(&[
            "--destination",
            "spiffe://hopwarden.local/ns/ledger/sa/ledger",
            "--hop",
            hop,
            "--path",
            "/transactions/2024/06",
            "--peer",
            &peer,
        ]);
        golden.check(name, &out);
    }
}

#[test]
fn explain_asserted_caller_and_errors() {
    let out = explain(&[
        "--service",
        "media",
        "--hop",
        "gateway",
        "--path",
        "/partners/transcribe-co/jobs/9",
        "--id",
        "partner:transcribe-co",
        "--kind",
        "user",
        "--issuer",
        STS,
        "--scope",
        "media.transcribe",
    ]);
    assert!(
        out.contains("credentials: asserted on the command line (not verified)\n"),
        "{out}"
    );
    assert!(
        out.contains("          FAIL from.kinds: kind user not in [service]\n"),
        "{out}"
    );
    assert!(
        out.ends_with("decision:    deny (status 403, reason no_matching_rule)\n"),
        "{out}"
    );
    let out = explain(&["--service", "nope", "--path", "/"]);
    assert!(
        out.ends_with("rules:       not evaluated (no policy for service \"nope\")\ndecision:    deny (status 403, reason no_policy)\n"),
        "{out}"
    );
    let out = explain(&["--service", "ledger", "--path", "/a/../b"]);
    assert!(
        out.contains("decision:    deny (status 400, reason bad_request)"),
        "{out}"
    );
    let out = explain(&["--service", "ledger", "--path", "/transactions/1"]);
    assert!(
        out.ends_with("decision:    deny (status 401, reason missing_credential)\n"),
        "{out}"
    );
    let (code, _, err) = run(
        &["explain", "--path", "/", "--token", "x.y.z", "--id", "a"],
        &repo(),
    );
    assert_eq!(code, 2, "{err}");
}

// ---- hopwarden review ----

#[test]
fn review_formats_match_golden() {
    let mut golden = Golden::new();
    for (format, name) in [
        ("text", "review.txt"),
        ("markdown", "review.md"),
        ("json", "review.json"),
        ("dot", "review.dot"),
    ] {
        let (code, out, err) = run(&["review", "policies", "--format", format], &repo());
        assert_eq!(code, 0, "{err}");
        golden.check(name, &out);
    }
}

#[test]
fn review_flags_over_broad_and_untested_rules() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.yaml"),
        "service: t
rules:
  - {id: no-admin, effect: deny, to: [{paths: ['/admin/**']}]}
  - {id: anyone, to: [{paths: [/public]}]}
  - {id: jobs, from: {peers: ['spiffe://td/ns/*/sa/job']}, to: [{methods: [GET], paths: ['/**']}]}
  - {id: admin-users, from: {principals: [ops]}, to: [{methods: [GET], paths: [/admin/users]}], scopes: [t.admin]}
",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("t_test.yaml"),
        "service: t
cases:
  - name: anyone reads public
    caller: {id: x, issuer: https://sts}
    request: {path: /public}
    expect: {decision: allow, rule: anyone}
",
    )
    .unwrap();
    let (code, out, err) = run(&["review", "."], dir.path());
    assert_eq!(code, 0, "{err}");
    let flags: Vec<String> = out
        .lines()
        .skip_while(|l| *l != "flags:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let cells: Vec<&str> = l
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            cells.join(" | ")
        })
        .collect();
    let want = [
        "t/no-admin | not_exercised | no test case's decision comes from this rule",
        "t/anyone | any_caller | no `from`: any authenticated caller",
        "t/anyone | no_scopes | requires no scopes: the caller's identity alone grants access",
        "t/jobs | wildcard_peer | peer pattern spiffe://td/ns/*/sa/job",
        "t/jobs | wildcard_path | path pattern /**",
        "t/jobs | no_scopes | requires no scopes: the caller's identity alone grants access",
        "t/jobs | possibly_shadowed | possibly shadowed by deny rule no-admin: both can match one request",
        "t/jobs | not_exercised | no test case's decision comes from this rule",
        "t/admin-users | shadowed | shadowed by deny rule no-admin: every request it allows is denied",
        "t/admin-users | not_exercised | no test case's decision comes from this rule",
    ];
    assert_eq!(flags, want, "{out}");
    assert!(
        out.ends_with(
            "tests: 1 suite(s), 1 passed, 0 failed, 0 did not load; 3 of 4 rule(s) not exercised\n"
        ),
        "{out}"
    );
}

#[test]
fn review_usage_lists_unused_grants() {
    let mut golden = Golden::new();
    let dir = tempfile::tempdir().unwrap();
    let log = [
        r#"{"timestamp":"2024-06-01T08:00:00.000000Z","level":"INFO","message":"policies loaded","services":5}"#,
        r#"{"timestamp":"2024-06-01T09:00:00.000000Z","level":"INFO","message":"decision","target":"hopwarden::decision","service":"ledger","principal":"spiffe://hopwarden.local/ns/payments/sa/payments","decision":"allow","rule":"payments-read-transactions","status":200}"#,
        r#"{"timestamp":"2024-06-02T09:00:00.000000Z","service":"ledger","principal":"spiffe://hopwarden.local/ns/payments/sa/payments","decision":"allow","rule":"payments-read-transactions"}"#,
        r#"{"timestamp":"2024-06-03T09:00:00.000000Z","service":"ledger","principal":"spiffe://hopwarden.local/ns/payments/sa/payments","decision":"deny","rule":"payments-never-refund"}"#,
        r#"{"timestamp":"2024-06-04T09:00:00.000000Z","service":"catalog","principal":"spiffe://hopwarden.local/ns/inventory/sa/inventory-api","decision":"allow","rule":"inventory-read-products"}"#,
        r#"not json at all"#,
        r#"{"timestamp":"2024-06-05T09:00:00.000000Z","service":"email"}"#,
    ]
    .join("\n");
    std::fs::write(dir.path().join("decisions.log"), log + "\n").unwrap();
    let policies = repo().join("policies");
    let (code, out, err) = run(
        &[
            "review",
            policies.to_str().unwrap(),
            "--usage",
            "decisions.log",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    golden.check("review_usage.txt", &out);
    let (code, _, err) = run(&["review", ".", "--usage", "missing.log"], dir.path());
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: missing.log: cannot read decision log: "),
        "{err}"
    );
}

/// `hopwarden review policies --format dot --svg SVG`, with `env` applied.
fn review_to_svg(
    svg: &std::path::Path,
    env: impl FnOnce(&mut std::process::Command) -> &mut std::process::Command,
) -> (i32, String, String) {
    let args = [
        "review",
        "policies",
        "--format",
        "dot",
        "--svg",
        svg.to_str().unwrap(),
    ];
    run_bin_with(&args, &repo(), env)
}

/// scripts/test.sh installs Graphviz, so `dot` missing here is a failure, not a skip.
#[test]
fn review_svg_renders_with_graphviz() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("access.svg");
    let (code, out, err) = review_to_svg(&svg, |c| c);
    assert_eq!(code, 0, "{err} (scripts/test.sh installs graphviz)");
    assert!(out.starts_with("digraph access {"), "{out}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("<svg"), "{text}");
    // Every service of the example policies is a node in the picture.
    for service in ["ledger", "email", "deploy", "catalog", "media"] {
        assert!(text.contains(service), "{service} missing from the SVG");
    }
}

#[test]
fn review_svg_without_graphviz_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("access.svg");
    let empty_path = tempfile::tempdir().unwrap();
    let (code, out, err) = review_to_svg(&svg, |c| c.env("PATH", empty_path.path()));
    assert_eq!(code, 1);
    assert!(out.starts_with("digraph access {"), "{out}");
    assert!(
        err.contains("--svg needs Graphviz's `dot` on PATH"),
        "{err}"
    );
    assert!(!svg.exists());
}
