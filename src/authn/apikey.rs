//! API keys on the request path: where a key arrives, which key file it is checked
//! against, and hot reload of those files.
//!
//! A key arrives as `authorization: ApiKey <key>` or in the header a key file is
//! configured with (`api_keys: [{file, header}]`, e.g. `x-api-key`). Never from the
//! query string: URLs end up in access logs, browser history and proxies' caches.
//! A request carrying two credentials (a key and a bearer token, or a key in two
//! places) is refused: which one counts would otherwise depend on the order of checks.

pub mod reload;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Deserialize;

use crate::apikey::file::{self, KeyFileErrors};
use crate::apikey::{KeyEntry, KeyError, KeySet, PresentedKey};
use crate::request::AuthzRequest;

/// One `api_keys` entry in the server config.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySourceSpec {
    /// The key file (relative to the config file's directory).
    pub file: PathBuf,
    /// A header that carries this file's keys, besides `authorization: ApiKey`
    /// (lowercase, e.g. `x-api-key`).
    pub header: Option<String>,
}

impl ApiKeySourceSpec {
    /// What is wrong with the header name, if anything. `peer_header` is the config's
    /// `http_peer_header`, if it names one.
    pub fn problem(&self, peer_header: Option<&str>) -> Option<String> {
        let h = self.header.as_deref()?;
        let token = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
        if h.is_empty() || !h.bytes().all(token) {
            return Some(format!(
                "api_keys: header {h:?} must be a lowercase header name (a-z, 0-9, -)"
            ));
        }
        if peer_header == Some(h) {
            return Some(format!(
                "api_keys: header {h:?} is the http_peer_header, where Envoy puts the mTLS peer; name another header"
            ));
        }
        let why = header_taken(h)?;
        Some(format!(
            "api_keys: header {h:?} {why}; name another header such as x-api-key"
        ))
    }
}

/// Why `name` may not carry API keys: a header whose value something else reads,
/// logs or passes on. A key in `x-request-id` would be written verbatim into every
/// decision log line, one in trace context into every trace.
fn header_taken(name: &str) -> Option<&'static str> {
    const TRACE: &[&str] = &["traceparent", "tracestate", "baggage", "b3"];
    if ["authorization", "cookie", "host", "proxy-authorization"].contains(&name) {
        Some("is reserved (keys in `authorization` use the ApiKey scheme)")
    } else if name == "x-request-id" {
        Some("cannot carry API keys: its value is logged verbatim as the decision log's request_id")
    } else if TRACE.contains(&name) || name.starts_with("x-b3-") {
        Some("cannot carry API keys: it is trace context, which goes into traces and to every upstream")
    } else if name.starts_with("x-envoy-") {
        Some("cannot carry API keys: Envoy sets, reads or removes x-envoy- headers itself")
    } else if name.starts_with(crate::request::OWN_HEADER_PREFIX) {
        Some("cannot carry API keys: hopwarden writes x-hopwarden- headers for the upstream")
    } else {
        None
    }
}

/// The `authorization` scheme for API keys.
const SCHEME: &str = "apikey";

/// A key file and its last good keys.
struct Source {
    file: PathBuf,
    header: Option<String>,
    keys: ArcSwap<KeySet>,
}

/// Every configured key file, each with its last good key set.
#[derive(Default)]
pub struct ApiKeys {
    sources: Vec<Source>,
    /// The configured headers, sorted, each once.
    headers: Vec<String>,
    /// Increases whenever any file's keys change; part of the decision cache key, so
    /// a revoked key's cached allow is never found again.
    generation: AtomicU64,
}

/// A key found in a request, before it is checked.
#[derive(Debug, Clone, Copy)]
pub struct Found<'r> {
    /// The whole key as sent.
    pub key: &'r str,
    /// The configured header it came in; `None`: `authorization: ApiKey`.
    pub header: Option<&'r str>,
}

impl ApiKeys {
    /// Loads every key file; any invalid file is an error (the server does not start).
    pub fn load(specs: &[ApiKeySourceSpec]) -> Result<Self, KeyFileErrors> {
        let mut sources = Vec::with_capacity(specs.len());
        let mut errors = Vec::new();
        for spec in specs {
            match file::load(&spec.file) {
                Ok(keys) => sources.push(Source {
                    file: spec.file.clone(),
                    header: spec.header.clone(),
                    keys: ArcSwap::from_pointee(keys),
                }),
                Err(e) => errors.extend(e.0),
            }
        }
        if !errors.is_empty() {
            return Err(KeyFileErrors(errors));
        }
        let mut headers: Vec<String> = specs.iter().filter_map(|s| s.header.clone()).collect();
        headers.sort_unstable();
        headers.dedup();
        Ok(ApiKeys {
            sources,
            headers,
            generation: AtomicU64::new(1),
        })
    }

    /// Whether any key file is configured.
    pub fn is_configured(&self) -> bool {
        !self.sources.is_empty()
    }

    /// The key files.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        self.sources.iter().map(|s| &s.file)
    }

    /// The configured key headers (each once), which the decision cache key covers and
    /// Envoy's `allowed_headers` must keep.
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// What the decision cache key reads of the keys: their generation and headers.
    pub fn cache_inputs(&self) -> crate::cache::KeyInputs<'_> {
        crate::cache::KeyInputs {
            generation: self.generation(),
            headers: &self.headers,
        }
    }

    /// Changes whenever any file's keys change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Re-reads every key file. A file that is now invalid keeps its last good keys;
    /// its errors (with `file:line:column`) are returned. Returns each file's outcome.
    pub fn reload(&self) -> Vec<(PathBuf, Result<usize, KeyFileErrors>)> {
        let mut changed = false;
        let mut out = Vec::with_capacity(self.sources.len());
        for source in &self.sources {
            match file::load(&source.file) {
                Ok(keys) => {
                    let n = keys.len();
                    let old = source.keys.load();
                    if !same_keys(&old, &keys) {
                        source.keys.store(Arc::new(keys));
                        changed = true;
                    }
                    out.push((source.file.clone(), Ok(n)));
                }
                Err(e) => out.push((source.file.clone(), Err(e))),
            }
        }
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        out
    }

    /// The key the request carries, if any; an error when it carries two credentials.
    pub fn find<'r>(&self, req: &'r AuthzRequest) -> Result<Option<Found<'r>>, KeyError> {
        let authorization = req.header("authorization");
        let mut found = authorization
            .and_then(api_key_scheme)
            .map(|key| Found { key, header: None });
        for name in &self.headers {
            let Some(value) = req.header(name) else {
                continue;
            };
            if found.is_some() || authorization.is_some() {
                return Err(KeyError::TwoCredentials);
            }
            // The header name is borrowed from the request's map, not from us.
            let header = req.headers.get_key_value(name).map(|(k, _)| k.as_str());
            found = Some(Found {
                key: value.trim_matches(' '),
                header,
            });
        }
        Ok(found)
    }

    /// The entry a found key is, valid at `now` (time since the epoch). Only files that
    /// accept keys where it was found are consulted (a handful: the cost does not
    /// grow with the number of keys).
    pub fn verify(&self, found: Found<'_>, now: Duration) -> Result<Arc<KeyEntry>, KeyError> {
        let presented = PresentedKey::parse(found.key).map_err(|_| KeyError::Malformed)?;
        let mut result = Err(KeyError::UnknownId);
        for source in &self.sources {
            if found.header.is_some() && found.header != source.header.as_deref() {
                continue;
            }
            let keys = source.keys.load();
            if keys.get(presented.id).is_some() {
                result = keys.verify_presented(&presented, now);
                break;
            }
        }
        result
    }

    /// The id of the key a request presents, if its form is valid (ids are not
    /// secret): for decision logs, which name the key even when it was refused.
    pub fn presented_id<'r>(&self, req: &'r AuthzRequest) -> Option<&'r str> {
        let found = self.find(req).ok()??;
        PresentedKey::parse(found.key).ok().map(|k| k.id)
    }
}

/// Whether two sets hold the same entries (a reload that changed nothing keeps the
/// decision cache).
fn same_keys(a: &KeySet, b: &KeySet) -> bool {
    a.len() == b.len()
        && a.entries()
            .iter()
            .all(|e| b.get(&e.id).is_some_and(|o| o == *e))
}

/// The key from `authorization: ApiKey <key>`, if that is the scheme.
fn api_key_scheme(header: &str) -> Option<&str> {
    let (scheme, key) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case(SCHEME)
        .then(|| key.trim_matches(' '))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apikey::NewKey;

    fn request(headers: &[(&str, &str)]) -> AuthzRequest {
        let mut req = AuthzRequest::default();
        for (k, v) in headers {
            req.headers.insert(k.to_string(), v.to_string());
        }
        req
    }

    fn keys(dir: &std::path::Path, header: Option<&str>, key: &NewKey, extra: &str) -> ApiKeys {
        let file = dir.join("keys.yaml");
        let text = format!(
            "keys:\n  - id: {}\n    digest: {}\n    principal: partner\n{extra}",
            key.id,
            key.digest()
        );
        std::fs::write(&file, text).unwrap();
        ApiKeys::load(&[ApiKeySourceSpec {
            file,
            header: header.map(String::from),
        }])
        .unwrap()
    }

    #[test]
    fn where_a_key_may_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let key = NewKey::generate().unwrap();
        let keys = keys(dir.path(), Some("x-api-key"), &key, "");
        let k = key.reveal();
        let now = Duration::from_secs(1);
        let scheme = format!("ApiKey {k}");
        let lower = format!("apikey  {k} ");
        let bearer = format!("Bearer {k}");
        // (headers, Ok(found in header) | Err)
        type Case<'a> = (
            Vec<(&'a str, &'a str)>,
            Result<Option<Option<&'a str>>, KeyError>,
        );
        let cases: Vec<Case> = vec![
            (vec![("authorization", &scheme)], Ok(Some(None))),
            (vec![("authorization", &lower)], Ok(Some(None))),
            (vec![("x-api-key", &k)], Ok(Some(Some("x-api-key")))),
            (vec![("x-other-key", &k)], Ok(None)),
            (vec![("authorization", &bearer)], Ok(None)),
            (vec![], Ok(None)),
            (
                vec![("authorization", &scheme), ("x-api-key", &k)],
                Err(KeyError::TwoCredentials),
            ),
            (
                vec![("authorization", "Bearer a.b.c"), ("x-api-key", &k)],
                Err(KeyError::TwoCredentials),
            ),
        ];
        for (headers, want) in cases {
            let req = request(&headers);
            let got = keys.find(&req).map(|f| f.map(|f| f.header));
            assert_eq!(got, want, "{headers:?}");
            if let Ok(Some(found)) = keys.find(&req) {
                assert_eq!(keys.verify(found, now).unwrap().principal, "partner");
                assert_eq!(keys.presented_id(&req), Some(key.id.as_str()));
            }
        }
    }

    #[test]
    fn a_header_only_reaches_its_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = NewKey::generate().unwrap();
        // This file takes keys in `authorization: ApiKey` only.
        let keys = keys(dir.path(), None, &key, "");
        let found = Found {
            key: &key.reveal(),
            header: Some("x-api-key"),
        };
        assert_eq!(
            keys.verify(found, Duration::ZERO).unwrap_err(),
            KeyError::UnknownId
        );
    }

    #[test]
    fn reload_keeps_the_last_good_keys_and_counts_changes() {
        let dir = tempfile::tempdir().unwrap();
        let key = NewKey::generate().unwrap();
        let keys = keys(dir.path(), None, &key, "");
        let found = Found {
            key: &key.reveal(),
            header: None,
        };
        let now = Duration::from_secs(1);
        assert!(keys.verify(found, now).is_ok());
        let g = keys.generation();
        assert!(keys.reload()[0].1.is_ok());
        assert_eq!(keys.generation(), g, "nothing changed");
        let file = dir.path().join("keys.yaml");
        std::fs::write(&file, "keys: [{id: x, bad: 1}]\n").unwrap();
        let errors = keys.reload().remove(0).1.unwrap_err().to_string();
        assert!(errors.contains("keys.yaml:1:"), "{errors}");
        assert!(keys.verify(found, now).is_ok(), "the last good keys serve");
        assert_eq!(keys.generation(), g);
        std::fs::write(&file, "keys: []\n").unwrap();
        assert_eq!(keys.reload()[0].1.as_ref().ok(), Some(&0));
        assert_eq!(keys.verify(found, now).unwrap_err(), KeyError::UnknownId);
        assert!(keys.generation() > g);
    }

    #[test]
    fn header_names_are_checked() {
        let spec = |h: &str| ApiKeySourceSpec {
            file: "k".into(),
            header: Some(h.into()),
        };
        let peer = Some("x-peer-uri");
        for (h, want) in [
            ("x-api-key", None),
            ("x-partner-key", None),
            ("x-b3", None),
            ("X-Api-Key", Some("must be a lowercase header name")),
            ("", Some("must be a lowercase header name")),
            ("x api", Some("must be a lowercase header name")),
            ("authorization", Some("is reserved")),
            ("proxy-authorization", Some("is reserved")),
            ("cookie", Some("is reserved")),
            ("host", Some("is reserved")),
            (
                "x-request-id",
                Some("logged verbatim as the decision log's request_id"),
            ),
            ("traceparent", Some("trace context")),
            ("tracestate", Some("trace context")),
            ("baggage", Some("trace context")),
            ("b3", Some("trace context")),
            ("x-b3-traceid", Some("trace context")),
            ("x-b3-spanid", Some("trace context")),
            ("x-b3-sampled", Some("trace context")),
            (
                "x-envoy-original-path",
                Some("cannot carry API keys: Envoy sets, reads or removes"),
            ),
            (
                "x-envoy-peer-metadata",
                Some("cannot carry API keys: Envoy sets, reads or removes"),
            ),
            ("x-hopwarden-key", Some("hopwarden writes")),
            ("x-hopwarden-principal", Some("hopwarden writes")),
            ("x-peer-uri", Some("is the http_peer_header")),
        ] {
            let got = spec(h).problem(peer);
            match (want, &got) {
                (None, None) => {}
                (Some(want), Some(got)) => {
                    assert!(
                        got.contains(want) && got.contains(&format!("{h:?}")),
                        "{h}: {got}"
                    );
                }
                _ => panic!("{h}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(spec("x-peer-uri").problem(None), None);
    }

    #[test]
    fn a_reload_that_replaces_a_key_by_another_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let key = NewKey::generate().unwrap();
        let keys = keys(dir.path(), None, &key, "");
        let g = keys.generation();
        // As many entries as before, none the same: the old key is revoked.
        let other = NewKey::generate().unwrap();
        let text = format!(
            "keys:\n  - id: {}\n    digest: {}\n    principal: partner\n",
            other.id,
            other.digest()
        );
        std::fs::write(dir.path().join("keys.yaml"), text).unwrap();
        assert_eq!(keys.reload()[0].1.as_ref().ok(), Some(&1));
        assert!(keys.generation() > g);
        let found = |k: &str| {
            keys.verify(
                Found {
                    key: k,
                    header: None,
                },
                Duration::from_secs(1),
            )
        };
        assert_eq!(found(&key.reveal()).unwrap_err(), KeyError::UnknownId);
        assert!(found(&other.reveal()).is_ok());
    }

    #[test]
    fn what_the_server_and_the_decision_cache_read_of_the_key_files() {
        assert!(!ApiKeys::default().is_configured());
        let dir = tempfile::tempdir().unwrap();
        let spec = |name: &str, header: Option<&str>| {
            let file = dir.path().join(name);
            std::fs::write(&file, "keys: []\n").unwrap();
            ApiKeySourceSpec {
                file,
                header: header.map(String::from),
            }
        };
        let specs = [
            spec("a.yaml", Some("x-partner-key")),
            spec("b.yaml", None),
            spec("c.yaml", Some("x-api-key")),
            spec("d.yaml", Some("x-partner-key")),
        ];
        let keys = ApiKeys::load(&specs).unwrap();
        assert!(keys.is_configured());
        let files: Vec<&PathBuf> = keys.files().collect();
        assert_eq!(files, specs.iter().map(|s| &s.file).collect::<Vec<_>>());
        // Each header once, sorted.
        assert_eq!(keys.headers(), ["x-api-key", "x-partner-key"]);
        let inputs = keys.cache_inputs();
        assert_eq!(inputs.generation, keys.generation());
        assert_eq!(inputs.headers, keys.headers());
    }
}
