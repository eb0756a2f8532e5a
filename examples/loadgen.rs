//! Load generator for hopwarden's ext_authz gRPC API, and the token minter the
//! benchmarks use (`bench/run.sh`).
//!
//! ```text
//! loadgen mint --key KEY.pem --kid KID --alg RS256|ES256 --count N --out FILE
//!              [--iss I] [--sub S] [--aud A] [--scope S] [--ttl-secs N]
//! loadgen run  --addr 127.0.0.1:9191 (--token T | --tokens FILE | --fresh-es256 KEY.pem --kid K)
//!              (a token or line that is an API key, `hwk_…`, is sent as `ApiKey`)
//!              (--concurrency N --requests N | --rate R --seconds S [--concurrency N])
//!              [--server-pid PID] [--label NAME] [--traceparent VALUE]
//! loadgen mint-keys --count N --keys-out FILE --file-out FILE [--principal P] [--scope S]
//! loadgen floor --rate R --seconds S [--concurrency N] [--label NAME]
//! loadgen allow-all --listen ADDR
//! loadgen allow-all-http --listen ADDR
//! ```
//!
//! `run` prints one JSON line: checks, errors, throughput, latency percentiles (µs,
//! from an HDR histogram), and with `--server-pid` the server's CPU time per check read
//! from /proc (utime + stime, before and after). Closed loop (`--requests`) measures
//! saturation; open loop (`--rate`) releases one check every 1/rate seconds and
//! measures latency from its release, so a check that waits for a free worker behind a
//! stalled server counts that wait (no coordinated omission).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use hdrhistogram::Histogram;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tonic::transport::Channel;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = args
        .split_first()
        .ok_or("usage: loadgen mint|run|floor ...")?;
    // A mistyped option is an error, not a silent default.
    let known: &[&str] = match cmd.as_str() {
        "mint" => &[
            "key", "kid", "alg", "count", "out", "iss", "sub", "aud", "scope", "ttl-secs",
        ],
        "run" => &[
            "addr",
            "token",
            "tokens",
            "fresh-es256",
            "kid",
            "concurrency",
            "connections",
            "requests",
            "rate",
            "seconds",
            "server-pid",
            "label",
            "threads",
            "traceparent",
        ],
        "mint-keys" => &["count", "keys-out", "file-out", "principal", "scope"],
        "floor" => &["rate", "seconds", "concurrency", "label"],
        "allow-all" | "allow-all-http" => &["listen"],
        other => return Err(format!("unknown command {other:?}").into()),
    };
    let opts = Opts::parse(rest, known)?;
    match cmd.as_str() {
        "mint" => mint(&opts),
        "mint-keys" => mint_keys(&opts),
        "run" => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.num("threads", 1)? as usize)
            .enable_all()
            .build()?
            .block_on(run(&opts)),
        "floor" => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?
            .block_on(floor(&opts)),
        // One thread, as hopwarden runs in the benchmark (`worker_threads: 1`).
        "allow-all" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(allow_all(&opts.str("listen", "127.0.0.1:0"))),
        "allow-all-http" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(allow_all_http(&opts.str("listen", "127.0.0.1:0"))),
        _ => unreachable!("checked above"),
    }
}

struct Opts(Vec<(String, String)>);

impl Opts {
    fn parse(args: &[String], known: &[&str]) -> Result<Opts, Error> {
        let mut out = Vec::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let k = k
                .strip_prefix("--")
                .ok_or(format!("expected --option, got {k:?}"))?;
            if !known.contains(&k) {
                return Err(
                    format!("unknown option --{k} (known: --{})", known.join(", --")).into(),
                );
            }
            let v = it.next().ok_or(format!("--{k} needs a value"))?;
            out.push((k.to_string(), v.clone()));
        }
        Ok(Opts(out))
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
    fn str(&self, k: &str, default: &str) -> String {
        self.get(k).unwrap_or(default).to_string()
    }
    fn num(&self, k: &str, default: u64) -> Result<u64, Error> {
        Ok(match self.get(k) {
            Some(v) => v.parse().map_err(|_| format!("--{k}: not a number: {v}"))?,
            None => default,
        })
    }
}

/// Mints N distinct valid tokens (distinct `jti`), one per line.
/// API keys for the benchmark (docs/api-keys.md): the keys, one a line, and the key
/// file that accepts them, as `hopwarden apikey new` would make them.
fn mint_keys(o: &Opts) -> Result<(), Error> {
    use std::fmt::Write as _;
    let principal = o.str("principal", "bench-partner");
    let scope = o.str("scope", "ledger.read");
    let (mut keys, mut file) = (String::new(), String::from("keys:\n"));
    for _ in 0..o.num("count", 1)? {
        let key = hopwarden::apikey::NewKey::generate()?;
        writeln!(keys, "{}", key.reveal())?;
        writeln!(
            file,
            "  - {{id: {}, digest: \"{}\", principal: \"{principal}\", scopes: [\"{scope}\"]}}",
            key.id,
            key.digest()
        )?;
    }
    std::fs::write(o.str("keys-out", "keys.txt"), keys)?;
    std::fs::write(o.str("file-out", "keys.yaml"), file)?;
    Ok(())
}

fn mint(o: &Opts) -> Result<(), Error> {
    let pem = std::fs::read(o.get("key").ok_or("--key is required")?)?;
    let alg: Algorithm = o.str("alg", "RS256").parse()?;
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem)?,
        _ => EncodingKey::from_rsa_pem(&pem)?,
    };
    let mut header = Header::new(alg);
    header.kid = Some(o.str("kid", "bench"));
    let count = o.num("count", 1)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let exp = now + o.num("ttl-secs", 3600)?;
    let (iss, sub, aud, scope) = (
        o.str("iss", "https://sts.hopwarden.local"),
        o.str("sub", "spiffe://hopwarden.local/ns/payments/sa/payments"),
        o.str("aud", "ledger"),
        o.str("scope", "ledger.read"),
    );
    let mut out = String::new();
    for n in 0..count {
        let claims = json!({"iss": iss, "sub": sub, "aud": aud, "scope": scope, "iat": now, "exp": exp, "jti": format!("bench-{n}")});
        out.push_str(&jsonwebtoken::encode(&header, &claims, &key)?);
        out.push('\n');
    }
    std::fs::write(o.get("out").ok_or("--out is required")?, out)?;
    Ok(())
}

/// A check with the token, and the trace context when given (`--traceparent`: the
/// tracing benchmark in docs/tracing.md).
fn check_request(token: &str, traceparent: Option<&str>) -> CheckRequest {
    // An API key (`hwk_…`, docs/api-keys.md) goes in its own scheme, a JWT as Bearer.
    let scheme = if token.starts_with("hwk_") {
        "ApiKey"
    } else {
        "Bearer"
    };
    let mut headers: std::collections::HashMap<String, String> =
        [("authorization".to_string(), format!("{scheme} {token}"))].into();
    if let Some(tp) = traceparent {
        headers.insert("traceparent".into(), tp.into());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/transactions/42".into(),
                    host: "ledger".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: [("service".to_string(), "ledger".to_string())].into(),
            ..Default::default()
        }),
    }
}

/// Mints a distinct ES256 token per request number.
struct FreshTokens {
    key: EncodingKey,
    header: Header,
    exp: u64,
}

impl FreshTokens {
    fn new(pem: &[u8], kid: &str) -> Result<Self, Error> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_string());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        Ok(FreshTokens {
            key: EncodingKey::from_ec_pem(pem)?,
            header,
            exp: now + 3600,
        })
    }

    fn mint(&self, n: u64) -> String {
        let claims = json!({"iss": "https://sts.hopwarden.local", "sub": "spiffe://hopwarden.local/ns/payments/sa/payments", "aud": "ledger", "scope": "ledger.read", "exp": self.exp, "jti": format!("fresh-{n}")});
        jsonwebtoken::encode(&self.header, &claims, &self.key).unwrap_or_default()
    }
}

/// utime + stime of a process, in seconds, from /proc/PID/stat.
fn cpu_seconds(pid: u64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on Linux for every architecture this runs on.
    Some((utime + stime) / 100.0)
}

/// Resident memory of a process in bytes, from /proc/PID/status.
fn rss_bytes(pid: u64) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Open-loop pacing: releases `total` checks, one every `1/rate` seconds.
///
/// tokio's timer ticks once a millisecond, so at 5,000/s `sleep_until` released checks
/// five at a time, and the last of each burst queued behind the other four on both
/// sides: a burst, not a rate. A periodic timerfd, registered with tokio's reactor,
/// wakes the pacer at each due time instead (the kernel's hrtimer), and each expiry
/// releases one check to whichever worker is free.
struct Pacer {
    released: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Instant>>,
}

impl Pacer {
    fn start(rate: u64, total: u64) -> Result<Arc<Pacer>, Error> {
        use std::os::fd::{FromRawFd, OwnedFd};
        let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        // SAFETY: a plain syscall; the fd is owned from here on and closed on drop.
        let fd = unsafe {
            let raw = libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            );
            if raw < 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            OwnedFd::from_raw_fd(raw)
        };
        let period = libc::timespec {
            tv_sec: interval.as_secs() as libc::time_t,
            tv_nsec: interval.subsec_nanos() as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: period,
            it_value: period,
        };
        // SAFETY: `fd` is a timerfd and `spec` outlives the call.
        if unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: an OwnedFd stays open, and is the same fd, until the AsyncFd drops it.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        let (release, released) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut left = total;
            while left > 0 {
                let Ok(mut ready) = fd.readable().await else {
                    return;
                };
                let mut expiries = 0u64;
                // SAFETY: reads 8 bytes into a u64, as timerfd(2) specifies.
                let n = unsafe {
                    libc::read(
                        fd.get_ref().as_raw_fd(),
                        (&mut expiries as *mut u64).cast(),
                        8,
                    )
                };
                if n != 8 {
                    ready.clear_ready();
                    continue;
                }
                // Stamped when released: a check that then waits for a free worker
                // (all stuck on a slow server) counts that wait (no coordinated
                // omission); the pacer's own lateness, if it had any, is ours.
                let now = Instant::now();
                let due = expiries.min(left);
                for _ in 0..due {
                    let _ = release.send(now);
                }
                left -= due;
            }
        });
        Ok(Arc::new(Pacer {
            released: tokio::sync::Mutex::new(released),
        }))
    }

    /// Waits for the next check to be released and returns the instant its latency
    /// counts from; `None` once all have been.
    async fn next(&self) -> Option<Instant> {
        self.released.lock().await.recv().await
    }
}

/// When a check starts: when the pacer releases it, or at once in a closed loop.
async fn start_of(pacer: Option<&Pacer>) -> Option<Instant> {
    match pacer {
        Some(p) => p.next().await,
        None => Some(Instant::now()),
    }
}

/// The machine's own floor for `run --rate`: the same pacing and clock, with a
/// 256-byte echo over loopback TCP (a server thread, TCP_NODELAY) in place of a
/// check. No gRPC, no hopwarden: what is left is wake-ups and the kernel.
async fn floor(o: &Opts) -> Result<(), Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("echo runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s.set_nodelay(true);
                tokio::spawn(async move {
                    let mut buf = [0u8; 256];
                    while s.read_exact(&mut buf).await.is_ok() {
                        if s.write_all(&buf).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    });
    let rate = o.num("rate", 1000)?.max(1);
    let total = rate * o.num("seconds", 10)?;
    let mut conns = Vec::new();
    for _ in 0..o.num("concurrency", 32)? {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        conns.push(s);
    }
    let pacer = Pacer::start(rate, total)?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut s in conns {
        let pacer = pacer.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            let mut buf = [7u8; 256];
            loop {
                let Some(start) = pacer.next().await else {
                    return hist;
                };
                if s.write_all(&buf).await.is_err() || s.read_exact(&mut buf).await.is_err() {
                    return hist;
                }
                let _ = hist.record(start.elapsed().as_micros() as u64);
            }
        }));
    }
    let mut hist = Histogram::<u64>::new(3)?;
    for t in tasks {
        hist.add(t.await?)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "label": o.str("label", ""),
            "round_trips": hist.len(),
            "throughput": hist.len() as f64 / elapsed,
            "p50_us": hist.value_at_quantile(0.50),
            "p90_us": hist.value_at_quantile(0.90),
            "p99_us": hist.value_at_quantile(0.99),
            "max_us": hist.max(),
        })
    );
    Ok(())
}

/// Until killed: a gRPC ext_authz server that allows every check without looking at
/// it (tonic's generated code still decodes it), with hopwarden's transport (`hopwarden::listener`). The benchmark puts it
/// behind Envoy (setup e) and under `run` (the gRPC floor): what it costs is what any
/// ext_authz server costs here before it does any work.
/// Envoy's HTTP ext_authz service answered 200 to everything, the request unread, on
/// hopwarden's own HTTP transport (as `http_listen` serves it): the floor for setup
/// (f) as `allow-all` is for (d).
async fn allow_all_http(listen: &str) -> Result<(), Error> {
    use std::convert::Infallible;
    use std::task::{Context, Poll};
    use tonic::codegen::{http, Service};

    #[derive(Clone)]
    struct AllowAll;
    impl<B> Service<http::Request<B>> for AllowAll {
        type Response = http::Response<http_body_util::Empty<hyper::body::Bytes>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<B>) -> Self::Future {
            std::future::ready(Ok(http::Response::new(http_body_util::Empty::new())))
        }
    }

    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("allow-all-http: listening on {}", listener.local_addr()?);
    use hopwarden::listener::{serve, Bounds, Protocol};
    serve(
        Protocol::Auto,
        listener,
        AllowAll,
        &Bounds::default(),
        None,
        std::future::pending(),
    )
    .await;
    Ok(())
}

async fn allow_all(listen: &str) -> Result<(), Error> {
    use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
        Authorization, AuthorizationServer,
    };
    use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
    use envoy_types::pb::google::rpc::Status;

    struct AllowAll;
    #[tonic::async_trait]
    impl Authorization for AllowAll {
        async fn check(
            &self,
            _: tonic::Request<CheckRequest>,
        ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
            Ok(tonic::Response::new(CheckResponse {
                status: Some(Status::default()),
                ..Default::default()
            }))
        }
    }

    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("allow-all: listening on {}", listener.local_addr()?);
    let never = std::future::pending();
    use hopwarden::listener::{serve, Bounds, Protocol};
    serve(
        Protocol::Http2,
        listener,
        AuthorizationServer::new(AllowAll),
        &Bounds::default(),
        None,
        never,
    )
    .await;
    Ok(())
}

async fn run(o: &Opts) -> Result<(), Error> {
    let addr = o.str("addr", "127.0.0.1:9191");
    // With --fresh-es256, every check carries a token minted just for it (distinct
    // `jti`): for memory tests with more distinct tokens than fit in a file.
    let fresh = match o.get("fresh-es256") {
        Some(path) => Some(Arc::new(FreshTokens::new(
            &std::fs::read(path)?,
            &o.str("kid", "bench-ec"),
        )?)),
        None => None,
    };
    let traceparent = o.get("traceparent").map(str::to_string);
    let tokens: Arc<Vec<CheckRequest>> = Arc::new(match (o.get("token"), o.get("tokens")) {
        (Some(t), _) => vec![check_request(t, traceparent.as_deref())],
        (None, Some(file)) => std::fs::read_to_string(file)?
            .lines()
            .filter(|l| !l.is_empty())
            .map(|t| check_request(t, traceparent.as_deref()))
            .collect(),
        _ if fresh.is_some() => Vec::new(),
        _ => return Err("--token, --tokens or --fresh-es256 is required".into()),
    });
    let concurrency = o.num("concurrency", 32)?;
    let channels = o.num("connections", 4)?;
    let mut clients = Vec::new();
    for _ in 0..channels {
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        clients.push(AuthorizationClient::new(channel));
    }
    let pid = o.get("server-pid").map(str::parse::<u64>).transpose()?;
    let cpu_before = pid.and_then(cpu_seconds);
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let denied = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    // Closed loop (no --rate): `concurrency` workers send `requests` checks as fast as
    // answers come back. Open loop: the pacer releases a check every 1/rate seconds
    // whether or not earlier ones have returned, and its latency counts from then.
    let rate = o.num("rate", 0)?;
    let (total, pacer) = if rate == 0 {
        (o.num("requests", 100_000)?, None)
    } else {
        let total = rate * o.num("seconds", 10)?;
        (total, Some(Pacer::start(rate, total)?))
    };
    for w in 0..concurrency {
        let mut client = clients[w as usize % clients.len()].clone();
        let (tokens, next, errors, denied) =
            (tokens.clone(), next.clone(), errors.clone(), denied.clone());
        let (fresh, pacer, traceparent) = (fresh.clone(), pacer.clone(), traceparent.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return hist;
                }
                let req = match &fresh {
                    Some(f) => check_request(&f.mint(n), traceparent.as_deref()),
                    None => tokens[(n % tokens.len() as u64) as usize].clone(),
                };
                let Some(start) = start_of(pacer.as_deref()).await else {
                    return hist;
                };
                match client.check(req).await {
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    // A denial is fast and wrong for a benchmark of valid tokens.
                    Ok(r) if r.get_ref().status.as_ref().is_none_or(|s| s.code != 0) => {
                        denied.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                }
                let _ = hist.record(start.elapsed().as_micros() as u64);
            }
        }));
    }
    let mut hist = Histogram::<u64>::new(3)?;
    for t in tasks {
        hist.add(t.await?)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let checks = hist.len();
    let cpu = match (pid.and_then(cpu_seconds), cpu_before) {
        (Some(after), Some(before)) => Some((after - before) / checks.max(1) as f64 * 1e6),
        _ => None,
    };
    let result = json!({
        "label": o.str("label", ""),
        "checks": checks,
        "errors": errors.load(Ordering::Relaxed),
        "denied": denied.load(Ordering::Relaxed),
        "seconds": elapsed,
        "throughput": checks as f64 / elapsed,
        "p50_us": hist.value_at_quantile(0.50),
        "p90_us": hist.value_at_quantile(0.90),
        "p99_us": hist.value_at_quantile(0.99),
        "max_us": hist.max(),
        "server_cpu_us_per_check": cpu,
        "server_rss_bytes": pid.and_then(rss_bytes),
    });
    println!("{result}");
    Ok(())
}
