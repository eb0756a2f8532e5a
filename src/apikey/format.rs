//! The key format: `hwk_<id>_<secret>`, and the digest a key file stores.
//!
//! - `hwk_` names hopwarden, so a leaked key is recognisable (secret scanners, logs).
//! - `<id>`: 1 to 32 characters of `[a-z0-9-]`; not secret (logs, metrics and headers
//!   name it); finds the entry in a map.
//! - `<secret>`: 32 bytes (256 bits) from aws-lc-rs's system RNG, as 52 characters of
//!   lowercase RFC 4648 base32 without padding. Neither part contains `_`, so the
//!   split is unambiguous, and the whole key is safe in a header.
//!
//! The digest is SHA-256 over a domain tag, the id and the secret. Why plain SHA-256
//! and not a password hash (bcrypt, argon2) or an HMAC with a server pepper: the
//! secret is 256 uniformly random bits, not a password a person chose. A slow hash
//! exists to make guessing low-entropy secrets expensive; here guessing is already
//! 2^256 SHA-256 preimage work, so slowness would only cost every check (a password
//! hash is milliseconds; SHA-256 over 80 bytes is well under a microsecond). A pepper
//! would be a second secret to deploy and rotate that protects nothing more: the
//! stored digest of a 256-bit secret cannot be inverted without it either. The id is
//! inside the digest, so copying one entry's digest under another id does not make
//! that entry accept the first key.

use std::fmt;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// What every key starts with.
pub const PREFIX: &str = "hwk_";
/// Random bytes in a secret (256 bits).
pub const SECRET_BYTES: usize = 32;
/// Characters of a secret: 256 bits in base32 (5 bits a character), rounded up.
pub const SECRET_CHARS: usize = 52;
/// The longest id accepted.
pub const MAX_ID_CHARS: usize = 32;
/// Characters of a generated id (50 random bits: unique enough for one estate, and
/// `apikey new` refuses nothing: a clash is caught when the file loads).
const NEW_ID_CHARS: usize = 10;
/// RFC 4648 base32 alphabet, lowercased.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// Domain separation: this digest is for nothing else.
const DIGEST_TAG: &[u8] = b"hopwarden-api-key-v1";
/// How a digest is written in a key file.
const DIGEST_SCHEME: &str = "sha256:";

/// Why a string is not a key, or a key could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The key does not start with `hwk_`.
    #[error("an API key starts with {PREFIX:?}")]
    Prefix,
    /// The id is empty, too long or has characters outside `[a-z0-9-]`.
    #[error("invalid API key id {0:?} (1 to {MAX_ID_CHARS} characters of a-z, 0-9 and -)")]
    Id(String),
    /// The secret is not 52 base32 characters. The value is never shown.
    #[error("the API key's secret is not {SECRET_CHARS} base32 characters")]
    Secret,
    /// A digest is not `sha256:` and 43 base64url characters. The value is never
    /// shown: it may be a whole key pasted in by mistake, and these errors are logged.
    #[error("invalid digest (want sha256: and 43 base64url characters; the value is not shown)")]
    Digest,
    /// A whole key (`hwk_…`) where its digest belongs. The value is never shown.
    #[error("this is an API key, not a digest (the key is not shown): store the sha256: digest `hopwarden apikey new` printed; if this file was committed or shared, revoke the key and issue a new one")]
    DigestIsKey,
    /// The system RNG failed.
    #[error("the system random number generator failed")]
    Random,
}

/// Whether `value` looks like a whole key: it starts with `hwk_` (any case, after
/// blanks). Key files say so instead of repeating such a value in an error.
pub fn looks_like_key(value: &str) -> bool {
    value
        .trim_start()
        .get(..PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
}

/// Whether `id` is a valid key id.
pub fn valid_id(id: &str) -> bool {
    (1..=MAX_ID_CHARS).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A key as presented by a caller, split into its parts (borrowed from the request).
/// Its `Debug` never shows the secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    /// The key id.
    pub id: &'a str,
    secret: &'a str,
}

impl fmt::Debug for PresentedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PresentedKey {{ id: {:?}, secret: <redacted> }}",
            self.id
        )
    }
}

impl<'a> PresentedKey<'a> {
    /// Splits `hwk_<id>_<secret>` and checks each part's form (not the secret's value).
    pub fn parse(key: &'a str) -> Result<Self, FormatError> {
        let rest = key.strip_prefix(PREFIX).ok_or(FormatError::Prefix)?;
        let (id, secret) = rest.split_once('_').ok_or(FormatError::Secret)?;
        if !valid_id(id) {
            return Err(FormatError::Id(id.chars().take(MAX_ID_CHARS + 1).collect()));
        }
        if secret.len() != SECRET_CHARS || !secret.bytes().all(|b| ALPHABET.contains(&b)) {
            return Err(FormatError::Secret);
        }
        Ok(PresentedKey { id, secret })
    }

    /// The digest a key file stores for this key.
    pub fn digest(&self) -> Digest {
        Digest::of(self.id, self.secret)
    }
}

/// A stored digest of a key's id and secret.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Digest([u8; 32]);

impl Digest {
    fn of(id: &str, secret: &str) -> Self {
        // Lengths are fixed by the format checks, but each field is still
        // length-prefixed so no two (id, secret) pairs share an encoding.
        let digest = Sha256::new()
            .chain_update(DIGEST_TAG)
            .chain_update((id.len() as u64).to_le_bytes())
            .chain_update(id.as_bytes())
            .chain_update((secret.len() as u64).to_le_bytes())
            .chain_update(secret.as_bytes())
            .finalize();
        Digest(digest.into())
    }

    /// Compares in constant time (the time does not depend on where the bytes
    /// differ), so response timing tells a caller nothing about the stored digest.
    pub fn matches(&self, other: &Digest) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.0, &other.0).is_ok()
    }

    /// Reads `sha256:<base64url>` as written in a key file.
    pub fn parse(s: &str) -> Result<Self, FormatError> {
        let bad = || {
            if looks_like_key(s) {
                FormatError::DigestIsKey
            } else {
                FormatError::Digest
            }
        };
        let b64 = s.strip_prefix(DIGEST_SCHEME).ok_or_else(bad)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| bad())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(Digest(bytes))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0);
        write!(f, "{DIGEST_SCHEME}{b64}")
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// A freshly made key: shown once to the person who asked for it, never stored.
pub struct NewKey {
    /// The key id.
    pub id: String,
    secret: String,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NewKey {{ id: {:?}, secret: <redacted> }}", self.id)
    }
}

impl NewKey {
    /// A new key with a random id and a 256-bit random secret.
    pub fn generate() -> Result<Self, FormatError> {
        let mut id_bytes = [0u8; NEW_ID_CHARS];
        fill(&mut id_bytes)?;
        // Each byte's low 5 bits: 32 divides 256, so every character is uniform.
        let id = id_bytes
            .iter()
            .map(|b| ALPHABET[(b & 31) as usize] as char)
            .collect();
        Self::with_id(id)
    }

    /// A new key with the given id and a 256-bit random secret.
    pub fn with_id(id: String) -> Result<Self, FormatError> {
        if !valid_id(&id) {
            return Err(FormatError::Id(id));
        }
        let mut bytes = [0u8; SECRET_BYTES];
        fill(&mut bytes)?;
        Ok(NewKey {
            id,
            secret: base32(&bytes),
        })
    }

    /// The whole key, `hwk_<id>_<secret>`: print it once, store it nowhere.
    pub fn reveal(&self) -> String {
        format!("{PREFIX}{}_{}", self.id, self.secret)
    }

    /// The digest to store in the key file.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.id, &self.secret)
    }
}

fn fill(bytes: &mut [u8]) -> Result<(), FormatError> {
    use aws_lc_rs::rand::SecureRandom;
    aws_lc_rs::rand::SystemRandom::new()
        .fill(bytes)
        .map_err(|_| FormatError::Random)
}

/// RFC 4648 base32, lowercase, no padding.
fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Whether `shown` holds any 8 characters of `secret` in a row (any case).
    pub(in crate::apikey) fn leaks(shown: &str, secret: &str) -> bool {
        let shown = shown.to_lowercase();
        secret
            .as_bytes()
            .windows(8)
            .any(|w| shown.contains(std::str::from_utf8(w).unwrap()))
    }

    const SECRET: &str = "abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrst";

    #[test]
    fn key_parsing() {
        assert_eq!(SECRET.len(), SECRET_CHARS);
        let long_id = "a".repeat(33);
        let cases: Vec<(String, Result<&str, FormatError>)> = vec![
            (format!("hwk_abc_{SECRET}"), Ok("abc")),
            (format!("hwk_a-1_{SECRET}"), Ok("a-1")),
            (
                format!("hwk_{}_{SECRET}", "a".repeat(32)),
                Ok("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
            ),
            (format!("HWK_abc_{SECRET}"), Err(FormatError::Prefix)),
            (format!("abc_{SECRET}"), Err(FormatError::Prefix)),
            ("hwk_abc".to_string(), Err(FormatError::Secret)),
            (
                format!("hwk__{SECRET}"),
                Err(FormatError::Id(String::new())),
            ),
            (
                format!("hwk_ABC_{SECRET}"),
                Err(FormatError::Id("ABC".into())),
            ),
            (
                format!("hwk_{long_id}_{SECRET}"),
                Err(FormatError::Id(long_id.clone())),
            ),
            (
                format!("hwk_abc_{}", &SECRET[1..]),
                Err(FormatError::Secret),
            ),
            (format!("hwk_abc_{SECRET}a"), Err(FormatError::Secret)),
            (
                format!("hwk_abc_{}1", &SECRET[1..]),
                Err(FormatError::Secret),
            ),
            (
                format!("hwk_abc_{}A", &SECRET[1..]),
                Err(FormatError::Secret),
            ),
            (
                format!("hwk_abc_{}_", &SECRET[1..]),
                Err(FormatError::Secret),
            ),
            (format!("hwk_abc_{SECRET} "), Err(FormatError::Secret)),
            (
                format!("hwk_ab_c_{}", &SECRET[2..]),
                Err(FormatError::Secret),
            ),
            ("".to_string(), Err(FormatError::Prefix)),
        ];
        for (input, want) in cases {
            let got = PresentedKey::parse(&input).map(|k| k.id);
            assert_eq!(got, want, "{input:?}");
        }
    }

    #[test]
    fn new_keys_round_trip_and_are_random() {
        let a = NewKey::generate().unwrap();
        let b = NewKey::generate().unwrap();
        assert_ne!(a.id, b.id);
        assert_ne!(a.reveal(), b.reveal());
        let key = a.reveal();
        let parsed = PresentedKey::parse(&key).unwrap();
        assert_eq!(parsed.id, a.id);
        assert!(parsed.digest().matches(&a.digest()));
        assert!(!parsed.digest().matches(&b.digest()));
        // The Debug forms never carry the secret.
        let secret = key.rsplit('_').next().unwrap();
        assert!(!format!("{a:?} {parsed:?}").contains(secret));
        assert_eq!(
            NewKey::with_id("Bad".into()).unwrap_err(),
            FormatError::Id("Bad".into())
        );
    }

    #[test]
    fn debug_output_names_the_key_and_never_shows_the_secret() {
        let key = NewKey::generate().unwrap();
        let revealed = key.reveal();
        let presented = PresentedKey::parse(&revealed).unwrap();
        let secret = presented.secret;
        for shown in [format!("{key:?}"), format!("{presented:?}")] {
            assert!(
                shown.contains(&key.id) && shown.contains("<redacted>"),
                "{shown}"
            );
            assert!(!shown.contains(secret), "{shown}");
        }
        let digest = key.digest();
        assert_eq!(format!("{digest:?}"), format!("Digest({digest})"));
        assert!(format!("{digest:?}").starts_with("Digest(sha256:"));
    }

    #[test]
    fn digest_comparison() {
        let key = format!("hwk_abc_{SECRET}");
        let good = PresentedKey::parse(&key).unwrap().digest();
        // One character of the secret changed, the same secret under another id.
        let tampered = format!("hwk_abc_b{}", &SECRET[1..]);
        let other_id = format!("hwk_abd_{SECRET}");
        let cases = [(&key, true), (&tampered, false), (&other_id, false)];
        for (input, want) in cases {
            let d = PresentedKey::parse(input).unwrap().digest();
            assert_eq!(d.matches(&good), want, "{input}");
        }
        // The written form reads back; malformed ones are refused.
        assert_eq!(Digest::parse(&good.to_string()), Ok(good.clone()));
        let written = good.to_string();
        for bad in [
            &written[7..],
            &written[..written.len() - 1],
            "sha256:",
            "sha512:AAAA",
            "sha256:!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digest_errors_never_repeat_the_value() {
        let key = NewKey::generate().unwrap().reveal();
        let secret = key.rsplit('_').next().unwrap();
        let cases = [
            (key.clone(), FormatError::DigestIsKey),
            (
                format!("  {}", key.to_uppercase()),
                FormatError::DigestIsKey,
            ),
            (format!("sha256:{secret}"), FormatError::Digest),
            (secret.to_string(), FormatError::Digest),
        ];
        for (input, want) in cases {
            let err = Digest::parse(&input).unwrap_err();
            assert_eq!(err, want, "{input}");
            let shown = err.to_string();
            assert!(!leaks(&shown, secret), "{shown}");
        }
        let shown = FormatError::DigestIsKey.to_string();
        assert!(
            shown.contains("this is an API key, not a digest") && shown.contains("revoke"),
            "{shown}"
        );
    }

    #[test]
    fn base32_matches_rfc_4648_vectors() {
        // RFC 4648 section 10, lowercased and unpadded.
        let cases = [
            ("", ""),
            ("f", "my"),
            ("fo", "mzxq"),
            ("foo", "mzxw6"),
            ("foobar", "mzxw6ytboi"),
        ];
        for (input, want) in cases {
            assert_eq!(base32(input.as_bytes()), want);
        }
        assert_eq!(base32(&[0xff; SECRET_BYTES]).len(), SECRET_CHARS);
    }
}
