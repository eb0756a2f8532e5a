//! The mTLS peer identity Envoy reports for the downstream connection.

use crate::principal::SpiffeId;

/// The peer's SPIFFE ID from `attributes.source.principal`.
///
/// Envoy fills that field with the client certificate's URI SAN when there is one,
/// else with its subject. Only a SPIFFE URI identifies a workload here; anything
/// else is no mTLS identity at all (it can never match `from.peers`), which is the
/// fail-closed reading. The value is only as trustworthy as the Envoy that
/// terminated TLS: hopwarden must only be reachable from Envoys.
pub fn peer_identity(source_principal: Option<&str>) -> Option<SpiffeId> {
    source_principal
        .filter(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_spiffe_uris_are_identities() {
        let cases: &[(Option<&str>, bool)] = &[
            (None, false),
            (Some(""), false),
            (Some("spiffe://hopwarden.local/ns/a/sa/b"), true),
            (Some("CN=payments,O=acme"), false),
            (Some("https://payments"), false),
        ];
        for (input, want) in cases {
            assert_eq!(peer_identity(*input).is_some(), *want, "{input:?}");
        }
    }
}
