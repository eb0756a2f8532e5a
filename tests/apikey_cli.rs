//! `hopwarden apikey new | list | check` as a user runs them, and `validate` with key
//! files.

mod common;

use common::run_bin as run;

#[test]
fn new_prints_the_key_once_and_an_entry_that_loads() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(
        &[
            "apikey",
            "new",
            "--principal",
            "transcription-partner",
            "--scope",
            "media.transcripts.write",
            "--expires",
            "90d",
            "--description",
            "Acme transcription, SEC-42",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let key = out.lines().next().unwrap();
    assert!(key.starts_with("hwk_"), "{out}");
    let secret = key.rsplit('_').next().unwrap();
    // 256 bits in base32: 52 characters.
    assert_eq!(secret.len(), 52, "{key}");
    assert!(err.contains("shown once"), "{err}");
    // The entry printed after the key carries a digest, never the key or its secret.
    let entry: String = out
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!entry.contains(secret), "{entry}");
    assert!(entry.contains("digest: sha256:"), "{entry}");
    assert!(entry.contains("expires: "), "{entry}");
    std::fs::write(dir.path().join("keys.yaml"), format!("keys:\n{entry}\n")).unwrap();
    let (code, out, err) = run(&["apikey", "check", key, "--file", "keys.yaml"], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("principal \"transcription-partner\""), "{out}");
    assert!(
        out.contains("media.transcripts.write") && out.contains(": valid"),
        "{out}"
    );
    // Two keys are never the same.
    let (_, again, _) = run(&["apikey", "new", "--principal", "x"], dir.path());
    assert_ne!(again.lines().next(), Some(key));
    assert!(run(&["apikey", "new", "--principal", "x"], dir.path())
        .2
        .contains("never expires"));
}

#[test]
fn append_list_and_check_as_an_operator_would() {
    let dir = tempfile::tempdir().unwrap();
    let mut keys = Vec::new();
    for (principal, id, expires) in [("partner-a", "a-1", "30d"), ("legacy-job", "job", "1s")] {
        let (code, out, err) = run(
            &[
                "apikey",
                "new",
                "--principal",
                principal,
                "--id",
                id,
                "--expires",
                expires,
                "--append",
                "keys.yaml",
            ],
            dir.path(),
        );
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.lines().count(), 1, "only the key on stdout: {out}");
        keys.push(out.trim().to_string());
    }
    // A clashing id is refused and the file is left as it was.
    let before = std::fs::read_to_string(dir.path().join("keys.yaml")).unwrap();
    let (code, _, err) = run(
        &[
            "apikey",
            "new",
            "--principal",
            "p",
            "--id",
            "job",
            "--append",
            "keys.yaml",
        ],
        dir.path(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("duplicate key id \"job\""), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("keys.yaml")).unwrap(),
        before
    );
    for key in &keys {
        assert!(
            !before.contains(key.rsplit('_').next().unwrap()),
            "the file holds a secret"
        );
    }

    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (code, out, _) = run(&["apikey", "list", "--file", "keys.yaml"], dir.path());
    assert_eq!(code, 0);
    assert!(out.contains("keys.yaml: 2 key(s)"), "{out}");
    let line = |id: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(id))
            .unwrap()
            .to_string()
    };
    assert!(
        line("a-1").contains("partner-a") && line("a-1").contains(" valid"),
        "{out}"
    );
    assert!(
        line("job").contains("legacy-job") && line("job").contains("expired"),
        "{out}"
    );

    let (code, out, _) = run(
        &["apikey", "check", &keys[1], "--file", "keys.yaml"],
        dir.path(),
    );
    assert_eq!((code, out.contains("API key expired")), (1, true), "{out}");
    // A tampered secret, an unknown id, garbage: each says so and exits 1.
    let k = &keys[0];
    let i = k.len() - 10;
    let tampered = format!(
        "{}{}{}",
        &k[..i],
        if &k[i..=i] == "b" { "c" } else { "b" },
        &k[i + 1..]
    );
    let unknown = format!("hwk_zz_{}", &k[k.len() - 52..]);
    for (key, want) in [
        (tampered.as_str(), "secret does not match"),
        (unknown.as_str(), "no entry has this id"),
    ] {
        let (code, out, err) = run(&["apikey", "check", key, "--file", "keys.yaml"], dir.path());
        assert_eq!(code, 1, "{key}");
        assert!(out.contains(want), "{out}{err}");
    }
    let (code, _, err) = run(
        &["apikey", "check", "nonsense", "--file", "keys.yaml"],
        dir.path(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("starts with \"hwk_\""), "{err}");
}

#[test]
fn list_reads_the_config_and_validate_reports_key_file_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/media.yaml"),
        "service: media\nrules:\n  - {id: r, from: {principals: [p]}, to: [{paths: [/x]}]}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("hopwarden.yaml"),
        "policies: policies\napi_keys:\n  - file: keys/partners.yaml\n    header: x-api-key\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    let (code, _, err) = run(
        &[
            "apikey",
            "new",
            "--principal",
            "p",
            "--id",
            "k1",
            "--append",
            "keys/partners.yaml",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["apikey", "list"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("partners.yaml: 1 key(s)") && out.contains("k1"),
        "{out}"
    );
    let (code, out, err) = run(&["validate"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("{ exact: x-api-key }"),
        "validate prints the key header for Envoy: {out}"
    );

    std::fs::write(
        dir.path().join("keys/partners.yaml"),
        "keys:\n  - id: k1\n    digest: sha256:AAAA\n    principal: p\n    expire: 2026-01-01T00:00:00Z\n",
    )
    .unwrap();
    let (code, _, err) = run(&["validate"], dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("partners.yaml:5:5: keys[0]: unknown field `expire`"),
        "{err}"
    );
    let (code, _, err) = run(&["apikey", "list"], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("partners.yaml:5:5"), "{err}");
    // A reserved header name is a config error.
    std::fs::write(
        dir.path().join("hopwarden.yaml"),
        "policies: policies\napi_keys:\n  - file: keys/partners.yaml\n    header: cookie\n",
    )
    .unwrap();
    let (code, _, err) = run(&["validate"], dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("hopwarden.yaml:4:13: api_keys: header \"cookie\" is reserved"),
        "{err}"
    );
}

#[test]
fn review_lists_each_key_with_what_it_reaches_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.yaml");
    let keys = keys.to_str().unwrap();
    let (code, _, err) = run(
        &[
            "apikey",
            "new",
            "--principal",
            "nobody-names-me",
            "--id",
            "stray",
            "--append",
            keys,
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let example = common::repo().join("dev/partner-keys.yaml");
    let log = dir.path().join("decisions.log");
    std::fs::write(
        &log,
        "{\"timestamp\":\"2026-01-01T00:00:00Z\",\"service\":\"media\",\"decision\":\"allow\",\"rule\":\"partner-key-submit-transcript\",\"api_key\":\"transcribe-co-dev\"}\n",
    )
    .unwrap();
    let (code, out, err) = run(
        &[
            "review",
            "policies",
            "--keys",
            example.to_str().unwrap(),
            "--keys",
            keys,
            "--usage",
            log.to_str().unwrap(),
        ],
        &common::repo(),
    );
    assert_eq!(code, 0, "{err}");
    let section: String = out
        .lines()
        .skip_while(|l| *l != "api keys:")
        .take_while(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(section.contains("transcribe-co-dev"), "{out}");
    assert!(
        section.contains(
            "reaches: media/partner-key-submit-transcript\n    used: 1 allowed request(s)"
        ),
        "{section}"
    );
    assert!(section.contains("stray"), "{section}");
    for flag in ["flag no_expiry", "flag unnamed_principal", "flag unused"] {
        assert!(section.contains(flag), "{flag}: {section}");
    }
    // The example key expires, is named by a rule and was used: no flags.
    let example_part: String = section
        .lines()
        .skip_while(|l| !l.contains("transcribe-co-dev"))
        .take(3)
        .collect();
    assert!(!example_part.contains("flag"), "{section}");
}
