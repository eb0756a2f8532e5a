//! A table of policy changes and the report each must give.

use std::path::PathBuf;

use super::*;

const BASE: &str = r#"
service: ledger
rules:
  # Payments reads one transaction.
  - id: payments-read
    from:
      principals: ["spiffe://td/ns/payments/sa/payments"]
      issuers: ["https://sts"]
    to:
      - methods: [GET]
        paths: ["/transactions/{id}", "/transactions/{id}/status"]
    scopes: [ledger.read]
  - id: payments-never-refund
    effect: deny
    from: { principals: ["spiffe://td/ns/payments/sa/payments"] }
    to: [{ paths: ["/refunds/**"] }]
  - id: reconciler-read
    from: { peers: ["spiffe://td/ns/ledger/sa/reconciler"] }
    to: [{ methods: [GET], paths: ["/transactions/**"] }]
    when: { hop: mesh }
"#;

fn set(yaml: &str) -> PolicySet {
    let sources = [(PathBuf::from("p.yaml"), yaml.to_string())];
    PolicySet::from_sources(&sources).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

/// One line per change: `direction kind: caller | actions | requires | detail`.
fn lines(old: &str, new: &str) -> Vec<String> {
    let report = diff(&set(old), &set(new), "old", "new");
    report
        .services
        .iter()
        .flat_map(|s| &s.changes)
        .map(|c| {
            let kind = serde_json::to_value(c.kind).unwrap();
            let mut line = format!(
                "{} {}: {} | {}",
                render::direction_word(c.direction),
                kind.as_str().unwrap(),
                c.caller.as_deref().unwrap_or("-"),
                c.actions.join(", ")
            );
            if !c.requires.is_empty() {
                line.push_str(&format!(" | {}", c.requires.join(", ")));
            }
            if !c.detail.is_empty() {
                line.push_str(&format!(" || {}", c.detail.join("; ")));
            }
            if c.wildcard {
                line.push_str(" [wildcard]");
            }
            line
        })
        .collect()
}

/// `BASE` with `from` replaced by `to` (which must occur).
fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from}");
    BASE.replacen(from, to, 1)
}

const PAY: &str = "principal spiffe://td/ns/payments/sa/payments";
const PAY_ISS: &str = "principal spiffe://td/ns/payments/sa/payments (issuer https://sts)";

#[test]
fn no_ops_report_nothing() {
    let renamed = edit("id: payments-read\n", "id: payments-reads-one\n");
    // Reordered rules (deny first), reordered lists, a split clause, a comment.
    let reordered = r#"
service: ledger
rules:
  - id: reconciler-read
    when: { hop: mesh }
    to: [{ paths: ["/transactions/**"], methods: [get] }]
    from: { peers: ["spiffe://td/ns/ledger/sa/reconciler"] }
  - id: payments-never-refund
    effect: deny
    to: [{ paths: ["/refunds/**"] }]
    from: { principals: ["spiffe://td/ns/payments/sa/payments"] }
  - id: payments-read
    scopes: [ledger.read, ledger.read]
    from:
      issuers: ["https://sts"]
      principals: ["spiffe://td/ns/payments/sa/payments"]
    to:
      - methods: [GET]
        paths: ["/transactions/{id}/status"]
      - methods: [GET]
        paths: ["/transactions/{id}"]
"#;
    let comment = edit(
        "# Payments reads one transaction.",
        "# Reads a transaction (PAY-12).",
    );
    let description = edit(
        "  - id: reconciler-read\n",
        "  - id: reconciler-read\n    description: the nightly job\n",
    );
    // A parameter renamed: `{id}` and `{txid}` match the same paths.
    let param = edit("/transactions/{id}/status", "/transactions/{txid}/status");
    // A grant already covered by another rule grants nothing new.
    let redundant = format!(
        "{BASE}  - id: payments-read-again\n    from: {{ principals: [\"spiffe://td/ns/payments/sa/payments\"], issuers: [\"https://sts\"] }}\n    to: [{{ methods: [GET], paths: [\"/transactions/{{n}}\"] }}]\n    scopes: [ledger.read, ledger.admin]\n"
    );
    for new in [
        renamed,
        reordered.to_string(),
        comment,
        description,
        param,
        redundant,
    ] {
        assert_eq!(lines(BASE, &new), Vec::<String>::new(), "{new}");
        let report = diff(&set(BASE), &set(&new), "old", "new");
        assert_eq!(
            (report.widens, report.narrows, report.services_compared),
            (0, 0, 1)
        );
        assert!(render::text(&report).ends_with("\nno change in access (1 service(s) compared)\n"));
    }
}

#[test]
fn each_kind_of_change() {
    let new_rule = |rule: &str| format!("{BASE}{rule}");
    #[rustfmt::skip]
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        ("a caller gains an action",
         edit("paths: [\"/transactions/{id}\", \"/transactions/{id}/status\"]", "paths: [\"/transactions/{id}\", \"/transactions/{id}/status\", \"/transactions/{id}/items\"]"),
         vec![format!("widens gained: {PAY_ISS} | GET /transactions/{{id}}/items | scopes ledger.read")]),
        ("a caller gains a method",
         edit("methods: [GET]\n        paths: [\"/transactions/{id}\"", "methods: [GET, POST]\n        paths: [\"/transactions/{id}\""),
         vec![format!("widens gained: {PAY_ISS} | POST /transactions/{{id}}, POST /transactions/{{id}}/status | scopes ledger.read")]),
        ("a caller loses an action",
         edit(", \"/transactions/{id}/status\"]", "]"),
         vec![format!("narrows lost: {PAY_ISS} | GET /transactions/{{id}}/status | scopes ledger.read")]),
        ("a new caller",
         new_rule("  - id: audit-read\n    from: { principals: [\"spiffe://td/ns/audit/sa/audit\"] }\n    to: [{ methods: [GET], grpc: [\"ledger.v1.Ledger/Get\"] }]\n    scopes: [ledger.audit]\n"),
         vec!["widens gained: principal spiffe://td/ns/audit/sa/audit | GET grpc:ledger.v1.Ledger/Get | scopes ledger.audit".into()]),
        ("a scope dropped",
         edit("    scopes: [ledger.read]\n", ""),
         vec![format!("widens widened: {PAY_ISS} | GET /transactions/{{id}}, GET /transactions/{{id}}/status || scopes: ledger.read -> none")]),
        ("a scope added",
         edit("scopes: [ledger.read]", "scopes: [ledger.read, ledger.status]"),
         vec![format!("narrows narrowed: {PAY_ISS} | GET /transactions/{{id}}, GET /transactions/{{id}}/status | scopes ledger.read, ledger.status || scopes: ledger.read -> ledger.read, ledger.status")]),
        ("from widened to a wildcard",
         edit("principals: [\"spiffe://td/ns/payments/sa/payments\"]\n      issuers", "principals: [\"spiffe://td/ns/payments/sa/*\"]\n      issuers"),
         vec![format!("widens widened: principal spiffe://td/ns/payments/sa/* (issuer https://sts) | GET /transactions/{{id}}, GET /transactions/{{id}}/status | scopes ledger.read || from: {PAY_ISS} -> principal spiffe://td/ns/payments/sa/* (issuer https://sts) [wildcard]")]),
        ("from drops its issuer",
         edit("      issuers: [\"https://sts\"]\n", ""),
         vec![format!("widens widened: {PAY} | GET /transactions/{{id}}, GET /transactions/{{id}}/status | scopes ledger.read || from: {PAY_ISS} -> {PAY}")]),
        ("a condition dropped",
         edit("    when: { hop: mesh }\n", ""),
         vec!["widens widened: peer spiffe://td/ns/ledger/sa/reconciler | GET /transactions/** || conditions: hop mesh -> none [wildcard]".into()]),
        ("a path widened",
         edit("\"/transactions/{id}/status\"]", "\"/transactions/{id}/*\"]"),
         vec![format!("widens widened: {PAY_ISS} | GET /transactions/{{id}}/* | scopes ledger.read || action: GET /transactions/{{id}}/status -> GET /transactions/{{id}}/* [wildcard]")]),
        ("a new wildcard grant",
         new_rule("  - id: everyone-health\n    to: [{ methods: [GET], paths: [\"/health\"] }]\n"),
         vec!["widens gained: any authenticated caller | GET /health [wildcard]".into()]),
        ("a grant that a deny rule refuses entirely",
         new_rule("  - id: payments-refund\n    from: { principals: [\"spiffe://td/ns/payments/sa/payments\"] }\n    to: [{ methods: [POST], paths: [\"/refunds/{id}\"] }]\n"),
         vec![format!("note gained: {PAY} | POST /refunds/{{id}} || grants nothing: every request it allows is denied by deny rule payments-never-refund")]),
        ("a deny rule removed",
         BASE.replace("  - id: payments-never-refund\n    effect: deny\n    from: { principals: [\"spiffe://td/ns/payments/sa/payments\"] }\n    to: [{ paths: [\"/refunds/**\"] }]\n", ""),
         vec![format!("widens deny_removed: {PAY} | * /refunds/**")]),
        ("a deny rule narrowed",
         edit("to: [{ paths: [\"/refunds/**\"] }]", "to: [{ methods: [POST], paths: [\"/refunds/**\"] }]"),
         vec![format!("widens deny_narrowed: {PAY} | POST /refunds/** || action: * /refunds/** -> POST /refunds/**")]),
        ("a deny rule switched to dry-run",
         edit("    effect: deny\n", "    effect: deny\n    mode: dry-run\n"),
         vec![format!("widens deny_dry_run: {PAY} | * /refunds/**")]),
        ("a deny rule widened",
         edit("from: { principals: [\"spiffe://td/ns/payments/sa/payments\"] }\n    to: [{ paths", "to: [{ paths"),
         vec!["narrows deny_widened: any caller, anonymous included | * /refunds/** || from: principal spiffe://td/ns/payments/sa/payments -> any caller, anonymous included".into()]),
        ("a deny rule added",
         new_rule("  - id: no-admin\n    effect: deny\n    to: [{ paths: [\"/admin/**\"] }]\n"),
         vec!["narrows deny_added: any caller, anonymous included | * /admin/**".into()]),
        ("dry-run to enforce",
         format!("mode: dry-run\n{BASE}"),
         vec!["widens dry_run: - |  || policy switched to dry-run: denials are logged, not enforced (every request is let through)".into()]),
        ("an allow rule now for delegated calls",
         edit("      issuers: [\"https://sts\"]\n", "      issuers: [\"https://sts\"]\n      acting_for: { kinds: [user] }\n"),
         vec![format!("widens gained: {PAY} (issuer https://sts, other conditions: acting for kinds user) | GET /transactions/{{id}}, GET /transactions/{{id}}/status | scopes ledger.read"),
              format!("narrows lost: {PAY_ISS} | GET /transactions/{{id}}, GET /transactions/{{id}}/status | scopes ledger.read")]),
        ("a deny rule limited to direct callers",
         edit("from: { principals: [\"spiffe://td/ns/payments/sa/payments\"] }\n    to: [{ paths", "from: { principals: [\"spiffe://td/ns/payments/sa/payments\"], delegated: false }\n    to: [{ paths"),
         vec![format!("widens deny_removed: {PAY} | * /refunds/**"),
              format!("narrows deny_added: {PAY} (other conditions: direct callers only) | * /refunds/**")]),
        ("audiences",
         edit("service: ledger\n", "service: ledger\naudiences: [ledger, payments]\n"),
         vec!["widens audience_added: - |  || tokens for audience payments are accepted".into()]),
    ];
    let mut wrong = Vec::new();
    for (name, new, want) in &cases {
        let got = lines(BASE, new);
        if &got != want {
            wrong.push(format!("{name}:\n  got  {got:?}\n  want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Each change read backwards is the opposite change.
    let enforce = lines(&format!("mode: dry-run\n{BASE}"), BASE);
    assert_eq!(enforce, ["narrows enforce: - |  || policy switched from dry-run to enforce: its denials now take effect"]);
    let enforced = lines(
        &edit(
            "    effect: deny\n",
            "    effect: deny\n    mode: dry-run\n",
        ),
        BASE,
    );
    assert_eq!(
        enforced,
        [format!("narrows deny_enforced: {PAY} | * /refunds/**")]
    );
}

#[test]
fn other_services_and_unknown_fields() {
    let email = "service: email\nrules:\n  - id: send\n    from: { principals: [\"a\"] }\n    to: [{ methods: [POST], paths: [\"/send\"] }]\n";
    let old = set(BASE);
    let sources = |texts: &[&str]| {
        let s: Vec<(PathBuf, String)> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| (PathBuf::from(format!("{i}.yaml")), t.to_string()))
            .collect();
        PolicySet::from_sources(&s).unwrap()
    };
    let both = sources(&[BASE, email]);
    let added = diff(&old, &both, "o", "n");
    assert_eq!(added.services_compared, 2);
    assert_eq!(added.services.len(), 1);
    let kinds: Vec<Kind> = added.services[0].changes.iter().map(|c| c.kind).collect();
    assert_eq!(kinds, [Kind::PolicyAdded, Kind::Gained]);
    let removed = diff(&both, &old, "o", "n");
    let kinds: Vec<Kind> = removed.services[0].changes.iter().map(|c| c.kind).collect();
    assert_eq!(kinds, [Kind::PolicyRemoved]);
    assert_eq!((removed.widens, removed.narrows), (0, 1));
}

#[test]
fn markdown_escapes_cells() {
    let new = format!(
        "{BASE}  - id: hdr\n    from: {{ principals: [\"a\"] }}\n    to: [{{ methods: [GET], paths: [\"/x\"] }}]\n    when: {{ headers: {{ x-env: [\"a|b\"] }} }}\n"
    );
    let report = diff(&set(BASE), &set(&new), "old", "new");
    let md = render::markdown(&report);
    assert!(md.contains("header x-env in [a\\|b]"), "{md}");
    assert!(md.contains("| ⚠️ **widens** | may now |"), "{md}");
}

/// `BASE` with limits: one a rule names, one that counts every allow it matches.
fn limited() -> String {
    BASE.replace(
        "    scopes: [ledger.read]\n",
        "    scopes: [ledger.read]\n    limits: [payments-reads]\n",
    ) + r#"limits:
  - id: payments-reads
    from: { principals: ["spiffe://td/ns/payments/sa/payments"] }
    to: [{ methods: [GET], paths: ["/transactions/**"] }]
    rate: 100/s
    burst: 200
  - id: everyone
    rate: 1000/m
"#
}

/// `limited()` with `from` replaced by `to` (which must occur).
fn edit_limited(from: &str, to: &str) -> String {
    let base = limited();
    assert!(base.contains(from), "{from}");
    base.replacen(from, to, 1)
}

#[test]
fn each_kind_of_limit_change() {
    // A limit on GET counts HEAD too (as a deny rule matches).
    const READS: &str =
        "principal spiffe://td/ns/payments/sa/payments | GET /transactions/**, HEAD /transactions/**";
    const ANY: &str = "any caller, anonymous included | any action";
    let reads_terms = "100/s, burst 200, per principal";
    #[rustfmt::skip]
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        ("a limit renamed (and the rule naming it)",
         limited().replace("payments-reads", "payments-reading"),
         vec![]),
        ("a rate written another way",
         edit_limited("rate: 100/s", "rate: 6000/m"),
         vec![]),
        ("the same rate another way, with the default burst (the rate's N)",
         edit_limited("rate: 1000/m", "rate: 60000/h"),
         vec![format!("widens limit_raised: {ANY} || burst: 1000 -> 60000")]),
        ("a limit's description",
         edit_limited("  - id: everyone\n", "  - id: everyone\n    description: a ceiling\n"),
         vec![]),
        ("a limit removed",
         edit_limited("  - id: everyone\n    rate: 1000/m\n", ""),
         vec![format!("widens limit_removed: {ANY} || was 1000/m, burst 1000, per principal")]),
        ("a limit added",
         format!("{}  - id: writes\n    to: [{{ methods: [POST] }}]\n    rate: 5/s\n    per: service\n", limited()),
         vec!["narrows limit_added: any caller, anonymous included | POST (any path) || 5/s, burst 5, per service".into()]),
        ("a rate raised",
         edit_limited("rate: 100/s", "rate: 120/s"),
         vec![format!("widens limit_raised: {READS} || rate: 100/s -> 120/s")]),
        ("a rate raised by its period",
         edit_limited("rate: 1000/m", "rate: 1000/s"),
         vec![format!("widens limit_raised: {ANY} || rate: 1000/m -> 1000/s")]),
        ("a rate lowered",
         edit_limited("rate: 100/s", "rate: 5000/m"),
         vec![format!("narrows limit_lowered: {READS} || rate: 100/s -> 5000/m")]),
        ("a burst raised",
         edit_limited("burst: 200", "burst: 300"),
         vec![format!("widens limit_raised: {READS} || burst: 200 -> 300")]),
        ("a burst lowered, the rate raised",
         edit_limited("rate: 100/s\n    burst: 200", "rate: 200/s\n    burst: 100"),
         vec![format!("widens limit_raised: {READS} || rate: 100/s -> 200/s"),
              format!("narrows limit_lowered: {READS} || burst: 200 -> 100")]),
        ("per principal to per service",
         edit_limited("rate: 1000/m\n", "rate: 1000/m\n    per: service\n"),
         vec![format!("narrows limit_per: {ANY} || per: principal -> service")]),
        ("a limit counts fewer requests",
         edit_limited("paths: [\"/transactions/**\"] }]\n    rate", "paths: [\"/transactions/{id}\"] }]\n    rate"),
         vec![format!("widens limit_narrowed: principal spiffe://td/ns/payments/sa/payments | GET /transactions/{{id}}, HEAD /transactions/{{id}} || counts: principal spiffe://td/ns/payments/sa/payments GET /transactions/**, HEAD /transactions/** -> principal spiffe://td/ns/payments/sa/payments GET /transactions/{{id}}, HEAD /transactions/{{id}}")]),
        ("a limit counts more requests",
         edit_limited("to: [{ methods: [GET], paths: [\"/transactions/**\"] }]\n    rate", "rate"),
         vec![format!("narrows limit_widened: principal spiffe://td/ns/payments/sa/payments | any action || counts: principal spiffe://td/ns/payments/sa/payments GET /transactions/**, HEAD /transactions/** -> principal spiffe://td/ns/payments/sa/payments any action")]),
        ("a limit moved to other requests",
         edit_limited("paths: [\"/transactions/**\"] }]\n    rate", "paths: [\"/refunds/**\"] }]\n    rate"),
         vec!["widens limit_narrowed: principal spiffe://td/ns/payments/sa/payments | GET /refunds/**, HEAD /refunds/** || counts: principal spiffe://td/ns/payments/sa/payments GET /transactions/**, HEAD /transactions/** -> principal spiffe://td/ns/payments/sa/payments GET /refunds/**, HEAD /refunds/**".into(),
              "narrows limit_widened: principal spiffe://td/ns/payments/sa/payments | GET /refunds/**, HEAD /refunds/** || counts: principal spiffe://td/ns/payments/sa/payments GET /transactions/**, HEAD /transactions/** -> principal spiffe://td/ns/payments/sa/payments GET /refunds/**, HEAD /refunds/**".into()]),
        ("a rule's limits list drops the limit: every rule's allows count again",
         edit_limited("    limits: [payments-reads]\n", ""),
         vec![format!("narrows limit_attached: - |  || the requests rule reconciler-read allows now count against limit payments-reads ({reads_terms})")]),
        ("another rule names the limit too",
         edit_limited("    when: { hop: mesh }\n", "    when: { hop: mesh }\n    limits: [payments-reads]\n"),
         vec![format!("narrows limit_attached: - |  || the requests rule reconciler-read allows now count against limit payments-reads ({reads_terms})")]),
        ("a rule names a limit that counted every allow",
         edit_limited("    limits: [payments-reads]\n", "    limits: [payments-reads, everyone]\n"),
         vec!["widens limit_detached: - |  || the requests rule reconciler-read allows no longer count against limit everyone (1000/m, burst 1000, per principal)".into()]),
    ];
    let base = limited();
    let mut wrong = Vec::new();
    for (name, new, want) in &cases {
        let got = lines(&base, new);
        if &got != want {
            wrong.push(format!("{name}:\n  got  {got:?}\n  want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn fail_on_broaden_counts_a_raised_or_removed_limit() {
    let base = limited();
    for (new, widens, narrows) in [
        (edit_limited("rate: 100/s", "rate: 101/s"), 1, 0),
        (
            edit_limited("  - id: everyone\n    rate: 1000/m\n", ""),
            1,
            0,
        ),
        (edit_limited("rate: 100/s", "rate: 99/s"), 0, 1),
        (base.clone(), 0, 0),
    ] {
        let report = diff(&set(&base), &set(&new), "old", "new");
        assert_eq!((report.widens, report.narrows), (widens, narrows), "{new}");
    }
    // Rendered: the limit is named beside the rule.
    let new = edit_limited("rate: 100/s", "rate: 120/s");
    let report = diff(&set(&base), &set(&new), "old", "new");
    let text = render::text(&report);
    assert!(
        text.contains("  widens   principal spiffe://td/ns/payments/sa/payments: GET /transactions/**, HEAD /transactions/**: rate limit raised\n           rate: 100/s -> 120/s\n           limit payments-reads\n"),
        "{text}"
    );
    let md = render::markdown(&report);
    assert!(
        md.contains("| rate limit raised<br>rate: 100/s -> 120/s |"),
        "{md}"
    );
    assert!(md.contains(" | limit `payments-reads` |\n"), "{md}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["services"][0]["changes"][0]["limit"], "payments-reads");
}
