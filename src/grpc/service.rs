//! `envoy.service.auth.v3.Authorization`, wired by hand instead of with the server
//! envoy-types generates, for one reason: that server prost-encodes every answer. An
//! allowed decision's answer depends only on the decision (and the server's fixed
//! options), and a cache hit shares its decision with every other hit, so the bytes
//! are encoded once per cached decision and copied after that. Encoding and dropping
//! the message was about 6k instructions of a ~96k-instruction cache hit.
//!
//! Requests are still decoded into envoy-types' `CheckRequest` by tonic-prost; the
//! routing below is what the generated server does, minus its boxing through
//! `async_trait`.

use std::convert::Infallible;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse};
use tonic::body::Body;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::{http, Arc, BoxFuture, Context, Poll, Service, StdError};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::prost::bytes::BufMut;
use tonic_prost::prost::Message;
use tonic_prost::ProstDecoder;

use super::check::CheckService;

/// What the service answers with: a message, or one encoded earlier.
// Moved once per check into tonic's encoder; boxing the message would add an
// allocation to every answer that is not pre-encoded.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Answer {
    /// Encoded as it is sent.
    Message(CheckResponse),
    /// A `CheckResponse` in protobuf's wire format.
    Encoded(Arc<[u8]>),
}

#[cfg(test)]
impl Answer {
    /// The answer as a message, decoding encoded bytes.
    pub fn into_message(self) -> Result<CheckResponse, tonic_prost::prost::DecodeError> {
        match self {
            Answer::Message(m) => Ok(m),
            Answer::Encoded(bytes) => CheckResponse::decode(&*bytes),
        }
    }
}

/// The Authorization service over a [`CheckService`].
#[derive(Clone)]
pub struct AuthorizationService {
    checks: Arc<CheckService>,
}

impl AuthorizationService {
    /// The gRPC service answering with `checks`.
    pub fn new(checks: CheckService) -> Self {
        AuthorizationService {
            checks: Arc::new(checks),
        }
    }
}

impl NamedService for AuthorizationService {
    const NAME: &'static str = super::AUTHZ_SERVICE;
}

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

impl<B> Service<http::Request<B>> for AuthorizationService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != CHECK_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let unary = Unary(self.checks.clone());
        Box::pin(async move { Ok(Grpc::new(AnswerCodec).unary(unary, req).await) })
    }
}

/// One `Check` call.
struct Unary(Arc<CheckService>);

impl UnaryService<CheckRequest> for Unary {
    type Response = Answer;
    type Future = BoxFuture<Response<Answer>, Status>;

    fn call(&mut self, request: Request<CheckRequest>) -> Self::Future {
        let checks = self.0.clone();
        Box::pin(async move { checks.check(request.into_inner()).await.map(Response::new) })
    }
}

/// Decodes requests with tonic-prost; encodes [`Answer`]s.
struct AnswerCodec;

impl Codec for AnswerCodec {
    type Encode = Answer;
    type Decode = CheckRequest;
    type Encoder = AnswerEncoder;
    type Decoder = ProstDecoder<CheckRequest>;

    fn encoder(&mut self) -> AnswerEncoder {
        AnswerEncoder
    }

    fn decoder(&mut self) -> ProstDecoder<CheckRequest> {
        ProstDecoder::default()
    }
}

struct AnswerEncoder;

impl Encoder for AnswerEncoder {
    type Item = Answer;
    type Error = Status;

    fn encode(&mut self, item: Answer, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            // The buffer grows as needed: prost's only error (too little room) cannot happen.
            Answer::Message(m) => m
                .encode(dst)
                .map_err(|e| Status::internal(format!("encoding the answer: {e}"))),
            Answer::Encoded(bytes) => {
                dst.put_slice(&bytes);
                Ok(())
            }
        }
    }
}
