//! The mTLS peer over the HTTP service: read from one header that Envoy sets.
//!
//! Envoy's HTTP service has no `attributes.source.principal`. Envoy can send the peer
//! certificate's URI SAN itself, with
//! `http_service.authorization_request.headers_to_add: [{key: <name>, value:
//! "%DOWNSTREAM_PEER_URI_SAN%"}]`. Measured with Envoy 1.40 (tests/e2e.rs runs it):
//! with a peer certificate, Envoy's value replaces any copy the client sent; with
//! none (or no URI SAN) the value is empty and Envoy adds nothing, so a client copy
//! would reach us if the filter forwarded it. The filter therefore must not forward
//! the client's copy: the header is named in `disallowed_headers` (which wins over
//! `allowed_headers`), and may not start with `x-hopwarden-`, the prefix every
//! documented `allowed_headers` forwards. docs/envoy.md has the configuration.
//!
//! What arrives is checked as Envoy would write it for a SPIFFE certificate: exactly
//! one URI (an X.509-SVID has exactly one URI SAN), a valid SPIFFE ID. Anything else
//! (two copies joined, a value that is not a SPIFFE ID) refuses the check: a peer we
//! cannot read is never taken as "no peer", which could slip past a deny rule that
//! names it.

use hyper::header::HeaderName;

use crate::principal::SpiffeId;
use crate::request::{AuthzRequest, OWN_HEADER_PREFIX};

/// Why a configured peer header name is refused (config validation).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerHeaderNameError {
    /// Not a lowercase HTTP header name.
    #[error("http_peer_header {0:?} is not a lowercase header name")]
    Invalid(String),
    /// A header the check already reads for something else, or one Envoy sets itself.
    #[error("http_peer_header {0:?} is a header Envoy or hopwarden already uses")]
    Reserved(String),
    /// Under `x-hopwarden-`, which Envoy's `allowed_headers` forwards from clients.
    #[error("http_peer_header {0:?} starts with x-hopwarden-, which allowed_headers forwards from the client (docs/envoy.md); name another header")]
    OwnPrefix(String),
}

/// Checks a configured peer header name.
pub fn check_name(name: &str) -> Result<HeaderName, PeerHeaderNameError> {
    let lowercase = name.bytes().all(|b| !b.is_ascii_uppercase());
    let header = HeaderName::from_bytes(name.as_bytes())
        .ok()
        .filter(|_| lowercase && !name.is_empty())
        .ok_or_else(|| PeerHeaderNameError::Invalid(name.to_string()))?;
    const RESERVED: &[&str] = &[
        "authorization",
        "cookie",
        "proxy-authorization",
        "host",
        "content-length",
        "content-type",
        "x-request-id",
        "x-forwarded-client-cert",
    ];
    if RESERVED.contains(&name) || name.starts_with("x-envoy-") {
        return Err(PeerHeaderNameError::Reserved(name.to_string()));
    }
    if name.starts_with(OWN_HEADER_PREFIX) {
        return Err(PeerHeaderNameError::OwnPrefix(name.to_string()));
    }
    Ok(header)
}

/// Why a check's peer header was refused; the check is answered 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerHeaderError {
    /// More than one value (a client copy beside Envoy's, or several URI SANs).
    #[error("the peer header holds more than one value")]
    Repeated,
    /// The value is not a SPIFFE ID.
    #[error("the peer header is not a SPIFFE ID")]
    NotSpiffe,
}

/// Moves the peer header's value (if any) out of the request's headers and into its
/// source principal, as a gRPC check carries it. No header: no peer.
pub fn take(req: &mut AuthzRequest, name: &HeaderName) -> Result<(), PeerHeaderError> {
    // Removed whatever happens: no rule reads it as a header.
    let Some(value) = req.headers.remove(name.as_str()) else {
        return Ok(());
    };
    // Repeats were joined with "," (convert.rs), and a SPIFFE ID has no ",".
    if value.contains(',') {
        return Err(PeerHeaderError::Repeated);
    }
    value
        .parse::<SpiffeId>()
        .map_err(|_| PeerHeaderError::NotSpiffe)?;
    req.source_principal = Some(value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_names() {
        let cases: &[(&str, bool)] = &[
            ("x-peer-uri-san", true),
            ("x-client-spiffe-id", true),
            ("X-Peer-Uri-San", false),
            ("", false),
            ("x peer", false),
            ("x-peer:", false),
            ("authorization", false),
            ("cookie", false),
            ("host", false),
            ("x-envoy-peer", false),
            ("x-forwarded-client-cert", false),
            ("x-hopwarden-peer", false),
        ];
        for (name, ok) in cases {
            assert_eq!(check_name(name).is_ok(), *ok, "{name}");
        }
    }

    #[test]
    fn values() {
        let name = HeaderName::from_static("x-peer-uri-san");
        let td = "spiffe://hopwarden.local/ns/payments/sa/payments";
        type Want = Result<Option<&'static str>, PeerHeaderError>;
        let cases: &[(Option<&str>, Want)] = &[
            (None, Ok(None)),
            (Some(td), Ok(Some(td))),
            (
                Some(&format!("{td},spiffe://evil/x")),
                Err(PeerHeaderError::Repeated),
            ),
            (Some("forged,"), Err(PeerHeaderError::Repeated)),
            (Some(""), Err(PeerHeaderError::NotSpiffe)),
            (Some("payments"), Err(PeerHeaderError::NotSpiffe)),
            (
                Some("https://hopwarden.local/x"),
                Err(PeerHeaderError::NotSpiffe),
            ),
            (
                Some("spiffe://hopwarden.local/ns/../sa/x"),
                Err(PeerHeaderError::NotSpiffe),
            ),
        ];
        for (value, want) in cases {
            let mut req = AuthzRequest::default();
            req.headers.insert("x-other".into(), "1".into());
            if let Some(v) = value {
                req.headers.insert("x-peer-uri-san".into(), v.to_string());
            }
            let got = take(&mut req, &name).map(|()| req.source_principal.clone());
            assert_eq!(got, want.map(|w| w.map(str::to_string)), "{value:?}");
            assert!(!req.headers.contains_key("x-peer-uri-san"), "{value:?}");
            assert_eq!(req.headers.get("x-other").map(String::as_str), Some("1"));
        }
    }
}
