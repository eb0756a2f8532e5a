//! Read-only views of compiled rules, for tools that describe policies
//! (`hopwarden explain`, `hopwarden review`). Evaluation does not use them.

use super::compile::delegated::{ActingFor, Delegated};
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

impl Callers {
    /// The conditions of `from` beyond principals, peers, kinds and issuers, as an
    /// opaque fingerprint: empty when there are none. Tools that compare rules
    /// (`hopwarden diff`) cannot reason about a field they do not know, so they treat
    /// two different fingerprints as two different sets of callers.
    // `..default()` is for fields added later: they keep their default. `deny_like`:
    // the rule is a deny rule, whose default delegation differs from an allow rule's.
    #[allow(clippy::needless_update)]
    pub fn other_conditions(&self, deny_like: bool) -> String {
        // What a rule says about delegation when it says nothing: deny rules and
        // limits match any party of a delegated token, allow rules direct callers only.
        let role_default = if deny_like {
            Delegated::AnyParty
        } else {
            Delegated::Direct
        };
        let mut out = Vec::new();
        if format!("{:?}", self.delegated) != format!("{role_default:?}") {
            out.push(match &self.delegated {
                Delegated::Direct => "direct callers only".to_string(),
                Delegated::AnyParty => "any party of a delegated token".to_string(),
                Delegated::ActingFor(a) => acting_for(a),
            });
        }
        let known = Callers {
            principals: self.principals.clone(),
            peers: self.peers.clone(),
            kinds: self.kinds.clone(),
            issuers: self.issuers.clone(),
            delegated: self.delegated.clone(),
            ..Callers::default()
        };
        let (all, known) = (format!("{self:?}"), format!("{known:?}"));
        if all != known {
            out.push(all);
        }
        out.join(", ")
    }
}

impl When {
    /// The conditions of `when` beyond hop, headers and claims, as an opaque
    /// fingerprint: empty when there are none (see [`Callers::other_conditions`]).
    #[allow(clippy::needless_update)]
    pub fn other_conditions(&self) -> String {
        let known = When {
            hop: self.hop,
            headers: self.headers.clone(),
            claims: self.claims.clone(),
            ..When::default()
        };
        let (all, known) = (format!("{self:?}"), format!("{known:?}"));
        if all == known {
            String::new()
        } else {
            all
        }
    }
}

/// `acting_for` in words, for reports: "acting for principals a, b; kinds user".
fn acting_for(a: &ActingFor) -> String {
    let mut parts = Vec::new();
    if let Some(p) = &a.principals {
        let ids: Vec<&str> = p.iter().map(IdPattern::as_str).collect();
        parts.push(format!("principals {}", ids.join(", ")));
    }
    if let Some(k) = &a.kinds {
        let kinds: Vec<&str> = k.iter().map(|k| k.as_str()).collect();
        parts.push(format!("kinds {}", kinds.join(", ")));
    }
    if let Some(d) = a.max_depth {
        parts.push(format!("max depth {d}"));
    }
    if parts.is_empty() {
        "acting for anyone".to_string()
    } else {
        format!("acting for {}", parts.join("; "))
    }
}
