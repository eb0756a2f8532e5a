//! The listeners' bounds under attack, as an outsider who can reach the port would
//! attack them: HTTP/2 streams that declare large messages and never finish, peers
//! that connect and go silent, too many connections, oversized requests, requests
//! that are not gRPC. Each attack is bounded in count and time, on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::codegen::http;
use tonic_prost::prost;
use tonic_prost::prost::bytes::Bytes;

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: what a client sends after the preface.
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

async fn server(extra: &str) -> (Deployment, TestServer) {
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let server = TestServer::start(d.config("", extra)).await;
    (d, server)
}

/// Connects, sends the HTTP/2 preface (when `preface`), then nothing: returns once
/// the server closes the connection, with the time that took (or `None` if it is
/// still open after `wait`).
async fn silent(addr: SocketAddr, preface: bool, wait: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    if preface {
        tcp.write_all(PREFACE).await.unwrap();
        tcp.write_all(SETTINGS).await.unwrap();
    }
    until_closed(&mut tcp, wait)
        .await
        .then(|| started.elapsed())
}

/// Reads (and drops) what the server sends until it closes: true if it did in `wait`.
async fn until_closed(tcp: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(wait, read_all).await.is_ok()
}

/// An HTTP/2 client connection made with the h2 crate, which lets a test leave
/// streams open and declare sizes it never sends.
async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    client
}

fn grpc_request(addr: SocketAddr, content_type: Option<&str>) -> http::Request<()> {
    let mut req = http::Request::post(format!("http://{addr}{CHECK_PATH}"))
        .header("te", "trailers")
        .body(())
        .unwrap();
    if let Some(ct) = content_type {
        req.headers_mut()
            .insert("content-type", http::HeaderValue::from_str(ct).unwrap());
    }
    req
}

/// A gRPC message prefix declaring `len` bytes.
fn prefix(len: u32) -> Bytes {
    let mut p = vec![0u8];
    p.extend_from_slice(&len.to_be_bytes());
    Bytes::from(p)
}

/// Opens `streams` Check streams on one connection, each declaring `declared` bytes
/// and sending up to `send` of them as fast as flow control lets it, never ending the
/// stream; holds them until `until`. Returns the grpc-status of each stream the server
/// answered before then (a trailers-only answer).
async fn body_attack(
    addr: SocketAddr,
    streams: usize,
    declared: u32,
    send: usize,
    until: Instant,
) -> Vec<String> {
    let until = tokio::time::Instant::from_std(until);
    let mut client = h2_client(addr).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..streams {
        let Ok(Ok(ready)) = tokio::time::timeout_at(until, client.clone().ready()).await else {
            break;
        };
        client = ready;
        let Ok((answer, mut body)) =
            client.send_request(grpc_request(addr, Some("application/grpc")), false)
        else {
            break;
        };
        tasks.spawn(async move {
            let _ = body.send_data(prefix(declared), false);
            let sender = async {
                let mut sent = 0;
                while sent < send {
                    body.reserve_capacity((send - sent).min(16_384));
                    match std::future::poll_fn(|cx| body.poll_capacity(cx)).await {
                        Some(Ok(n)) if n > 0 => {
                            if body.send_data(Bytes::from(vec![0u8; n]), false).is_err() {
                                break;
                            }
                            sent += n;
                        }
                        _ => break,
                    }
                }
                std::future::pending::<()>().await;
            };
            let answered = tokio::select! {
                answer = answer => answer.ok(),
                () = sender => None,
                () = tokio::time::sleep_until(until) => None,
            };
            answered.map(|a| {
                a.headers()
                    .get("grpc-status")
                    .map_or("none".into(), |v| v.to_str().unwrap().to_string())
            })
        });
    }
    let mut statuses = Vec::new();
    while let Some(done) = tasks.join_next().await {
        statuses.extend(done.unwrap());
    }
    statuses
}

#[tokio::test]
async fn a_connection_that_sends_no_request_is_closed_after_the_handshake_timeout() {
    let (_d, server) = server("listeners: {handshake_timeout: 300ms}\n").await;
    let addr = server.handle.local_addr;
    for preface in [true, false] {
        let took = silent(addr, preface, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("preface {preface}: still open after 5s"));
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_secs(2),
            "preface {preface}: closed after {took:?}"
        );
    }
    // The HTTP service and admin listeners too (HTTP/1.1: a request line never ends).
    for addr in [server.handle.http_addr, server.handle.admin_addr] {
        let Some(addr) = addr else { continue };
        let started = Instant::now();
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: a\r\n")
            .await
            .unwrap();
        assert!(
            until_closed(&mut tcp, Duration::from_secs(5)).await,
            "{addr}"
        );
        assert!(started.elapsed() < Duration::from_secs(2), "{addr}");
    }
    // The server answers on as before.
    let answer = server.check(Check::new("ledger", "GET", "/x")).await;
    assert_eq!(answer.status, 401);
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let (_d, server) = server("listeners: {idle_timeout: 500ms}\n").await;
    let addr = server.handle.local_addr;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let (answer, mut body) = client
        .send_request(grpc_request(addr, Some("application/grpc")), false)
        .unwrap();
    // A request in flight longer than the idle timeout keeps the connection open.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let message = Check::new("ledger", "GET", "/x").build();
    let mut framed = prefix(prost_len(&message)).to_vec();
    framed.extend(prost_encode(&message));
    body.send_data(Bytes::from(framed), true).unwrap();
    let answer = answer.await.unwrap();
    assert_eq!(answer.status(), 200);
    let idle_from = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the idle connection was not closed within 5s")
        .unwrap()
        .ok();
    let took = idle_from.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "closed {took:?} after its last request"
    );
}

fn prost_len(m: &envoy_types::ext_authz::v3::pb::CheckRequest) -> u32 {
    use prost::Message;
    m.encoded_len() as u32
}

fn prost_encode(m: &envoy_types::ext_authz::v3::pb::CheckRequest) -> Vec<u8> {
    use prost::Message;
    m.encode_to_vec()
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once() {
    // The test client's own channel is one of the four.
    let (_d, server) = server("listeners: {max_connections: 4}\n").await;
    let addr = server.handle.local_addr;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(PREFACE).await.unwrap();
        held.push(tcp);
    }
    for tcp in &mut held {
        assert!(!until_closed(tcp, Duration::from_millis(300)).await);
    }
    let took = silent(addr, true, Duration::from_secs(2))
        .await
        .expect("a fifth connection was kept open");
    assert!(took < Duration::from_millis(500), "{took:?}");
    // Those inside the cap are served as before.
    assert_eq!(
        server.check(Check::new("ledger", "GET", "/x")).await.status,
        401
    );
    // A freed slot takes a new connection.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client =
        envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(
            channel,
        );
    let answer = client
        .check(Check::new("ledger", "GET", "/x").build())
        .await
        .expect("a connection inside the cap is served");
    assert!(answer.into_inner().status.is_some());
}

#[tokio::test]
async fn a_request_past_the_message_limit_is_refused() {
    let (_d, server) =
        server("listeners: {max_request_bytes: 4096}\nhttp_listen: 127.0.0.1:0\n").await;
    let big = Check::new("ledger", "GET", "/x").header("x-padding", &"a".repeat(8000));
    let refused = server.check_rpc(big).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert_eq!(
        server.check(Check::new("ledger", "GET", "/x")).await.status,
        401
    );
    // The HTTP service: a declared body past the limit is refused, and so is a
    // header block past it (hyper's 431).
    let http = server.handle.http_addr.unwrap();
    for (request, want) in [
        (
            "GET /gateway/ledger/x HTTP/1.1\r\nhost: ledger\r\ncontent-length: 100000\r\n\r\n"
                .to_string(),
            "413",
        ),
        (
            format!(
                "GET /gateway/ledger/x HTTP/1.1\r\nhost: ledger\r\nx-padding: {}\r\n\r\n",
                "a".repeat(10_000)
            ),
            "431",
        ),
    ] {
        let mut tcp = TcpStream::connect(http).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut head = vec![0u8; 12];
        tokio::time::timeout(Duration::from_secs(2), tcp.read_exact(&mut head))
            .await
            .unwrap()
            .unwrap();
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(head.ends_with(want), "{head:?} for {want}");
    }
}

#[tokio::test]
async fn a_request_that_is_not_grpc_is_refused_as_grpc_servers_do() {
    let (_d, server) = server("").await;
    let addr = server.handle.local_addr;
    let mut client = h2_client(addr).await;
    for content_type in [None, Some("application/json"), Some("application/grpc-web")] {
        let (answer, mut body) = client
            .send_request(grpc_request(addr, content_type), false)
            .unwrap();
        body.send_data(prefix(0), true).unwrap();
        let answer = answer.await.unwrap();
        assert_eq!(answer.status(), 415, "{content_type:?}");
        assert_eq!(answer.headers()["grpc-status"], "13", "{content_type:?}");
        client = client.ready().await.unwrap();
    }
    // The same request as gRPC reaches the service (an empty check is denied).
    let (answer, mut body) = client
        .send_request(grpc_request(addr, Some("application/grpc")), false)
        .unwrap();
    body.send_data(prefix(0), true).unwrap();
    assert_eq!(answer.await.unwrap().status(), 200);
}

#[tokio::test]
async fn streams_past_the_request_budget_are_refused_and_slow_bodies_time_out() {
    let (_d, server) = server(
        "listeners: {max_request_bytes: 65536, request_bytes_in_flight: 131072, body_timeout: 1s}\n",
    )
    .await;
    let addr = server.handle.local_addr;
    let started = Instant::now();
    // Two streams fit the budget (each holds its declared 60,005 bytes); the third
    // does not; a fourth declaring more than the message limit is refused outright.
    let statuses = body_attack(addr, 3, 60_000, 1_000, started + Duration::from_millis(600)).await;
    assert_eq!(
        statuses,
        vec!["8".to_string()],
        "only the third is refused at once"
    );
    let refused = body_attack(addr, 1, 70_000, 0, Instant::now() + Duration::from_secs(2)).await;
    assert_eq!(refused, vec!["8".to_string()]);
    // Those that never finish are answered DEADLINE_EXCEEDED after the body timeout.
    let at = Instant::now();
    let statuses = body_attack(addr, 2, 60_000, 1_000, at + Duration::from_secs(4)).await;
    assert_eq!(statuses, vec!["4".to_string(), "4".to_string()]);
    assert!(
        at.elapsed() >= Duration::from_millis(900),
        "{:?}",
        at.elapsed()
    );
    assert_eq!(
        server.check(Check::new("ledger", "GET", "/x")).await.status,
        401
    );
}

/// hopwarden as its own process (so its memory is measured alone), with `extra` config.
struct Process {
    child: Child,
    addr: SocketAddr,
    _d: Deployment,
}

impl Process {
    async fn start(extra: &str) -> Process {
        let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
        let port = common::stack::free_port();
        let text = d
            .config_text("", extra)
            .replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}"))
            .replace(
                "decision_log: {to: decisions.log}",
                "decision_log: {to: \"off\"}",
            );
        let path = d.path().join("hopwarden.yaml");
        std::fs::write(&path, text).unwrap();
        // HOPWARDEN_BIN: measure another build (the release one) with the same attacks.
        let bin = std::env::var("HOPWARDEN_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_hopwarden").to_string());
        let child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let up = eventually(Duration::from_secs(20), || async {
            TcpStream::connect(addr).await.is_ok()
        })
        .await;
        assert!(up, "hopwarden did not start");
        Process { child, addr, _d: d }
    }

    /// Resident memory, from /proc.
    fn rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kb / 1024.0
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The highest RSS seen while `attack` runs, sampled every 50 ms; and how many checks
/// a normal client sent meanwhile and the slowest answer it got.
async fn during<F: std::future::Future>(
    p: &Process,
    attack: F,
) -> (F::Output, f64, usize, Duration) {
    let peak = Arc::new(std::sync::Mutex::new(p.rss_mb()));
    let pid_status = format!("/proc/{}/status", p.child.id());
    let stop = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while stop.load(Ordering::Relaxed) == 0 {
                if let Ok(status) = std::fs::read_to_string(&pid_status) {
                    let kb: f64 = status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.split_whitespace().next())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0.0);
                    let mut peak = peak.lock().unwrap();
                    *peak = peak.max(kb / 1024.0);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let normal = {
        let (stop, addr) = (stop.clone(), p.addr);
        tokio::spawn(async move {
            let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(channel);
            let (mut n, mut slowest) = (0, Duration::ZERO);
            while stop.load(Ordering::Relaxed) == 0 {
                let at = Instant::now();
                let answer = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.check(Check::new("ledger", "GET", "/x").build()),
                )
                .await
                .expect("a normal check was not answered within 5s during the attack")
                .expect("a normal check failed during the attack");
                assert_eq!(answer.into_inner().status.unwrap().code, 16, "401 expected");
                slowest = slowest.max(at.elapsed());
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (n, slowest)
        })
    };
    let out = attack.await;
    stop.store(1, Ordering::Relaxed);
    sampler.await.unwrap();
    let (n, slowest) = normal.await.unwrap();
    let peak = *peak.lock().unwrap();
    (out, peak, n, slowest)
}

/// The attack: three connections, 200 Check streams each, every one declaring
/// a 4 MiB message and sending its body as fast as flow control allows without ever
/// ending it. Before the listeners were bounded this took the process from 33 MB to
/// 2.5 GB in 13 s. Then the same with messages just under the limit, trickled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_the_body_trickle_attack() {
    let p = Process::start("").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = p.rss_mb();
    let attack = async {
        let until = Instant::now() + Duration::from_secs(8);
        let waves = (0..3).map(|_| body_attack(p.addr, 200, 4 << 20, 4 << 20, until));
        let big: Vec<String> = futures_join_all(waves).await.concat();
        let until = Instant::now() + Duration::from_secs(8);
        let waves = (0..3).map(|_| body_attack(p.addr, 200, 65_000, 64_000, until));
        let near: Vec<String> = futures_join_all(waves).await.concat();
        (big, near)
    };
    let ((big, near), peak, normal, slowest) = during(&p, attack).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = p.rss_mb();
    eprintln!(
        "idle {idle:.1} MB, peak {peak:.1} MB, 2s after {after:.1} MB; \
         4 MiB streams refused {}, near-limit streams answered {} ({} RESOURCE_EXHAUSTED); \
         normal checks {normal}, slowest {slowest:?}",
        big.len(),
        near.len(),
        near.iter().filter(|s| *s == "8").count()
    );
    assert_eq!(big.len(), 600, "every 4 MiB stream is refused");
    assert!(big.iter().all(|s| s == "8"), "{big:?}");
    assert!(near.iter().all(|s| s == "8" || s == "4"), "{near:?}");
    assert!(
        peak - idle < 256.0,
        "peak {peak:.1} MB over idle {idle:.1} MB"
    );
    assert!(
        after - idle < 64.0,
        "after {after:.1} MB, idle {idle:.1} MB"
    );
    assert!(normal >= 10, "only {normal} normal checks answered");
}

/// `join_all` without the futures crate.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// Opens `n` connections that send the HTTP/2 preface, then (when `trickle`) one byte
/// of a never-finished HEADERS frame a second, else nothing. Returns how many the
/// server closed within `wait` and how long the last close took.
async fn slow_connections(
    addr: SocketAddr,
    n: usize,
    trickle: bool,
    wait: Duration,
) -> (usize, Duration) {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let Ok(mut tcp) = TcpStream::connect(addr).await else {
            continue;
        };
        tasks.spawn(async move {
            if tcp.write_all(PREFACE).await.is_err() || tcp.write_all(SETTINGS).await.is_err() {
                return Some(started.elapsed());
            }
            // A HEADERS frame header declaring 16,000 bytes, sent a byte at a time.
            let frame = [0u8, 0x3e, 0x80, 1, 4, 0, 0, 0, 1];
            let deadline = started + wait;
            let (mut rd, mut wr) = tcp.into_split();
            let writer = async {
                for b in frame.iter().chain(std::iter::repeat(&0u8)) {
                    if !trickle {
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if wr.write_all(&[*b]).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            };
            let reader = async {
                let mut buf = [0u8; 1024];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => return started.elapsed(),
                        Ok(_) => {}
                    }
                }
            };
            tokio::select! {
                closed = reader => Some(closed),
                () = writer => None,
                () = tokio::time::sleep_until(deadline.into()) => None,
            }
        });
    }
    let (mut closed, mut last) = (0, Duration::ZERO);
    while let Some(done) = tasks.join_next().await {
        if let Some(at) = done.unwrap() {
            closed += 1;
            last = last.max(at);
        }
    }
    (closed, last)
}

/// The figures in docs/security.md: RSS of hopwarden (defaults) during and after each
/// attack the issue describes, and the normal client's slowest check meanwhile. Not
/// part of the suite (about a minute): `HOPWARDEN_BIN=target/release/hopwarden cargo
/// test --test listeners measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand (docs/security.md)"]
async fn measure_attacks() {
    let p = Process::start("").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = p.rss_mb();
    eprintln!("idle: {idle:.1} MB");
    let report = |name: &str, peak: f64, normal: usize, slowest: Duration, p: &Process| {
        eprintln!(
            "{name}: peak {peak:.1} MB (+{:.1}), after {:.1} MB; normal checks {normal}, slowest {slowest:?}",
            peak - idle,
            p.rss_mb()
        );
    };
    let addr = p.addr;
    for (name, conns) in [
        ("1 connection x 200 streams x 4 MiB", 1),
        ("3 connections x 200 streams x 4 MiB", 3),
    ] {
        let until = Instant::now() + Duration::from_secs(10);
        let attack =
            futures_join_all((0..conns).map(|_| body_attack(addr, 200, 4 << 20, 4 << 20, until)));
        let (_, peak, normal, slowest) = during(&p, attack).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        report(name, peak, normal, slowest, &p);
    }
    let until = Instant::now() + Duration::from_secs(8);
    let attack = futures_join_all((0..3).map(|_| body_attack(addr, 200, 65_000, 64_000, until)));
    let (_, peak, normal, slowest) = during(&p, attack).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    report(
        "3 connections x 200 streams x 64,000 B held",
        peak,
        normal,
        slowest,
        &p,
    );
    let attack = slow_connections(addr, 500, true, Duration::from_secs(30));
    let ((closed, last), peak, normal, slowest) = during(&p, attack).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    report(
        &format!("500 trickling connections ({closed} closed, last after {last:?})"),
        peak,
        normal,
        slowest,
        &p,
    );
    let attack = slow_connections(addr, 5000, false, Duration::from_secs(30));
    let ((closed, last), peak, normal, slowest) = during(&p, attack).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    report(
        &format!("5000 silent connections ({closed} closed, last after {last:?})"),
        peak,
        normal,
        slowest,
        &p,
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    eprintln!("12s after the last attack: {:.1} MB", p.rss_mb());
}
