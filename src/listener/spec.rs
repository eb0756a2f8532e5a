//! The `listeners:` block of the server config: bounds every listener (gRPC, the HTTP
//! service, admin) shares, and their optional mTLS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Bounds on every listener, and their TLS (`listeners:` in the config).
///
/// Envoy's checks are a few KB and its connections few and long-lived: the defaults
/// leave it ample room and keep what any other peer can hold small (docs/security.md).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenersSpec {
    /// Open connections per listener; past it new ones are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// From accept to the first request's headers (TLS handshake and HTTP/2 preface
    /// included); a connection that has not sent one by then is closed.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    #[schemars(with = "crate::schema::HumanDuration")]
    pub handshake_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2 GOAWAY).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    #[schemars(with = "crate::schema::HumanDuration")]
    pub idle_timeout: Duration,
    /// The largest request accepted: a gRPC check message, and the header block of
    /// any request. Raise it only with Envoy's `with_request_body`.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Request bytes held at once, all listeners together; past it new checks are
    /// refused (gRPC RESOURCE_EXHAUSTED, HTTP 503), never allowed.
    #[serde(default = "default_request_bytes_in_flight")]
    pub request_bytes_in_flight: usize,
    /// How long a request body may take to arrive once its headers have.
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    #[schemars(with = "crate::schema::HumanDuration")]
    pub body_timeout: Duration,
    /// mTLS on every listener; plain TCP when absent.
    #[serde(default)]
    pub tls: Option<TlsSpec>,
}

impl Default for ListenersSpec {
    fn default() -> Self {
        ListenersSpec {
            max_connections: default_max_connections(),
            handshake_timeout: default_handshake_timeout(),
            idle_timeout: default_idle_timeout(),
            max_request_bytes: default_max_request_bytes(),
            request_bytes_in_flight: default_request_bytes_in_flight(),
            body_timeout: default_body_timeout(),
            tls: None,
        }
    }
}

/// Server certificate, client CA and the client identities let in.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// The server certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA(s) client certificates must chain to (PEM).
    pub client_ca: PathBuf,
    /// Client certificates with one of these URI SANs (SPIFFE IDs) are let in.
    #[serde(default)]
    pub allowed_spiffe_ids: Vec<String>,
    /// Client certificates with one of these DNS SANs are let in.
    #[serde(default)]
    pub allowed_dns_names: Vec<String>,
    /// How often the three files are re-read; a change is loaded without a restart.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    #[schemars(with = "crate::schema::HumanDuration")]
    pub reload_interval: Duration,
}

impl ListenersSpec {
    /// Resolves relative paths against `base` (the config file's directory).
    pub fn resolve(&mut self, base: &Path) {
        if let Some(tls) = &mut self.tls {
            for path in [&mut tls.cert, &mut tls.key, &mut tls.client_ca] {
                *path = base.join(&*path);
            }
        }
    }

    /// What is wrong with the values: (a word to find in the file, the message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.max_connections == 0 {
            out.push((
                "max_connections",
                "listeners.max_connections must be at least 1".into(),
            ));
        }
        for (key, value) in [
            ("handshake_timeout", self.handshake_timeout),
            ("idle_timeout", self.idle_timeout),
            ("body_timeout", self.body_timeout),
        ] {
            if value < Duration::from_millis(10) {
                out.push((key, format!("listeners.{key} {value:?} is below 10ms")));
            }
        }
        // Envoy's smallest checks (gRPC, a handful of headers) are about 1 KB.
        if self.max_request_bytes < 1024 {
            out.push((
                "max_request_bytes",
                format!(
                    "listeners.max_request_bytes {} is below 1024",
                    self.max_request_bytes
                ),
            ));
        }
        // The prefix of a gRPC message is a u32 length; HTTP/2 windows are 31 bits.
        if self.max_request_bytes > (1 << 30) {
            out.push((
                "max_request_bytes",
                format!(
                    "listeners.max_request_bytes {} is above 1 GiB",
                    self.max_request_bytes
                ),
            ));
        }
        if self.request_bytes_in_flight < self.max_request_bytes {
            out.push((
                "request_bytes_in_flight",
                format!(
                    "listeners.request_bytes_in_flight {} is below max_request_bytes {}: \
                     no request could be read",
                    self.request_bytes_in_flight, self.max_request_bytes
                ),
            ));
        }
        if let Some(tls) = &self.tls {
            if tls.allowed_spiffe_ids.is_empty() && tls.allowed_dns_names.is_empty() {
                // Any certificate the CA ever signed would do: in a mesh CA, every workload.
                out.push((
                    "tls",
                    "listeners.tls needs allowed_spiffe_ids or allowed_dns_names".into(),
                ));
            }
            for id in &tls.allowed_spiffe_ids {
                if id.parse::<crate::principal::SpiffeId>().is_err() {
                    out.push((
                        "allowed_spiffe_ids",
                        format!("listeners.tls.allowed_spiffe_ids: {id:?} is not a SPIFFE ID"),
                    ));
                }
            }
            if tls.reload_interval < Duration::from_secs(1) {
                out.push((
                    "reload_interval",
                    format!(
                        "listeners.tls.reload_interval {:?} is below 1s",
                        tls.reload_interval
                    ),
                ));
            }
        }
        out
    }
}

fn default_max_connections() -> usize {
    1024
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_max_request_bytes() -> usize {
    64 * 1024
}
fn default_request_bytes_in_flight() -> usize {
    64 * 1024 * 1024
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}
