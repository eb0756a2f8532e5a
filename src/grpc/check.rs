//! The `envoy.service.auth.v3.Authorization` gRPC service.

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, CheckResponse};
use tonic::{Request, Response, Status};

use super::convert::{to_check_response, ResponseOptions};
use crate::decision::DenyReason;
use crate::engine::{Engine, EngineError, Outcome};
use crate::request::AuthzRequest;

/// Answers Envoy's checks with the engine.
pub struct CheckService {
    engine: Arc<Engine>,
    options: ResponseOptions,
}

impl CheckService {
    /// A service over an engine.
    pub fn new(engine: Arc<Engine>, options: ResponseOptions) -> Self {
        CheckService { engine, options }
    }
}

#[tonic::async_trait]
impl Authorization for CheckService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let check = request.into_inner();
        let req = match AuthzRequest::try_from(check) {
            Ok(req) => req,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable check request; denying");
                let outcome = Outcome::denied(DenyReason::BadRequest);
                return Ok(Response::new(to_check_response(
                    &outcome,
                    &AuthzRequest::default(),
                    self.options,
                )));
            }
        };
        match self.engine.check(&req).await {
            Ok(outcome) => Ok(Response::new(to_check_response(
                &outcome,
                &req,
                self.options,
            ))),
            Err(e) => Err(to_status(&e)),
        }
    }
}

/// Server faults become UNAVAILABLE so Envoy's `failure_mode_allow` (false in our
/// configs: deny) decides; never UNKNOWN, which Envoy treats the same but hides why.
fn to_status(e: &EngineError) -> Status {
    match e {
        EngineError::Unavailable(msg) => Status::unavailable(msg.clone()),
    }
}
