//! GCRA buckets, one per (service, limit, caller), in a bounded table.
//!
//! GCRA (the generic cell rate algorithm) keeps one number per bucket: the
//! theoretical arrival time `tat` of the next request at the sustained rate. A
//! request at `now` fits when `tat - now <= tolerance`, where `tolerance` is
//! `(burst - 1)` intervals; it then moves `tat` one interval on. A refused request
//! changes nothing, so clients that keep retrying do not dig themselves deeper.
//!
//! A bucket whose `tat` has passed is full again, and a full bucket is the same as
//! none: that is what makes evicting idle buckets exact. The table is bounded by
//! `max_buckets`; a caller that finds it full of busy buckets spends from its
//! limit's shared `others` bucket instead (there is one per limit, so those are
//! bounded by the policies).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::Instant;

use super::{Caller, LimitHit, RateLimited};

/// Shards of the table: checks of different callers rarely wait on one lock.
const SHARDS: usize = 16;

/// The default bound on the number of buckets.
pub const DEFAULT_MAX_BUCKETS: usize = 100_000;

/// One bucket's state: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Theoretical arrival time, nanoseconds since the table's epoch.
    pub tat: u64,
}

/// What spending from a bucket gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    /// The request fits; this many more would fit right now.
    Allowed {
        /// Requests that would still fit at once.
        remaining: u64,
    },
    /// The bucket is empty; one request fits again after this many nanoseconds.
    Refused {
        /// Nanoseconds until one request fits.
        wait_nanos: u64,
    },
}

impl Gcra {
    /// A full bucket at `now`.
    pub fn new(now: u64) -> Self {
        Gcra { tat: now }
    }

    /// Spends one request at `now` (nanoseconds) from a bucket that refills one
    /// request every `interval` nanoseconds and holds at most `burst`.
    pub fn spend(&mut self, now: u64, interval: u64, burst: u64) -> Spent {
        let tolerance = interval.saturating_mul(burst.max(1) - 1);
        let tat = self.tat.max(now);
        let allowed_at = tat.saturating_sub(tolerance);
        if now < allowed_at {
            return Spent::Refused {
                wait_nanos: allowed_at - now,
            };
        }
        self.tat = tat.saturating_add(interval);
        let used = self.tat - now;
        let room = tolerance.saturating_add(interval).saturating_sub(used);
        Spent::Allowed {
            remaining: room / interval,
        }
    }

    /// Whether the bucket is full again at `now` (and so can be forgotten).
    pub fn idle(&self, now: u64) -> bool {
        self.tat <= now
    }
}

/// Whole seconds in `nanos`, rounded up, at least 1 (`retry-after` is an integer
/// and 0 would invite an immediate retry that is refused again).
pub fn whole_seconds(nanos: u64) -> u64 {
    nanos.div_ceil(1_000_000_000).max(1)
}

/// A bucket's identity. The rate and burst are part of it: a reload that changes a
/// limit starts its callers on fresh budgets at the new rate (the old buckets go idle
/// and are evicted), rather than carrying debt measured at the old one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    service: std::sync::Arc<str>,
    limit: std::sync::Arc<str>,
    caller: Caller,
    rate: super::Rate,
    burst: u64,
}

impl Key {
    fn of(hit: &LimitHit) -> Self {
        Key {
            service: hit.service.clone(),
            limit: hit.limit.clone(),
            caller: hit.caller.clone(),
            rate: hit.rate,
            burst: hit.burst,
        }
    }
}

/// Every bucket of the process, bounded.
pub struct Buckets {
    shards: Vec<Mutex<HashMap<Key, Gcra>>>,
    hasher: RandomState,
    per_shard: usize,
    epoch: Instant,
}

impl Buckets {
    /// A table of at most about `max_buckets` buckets (at least one per shard).
    pub fn new(max_buckets: usize) -> Self {
        Buckets {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            per_shard: max_buckets.div_ceil(SHARDS).max(1),
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds since the table was made.
    pub fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Spends one request from every hit's bucket at `now`, or none: when one is
    /// empty the request is refused and the buckets already spent are refunded, so a
    /// refused request costs nothing.
    pub fn spend_all(&self, hits: &[LimitHit], now: u64) -> Result<(), RateLimited> {
        let mut spent: Vec<(usize, Gcra)> = Vec::new();
        for (i, hit) in hits.iter().enumerate() {
            match self.spend(hit, now) {
                // The last one never needs a refund: one limit allocates nothing.
                (Spent::Allowed { .. }, before) if i + 1 < hits.len() => spent.push((i, before)),
                (Spent::Allowed { .. }, _) => {}
                (Spent::Refused { wait_nanos }, _) => {
                    for (j, before) in spent {
                        self.restore(&hits[j], before);
                    }
                    return Err(RateLimited {
                        limit: hit.limit.clone(),
                        rate: hit.rate,
                        retry_after: whole_seconds(wait_nanos),
                    });
                }
            }
        }
        Ok(())
    }

    /// Spends one request from `hit`'s bucket; also returns the state before.
    pub fn spend(&self, hit: &LimitHit, now: u64) -> (Spent, Gcra) {
        let interval = hit.rate.interval_nanos();
        let mut key = Key::of(hit);
        let mut shard = self.shard(&key);
        if !shard.contains_key(&key) && shard.len() >= self.per_shard {
            shard.retain(|_, b| !b.idle(now));
            if shard.len() >= self.per_shard && key.caller != Caller::Others {
                // Full of busy buckets: share the limit's bucket for everyone else.
                drop(shard);
                key.caller = Caller::Others;
                shard = self.shard(&key);
            }
        }
        let bucket = shard.entry(key).or_insert_with(|| Gcra::new(now));
        let before = *bucket;
        (bucket.spend(now, interval, hit.burst), before)
    }

    /// Puts a bucket back as it was before a spend (a later limit refused).
    fn restore(&self, hit: &LimitHit, before: Gcra) {
        let key = Key::of(hit);
        let mut shard = self.shard(&key);
        if let Some(bucket) = shard.get_mut(&key) {
            // Undo our one interval, not anyone else's spend since.
            let interval = hit.rate.interval_nanos();
            bucket.tat = bucket.tat.saturating_sub(interval).max(before.tat);
        }
    }

    /// The number of buckets held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &Key) -> std::sync::MutexGuard<'_, HashMap<Key, Gcra>> {
        let index = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        // A panic while holding a shard cannot leave a bucket half-written (a
        // `Gcra` is one integer), so a poisoned lock is still good to use.
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets::new(DEFAULT_MAX_BUCKETS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Rate;
    use std::sync::Arc;

    const S: u64 = 1_000_000_000;

    fn hit(limit: &str, caller: Caller, rate: &str, burst: u64) -> LimitHit {
        LimitHit {
            service: "ledger".into(),
            limit: limit.into(),
            caller,
            rate: Rate::parse(rate).unwrap(),
            burst,
        }
    }

    fn named(id: &str) -> Caller {
        Caller::Named(Arc::from(id))
    }

    #[test]
    fn bucket_arithmetic() {
        // 2/s (one every 0.5 s), burst 3.
        let interval = S / 2;
        let mut b = Gcra::new(0);
        // (time, expected)
        #[rustfmt::skip]
        let steps: &[(u64, Spent)] = &[
            (0, Spent::Allowed { remaining: 2 }),
            (0, Spent::Allowed { remaining: 1 }),
            (0, Spent::Allowed { remaining: 0 }),
            // Burst spent: the next fits once one interval has come back.
            (0, Spent::Refused { wait_nanos: S / 2 }),
            (S / 4, Spent::Refused { wait_nanos: S / 4 }),
            (S / 2, Spent::Allowed { remaining: 0 }),
            (S / 2, Spent::Refused { wait_nanos: S / 2 }),
            // Refill: 2 s later the bucket is full again (burst, not more).
            (3 * S, Spent::Allowed { remaining: 2 }),
        ];
        for (i, (now, want)) in steps.iter().enumerate() {
            assert_eq!(b.spend(*now, interval, 3), *want, "step {i}");
        }
        assert!(!b.idle(3 * S));
        assert!(b.idle(3 * S + interval));
    }

    #[test]
    fn a_refusal_spends_nothing_and_burst_one_is_the_rate() {
        let mut b = Gcra::new(0);
        assert_eq!(b.spend(0, S, 1), Spent::Allowed { remaining: 0 });
        let before = b;
        for t in [0, S / 10, S / 2, S - 1] {
            assert_eq!(b.spend(t, S, 1), Spent::Refused { wait_nanos: S - t });
            assert_eq!(b, before, "a refusal must not move the bucket");
        }
        assert_eq!(b.spend(S, S, 1), Spent::Allowed { remaining: 0 });
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(whole_seconds(1), 1);
        assert_eq!(whole_seconds(0), 1);
        assert_eq!(whole_seconds(S), 1);
        assert_eq!(whole_seconds(S + 1), 2);
        assert_eq!(whole_seconds(59 * S + S / 2), 60);
    }

    #[test]
    fn table_keys_by_limit_and_caller() {
        let t = Buckets::new(100);
        let a = hit("reads", named("a"), "1/s", 1);
        let b = hit("reads", named("b"), "1/s", 1);
        let other = hit("writes", named("a"), "1/s", 1);
        assert!(t.spend_all(std::slice::from_ref(&a), 0).is_ok());
        let refused = t.spend_all(std::slice::from_ref(&a), 0).unwrap_err();
        assert_eq!(&*refused.limit, "reads");
        assert_eq!(refused.retry_after, 1);
        assert!(t.spend_all(std::slice::from_ref(&b), 0).is_ok());
        assert!(t.spend_all(std::slice::from_ref(&other), 0).is_ok());
        assert_eq!(t.len(), 3);
        // The same limit at another rate (a reload changed it) is a fresh budget.
        let faster = hit("reads", named("a"), "2/s", 1);
        assert!(t.spend_all(std::slice::from_ref(&faster), 0).is_ok());
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn a_refusal_by_one_limit_refunds_the_others() {
        let t = Buckets::new(100);
        let roomy = hit("roomy", named("a"), "10/s", 2);
        let tight = hit("tight", named("a"), "1/m", 1);
        let both = [roomy.clone(), tight.clone()];
        assert!(t.spend_all(&both, 0).is_ok());
        let refused = t.spend_all(&both, 0).unwrap_err();
        assert_eq!(&*refused.limit, "tight");
        assert_eq!(refused.retry_after, 60);
        // roomy had one left (burst 2) and the refused request did not take it.
        assert!(t.spend_all(std::slice::from_ref(&roomy), 0).is_ok());
        assert!(t.spend_all(std::slice::from_ref(&roomy), 0).is_err());
    }

    #[test]
    fn the_table_is_bounded_and_evicts_idle_buckets() {
        // One bucket per shard.
        let t = Buckets::new(SHARDS);
        let callers: Vec<LimitHit> = (0..1000)
            .map(|i| hit("reads", named(&format!("c{i}")), "1/s", 1))
            .collect();
        for c in &callers {
            let _ = t.spend(c, 0);
        }
        // Busy buckets are kept up to the bound; the rest shared `others` buckets.
        assert!(t.len() <= 2 * SHARDS, "{}", t.len());
        // Once they are idle again, they are evicted for new callers.
        let later = 2 * S;
        let mut allowed = 0;
        for c in &callers {
            if matches!(t.spend(c, later).0, Spent::Allowed { .. }) {
                allowed += 1;
            }
        }
        // Each shard's idle bucket made room for one new caller, and `others` let one
        // more through: more than the first round's busy table would have.
        assert!(allowed >= SHARDS, "{allowed}");
        assert!(t.len() <= 2 * SHARDS, "{}", t.len());
        let fresh = hit("reads", named("fresh"), "1/s", 1);
        let (spent, _) = t.spend(&fresh, 10 * S);
        assert_eq!(spent, Spent::Allowed { remaining: 0 });
        assert!(t.len() <= 2 * SHARDS, "{}", t.len());
    }

    #[test]
    fn a_full_table_makes_new_callers_share_the_others_bucket() {
        let t = Buckets::new(1);
        // Fill every shard with a busy bucket.
        let mut i = 0;
        while t.len() < SHARDS {
            let _ = t.spend(&hit("reads", named(&format!("fill{i}")), "1/h", 1), 0);
            i += 1;
            assert!(i < 100_000);
        }
        // A new caller in a full shard spends from `others`: a second new caller that
        // also falls back finds it already spent.
        let mut refused = 0;
        for n in 0..200 {
            let h = hit("reads", named(&format!("new{n}")), "1/h", 1);
            if t.spend_all(std::slice::from_ref(&h), 0).is_err() {
                refused += 1;
            }
        }
        assert!(
            refused > 0,
            "new callers must fall back to the shared bucket"
        );
        // Bounded: the fill, plus at most one `others` bucket for the limit.
        assert!(t.len() <= SHARDS + 1, "{}", t.len());
    }
}
