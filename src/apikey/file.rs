//! Key files: YAML listing each key's id, digest and who it stands for.
//!
//! ```yaml
//! keys:
//!   - id: k7x2mq9a4z
//!     digest: sha256:3Hq…
//!     principal: transcription-partner
//!     kind: service
//!     scopes: [media.transcripts.write]
//!     not_before: 2026-01-01T00:00:00Z
//!     expires: 2026-04-01T00:00:00Z
//!     description: Acme transcription, ticket SEC-42
//! ```
//!
//! A file holds digests only (see `format.rs` for why SHA-256), so reading it does not
//! give anyone a key. Unknown fields are errors, with `file:line:column`, as in
//! policies: a misspelt `expire:` would otherwise make a key live forever.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::format::{looks_like_key, valid_id, Digest, MAX_ID_CHARS};
use super::store::KeySet;
use crate::principal::PrincipalKind;
use crate::yaml::{self, Location};

/// A key file as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileSpec {
    keys: Vec<KeyEntrySpec>,
}

/// One entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntrySpec {
    id: String,
    digest: String,
    principal: String,
    kind: Option<PrincipalKind>,
    scopes: Option<Vec<String>>,
    not_before: Option<String>,
    expires: Option<String>,
    description: Option<String>,
}

/// One key, compiled: what a valid key proves about its caller.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyEntry {
    /// The key id (not secret).
    pub id: String,
    /// The digest of the key's id and secret.
    pub digest: Digest,
    /// The principal id the key stands for.
    pub principal: String,
    /// The principal's kind; default `service`.
    pub kind: PrincipalKind,
    /// Scopes the key grants.
    pub scopes: Vec<String>,
    /// Not valid before this time (since the epoch).
    pub not_before: Option<Duration>,
    /// Not valid at or after this time (since the epoch); `None`: never expires.
    pub expires: Option<Duration>,
    /// Who the key is for and why, for people.
    pub description: Option<String>,
}

/// One problem in a key file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct KeyFileError {
    /// `file:line:column`, or the file alone.
    pub location: Location,
    /// What is wrong, naming the bad value (never a secret: files hold none).
    pub message: String,
}

/// Every problem found in a key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFileErrors(pub Vec<KeyFileError>);

impl fmt::Display for KeyFileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for KeyFileErrors {}

/// Reads and compiles the key file at `path`.
pub fn load(path: &Path) -> Result<KeySet, KeyFileErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        KeyFileErrors(vec![KeyFileError {
            location: Location::file_only(path),
            message: format!("cannot read key file: {e}"),
        }])
    })?;
    parse(&text, path)
}

/// Compiles a key file's text (`path` names it in errors).
pub fn parse(text: &str, path: &Path) -> Result<KeySet, KeyFileErrors> {
    let spec: KeyFileSpec = yaml::from_str(text, path).map_err(|e| {
        KeyFileErrors(vec![KeyFileError {
            location: e.location,
            message: e.message,
        }])
    })?;
    let mut errors = Vec::new();
    let mut entries: HashMap<Box<str>, Arc<KeyEntry>> = HashMap::with_capacity(spec.keys.len());
    let mut from = 0;
    for (index, entry) in spec.keys.into_iter().enumerate() {
        // Each entry's errors point into its own part of the file.
        let start = yaml::find_value(text, "id", &entry.id, from).unwrap_or(from);
        from = start + 1;
        let mut error = |field: &str, value: &str, message: String| {
            let at = yaml::find_value(text, field, value, start).unwrap_or(start);
            errors.push(KeyFileError {
                location: Location::new(path, yaml::position(text, at)),
                message,
            });
        };
        let id = entry.id.clone();
        // An invalid id is never repeated (nor a digest, see format.rs): `apikey new`
        // prints the key just above the entry, and a key pasted into `id:` would
        // otherwise reach the logs on every reload. The entry is named by position.
        let name = if valid_id(&id) {
            format!("key {id:?}")
        } else {
            format!("keys[{index}]")
        };
        if looks_like_key(&id) {
            error(
                "id",
                &id,
                format!("{name}: this is an API key, not a key id (the key is not shown): the id is the part between hwk_ and the next _; if this file was committed or shared, revoke the key and issue a new one"),
            );
        } else if !valid_id(&id) {
            error(
                "id",
                &id,
                format!("{name}: invalid key id (1 to {MAX_ID_CHARS} characters of a-z, 0-9 and -; the value is not shown)"),
            );
        } else if entries.contains_key(id.as_str()) {
            error("id", &id, format!("duplicate key id {id:?}"));
        }
        let digest = Digest::parse(&entry.digest)
            .map_err(|e| error("digest", &entry.digest, format!("{name}: {e}")))
            .ok();
        if entry.principal.trim().is_empty() {
            error(
                "principal",
                &entry.principal,
                format!("{name}: empty principal"),
            );
        }
        let scopes = entry.scopes.unwrap_or_default();
        for s in scopes
            .iter()
            .filter(|s| s.trim().is_empty() || s.contains(' '))
        {
            error("scopes", s, format!("{name}: invalid scope {s:?}"));
        }
        let mut time = |field: &str, value: &Option<String>| -> Option<Duration> {
            let value = value.as_deref()?;
            match parse_time(value) {
                Ok(t) => Some(t),
                Err(()) => {
                    let message = format!(
                        "{name}: invalid {field} {value:?} (want an RFC 3339 UTC time such as 2026-01-31T00:00:00Z)"
                    );
                    error(field, value, message);
                    None
                }
            }
        };
        let not_before = time("not_before", &entry.not_before);
        let expires = time("expires", &entry.expires);
        if let (Some(nb), Some(exp)) = (not_before, expires) {
            if exp <= nb {
                let value = entry.expires.as_deref().unwrap_or_default();
                error(
                    "expires",
                    value,
                    format!("{name}: expires is not after not_before"),
                );
            }
        }
        if let Some(digest) = digest {
            entries.insert(
                id.clone().into(),
                Arc::new(KeyEntry {
                    id,
                    digest,
                    principal: entry.principal,
                    kind: entry.kind.unwrap_or(PrincipalKind::Service),
                    scopes,
                    not_before,
                    expires,
                    description: entry.description,
                }),
            );
        }
    }
    if errors.is_empty() {
        Ok(KeySet::new(entries))
    } else {
        Err(KeyFileErrors(errors))
    }
}

/// Seconds since the epoch of an RFC 3339 UTC time.
fn parse_time(value: &str) -> Result<Duration, ()> {
    let t = humantime::parse_rfc3339(value).map_err(|_| ())?;
    t.duration_since(UNIX_EPOCH).map_err(|_| ())
}

/// An RFC 3339 UTC time, as key files and listings write it.
pub fn format_time(since_epoch: Duration) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + since_epoch).to_string()
}

/// The entry for a new key as YAML to add under `keys:`.
pub fn entry_yaml(entry: &KeyEntry) -> String {
    // JSON strings are YAML strings: quoting by serde_json keeps any description safe.
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut out = format!(
        "  - id: {}\n    digest: {}\n    principal: {}\n    kind: {}\n",
        entry.id,
        entry.digest,
        q(&entry.principal),
        entry.kind
    );
    if !entry.scopes.is_empty() {
        let scopes: Vec<String> = entry.scopes.iter().map(|s| q(s)).collect();
        out.push_str(&format!("    scopes: [{}]\n", scopes.join(", ")));
    }
    if let Some(t) = entry.not_before {
        out.push_str(&format!("    not_before: {}\n", format_time(t)));
    }
    if let Some(t) = entry.expires {
        out.push_str(&format!("    expires: {}\n", format_time(t)));
    }
    if let Some(d) = &entry.description {
        out.push_str(&format!("    description: {}\n", q(d)));
    }
    out
}

/// Time since the epoch now.
pub fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apikey::format::tests::leaks;
    use crate::apikey::NewKey;

    fn entry_text(id: &str, extra: &str) -> String {
        let key = NewKey::with_id(id.into()).unwrap();
        format!(
            "  - id: {id}\n    digest: {}\n    principal: partner\n{extra}",
            key.digest()
        )
    }

    #[test]
    fn valid_files_compile() {
        let text = format!(
            "keys:\n{}{}",
            entry_text("a1", "    kind: user\n    scopes: [x.read, x.write]\n    not_before: 2026-01-01T00:00:00Z\n    expires: 2026-02-01T00:00:00Z\n    description: \"t\"\n"),
            entry_text("b2", "")
        );
        let set = parse(&text, Path::new("k.yaml")).unwrap();
        assert_eq!(set.len(), 2);
        let a = set.get("a1").unwrap();
        assert_eq!(a.kind, PrincipalKind::User);
        assert_eq!(a.scopes, ["x.read", "x.write"]);
        assert_eq!(a.not_before, Some(Duration::from_secs(1_767_225_600)));
        assert_eq!(
            a.expires.map(format_time).as_deref(),
            Some("2026-02-01T00:00:00Z")
        );
        let b = set.get("b2").unwrap();
        assert_eq!((b.kind, b.expires), (PrincipalKind::Service, None));
        // What `apikey new` prints reads back as the same entry.
        let again = parse(&format!("keys:\n{}", entry_yaml(a)), Path::new("k.yaml")).unwrap();
        assert_eq!(again.get("a1"), Some(a));
    }

    #[test]
    fn errors_name_the_place_and_value() {
        let cases: Vec<(String, &str)> = vec![
            (
                format!(
                    "keys:\n{}",
                    entry_text("a1", "    expire: 2026-01-01T00:00:00Z\n")
                ),
                "k.yaml:5:5: keys[0]: unknown field `expire`",
            ),
            (
                format!("keys:\n{}", entry_text("a1", "    expires: tomorrow\n")),
                "k.yaml:5:14: key \"a1\": invalid expires \"tomorrow\"",
            ),
            (
                format!("keys:\n{}{}", entry_text("a1", ""), entry_text("a1", "")),
                "k.yaml:5:9: duplicate key id \"a1\"",
            ),
            (
                "keys:\n  - id: A1\n    digest: sha256:x\n    principal: p\n".to_string(),
                "k.yaml:2:9: keys[0]: invalid key id (1 to 32",
            ),
            (
                "keys:\n  - id: a1\n    digest: sha256:x\n    principal: p\n".to_string(),
                "k.yaml:3:13: key \"a1\": invalid digest (want sha256:",
            ),
            (
                format!(
                    "keys:\n{}",
                    entry_text(
                        "a1",
                        "    not_before: 2026-02-01T00:00:00Z\n    expires: 2026-01-01T00:00:00Z\n"
                    )
                ),
                "k.yaml:6:14: key \"a1\": expires is not after not_before",
            ),
            (
                format!("keys:\n{}", entry_text("a1", "    scopes: [\"\"]\n")),
                "invalid scope \"\"",
            ),
            ("".to_string(), "k.yaml:1:1:"),
        ];
        for (text, want) in cases {
            let err = parse(&text, Path::new("k.yaml")).unwrap_err().to_string();
            assert!(err.contains(want), "{text}\n got: {err}\nwant: {want}");
        }
    }

    #[test]
    fn a_whole_key_in_id_or_digest_is_named_and_never_shown() {
        let key = NewKey::with_id("k7x2mq9a4z".into()).unwrap();
        let revealed = key.reveal();
        let secret = revealed.rsplit('_').next().unwrap().to_string();
        let good = entry_text("a1", "");
        let cases = [
            // The key pasted into `digest:` (the entry is named by its valid id).
            (
                format!(
                    "keys:\n{good}  - id: k7x2mq9a4z\n    digest: {revealed}\n    principal: p\n"
                ),
                "k.yaml:6:13: key \"k7x2mq9a4z\": this is an API key, not a digest",
            ),
            // The key pasted into `id:` (named by position), with a good digest.
            (
                format!(
                    "keys:\n{good}  - id: {revealed}\n    digest: {}\n    principal: p\n",
                    key.digest()
                ),
                "k.yaml:5:9: keys[1]: this is an API key, not a key id",
            ),
            // Into both: two errors, neither shows it.
            (
                format!("keys:\n  - id: {revealed}\n    digest: {revealed}\n    principal: p\n"),
                "keys[0]: this is an API key, not a digest",
            ),
            // Quoted, upper case: still recognised.
            (
                format!(
                    "keys:\n  - id: \"{}\"\n    digest: sha256:x\n    principal: p\n",
                    revealed.to_uppercase()
                ),
                "keys[0]: this is an API key, not a key id",
            ),
            // A secret alone is not a valid id or digest, and is not shown either.
            (
                format!("keys:\n  - id: {secret}\n    digest: {secret}\n    principal: p\n"),
                "k.yaml:2:9: keys[0]: invalid key id",
            ),
        ];
        for (text, want) in cases {
            let err = parse(&text, Path::new("k.yaml")).unwrap_err().to_string();
            assert!(err.contains(want), "{text}\n got: {err}\nwant: {want}");
            assert!(!leaks(&err, &secret), "{err}");
            if want.contains("API key") {
                assert!(err.contains("revoke the key"), "{err}");
            }
        }
    }
}
