//! The domain form of a check: what Envoy asked, with no protobuf in sight.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// Where in the estate the check happens; rules can require one with `when.hop`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Hop {
    /// North-south: the edge gateway.
    Gateway,
    /// East-west: a sidecar in front of a service.
    Mesh,
}

impl Hop {
    /// The lowercase name used in config and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Hop::Gateway => "gateway",
            Hop::Mesh => "mesh",
        }
    }
}

impl fmt::Display for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Hop {
    type Err = RequestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gateway" => Ok(Hop::Gateway),
            "mesh" => Ok(Hop::Mesh),
            other => Err(RequestError::Hop(other.to_string())),
        }
    }
}

/// Why a request cannot be evaluated at all; each is a clean deny, never an allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// `context_extensions["hop"]` is neither `gateway` nor `mesh`.
    #[error("unknown hop {0:?}")]
    Hop(String),
    /// The path has dot-segments, `//`, an encoded `/` or `\`, a `#`, or bad escapes.
    #[error("non-canonical path")]
    NonCanonicalPath,
    /// The method is not an upper-case HTTP method token.
    #[error("method {0:?} is not an upper-case HTTP method")]
    Method(String),
}

/// A check request as the engine sees it.
///
/// `headers` keys are lowercase, as Envoy sends them (HTTP/2 and Envoy's header map
/// both normalise names to lowercase).
#[derive(Clone, Default)]
pub struct AuthzRequest {
    /// `context_extensions["service"]`, when Envoy set one.
    pub service: Option<String>,
    /// `context_extensions["hop"]`, when Envoy set one.
    pub hop: Option<String>,
    /// HTTP method.
    pub method: String,
    /// The `:path` as received, query included.
    pub path: String,
    /// The `:authority`.
    pub host: String,
    /// Request headers, lowercase names.
    pub headers: HashMap<String, String>,
    /// `attributes.source.principal`: the mTLS peer's URI SAN, if any.
    pub source_principal: Option<String>,
    /// `attributes.destination.principal`: the local certificate's URI SAN, if any.
    pub destination_principal: Option<String>,
}

/// Headers hopwarden reads whatever its policies say: the bearer token, the content
/// type (a gRPC request's `to` methods) and the request id (decision log).
pub const OWN_INPUT_HEADERS: [&str; 3] = ["authorization", "content-type", "x-request-id"];

/// The prefix of the headers hopwarden sets. Client copies are read so that an allow
/// can remove them.
pub const OWN_HEADER_PREFIX: &str = "x-hopwarden-";

/// Headers whose values are credentials: never printed, even in debug output. API
/// keys arrive in headers the config names, which a request does not carry, so any
/// value that looks like a key (`hwk_…`) is hidden too, whatever its header.
const SECRET_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

impl fmt::Debug for AuthzRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: std::collections::BTreeMap<&str, &str> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let secret = SECRET_HEADERS.contains(&k.as_str())
                    || crate::apikey::format::looks_like_key(v);
                let shown = if secret { "<redacted>" } else { v.as_str() };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("AuthzRequest")
            .field("service", &self.service)
            .field("hop", &self.hop)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("host", &self.host)
            .field("headers", &headers)
            .field("source_principal", &self.source_principal)
            .field("destination_principal", &self.destination_principal)
            .finish()
    }
}

impl AuthzRequest {
    /// A header value by lowercase name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The hop `context_extensions` name; `mesh` when Envoy sent none. The engine asks
    /// [`crate::resolve::ServiceResolver::hop`], which also knows gateway identities.
    pub fn hop(&self) -> Result<Hop, RequestError> {
        match self.hop.as_deref() {
            None | Some("") => Ok(Hop::Mesh),
            Some(h) => h.parse(),
        }
    }

    /// The canonical action: method, decoded path without query, and the gRPC method
    /// when the request is gRPC.
    pub fn action(&self) -> Result<Action, RequestError> {
        check_method(&self.method)?;
        let path = canonical_path(&self.path)?;
        let is_grpc = self.header("content-type").is_some_and(|ct| {
            ct.get(..16)
                .is_some_and(|p| p.eq_ignore_ascii_case("application/grpc"))
        });
        let grpc = if is_grpc { grpc_method(&path) } else { None };
        Ok(Action {
            method: self.method.clone(),
            path,
            grpc,
        })
    }
}

/// A method is matched as sent, so it must be sent as rules name it: an RFC 9110 token
/// with no lower-case letter. `get` is refused, not upper-cased: methods are
/// case-sensitive (RFC 9110 9.1), and an upstream may route `get` differently from
/// `GET` (Envoy itself refuses it).
fn check_method(method: &str) -> Result<(), RequestError> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if method.is_empty() || !method.bytes().all(|b| tchar(b) && !b.is_ascii_lowercase()) {
        return Err(RequestError::Method(method.to_string()));
    }
    Ok(())
}

/// What the caller wants to do: the part of a request that `to` clauses match.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Action {
    /// Uppercase HTTP method.
    pub method: String,
    /// Canonical path: percent-decoded, no query, no dot-segments, no trailing `/`.
    pub path: String,
    /// `pkg.Service/Method` for gRPC requests.
    pub grpc: Option<String>,
}

/// The path a rule is matched against.
///
/// Strips the query, then decodes percent-escapes so that `/%61dmin` cannot slip past
/// a rule on `/admin`. Anything that another component could read differently is
/// refused rather than normalised: a `#` (a fragment is never sent in a request
/// target, RFC 9112 3.2; whoever sends one means something by it), dot-segments (RFC 3986 5.2.4),
/// empty segments (`//`), encoded `/` or `\` (the upstream may or may not decode them),
/// a raw `\`, control characters, bad escapes and non-UTF-8.
pub fn canonical_path(raw: &str) -> Result<String, RequestError> {
    if raw.contains('#') {
        return Err(RequestError::NonCanonicalPath);
    }
    let end = raw.find('?').unwrap_or(raw.len());
    let raw = &raw[..end];
    if !raw.starts_with('/') {
        return Err(RequestError::NonCanonicalPath);
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or(RequestError::NonCanonicalPath)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(RequestError::NonCanonicalPath);
            }
            let s = std::str::from_utf8(hex).map_err(|_| RequestError::NonCanonicalPath)?;
            let decoded = u8::from_str_radix(s, 16).map_err(|_| RequestError::NonCanonicalPath)?;
            if decoded == b'/' || decoded == b'\\' || decoded == b'%' {
                return Err(RequestError::NonCanonicalPath);
            }
            out.push(decoded);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    let path = String::from_utf8(out).map_err(|_| RequestError::NonCanonicalPath)?;
    // `;` starts path parameters that Tomcat, Jetty and Spring strip per segment
    // (`/a/..;/admin` is `/admin` to them): refused, like every other ambiguity.
    if path
        .chars()
        .any(|c| c == '\\' || c == ';' || c.is_control())
    {
        return Err(RequestError::NonCanonicalPath);
    }
    // One trailing slash is dropped so `/admin/` meets the same rules as `/admin`
    // (most upstream routers treat them alike); any other empty segment is refused.
    let path = match path.strip_suffix('/') {
        Some(p) if !p.is_empty() => p.to_string(),
        _ => path,
    };
    if path != "/"
        && path[1..]
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(RequestError::NonCanonicalPath);
    }
    Ok(path)
}

/// `/pkg.Service/Method` -> `pkg.Service/Method` (gRPC over HTTP/2 path form).
fn grpc_method(path: &str) -> Option<String> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some(rest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths() {
        let cases: &[(&str, Option<&str>)] = &[
            ("/", Some("/")),
            ("/transactions/42", Some("/transactions/42")),
            ("/transactions/42?x=1&y=/../admin", Some("/transactions/42")),
            ("/a#frag", None),
            ("/a#", None),
            ("/a?x=1#frag", None),
            ("/a#/../admin", None),
            ("/a%23b", Some("/a#b")),
            ("/a/", Some("/a")),
            ("/a/?q", Some("/a")),
            ("/a//", None),
            ("/%61dmin", Some("/admin")),
            ("/a%20b", Some("/a b")),
            ("/a/../admin", None),
            ("/a/./b", None),
            ("/..", None),
            ("/.", None),
            ("//admin", None),
            ("/a//b", None),
            ("/a%2Fb", None),
            ("/a%2fb", None),
            ("/a%5Cb", None),
            ("/a\\b", None),
            ("/%2e%2e/admin", None),
            ("/%2E/admin", None),
            ("/a%", None),
            ("/a%zz", None),
            ("/a%00", None),
            ("/%ff", None),
            ("/a%2525", None),
            ("/a/..;/b", None),
            ("/a/.;/b", None),
            ("/a/%2e%2e;/b", None),
            ("/admin;x", None),
            ("/a%3bb", None),
            ("/a%+f", None),
            ("/a%-1", None),
            ("admin", None),
            ("", None),
            ("*", None),
        ];
        for (raw, want) in cases {
            assert_eq!(canonical_path(raw).ok().as_deref(), *want, "{raw:?}");
        }
    }

    #[test]
    fn methods_are_matched_as_sent_or_refused() {
        let cases: &[(&str, bool)] = &[
            ("GET", true),
            ("POST", true),
            ("M-SEARCH", true),
            ("PROPFIND", true),
            ("get", false),
            ("Get", false),
            ("gET", false),
            ("", false),
            ("GE T", false),
            ("GET\n", false),
            ("GÉT", false),
            ("GET/", false),
        ];
        for (method, ok) in cases {
            let req = AuthzRequest {
                method: method.to_string(),
                path: "/a".into(),
                ..Default::default()
            };
            match req.action() {
                Ok(action) => {
                    assert!(ok, "{method:?} accepted");
                    assert_eq!(action.method, *method);
                }
                Err(e) => {
                    assert!(!ok, "{method:?} refused");
                    assert_eq!(e, RequestError::Method(method.to_string()));
                }
            }
        }
    }

    #[test]
    fn grpc_action() {
        let mut req = AuthzRequest {
            method: "POST".into(),
            path: "/ledger.v1.Ledger/Get".into(),
            ..Default::default()
        };
        assert_eq!(req.action().unwrap().grpc, None);
        req.headers
            .insert("content-type".into(), "Application/GRPC+proto".into());
        let action = req.action().unwrap();
        assert_eq!(action.grpc.as_deref(), Some("ledger.v1.Ledger/Get"));
        assert_eq!(action.method, "POST");
    }

    #[test]
    fn debug_output_redacts_credentials() {
        let mut req = AuthzRequest::default();
        req.headers
            .insert("authorization".into(), "Bearer secret-token".into());
        req.headers.insert("cookie".into(), "session=secret".into());
        req.headers.insert("x-tenant".into(), "acme".into());
        // An API key in whatever header the config named for it.
        req.headers
            .insert("x-partner-key".into(), "hwk_abc_secretsecret".into());
        let shown = format!("{req:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(
            shown.contains("\"x-partner-key\": \"<redacted>\""),
            "{shown}"
        );
        assert!(shown.contains("acme"));
    }

    #[test]
    fn hops() {
        let mut req = AuthzRequest::default();
        assert_eq!(req.hop(), Ok(Hop::Mesh));
        req.hop = Some("gateway".into());
        assert_eq!(req.hop(), Ok(Hop::Gateway));
        req.hop = Some("edge".into());
        assert!(req.hop().is_err());
    }

    #[test]
    fn hops_read_and_show_lowercase() {
        for (hop, name) in [(Hop::Gateway, "gateway"), (Hop::Mesh, "mesh")] {
            assert_eq!(hop.as_str(), name);
            assert_eq!(hop.to_string(), name);
            assert_eq!(name.parse::<Hop>(), Ok(hop));
        }
        assert_eq!("Mesh".parse::<Hop>(), Err(RequestError::Hop("Mesh".into())));
    }

    #[test]
    fn grpc_methods_from_paths() {
        // Exactly `/service/method`, both non-empty: anything else is no gRPC method.
        let cases: &[(&str, Option<&str>)] = &[
            ("/ledger.v1.Ledger/Get", Some("ledger.v1.Ledger/Get")),
            ("/ledger.v1.Ledger/Get/x", None),
            ("/ledger.v1.Ledger", None),
            ("/ledger.v1.Ledger/", None),
            ("//Get", None),
            ("/", None),
            ("ledger.v1.Ledger/Get", None),
        ];
        for (path, want) in cases {
            assert_eq!(grpc_method(path).as_deref(), *want, "{path}");
        }
    }
}
