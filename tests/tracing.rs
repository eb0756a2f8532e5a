//! OpenTelemetry traces of checks: the real server exports over OTLP/gRPC to a small
//! collector built on the OTLP protocol's own service definitions
//! (opentelemetry-proto's `TraceServiceServer`, served by hyper on 127.0.0.1:0), and
//! the span it receives sits under the trace context the check carried.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;

/// What the collector received: (the resource's service.name, span) pairs.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| string(kv.value.as_ref().and_then(|v| v.value.as_ref())))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn string(v: Option<&AnyValue>) -> String {
    match v {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| string(kv.value.as_ref().and_then(|v| v.value.as_ref())))
}

/// Serves the OTLP trace service over HTTP/2 on 127.0.0.1:0.
async fn start_collector() -> (SocketAddr, Collector) {
    start_collector_with(None).await
}

/// The same, over TLS when `tls` is given.
async fn start_collector_with(tls: Option<tokio_rustls::TlsAcceptor>) -> (SocketAddr, Collector) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let collector = Collector::default();
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(service.clone());
            let tls = tls.clone();
            tokio::spawn(serve_one(stream, tls, service));
        }
    });
    (addr, collector)
}

/// A CA minted now (its PEM) and a TLS acceptor whose certificate, for 127.0.0.1 and
/// localhost, it signed.
/// Serves one accepted collector connection, over TLS when `tls` is given (a client
/// that does not trust the certificate fails the handshake here).
async fn serve_one<S, B>(
    stream: tokio::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: S,
) where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let serve = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    match tls {
        None => {
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = serve.serve_connection(io, service).await;
        }
        Some(tls) => {
            let Ok(stream) = tls.accept(stream).await else {
                return;
            };
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = serve.serve_connection(io, service).await;
        }
    }
}

fn test_ca_and_acceptor() -> (String, tokio_rustls::TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "tracing test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    (ca_pem, tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn tracing_config(endpoint: &str, extra: &str) -> String {
    format!(
        "tracing:\n  otlp:\n    endpoint: \"{endpoint}\"\n    interval: 50ms\n    timeout: 500ms\n{extra}"
    )
}

async fn metrics(s: &TestServer) -> String {
    let admin = s.handle.admin_addr.expect("admin enabled");
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of `series` (name and labels) in a Prometheus page, 0 when absent.
fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn the_check_span_is_a_child_of_the_callers_traceparent() {
    let (addr, collector) = start_collector().await;
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let s = TestServer::start(d.config("", &tracing_config(&format!("http://{addr}"), ""))).await;
    let t = token(PAYMENTS, "ledger", "ledger.read");

    // Not sampled by the caller: no span, whatever the header style.
    let unsampled = [
        (
            "traceparent",
            "00-11111111111111111111111111111111-2222222222222222-00",
        ),
        ("b3", "33333333333333333333333333333333-4444444444444444-0"),
    ];
    for (name, value) in unsampled {
        let check = Check::new("ledger", "GET", "/transactions/1")
            .bearer(&t)
            .header(name, value);
        assert_eq!(s.check(check).await.status, 200);
    }
    // No trace context and the default root ratio (0): no span.
    assert_eq!(
        s.check(Check::new("ledger", "GET", "/transactions/1").bearer(&t))
            .await
            .status,
        200
    );

    let tp = format!("00-{TRACE}-{PARENT}-01");
    let allowed = Check::new("ledger", "GET", "/transactions/42")
        .bearer(&t)
        .header("traceparent", &tp)
        .header("tracestate", "vendor=abc");
    assert_eq!(s.check(allowed).await.status, 200);
    // Denied, from B3 single and multi headers (Envoy's Zipkin tracer, Istio).
    let b3 = Check::new("ledger", "POST", "/refunds")
        .bearer(&t)
        .header("b3", "a3ce929d0e0e4736-5555555555555555-1");
    assert_eq!(s.check(b3).await.status, 403);
    let b3_multi = Check::new("ledger", "GET", "/transactions/7")
        .header("x-b3-traceid", "66666666666666666666666666666666")
        .header("x-b3-spanid", "7777777777777777")
        .header("x-b3-sampled", "1");
    assert_eq!(s.check(b3_multi).await.status, 401);

    let arrived = eventually(Duration::from_secs(10), || {
        let spans = collector.spans.clone();
        async move { spans.lock().unwrap().len() >= 3 }
    })
    .await;
    let spans = collector.spans.lock().unwrap().clone();
    assert!(arrived, "spans received: {}", spans.len());
    // Exactly the three sampled checks: the three before were queued first and are not here.
    assert_eq!(spans.len(), 3, "{spans:#?}");

    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let find = |trace: &str| {
        spans
            .iter()
            .find(|(_, sp)| hex(&sp.trace_id) == trace)
            .unwrap_or_else(|| panic!("no span in trace {trace}: {spans:#?}"))
    };

    let (service_name, span) = find(TRACE);
    assert_eq!(service_name, "hopwarden");
    assert_eq!(hex(&span.parent_span_id), PARENT);
    assert_eq!(span.trace_state, "vendor=abc");
    assert_eq!(span.span_id.len(), 8);
    assert_ne!(hex(&span.span_id), PARENT);
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano && span.start_time_unix_nano > 0);
    assert_eq!(attr(span, "hopwarden.service").as_deref(), Some("ledger"));
    assert_eq!(attr(span, "hopwarden.hop").as_deref(), Some("mesh"));
    assert_eq!(attr(span, "hopwarden.decision").as_deref(), Some("allow"));
    assert_eq!(attr(span, "hopwarden.principal").as_deref(), Some(PAYMENTS));
    assert_eq!(
        attr(span, "hopwarden.rule").as_deref(),
        Some("payments-read-transactions")
    );
    assert_eq!(attr(span, "hopwarden.cached").as_deref(), Some("false"));
    assert_eq!(attr(span, "hopwarden.reason"), None);

    // A 64-bit B3 trace id is zero-extended to 128 bits.
    let (_, denied) = find("0000000000000000a3ce929d0e0e4736");
    assert_eq!(hex(&denied.parent_span_id), "5555555555555555");
    assert_eq!(attr(denied, "hopwarden.decision").as_deref(), Some("deny"));
    assert_eq!(
        attr(denied, "hopwarden.reason").as_deref(),
        Some("deny_rule")
    );
    assert_eq!(
        attr(denied, "hopwarden.rule").as_deref(),
        Some("payments-never-refund")
    );
    assert_eq!(
        attr(denied, "http.response.status_code").as_deref(),
        Some("403")
    );

    let (_, anonymous) = find("66666666666666666666666666666666");
    assert_eq!(hex(&anonymous.parent_span_id), "7777777777777777");
    assert_eq!(
        attr(anonymous, "hopwarden.reason").as_deref(),
        Some("missing_credential")
    );

    // Never a token, in any attribute of any span.
    for (_, span) in &spans {
        for kv in &span.attributes {
            let v = string(kv.value.as_ref().and_then(|v| v.value.as_ref()));
            assert!(!v.contains(&t) && !v.contains("Bearer"), "{}: {v}", kv.key);
        }
    }

    // The same request again is a cache hit, and says so.
    let again = Check::new("ledger", "GET", "/transactions/42")
        .bearer(&t)
        .header("traceparent", &format!("00-{TRACE}-1234567812345678-01"));
    assert_eq!(s.check(again).await.status, 200);
    let cached = eventually(Duration::from_secs(10), || {
        let spans = collector.spans.clone();
        async move { spans.lock().unwrap().len() >= 4 }
    })
    .await;
    assert!(cached);
    let spans = collector.spans.lock().unwrap().clone();
    let hit = spans
        .iter()
        .find(|(_, sp)| hex(&sp.parent_span_id) == "1234567812345678")
        .expect("the cached check's span");
    assert_eq!(attr(&hit.1, "hopwarden.cached").as_deref(), Some("true"));
    assert_eq!(
        sample(&metrics(&s).await, "hopwarden_trace_spans_exported_total"),
        4.0
    );
}

fn bytes_of(m: &ExportTraceServiceResponse) -> std::io::Cursor<Vec<u8>> {
    std::io::Cursor::new(prost::Message::encode_to_vec(m))
}

/// An OTLP/HTTP collector: `POST /v1/traces` with a protobuf body, on 127.0.0.1:0.
async fn start_http_collector() -> (SocketAddr, Arc<Mutex<Vec<Span>>>) {
    start_http_collector_with(None).await
}

/// The same, over TLS when `tls` is given.
async fn start_http_collector_with(
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (SocketAddr, Arc<Mutex<Vec<Span>>>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans = Arc::new(Mutex::new(Vec::new()));
    let theirs = spans.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let spans = theirs.clone();
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let spans = spans.clone();
                    async move {
                        let ok = req.method() == hyper::Method::POST
                            && req.uri().path() == "/v1/traces"
                            && req.headers()["content-type"] == "application/x-protobuf";
                        let body = req.into_body().collect().await?.to_bytes();
                        let status =
                            match <ExportTraceServiceRequest as prost::Message>::decode(body) {
                                Ok(export) if ok => {
                                    let mut spans = spans.lock().unwrap();
                                    for rs in export.resource_spans {
                                        for ss in rs.scope_spans {
                                            spans.extend(ss.spans);
                                        }
                                    }
                                    200
                                }
                                _ => 400,
                            };
                        let mut resp = hyper::Response::new(http_body_util::Full::new(bytes_of(
                            &ExportTraceServiceResponse::default(),
                        )));
                        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, hyper::Error>(resp)
                    }
                });
            let tls = tls.clone();
            tokio::spawn(serve_one(stream, tls, service));
        }
    });
    (addr, spans)
}

#[tokio::test]
async fn spans_go_over_otlp_http_too() {
    let (addr, spans) = start_http_collector().await;
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let extra = "    protocol: http\n";
    let endpoint = format!("http://{addr}/v1/traces");
    let s = TestServer::start(d.config("", &tracing_config(&endpoint, extra))).await;
    let t = token(PAYMENTS, "ledger", "ledger.read");
    let check = Check::new("ledger", "GET", "/transactions/42")
        .bearer(&t)
        .header("traceparent", &format!("00-{TRACE}-{PARENT}-01"));
    assert_eq!(s.check(check).await.status, 200);
    let arrived = eventually(Duration::from_secs(10), || {
        let spans = spans.clone();
        async move { !spans.lock().unwrap().is_empty() }
    })
    .await;
    assert!(arrived, "{}", metrics(&s).await);
    let spans = spans.lock().unwrap().clone();
    assert_eq!(spans.len(), 1);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(hex(&spans[0].trace_id), TRACE);
    assert_eq!(hex(&spans[0].parent_span_id), PARENT);
    assert_eq!(
        attr(&spans[0], "hopwarden.rule").as_deref(),
        Some("payments-read-transactions")
    );
}

#[tokio::test]
async fn with_the_collector_down_checks_are_answered_and_drops_counted() {
    // A port that was just free: nothing listens there.
    let endpoint = format!("http://127.0.0.1:{}", common::stack::free_port());
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let extra = "    max_queue: 4\n";
    let s = TestServer::start(d.config("", &tracing_config(&endpoint, extra))).await;
    let t = token(PAYMENTS, "ledger", "ledger.read");
    let tp = format!("00-{TRACE}-{PARENT}-01");
    for i in 0..40 {
        let check = Check::new("ledger", "GET", &format!("/transactions/{i}"))
            .bearer(&t)
            .header("traceparent", &tp);
        let answer = s.check_rpc(check).await.expect("no check fails");
        assert_eq!(answer.status, 200);
    }
    let dropped = |page: &str, why: &str| {
        sample(
            page,
            &format!("hopwarden_trace_spans_dropped_total{{why=\"{why}\"}}"),
        )
    };
    // 40 spans within one interval into a queue of 4: most are dropped at once.
    let page = metrics(&s).await;
    assert!(dropped(&page, "queue_full") >= 1.0, "{page}");
    let failed = eventually(Duration::from_secs(10), || async {
        dropped(&metrics(&s).await, "export_failed") >= 1.0
    })
    .await;
    let page = metrics(&s).await;
    assert!(failed, "{page}");
    assert_eq!(sample(&page, "hopwarden_trace_spans_exported_total"), 0.0);
    // Every span is accounted for: dropped on the way in, or by the failed exports
    // (at most 4 may still wait in the queue).
    let accounted = dropped(&page, "queue_full") + dropped(&page, "export_failed");
    assert!((36.0..=40.0).contains(&accounted), "{accounted}: {page}");
    // And checks still answer.
    let check = Check::new("ledger", "GET", "/transactions/1")
        .bearer(&t)
        .header("traceparent", &tp);
    assert_eq!(s.check_rpc(check).await.expect("answered").status, 200);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks with a sampled `traceparent`, answered 200.
async fn sampled_checks(s: &TestServer, n: usize) {
    let t = token(PAYMENTS, "ledger", "ledger.read");
    for i in 0..n {
        let check = Check::new("ledger", "GET", &format!("/transactions/{i}"))
            .bearer(&t)
            .header("traceparent", &format!("00-{TRACE}-{PARENT}-01"));
        assert_eq!(s.check(check).await.status, 200);
    }
}

#[tokio::test]
async fn spans_queued_at_shutdown_are_sent() {
    let (addr, collector) = start_collector().await;
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    // An interval far longer than the test: only the shutdown's flush sends them.
    let config = format!(
        "tracing:\n  otlp:\n    endpoint: \"http://{addr}\"\n    interval: 1h\n    timeout: 5s\n"
    );
    let s = TestServer::start(d.config("", &config)).await;
    sampled_checks(&s, 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        collector.spans.lock().unwrap().len(),
        0,
        "exported before shutdown"
    );
    let engine = s.handle.engine.clone();
    s.handle.shutdown().await.unwrap();
    // Sent by the time shutdown returns: nothing to wait for.
    let spans = collector.spans.lock().unwrap().clone();
    assert_eq!(spans.len(), 3, "{spans:?}");
    for (_, span) in &spans {
        assert_eq!(hex(&span.trace_id), TRACE);
        assert_eq!(hex(&span.parent_span_id), PARENT);
    }
    let page = engine.metrics().encode();
    assert_eq!(
        sample(&page, "hopwarden_trace_spans_exported_total"),
        3.0,
        "{page}"
    );
}

#[tokio::test]
async fn a_collector_that_never_answers_holds_shutdown_up_for_the_flush_timeout_at_most() {
    // Accepts connections (the kernel does) but never reads or answers them.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = blackhole.local_addr().unwrap();
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    // An export may take 30 s; a shutdown still waits only the flush timeout.
    let config = format!(
        "tracing:\n  otlp:\n    endpoint: \"http://{addr}\"\n    interval: 50ms\n    timeout: 30s\n"
    );
    let s = TestServer::start(d.config("", &config)).await;
    // The first spans are taken by an export that hangs; the next ones wait behind it.
    sampled_checks(&s, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sampled_checks(&s, 3).await;
    let engine = s.handle.engine.clone();
    let started = std::time::Instant::now();
    s.handle.shutdown().await.unwrap();
    let took = started.elapsed();
    // The health grace (0.5 s), the drain, then the flush (2 s at most).
    let flush = hopwarden::telemetry::otlp::FLUSH_TIMEOUT;
    assert!(
        took < flush + Duration::from_secs(3),
        "shutdown took {took:?}"
    );
    assert!(
        took >= flush,
        "shutdown took {took:?}: the flush did not wait for the collector"
    );
    // Nothing reached a collector; the spans still queued are counted as dropped.
    let page = engine.metrics().encode();
    assert_eq!(
        sample(&page, "hopwarden_trace_spans_exported_total"),
        0.0,
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            "hopwarden_trace_spans_dropped_total{why=\"shutdown\"}"
        ),
        3.0,
        "{page}"
    );
    drop(blackhole);
}

#[tokio::test]
async fn spans_go_over_grpc_with_tls_to_a_collector_signed_by_ca_file() {
    let (ca_pem, acceptor) = test_ca_and_acceptor();
    let (addr, collector) = start_collector_with(Some(acceptor)).await;
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    std::fs::write(d.path().join("collector-ca.pem"), &ca_pem).unwrap();
    // Relative to the config file, like every other path in it.
    let endpoint = format!("https://127.0.0.1:{}", addr.port());
    let s = TestServer::start(d.config(
        "",
        &tracing_config(&endpoint, "    ca_file: collector-ca.pem\n"),
    ))
    .await;
    sampled_checks(&s, 2).await;
    let arrived = eventually(Duration::from_secs(10), || async {
        collector.spans.lock().unwrap().len() == 2
    })
    .await;
    assert!(arrived, "{}", metrics(&s).await);
    for (_, span) in collector.spans.lock().unwrap().iter() {
        assert_eq!(hex(&span.trace_id), TRACE);
    }
}

#[tokio::test]
async fn spans_go_over_https_to_a_collector_signed_by_ca_file() {
    let (ca_pem, acceptor) = test_ca_and_acceptor();
    let (addr, spans) = start_http_collector_with(Some(acceptor)).await;
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    std::fs::write(d.path().join("collector-ca.pem"), &ca_pem).unwrap();
    let endpoint = format!("https://127.0.0.1:{}/v1/traces", addr.port());
    let extra = "    protocol: http\n    ca_file: collector-ca.pem\n";
    let s = TestServer::start(d.config("", &tracing_config(&endpoint, extra))).await;
    sampled_checks(&s, 2).await;
    let arrived = eventually(Duration::from_secs(10), || async {
        spans.lock().unwrap().len() == 2
    })
    .await;
    assert!(arrived, "{}", metrics(&s).await);
}

#[tokio::test]
async fn a_tls_collector_whose_ca_is_not_trusted_gets_nothing() {
    let (_, acceptor) = test_ca_and_acceptor();
    let (addr, collector) = start_collector_with(Some(acceptor)).await;
    // Another CA minted now: the collector's certificate does not chain to it.
    let (other_ca, _) = test_ca_and_acceptor();
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    std::fs::write(d.path().join("other-ca.pem"), &other_ca).unwrap();
    let endpoint = format!("https://127.0.0.1:{}", addr.port());
    for extra in ["    ca_file: other-ca.pem\n", ""] {
        // With a CA that did not sign it, and with the public roots.
        let s = TestServer::start(d.config("", &tracing_config(&endpoint, extra))).await;
        sampled_checks(&s, 2).await;
        let failed = eventually(Duration::from_secs(10), || async {
            sample(
                &metrics(&s).await,
                "hopwarden_trace_spans_dropped_total{why=\"export_failed\"}",
            ) >= 2.0
        })
        .await;
        assert!(failed, "{extra:?}: {}", metrics(&s).await);
        assert!(collector.spans.lock().unwrap().is_empty(), "{extra:?}");
    }
}

#[tokio::test]
async fn a_ca_file_that_is_not_a_certificate_stops_the_start() {
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    std::fs::write(d.path().join("ca.pem"), "not a certificate\n").unwrap();
    let config = d.config(
        "",
        &tracing_config("https://127.0.0.1:4317", "    ca_file: ca.pem\n"),
    );
    let err = hopwarden::server::start(config)
        .await
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("tracing.otlp.ca_file") && text.contains("ca.pem"),
        "{text}"
    );
    assert!(text.contains("no PEM certificate"), "{text}");
}

#[test]
fn validate_lists_the_trace_headers_only_when_tracing_is_on() {
    let d = Deployment::new(&[("ledger.yaml", LEDGER_POLICY)]);
    let path = d.path().join("hopwarden.yaml");
    std::fs::write(&path, d.config_text("", "")).unwrap();
    let (code, out, err) = run_bin(&["validate", "--config", "hopwarden.yaml"], d.path());
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("traceparent"), "{out}");

    let extra = tracing_config("http://127.0.0.1:4317", "");
    std::fs::write(&path, d.config_text("", &extra)).unwrap();
    let (code, out, err) = run_bin(&["validate", "--config", "hopwarden.yaml"], d.path());
    assert_eq!(code, 0, "{err}");
    for h in [
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-sampled",
        "x-b3-flags",
    ] {
        assert!(out.contains(&format!("{{ exact: {h} }}")), "{h}: {out}");
    }

    let bad = tracing_config("collector:4317", "");
    std::fs::write(&path, d.config_text("", &bad)).unwrap();
    let (code, _, err) = run_bin(&["validate", "--config", "hopwarden.yaml"], d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("tracing.otlp.endpoint \"collector:4317\" is not an http:// or https:// URL"),
        "{err}"
    );
}
