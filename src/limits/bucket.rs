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
//!
//! With a shared store (`limits/redis.rs`) the table still makes every decision, so a
//! check never waits on the network: it also counts each bucket's allowed requests
//! not yet sent to the store (`pending`), and the store's answer moves the bucket to
//! the cluster-wide state ([`Buckets::adopt`]). A bucket stays on the list sent to the
//! store while it is not full, even with nothing pending, so a replica also learns
//! what the others spend from a budget it is using.

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
        /// Nanoseconds until the bucket is full again.
        full_in: u64,
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
            full_in: used,
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
pub struct Key {
    /// The protected service.
    pub service: std::sync::Arc<str>,
    /// The limit's id.
    pub limit: std::sync::Arc<str>,
    /// Whose bucket.
    pub caller: Caller,
    /// The sustained rate.
    pub rate: super::Rate,
    /// The burst.
    pub burst: u64,
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

/// A bucket and, with a shared store, its allowed requests the store has not seen.
#[derive(Debug, Clone, Copy)]
struct Slot {
    gcra: Gcra,
    pending: u64,
    /// On the shard's `listed` keys.
    listed: bool,
}

/// One shard: its buckets, and (with a shared store) the keys to send it.
#[derive(Default)]
struct Shard {
    map: HashMap<Key, Slot>,
    listed: Vec<Key>,
}

/// Requests a bucket allowed since its last flush to the shared store (0: the bucket
/// is only read back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The bucket.
    pub key: Key,
    /// How many requests it allowed.
    pub count: u64,
}

/// What an allowed request left in the bucket with the fewest requests left: the
/// numbers behind the RateLimit fields on allowed answers (`limits::Budget`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tightest {
    /// Which of the hits (the first on a tie).
    pub hit: usize,
    /// Requests that would still fit at once.
    pub remaining: u64,
    /// Nanoseconds until that bucket is full again.
    pub full_in: u64,
}

/// Which bucket a spend came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bucket {
    /// The hit's own: its caller's, its service's or its `others`.
    Own,
    /// Its limit's `others` bucket, for a named caller the full table had no room for.
    Others,
}

/// Every bucket of the process, bounded.
pub struct Buckets {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    per_shard: usize,
    epoch: Instant,
    shared: bool,
}

impl Buckets {
    /// A table of at most about `max_buckets` buckets (at least one per shard).
    pub fn new(max_buckets: usize) -> Self {
        Buckets {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            per_shard: max_buckets.div_ceil(SHARDS).max(1),
            epoch: Instant::now(),
            shared: false,
        }
    }

    /// Also counts allowed requests for a shared store ([`Buckets::take_pending`]).
    pub fn shared(mut self) -> Self {
        self.shared = true;
        self
    }

    /// Nanoseconds since the table was made.
    pub fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Spends one request from every hit's bucket at `now`, or none: when one is
    /// empty the request is refused and the buckets already spent are refunded, so a
    /// refused request costs nothing. An allowed request learns what its tightest
    /// bucket has left (`None` with no hits).
    pub fn spend_all(&self, hits: &[LimitHit], now: u64) -> Result<Option<Tightest>, RateLimited> {
        let mut tightest: Option<Tightest> = None;
        // The hits spent from their limit's `others` bucket (a full table), to refund
        // that one: rare, so the common check allocates nothing.
        let mut from_others: Vec<usize> = Vec::new();
        for (i, hit) in hits.iter().enumerate() {
            let (spent, bucket) = self.spend_from(hit, now);
            if bucket == Bucket::Others {
                from_others.push(i);
            }
            match spent {
                Spent::Allowed { remaining, full_in } => {
                    if tightest.is_none_or(|t| remaining < t.remaining) {
                        tightest = Some(Tightest {
                            hit: i,
                            remaining,
                            full_in,
                        });
                    }
                }
                Spent::Refused { wait_nanos } => {
                    for (j, earlier) in hits[..i].iter().enumerate() {
                        let bucket = if from_others.contains(&j) {
                            Bucket::Others
                        } else {
                            Bucket::Own
                        };
                        self.refund(earlier, bucket, now);
                    }
                    return Err(RateLimited {
                        limit: hit.limit.clone(),
                        rate: hit.rate,
                        retry_after: whole_seconds(wait_nanos),
                    });
                }
            }
        }
        Ok(tightest)
    }

    /// Spends one request from `hit`'s bucket, or from its limit's shared `others`
    /// bucket when a named caller's shard is full of busy buckets.
    pub fn spend(&self, hit: &LimitHit, now: u64) -> Spent {
        self.spend_from(hit, now).0
    }

    /// [`Buckets::spend`], saying which bucket paid.
    fn spend_from(&self, hit: &LimitHit, now: u64) -> (Spent, Bucket) {
        let interval = hit.rate.interval_nanos();
        let mut key = Key::of(hit);
        let mut bucket = Bucket::Own;
        let mut shard = self.shard(&key);
        if !shard.map.contains_key(&key) && shard.map.len() >= self.per_shard {
            // A bucket with requests the store has not seen yet is kept until flushed.
            shard.map.retain(|_, b| !b.gcra.idle(now) || b.pending > 0);
            // Evicted keys leave the list too (a key comes back with a fresh slot).
            let Shard { map, listed } = &mut *shard;
            listed.retain(|k| map.contains_key(k));
            // Full of busy buckets: a named caller shares the limit's bucket for everyone
            // else. A limit's `service` and `others` buckets are always kept (they are
            // bounded by the policies): moving one would make it a second budget.
            if shard.map.len() >= self.per_shard && matches!(key.caller, Caller::Named(_)) {
                drop(shard);
                key.caller = Caller::Others;
                bucket = Bucket::Others;
                shard = self.shard(&key);
            }
        }
        let Shard { map, listed } = &mut *shard;
        let (spent, list) = match map.get_mut(&key) {
            Some(slot) => self.spend_slot(slot, now, interval, hit.burst),
            None => {
                let mut slot = Slot {
                    gcra: Gcra::new(now),
                    pending: 0,
                    listed: false,
                };
                let (spent, list) = self.spend_slot(&mut slot, now, interval, hit.burst);
                if list {
                    listed.push(key.clone());
                }
                map.insert(key, slot);
                return (spent, bucket);
            }
        };
        if list {
            listed.push(key);
        }
        (spent, bucket)
    }

    /// Spends from one slot; with a shared store also counts the allowed request, and
    /// says whether the key must join the shard's list.
    fn spend_slot(&self, slot: &mut Slot, now: u64, interval: u64, burst: u64) -> (Spent, bool) {
        let spent = slot.gcra.spend(now, interval, burst);
        let mut list = false;
        if self.shared && matches!(spent, Spent::Allowed { .. }) {
            slot.pending += 1;
            list = !std::mem::replace(&mut slot.listed, true);
        }
        (spent, list)
    }

    /// Takes every bucket's count of allowed requests since the last call (and resets
    /// it), for the shared store; buckets not full at `now` come too, with what they
    /// have (maybe 0), so the store's answer updates them. Full buckets with nothing
    /// pending leave the list.
    pub fn take_pending(&self, now: u64) -> Vec<Pending> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let shard = &mut *shard;
            let listed = std::mem::take(&mut shard.listed);
            for key in listed {
                let Some(slot) = shard.map.get_mut(&key) else {
                    continue;
                };
                let count = std::mem::take(&mut slot.pending);
                if count == 0 && slot.gcra.idle(now) {
                    slot.listed = false;
                    continue;
                }
                shard.listed.push(key.clone());
                out.push(Pending { key, count });
            }
        }
        out
    }

    /// Moves a bucket to the cluster-wide state: the shared bucket is full again
    /// `ahead_nanos` after `now` (the store's answer to the last flush), and the
    /// requests allowed here since that flush come on top.
    ///
    /// The answer only ever adds to what this replica spent: a store that never
    /// counted some of its requests (flushes lost while it was unreachable, or a
    /// store that restarted empty) must not hand that budget out a second time.
    pub fn adopt(&self, key: &Key, ahead_nanos: u64, now: u64) {
        let mut shard = self.shard(key);
        if let Some(slot) = shard.map.get_mut(key) {
            let interval = key.rate.interval_nanos();
            let shared = now
                .saturating_add(ahead_nanos)
                .saturating_add(slot.pending.saturating_mul(interval));
            slot.gcra.tat = slot.gcra.tat.max(shared);
        }
    }

    /// Gives back the request `hit` spent from `bucket` at `now` (a later limit
    /// refused it).
    fn refund(&self, hit: &LimitHit, bucket: Bucket, now: u64) {
        let mut key = Key::of(hit);
        if bucket == Bucket::Others {
            key.caller = Caller::Others;
        }
        let mut shard = self.shard(&key);
        if let Some(slot) = shard.map.get_mut(&key) {
            // Undo our one interval, not anyone else's spend since; a bucket that was
            // full before the spend is full again at `now`.
            let interval = hit.rate.interval_nanos();
            slot.gcra.tat = slot.gcra.tat.saturating_sub(interval).max(now);
            slot.pending = slot.pending.saturating_sub(1);
        }
    }

    /// The number of buckets held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Which shard holds `key`'s bucket.
    fn shard_index(&self, key: &Key) -> usize {
        usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0)
    }

    fn shard(&self, key: &Key) -> std::sync::MutexGuard<'_, Shard> {
        let index = self.shard_index(key);
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
            (0, Spent::Allowed { remaining: 2, full_in: S / 2 }),
            (0, Spent::Allowed { remaining: 1, full_in: S }),
            (0, Spent::Allowed { remaining: 0, full_in: 3 * S / 2 }),
            // Burst spent: the next fits once one interval has come back.
            (0, Spent::Refused { wait_nanos: S / 2 }),
            (S / 4, Spent::Refused { wait_nanos: S / 4 }),
            (S / 2, Spent::Allowed { remaining: 0, full_in: 3 * S / 2 }),
            (S / 2, Spent::Refused { wait_nanos: S / 2 }),
            // Refill: 2 s later the bucket is full again (burst, not more).
            (3 * S, Spent::Allowed { remaining: 2, full_in: S / 2 }),
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
        assert_eq!(
            b.spend(0, S, 1),
            Spent::Allowed {
                remaining: 0,
                full_in: S
            }
        );
        let before = b;
        for t in [0, S / 10, S / 2, S - 1] {
            assert_eq!(b.spend(t, S, 1), Spent::Refused { wait_nanos: S - t });
            assert_eq!(b, before, "a refusal must not move the bucket");
        }
        assert_eq!(
            b.spend(S, S, 1),
            Spent::Allowed {
                remaining: 0,
                full_in: S
            }
        );
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
    fn an_allow_reports_its_tightest_bucket() {
        let t = Buckets::new(100);
        assert_eq!(t.spend_all(&[], 0), Ok(None));
        // roomy: 10/s, burst 5; tight: 1/m, burst 2.
        let roomy = hit("roomy", named("a"), "10/s", 5);
        let tight = hit("tight", named("a"), "1/m", 2);
        let both = [roomy.clone(), tight.clone()];
        let first = t.spend_all(&both, 0).unwrap().unwrap();
        // roomy has 4 left, tight 1: tight is the one (index 1), full again in 1 minute.
        assert_eq!(
            first,
            Tightest {
                hit: 1,
                remaining: 1,
                full_in: 60 * S
            }
        );
        // Alone, roomy reports itself: 3 left, full again in 2 intervals.
        let alone = t
            .spend_all(std::slice::from_ref(&roomy), 0)
            .unwrap()
            .unwrap();
        assert_eq!(
            alone,
            Tightest {
                hit: 0,
                remaining: 3,
                full_in: 2 * S / 10
            }
        );
        // Listed first and spent out, tight is still the one (roomy, spent twice more
        // here, has 1 left).
        let last = t
            .spend_all(&[tight.clone(), roomy.clone(), roomy.clone()], 0)
            .unwrap()
            .unwrap();
        assert_eq!((last.hit, last.remaining), (0, 0));
        assert_eq!(last.full_in, 120 * S);
        // A tie goes to the first listed.
        let x = hit("x", named("b"), "1/s", 1);
        let y = hit("y", named("b"), "1/s", 1);
        let tie = t.spend_all(&[x, y], 0).unwrap().unwrap();
        assert_eq!((tie.hit, tie.remaining), (0, 0));
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
            if matches!(t.spend(c, later), Spent::Allowed { .. }) {
                allowed += 1;
            }
        }
        // Each shard's idle bucket made room for one new caller, and `others` let one
        // more through: more than the first round's busy table would have.
        assert!(allowed >= SHARDS, "{allowed}");
        assert!(t.len() <= 2 * SHARDS, "{}", t.len());
        let fresh = hit("reads", named("fresh"), "1/s", 1);
        let spent = t.spend(&fresh, 10 * S);
        assert_eq!(
            spent,
            Spent::Allowed {
                remaining: 0,
                full_in: S
            }
        );
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

    /// The named callers holding a bucket in `key`'s shard, sorted (the shared
    /// `others` bucket may hash to any shard, so it is left out).
    fn callers_beside(t: &Buckets, key: &Key) -> Vec<String> {
        let mut callers: Vec<String> = t
            .shard(key)
            .map
            .keys()
            .filter(|k| k.caller != Caller::Others)
            .map(|k| k.caller.as_str().to_string())
            .collect();
        callers.sort();
        callers
    }

    /// A new caller whose bucket would go to `of`'s shard.
    fn in_the_shard_of(t: &Buckets, of: &LimitHit, prefix: &str) -> LimitHit {
        let shard = |h: &LimitHit| t.shard_index(&Key::of(h));
        (0..100_000)
            .map(|i| hit(&of.limit, named(&format!("{prefix}{i}")), "1/s", 2))
            .find(|h| shard(h) == shard(of))
            .expect("some name hashes to every shard")
    }

    #[test]
    fn a_full_shard_evicts_only_idle_buckets_and_keeps_its_callers_own() {
        // One bucket per shard. a: one a second, burst 3.
        let t = Buckets::new(1);
        let a = hit("reads", named("a"), "1/s", 3);
        let a_key = Key::of(&a);
        let left = |spent: Spent| match spent {
            Spent::Allowed { remaining, .. } => remaining,
            Spent::Refused { .. } => panic!("refused"),
        };
        assert_eq!(left(t.spend(&a, 0)), 2);
        // a's own bucket, in its full shard, is still a's: not the shared one.
        assert_eq!(left(t.spend(&a, 0)), 1);
        assert_eq!(callers_beside(&t, &a_key), ["a"]);
        // A new caller in that shard while a is busy shares `others` (somewhere else).
        let b = in_the_shard_of(&t, &a, "b");
        assert_eq!(left(t.spend(&b, S / 2)), 1);
        assert_eq!(callers_beside(&t, &a_key), ["a"]);
        assert_eq!(t.len(), 2, "a and the limit's others bucket");
        // Once a's bucket is full again (2 s after its two requests) it is evicted,
        // and the next new caller has a bucket of its own.
        let c = in_the_shard_of(&t, &a, "c");
        assert_eq!(left(t.spend(&c, 2 * S)), 1);
        assert_eq!(callers_beside(&t, &a_key), [c.caller.as_str()]);
    }

    #[test]
    fn a_refusal_refunds_the_shared_bucket_a_full_table_sent_the_caller_to() {
        let t = Buckets::new(1);
        // n has spent its one request an hour of `tight`, in a bucket of its own.
        let tight = hit("tight", named("n"), "1/h", 1);
        assert!(t.spend_all(std::slice::from_ref(&tight), 0).is_ok());
        // Then every shard fills with busy buckets.
        fill_every_shard(&t);
        // n's `roomy` bucket would be new in a full shard: it spends from roomy's
        // `others` bucket, and `tight` refuses, so that spend is given back.
        let roomy = |caller: &str| hit("roomy", named(caller), "10/s", 5);
        let refused = t.spend_all(&[roomy("n"), tight.clone()], 0).unwrap_err();
        assert_eq!(&*refused.limit, "tight");
        // The next new caller finds the shared bucket as it was: 4 left after it.
        let next = t.spend_all(&[roomy("m")], 0).unwrap().unwrap();
        assert_eq!(next.remaining, 4, "the refused request was not refunded");
    }

    /// Whether the table holds a bucket for `key`.
    fn holds(t: &Buckets, key: &Key) -> bool {
        t.shard(key).map.contains_key(key)
    }

    /// Fills every shard of `t` with a busy bucket (of another limit).
    fn fill_every_shard(t: &Buckets) {
        let full = |t: &Buckets| t.shards.iter().all(|s| !s.lock().unwrap().map.is_empty());
        for i in 0.. {
            if full(t) {
                return;
            }
            assert!(i < 100_000);
            let _ = t.spend(&hit("fill", named(&format!("fill{i}")), "1/h", 1), 0);
        }
    }

    #[test]
    fn a_full_table_keeps_service_and_others_buckets_where_they_are() {
        let t = Buckets::new(1);
        fill_every_shard(&t);
        // One budget for the service: a full table does not give it a second one
        // under `others`.
        let service = hit("imports", Caller::Service, "10/m", 2);
        assert!(t.spend_all(std::slice::from_ref(&service), 0).is_ok());
        assert!(holds(&t, &Key::of(&service)));
        let others = Key {
            caller: Caller::Others,
            ..Key::of(&service)
        };
        assert!(!holds(&t, &others));
        assert!(t.spend_all(std::slice::from_ref(&service), 0).is_ok());
        assert!(t.spend_all(std::slice::from_ref(&service), 0).is_err());
        // A named caller with no room does move to `others`.
        let named_hit = hit("imports", named("n"), "10/m", 2);
        assert!(t.spend_all(std::slice::from_ref(&named_hit), 0).is_ok());
        assert!(!holds(&t, &Key::of(&named_hit)));
        assert!(holds(&t, &others));
    }

    #[test]
    fn a_refund_goes_to_the_bucket_that_paid() {
        let t = Buckets::new(1);
        fill_every_shard(&t);
        let others = Key {
            caller: Caller::Others,
            ..Key::of(&hit("roomy", named("n"), "10/s", 5))
        };
        // A caller whose bucket goes to another shard than `others`.
        let shard = |key: &Key| t.shard_index(key);
        let n = (0..1000)
            .map(|i| hit("roomy", named(&format!("n{i}")), "10/s", 5))
            .find(|n| shard(&Key::of(n)) != shard(&others))
            .unwrap();
        let left = |spent: Spent| match spent {
            Spent::Allowed { remaining, .. } => remaining,
            Spent::Refused { .. } => panic!("refused"),
        };
        // n has no room just before the fill's buckets go idle: `others` pays.
        let first = 3600 * S - 1;
        let (spent, bucket) = t.spend_from(&n, first);
        assert_eq!((left(spent), bucket), (4, Bucket::Others));
        // Meanwhile (another check of n's) the fill went idle and n got a bucket of its
        // own; `others` is still busy and stays.
        let (spent, bucket) = t.spend_from(&n, 3600 * S);
        assert_eq!((left(spent), bucket), (4, Bucket::Own));
        // The first check is refused by another limit: its refund goes to `others`,
        // and n's own bucket keeps the second check's spend.
        t.refund(&n, Bucket::Others, first);
        assert_eq!(t.shard(&others).map[&others].gcra.tat, first, "refunded");
        assert_eq!(left(t.spend(&n, 3600 * S)), 3);
    }

    #[test]
    fn the_clock_moves_and_an_empty_table_says_so() {
        let t = Buckets::new(100);
        assert!(t.is_empty());
        let before = t.now();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let after = t.now();
        assert!(after >= before + 5_000_000, "{before} then {after}");
        assert!(t
            .spend_all(&[hit("reads", named("a"), "1/s", 1)], after)
            .is_ok());
        assert!(!t.is_empty());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_shared_table_counts_pending_requests_and_adopts_the_stores_state() {
        let t = Buckets::new(100).shared();
        let a = hit("reads", named("a"), "10/s", 5);
        let b = hit("reads", named("b"), "10/s", 5);
        for _ in 0..3 {
            assert!(t.spend_all(std::slice::from_ref(&a), 0).is_ok());
        }
        assert!(t.spend_all(std::slice::from_ref(&b), 0).is_ok());
        let counts = |batch: &[Pending]| {
            let mut c: Vec<(String, u64)> = batch
                .iter()
                .map(|p| (p.key.caller.as_str().to_string(), p.count))
                .collect();
            c.sort();
            c
        };
        let batch = t.take_pending(0);
        assert_eq!(counts(&batch), [("a".into(), 3), ("b".into(), 1)]);
        // Taken: the buckets are not full, so they are read back with nothing to add.
        assert_eq!(
            counts(&t.take_pending(0)),
            [("a".into(), 0), ("b".into(), 0)]
        );
        // A request allowed while the flush was in flight stays pending and counts on
        // top of the store's answer: the other replicas spent the rest of a's burst
        // (full again 0.4 s from now), so with this one a has no room left.
        assert!(t.spend_all(std::slice::from_ref(&a), 0).is_ok());
        let a_key = Key::of(&a);
        t.adopt(&a_key, 4 * S / 10, 0);
        let refused = t.spend_all(std::slice::from_ref(&a), 0).unwrap_err();
        assert_eq!(&*refused.limit, "reads");
        let pending = counts(&t.take_pending(0));
        assert_eq!(
            pending[0],
            ("a".into(), 1),
            "a refused request is never sent"
        );
        // The store says the bucket is full (it restarted empty, or lost flushes while
        // unreachable): what this replica spent stays spent.
        t.adopt(&a_key, 0, 0);
        assert!(t.spend_all(std::slice::from_ref(&a), 0).is_err());
        // Once a's bucket is full here too, it has the whole burst again.
        t.adopt(&a_key, 0, S);
        for _ in 0..5 {
            assert!(t.spend_all(std::slice::from_ref(&a), S).is_ok());
        }
        assert!(t.spend_all(std::slice::from_ref(&a), S).is_err());
        // Once every bucket is full again and nothing is pending, the list empties.
        assert!(!t.take_pending(10 * S).is_empty(), "a's five are pending");
        assert!(t.take_pending(10 * S).is_empty());
    }

    #[test]
    fn a_local_table_counts_nothing_for_a_store() {
        let t = Buckets::new(100);
        assert!(t
            .spend_all(&[hit("reads", named("a"), "10/s", 5)], 0)
            .is_ok());
        assert!(t.take_pending(0).is_empty());
    }

    #[test]
    fn a_bucket_with_pending_requests_is_not_evicted() {
        let t = Buckets::new(1).shared();
        let first = hit("reads", named("first"), "1000/s", 1);
        assert!(t.spend_all(std::slice::from_ref(&first), 0).is_ok());
        // Much later the bucket is idle, but the store has not seen its request yet.
        for i in 0..200 {
            let _ = t.spend(&hit("reads", named(&format!("n{i}")), "1000/s", 1), 10 * S);
        }
        let pending = t.take_pending(10 * S);
        assert!(
            pending
                .iter()
                .any(|p| p.key.caller.as_str() == "first" && p.count == 1),
            "{pending:?}"
        );
    }
}
