use super::*;

fn sans(path: &Path) -> Vec<String> {
    let der = pem_der(path).unwrap();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn writes_the_ca_and_one_svid_per_workload() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let written = ensure(&out, &default_workloads(), 30, false).unwrap();
    assert_eq!(written.len(), 6);
    assert!(written.iter().all(|w| !w.kept));
    let reconciler = &written[4];
    assert_eq!(reconciler.cert, out.join("reconciler.pem"));
    assert_eq!(
        reconciler.id,
        "spiffe://hopwarden.local/ns/ledger/sa/reconciler"
    );
    assert_eq!(
        sans(&out.join("reconciler.pem")),
        [
            "URI(spiffe://hopwarden.local/ns/ledger/sa/reconciler)",
            "DNSName(reconciler)",
            "DNSName(localhost)",
            "IPAddress(7f:00:00:01)",
        ]
    );
    assert_eq!(sans(&out.join("ca.pem")), ["URI(spiffe://hopwarden.local)"]);
    let ca_der = pem_der(&out.join("ca.pem")).unwrap();
    for w in default_workloads() {
        let cert = out.join(format!("{}.pem", w.name));
        let key = out.join(format!("{}-key.pem", w.name));
        assert!(
            leaf_is_current(&cert, &key, &w.spiffe_id(), &ca_der),
            "{}",
            w.name
        );
        assert!(read(&key).starts_with("-----BEGIN PRIVATE KEY-----"));
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("ca-key.pem"), 0o600);
    assert_eq!(mode("ledger-key.pem"), 0o644);
}

#[test]
fn keeps_valid_files_and_renews_on_force_or_change() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let ledger: Vec<Workload> = vec!["ledger".parse().unwrap()];
    ensure(&out, &ledger, 30, false).unwrap();
    let (ca, cert) = (read(&out.join("ca.pem")), read(&out.join("ledger.pem")));

    let again = ensure(&out, &ledger, 30, false).unwrap();
    assert!(again.iter().all(|w| w.kept));
    assert_eq!(read(&out.join("ca.pem")), ca);
    assert_eq!(read(&out.join("ledger.pem")), cert);

    // Another workload later: the CA stays, the new one is signed by it.
    let more: Vec<Workload> = vec!["ledger".parse().unwrap(), "jobs:batch".parse().unwrap()];
    let written = ensure(&out, &more, 30, false).unwrap();
    assert_eq!(
        written.iter().map(|w| w.kept).collect::<Vec<_>>(),
        [true, true, false]
    );
    assert_eq!(
        sans(&out.join("jobs.pem"))[0],
        "URI(spiffe://hopwarden.local/ns/batch/sa/jobs)"
    );

    // A certificate for another identity under the same file name is replaced.
    let moved: Vec<Workload> = vec!["ledger:other".parse().unwrap()];
    let written = ensure(&out, &moved, 30, false).unwrap();
    assert!(!written[1].kept);
    assert_eq!(
        sans(&out.join("ledger.pem"))[0],
        "URI(spiffe://hopwarden.local/ns/other/sa/ledger)"
    );

    // A key that no longer matches its certificate: a new pair.
    std::fs::copy(out.join("jobs-key.pem"), out.join("ledger-key.pem")).unwrap();
    let written = ensure(&out, &moved, 30, false).unwrap();
    assert!(!written[1].kept);

    let forced = ensure(&out, &ledger, 30, true).unwrap();
    assert!(forced.iter().all(|w| !w.kept));
    assert_ne!(read(&out.join("ca.pem")), ca);
    // jobs.pem was signed by the old CA: no longer current.
    let ca_der = pem_der(&out.join("ca.pem")).unwrap();
    let jobs: Workload = "jobs:batch".parse().unwrap();
    assert!(!leaf_is_current(
        &out.join("jobs.pem"),
        &out.join("jobs-key.pem"),
        &jobs.spiffe_id(),
        &ca_der
    ));
}

#[test]
fn a_new_ca_reissues_every_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let ledger: Vec<Workload> = vec!["ledger".parse().unwrap()];
    ensure(&out, &ledger, 30, false).unwrap();
    let cert = read(&out.join("ledger.pem"));
    std::fs::remove_file(out.join("ca-key.pem")).unwrap();
    let written = ensure(&out, &ledger, 30, false).unwrap();
    assert!(!written[0].kept && !written[1].kept);
    assert_ne!(read(&out.join("ledger.pem")), cert);
}

#[test]
fn workload_names_are_dns_labels() {
    let w: Workload = "reconciler:ledger".parse().unwrap();
    assert_eq!(
        w.spiffe_id(),
        "spiffe://hopwarden.local/ns/ledger/sa/reconciler"
    );
    for bad in [
        "", ":", "a:", "../x", "a/b", "Ledger", "-a", "a-", "a:b:c", "a b",
    ] {
        let err = bad.parse::<Workload>().unwrap_err();
        assert!(
            err.to_string().contains(&format!("{bad:?}")),
            "{bad}: {err}"
        );
    }
}
