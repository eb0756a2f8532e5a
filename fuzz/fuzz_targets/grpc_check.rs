//! The gRPC edge as Envoy reaches it: a `Check` request body (gRPC message framing,
//! in one or several DATA frames) -> the `CheckRequest` -> the domain request -> the
//! engine -> the answer.
//!
//! Input: one control byte (bits 0-1: `grpc-encoding` none / identity / gzip / none;
//! bits 2-4: how many frames the body arrives in, 1-8), then the request body.
//!
//! Properties: no panic; every answer is a gRPC answer (`200`, a `grpc-status`); an
//! error status is one Envoy's `failure_mode_allow` can act on (never OK-without-body
//! or UNKNOWN); a body that is exactly one uncompressed, decodable message is answered
//! with a decision and anything else with an error; a decision is an allow only when
//! [`assert_allow_is_earned`] agrees, and a deny is 401 or 403.
#![no_main]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use hopwarden::grpc::check::CheckService;
use hopwarden::grpc::convert::{ResponseOptions, RULE_HEADER};
use hopwarden::grpc::service::AuthorizationService;
use hopwarden::listener::{spec::ListenersSpec, Bounds};
use hopwarden::request::AuthzRequest;
use hopwarden_fuzz::{assert_allow_is_earned, harness};
use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame};
use libfuzzer_sys::fuzz_target;
use tonic::codegen::Service;
use tonic_prost::prost::Message;

/// A request body that arrives in the given DATA frames.
struct Frames(VecDeque<Bytes>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// The message, when `body` is exactly one uncompressed length-prefixed message.
fn one_message(body: &[u8]) -> Option<&[u8]> {
    let (prefix, message) = body.split_first_chunk::<5>()?;
    let declared = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    (prefix[0] == 0 && declared == message.len()).then_some(message)
}

const OK: i32 = tonic::Code::Ok as i32;

fuzz_target!(|data: &[u8]| {
    let Some((&control, body)) = data.split_first() else {
        return;
    };
    let encoding = match control & 3 {
        1 => Some("identity"),
        2 => Some("gzip"),
        _ => None,
    };
    let frames = 1 + usize::from((control >> 2) & 7);
    let step = body.len().div_ceil(frames).max(1);
    let chunks = body
        .chunks(step)
        .map(Bytes::copy_from_slice)
        .collect::<VecDeque<_>>();

    let h = harness();
    let mut request = http::Request::post("/envoy.service.auth.v3.Authorization/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(e) = encoding {
        request = request.header("grpc-encoding", e);
    }
    let request = request.body(Frames(chunks)).expect("request");
    // The listeners' default bounds (64 KiB messages), as `serve` runs them.
    let mut service = AuthorizationService::new(
        CheckService::new(
            h.engine.clone(),
            ResponseOptions {
                dynamic_metadata: true,
            },
        ),
        Bounds::new(&ListenersSpec::default()),
    );
    let (parts, answer) = h.runtime.block_on(async {
        let response = service.call(request).await.expect("infallible");
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.expect("answer body");
        (parts, collected)
    });
    assert_eq!(parts.status, http::StatusCode::OK, "gRPC answers are 200");

    let decodable = one_message(body).and_then(|m| CheckRequest::decode(m).ok());
    // A trailers-only answer: an error status in the headers.
    if let Some(status) = parts.headers.get("grpc-status") {
        let code: i32 = status.to_str().unwrap().parse().unwrap();
        let allowed_codes = [
            tonic::Code::Internal,
            tonic::Code::ResourceExhausted,
            tonic::Code::Unimplemented,
            tonic::Code::InvalidArgument,
            tonic::Code::Unavailable,
        ];
        assert!(
            allowed_codes.iter().any(|c| *c as i32 == code),
            "error status {code}"
        );
        // Checks this small are within any message limit: an error means the body
        // was not one plain message, or it was compressed.
        if encoding != Some("gzip") && body.len() <= 8192 {
            assert!(
                decodable.is_none(),
                "one decodable message refused with {code}"
            );
        }
        return;
    }
    assert!(
        decodable.is_some(),
        "a decision for a body that is not one message"
    );
    assert_ne!(encoding, Some("gzip"), "a compressed request was read");
    let trailers = answer.trailers().expect("trailers").clone();
    assert_eq!(trailers["grpc-status"], "0");
    let bytes = answer.to_bytes();
    let message = one_message(&bytes).expect("the answer is one message");
    let response = CheckResponse::decode(message).expect("the answer decodes");
    let code = response.status.as_ref().map_or(OK, |s| s.code);
    match response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            assert_eq!(code, OK);
            let rule = ok
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == RULE_HEADER)
                .map(|h| h.value.clone())
                .expect("an allow names its rule");
            let req =
                AuthzRequest::try_from(decodable.unwrap()).expect("an allowed check converts");
            assert_allow_is_earned(&req, &rule);
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            let status = denied.status.map_or(0, |s| s.code);
            assert!(matches!(status, 400 | 401 | 403), "deny status {status}");
            assert_ne!(code, OK, "a deny with an OK status");
        }
        // hopwarden answers errors with a gRPC status, never ErrorResponse.
        other => panic!("an answer without an allow or a deny: {other:?}"),
    }
});
