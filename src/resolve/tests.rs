//! One-line tables: a check's context extensions, destination and host -> the service,
//! where it came from, and the hop.

use super::*;

const GATEWAY: &str =
    "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";

fn resolver() -> ServiceResolver {
    let spec = ServicesSpec {
        by_spiffe: [(
            "spiffe://cluster.local/ns/l/sa/legacy".into(),
            "ledger".into(),
        )]
        .into(),
        by_spiffe_pattern: vec!["spiffe://cluster.local/ns/{namespace}/sa/{service}".into()],
        gateways: vec![GATEWAY.into(), "*.example.com".into()],
        by_host: [
            ("Ledger.Internal".into(), "ledger-h".into()),
            ("email.mail.svc.cluster.local".into(), "email".into()),
        ]
        .into(),
    };
    ServiceResolver::new(&spec).unwrap()
}

type Case<'a> = (
    (Option<&'a str>, Option<&'a str>, Option<&'a str>, &'a str),
    Result<(&'a str, Source, Hop), Unresolved>,
);

#[rustfmt::skip]
const CASES: &[Case] = {
    use Source::*;
    use Unresolved::*;
    &[
    // ((context service, context hop, destination principal, host), want)
    // context_extensions win over everything.
    ((Some("email"), None, Some("spiffe://cluster.local/ns/l/sa/legacy"), "ledger.internal"), Ok(("email", ContextExtensions, Hop::Mesh))),
    ((Some("email"), Some("gateway"), None, "x"), Ok(("email", ContextExtensions, Hop::Gateway))),
    ((Some("email"), None, Some(GATEWAY), "x"), Ok(("email", ContextExtensions, Hop::Gateway))),
    // A named workload: by_spiffe, then the pattern.
    ((Some(""), None, Some("spiffe://cluster.local/ns/l/sa/legacy"), "x"), Ok(("ledger", BySpiffe, Hop::Mesh))),
    ((None, None, Some("spiffe://cluster.local/ns/pay/sa/payments"), "ledger.internal"), Ok(("payments", Pattern, Hop::Mesh))),
    ((None, Some("mesh"), Some("spiffe://cluster.local/ns/pay/sa/payments"), ""), Ok(("payments", Pattern, Hop::Mesh))),
    // THE BUG: an unmapped workload is never judged by the host's service.
    ((None, None, Some("spiffe://other.td/ns/x/sa/y"), "ledger.internal:8080"), Err(UnmappedDestination)),
    ((None, None, Some("spiffe://cluster.local/ns/x/sa/y/z"), "ledger.internal"), Err(UnmappedDestination)),
    ((None, Some("mesh"), Some("spiffe://other.td/x"), "email.mail"), Err(UnmappedDestination)),
    ((None, None, Some("not-a-spiffe-id"), "ledger.internal"), Err(UnmappedDestination)),
    ((None, None, Some("api.example.com"), "email.mail:443"), Err(UnmappedDestination)),
    // A gateway identity: hop gateway, service from the host.
    ((None, None, Some(GATEWAY), "ledger.internal:443"), Ok(("ledger-h", Host, Hop::Gateway))),
    ((None, None, Some(GATEWAY), "email.mail.svc:80"), Ok(("email", Host, Hop::Gateway))),
    ((None, None, Some(GATEWAY), "email"), Ok(("email", Host, Hop::Gateway))),
    ((None, None, Some(GATEWAY), "other.example"), Err(UnknownHost)),
    ((None, Some("mesh"), Some(GATEWAY), "ledger.internal"), Ok(("ledger-h", Host, Hop::Mesh))),
    // A gateway terminating public TLS: Envoy names its certificate's DNS SAN.
    ((None, None, Some("*.example.com"), "email.mail:443"), Ok(("email", Host, Hop::Gateway))),
    // Hand-written gateways: the operator's hop, or no destination named.
    ((None, Some("gateway"), Some("spiffe://other.td/gw"), "LEDGER.internal"), Ok(("ledger-h", Host, Hop::Gateway))),
    ((None, Some("gateway"), None, "ledger.internal"), Ok(("ledger-h", Host, Hop::Gateway))),
    ((None, None, None, "LEDGER.internal"), Ok(("ledger-h", Host, Hop::Mesh))),
    ((None, None, None, "other"), Err(UnknownHost)),
    ((None, None, None, ""), Err(UnknownHost)),
    ]
};

#[test]
fn resolution() {
    let r = resolver();
    for ((service, hop, dest, host), want) in CASES {
        let req = AuthzRequest {
            service: service.map(str::to_string),
            hop: hop.map(str::to_string),
            destination_principal: dest.map(str::to_string),
            host: host.to_string(),
            ..Default::default()
        };
        let got = r
            .hop(&req)
            .map_err(|_| Unresolved::UnknownHost)
            .and_then(|h| r.resolve(&req, h).map(|(s, src)| (s.into_owned(), src, h)));
        let want = want.map(|(s, src, h)| (s.to_string(), src, h));
        assert_eq!(got, want, "{req:?}");
    }
}

#[test]
fn a_bad_hop_is_an_error() {
    let req = AuthzRequest {
        hop: Some("edge".into()),
        destination_principal: Some(GATEWAY.into()),
        ..Default::default()
    };
    assert!(resolver().hop(&req).is_err());
}

#[test]
fn patterns_that_disagree_deny() {
    let spec = ServicesSpec {
        by_spiffe_pattern: vec![
            "spiffe://td/ns/{namespace}/sa/{service}".into(),
            "spiffe://td/ns/{service}/sa/{namespace}".into(),
        ],
        ..Default::default()
    };
    let r = ServiceResolver::new(&spec).unwrap();
    let req = |dest: &str| AuthzRequest {
        destination_principal: Some(dest.into()),
        ..Default::default()
    };
    let same = req("spiffe://td/ns/ledger/sa/ledger");
    assert_eq!(
        r.resolve(&same, Hop::Mesh),
        Ok(("ledger".into(), Source::Pattern))
    );
    let differ = req("spiffe://td/ns/a/sa/b");
    assert_eq!(
        r.resolve(&differ, Hop::Mesh),
        Err(Unresolved::AmbiguousDestination)
    );
}

#[test]
fn bad_sections_are_refused() {
    let spec = |f: fn(&mut ServicesSpec)| {
        let mut s = ServicesSpec::default();
        f(&mut s);
        s
    };
    let cases: &[(ServicesSpec, &str)] = &[
        (
            spec(|s| s.by_spiffe_pattern = vec!["spiffe://td/ns/{namespace}".into()]),
            "has no {service} placeholder",
        ),
        (
            spec(|s| s.gateways = vec!["spiffe://Bad/gw".into()]),
            "\"spiffe://Bad/gw\" is not a SPIFFE ID",
        ),
        (
            spec(|s| s.gateways = vec![String::new()]),
            "an entry is empty",
        ),
        (
            spec(|s| {
                s.gateways = vec![GATEWAY.into()];
                s.by_spiffe = [(GATEWAY.into(), "x".into())].into();
            }),
            "is also in services.by_spiffe",
        ),
        (
            spec(|s| {
                s.by_host = [("a.ns".into(), "a".into()), ("a.ns.svc".into(), "b".into())].into()
            }),
            "are the same host but map to different services",
        ),
        (
            spec(|s| s.by_spiffe = [("spiffe://td/x".into(), String::new())].into()),
            "empty service",
        ),
    ];
    for (spec, want) in cases {
        let errs = ServiceResolver::new(spec).expect_err(want);
        assert!(
            errs.iter().any(|e| e.message.contains(want)),
            "{want}: {errs:?}"
        );
    }
}

#[test]
fn sources_and_details_name_the_lookup() {
    let sources = [
        (Source::ContextExtensions, "context_extensions"),
        (Source::BySpiffe, "services.by_spiffe"),
        (Source::Pattern, "services.by_spiffe_pattern"),
        (Source::Host, "services.by_host"),
    ];
    for (source, name) in sources {
        assert_eq!(source.as_str(), name);
    }
    // The decision log's detail says which lookup failed; the error shows the same.
    let details = [
        (Unresolved::UnmappedDestination, "not in services.by_spiffe"),
        (
            Unresolved::AmbiguousDestination,
            "by_spiffe_pattern entries naming different",
        ),
        (Unresolved::UnknownHost, "not in services.by_host"),
        (Unresolved::AmbiguousHost, "by_host keys naming different"),
    ];
    for (why, words) in details {
        assert!(why.detail().contains(words), "{why:?}: {}", why.detail());
        assert_eq!(why.to_string(), why.detail());
    }
}
