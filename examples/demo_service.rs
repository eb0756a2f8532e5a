//! A tiny demo upstream for the local stack and the end-to-end tests.
//!
//! Any request is echoed as JSON: the service name, method, path, and the
//! `x-hopwarden-*` headers it received (what hopwarden told Envoy to set).
//!
//! `/call/<service>/<path>` makes this service call `<service>` through its own
//! sidecar's outbound listener (`--outbound`), with `Host: <service>`, the same
//! method and `<path>`. The `authorization` sent along is the request's
//! `x-call-authorization` header if present (the service's own token for that hop),
//! else the incoming `authorization`, as a naive service would forward it: the replay
//! that audience checks on every hop exist to stop.
//!
//! usage: demo-service --name ledger [--listen 127.0.0.1:8080] [--outbound http://127.0.0.1:15001]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};

struct Demo {
    name: String,
    outbound: Option<String>,
    http: reqwest::Client,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut name = None;
    let mut listen: SocketAddr = "127.0.0.1:8080".parse()?;
    let mut outbound = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--name" => name = args.next(),
            "--listen" => listen = args.next().ok_or("--listen needs a value")?.parse()?,
            "--outbound" => outbound = args.next(),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let demo = Arc::new(Demo {
        name: name.ok_or("--name is required")?,
        outbound,
        http: reqwest::Client::new(),
    });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!(
        "demo-service {} listening on {}",
        demo.name,
        listener.local_addr()?
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let demo = demo.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(demo.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    demo: Arc<Demo>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if let Some(rest) = path.strip_prefix("/call/") {
        return Ok(call(&demo, &req, rest).await);
    }
    let hopwarden: Map<String, Value> = req
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-hopwarden-"))
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("<non-ascii>"))))
        .collect();
    let body = json!({
        "service": demo.name,
        "method": req.method().as_str(),
        "path": path,
        "principal": hopwarden.get("x-hopwarden-principal"),
        "rule": hopwarden.get("x-hopwarden-rule"),
        "hopwarden_headers": hopwarden,
    });
    Ok(reply(StatusCode::OK, &body))
}

async fn call(demo: &Demo, req: &Request<Incoming>, rest: &str) -> Response<Full<Bytes>> {
    let Some(outbound) = &demo.outbound else {
        return reply(
            StatusCode::BAD_GATEWAY,
            &json!({"error": "no --outbound configured"}),
        );
    };
    let (target, path) = rest.split_once('/').unwrap_or((rest, ""));
    let auth = req
        .headers()
        .get("x-call-authorization")
        .or_else(|| req.headers().get("authorization"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut out = demo
        .http
        .request(req.method().clone(), format!("{outbound}/{path}"))
        .header("host", target);
    if let Some(auth) = auth {
        out = out.header("authorization", auth);
    }
    match out.send().await {
        Ok(resp) => {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let inner = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
            let code = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            reply(
                code,
                &json!({"via": demo.name, "to": target, "status": status.as_u16(), "body": inner}),
            )
        }
        Err(e) => reply(
            StatusCode::BAD_GATEWAY,
            &json!({"via": demo.name, "error": e.to_string()}),
        ),
    }
}

fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}
