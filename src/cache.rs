//! Bounded caches: verified tokens and decisions (moka).
//!
//! Both are keyed by a SHA-256 fingerprint, so an entry costs the same whatever the
//! token size and no token is kept in memory as a key. Neither cache can change an
//! answer: the decision key covers every input a rule of the service can read (see
//! [`decision_key`]), and no entry outlives the token it was computed from. Both keys
//! also carry the issuers' key-removal count (`authn/jwks.rs`), so no cached answer
//! rests on a key the issuer has withdrawn.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;

use sha2::{Digest, Sha256};

use crate::authn::jwt::VerifiedToken;
use crate::decision::Decision;
use crate::policy::ServicePolicy;
use crate::request::{Action, AuthzRequest, Hop};

/// A SHA-256 digest used as a cache key.
pub type Fingerprint = [u8; 32];

#[derive(Clone)]
struct Entry<T> {
    value: T,
    /// How long the entry may live, fixed when it was made.
    lifetime: Duration,
    /// The token's `exp` (time since the epoch, to the nanosecond), checked again on
    /// every read: moka's own expiry is only as exact as its timer wheel.
    deadline: Option<Duration>,
}

struct PerEntry;

impl<T> Expiry<Fingerprint, Entry<T>> for PerEntry {
    fn expire_after_create(
        &self,
        _key: &Fingerprint,
        value: &Entry<T>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.lifetime)
    }
}

/// How long an entry may live: `ttl`, but never up to the token's `exp` (RFC 7519
/// 4.1.4: refused *on or after* it). `None`: not cached at all.
fn lifetime(ttl: Duration, deadline: Option<Duration>, now: Duration) -> Option<Duration> {
    match deadline {
        None => Some(ttl),
        Some(exp) if exp > now => Some(ttl.min(exp - now)),
        Some(_) => None,
    }
}

type Table<T> = Cache<Fingerprint, Entry<T>, FingerprintHasher>;

/// The largest bound a cache's table is sized for at startup.
const PRESIZE_MAX: u64 = 1 << 20;

fn build<T: Clone + Send + Sync + 'static>(max_entries: u64) -> Option<Table<T>> {
    (max_entries > 0).then(|| {
        Cache::builder()
            .max_capacity(max_entries)
            // Sized for the bound up front: a cache filling with new tokens would
            // otherwise rehash every entry at each doubling, on the request path.
            // Up to a million entries (16 to 32 bytes of table each); a larger bound
            // grows as before rather than taking its memory at startup.
            .initial_capacity(usize::try_from(max_entries.min(PRESIZE_MAX)).unwrap_or(0))
            .expire_after(PerEntry)
            .build_with_hasher(FingerprintHasher::new())
    })
}

/// moka's table hasher for fingerprints. They are SHA-256 digests already, so
/// SipHash (std's default) over them buys nothing; a keyed multiply per 8 bytes
/// spreads them as well. The key is random per process, so a caller who grinds
/// tokens cannot aim them at one bucket.
#[derive(Clone)]
struct FingerprintHasher {
    key: u64,
}

impl FingerprintHasher {
    fn new() -> Self {
        use std::hash::BuildHasher;
        FingerprintHasher {
            // std's RandomState draws its keys from the OS.
            key: std::collections::hash_map::RandomState::new().hash_one(0u64) | 1,
        }
    }
}

impl std::hash::BuildHasher for FingerprintHasher {
    type Hasher = FoldHasher;

    fn build_hasher(&self) -> FoldHasher {
        FoldHasher { state: self.key }
    }
}

/// Folds each 8 bytes written into the state with a 64x64->128-bit multiply.
struct FoldHasher {
    state: u64,
}

impl FoldHasher {
    fn mix(&mut self, word: u64) {
        // An odd constant from the golden ratio; the high and low halves of the
        // product are folded so both ends of the hash are well mixed (moka picks a
        // segment with the top bits and a bucket with the bottom ones).
        let product = u128::from(self.state ^ word) * 0x9E37_79B9_7F4A_7C15;
        self.state = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl std::hash::Hasher for FoldHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.mix(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(last) ^ (rest.len() as u64) << 56);
        }
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

fn get<T: Clone + Send + Sync + 'static>(
    cache: &Option<Table<T>>,
    key: &Fingerprint,
    now: Duration,
) -> Option<T> {
    let entry = cache.as_ref()?.get(key)?;
    match entry.deadline {
        Some(exp) if now >= exp => None,
        _ => Some(entry.value),
    }
}

/// Verified tokens by token fingerprint.
pub struct TokenCache {
    inner: Option<Table<Arc<VerifiedToken>>>,
    ttl: Duration,
}

impl TokenCache {
    /// A cache of at most `max_entries` tokens, each kept at most `ttl` (0 entries: off).
    pub fn new(max_entries: u64, ttl: Duration) -> Self {
        TokenCache {
            inner: build(max_entries),
            ttl,
        }
    }

    /// A verified token, if cached and `now` (time since the epoch) is before its `exp`.
    pub fn get(&self, key: &Fingerprint, now: Duration) -> Option<Arc<VerifiedToken>> {
        get(&self.inner, key, now)
    }

    /// Caches a verified token until `min(ttl, exp)`.
    pub fn insert(&self, key: Fingerprint, token: Arc<VerifiedToken>, now: Duration) {
        let Some(cache) = &self.inner else { return };
        let deadline = token.exp;
        if let Some(lifetime) = lifetime(self.ttl, deadline, now) {
            cache.insert(
                key,
                Entry {
                    value: token,
                    lifetime,
                    deadline,
                },
            );
        }
    }
}

/// Decisions by request fingerprint.
pub struct DecisionCache {
    inner: Option<Table<Arc<Decision>>>,
    allow_ttl: Duration,
    deny_ttl: Duration,
}

impl DecisionCache {
    /// A cache of at most `max_entries` decisions (0: off).
    pub fn new(max_entries: u64, allow_ttl: Duration, deny_ttl: Duration) -> Self {
        DecisionCache {
            inner: build(max_entries),
            allow_ttl,
            deny_ttl,
        }
    }

    /// A cached decision, if present and its token has not expired at `now` (time
    /// since the epoch).
    pub fn get(&self, key: &Fingerprint, now: Duration) -> Option<Arc<Decision>> {
        get(&self.inner, key, now)
    }

    /// Caches a decision; `deadline` is the token's `exp`, if the decision rests on one.
    pub fn insert(
        &self,
        key: Fingerprint,
        decision: Arc<Decision>,
        deadline: Option<Duration>,
        now: Duration,
    ) {
        let Some(cache) = &self.inner else { return };
        let ttl = match *decision {
            Decision::Allow(_) => self.allow_ttl,
            Decision::Deny(_) => self.deny_ttl,
        };
        if let Some(lifetime) = lifetime(ttl, deadline, now) {
            cache.insert(
                key,
                Entry {
                    value: decision,
                    lifetime,
                    deadline,
                },
            );
        }
    }

    /// Entries currently held (approximate; for tests and metrics).
    pub fn entry_count(&self) -> u64 {
        self.inner.as_ref().map_or(0, |c| {
            c.run_pending_tasks();
            c.entry_count()
        })
    }
}

/// What a decision key reads of the API key configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyInputs<'a> {
    /// Changes when any key file's keys change: a revoked key's allow is not found again.
    pub generation: u64,
    /// The headers keys arrive in besides `authorization`: their whole values are
    /// hashed, so two keys (even differing only in the secret) never share an entry.
    pub headers: &'a [String],
}

/// The decision cache key: a digest of every input a rule of this service can read.
///
/// The policy's revision (a reload that changes this service's rules changes it;
/// one that changes only other services' does not), the issuers' key removals (a withdrawn key
/// must not keep allowing), service, hop, method, canonical path, gRPC
/// method, the whole `authorization` header (the token decides principal, scopes and
/// claims), the mTLS peer, the values of the headers named in `when.headers`, and the
/// API keys' generation and headers ([`KeyInputs`]).
/// Each field is length-prefixed so no two different inputs share an encoding.
pub fn decision_key(
    revision: u64,
    key_removals: u64,
    api_keys: KeyInputs<'_>,
    policy: &ServicePolicy,
    hop: Hop,
    action: &Action,
    req: &AuthzRequest,
) -> Fingerprint {
    let mut h = Sha256::new();
    let mut field = |bytes: Option<&[u8]>| match bytes {
        None => h.update([0u8]),
        Some(b) => {
            h.update([1u8]);
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        }
    };
    field(Some(&revision.to_le_bytes()));
    field(Some(&key_removals.to_le_bytes()));
    field(Some(policy.service().as_bytes()));
    field(Some(hop.as_str().as_bytes()));
    field(Some(action.method.as_bytes()));
    field(Some(action.path.as_bytes()));
    field(action.grpc.as_deref().map(str::as_bytes));
    field(req.header("authorization").map(str::as_bytes));
    field(req.source_principal.as_deref().map(str::as_bytes));
    for name in policy.header_inputs() {
        field(req.header(name).map(str::as_bytes));
    }
    field(Some(&api_keys.generation.to_le_bytes()));
    for name in api_keys.headers {
        field(req.header(name).map(str::as_bytes));
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::DenyReason;
    use std::collections::HashSet;

    #[test]
    fn lifetimes_never_pass_exp() {
        let ttl = Duration::from_secs(60);
        let ms = Duration::from_millis;
        // (deadline, now, lifetime), in milliseconds since the epoch.
        let cases: &[(Option<u64>, u64, Option<u64>)] = &[
            (None, 100_000, Some(60_000)),
            (Some(1_000_000), 100_000, Some(60_000)),
            (Some(110_000), 100_000, Some(10_000)),
            // Sub-second: the lifetime ends at the exact `exp`, not a second later.
            (Some(100_250), 100_000, Some(250)),
            (Some(100_001), 100_000, Some(1)),
            (Some(100_000), 100_000, None),
            (Some(99_999), 100_000, None),
            (Some(90_000), 100_000, None),
        ];
        for (deadline, now, want) in cases {
            assert_eq!(
                lifetime(ttl, deadline.map(ms), ms(*now)),
                want.map(ms),
                "{deadline:?} {now}"
            );
        }
    }

    #[test]
    fn expired_deadline_is_a_miss() {
        let cache = DecisionCache::new(10, Duration::from_secs(60), Duration::from_secs(5));
        let d = Arc::new(Decision::deny(DenyReason::NoPolicy));
        let ms = Duration::from_millis;
        cache.insert([1; 32], d.clone(), Some(ms(200_500)), ms(100_000));
        assert_eq!(cache.get(&[1; 32], ms(150_000)).as_deref(), Some(&*d));
        // Up to the last millisecond before a fractional `exp`, and not at it.
        assert_eq!(cache.get(&[1; 32], ms(200_499)).as_deref(), Some(&*d));
        assert_eq!(cache.get(&[1; 32], ms(200_500)), None);
        assert_eq!(cache.get(&[2; 32], ms(150_000)), None);
    }

    #[test]
    fn a_token_is_not_served_from_the_cache_at_its_exp() {
        let cache = TokenCache::new(10, Duration::from_secs(60));
        let ms = Duration::from_millis;
        let token = Arc::new(VerifiedToken {
            issuer: "i".into(),
            subject: "s".into(),
            kind: crate::principal::PrincipalKind::Service,
            scopes: vec![],
            audiences: vec![],
            exp: Some(ms(200_250)),
            leeway: Duration::ZERO,
            claims: Default::default(),
            delegation: None,
        });
        cache.insert([4; 32], token.clone(), ms(200_000));
        assert!(cache.get(&[4; 32], ms(200_249)).is_some());
        assert!(cache.get(&[4; 32], ms(200_250)).is_none());
        // Already past: never cached.
        cache.insert([5; 32], token, ms(200_250));
        assert!(cache.get(&[5; 32], ms(200_000)).is_none());
    }

    #[test]
    fn fingerprint_hashes_are_keyed_and_spread() {
        use std::hash::BuildHasher;
        let hasher = FingerprintHasher::new();
        let key = [7u8; 32];
        let base = hasher.hash_one(key);
        assert_ne!(
            FingerprintHasher::new().hash_one(key),
            base,
            "a key per cache"
        );
        for i in 0..32 {
            let mut other = key;
            other[i] ^= 1;
            assert_ne!(hasher.hash_one(other), base, "byte {i} ignored");
        }
        // moka picks a segment with the top bits and a bucket with the bottom ones:
        // keys that differ only in their last bytes must spread at both ends.
        let (mut top, mut bottom) = (HashSet::new(), HashSet::new());
        for n in 0u32..4096 {
            let mut k = [0u8; 32];
            k[28..].copy_from_slice(&n.to_le_bytes());
            let h = hasher.hash_one(k);
            top.insert(h >> 58);
            bottom.insert(h & 1023);
        }
        assert_eq!(top.len(), 64);
        assert!(bottom.len() > 900, "{} of 1024 buckets", bottom.len());
    }

    #[test]
    fn a_huge_bound_starts_small() {
        // Presized up to PRESIZE_MAX only: a bound this large must neither overflow the
        // table size nor take its memory at startup.
        let cache = DecisionCache::new(u64::MAX, Duration::from_secs(60), Duration::from_secs(5));
        let d = Arc::new(Decision::deny(DenyReason::NoPolicy));
        cache.insert([3; 32], d.clone(), None, Duration::ZERO);
        assert_eq!(cache.get(&[3; 32], Duration::ZERO).as_deref(), Some(&*d));
    }

    fn policy(yaml: &str) -> Arc<ServicePolicy> {
        let file = (std::path::PathBuf::from("t.yaml"), yaml.to_string());
        let set = crate::policy::PolicySet::from_sources(&[file]).unwrap_or_else(|e| panic!("{e}"));
        let policy = set.services().next().expect("one service").clone();
        policy
    }

    /// Every input of a decision key, so that one can be changed at a time.
    #[derive(Clone)]
    struct Inputs {
        generation: u64,
        key_removals: u64,
        api_key_generation: u64,
        api_key_headers: Vec<String>,
        policy: Arc<ServicePolicy>,
        hop: Hop,
        action: Action,
        req: AuthzRequest,
    }

    impl Inputs {
        fn key(&self) -> Fingerprint {
            decision_key(
                self.generation,
                self.key_removals,
                KeyInputs {
                    generation: self.api_key_generation,
                    headers: &self.api_key_headers,
                },
                &self.policy,
                self.hop,
                &self.action,
                &self.req,
            )
        }
    }

    #[test]
    fn changing_any_single_input_changes_the_decision_key() {
        // Two services whose rules read the same header, so only the name differs.
        let rules =
            "rules:\n  - {id: r, to: [{paths: [/**]}], when: {headers: {x-tenant: [acme]}}}\n";
        let ledger = policy(&format!("service: ledger\n{rules}"));
        let email = policy(&format!("service: email\n{rules}"));
        let base = Inputs {
            generation: 1,
            key_removals: 0,
            api_key_generation: 1,
            api_key_headers: vec!["x-api-key".into()],
            policy: ledger,
            hop: Hop::Mesh,
            action: Action {
                method: "GET".into(),
                path: "/transactions/42".into(),
                grpc: None,
            },
            req: AuthzRequest {
                headers: [
                    ("authorization", "Bearer a.b.c"),
                    ("x-tenant", "acme"),
                    ("x-unread", "1"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
                source_principal: Some("spiffe://x/ns/a/sa/payments".into()),
                ..Default::default()
            },
        };
        let with = |change: &dyn Fn(&mut Inputs)| {
            let mut i = base.clone();
            change(&mut i);
            i
        };
        let header = |name: &'static str, value: Option<&'static str>| {
            move |i: &mut Inputs| match value {
                Some(v) => drop(i.req.headers.insert(name.into(), v.into())),
                None => drop(i.req.headers.remove(name)),
            }
        };
        let cases: Vec<(&str, Inputs)> = vec![
            ("generation", with(&|i| i.generation = 2)),
            ("key removals", with(&|i| i.key_removals = 1)),
            ("api key generation", with(&|i| i.api_key_generation = 2)),
            (
                "api key header",
                with(&header("x-api-key", Some("hwk_a_b"))),
            ),
            ("service", with(&|i| i.policy = email.clone())),
            ("hop", with(&|i| i.hop = Hop::Gateway)),
            ("method", with(&|i| i.action.method = "POST".into())),
            ("path", with(&|i| i.action.path = "/transactions/43".into())),
            (
                "grpc method",
                with(&|i| i.action.grpc = Some("ledger.v1.Ledger/Get".into())),
            ),
            (
                "token",
                with(&header("authorization", Some("Bearer a.b.d"))),
            ),
            ("no token", with(&header("authorization", None))),
            (
                "peer",
                with(&|i| i.req.source_principal = Some("spiffe://x/ns/a/sa/other".into())),
            ),
            ("no peer", with(&|i| i.req.source_principal = None)),
            ("when header", with(&header("x-tenant", Some("globex")))),
            ("no when header", with(&header("x-tenant", None))),
            // Length-prefixed fields: moving bytes from one field to the next is a change.
            (
                "field boundary",
                with(&|i| {
                    i.action.method = "GET/".into();
                    i.action.path = "transactions/42".into();
                }),
            ),
        ];
        let mut seen = HashSet::from([base.key()]);
        for (input, inputs) in &cases {
            assert!(
                seen.insert(inputs.key()),
                "changing the {input} kept the key"
            );
        }
        // Inputs no rule can read leave the key alone, so the cache still hits.
        let unread = with(&header("x-unread", Some("2")));
        assert_eq!(unread.key(), base.key());
        let host = with(&|i| i.req.host = "other.internal".into());
        assert_eq!(host.key(), base.key());
    }

    #[test]
    fn zero_entries_disables() {
        let cache = DecisionCache::new(0, Duration::from_secs(60), Duration::from_secs(5));
        cache.insert(
            [1; 32],
            Arc::new(Decision::deny(DenyReason::NoPolicy)),
            None,
            Duration::ZERO,
        );
        assert_eq!(cache.get(&[1; 32], Duration::ZERO), None);
    }

    #[test]
    fn an_entry_without_a_deadline_expires_after_its_ttl() {
        // No token `exp` to check on read: moka's per-entry expiry alone ends it.
        let cache = DecisionCache::new(10, Duration::from_secs(60), Duration::from_millis(50));
        let d = Arc::new(Decision::deny(DenyReason::NoPolicy));
        cache.insert([1; 32], d, None, Duration::ZERO);
        let start = Instant::now();
        while cache.get(&[1; 32], Duration::ZERO).is_some() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "a 50 ms entry outlived 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn entry_count_counts_entries() {
        let cache = DecisionCache::new(10, Duration::from_secs(60), Duration::from_secs(60));
        assert_eq!(cache.entry_count(), 0);
        let d = Arc::new(Decision::deny(DenyReason::NoPolicy));
        for i in 0..3u8 {
            cache.insert([i; 32], d.clone(), None, Duration::ZERO);
        }
        assert_eq!(cache.entry_count(), 3);
        let off = DecisionCache::new(0, Duration::from_secs(60), Duration::from_secs(60));
        off.insert([1; 32], d, None, Duration::ZERO);
        assert_eq!(off.entry_count(), 0);
    }

    #[test]
    fn a_short_write_is_hashed_with_its_length() {
        // Fingerprints are whole words; a shorter tail still counts, tagged with its
        // length so that [1] and [1, 0] differ.
        use std::hash::{BuildHasher, Hasher};
        let hasher = FingerprintHasher::new();
        let hash = |bytes: &[u8]| {
            let mut h = hasher.build_hasher();
            h.write(bytes);
            h.finish()
        };
        let inputs: [&[u8]; 5] = [&[], &[1], &[2], &[1, 0], &[1, 0, 0, 0, 0, 0, 0, 0]];
        let hashes: HashSet<u64> = inputs.iter().map(|b| hash(b)).collect();
        assert_eq!(hashes.len(), inputs.len());
    }
}
