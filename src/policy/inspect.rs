//! Read-only views of compiled rules, for tools that describe policies
//! (`hopwarden explain`, `hopwarden review`). Evaluation does not use them.

use super::compile::{ActionClause, Callers, When};
use super::matcher::{GrpcPattern, IdPattern, PathPattern};
use crate::principal::PrincipalKind;
use crate::request::Hop;

impl Callers {
    /// `from.principals`, if named.
    pub fn principals(&self) -> Option<&[IdPattern]> {
        self.principals.as_deref()
    }

    /// `from.peers`, if named.
    pub fn peers(&self) -> Option<&[IdPattern]> {
        self.peers.as_deref()
    }

    /// `from.kinds`, if named.
    pub fn kinds(&self) -> Option<&[PrincipalKind]> {
        self.kinds.as_deref()
    }

    /// `from.issuers`, if named.
    pub fn issuers(&self) -> Option<&[String]> {
        self.issuers.as_deref()
    }

    /// `from.credentials`, if named.
    pub fn credentials(&self) -> Option<&[crate::principal::CredentialType]> {
        self.credentials.as_deref()
    }
}

impl ActionClause {
    /// Uppercase methods, if named (deny rules naming GET also hold HEAD).
    pub fn methods(&self) -> Option<&[String]> {
        self.methods.as_deref()
    }

    /// Path patterns (empty: not named).
    pub fn paths(&self) -> &[PathPattern] {
        &self.paths
    }

    /// gRPC method patterns (empty: not named).
    pub fn grpc(&self) -> &[GrpcPattern] {
        &self.grpc
    }
}

impl When {
    /// The required hop, if any.
    pub fn hop(&self) -> Option<Hop> {
        self.hop
    }

    /// Lowercase header name -> accepted values.
    pub fn headers(&self) -> &[(String, Vec<String>)] {
        &self.headers
    }

    /// Claim name -> accepted values.
    pub fn claims(&self) -> &[(String, Vec<String>)] {
        &self.claims
    }
}
