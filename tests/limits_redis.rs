//! Rate limits shared through a real Redis (Debian's redis-server, installed by
//! scripts/install-redis.sh): each test starts its own redis-server on a free
//! 127.0.0.1 port with a temporary directory, and real hopwarden processes (the
//! binary, as replicas run) in front of it; everything is stopped by pid at the end.
//! A missing redis-server fails these tests, never skips them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::stack::{free_port, http_get};
use common::{eventually, token, Answer, Check, ISSUER};

/// `hopwarden dev certs DIR redis`: a dev CA, and a certificate for 127.0.0.1 that
/// redis-server serves (minted at test time).
fn dev_certs(dir: &Path) -> (i32, String, String) {
    let parent = dir.parent().unwrap();
    common::run_bin(&["dev", "certs", dir.to_str().unwrap(), "redis"], parent)
}
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tonic::transport::Channel;

const C1: &str = "spiffe://hopwarden.local/ns/jobs/sa/one";
const C2: &str = "spiffe://hopwarden.local/ns/jobs/sa/two";
const C3: &str = "spiffe://hopwarden.local/ns/jobs/sa/three";

/// Three callers that may read ledger, each with a budget of its own of RATE (burst
/// BURST); refunds are denied to everyone.
const POLICY: &str = r#"
service: ledger
rules:
  - id: jobs-read
    from: { principals: ["spiffe://hopwarden.local/ns/jobs/sa/one", "spiffe://hopwarden.local/ns/jobs/sa/two", "spiffe://hopwarden.local/ns/jobs/sa/three"] }
    to: [{ methods: [GET], paths: ["/transactions/**"] }]
  - id: no-refunds
    effect: deny
    to: [{ paths: ["/refunds/**"] }]
limits:
  - id: jobs-reads
    from: { principals: ["spiffe://hopwarden.local/ns/jobs/sa/one", "spiffe://hopwarden.local/ns/jobs/sa/two", "spiffe://hopwarden.local/ns/jobs/sa/three"] }
    rate: RATE
    burst: BURST
"#;

/// A redis-server of this test's own.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    password: Option<String>,
    /// TLS only, with `redis.pem` and `redis-key.pem` from this directory.
    tls: Option<PathBuf>,
}

impl Redis {
    fn start(password: Option<&str>) -> Redis {
        Self::start_with(password, None)
    }

    fn start_with(password: Option<&str>, tls: Option<&Path>) -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            password: password.map(str::to_string),
            tls: tls.map(Path::to_path_buf),
        };
        r.restart();
        r
    }

    fn binary() -> PathBuf {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
            .map(|d| d.join("redis-server"))
            .find(|p| p.is_file())
            .expect("redis-server is not installed: run scripts/install-redis.sh")
    }

    /// Starts (again) on the same port, empty, and waits until it answers PING.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new(Self::binary());
        let port = self.port.to_string();
        match &self.tls {
            None => cmd.args(["--port", &port]),
            Some(certs) => cmd
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(certs.join("redis.pem"))
                .arg("--tls-key-file")
                .arg(certs.join("redis-key.pem"))
                .arg("--tls-ca-cert-file")
                .arg(certs.join("ca.pem")),
        };
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        self.child = Some(cmd.spawn().expect("start redis-server"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let up = match self.tls {
                None => self.connection().is_some(),
                // Listening is enough: the replicas' TLS handshake is what is tested.
                Some(_) => std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
            };
            if up {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} never answered PING", self.port);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn connection(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut c = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        if let Some(p) = &self.password {
            redis::cmd("AUTH").arg(p).query::<()>(&mut c).ok()?;
        }
        redis::cmd("PING").query::<String>(&mut c).ok()?;
        Some(c)
    }

    /// The keys under `prefix`.
    fn keys(&self, prefix: &str) -> Vec<String> {
        let mut c = self.connection().expect("redis answers");
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query(&mut c)
            .unwrap();
        keys.sort();
        keys
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A hopwarden process (one replica) with its own ports, config and log.
struct Replica {
    child: Child,
    name: String,
    dir: PathBuf,
    admin: u16,
    client: AuthorizationClient<Channel>,
}

impl Replica {
    /// Starts the binary with `rate_limits` text (indented under the key).
    async fn start(d: &common::Deployment, name: &str, rate_limits: &str) -> Replica {
        let (grpc, admin) = (free_port(), free_port());
        let dir = d.path().to_path_buf();
        let config = format!(
            "listen: 127.0.0.1:{grpc}\npolicies: policies\nlog: {{format: json, level: info}}\n\
             admin: {{listen: \"127.0.0.1:{admin}\"}}\ndecision_log: {{to: decisions-{name}.log}}\n\
             issuers:\n  - issuer: {ISSUER}\n    jwks_file: jwks.json\n    leeway: 0s\n\
             rate_limits:\n{rate_limits}"
        );
        let config_path = dir.join(format!("{name}.yaml"));
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_hopwarden"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start hopwarden");
        let ready = eventually(Duration::from_secs(20), || async {
            tokio::task::spawn_blocking(move || http_get(admin, "/readyz"))
                .await
                .unwrap()
                .is_some_and(|(code, _)| code == 200)
        })
        .await;
        let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        assert!(ready, "hopwarden {name} never became ready:\n{log}");
        let client = AuthorizationClient::connect(format!("http://127.0.0.1:{grpc}"))
            .await
            .unwrap();
        Replica {
            child,
            name: name.to_string(),
            dir,
            admin,
            client,
        }
    }

    async fn check(&self, req: Check) -> Answer {
        let resp = self
            .client
            .clone()
            .check(req.build())
            .await
            .expect("check RPC");
        Answer::from(resp.into_inner())
    }

    /// A GET of a transaction by `caller`: its status.
    async fn read(&self, caller: &str) -> u16 {
        let t = token(caller, "ledger", "");
        let started = Instant::now();
        let a = self
            .check(Check::new("ledger", "GET", "/transactions/1").bearer(&t))
            .await;
        // Never waits on Redis, up or down (generous for a loaded machine).
        assert!(started.elapsed() < Duration::from_millis(500), "slow check");
        a.status
    }

    async fn metric(&self, line_prefix: &str) -> Option<f64> {
        let admin = self.admin;
        let (_, body) = tokio::task::spawn_blocking(move || http_get(admin, "/metrics"))
            .await
            .unwrap()?;
        body.lines()
            .find_map(|l| l.strip_prefix(line_prefix))
            .and_then(|v| v.trim().parse().ok())
    }

    async fn fallback(&self) -> Option<f64> {
        self.metric("hopwarden_rate_limit_store_fallback ").await
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.name))).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn deployment(rate: &str, burst: u64) -> common::Deployment {
    let policy = POLICY
        .replace("RATE", rate)
        .replace("BURST", &burst.to_string());
    common::Deployment::new(&[("ledger.yaml", &policy)])
}

fn redis_block(url: &str, prefix: &str, extra: &str) -> String {
    format!("  store: redis\n  redis:\n    url: {url}\n    prefix: \"{prefix}\"\n    flush_interval: 10ms\n    timeout: 200ms\n{extra}")
}

/// Sleeps long enough for every replica to flush and read back (several intervals).
/// Waits until what the first replica spent is in Redis and every other one has read
/// it back: each replica in turn completes two more successful flushes (the first may
/// have started before the call). Polls the flush counter instead of sleeping, so a
/// loaded machine is slower, not flaky.
async fn settle(replicas: &[&Replica]) {
    let ok = "hopwarden_rate_limit_store_flushes_total{result=\"ok\"} ";
    for r in replicas {
        let start = r.metric(ok).await.unwrap_or(0.0);
        let flushed = eventually(Duration::from_secs(10), || async {
            r.metric(ok).await.unwrap_or(0.0) >= start + 2.0
        })
        .await;
        assert!(flushed, "no flush went through:\n{}", r.log());
    }
}

/// Statuses of `n` reads by `caller` on `r`.
async fn reads(r: &Replica, caller: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(r.read(caller).await);
    }
    out
}

#[tokio::test]
async fn two_replicas_sharing_redis_enforce_one_budget() {
    let redis = Redis::start(None);
    // 20/s, burst 20, for 3 s: one budget of 20 x 3 + 20 = 80 requests.
    let (rate, burst, secs) = (20u64, 20u64, 3u64);
    let d = deployment(&format!("{rate}/s"), burst);
    let block = redis_block(&redis.url(), "hw-two:", "");
    let a = Replica::start(&d, "a", &block).await;
    let b = Replica::start(&d, "b", &block).await;
    // Both replicas hammer C1's budget at 200 checks/s each, at the same time.
    let run = |r: &Replica| {
        let client = r.client.clone();
        async move {
            let t = token(C1, "ledger", "");
            let req = Check::new("ledger", "GET", "/transactions/1").bearer(&t);
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let end = Instant::now() + Duration::from_secs(secs);
            let (mut allowed, mut limited) = (0u64, 0u64);
            while Instant::now() < end {
                tick.tick().await;
                let resp = client.clone().check(req.build()).await.unwrap();
                match Answer::from(resp.into_inner()).status {
                    200 => allowed += 1,
                    429 => limited += 1,
                    other => panic!("unexpected status {other}"),
                }
            }
            (allowed, limited)
        }
    };
    let ((a_ok, a_429), (b_ok, b_429)) = tokio::join!(run(&a), run(&b));
    let total = a_ok + b_ok;
    let budget = rate * secs + burst;
    // The documented bound (docs/rate-limits.md) for 2 replicas: one replica's burst
    // plus what it can allow within a flush interval and a timeout.
    let bound = burst + (rate * 210).div_ceil(1000) + 1;
    eprintln!(
        "shared budget {budget}: a allowed {a_ok} (429: {a_429}), b allowed {b_ok} (429: {b_429}), total {total}, overshoot {}",
        total as i64 - budget as i64
    );
    assert!(a_429 > 0 && b_429 > 0, "both replicas refused some");
    assert!(
        total <= budget + bound,
        "total {total} over {budget} + bound {bound}"
    );
    // Without sharing each replica would allow its own 80: well above this.
    assert!(total < 2 * budget - burst, "{total}: not shared");
    // And the shared budget is not starved either.
    assert!(total >= rate * secs, "{total}: under the rate");
    assert_eq!(a.fallback().await, Some(0.0));
    assert!(!redis.keys("hw-two:").is_empty());
}

#[tokio::test]
async fn redis_down_falls_back_to_local_limits_and_recovers() {
    let mut redis = Redis::start(None);
    // 3 a minute: no budget comes back while the test runs, so counts are exact.
    let d = deployment("3/m", 3);
    let block = redis_block(&redis.url(), "hw-down:", "");
    let a = Replica::start(&d, "a", &block).await;
    let b = Replica::start(&d, "b", &block).await;

    // Shared: a spends 2 of C1's 3, b 1, then both are refused.
    assert_eq!(reads(&a, C1, 2).await, [200, 200]);
    settle(&[&a]).await;
    assert_eq!(reads(&b, C1, 1).await, [200]);
    settle(&[&b, &a]).await;
    assert_eq!(reads(&b, C1, 1).await, [429]);
    assert_eq!(reads(&a, C1, 1).await, [429]);

    // Redis stops: checks are still answered at once, each replica limits C2 on its
    // own (3 each, never more), policy denials stay denials.
    redis.stop();
    for r in [&a, &b] {
        assert_eq!(reads(r, C2, 4).await, [200, 200, 200, 429]);
        let t = token(C2, "ledger", "");
        let refund = r
            .check(Check::new("ledger", "GET", "/refunds/1").bearer(&t))
            .await;
        assert_eq!(refund.status, 403);
    }
    for (r, name) in [(&a, "a"), (&b, "b")] {
        let down = eventually(Duration::from_secs(5), || async {
            r.fallback().await == Some(1.0)
        })
        .await;
        assert!(down, "{name}: fallback gauge never went to 1:\n{}", r.log());
        assert!(
            r.metric("hopwarden_rate_limit_store_flushes_total{result=\"error\"} ")
                .await
                .unwrap_or(0.0)
                >= 1.0
        );
        assert_eq!(r.fallback().await, Some(1.0));
    }
    // Several retry rounds (every 0.5 s) while down: still logged once.
    for _ in 0..15 {
        assert_eq!(a.read(C2).await, 429);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unreachable = "rate limit store unreachable";
    assert_eq!(a.log().matches(unreachable).count(), 1, "{}", a.log());
    assert_eq!(b.log().matches(unreachable).count(), 1, "{}", b.log());

    // Redis is back (empty): both replicas notice by themselves (C2's buckets are
    // not full, so they keep being read back), log it once, share again.
    redis.restart();
    for (r, name) in [(&a, "a"), (&b, "b")] {
        let up = eventually(Duration::from_secs(5), || async {
            r.fallback().await == Some(0.0)
        })
        .await;
        assert!(
            up,
            "{name}: fallback gauge never went back to 0:\n{}",
            r.log()
        );
        let again = "rate limit store reachable again";
        assert_eq!(r.log().matches(again).count(), 1, "{}", r.log());
        // What it allowed C2 while Redis was down stays spent: the store, which never
        // heard of those requests, does not hand C2's budget out again.
        assert_eq!(reads(r, C2, 1).await, [429], "{name}");
    }
    assert_eq!(reads(&a, C3, 2).await, [200, 200]);
    settle(&[&a]).await;
    // b's first check decides locally (a check never waits on Redis); once b has
    // flushed, it has read back a's two.
    assert_eq!(reads(&b, C3, 1).await, [200]);
    settle(&[&b, &a]).await;
    assert_eq!(reads(&b, C3, 1).await, [429]);
    assert_eq!(reads(&a, C3, 1).await, [429]);
}

#[tokio::test]
async fn a_password_protected_redis_works_and_a_wrong_password_falls_back() {
    let password = format!("pw-{}", std::process::id());
    let redis = Redis::start(Some(&password));
    let d = deployment("3/m", 3);
    std::fs::write(d.path().join("redis-password"), format!("{password}\n")).unwrap();
    std::fs::write(d.path().join("wrong-password"), "not-the-password\n").unwrap();
    let good = Replica::start(
        &d,
        "good",
        &redis_block(
            &redis.url(),
            "hw-pw:",
            "    password_file: redis-password\n",
        ),
    )
    .await;
    let bad = Replica::start(
        &d,
        "bad",
        &redis_block(
            &redis.url(),
            "hw-pw:",
            "    password_file: wrong-password\n",
        ),
    )
    .await;
    assert_eq!(reads(&good, C1, 2).await, [200, 200]);
    settle(&[&good]).await;
    let keys = redis.keys("hw-pw:");
    assert_eq!(keys, [format!("hw-pw:ledger:jobs-reads:3/m:3:={C1}")]);
    assert_eq!(good.fallback().await, Some(0.0));

    // The wrong password: the replica answers, limits on its own (3 for C1, not the
    // 1 left in Redis), and says why, without the password.
    assert_eq!(reads(&bad, C1, 4).await, [200, 200, 200, 429]);
    let down = eventually(Duration::from_secs(5), || async {
        bad.fallback().await == Some(1.0)
    })
    .await;
    let log = bad.log();
    assert!(down, "{log}");
    assert!(log.contains("authentication failed"), "{log}");
    assert!(
        !log.contains("not-the-password") && !log.contains(&password),
        "{log}"
    );
    assert!(!good.log().contains(&password));
}

#[tokio::test]
async fn prefixes_keep_deployments_apart() {
    let redis = Redis::start(None);
    let d = deployment("3/m", 3);
    let a = Replica::start(&d, "a", &redis_block(&redis.url(), "blue:", "")).await;
    let b = Replica::start(&d, "b", &redis_block(&redis.url(), "green:", "")).await;
    assert_eq!(reads(&a, C1, 3).await, [200, 200, 200]);
    settle(&[&a]).await;
    // Another prefix is another budget.
    assert_eq!(reads(&b, C1, 3).await, [200, 200, 200]);
    settle(&[&b, &a]).await;
    assert_eq!(reads(&a, C1, 1).await, [429]);
    assert_eq!(reads(&b, C1, 1).await, [429]);
    assert_eq!(redis.keys("blue:").len(), 1);
    assert_eq!(redis.keys("green:").len(), 1);
}

#[tokio::test]
async fn rediss_with_the_servers_ca_is_shared_and_an_unknown_ca_falls_back() {
    let d = deployment("3/m", 3);
    let certs = d.path().join("certs");
    let (code, _, err) = dev_certs(&certs);
    assert_eq!(code, 0, "{err}");
    let redis = Redis::start_with(None, Some(&certs));
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let trusted = redis_block(&url, "hw-tls:", "    ca_file: certs/ca.pem\n");
    let a = Replica::start(&d, "a", &trusted).await;
    let b = Replica::start(&d, "b", &trusted).await;
    let ok = "hopwarden_rate_limit_store_flushes_total{result=\"ok\"} ";
    // Connected (a flush went through TLS) before the budget is measured.
    for r in [&a, &b] {
        assert_eq!(r.read(C3).await, 200);
        let connected = eventually(Duration::from_secs(5), || async {
            r.metric(ok).await.unwrap_or(0.0) >= 1.0
        })
        .await;
        assert!(connected, "{}", r.log());
    }
    assert_eq!(reads(&a, C1, 2).await, [200, 200]);
    settle(&[&a]).await;
    assert_eq!(reads(&b, C1, 1).await, [200]);
    settle(&[&b, &a]).await;
    assert_eq!(reads(&b, C1, 1).await, [429]);
    assert_eq!(reads(&a, C1, 1).await, [429]);
    assert_eq!(a.fallback().await, Some(0.0));
    assert_eq!(b.fallback().await, Some(0.0));

    // Without the CA (the system's trust store does not know the dev CA): the
    // handshake fails, the replica limits alone and says so.
    let c = Replica::start(&d, "c", &redis_block(&url, "hw-tls:", "")).await;
    assert_eq!(reads(&c, C1, 4).await, [200, 200, 200, 429]);
    let down = eventually(Duration::from_secs(5), || async {
        c.fallback().await == Some(1.0)
    })
    .await;
    assert!(down, "{}", c.log());
    assert!(
        c.log().contains("rate limit store unreachable"),
        "{}",
        c.log()
    );
}

#[test]
fn the_redis_store_is_configured_or_refused_clearly() {
    let load = |rate_limits: &str| {
        let d = deployment("3/m", 3);
        let text = d.config_text("", &format!("rate_limits:\n{rate_limits}"));
        let path: &Path = &d.path().join("hopwarden.yaml");
        hopwarden::config::Config::from_str(&text, path)
            .map(|_| ())
            .map_err(|e| format!("{e:?}"))
    };
    assert!(load("  store: redis\n  redis: {url: \"redis://127.0.0.1:6379\"}\n").is_ok());
    let missing = load("  store: redis\n").unwrap_err();
    assert!(
        missing.contains("needs a rate_limits.redis block"),
        "{missing}"
    );
    let unused = load("  redis: {url: \"redis://127.0.0.1:6379\"}\n").unwrap_err();
    assert!(unused.contains("add store: redis"), "{unused}");
    let bad = load("  store: redis\n  redis: {url: \"http://:hunter2@x\"}\n").unwrap_err();
    assert!(
        bad.contains("not a redis:// or rediss:// URL") && !bad.contains("hunter2"),
        "{bad}"
    );
    let unknown = load("  store: memcached\n").unwrap_err();
    assert!(unknown.contains("memcached"), "{unknown}");
}
