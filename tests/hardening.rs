//! Hardening: exact expiry, symlink-swapped policy directories, a hanging JWKS
//! endpoint, scope and request-form edge cases. The real server on 127.0.0.1:0,
//! called with envoy-types' AuthorizationClient (and the HTTP service with a real
//! HTTP client); keys and tokens minted here.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::json;

fn read_tx() -> Check {
    Check::new("ledger", "GET", "/transactions/42")
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// RFC 7519 4.1.4: refused on or after `exp`. With leeway 0, a token is allowed up to
/// its `exp` and refused from then on, within 50 ms, cached decisions included (the
/// same token is checked over and over, so every allow after the first is a hit).
#[tokio::test]
async fn a_token_is_refused_within_50ms_of_its_exp() {
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let s = TestServer::start(d.config("", "")).await;
    // A whole-second `exp` between 1 and 2 s away, as most issuers write it.
    let exp = Duration::from_secs(unix_now().as_secs() + 2);
    let mut c = claims(PAYMENTS, "ledger", "ledger.read");
    c["exp"] = json!(exp.as_secs());
    let t = key().sign(&c);
    assert_eq!(s.check(read_tx().bearer(&t)).await.status, 200);
    // Checks back to back from 200 ms before `exp` until 300 ms after it, from three
    // clients at once (so one slow answer on a loaded machine leaves no gap).
    tokio::time::sleep((exp - Duration::from_millis(200)).saturating_sub(unix_now())).await;
    let senders: Vec<_> = (0..3)
        .map(|_| {
            let mut client = s.client.clone();
            let req = read_tx().bearer(&t).build();
            tokio::spawn(async move {
                let mut allowed_before = 0;
                let mut first_refusal: Option<Duration> = None;
                while unix_now() < exp + Duration::from_millis(300) {
                    let sent = unix_now();
                    let a = Answer::from(client.check(req.clone()).await.unwrap().into_inner());
                    match a.status {
                        200 => {
                            // The server read its clock after `sent`: an allow means
                            // it was before `exp` then, so `sent` was too.
                            assert!(
                                sent < exp,
                                "allowed a check sent {:?} after exp",
                                sent - exp
                            );
                            allowed_before += 1;
                        }
                        401 => {
                            assert_eq!(a.reason(), Some("invalid_token"), "{a:?}");
                            assert!(unix_now() >= exp, "refused before exp: {a:?}");
                            first_refusal.get_or_insert(sent);
                        }
                        other => panic!("unexpected status {other}: {a:?}"),
                    }
                }
                (allowed_before, first_refusal)
            })
        })
        .collect();
    let (mut allowed_before, mut first_refusal) = (0, None::<Duration>);
    for sender in senders {
        let (allowed, refused) = sender.await.unwrap();
        allowed_before += allowed;
        first_refusal = match (first_refusal, refused) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    assert!(
        allowed_before > 0,
        "no check landed in the 200 ms before exp"
    );
    let first = first_refusal.expect("never refused after exp");
    let late = first.saturating_sub(exp);
    eprintln!("first refusal: a check sent {late:?} after exp; {allowed_before} allows before it");
    assert!(
        late <= Duration::from_millis(50),
        "first refusal for a check sent {late:?} after exp"
    );
    // And it stays refused.
    assert_eq!(s.check(read_tx().bearer(&t)).await.status, 401);
}

/// A fractional `exp` is kept exactly: refused from the instant it names.
#[tokio::test]
async fn a_fractional_exp_is_exact() {
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let s = TestServer::start(d.config("", "")).await;
    // Half a second past the next whole second: a check that rounds either way fails.
    let exp = Duration::from_millis((unix_now().as_secs() + 1) * 1000 + 500);
    let mut c = claims(PAYMENTS, "ledger", "ledger.read");
    c["exp"] = json!(exp.as_secs_f64());
    let t = key().sign(&c);
    let started = Instant::now();
    let mut statuses = Vec::new();
    while unix_now() < exp + Duration::from_millis(300)
        && started.elapsed() < Duration::from_secs(5)
    {
        let sent = unix_now();
        let a = s.check(read_tx().bearer(&t)).await;
        let done = unix_now();
        if a.status == 200 {
            assert!(
                sent < exp,
                "allowed {:?} after a fractional exp",
                sent - exp
            );
        } else {
            assert_eq!(a.status, 401, "{a:?}");
            assert!(done >= exp, "refused {:?} before exp", exp - done);
        }
        statuses.push(a.status);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        statuses.contains(&200) && statuses.last() == Some(&401),
        "{statuses:?}"
    );
}

/// A config with one issuer whose keys come from `url`, written beside `d`'s policies;
/// no decision cache, so every check reaches the key store.
fn url_config(d: &Deployment, url: &str, issuer_extra: &str) -> hopwarden::config::Config {
    let path = d.path().join("hopwarden.yaml");
    let text = format!(
        "listen: 127.0.0.1:0\npolicies: policies\nlog: {{format: text, level: warn}}\n\
         decision_log: {{to: decisions.log}}\ncache: {{max_entries: 0}}\n\
         issuers:\n  - issuer: {ISSUER}\n    jwks_uri: \"{url}\"\n    refetch_min_interval: 1s\n    leeway: 0s\n{issuer_extra}"
    );
    std::fs::write(&path, text).unwrap();
    hopwarden::config::Config::load(&path).unwrap()
}

/// A hanging JWKS endpoint: 30 concurrent checks with an unknown kid share one fetch,
/// none is held past `unknown_kid_wait` (default 100 ms; asserted with slack for a
/// loaded machine, far below the 5 s fetch timeout they used to queue behind), all
/// are 401 `unknown_key`; checks with a known kid are answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_never_queue_behind_a_hanging_jwks_endpoint() {
    let jwks_server = JwksServer::start(jwks(&[key()])).await;
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let s = TestServer::start(url_config(&d, &jwks_server.url(), "")).await;
    let known = token(PAYMENTS, "ledger", "ledger.read");
    assert_eq!(s.check(read_tx().bearer(&known)).await.status, 200);
    // From now on the key server accepts, reads the request, and never answers.
    *jwks_server.delay.lock().unwrap() = Duration::from_secs(3600);
    tokio::time::sleep(Duration::from_millis(1100)).await; // past refetch_min_interval
    let fetches = jwks_server.hits();
    let unknown = other_key().sign(&claims(PAYMENTS, "ledger", "ledger.read"));
    for round in 0..2 {
        let checks: Vec<_> = (0..30)
            .map(|_| {
                let mut client = s.client.clone();
                let req = read_tx().bearer(&unknown).build();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let answer = client.check(req).await.expect("check RPC");
                    (started.elapsed(), Answer::from(answer.into_inner()))
                })
            })
            .collect();
        let known_started = Instant::now();
        let a = s.check(read_tx().bearer(&known)).await;
        assert_eq!(a.status, 200, "a known kid is unaffected: {a:?}");
        assert!(known_started.elapsed() < Duration::from_millis(500));
        let mut slowest = Duration::ZERO;
        for check in checks {
            let (took, a) = check.await.unwrap();
            slowest = slowest.max(took);
            assert_eq!(
                (a.status, a.reason()),
                (401, Some("invalid_token")),
                "{a:?}"
            );
            assert!(
                took < Duration::from_millis(600),
                "round {round}: an unknown-kid check took {took:?}"
            );
        }
        eprintln!("round {round}: slowest of 30 unknown-kid checks answered in {slowest:?}");
        // One fetch in flight for all of them (the first round's, still hanging).
        assert_eq!(jwks_server.hits(), fetches + 1, "round {round}");
    }
    // Each was refused for its key, and said so in the decision log.
    assert!(
        eventually(Duration::from_secs(2), || async {
            let logged = d.decisions();
            logged
                .iter()
                .filter(|l| l["detail"] == "unknown_key")
                .count()
                == 60
        })
        .await,
        "60 unknown_key decisions logged"
    );
}

/// RFC 6749 3.3: scopes are delimited by U+0020 only. A tab is part of a scope token,
/// so `"x\tledger.read"` grants a scope named that, not `ledger.read`.
#[tokio::test]
async fn a_scope_string_splits_on_spaces_only() {
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let s = TestServer::start(d.config("", "")).await;
    for smuggled in ["x\tledger.read", "x\nledger.read", "x\u{a0}ledger.read"] {
        let a = s
            .check(read_tx().bearer(&token(PAYMENTS, "ledger", smuggled)))
            .await;
        assert_eq!(
            (a.status, a.reason()),
            (403, Some("insufficient_scope")),
            "{smuggled:?}: {a:?}"
        );
    }
    let a = s
        .check(read_tx().bearer(&token(PAYMENTS, "ledger", "x ledger.read")))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
}

/// A method that is not upper-case and a path with `#` are refused (400 `bad_request`,
/// gRPC INVALID_ARGUMENT in the CheckResponse), not upper-cased or cut at the `#`.
#[tokio::test]
async fn lower_case_methods_and_fragments_are_bad_requests_over_grpc() {
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let s = TestServer::start(d.config("", "")).await;
    let t = token(PAYMENTS, "ledger", "ledger.read");
    for (method, path) in [
        ("get", "/transactions/42"),
        ("Get", "/transactions/42"),
        ("GET", "/transactions/42#frag"),
        ("GET", "/transactions/42#"),
        ("GET", "/transactions/42?x=1#frag"),
        ("GET", "/transactions/42#/../../refunds"),
    ] {
        let a = s.check(Check::new("ledger", method, path).bearer(&t)).await;
        assert_eq!(
            (a.status, a.reason()),
            (400, Some("bad_request")),
            "{method} {path}: {a:?}"
        );
        assert_eq!(a.grpc_code, tonic::Code::InvalidArgument as i32);
        assert!(a.body.contains("bad_request"), "{}", a.body);
    }
    // The same request, well formed, is allowed; an encoded `#` is a plain character.
    let a = s
        .check(Check::new("ledger", "GET", "/transactions/42").bearer(&t))
        .await;
    assert_eq!(a.status, 200);
    let a = s
        .check(Check::new("ledger", "GET", "/transactions/4%232").bearer(&t))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
}

/// Sends one raw HTTP/1.1 request and returns the status code of the answer.
async fn raw_http1(addr: std::net::SocketAddr, request_line: &str, token: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{request_line}\r\nhost: ledger.internal\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut out))
        .await
        .expect("answered")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"))
}

/// The HTTP service refuses a method that is not upper-case (400 `bad_request`) over
/// HTTP/1.1 and HTTP/2.
#[tokio::test]
async fn lower_case_methods_are_bad_requests_over_the_http_service() {
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let s = TestServer::start(d.config("", "http_listen: 127.0.0.1:0\n")).await;
    let addr = s.handle.http_addr.expect("http_listen is bound");
    let t = token(PAYMENTS, "ledger", "ledger.read");
    let ok = raw_http1(addr, "GET /gateway/ledger/transactions/42 HTTP/1.1", &t).await;
    assert_eq!(ok, 200);
    for method in ["get", "Get"] {
        let line = format!("{method} /gateway/ledger/transactions/42 HTTP/1.1");
        assert_eq!(raw_http1(addr, &line, &t).await, 400, "{line}");
        let h2 = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let r = h2
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("http://{addr}/gateway/ledger/transactions/42"),
            )
            .header("authorization", format!("Bearer {t}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "HTTP/2 {method}");
        assert!(r.text().await.unwrap().contains("bad_request"));
    }
    let logged = eventually(Duration::from_secs(2), || async {
        d.decisions()
            .iter()
            .filter(|l| l["reason"] == "bad_request")
            .count()
            == 4
    })
    .await;
    assert!(logged, "{:?}", d.decisions());
}

/// A ledger policy whose one allow rule is named `read-<rev>`, so an allowed check
/// says which revision answered it.
fn ledger_revision(rev: &str) -> String {
    format!(
        "service: ledger\nrules:\n  - id: read-{rev}\n    from: {{ principals: [\"{PAYMENTS}\"] }}\n    to: [{{ methods: [GET], paths: [\"/transactions/{{id}}\"] }}]\n"
    )
}

fn write_revision(root: &std::path::Path, rev: &str) -> std::path::PathBuf {
    let dir = root.join(format!("rev-{rev}"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("ledger.yaml"), ledger_revision(rev)).unwrap();
    dir
}

/// Points `link` at `target` atomically, as git-sync does: `ln -s target tmp && mv -T
/// tmp link`.
fn repoint(link: &std::path::Path, target: &std::path::Path) {
    let tmp = link.with_extension("tmp");
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// git-sync's layout: the policy directory is a symlink, atomically re-pointed to a new
/// revision, after which the old one is deleted. Three swaps while the server answers
/// checks: each new revision takes effect (by the watch alone: polling is off), and
/// no check in between goes unanswered or is allowed by a rule no revision has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlinked_policy_directory_follows_every_swap() {
    let d = Deployment::new(&[]);
    let root = d.path();
    std::fs::remove_dir(root.join("policies")).unwrap();
    let link = root.join("policies");
    let mut current = write_revision(root, "a");
    std::os::unix::fs::symlink(&current, &link).unwrap();
    let s = TestServer::start(d.config("", "policy_poll_interval: 0s\n")).await;
    let t = token(PAYMENTS, "ledger", "");
    let rule = |a: &Answer| a.header("x-hopwarden-rule").map(str::to_string);
    assert_eq!(
        rule(&s.check(read_tx().bearer(&t)).await).as_deref(),
        Some("read-a")
    );

    // Checks keep coming the whole time; every one is answered by some revision.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background = {
        let (stop, mut client, t) = (stop.clone(), s.client.clone(), t.clone());
        tokio::spawn(async move {
            let mut answered = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let a = Answer::from(
                    client
                        .check(read_tx().bearer(&t).build())
                        .await
                        .unwrap()
                        .into_inner(),
                );
                assert_eq!(a.status, 200, "{a:?}");
                let r = a.header("x-hopwarden-rule").unwrap();
                assert!(
                    ["read-a", "read-b", "read-c", "read-d", "read-e"].contains(&r),
                    "{r}"
                );
                answered += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answered
        })
    };
    for rev in ["b", "c", "d"] {
        let next = write_revision(root, rev);
        repoint(&link, &next);
        std::fs::remove_dir_all(&current).unwrap();
        current = next;
        let want = format!("read-{rev}");
        let took_effect = eventually(Duration::from_secs(5), || async {
            rule(&s.check(read_tx().bearer(&t)).await).as_deref() == Some(want.as_str())
        })
        .await;
        let now = rule(&s.check(read_tx().bearer(&t)).await);
        assert!(took_effect, "swap to rev-{rev} not applied (still {now:?})");
    }
    // An edit inside the current target is still seen after all that.
    std::fs::write(current.join("ledger.yaml"), ledger_revision("e")).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            rule(&s.check(read_tx().bearer(&t)).await).as_deref() == Some("read-e")
        })
        .await,
        "an edit in the last target was not applied"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered = background.await.unwrap();
    assert!(answered > 10, "{answered} background checks");
    // Ready throughout, and the watch never failed.
    let admin = s.handle.admin_addr.expect("admin is on");
    let ready = reqwest::get(format!("http://{admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("hopwarden_policy_watch_errors_total 0"),
        "{metrics}"
    );
}

/// What no watch sees is found by polling: a policy file that is a symlink into a
/// directory nobody watches, edited there in place.
#[tokio::test]
async fn polling_reloads_what_the_watch_cannot_see() {
    let d = Deployment::new(&[]);
    let elsewhere = d.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("ledger.yaml"), ledger_revision("a")).unwrap();
    std::os::unix::fs::symlink(
        elsewhere.join("ledger.yaml"),
        d.policy_dir().join("ledger.yaml"),
    )
    .unwrap();
    let s = TestServer::start(d.config("", "policy_poll_interval: 200ms\n")).await;
    let t = token(PAYMENTS, "ledger", "");
    let rule = |a: Answer| a.header("x-hopwarden-rule").map(str::to_string);
    assert_eq!(
        rule(s.check(read_tx().bearer(&t)).await).as_deref(),
        Some("read-a")
    );
    // Written in place (same inode): events only in `elsewhere`, which is not watched.
    std::fs::write(elsewhere.join("ledger.yaml"), ledger_revision("bb")).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            rule(s.check(read_tx().bearer(&t)).await).as_deref() == Some("read-bb")
        })
        .await,
        "the poll did not reload"
    );
}

/// Log lines written while the guard lives, on this thread (the current-thread
/// runtime of a `#[tokio::test]` runs the server's tasks here too).
#[derive(Clone, Default)]
struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn start(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || logs.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A `jwks_uri` may carry credentials (userinfo, `?api_key=`): failed fetches are
/// logged with both redacted, reqwest's own error text included, at start (nothing
/// listening) and on an unknown-kid refetch (the key server answers 500).
#[tokio::test]
async fn jwks_uri_credentials_never_reach_the_logs() {
    let logs = CapturedLogs::default();
    let _guard = logs.start();
    let secret_uri = |authority: &str| {
        format!("http://svc:s3cret-pass@{authority}/jwks.json?api_key=s3cret-key&tenant=s3cret-t")
    };
    let redacted = |authority: &str| format!("http://redacted@{authority}/jwks.json?redacted");

    // Nothing listens on this port: the first load fails, and is retried.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let handle = hopwarden::server::start(url_config(&d, &secret_uri(&closed.to_string()), ""))
        .await
        .expect("starts without keys");
    let wanted = redacted(&closed.to_string());
    assert!(
        eventually(Duration::from_secs(5), || async {
            logs.text().contains("issuer keys not loaded") && logs.text().contains(&wanted)
        })
        .await,
        "{}",
        logs.text()
    );
    handle.shutdown().await.unwrap();

    // Loaded once, then the key server fails: an unknown kid's refetch is logged.
    let jwks_server = JwksServer::start(jwks(&[key()])).await;
    let authority = jwks_server.addr.to_string();
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let s = TestServer::start(url_config(&d, &secret_uri(&authority), "")).await;
    *jwks_server.status.lock().unwrap() = 500;
    tokio::time::sleep(Duration::from_millis(1100)).await; // past refetch_min_interval
    let unknown = other_key().sign(&claims(PAYMENTS, "ledger", "ledger.read"));
    assert_eq!(s.check(read_tx().bearer(&unknown)).await.status, 401);
    let wanted = redacted(&authority);
    assert!(
        eventually(Duration::from_secs(5), || async {
            logs.text().contains("JWKS refetch failed") && logs.text().contains(&wanted)
        })
        .await,
        "{}",
        logs.text()
    );
    let text = logs.text();
    // reqwest's error text is there, without the URL it carries.
    assert!(text.contains("error sending request"), "{text}");
    assert!(text.contains("status 500"), "{text}");
    assert!(!text.contains("s3cret"), "a credential was logged:\n{text}");
}
