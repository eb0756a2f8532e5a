//! Which entry a presented key is, and whether it is valid now.
//!
//! The id finds the entry in a hash map (the cost does not grow with the number of
//! keys); the secret's digest is then compared in constant time. Whether an id exists
//! is not hidden (ids are not secret: logs and headers name them); the secret is.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::file::KeyEntry;
use super::format::PresentedKey;

/// Why a presented key is not a credential; every case is a 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not `hwk_<id>_<secret>`.
    #[error("malformed API key")]
    Malformed,
    /// No entry has this id (never issued, or revoked by removing its entry).
    #[error("unknown API key id")]
    UnknownId,
    /// The entry exists but the secret does not match its digest.
    #[error("API key secret does not match")]
    BadSecret,
    /// The entry's `expires` has passed.
    #[error("API key expired")]
    Expired,
    /// The entry's `not_before` has not come yet.
    #[error("API key not yet valid")]
    NotYetValid,
    /// The request carries a key and another credential (or two keys).
    #[error("more than one credential")]
    TwoCredentials,
}

impl KeyError {
    /// The short name decision logs show as the deny detail.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyError::Malformed => "api_key_malformed",
            KeyError::UnknownId => "api_key_unknown",
            KeyError::BadSecret => "api_key_bad_secret",
            KeyError::Expired => "api_key_expired",
            KeyError::NotYetValid => "api_key_not_yet_valid",
            KeyError::TwoCredentials => "two_credentials",
        }
    }
}

/// The keys of one key file, by id.
#[derive(Debug, Default, Clone)]
pub struct KeySet {
    entries: HashMap<Box<str>, Arc<KeyEntry>>,
}

impl KeySet {
    /// A set over compiled entries (see `file.rs`).
    pub(super) fn new(entries: HashMap<Box<str>, Arc<KeyEntry>>) -> Self {
        KeySet { entries }
    }

    /// The entry with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<KeyEntry>> {
        self.entries.get(id)
    }

    /// Entries sorted by id.
    pub fn entries(&self) -> Vec<&Arc<KeyEntry>> {
        let mut all: Vec<_> = self.entries.values().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry `key` is, if its secret matches and it is valid at `now` (time
    /// since the epoch).
    pub fn verify(&self, key: &str, now: Duration) -> Result<Arc<KeyEntry>, KeyError> {
        let presented = PresentedKey::parse(key).map_err(|_| KeyError::Malformed)?;
        self.verify_presented(&presented, now)
    }

    /// As [`KeySet::verify`], for a key already split.
    pub fn verify_presented(
        &self,
        presented: &PresentedKey<'_>,
        now: Duration,
    ) -> Result<Arc<KeyEntry>, KeyError> {
        let entry = self.entries.get(presented.id).ok_or(KeyError::UnknownId)?;
        if !presented.digest().matches(&entry.digest) {
            return Err(KeyError::BadSecret);
        }
        check_window(entry, now)?;
        Ok(entry.clone())
    }
}

/// Valid from `not_before` (inclusive) until `expires` (exclusive, as JWT's `exp`:
/// RFC 7519 4.1.4 refuses a token *on or after* it). No leeway: these times are
/// written by the operator of this server, against this server's own clock.
pub fn check_window(entry: &KeyEntry, now: Duration) -> Result<(), KeyError> {
    if entry.not_before.is_some_and(|nb| now < nb) {
        return Err(KeyError::NotYetValid);
    }
    if entry.expires.is_some_and(|exp| now >= exp) {
        return Err(KeyError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apikey::{Digest, NewKey};
    use crate::principal::PrincipalKind;

    fn entry(key: &NewKey, not_before: Option<u64>, expires: Option<u64>) -> KeyEntry {
        KeyEntry {
            id: key.id.clone(),
            digest: key.digest(),
            principal: "partner".into(),
            kind: PrincipalKind::Service,
            scopes: vec![],
            not_before: not_before.map(Duration::from_secs),
            expires: expires.map(Duration::from_secs),
            description: None,
        }
    }

    #[test]
    fn expiry_windows() {
        let key = NewKey::with_id("k1".into()).unwrap();
        // (not_before, expires, now, answer)
        type Case = (Option<u64>, Option<u64>, u64, Result<(), KeyError>);
        let cases: &[Case] = &[
            (None, None, 5, Ok(())),
            (Some(10), None, 9, Err(KeyError::NotYetValid)),
            (Some(10), None, 10, Ok(())),
            (None, Some(20), 19, Ok(())),
            (None, Some(20), 20, Err(KeyError::Expired)),
            (None, Some(20), 21, Err(KeyError::Expired)),
            (Some(10), Some(20), 15, Ok(())),
            (Some(10), Some(20), 5, Err(KeyError::NotYetValid)),
            (Some(10), Some(20), 25, Err(KeyError::Expired)),
        ];
        for (nb, exp, now, want) in cases {
            let e = entry(&key, *nb, *exp);
            let got = check_window(&e, Duration::from_secs(*now));
            assert_eq!(got, *want, "{nb:?} {exp:?} {now}");
        }
    }

    #[test]
    fn a_set_knows_its_size() {
        let empty = KeySet::default();
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
        let key = NewKey::with_id("k1".into()).unwrap();
        let one = KeySet::new(HashMap::from([(
            "k1".into(),
            Arc::new(entry(&key, None, None)),
        )]));
        assert!(!one.is_empty());
        assert_eq!(one.len(), 1);
        assert_eq!(one.entries().len(), 1);
    }

    #[test]
    fn verify_finds_the_entry_and_checks_the_secret() {
        let (a, b) = (NewKey::generate().unwrap(), NewKey::generate().unwrap());
        let expired = NewKey::generate().unwrap();
        let mut entries = HashMap::new();
        for e in [entry(&a, None, None), entry(&expired, None, Some(1))] {
            entries.insert(e.id.clone().into(), Arc::new(e));
        }
        let set = KeySet::new(entries);
        let now = Duration::from_secs(100);
        assert_eq!(set.verify(&a.reveal(), now).unwrap().id, a.id);
        // b was never added; b's secret under a's id; a's key with a flipped char.
        let tampered = {
            let mut k = a.reveal().into_bytes();
            let last = k.len() - 1;
            k[last] = if k[last] == b'a' { b'b' } else { b'a' };
            String::from_utf8(k).unwrap()
        };
        let b_secret = b.reveal().rsplit('_').next().unwrap().to_string();
        let cases = [
            (b.reveal(), KeyError::UnknownId),
            (format!("hwk_{}_{b_secret}", a.id), KeyError::BadSecret),
            (tampered, KeyError::BadSecret),
            (expired.reveal(), KeyError::Expired),
            ("hwk_x".to_string(), KeyError::Malformed),
            (format!("Bearer {}", a.reveal()), KeyError::Malformed),
        ];
        for (key, want) in cases {
            assert_eq!(set.verify(&key, now).unwrap_err(), want, "{want:?}");
        }
        let _ = Digest::parse("sha256:x");
    }
}
