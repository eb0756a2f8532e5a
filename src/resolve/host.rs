//! `services.by_host`: the `:authority` -> a service, for gateways and for checks that
//! name no destination workload.
//!
//! Keys are matched without their port, case-insensitively, without a trailing dot.
//! A key written as a Kubernetes Service name with its namespace (`ledger.ns`,
//! `ledger.ns.svc` or `ledger.ns.svc.cluster.local`) matches every one of those forms
//! of the host, since they name the same Service. The bare name `ledger` matches a
//! key written bare, or else the one namespaced key of that name: when keys in two
//! namespaces both say `ledger` and name different services, the host is ambiguous
//! and the check is denied. Any other key (`api.example.com`) matches exactly.

use std::collections::HashMap;

/// The cluster domain assumed for `<name>.<namespace>.svc.<domain>` hosts.
const CLUSTER_DOMAIN: &str = "cluster.local";

/// What a host (or key) is, once its port and case are gone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HostName {
    /// `name.namespace[.svc[.cluster.local]]`.
    Qualified(String, String),
    /// One label: a Service name in the caller's own namespace, or a plain host.
    Bare(String),
    /// Anything else, matched exactly.
    Other(String),
}

/// Why a host maps to no service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMiss {
    /// No key matches it.
    Unknown,
    /// Several keys match it and they name different services.
    Ambiguous,
}

/// Two keys that name the same host but different services.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "services.by_host: {first:?} and {second:?} are the same host but map to different services"
)]
pub struct HostClash {
    /// The first key (in sorted order).
    pub first: String,
    /// The key that clashes with it.
    pub second: String,
}

/// The compiled `by_host` table.
#[derive(Debug, Clone, Default)]
pub struct HostTable {
    /// Every key by its canonical form.
    by_name: HashMap<HostName, String>,
    /// Bare name -> the services of the namespaced keys with that name.
    by_bare: HashMap<String, Vec<String>>,
}

impl HostTable {
    /// Compiles the user's `by_host` map (key -> service).
    pub fn new<'a>(
        entries: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<HostTable, Vec<HostClash>> {
        let mut table = HostTable::default();
        let mut written: HashMap<HostName, &str> = HashMap::new();
        let mut clashes = Vec::new();
        for (key, service) in entries {
            let name = HostName::parse(key);
            if let Some(other) = written.get(&name) {
                if table.by_name.get(&name) != Some(service) {
                    clashes.push(HostClash {
                        first: other.to_string(),
                        second: key.clone(),
                    });
                }
                continue;
            }
            written.insert(name.clone(), key);
            if let HostName::Qualified(bare, _) = &name {
                let services = table.by_bare.entry(bare.clone()).or_default();
                if !services.contains(service) {
                    services.push(service.clone());
                }
            }
            table.by_name.insert(name, service.clone());
        }
        if clashes.is_empty() {
            Ok(table)
        } else {
            Err(clashes)
        }
    }

    /// The service for a request's `:authority`.
    pub fn service(&self, host: &str) -> Result<&str, HostMiss> {
        let name = HostName::parse(host);
        if let Some(service) = self.by_name.get(&name) {
            return Ok(service);
        }
        let HostName::Bare(bare) = &name else {
            return Err(HostMiss::Unknown);
        };
        match self.by_bare.get(bare).map(Vec::as_slice) {
            Some([one]) => Ok(one),
            Some([_, _, ..]) => Err(HostMiss::Ambiguous),
            _ => Err(HostMiss::Unknown),
        }
    }
}

impl HostName {
    fn parse(host: &str) -> HostName {
        let host = strip_port(host).to_ascii_lowercase();
        let host = host.strip_suffix('.').unwrap_or(&host);
        let labels: Vec<&str> = host.split('.').collect();
        if labels.iter().any(|l| l.is_empty()) || host.starts_with('[') {
            return HostName::Other(host.to_string());
        }
        let qualified = |name: &str, ns: &str| HostName::Qualified(name.into(), ns.into());
        match labels.as_slice() {
            [name] => HostName::Bare((*name).to_string()),
            [name, ns] | [name, ns, "svc"] => qualified(name, ns),
            [name, ns, "svc", rest @ ..] if rest.join(".") == CLUSTER_DOMAIN => qualified(name, ns),
            _ => HostName::Other(host.to_string()),
        }
    }
}

/// `host:port` -> `host`; `[v6]:port` -> `[v6]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn table(entries: &[(&str, &str)]) -> Result<HostTable, Vec<HostClash>> {
        let map: BTreeMap<String, String> = entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HostTable::new(&map)
    }

    #[test]
    fn kubernetes_names_and_plain_hosts() {
        let t = table(&[
            ("ledger.ledger.svc.cluster.local", "ledger"),
            ("Api.Example.com", "api"),
            ("ledger.internal", "ledger-int"),
            ("email.mail", "email"),
            ("email.mail2.svc", "email2"),
            ("media", "media"),
            // Not Kubernetes names (an empty label, an IPv6 literal): matched exactly.
            (".ledger", "dotted"),
            ("[::1]", "v6"),
            ("[::2", "unclosed"),
        ])
        .unwrap();
        use HostMiss::*;
        let cases: &[(&str, Result<&str, HostMiss>)] = &[
            ("ledger.ledger.svc.cluster.local", Ok("ledger")),
            ("ledger.ledger.svc.cluster.local.", Ok("ledger")),
            ("LEDGER.ledger.svc.cluster.local:8080", Ok("ledger")),
            ("ledger.ledger.svc", Ok("ledger")),
            ("ledger.ledger.svc:80", Ok("ledger")),
            ("ledger.ledger", Ok("ledger")),
            ("ledger.other.svc.cluster.local", Err(Unknown)),
            ("ledger.ledger.svc.other.local", Err(Unknown)),
            // Two namespaced keys named `ledger` with different services.
            ("ledger", Err(Ambiguous)),
            ("ledger:8080", Err(Ambiguous)),
            ("email", Err(Ambiguous)),
            ("email.mail.svc.cluster.local", Ok("email")),
            ("email.mail2", Ok("email2")),
            ("api.example.com", Ok("api")),
            ("api.example.com:443", Ok("api")),
            ("x.api.example.com", Err(Unknown)),
            ("ledger.internal:8443", Ok("ledger-int")),
            ("ledger.internal.svc.cluster.local", Ok("ledger-int")),
            ("media", Ok("media")),
            ("media:80", Ok("media")),
            ("media.media", Err(Unknown)),
            ("", Err(Unknown)),
            ("[::1]:80", Ok("v6")),
            ("[::1]", Ok("v6")),
            ("[::2]:80", Err(Unknown)),
            ("[::3]:80", Err(Unknown)),
            ("a..b", Err(Unknown)),
            (".ledger", Ok("dotted")),
            ("ledger.", Err(Ambiguous)),
            // A port is digits; anything else after a colon is part of the host.
            ("api.example.com:https", Err(Unknown)),
        ];
        for (host, want) in cases {
            assert_eq!(t.service(host), *want, "{host:?}");
        }
    }

    #[test]
    fn a_bare_name_with_one_namespaced_key_is_that_key() {
        let t = table(&[("ledger.ledger.svc.cluster.local", "ledger")]).unwrap();
        assert_eq!(t.service("ledger"), Ok("ledger"));
        // Two keys for the same service in two namespaces are not ambiguous.
        let t = table(&[("ledger.a", "ledger"), ("ledger.b.svc", "ledger")]).unwrap();
        assert_eq!(t.service("ledger:80"), Ok("ledger"));
    }

    #[test]
    fn keys_naming_one_host_twice() {
        assert!(table(&[("ledger.ns", "a"), ("ledger.ns.svc.cluster.local", "a")]).is_ok());
        let clash = table(&[("ledger.ns", "a"), ("Ledger.NS.svc", "b")]).unwrap_err();
        assert_eq!(clash[0].first, "Ledger.NS.svc");
        assert!(clash[0].to_string().contains("different services"));
    }
}
