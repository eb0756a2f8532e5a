//! What a new user tripped on in their first hour (issue 19), each run as they ran
//! it: the real binary, in a directory of its own, with the example files.

mod common;

use std::path::Path;

use common::{repo, run_bin as run, run_bin_with};

/// A directory with `hopwarden.yaml` (`config`) and a `policies/` directory holding
/// `files`.
fn workspace(config: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join("policies").join(name), text).unwrap();
    }
    std::fs::write(dir.path().join("hopwarden.yaml"), config).unwrap();
    dir
}

const LEDGER: &str = "service: ledger\nrules:\n  - {id: r, from: {principals: [a]}}\n";

// ---- config errors ----

#[test]
fn a_log_level_typo_is_a_config_error_with_its_location() {
    let dir = workspace("policies: policies\nlog:\n  level: verbose\n", &[]);
    for command in ["validate", "serve"] {
        let (code, out, err) = run(&[command], dir.path());
        assert_eq!(code, 1, "{command}: {out}{err}");
        assert!(
            err.starts_with(
                "error: hopwarden.yaml:3:10: log.level \"verbose\": \"verbose\" is not a level"
            ),
            "{command}: {err}"
        );
    }
}

#[test]
fn a_missing_config_names_the_flag_and_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(&["validate"], dir.path());
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: hopwarden.yaml: config file not found (name it with --config FILE or the \
         HOPWARDEN_CONFIG environment variable; the default is ./hopwarden.yaml)\n"
    );
    // The variable is honoured, and named in the same words when it points nowhere.
    let (code, _, err) = run_bin_with(&["serve"], dir.path(), |c| {
        c.env("HOPWARDEN_CONFIG", "/nonexistent/hw.yaml")
    });
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: /nonexistent/hw.yaml: config file not found (name it with --config FILE or the HOPWARDEN_CONFIG"),
        "{err}"
    );
}

#[test]
fn a_missing_policy_directory_names_the_config_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hopwarden.yaml"),
        "# policies live elsewhere\nlisten: 127.0.0.1:0\npolicies: ./polices\n",
    )
    .unwrap();
    let want = format!(
        "error: hopwarden.yaml:3:1: policy directory {:?} does not exist (relative paths are resolved against the config file's directory)\n",
        "./polices"
    );
    for command in ["validate", "serve", "test", "review"] {
        let (code, _, err) = run(&[command], dir.path());
        assert_eq!(code, 1, "{command}: {err}");
        assert_eq!(err, want, "{command}");
    }
    // The default directory, with no `policies:` line, names the file.
    std::fs::write(dir.path().join("hopwarden.yaml"), "listen: 127.0.0.1:0\n").unwrap();
    let (code, _, err) = run(&["validate"], dir.path());
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: hopwarden.yaml: policy directory \"policies\" does not exist"),
        "{err}"
    );
}

/// Each listener whose port is taken is named, and the error is printed once (not
/// also as a log line on stdout, not twice through its cause chain).
#[test]
fn a_port_in_use_is_printed_once_and_names_its_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for (key, config) in [
        ("listen", format!("listen: 127.0.0.1:{port}\n")),
        (
            "http_listen",
            format!("listen: 127.0.0.1:0\nhttp_listen: 127.0.0.1:{port}\n"),
        ),
        (
            "admin.listen",
            format!("listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:{port}}}\n"),
        ),
    ] {
        let dir = workspace(
            &format!("policies: policies\n{config}"),
            &[("l.yaml", LEDGER)],
        );
        let (code, out, err) = run(&["serve"], dir.path());
        assert_eq!(code, 1, "{key}: {out}{err}");
        assert!(
            !out.contains("in use"),
            "{key}: printed on stdout too: {out}"
        );
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{key}: {err}");
        assert!(
            lines[0].starts_with(&format!("error: {key} 127.0.0.1:{port}: cannot listen: ")),
            "{key}: {err}"
        );
        assert_eq!(
            lines[0].matches("in use").count(),
            1,
            "{key}: the cause is repeated: {err}"
        );
    }
}

// ---- validate warnings ----

#[test]
fn validate_warns_about_mappings_to_services_without_a_policy() {
    let config = "policies: policies
services:
  by_spiffe:
    \"spiffe://td/ns/ledger/sa/ledger\": ledger
    \"spiffe://td/ns/mail/sa/mail\": mail
  by_host:
    ledger.internal: ledger
    billing.internal: billing
";
    let dir = workspace(config, &[("ledger.yaml", LEDGER)]);
    let (code, out, err) = run(&["validate"], dir.path());
    assert_eq!(code, 0, "warnings do not fail validation: {out}{err}");
    assert_eq!(
        err,
        "warning: hopwarden.yaml:5:6: services.by_spiffe: \"spiffe://td/ns/mail/sa/mail\" names service \"mail\", which has no policy (its requests will be denied)\n\
         warning: hopwarden.yaml:8:5: services.by_host: \"billing.internal\" names service \"billing\", which has no policy (its requests will be denied)\n"
    );
    assert!(
        out.starts_with("ok: 0 issuer(s), 1 service policy(ies)"),
        "{out}"
    );
}

#[test]
fn validate_warns_about_an_empty_policy_directory() {
    let dir = workspace("policies: policies\n", &[]);
    let (code, out, err) = run(&["validate"], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.starts_with("warning: ")
            && err.ends_with("policies: no policy files (*.yaml): every request will be denied\n"),
        "{err}"
    );
    // The example config has neither problem.
    let (code, _, err) = run(&["validate"], &repo());
    assert_eq!((code, err.as_str()), (0, ""));
}

// ---- hopwarden token ----

#[test]
fn token_warns_when_the_config_would_refuse_its_lifetime() {
    let args = |ttl: &'static str| ["token", "--sub", "x", "--aud", "ledger", "--ttl", ttl];
    // ./hopwarden.yaml is found: its issuer's max_lifetime is 1h.
    let (code, out, err) = run(&args("2h"), &repo());
    assert_eq!(code, 0, "the token is still printed: {err}");
    assert_eq!(out.trim().split('.').count(), 3);
    assert_eq!(
        err,
        "warning: --ttl 2h is longer than max_lifetime 1h of issuer \"https://sts.hopwarden.local\" in hopwarden.yaml: hopwarden will refuse the token (invalid_token)\n"
    );
    let (code, _, err) = run(&args("1h"), &repo());
    assert_eq!((code, err.as_str()), (0, ""));
    // An issuer the config does not know.
    let (_, _, err) = run(
        &[
            "token",
            "--sub",
            "x",
            "--aud",
            "y",
            "--iss",
            "https://other",
        ],
        &repo(),
    );
    assert!(
        err.contains(
            "no issuer \"https://other\": hopwarden with this config will refuse the token"
        ),
        "{err}"
    );
    // No config here and none given: nothing to check against, no warning.
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(&args("2h"), dir.path());
    assert_eq!((code, err.as_str()), (0, ""));
    // Given explicitly, through the variable.
    let config = repo().join("hopwarden.yaml");
    let (_, _, err) = run_bin_with(&args("90m"), dir.path(), |c| {
        c.env("HOPWARDEN_CONFIG", &config)
    });
    assert!(
        err.contains("--ttl 1h 30m is longer than max_lifetime 1h"),
        "{err}"
    );
}

// ---- hopwarden test ----

const PAYMENTS_CASE: &str = "  - name: payments reads
    caller: {id: \"spiffe://hopwarden.local/ns/payments/sa/payments\", issuer: \"https://sts.hopwarden.local\", scopes: [ledger.read]}
    request: {path: /transactions/42}
    expect: {decision: allow, rule: payments-read-transactions}
";

fn ledger_policies(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("policies/ledger.yaml"),
        dir.path().join("ledger.yaml"),
    )
    .unwrap();
    for (name, text) in extra {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[test]
fn test_a_suite_that_does_not_load_fails_the_summary() {
    let good = format!("service: ledger\ncases:\n{PAYMENTS_CASE}");
    let broken = "service: ledger\ncases:\n  - name: a\n    caller: anonymous\n    request: {path: /x}\n    expekt: {decision: deny}\n";
    let dir = ledger_policies(&[("a_test.yaml", &good), ("b_test.yaml", broken)]);
    let (code, out, err) = run(&["test", "."], dir.path());
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("b_test.yaml:6:5: cases[0]: unknown field `expekt`"),
        "{err}"
    );
    assert_eq!(
        out.lines().last(),
        Some("1 passed, 0 failed, 1 suite did not load: FAILED"),
        "{out}"
    );
}

#[test]
fn test_hints_at_the_suite_naming_for_a_dot_test_file() {
    let suite = format!("service: ledger\ncases:\n{PAYMENTS_CASE}");
    let dir = ledger_policies(&[("ledger.test.yaml", &suite)]);
    let (code, _, err) = run(&["test", "."], dir.path());
    assert_eq!(code, 1);
    assert!(
        err.ends_with("error: ./ledger.test.yaml: read as a policy: policy test suites are named *_test.yaml (rename it to ledger_test.yaml)\n"),
        "{err}"
    );
    // validate (and serve) load the same directory and say the same.
    let config = "policies: .\n";
    std::fs::write(dir.path().join("hopwarden.yaml"), config).unwrap();
    let (code, _, err) = run(&["validate"], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("rename it to ledger_test.yaml"), "{err}");
}

#[test]
fn test_says_dry_run_modes_are_ignored_only_when_a_policy_uses_them() {
    let suite = format!("service: ledger\ncases:\n{PAYMENTS_CASE}");
    let dir = ledger_policies(&[("ledger_test.yaml", &suite)]);
    let banner = "dry-run modes ignored";
    let (code, out, _) = run(&["test", "."], dir.path());
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains(banner), "{out}");
    std::fs::write(
        dir.path().join("trial.yaml"),
        "service: trial\nrules:\n  - {id: t, effect: deny, mode: dry-run, to: [{paths: [/x]}]}\n",
    )
    .unwrap();
    let (_, out, _) = run(&["test", "."], dir.path());
    assert!(
        out.starts_with(&format!(
            "running 1 case from ./ledger_test.yaml ({banner}: every rule is checked as enforced)\n"
        )),
        "{out}"
    );
}

// ---- hopwarden explain ----

#[test]
fn explain_id_without_issuer_is_a_token_caller_of_the_configs_issuer() {
    let (code, out, err) = run(
        &[
            "explain",
            "--service",
            "ledger",
            "--path",
            "/transactions/42",
            "--id",
            "spiffe://hopwarden.local/ns/payments/sa/payments",
            "--scope",
            "ledger.read",
        ],
        &repo(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("mTLS-only"), "{out}");
    assert!(
        out.contains("credentials: asserted on the command line (not verified); issuer: the config's only issuer\n"),
        "{out}"
    );
    assert!(
        out.contains("caller:      service \"spiffe://hopwarden.local/ns/payments/sa/payments\", issuer https://sts.hopwarden.local, scopes [ledger.read]\n"),
        "{out}"
    );
    assert!(
        out.ends_with("decision:    allow (rule payments-read-transactions, status 200)\n"),
        "{out}"
    );
    // With two issuers there is no guessing: it must be named.
    let dir = workspace(
        "policies: policies\nissuers:\n  - {issuer: https://a, jwks_file: j.json}\n  - {issuer: https://b, jwks_file: j.json}\n",
        &[("l.yaml", LEDGER)],
    );
    let (code, _, err) = run(
        &["explain", "--service", "ledger", "--path", "/", "--id", "a"],
        dir.path(),
    );
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: --id is a token caller and needs --issuer: the config has 2 issuers (https://a, https://b); for an mTLS-only caller give --peer alone\n"
    );
}

// ---- `*` in principals ----

#[test]
fn a_lone_star_principal_is_refused_and_double_star_is_a_flagged_wildcard() {
    let dir = tempfile::tempdir().unwrap();
    let write = |principal: &str| {
        let policy = format!(
            "service: t\nrules:\n  - {{id: everyone, from: {{principals: [\"{principal}\"]}}, to: [{{methods: [GET]}}], scopes: [t.read]}}\n"
        );
        std::fs::write(dir.path().join("t.yaml"), policy).unwrap();
    };
    write("*");
    let (code, _, err) = run(&["review", "."], dir.path());
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: ./t.yaml:3:41: principal pattern \"*\": a lone \"*\" is one segment and matches no SPIFFE ID; write \"**\" for any id\n"
    );
    write("**");
    let (code, out, err) = run(&["review", "."], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines().any(|l| l.contains("t/everyone")
            && l.contains("wildcard_principal")
            && l.contains("principal pattern **")),
        "{out}"
    );
    // `**` is any id, SPIFFE IDs with many segments included; `*` inside a pattern
    // is one segment.
    let suite = "service: t
cases:
  - name: a SPIFFE ID
    caller: {id: \"spiffe://a/b/c\", issuer: https://sts, scopes: [t.read]}
    request: {path: /x}
    expect: {decision: allow, rule: everyone}
  - name: a plain subject
    caller: {id: \"partner:acme\", issuer: https://sts, scopes: [t.read]}
    request: {path: /x}
    expect: {decision: allow, rule: everyone}
";
    std::fs::write(dir.path().join("t_test.yaml"), suite).unwrap();
    let (code, out, _) = run(&["test", "."], dir.path());
    assert_eq!(code, 0, "{out}");
    write("spiffe://a/*");
    let (code, out, _) = run(&["test", "."], dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.ends_with("0 passed, 2 failed\n"), "{out}");
}

// ---- review --usage ----

#[test]
fn review_usage_refuses_a_log_without_decisions_and_says_what_it_read() {
    let dir = tempfile::tempdir().unwrap();
    let policies = repo().join("policies");
    let policies = policies.to_str().unwrap();
    std::fs::write(dir.path().join("empty.log"), "").unwrap();
    let readme = repo().join("README.md");
    for log in ["empty.log", readme.to_str().unwrap()] {
        let (code, out, err) = run(&["review", policies, "--usage", log], dir.path());
        assert_eq!(code, 1, "{log}: {out}");
        assert!(out.is_empty(), "{log}: no review from nothing: {out}");
        assert!(
            err.starts_with(&format!("error: {log}: no decision lines (")),
            "{err}"
        );
        assert!(
            err.contains("--usage reads hopwarden's JSON decision log"),
            "{err}"
        );
    }
    let line = |ts: &str| {
        format!(
            r#"{{"timestamp":"{ts}","service":"ledger","decision":"allow","rule":"payments-read-transactions"}}"#
        )
    };
    let log = [line("2026-12-01T10:00:00Z"), line("2026-12-03T10:00:00Z")].join("\n");
    std::fs::write(dir.path().join("d.log"), log).unwrap();
    let (code, out, err) = run(
        &["review", policies, "--usage", "d.log", "--format", "json"],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with('{'), "{out}");
    assert_eq!(
        err,
        "usage: 2 decision(s) from d.log, period 2026-12-01T10:00:00Z .. 2026-12-03T10:00:00Z (0 line(s) skipped)\n"
    );
    let (_, out, _) = run(&["review", policies, "--usage", "d.log"], dir.path());
    assert!(
        out.contains(
            "usage: 2 decision(s) from d.log, period 2026-12-01T10:00:00Z .. 2026-12-03T10:00:00Z"
        ),
        "{out}"
    );
}

/// The example config keeps hopwarden on loopback: the HTTP service's caller names
/// the hop and the service, so only the local Envoys may reach any of its ports.
#[test]
fn the_example_config_binds_every_port_to_loopback() {
    let text = std::fs::read_to_string(repo().join("hopwarden.yaml")).unwrap();
    let listens: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains("listen:"))
        .collect();
    assert_eq!(
        listens,
        [
            "listen: 127.0.0.1:9191",
            "http_listen: 127.0.0.1:9193",
            "listen: 127.0.0.1:9192"
        ]
    );
    assert!(
        text.contains("names the hop and the service"),
        "the why is said"
    );
    assert!(Path::new(&repo().join("dev/hopwarden.compose.yaml")).exists());
}
