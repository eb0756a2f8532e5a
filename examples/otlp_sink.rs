//! A minimal OTLP/gRPC trace receiver for trying and benchmarking `tracing.otlp`
//! (docs/tracing.md): accepts every export on `--listen` (default 127.0.0.1:4317),
//! counts the spans, and prints the running count and the last span's trace id,
//! parent span id and attributes once a second while spans arrive.
//!
//! ```text
//! cargo run --example otlp-sink -- --listen 127.0.0.1:4317
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;

#[derive(Clone, Default)]
struct Sink {
    spans: Arc<AtomicU64>,
    last: Arc<Mutex<Option<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                self.spans
                    .fetch_add(ss.spans.len() as u64, Ordering::Relaxed);
                if let Some(span) = ss.spans.into_iter().last() {
                    *self.last.lock().unwrap() = Some(span);
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = match args.as_slice() {
        [] => "127.0.0.1:4317".to_string(),
        [flag, addr] if flag == "--listen" => addr.clone(),
        _ => return Err("usage: otlp-sink [--listen ADDR]".into()),
    };
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("otlp-sink: OTLP/gRPC traces on {}", listener.local_addr()?);
    let sink = Sink::default();
    let report = sink.clone();
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let n = report.spans.load(Ordering::Relaxed);
            if n == seen {
                continue;
            }
            seen = n;
            if let Some(span) = report.last.lock().unwrap().as_ref() {
                let attrs: Vec<String> = span
                    .attributes
                    .iter()
                    .map(|kv| {
                        format!(
                            "{}={:?}",
                            kv.key,
                            kv.value.as_ref().and_then(|v| v.value.as_ref())
                        )
                    })
                    .collect();
                println!(
                    "spans {n}; last: trace {} parent {} {:?} [{}]",
                    hex(&span.trace_id),
                    hex(&span.parent_span_id),
                    span.name,
                    attrs.join(", ")
                );
            }
        }
    });
    let service = TraceServiceServer::new(sink);
    loop {
        let (stream, _) = listener.accept().await?;
        let service = hyper_util::service::TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
        });
    }
}
