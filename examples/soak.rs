//! The soak test's driver (`bench/soak.sh` starts hopwarden and Envoy, then this).
//!
//! Sends `--rate` requests a second through Envoy for `--seconds`, each of a kind whose
//! answer is known before it is sent (an allowed read, a missing scope, a denied path,
//! no token, an unknown key, an expired token, another audience, a fresh token, a token
//! of a retired key), while it
//! - rewrites the policy every `--reload-every` seconds (the same rules, a new decoy
//!   rule and description each time) and waits for `policy_generation` to show it;
//! - rotates the signing key every `--rotate-every` seconds: the JWKS gets the new key
//!   beside the old one, tokens switch to the new key once hopwarden has read it, and
//!   the old key leaves the JWKS after a grace period; from then on its tokens, allowed
//!   a minute ago and cached, must be refused;
//! - every `--burst-every` seconds sends a burst of malformed requests through Envoy
//!   (garbage and oversized tokens, non-canonical paths, odd methods) and of raw junk
//!   straight to hopwarden's gRPC port;
//! - samples hopwarden's and Envoy's RSS and descriptors from /proc.
//!
//! Prints one line per minute and a summary, and exits non-zero on any wrong answer,
//! any error outside the malformed requests, or a reload that did not apply.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use clap::Parser;
use hdrhistogram::Histogram;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

type Error = Box<dyn std::error::Error + Send + Sync>;

const ISSUER: &str = "https://sts.soak.local";

#[derive(Parser)]
struct Args {
    /// Envoy's listener on 127.0.0.1.
    #[arg(long)]
    envoy_port: u16,
    /// hopwarden's gRPC port (raw junk in the bursts goes straight to it).
    #[arg(long)]
    grpc_port: u16,
    /// hopwarden's admin port (`/metrics`).
    #[arg(long)]
    admin_port: u16,
    #[arg(long)]
    hopwarden_pid: u32,
    #[arg(long)]
    envoy_pid: u32,
    /// Holds key-N.pem and key-N.jwks (its JWKS) for N = 0.., and stranger.pem.
    #[arg(long)]
    keys: PathBuf,
    /// The JWKS file hopwarden reads.
    #[arg(long)]
    jwks: PathBuf,
    /// The policy file to rewrite.
    #[arg(long)]
    policy: PathBuf,
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    reload_every: u64,
    #[arg(long, default_value_t = 60)]
    rotate_every: u64,
    #[arg(long, default_value_t = 30)]
    burst_every: u64,
    /// How long the old key stays in the JWKS after tokens moved to the new one.
    #[arg(long, default_value_t = 20)]
    grace: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Tokens of one signing key, minted when it becomes current.
struct Tokens {
    kid: String,
    key: EncodingKey,
    allowed: Vec<String>,
    wrong_scope: Vec<String>,
    wrong_audience: Vec<String>,
    expired: Vec<String>,
}

impl Tokens {
    fn mint_one(&self, scope: &str, aud: &str, exp: u64, jti: &str) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let claims = json!({"iss": ISSUER, "sub": "spiffe://soak.local/ns/payments/sa/payments",
            "aud": aud, "scope": scope, "exp": exp, "iat": now_secs(), "jti": jti});
        jsonwebtoken::encode(&header, &claims, &self.key).expect("sign")
    }

    fn new(pem: &[u8], kid: &str) -> Result<Tokens, Error> {
        let mut t = Tokens {
            kid: kid.to_string(),
            key: EncodingKey::from_ec_pem(pem)?,
            allowed: Vec::new(),
            wrong_scope: Vec::new(),
            wrong_audience: Vec::new(),
            expired: Vec::new(),
        };
        let live = now_secs() + 1800;
        let mint = |t: &Tokens, n, scope, aud, exp| -> Vec<String> {
            (0..n)
                .map(|i| t.mint_one(scope, aud, exp, &format!("{kid}-{scope}-{aud}-{i}")))
                .collect()
        };
        t.allowed = mint(&t, 200, "ledger.read", "ledger", live);
        t.wrong_scope = mint(&t, 50, "ledger.write", "ledger", live);
        t.wrong_audience = mint(&t, 50, "ledger.read", "email", live);
        t.expired = mint(&t, 50, "ledger.read", "ledger", now_secs() - 120);
        Ok(t)
    }
}

/// The tokens in use: the current key's, and a retired key's once its tokens must fail.
struct Keys {
    current: Arc<Tokens>,
    retired: Option<Arc<Tokens>>,
    stranger: Arc<Tokens>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Allowed,
    Fresh,
    WrongScope,
    DeniedPath,
    NoToken,
    UnknownKey,
    Expired,
    WrongAudience,
    Retired,
    Malformed,
}

/// One minute's figures.
struct Minute {
    sent: u64,
    wrong: u64,
    errors: u64,
    malformed: u64,
    malformed_errors: u64,
    latency_us: Histogram<u64>,
}

impl Minute {
    fn new() -> Minute {
        Minute {
            sent: 0,
            wrong: 0,
            errors: 0,
            malformed: 0,
            malformed_errors: 0,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
        }
    }
}

struct Stats {
    start: Instant,
    minutes: Mutex<Vec<Minute>>,
    wrong_samples: Mutex<Vec<String>>,
    overload: AtomicU64,
    retired_checked: AtomicU64,
}

impl Stats {
    fn record(&self, kind: Kind, result: Result<u16, String>, latency: Duration) {
        let minute = (self.start.elapsed().as_secs() / 60) as usize;
        let (wrong, error) = match (kind, &result) {
            (Kind::Malformed, Ok(s)) => (*s < 400, *s >= 500),
            (_, Ok(s)) if *s >= 500 => (false, true),
            (_, Ok(s)) => (*s != expected(kind), false),
            (_, Err(_)) => (false, true),
        };
        if wrong || (error && kind != Kind::Malformed) {
            let mut samples = self.wrong_samples.lock().unwrap();
            if samples.len() < 20 {
                samples.push(format!(
                    "t={}s {kind:?}: {result:?}",
                    self.start.elapsed().as_secs()
                ));
            }
        }
        let mut minutes = self.minutes.lock().unwrap();
        while minutes.len() <= minute {
            minutes.push(Minute::new());
        }
        let m = &mut minutes[minute];
        m.wrong += u64::from(wrong);
        if kind == Kind::Malformed {
            m.malformed += 1;
            m.malformed_errors += u64::from(error);
        } else {
            m.sent += 1;
            m.errors += u64::from(error);
            if !error {
                let _ = m.latency_us.record(latency.as_micros().max(1) as u64);
            }
        }
    }
}

fn expected(kind: Kind) -> u16 {
    match kind {
        Kind::Allowed | Kind::Fresh => 200,
        Kind::WrongScope | Kind::DeniedPath => 403,
        _ => 401,
    }
}

fn kind_for(seq: u64, keys: &Keys) -> Kind {
    match seq % 20 {
        10 | 11 => Kind::Fresh,
        12 => Kind::WrongScope,
        13 => Kind::DeniedPath,
        14 => Kind::NoToken,
        15 => Kind::UnknownKey,
        16 => Kind::Expired,
        17 => Kind::WrongAudience,
        18 if keys.retired.is_some() => Kind::Retired,
        _ => Kind::Allowed,
    }
}

/// The request for `kind`: path and bearer token.
fn request_for(kind: Kind, seq: u64, keys: &Keys) -> (String, Option<String>) {
    let pick = |v: &Vec<String>| v[(seq as usize / 20) % v.len()].clone();
    let cur = &keys.current;
    let path = format!("/transactions/{}", seq % 1000);
    match kind {
        Kind::Allowed => (path, Some(pick(&cur.allowed))),
        Kind::Fresh => {
            let token = cur.mint_one("ledger.read", "ledger", now_secs() + 600, &seq.to_string());
            (path, Some(token))
        }
        Kind::WrongScope => (path, Some(pick(&cur.wrong_scope))),
        Kind::DeniedPath => (format!("/refunds/{}", seq % 100), Some(pick(&cur.allowed))),
        Kind::NoToken => (path, None),
        Kind::UnknownKey => (path, Some(pick(&keys.stranger.allowed))),
        Kind::Expired => (path, Some(pick(&cur.expired))),
        Kind::WrongAudience => (path, Some(pick(&cur.wrong_audience))),
        Kind::Retired => (path, Some(pick(&keys.retired.as_ref().unwrap().allowed))),
        Kind::Malformed => unreachable!("bursts build their own"),
    }
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    method: reqwest::Method,
    token: Option<String>,
) -> Result<u16, String> {
    let mut req = client.request(method, url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    resp.bytes().await.map_err(|e| e.to_string())?;
    Ok(status)
}

/// Malformed requests through Envoy (`count` of them) and raw junk to hopwarden.
async fn burst(
    client: reqwest::Client,
    base: String,
    grpc_port: u16,
    stats: Arc<Stats>,
    good: String,
) {
    let huge = "a".repeat(20 * 1024);
    let shapes: Vec<(reqwest::Method, String, Option<String>)> = vec![
        (
            reqwest::Method::GET,
            "/transactions/1".into(),
            Some("garbage".into()),
        ),
        (
            reqwest::Method::GET,
            "/transactions/1".into(),
            Some(huge.clone()),
        ),
        (
            reqwest::Method::GET,
            "/transactions/1".into(),
            Some(format!("{huge}.{huge}.x")),
        ),
        (
            reqwest::Method::GET,
            "/transactions/1".into(),
            Some("e30.e30.".into()),
        ),
        (
            reqwest::Method::GET,
            "/transactions/1".into(),
            Some("!!!.@@@.###".into()),
        ),
        (
            reqwest::Method::GET,
            "/transactions/1;x".into(),
            Some(good.clone()),
        ),
        (
            reqwest::Method::GET,
            "/transactions/a%2Fb".into(),
            Some(good.clone()),
        ),
        (
            reqwest::Method::GET,
            "/transactions/a%5Cb".into(),
            Some(good.clone()),
        ),
        (
            reqwest::Method::GET,
            "/transactions/%ff".into(),
            Some(good.clone()),
        ),
        (
            reqwest::Method::from_bytes(b"BREW").unwrap(),
            "/transactions/1".into(),
            Some(good.clone()),
        ),
    ];
    let mut tasks = Vec::new();
    for i in 0..300 {
        let (method, path, token) = shapes[i % shapes.len()].clone();
        let (client, url, stats) = (client.clone(), format!("{base}{path}"), stats.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = send(&client, &url, method, token).await;
            stats.record(Kind::Malformed, r, t.elapsed());
        }));
        if i % 30 == 29 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Raw junk straight to hopwarden's gRPC port: not HTTP/2, an HTTP/2 preface then
    // junk, and a gRPC call with a body that is not protobuf.
    let junk = tokio::task::spawn_blocking(move || {
        let mut closed = 0;
        for i in 0..20u8 {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", grpc_port)) else {
                continue;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
            let mut bytes: Vec<u8> = (0..4096u32)
                .map(|n| (n as u8).wrapping_mul(31).wrapping_add(i))
                .collect();
            if i % 2 == 1 {
                bytes.splice(0..0, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".iter().copied());
            }
            let _ = s.write_all(&bytes);
            let mut buf = [0u8; 4096];
            // Read until the server closes (or 3 s pass).
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        closed += 1;
                        break;
                    }
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
        }
        closed
    });
    for t in tasks {
        let _ = t.await;
    }
    let _ = junk.await;
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let name = path.file_name().unwrap().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

fn policy_text(generation: u64) -> String {
    format!(
        "# soak policy, generation {generation}\nservice: ledger\nrules:\n  - id: soak-read\n    description: Any soak caller with ledger.read reads a transaction (generation {generation}).\n    from: {{ issuers: [\"{ISSUER}\"] }}\n    to: [{{ methods: [GET], paths: [\"/transactions/{{id}}\"] }}]\n    scopes: [ledger.read]\n  - id: soak-no-refunds\n    effect: deny\n    to: [{{ paths: [\"/refunds/**\"] }}]\n  - id: soak-decoy-{generation}\n    from: {{ principals: [\"svc-decoy-{generation}\"] }}\n    to: [{{ methods: [GET], paths: [\"/decoy/{generation}\"] }}]\n"
    )
}

fn jwks_text(keys: &Path, ids: &[u64]) -> Result<String, Error> {
    let mut jwks = Vec::new();
    for id in ids {
        // `hopwarden token --jwks` output: a JWKS of the one key.
        let set: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
            keys.join(format!("key-{id}.jwks")),
        )?)?;
        jwks.push(set["keys"][0].clone());
    }
    Ok(json!({ "keys": jwks }).to_string())
}

async fn generation(client: &reqwest::Client, admin: u16) -> Option<u64> {
    let text = client
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| {
            l.starts_with("hopwarden_policy_generation ") || l.starts_with("policy_generation ")
        })
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// (RSS bytes, open descriptors) of a process.
fn usage(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((kb * 1024, fds))
}

/// Least-squares slope of (seconds, bytes), in MB per minute.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if den == 0.0 {
        0.0
    } else {
        num / den * 60.0 / 1e6
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let a = Args::parse();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .timeout(Duration::from_secs(5))
        .build()?;
    let base = format!("http://127.0.0.1:{}", a.envoy_port);
    let read = |name: &str| std::fs::read(a.keys.join(name));
    let keys = Arc::new(ArcSwap::from_pointee(Keys {
        current: Arc::new(Tokens::new(&read("key-0.pem")?, "soak-0")?),
        retired: None,
        stranger: Arc::new(Tokens::new(&read("stranger.pem")?, "soak-stranger")?),
    }));
    let stats = Arc::new(Stats {
        start: Instant::now(),
        minutes: Mutex::new(Vec::new()),
        wrong_samples: Mutex::new(Vec::new()),
        overload: AtomicU64::new(0),
        retired_checked: AtomicU64::new(0),
    });
    let deadline = Duration::from_secs(a.seconds);
    let start = stats.start;
    let reloads = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));

    // Policy reloads: rewrite, then wait for the generation to show it.
    let reload_task = {
        let (client, policy, reloads) = (client.clone(), a.policy.clone(), reloads.clone());
        let (admin, every) = (a.admin_port, a.reload_every);
        tokio::spawn(async move {
            let first = generation(&client, admin).await.unwrap_or(1);
            let mut n = 0;
            loop {
                n += 1;
                tokio::time::sleep_until((start + Duration::from_secs(every * n)).into()).await;
                if start.elapsed() + Duration::from_secs(5) > deadline {
                    break;
                }
                if write_atomically(&policy, &policy_text(n)).is_err() {
                    reloads.1.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let t = Instant::now();
                let mut applied = false;
                while t.elapsed() < Duration::from_secs(5) {
                    if generation(&client, admin)
                        .await
                        .is_some_and(|g| g >= first + n)
                    {
                        applied = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let counter = if applied { &reloads.0 } else { &reloads.1 };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // Key rotations: add the next key, move tokens to it, drop the old key after the grace.
    let rotations = Arc::new(AtomicU64::new(0));
    let rotate_task = {
        let (keys, dir, jwks, rotations) = (
            keys.clone(),
            a.keys.clone(),
            a.jwks.clone(),
            rotations.clone(),
        );
        let (every, grace) = (a.rotate_every, a.grace);
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                n += 1;
                tokio::time::sleep_until((start + Duration::from_secs(every * n)).into()).await;
                if start.elapsed() + Duration::from_secs(grace + 10) > deadline {
                    break;
                }
                let (old, new) = (n - 1, n);
                let Ok(text) = jwks_text(&dir, &[old, new]) else {
                    break;
                };
                write_atomically(&jwks, &text).expect("write jwks");
                // hopwarden re-reads the file every second: give it three.
                tokio::time::sleep(Duration::from_secs(3)).await;
                let pem = std::fs::read(dir.join(format!("key-{new}.pem"))).expect("key");
                let tokens = Arc::new(Tokens::new(&pem, &format!("soak-{new}")).expect("mint"));
                let previous = keys.load().current.clone();
                keys.rcu(|k| Keys {
                    current: tokens.clone(),
                    retired: None,
                    stranger: k.stranger.clone(),
                });
                tokio::time::sleep(Duration::from_secs(grace)).await;
                write_atomically(&jwks, &jwks_text(&dir, &[new]).expect("jwks"))
                    .expect("write jwks");
                tokio::time::sleep(Duration::from_secs(3)).await;
                // From now on the retired key's tokens (allowed and cached a minute
                // ago) must be refused.
                keys.rcu(|k| Keys {
                    current: k.current.clone(),
                    retired: Some(previous.clone()),
                    stranger: k.stranger.clone(),
                });
                rotations.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // Malformed bursts.
    let burst_task = {
        let (client, base, stats, keys) =
            (client.clone(), base.clone(), stats.clone(), keys.clone());
        let (every, grpc_port) = (a.burst_every, a.grpc_port);
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                tokio::time::sleep_until(
                    (start + Duration::from_secs(every / 2 + every * n)).into(),
                )
                .await;
                n += 1;
                if start.elapsed() + Duration::from_secs(5) > deadline {
                    break;
                }
                let good = keys.load().current.allowed[0].clone();
                burst(client.clone(), base.clone(), grpc_port, stats.clone(), good).await;
            }
        })
    };

    // Usage samples every 5 s: (seconds, hopwarden RSS, fds, Envoy RSS).
    let samples = Arc::new(Mutex::new(Vec::<(f64, u64, u64, u64)>::new()));
    let sample_task = {
        let samples = samples.clone();
        let (hw, envoy) = (a.hopwarden_pid, a.envoy_pid);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            while start.elapsed() < deadline {
                tick.tick().await;
                if let (Some((rss, fds)), envoy) = (usage(hw), usage(envoy)) {
                    let envoy_rss = envoy.map_or(0, |e| e.0);
                    samples.lock().unwrap().push((
                        start.elapsed().as_secs_f64(),
                        rss,
                        fds,
                        envoy_rss,
                    ));
                }
            }
        })
    };

    // The load: open loop, `rate` a second, at most 512 in flight.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(512));
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    let mut seq = 0u64;
    let mut last_minute = 0;
    while start.elapsed() < deadline {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * a.rate as f64) as u64;
        while seq < due {
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                stats.overload.fetch_add(1, Ordering::Relaxed);
                seq += 1;
                continue;
            };
            let k = keys.load_full();
            let kind = kind_for(seq, &k);
            let (path, token) = request_for(kind, seq, &k);
            if kind == Kind::Retired {
                stats.retired_checked.fetch_add(1, Ordering::Relaxed);
            }
            let (client, url, stats) = (client.clone(), format!("{base}{path}"), stats.clone());
            tokio::spawn(async move {
                let t = Instant::now();
                let r = send(&client, &url, reqwest::Method::GET, token).await;
                stats.record(kind, r, t.elapsed());
                drop(permit);
            });
            seq += 1;
        }
        let minute = start.elapsed().as_secs() / 60;
        if minute > last_minute {
            print_minute(&stats, &samples, last_minute as usize);
            last_minute = minute;
        }
    }
    let _ = in_flight.acquire_many(512).await;
    for t in [reload_task, rotate_task, burst_task, sample_task] {
        t.abort();
    }
    if (a.seconds % 60) != 0 || last_minute < a.seconds / 60 {
        print_minute(&stats, &samples, last_minute as usize);
    }
    summary(&a, &stats, &samples, &reloads, &rotations)
}

fn print_minute(stats: &Stats, samples: &Mutex<Vec<(f64, u64, u64, u64)>>, minute: usize) {
    let minutes = stats.minutes.lock().unwrap();
    let Some(m) = minutes.get(minute) else { return };
    let samples = samples.lock().unwrap();
    let in_minute: Vec<_> = samples
        .iter()
        .filter(|s| (s.0 / 60.0) as usize == minute)
        .collect();
    let rss = in_minute.iter().map(|s| s.1).max().unwrap_or(0);
    let fds = in_minute.last().map_or(0, |s| s.2);
    let envoy = in_minute.iter().map(|s| s.3).max().unwrap_or(0);
    println!(
        "minute {:>2}: {:>7} checks, {} wrong, {} errors, {} malformed ({} errors), p50 {:.2} ms, p99 {:.2} ms, hopwarden RSS {:.1} MB, fds {}, Envoy RSS {:.1} MB",
        minute + 1,
        m.sent,
        m.wrong,
        m.errors,
        m.malformed,
        m.malformed_errors,
        m.latency_us.value_at_quantile(0.5) as f64 / 1000.0,
        m.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
        rss as f64 / 1e6,
        fds,
        envoy as f64 / 1e6,
    );
}

fn summary(
    a: &Args,
    stats: &Stats,
    samples: &Mutex<Vec<(f64, u64, u64, u64)>>,
    reloads: &(AtomicU64, AtomicU64),
    rotations: &AtomicU64,
) -> Result<(), Error> {
    let minutes = stats.minutes.lock().unwrap();
    let sum = |f: fn(&Minute) -> u64| minutes.iter().map(f).sum::<u64>();
    let (sent, wrong, errors) = (sum(|m| m.sent), sum(|m| m.wrong), sum(|m| m.errors));
    let (malformed, malformed_errors) = (sum(|m| m.malformed), sum(|m| m.malformed_errors));
    let samples = samples.lock().unwrap();
    let rss: Vec<(f64, f64)> = samples.iter().map(|s| (s.0, s.1 as f64)).collect();
    let after_first: Vec<(f64, f64)> = rss.iter().copied().filter(|p| p.0 >= 60.0).collect();
    let fds = samples.iter().map(|s| s.2);
    let (fd_min, fd_max) = (fds.clone().min().unwrap_or(0), fds.max().unwrap_or(0));
    let overload = stats.overload.load(Ordering::Relaxed);
    let (applied, failed) = (
        reloads.0.load(Ordering::Relaxed),
        reloads.1.load(Ordering::Relaxed),
    );
    println!("summary: {sent} checks in {} s ({:.0}/s), {wrong} wrong answers, {errors} errors, {overload} not sent (512 in flight)", a.seconds, sent as f64 / a.seconds as f64);
    println!(
        "  malformed: {malformed} sent, {malformed_errors} answered 5xx or failed (counted apart)"
    );
    println!("  policy reloads: {applied} applied, {failed} not applied within 5 s");
    println!(
        "  key rotations: {} completed, {} checks with a retired key's token",
        rotations.load(Ordering::Relaxed),
        stats.retired_checked.load(Ordering::Relaxed)
    );
    println!(
        "  hopwarden RSS: first {:.1} MB, last {:.1} MB, max {:.1} MB; slope {:+.2} MB/min (all), {:+.2} MB/min (after minute 1); fds {fd_min}..{fd_max}",
        rss.first().map_or(0.0, |p| p.1 / 1e6),
        rss.last().map_or(0.0, |p| p.1 / 1e6),
        rss.iter().map(|p| p.1).fold(0.0, f64::max) / 1e6,
        slope(&rss),
        slope(&after_first),
    );
    for s in stats.wrong_samples.lock().unwrap().iter() {
        println!("  sample: {s}");
    }
    if wrong > 0 || errors > 0 || failed > 0 || overload > 0 {
        return Err("the soak failed: see the summary".into());
    }
    Ok(())
}
