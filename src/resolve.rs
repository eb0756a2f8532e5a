//! Which service a check is for.

use std::collections::HashMap;

use crate::config::ServicesSpec;
use crate::request::AuthzRequest;

/// Resolves the destination service of a request.
///
/// Order: `context_extensions["service"]` (set per route or listener in Envoy, the
/// most explicit), then the destination's SPIFFE ID (the sidecar's own certificate),
/// then the `:authority` host. The host is last because a client chooses it.
#[derive(Debug, Default)]
pub struct ServiceResolver {
    by_spiffe: HashMap<String, String>,
    by_host: HashMap<String, String>,
}

impl ServiceResolver {
    /// A resolver from the config's `services` mappings.
    pub fn new(spec: &ServicesSpec) -> Self {
        ServiceResolver {
            by_spiffe: spec.by_spiffe.clone().into_iter().collect(),
            by_host: spec
                .by_host
                .iter()
                .map(|(h, s)| (h.to_ascii_lowercase(), s.clone()))
                .collect(),
        }
    }

    /// The service name, if any source names one.
    pub fn resolve<'a>(&'a self, req: &'a AuthzRequest) -> Option<&'a str> {
        if let Some(s) = req.service.as_deref().filter(|s| !s.is_empty()) {
            return Some(s);
        }
        if let Some(s) = req
            .destination_principal
            .as_deref()
            .and_then(|p| self.by_spiffe.get(p))
        {
            return Some(s);
        }
        let host = strip_port(&req.host).to_ascii_lowercase();
        self.by_host.get(&host).map(String::as_str)
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
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

    #[test]
    fn resolution_order() {
        let spec = ServicesSpec {
            by_spiffe: [(
                "spiffe://td/ns/l/sa/ledger".to_string(),
                "ledger".to_string(),
            )]
            .into(),
            by_host: [("Ledger.Internal".to_string(), "ledger-h".to_string())].into(),
        };
        let r = ServiceResolver::new(&spec);
        let req = |service: Option<&str>, dest: Option<&str>, host: &str| AuthzRequest {
            service: service.map(str::to_string),
            destination_principal: dest.map(str::to_string),
            host: host.to_string(),
            ..Default::default()
        };
        let cases: &[(AuthzRequest, Option<&str>)] = &[
            (
                req(
                    Some("email"),
                    Some("spiffe://td/ns/l/sa/ledger"),
                    "ledger.internal",
                ),
                Some("email"),
            ),
            (
                req(Some(""), Some("spiffe://td/ns/l/sa/ledger"), "x"),
                Some("ledger"),
            ),
            (
                req(None, Some("spiffe://td/ns/x/sa/y"), "ledger.internal:8080"),
                Some("ledger-h"),
            ),
            (req(None, None, "LEDGER.internal"), Some("ledger-h")),
            (req(None, None, "other"), None),
            (req(None, None, ""), None),
        ];
        for (r_, want) in cases {
            assert_eq!(r.resolve(r_), *want, "{r_:?}");
        }
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("a:b"), "a:b");
    }
}
