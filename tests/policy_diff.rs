//! `hopwarden diff` as a user and a CI job run it: two directories, a git revision,
//! each output format, and the `--fail-on broaden` exit codes.
//!
//! The markdown report is compared with `tests/golden/diff.md`; after a deliberate
//! change, regenerate it with `UPDATE_GOLDEN=1 cargo test --test policy_diff` (which
//! fails, having compared nothing), review it by hand and run again without it.

mod common;

use std::path::Path;

use common::golden::Golden;
use common::{repo, run_bin as run};

/// A copy of the example policies (and their suites) in `dir/name`.
fn copy_examples(dir: &Path, name: &str) {
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(repo().join("policies")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Replaces `from` (which must occur) with `to` in `dir/file`.
fn edit(dir: &Path, file: &str, from: &str, to: &str) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file}: {from}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

/// The examples as `old/`, and as `new/` with one pull request's worth of changes:
/// some widen access, some narrow it, some (a rename, a comment) change nothing.
fn pull_request() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_examples(dir.path(), "old");
    copy_examples(dir.path(), "new");
    let new = dir.path().join("new");
    // Widens: the payments rule no longer requires our issuer.
    edit(
        &new,
        "ledger.yaml",
        "      issuers: [\"https://sts.hopwarden.local\"]\n",
        "",
    );
    // Widens: the refund denial is only trialled now.
    edit(
        &new,
        "ledger.yaml",
        "    effect: deny\n",
        "    effect: deny\n    mode: dry-run\n",
    );
    // No change: a rename and a comment.
    edit(
        &new,
        "ledger.yaml",
        "id: reconciler-read-transactions",
        "id: reconciler-reads-transactions",
    );
    edit(&new, "deploy.yaml", "#", "# Reviewed in PR 42.\n#");
    // Widens, to a wildcard: every caller may read the catalog's health.
    let catalog = std::fs::read_to_string(new.join("catalog.yaml")).unwrap();
    std::fs::write(
        new.join("catalog.yaml"),
        format!("{catalog}\n  - id: anyone-reads-health\n    description: Health for every service.\n    to: [{{methods: [GET], paths: [\"/health\"]}}]\n"),
    )
    .unwrap();
    // Narrows: billing mail needs one more scope.
    edit(
        &new,
        "email.yaml",
        "scopes: [email.send.billing]",
        "scopes: [email.send.billing, email.send]",
    );
    // Narrows: billing mail is rate limited.
    let email = std::fs::read_to_string(new.join("email.yaml")).unwrap();
    std::fs::write(
        new.join("email.yaml"),
        format!(
            "{email}
limits:
  - id: billing-mail
    from: {{principals: [\"spiffe://hopwarden.local/ns/billing/sa/billing\"]}}
    rate: 100/m
"
        ),
    )
    .unwrap();
    dir
}

#[test]
fn markdown_report_matches_golden() {
    let dir = pull_request();
    let (code, out, err) = run(&["diff", "old", "new", "--format", "markdown"], dir.path());
    assert_eq!(code, 0, "{err}");
    let mut golden = Golden::new();
    golden.check("diff.md", &out);
}

#[test]
fn text_and_json_reports() {
    let dir = pull_request();
    let (code, out, err) = run(&["diff", "old", "new"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("access changes from old to new\n"), "{out}");
    assert!(
        out.contains("\ncatalog\n  widens   any authenticated caller may now GET /health [wildcard]\n           rule anyone-reads-health\n"),
        "{out}"
    );
    assert!(
        !out.contains("deploy") && !out.contains("reconciler"),
        "{out}"
    );
    assert!(
        out.ends_with(
            "\n5 change(s) in 3 of 5 service(s): 3 widening (1 to a wildcard), 2 narrowing\n"
        ),
        "{out}"
    );
    let (code, out, err) = run(&["diff", "old", "new", "--format", "json"], dir.path());
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["widens"], 3);
    assert_eq!(report["narrows"], 2);
    assert_eq!(report["wildcard_grants"], 1);
    let ledger = &report["services"][2];
    assert_eq!(ledger["service"], "ledger");
    let kinds: Vec<&str> = ledger["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["widened", "deny_dry_run"]);
}

#[test]
fn fail_on_broaden_exit_codes() {
    let dir = pull_request();
    let args = |a: &str, b: &str| run(&["diff", a, b, "--fail-on", "broaden"], dir.path());
    // Widens: exit 1, with the report still printed.
    let (code, out, _) = args("old", "new");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("3 widening"), "{out}");
    // A change that only narrows: exit 0.
    copy_examples(dir.path(), "narrow");
    edit(
        &dir.path().join("narrow"),
        "email.yaml",
        "scopes: [email.send]",
        "scopes: [email.send, email.send.generic]",
    );
    let (code, out, _) = args("old", "narrow");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("nothing is granted that was not before"),
        "{out}"
    );
    // No change at all.
    let (code, out, _) = args("old", "old");
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "access changes from old to old\n\nno change in access (5 service(s) compared)\n"
        )
    );
    // Without --fail-on, widening is not an error.
    assert_eq!(run(&["diff", "old", "new"], dir.path()).0, 0);
    // A rate limit raised or removed broadens; lowered or added does not.
    let limit = |rate: &str| {
        format!("\nlimits:\n  - id: notifications\n    from: {{principals: [\"spiffe://hopwarden.local/ns/notifications/sa/notifications-worker\"]}}\n    rate: {rate}\n")
    };
    for (name, rate) in [
        ("slow", Some("10/s")),
        ("fast", Some("20/s")),
        ("none", None),
    ] {
        copy_examples(dir.path(), name);
        if let Some(rate) = rate {
            let path = dir.path().join(name).join("email.yaml");
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, text + &limit(rate)).unwrap();
        }
    }
    for (a, b, want, says) in [
        ("slow", "fast", 1, "rate limit raised"),
        ("slow", "none", 1, "rate limit removed"),
        ("fast", "slow", 0, "rate limit lowered"),
        ("none", "slow", 0, "rate limit added"),
    ] {
        let (code, out, err) = args(a, b);
        assert_eq!(code, want, "{a} -> {b}: {out}{err}");
        assert!(out.contains(says), "{a} -> {b}: {out}");
    }
    // A side that does not compile: exit 2, naming the problem, never a report.
    edit(
        &dir.path().join("new"),
        "email.yaml",
        "effect: deny",
        "effect: maybe",
    );
    let (code, out, err) = args("old", "new");
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(err.contains("new: policies do not compile"), "{err}");
    assert!(err.contains("email.yaml"), "{err}");
    let (code, _, err) = run(&["diff", "old"], dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("give two policy directories"), "{err}");
}

fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git is installed");
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

#[test]
fn git_revision_against_the_working_tree() {
    let dir = pull_request();
    let work = dir.path().join("repo");
    copy_examples(&work, "policies");
    // Files beside the policies that must not be read as policies.
    std::fs::write(work.join("policies/notes.txt"), "not yaml: [").unwrap();
    git(&work, &["init", "-q"]);
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "policies"]);
    let (code, out, err) = run(&["diff", "--git", "HEAD", "policies"], &work);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("access changes from HEAD:policies to policies\n"),
        "{out}"
    );
    assert!(
        out.contains("no change in access (5 service(s) compared)"),
        "{out}"
    );

    edit(
        &work.join("policies"),
        "ledger.yaml",
        "methods: [GET]\n        paths: [\"/transactions/**\"]",
        "methods: [GET, POST]\n        paths: [\"/transactions/**\"]",
    );
    // From inside the policy directory, its own path is `.`.
    let inside = work.join("policies");
    let (code, out, err) = run(
        &["diff", "--git", "HEAD", ".", "--fail-on", "broaden"],
        &inside,
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        out.contains("  widens   peer spiffe://hopwarden.local/ns/ledger/sa/reconciler may now POST /transactions/** [wildcard]\n           requires hop mesh\n"),
        "{out}"
    );
    // A policy directory that did not exist at the revision: every grant is new.
    copy_examples(&work, "more");
    let (code, out, err) = run(&["diff", "--git", "HEAD", "more"], &work);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("access changes from HEAD:more to more\n"),
        "{out}"
    );
    assert!(out.contains("\nledger\n  note     new policy"), "{out}");
    let (code, _, err) = run(&["diff", "--git", "no-such-rev", "policies"], &work);
    assert_eq!(code, 2);
    assert!(err.contains("no-such-rev"), "{err}");
}
