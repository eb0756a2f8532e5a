//! The scopes a caller's credential carried, as decisions keep them for the decision
//! log: bounded, so a token with thousands of scopes (or one scope of kilobytes) can
//! never make a log line unbounded. Scopes are not secrets (RFC 6749 3.3: they name
//! access, and Envoy's own logs show them), but they are caller input.

use std::sync::Arc;

/// Scopes kept per decision; more are dropped and the record says so.
pub const MAX_SCOPES: usize = 32;
/// Bytes kept of each scope; a longer one is cut at a character boundary and ends
/// with [`CUT`].
pub const MAX_SCOPE_BYTES: usize = 128;
/// Ends a scope that was cut.
pub const CUT: char = '…';

/// The bounded scopes of one credential (a token's `scope`/`scp`, an API key's
/// `scopes`), in the credential's order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CarriedScopes {
    scopes: Arc<[String]>,
    truncated: bool,
}

impl CarriedScopes {
    /// The first [`MAX_SCOPES`] of `scopes`, each cut to [`MAX_SCOPE_BYTES`];
    /// `truncated` when anything was dropped or cut.
    pub fn new(scopes: &[String]) -> Self {
        let mut truncated = scopes.len() > MAX_SCOPES;
        let kept = scopes
            .iter()
            .take(MAX_SCOPES)
            .map(|s| {
                if s.len() <= MAX_SCOPE_BYTES {
                    return s.clone();
                }
                truncated = true;
                let mut end = MAX_SCOPE_BYTES;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                let mut cut = String::with_capacity(end + CUT.len_utf8());
                cut.push_str(&s[..end]);
                cut.push(CUT);
                cut
            })
            .collect();
        CarriedScopes {
            scopes: kept,
            truncated,
        }
    }

    /// The scopes kept.
    pub fn as_slice(&self) -> &[String] {
        &self.scopes
    }

    /// Whether scopes were dropped (over [`MAX_SCOPES`]) or cut (over
    /// [`MAX_SCOPE_BYTES`]).
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn short_lists_are_kept_as_they_are() {
        for list in [&[][..], &["ledger.read"], &["b", "a", "a"]] {
            let carried = CarriedScopes::new(&strings(list));
            assert_eq!(carried.as_slice(), strings(list));
            assert!(!carried.truncated());
        }
    }

    #[test]
    fn too_many_scopes_are_dropped_and_marked() {
        let many: Vec<String> = (0..MAX_SCOPES + 1).map(|n| format!("s{n}")).collect();
        let carried = CarriedScopes::new(&many);
        assert_eq!(carried.as_slice(), &many[..MAX_SCOPES]);
        assert!(carried.truncated());
        let exactly = CarriedScopes::new(&many[..MAX_SCOPES]);
        assert_eq!(exactly.as_slice().len(), MAX_SCOPES);
        assert!(!exactly.truncated());
    }

    #[test]
    fn long_scopes_are_cut_at_a_character_boundary_and_marked() {
        let exact = "x".repeat(MAX_SCOPE_BYTES);
        let carried = CarriedScopes::new(std::slice::from_ref(&exact));
        assert_eq!(carried.as_slice(), std::slice::from_ref(&exact));
        assert!(!carried.truncated());

        let long = "y".repeat(MAX_SCOPE_BYTES + 1);
        let carried = CarriedScopes::new(&[long, "ok".into()]);
        assert_eq!(
            carried.as_slice(),
            [format!("{}{CUT}", "y".repeat(MAX_SCOPE_BYTES)), "ok".into()]
        );
        assert!(carried.truncated());

        // A 3-byte character straddles the limit: cut before it, never inside it.
        let wide = format!("{}€€", "z".repeat(MAX_SCOPE_BYTES - 1));
        let carried = CarriedScopes::new(&[wide]);
        assert_eq!(
            carried.as_slice(),
            [format!("{}{CUT}", "z".repeat(MAX_SCOPE_BYTES - 1))]
        );
        assert!(carried.as_slice()[0].len() <= MAX_SCOPE_BYTES + CUT.len_utf8());
    }

    #[test]
    fn the_kept_bytes_are_bounded_whatever_the_credential_carries() {
        let huge: Vec<String> = (0..10_000).map(|_| "é".repeat(5_000)).collect();
        let carried = CarriedScopes::new(&huge);
        let bytes: usize = carried.as_slice().iter().map(String::len).sum();
        assert!(bytes <= MAX_SCOPES * (MAX_SCOPE_BYTES + CUT.len_utf8()));
        assert!(carried.truncated());
    }
}
