//! `from.credentials`: a rule says which credentials may identify its caller, so an
//! endpoint can refuse long-lived API keys; and an API key's principal is matched by
//! `principals`, `kinds` and `scopes` like any other.

use std::path::PathBuf;

use super::tests::{allow, deny, eval, http, peer, short, token};
use super::{Evaluation, PolicySet};
use crate::apikey::{KeyEntry, NewKey};
use crate::principal::{CredentialType, Principal, PrincipalKind};
use crate::request::Hop;

fn keyed(principal: &str, kind: PrincipalKind, scopes: &[&str]) -> Principal {
    let key = NewKey::generate().unwrap();
    let entry = KeyEntry {
        id: key.id.clone(),
        digest: key.digest(),
        principal: principal.into(),
        kind,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        not_before: None,
        expires: None,
        description: None,
    };
    Principal::from_api_key(&entry, None)
}

#[test]
fn credential_types() {
    assert_eq!(token("a", &[]).credential(), CredentialType::Jwt);
    assert_eq!(peer("spiffe://td/a").credential(), CredentialType::Mtls);
    let k = keyed("partner", PrincipalKind::Service, &[]);
    assert_eq!(k.credential(), CredentialType::ApiKey);
    assert!(k.api_key.is_some() && k.issuer.is_none());
}

#[test]
fn rules_choose_credentials_and_match_key_principals() {
    let yaml = "service: t
rules:
  - {id: jwt-only, from: {principals: [partner], credentials: [jwt]}, to: [{paths: [/jwt]}]}
  - {id: keys, from: {principals: [partner], credentials: [api_key]}, to: [{paths: [/key]}], scopes: [t.write]}
  - {id: any, from: {principals: [partner, 'spiffe://td/a']}, to: [{paths: [/any]}]}
  - {id: mtls, from: {credentials: [mtls]}, to: [{paths: [/mtls]}]}
  - {id: users, from: {kinds: [user], credentials: [api_key, jwt]}, to: [{paths: [/user]}]}
  - {id: no-keys-here, effect: deny, from: {credentials: [api_key]}, to: [{paths: [/any/secret]}]}
  - {id: secret, to: [{paths: [/any/secret]}]}
";
    let set = PolicySet::from_sources(&[(PathBuf::from("t.yaml"), yaml.into())]).unwrap();
    let p = set.get("t").unwrap();
    let key = keyed("partner", PrincipalKind::Service, &["t.write"]);
    let key_no_scope = keyed("partner", PrincipalKind::Service, &[]);
    let user_key = keyed("u1", PrincipalKind::User, &[]);
    let other_key = keyed("someone-else", PrincipalKind::Service, &["t.write"]);
    let jwt = token("partner", &[]);
    let mtls = peer("spiffe://td/a");
    let no = Evaluation::NoMatch;
    let cases: &[(&Principal, &str, Evaluation)] = &[
        (&jwt, "/jwt", allow("jwt-only")),
        (&key, "/jwt", no.clone()),
        (&key, "/key", allow("keys")),
        (&jwt, "/key", no.clone()),
        (&key_no_scope, "/key", short("keys", &["t.write"])),
        (&other_key, "/key", no.clone()),
        (&key, "/any", allow("any")),
        (&jwt, "/any", allow("any")),
        (&mtls, "/any", allow("any")),
        (&mtls, "/mtls", allow("mtls")),
        (&key, "/mtls", no.clone()),
        (&jwt, "/mtls", no.clone()),
        (&user_key, "/user", allow("users")),
        (&key, "/user", no.clone()),
        (&key, "/any/secret", deny("no-keys-here")),
        (&jwt, "/any/secret", allow("secret")),
    ];
    for (principal, path, want) in cases {
        let got = eval(p, Some(principal), Hop::Mesh, &http("GET", path));
        assert_eq!(&got, want, "{:?} {path}", principal.credential());
    }
}

#[test]
fn credentials_are_checked_at_compile_time() {
    let cases = [
        ("from: {credentials: []}", "from.credentials"),
        (
            "from: {credentials: [password]}",
            "unknown variant `password`",
        ),
        (
            "from: {anonymous: true, credentials: [jwt]}",
            "cannot be combined",
        ),
    ];
    for (from, want) in cases {
        let yaml = format!("service: t\nrules:\n  - {{id: r, {from}}}\n");
        let err = PolicySet::from_sources(&[(PathBuf::from("t.yaml"), yaml)])
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{from}: {err}");
    }
}
