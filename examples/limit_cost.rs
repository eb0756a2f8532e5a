//! What the rate limits stage costs per check, in process: the work the engine does
//! on a cached allow (the clock read and one GCRA spend per limit the allow counts
//! against), with no limits, one local limit, several limits, and the Redis store
//! (the same table, flushed to Redis every 10 ms by the store's own sync task while
//! the checks run). Whole-server CPU figures (bench/limits.sh) carry several
//! microseconds of noise; this is the stage alone, best of several rounds.
//!
//! That the Redis store puts no round trip on a check's path is shown twice: the
//! checks are timed one by one against Redis's measured round trip, and the whole
//! measurement is repeated against a "Redis" that accepts connections and never
//! answers (every flush then waits out its timeout): if a check waited on Redis, it
//! would take at least that long.
//!
//! ```text
//! cargo run --release --example limit_cost -- [--redis redis://127.0.0.1:PORT]
//! ```
//! Without `--redis` the store's figures are not measured (bench/limits.sh passes the
//! redis-server it starts).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hopwarden::limits::redis::{sync, RedisSpec, Store};
use hopwarden::limits::{Buckets, Caller, LimitHit, Rate};
use hopwarden::telemetry::Metrics;

const ROUNDS: usize = 5;
const PER_ROUND: u32 = 200_000;
/// Targets from issue #20, in nanoseconds per check.
const LOCAL_TARGET_NS: f64 = 1500.0;
const REDIS_TARGET_NS: f64 = 3000.0;

/// A limit that is never hit (as bench/limits.sh's `never-hit`).
fn hit(limit: &str, caller: Caller) -> LimitHit {
    LimitHit {
        service: "ledger".into(),
        limit: limit.into(),
        caller,
        rate: Rate::parse("1000000000/s").unwrap(),
        burst: 1_000_000_000,
    }
}

/// The engine's limits stage on an allow (`Engine::spend`): nothing without limits,
/// else the clock read and one spend from each limit's bucket.
fn stage(buckets: &Buckets, hits: &[LimitHit]) -> bool {
    if hits.is_empty() {
        return true;
    }
    buckets.spend_all(hits, buckets.now()).is_ok()
}

/// Nanoseconds per check, best of ROUNDS x PER_ROUND.
fn ns_per_check(buckets: &Buckets, hits: &[LimitHit]) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..PER_ROUND {
            assert!(stage(buckets, std::hint::black_box(hits)));
        }
        best = best.min(started.elapsed().as_nanos() as f64 / f64::from(PER_ROUND));
    }
    best
}

/// Each check timed on its own for `seconds`: (checks, slowest in us, checks slower
/// than `slow`).
fn one_by_one(
    buckets: &Buckets,
    hits: &[LimitHit],
    seconds: f64,
    slow: Duration,
) -> (u64, f64, u64) {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let (mut n, mut slowest, mut over) = (0u64, Duration::ZERO, 0u64);
    while Instant::now() < until {
        let t = Instant::now();
        assert!(stage(buckets, hits));
        let took = t.elapsed();
        slowest = slowest.max(took);
        over += u64::from(took >= slow);
        n += 1;
    }
    (n, slowest.as_secs_f64() * 1e6, over)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// Flushes by result so far, from the metrics the sync task fills.
fn flushes(metrics: &Metrics, result: &str) -> u64 {
    let prefix = format!("hopwarden_rate_limit_store_flushes_total{{result=\"{result}\"}} ");
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|n| n.trim().parse().ok()))
        .unwrap_or(0)
}

fn spec(url: String) -> RedisSpec {
    RedisSpec {
        url,
        prefix: format!("limit-cost-{}:", std::process::id()),
        password_file: None,
        ca_file: None,
        flush_interval: Duration::from_millis(10),
        timeout: Duration::from_millis(250),
    }
}

/// The one-limit figure with the store's sync task flushing the table to `url`:
/// (ns per check, flushes ok, flushes failed, checks, slowest check us, checks slower
/// than `slow`).
fn with_store(
    rt: &tokio::runtime::Runtime,
    url: String,
    one: &[LimitHit],
    slow: Duration,
) -> (f64, u64, u64, u64, f64, u64) {
    let buckets = Arc::new(Buckets::default().shared());
    let metrics = Arc::new(Metrics::new());
    let store = {
        let _guard = rt.enter();
        Store::new(&spec(url)).expect("store settings")
    };
    let task = rt.spawn(sync(buckets.clone(), store, metrics.clone()));
    // A first flush before measuring: the connection is made.
    assert!(stage(&buckets, one));
    std::thread::sleep(Duration::from_millis(300));
    let ns = ns_per_check(&buckets, one);
    let (n, slowest, over) = one_by_one(&buckets, one, 1.0, slow);
    let result = (
        ns,
        flushes(&metrics, "ok"),
        flushes(&metrics, "error"),
        n,
        slowest,
        over,
    );
    task.abort();
    result
}

/// Redis's round trip from this process (median of 200 PINGs), in microseconds.
fn redis_rtt_us(rt: &tokio::runtime::Runtime, url: &str) -> f64 {
    rt.block_on(async {
        let client = redis::Client::open(url).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis answers");
        let mut times = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut redis_url = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--redis" => redis_url = args.next(),
            other => panic!("unknown argument {other:?}; usage: limit_cost [--redis URL]"),
        }
    }
    let payments = || {
        Caller::Named(Arc::from(
            "spiffe://hopwarden.local/ns/payments/sa/payments",
        ))
    };
    let one = [hit("payments-reads", payments())];
    // A caller's own limit, a limit per service and one for everyone else, all matching.
    let several = [
        hit("payments-reads", payments()),
        hit("ledger-total", Caller::Service),
        hit("partners-default", Caller::Others),
    ];

    let clock = {
        let b = Buckets::default();
        let started = Instant::now();
        let mut last = 0;
        for _ in 0..PER_ROUND {
            last = std::hint::black_box(b.now());
        }
        assert!(last > 0);
        started.elapsed().as_nanos() as f64 / f64::from(PER_ROUND)
    };
    let none = ns_per_check(&Buckets::default(), &[]);
    let local = ns_per_check(&Buckets::default(), &one);
    let many = ns_per_check(&Buckets::default(), &several);
    println!("limits stage per cached check, in process (best of {ROUNDS} x {PER_ROUND}):");
    println!("  no limits:                {none:8.1} ns");
    println!("  one local limit:          {local:8.1} ns (of which the clock read: {clock:.1} ns)");
    println!(
        "  three matching limits:    {many:8.1} ns ({:.1} ns per limit)",
        (many - none) / 3.0
    );
    let added = local - none;
    println!(
        "  [{}] a local limit adds {added:.1} ns per check (target <= {LOCAL_TARGET_NS:.0} ns)",
        verdict(added <= LOCAL_TARGET_NS)
    );

    let Some(url) = redis_url else {
        println!("  the Redis store: not measured (pass --redis redis://127.0.0.1:PORT)");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let rtt = redis_rtt_us(&rt, &url);
    let slow = Duration::from_secs_f64(rtt / 1e6);
    let (redis_ns, ok, failed, n, slowest, over) = with_store(&rt, url, &one, slow);
    println!(
        "  one limit, Redis store:   {redis_ns:8.1} ns ({ok} flushes to Redis during the run, {failed} failed)"
    );
    // A "Redis" that accepts connections and never answers: every flush waits out
    // its 250 ms timeout. Checks that waited on it would take that long.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("redis://{}", silent.local_addr().unwrap());
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().take(64) {
            held.push(conn);
        }
    });
    let (silent_ns, silent_ok, silent_failed, sn, s_slowest, s_over) =
        with_store(&rt, silent_url, &one, slow);
    println!(
        "  one limit, silent store:  {silent_ns:8.1} ns ({silent_ok} flushes answered, {silent_failed} timed out)"
    );
    println!(
        "  one by one for 1 s each: Redis answering {n} checks, slowest {slowest:.1} us, {over} as slow as a round trip; \
         silent {sn} checks, slowest {s_slowest:.1} us, {s_over} as slow as a round trip \
         (Redis round trip {rtt:.1} us, median of 200 PINGs; outliers as many with a store that never answers are the machine, not Redis)"
    );
    let added = redis_ns - none;
    println!(
        "  [{}] the Redis store adds {added:.1} ns per check (target <= {REDIS_TARGET_NS:.0} ns)",
        verdict(added <= REDIS_TARGET_NS && ok > 0 && failed == 0)
    );
    // No round trip on the path: the store was really written during the run, and
    // with a store that never answers checks cost the same and stay far below one
    // flush timeout (250 ms).
    let no_wait = ok > 0
        && silent_ok == 0
        && silent_failed > 0
        && silent_ns - none <= REDIS_TARGET_NS
        && s_slowest < 250_000.0;
    println!(
        "  [{}] no Redis round trip on a check's path (silent store: {:.1} ns per check vs {redis_ns:.1} answering)",
        verdict(no_wait),
        silent_ns
    );
    drop(rt);
    drop(holder);
}
