//! `envoy.service.auth.v3.Authorization`, wired by hand instead of with the server
//! envoy-types generates, for two reasons:
//!
//! - That server prost-encodes every answer. An allowed decision's answer depends only
//!   on the decision (and the server's fixed options), and a cache hit shares its
//!   decision with every other hit, so the bytes are encoded once per cached decision
//!   and copied after that. Encoding and dropping the message was about 6k
//!   instructions of a ~96k-instruction cache hit.
//! - `Check` is one unary call, and tonic's general machinery for it (a streaming
//!   decoder, an encoding stream, codecs, compression checks) moved large futures
//!   around for every check. Here the request body is read whole, its one
//!   length-prefixed message decoded, and the answer sent as one data frame and the
//!   `grpc-status` trailer: gRPC's wire format for a unary call, uncompressed.
//!
//! Errors use tonic's [`Status`] and its trailers-only responses, as tonic does.

use std::convert::Infallible;
use std::pin::Pin;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame};
use tonic::body::Body;
use tonic::codegen::{http, Arc, BoxFuture, Context, Poll, Service, StdError};
use tonic::Status;
use tonic_prost::prost::bytes::{Buf, BufMut, Bytes, BytesMut};
use tonic_prost::prost::Message;

use super::check::CheckService;
use crate::listener::budget::Reservation;
use crate::listener::Bounds;

/// What the service answers with: a message, or one encoded earlier.
// Moved once per check into `respond`; boxing the message would add an allocation to
// every answer that is not pre-encoded.
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
    bounds: Arc<Bounds>,
}

impl AuthorizationService {
    /// The gRPC service answering with `checks`, reading requests within `bounds`.
    pub fn new(checks: CheckService, bounds: Bounds) -> Self {
        AuthorizationService {
            checks: Arc::new(checks),
            bounds: Arc::new(bounds),
        }
    }
}

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// A gRPC message's prefix: a compressed flag and a big-endian length.
const PREFIX: usize = 5;

impl<B> Service<http::Request<B>> for AuthorizationService
where
    B: HttpBody + Send + 'static,
    B::Data: Send,
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
        let checks = self.checks.clone();
        let bounds = self.bounds.clone();
        Box::pin(async move {
            let answer = match read_check(req, &bounds).await {
                Ok(check) => checks.check(check).await,
                Err(status) => Err(status),
            };
            Ok(match answer {
                Ok(answer) => respond(answer),
                Err(status) => status.into_http(),
            })
        })
    }
}

/// The one message of a unary request, read within `bounds`: at most
/// `max_request_bytes`, taken from the request budget, in at most `body_timeout`.
async fn read_check<B>(req: http::Request<B>, bounds: &Bounds) -> Result<CheckRequest, Status>
where
    B: HttpBody,
    B::Error: Into<StdError>,
{
    if let Some(encoding) = req.headers().get("grpc-encoding") {
        if encoding != "identity" {
            // gRPC's answer to an encoding the server does not support: UNIMPLEMENTED,
            // with the encodings it does accept.
            let mut accepted = tonic::metadata::MetadataMap::new();
            accepted.insert(
                "grpc-accept-encoding",
                tonic::metadata::MetadataValue::from_static("identity"),
            );
            return Err(Status::with_metadata(
                tonic::Code::Unimplemented,
                format!(
                    "content is compressed with `{}` which is not supported",
                    encoding.to_str().unwrap_or("?")
                ),
                accepted,
            ));
        }
    }
    let max = bounds.max_request_bytes;
    let mut body = std::pin::pin!(req.into_body());
    let mut buf = BytesMut::new();
    // Bytes this request holds (its buffer's size, or the size its prefix declares),
    // taken from the process-wide budget before they are allocated.
    let mut held: Option<Reservation> = None;
    let mut deadline = None;
    loop {
        // Envoy sends a check's headers and body together: the body is usually there
        // already, and then no timer is set.
        let frame = match poll_once(body.as_mut()).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                let at = *deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + bounds.body_timeout);
                match tokio::time::timeout_at(at, body.frame()).await {
                    Ok(frame) => frame,
                    Err(_) => {
                        return Err(Status::deadline_exceeded(
                            "the check request did not arrive in time",
                        ))
                    }
                }
            }
        };
        let Some(frame) = frame else { break };
        let frame =
            frame.map_err(|e| Status::internal(format!("reading the request: {}", e.into())))?;
        let Ok(data) = frame.into_data() else {
            continue; // request trailers carry nothing we read
        };
        let had_prefix = buf.len() >= PREFIX;
        if buf.len() + data.remaining() > PREFIX + max {
            return Err(too_large(max));
        }
        take(&mut held, buf.len() + data.remaining(), bounds)?;
        buf.put(data);
        // Once the prefix is in, its length decides: refuse early, or make room once.
        if let (false, Some(((_, declared), _))) = (had_prefix, split_prefix(&buf)) {
            if declared > max {
                return Err(too_large(max));
            }
            take(&mut held, PREFIX + declared, bounds)?;
            buf.reserve((PREFIX + declared).saturating_sub(buf.len()));
        }
    }
    let Some(((compressed, declared), message)) = split_prefix(&buf) else {
        return Err(Status::internal("the request carries no message"));
    };
    if compressed {
        return Err(Status::internal(
            "a compressed message without a grpc-encoding",
        ));
    }
    if declared != message.len() {
        return Err(Status::internal(
            "the request body is not exactly one message",
        ));
    }
    CheckRequest::decode(message)
        .map_err(|e| Status::internal(format!("decoding the check request: {e}")))
}

/// The body's next frame if it is there now, without waiting.
async fn poll_once<B: HttpBody>(
    mut body: Pin<&mut B>,
) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
    std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await
}

/// Grows what the request holds of the budget to `need` bytes, or refuses it.
fn take(held: &mut Option<Reservation>, need: usize, bounds: &Bounds) -> Result<(), Status> {
    let more = need.saturating_sub(held.as_ref().map_or(0, Reservation::bytes));
    let taken = match held {
        Some(reservation) => reservation.grow(more),
        None => bounds
            .budget
            .reserve(more)
            .map(|r| *held = Some(r))
            .is_some(),
    };
    if taken {
        Ok(())
    } else {
        // A deny, not a fault of the check: Envoy's failure mode decides, and with
        // failure_mode_allow off the request is refused.
        Err(Status::resource_exhausted("too many check bytes in flight"))
    }
}

/// A gRPC message's prefix (compressed flag, declared length) and what follows it.
fn split_prefix(buf: &[u8]) -> Option<((bool, usize), &[u8])> {
    let ([compressed, len @ ..], rest) = buf.split_first_chunk::<PREFIX>()?;
    Some(((*compressed != 0, u32::from_be_bytes(*len) as usize), rest))
}

fn too_large(max: usize) -> Status {
    Status::resource_exhausted(format!("check request larger than {max} bytes"))
}

/// A `200` with the answer as the one message and `grpc-status: 0` after it.
fn respond(answer: Answer) -> http::Response<Body> {
    let len = match &answer {
        Answer::Message(m) => m.encoded_len(),
        Answer::Encoded(bytes) => bytes.len(),
    };
    let mut data = BytesMut::with_capacity(PREFIX + len);
    data.put_u8(0);
    // An answer is a few hundred bytes; u32 cannot overflow.
    data.put_u32(len as u32);
    match answer {
        // The buffer has room for the whole message: prost's only error cannot happen.
        Answer::Message(m) => m.encode_raw(&mut data),
        Answer::Encoded(bytes) => data.put_slice(&bytes),
    }
    let mut response = http::Response::new(Body::new(UnaryBody {
        message: Some(data.freeze()),
        done: false,
    }));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// One message, then the trailers of a successful call.
struct UnaryBody {
    message: Option<Bytes>,
    done: bool,
}

impl HttpBody for UnaryBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        self.done = true;
        let mut trailers = http::HeaderMap::with_capacity(1);
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    // No exact size hint: hyper would turn it into a `content-length` header, one more
    // for Envoy to parse per answer (tonic's answers carry none).
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    fn framed(compressed: u8, message: &[u8]) -> Vec<u8> {
        let mut v = vec![compressed];
        v.extend_from_slice(&(message.len() as u32).to_be_bytes());
        v.extend_from_slice(message);
        v
    }

    fn request(body: Vec<u8>) -> http::Request<Full<Bytes>> {
        http::Request::new(Full::new(Bytes::from(body)))
    }

    fn check() -> CheckRequest {
        use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
        CheckRequest {
            attributes: Some(AttributeContext {
                context_extensions: [("service".into(), "ledger".into())].into(),
                ..Default::default()
            }),
        }
    }

    async fn read(req: http::Request<Full<Bytes>>) -> Result<CheckRequest, tonic::Code> {
        read_check(req, &Bounds::default())
            .await
            .map_err(|s| s.code())
    }

    #[tokio::test]
    async fn one_message_is_decoded() {
        let body = framed(0, &check().encode_to_vec());
        assert_eq!(read(request(body)).await, Ok(check()));
    }

    #[tokio::test]
    async fn anything_but_exactly_one_uncompressed_message_is_an_error() {
        let message = check().encode_to_vec();
        let mut two = framed(0, &message);
        two.extend(framed(0, &message));
        let mut short = framed(0, &message);
        short.pop();
        for (body, why) in [
            (vec![], "no message"),
            (vec![0, 0, 0], "a cut prefix"),
            (two, "two messages"),
            (short, "a cut message"),
            (framed(1, &message), "the compressed flag"),
            (framed(0, b"\xff\xff\xff"), "not protobuf"),
        ] {
            assert_eq!(
                read(request(body)).await,
                Err(tonic::Code::Internal),
                "{why}"
            );
        }
        let mut gzip = request(framed(0, &message));
        gzip.headers_mut()
            .insert("grpc-encoding", http::HeaderValue::from_static("gzip"));
        let refused = read_check(gzip, &Bounds::default()).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unimplemented);
        let answer = refused.into_http::<Body>();
        assert_eq!(answer.headers()["grpc-accept-encoding"], "identity");
        let mut identity = request(framed(0, &message));
        identity
            .headers_mut()
            .insert("grpc-encoding", http::HeaderValue::from_static("identity"));
        assert_eq!(read(identity).await, Ok(check()));
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_refused_before_it_is_read_whole() {
        let max = Bounds::default().max_request_bytes;
        let body = framed(0, &vec![0u8; max + 1]);
        assert_eq!(
            read(request(body)).await,
            Err(tonic::Code::ResourceExhausted)
        );
    }

    #[tokio::test]
    async fn a_message_past_the_budget_is_refused_and_its_bytes_given_back() {
        let bounds = Bounds {
            budget: crate::listener::budget::Budget::new(65_536),
            ..Bounds::default()
        };
        let held = bounds.budget.reserve(65_536 - 8).unwrap();
        let body = framed(0, &check().encode_to_vec());
        let refused = read_check(request(body.clone()), &bounds).await;
        assert_eq!(
            refused.map_err(|s| s.code()),
            Err(tonic::Code::ResourceExhausted)
        );
        drop(held);
        assert_eq!(bounds.budget.used(), 0);
        assert_eq!(read_check(request(body), &bounds).await.ok(), Some(check()));
        assert_eq!(bounds.budget.used(), 0);
    }

    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_time_is_refused() {
        // Headers, then a body that never comes: as a peer sending nothing more.
        struct Silent;
        impl HttpBody for Silent {
            type Data = Bytes;
            type Error = Infallible;
            fn poll_frame(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
                Poll::Pending
            }
        }
        let bounds = Bounds {
            body_timeout: std::time::Duration::from_millis(100),
            ..Bounds::default()
        };
        let started = std::time::Instant::now();
        let refused = read_check(http::Request::new(Silent), &bounds).await;
        assert_eq!(
            refused.map_err(|s| s.code()),
            Err(tonic::Code::DeadlineExceeded)
        );
        let took = started.elapsed();
        assert!(
            took >= bounds.body_timeout && took < 10 * bounds.body_timeout,
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn the_answer_is_one_message_then_grpc_status_0() {
        let response = respond(Answer::Message(CheckResponse::default()));
        assert_eq!(response.headers()["content-type"], "application/grpc");
        // hyper adds a content-length for an exact size hint; answers need none.
        assert_eq!(response.body().size_hint().exact(), None);
        let body = response.into_body().collect().await.unwrap();
        assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
        let bytes = body.to_bytes();
        assert_eq!(
            &bytes[..],
            &framed(0, &CheckResponse::default().encode_to_vec())[..]
        );
        let encoded: Arc<[u8]> = check().encode_to_vec().into();
        let response = respond(Answer::Encoded(encoded.clone()));
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], &framed(0, &encoded)[..]);
    }
}
