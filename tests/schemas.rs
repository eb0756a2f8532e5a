//! The JSON Schemas in schemas/: equal to what `hopwarden schema` prints, named in the
//! example files' first line, and accepting every example while refusing an unknown
//! key, as checked by a JSON Schema validator from PyPI (check-jsonschema, installed by
//! scripts/install-schema-tools.sh; a failed install fails the tests).
//!
//! After changing a `*Spec` struct, rewrite the schemas with `scripts/schemas.sh`
//! (or `UPDATE_SCHEMAS=1 cargo test --test schemas`, which rewrites them and fails).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const KINDS: [&str; 3] = ["policy", "suite", "config"];

/// Validates `files` against schemas/KIND.schema.json: success, the validator's output.
fn validate(kind: &str, files: &[PathBuf]) -> (bool, String) {
    assert!(!files.is_empty(), "no {kind} files to validate");
    let schema = common::repo().join(format!("schemas/{kind}.schema.json"));
    let out = Command::new(common::installed("install-schema-tools.sh"))
        .args(["-m", "check_jsonschema", "--schemafile"])
        .arg(&schema)
        .args(files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The example files of each kind, as paths relative to the repository.
fn examples(kind: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    match kind {
        "config" => out.extend(["hopwarden.yaml", "dev/hopwarden.compose.yaml"].map(PathBuf::from)),
        _ => {
            for dir in ["policies", "bench/policies"] {
                for entry in std::fs::read_dir(common::repo().join(dir)).unwrap() {
                    let name = entry.unwrap().file_name().into_string().unwrap();
                    let is_suite = name.ends_with("_test.yaml");
                    if name.ends_with(".yaml") && is_suite == (kind == "suite") {
                        out.push(Path::new(dir).join(name));
                    }
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn committed_schemas_are_what_the_command_prints() {
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
    let mut rewritten = Vec::new();
    for kind in KINDS {
        let (code, printed, err) = common::run_bin(&["schema", kind], &common::repo());
        assert_eq!(code, 0, "hopwarden schema {kind}: {err}");
        let path = common::repo().join(format!("schemas/{kind}.schema.json"));
        if update {
            std::fs::write(&path, &printed).unwrap();
            rewritten.push(path);
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == printed,
            "{} is not what `hopwarden schema {kind}` prints: run scripts/schemas.sh",
            path.display()
        );
    }
    // As UPDATE_GOLDEN does: a run that rewrote the files compared nothing.
    assert!(
        rewritten.is_empty(),
        "rewrote {rewritten:?}: review the diff, then run again without UPDATE_SCHEMAS"
    );
}

#[test]
fn every_example_names_its_schema_in_its_first_line() {
    for kind in KINDS {
        for file in examples(kind) {
            let text = std::fs::read_to_string(common::repo().join(&file)).unwrap();
            let first = text.lines().next().unwrap_or_default();
            let target = first
                .strip_prefix("# yaml-language-server: $schema=")
                .unwrap_or_else(|| panic!("{}: first line {first:?}", file.display()));
            let schema = common::repo().join(file.parent().unwrap()).join(target);
            assert_eq!(
                schema.canonicalize().unwrap(),
                common::repo()
                    .join(format!("schemas/{kind}.schema.json"))
                    .canonicalize()
                    .unwrap(),
                "{}",
                file.display()
            );
        }
    }
}

#[test]
fn every_example_validates_against_its_schema() {
    for kind in KINDS {
        let files: Vec<PathBuf> = examples(kind)
            .iter()
            .map(|f| common::repo().join(f))
            .collect();
        let (ok, out) = validate(kind, &files);
        assert!(ok, "{kind} examples: {out}");
    }
}

/// A misspelt key, as the loader would refuse it, in each kind of file and at depth.
#[test]
fn an_unknown_key_does_not_validate() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = std::fs::read_to_string(common::repo().join("policies/ledger.yaml")).unwrap();
    let suite = std::fs::read_to_string(common::repo().join("policies/ledger_test.yaml")).unwrap();
    let config = std::fs::read_to_string(common::repo().join("hopwarden.yaml")).unwrap();
    let cases = [
        // (kind, file text, what the validator names)
        (
            "policy",
            ledger.replacen("principals:", "principal:", 1),
            "principal",
        ),
        ("policy", format!("{ledger}\nowner: team-ledger\n"), "owner"),
        (
            "suite",
            suite.replacen("decision:", "decison:", 1),
            "decison",
        ),
        (
            "config",
            format!("{config}\nlog_level: debug\n"),
            "log_level",
        ),
        (
            "config",
            config.replacen("cache:", "cache:\n  max_entires: 5\n  #", 1),
            "max_entires",
        ),
    ];
    for (i, (kind, text, key)) in cases.iter().enumerate() {
        assert!(text.contains(key), "case {i}: the edit did not apply");
        let file = dir.path().join(format!("case{i}.yaml"));
        std::fs::write(&file, text).unwrap();
        let (ok, out) = validate(kind, &[file]);
        assert!(!ok, "case {i}: {kind} with {key:?} validated: {out}");
        assert!(out.contains(key), "case {i}: {out}");
    }
}

/// The schema and the loader agree on a wrong value type: a duration must be a string
/// humantime reads, and an effect one of two words.
#[test]
fn wrong_values_do_not_validate() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("config", "cache: {ttl: 60}\n"),
        ("config", "cache: {ttl: soon}\n"),
        ("policy", "service: a\nrules: [{id: r, effect: permit}]\n"),
        (
            "suite",
            "cases: [{name: a, caller: nobody, request: {path: /}, expect: {decision: allow}}]\n",
        ),
    ];
    for (i, (kind, text)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("case{i}.yaml"));
        std::fs::write(&file, text).unwrap();
        let (ok, out) = validate(kind, &[file]);
        assert!(!ok, "case {i}: {text:?} validated as {kind}: {out}");
    }
    // And their well-formed neighbours do.
    let good = [
        ("config", "cache: {ttl: 1h 30m, deny_ttl: 250ms}\n"),
        ("policy", "service: a\nrules: [{id: r, effect: deny}]\n"),
        (
            "suite",
            "cases: [{name: a, caller: anonymous, request: {path: /}, expect: {decision: deny}}]\n",
        ),
    ];
    for (i, (kind, text)) in good.iter().enumerate() {
        let file = dir.path().join(format!("good{i}.yaml"));
        std::fs::write(&file, text).unwrap();
        let (ok, out) = validate(kind, &[file]);
        assert!(ok, "good {i}: {text:?} as {kind}: {out}");
    }
}
