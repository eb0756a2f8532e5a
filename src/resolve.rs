//! Which service a check is for, and at which hop.
//!
//! The service, in order:
//! 1. `context_extensions["service"]` (set per route or listener by whoever wrote
//!    Envoy's config: the most explicit);
//! 2. the destination workload's SPIFFE ID (`attributes.destination.principal`, the
//!    local certificate's URI SAN: the workload the sidecar delivers to), through
//!    `services.by_spiffe`, then `services.by_spiffe_pattern`;
//! 3. the `:authority` through `services.by_host`, but only at a gateway (the
//!    destination is a `services.gateways` identity, or `context_extensions["hop"]`
//!    says `gateway`) or when the check names no destination workload.
//!
//! The host is a header the caller writes. A sidecar delivers every request to its
//! own workload whatever the host says, so when a check names a destination workload
//! that is not a gateway and no mapping knows it, the answer is a denial: letting the
//! host choose would let a caller be judged by another service's policy.
//!
//! The hop: `context_extensions["hop"]` if set; else `gateway` when the destination
//! is a gateway identity; else `mesh`.

mod host;
mod spiffe_pattern;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

pub use host::{HostClash, HostMiss, HostTable};
pub use spiffe_pattern::{PatternError, SpiffePattern};

use crate::config::ServicesSpec;
use crate::principal::SpiffeId;
use crate::request::{AuthzRequest, Hop, RequestError};

/// The compiled `services` section.
#[derive(Debug, Clone, Default)]
pub struct ServiceResolver {
    by_spiffe: HashMap<String, String>,
    patterns: Vec<SpiffePattern>,
    gateways: HashSet<String>,
    by_host: HostTable,
}

/// Where the service came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `context_extensions["service"]`.
    ContextExtensions,
    /// `services.by_spiffe`.
    BySpiffe,
    /// `services.by_spiffe_pattern`.
    Pattern,
    /// `services.by_host`.
    Host,
}

impl Source {
    /// How `explain` and logs say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::ContextExtensions => "context_extensions",
            Source::BySpiffe => "services.by_spiffe",
            Source::Pattern => "services.by_spiffe_pattern",
            Source::Host => "services.by_host",
        }
    }
}

/// Why no service was found; each is a denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.detail())]
pub enum Unresolved {
    /// The destination workload is not a gateway and no mapping names it.
    UnmappedDestination,
    /// Several `by_spiffe_pattern` entries match with different services.
    AmbiguousDestination,
    /// The host is in no `by_host` key.
    UnknownHost,
    /// The host matches `by_host` keys naming different services.
    AmbiguousHost,
}

impl Unresolved {
    /// The decision log's `detail` for the denial.
    pub fn detail(self) -> &'static str {
        match self {
            Unresolved::UnmappedDestination => "destination workload not in services.by_spiffe or by_spiffe_pattern (the host never chooses the service of a named workload)",
            Unresolved::AmbiguousDestination => "destination workload matches services.by_spiffe_pattern entries naming different services",
            Unresolved::UnknownHost => "no service named: no context_extensions service, and the host is not in services.by_host",
            Unresolved::AmbiguousHost => "host matches services.by_host keys naming different services",
        }
    }
}

/// A `services` section that cannot be compiled; `value` is what to point at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ServicesError {
    /// The offending value as written in the file.
    pub value: String,
    /// What is wrong, naming the value.
    pub message: String,
}

impl ServiceResolver {
    /// Compiles the config's `services` section; patterns are parsed here, once.
    pub fn new(spec: &ServicesSpec) -> Result<Self, Vec<ServicesError>> {
        let mut errors = Vec::new();
        let error = |value: &str, message: String| ServicesError {
            value: value.to_string(),
            message,
        };
        let mut by_spiffe = HashMap::new();
        for (id, service) in &spec.by_spiffe {
            if id.parse::<SpiffeId>().is_err() {
                errors.push(error(
                    id,
                    format!("services.by_spiffe: {id:?} is not a SPIFFE ID"),
                ));
            } else if service.is_empty() {
                errors.push(error(
                    id,
                    format!("services.by_spiffe: empty service for {id:?}"),
                ));
            }
            by_spiffe.insert(id.clone(), service.clone());
        }
        let mut patterns = Vec::new();
        for raw in spec.by_spiffe_pattern.iter() {
            match SpiffePattern::parse(raw) {
                Ok(p) => patterns.push(p),
                Err(e) => errors.push(error(raw, format!("services.by_spiffe_pattern: {e}"))),
            }
        }
        for id in &spec.gateways {
            // Envoy names the local certificate's first URI SAN, else its first DNS SAN,
            // else its subject: a gateway terminating public TLS is known by its DNS SAN.
            if id.is_empty() {
                errors.push(error(
                    "gateways",
                    "services.gateways: an entry is empty".into(),
                ));
            } else if id.starts_with("spiffe:") && id.parse::<SpiffeId>().is_err() {
                errors.push(error(
                    id,
                    format!("services.gateways: {id:?} is not a SPIFFE ID"),
                ));
            }
            if spec.by_spiffe.contains_key(id) {
                errors.push(error(
                    id,
                    format!("services.gateways: {id:?} is also in services.by_spiffe; a gateway's service comes from the host"),
                ));
            }
        }
        for (host, service) in &spec.by_host {
            if service.is_empty() {
                errors.push(error(
                    host,
                    format!("services.by_host: empty service for {host:?}"),
                ));
            }
        }
        let by_host = HostTable::new(&spec.by_host).unwrap_or_else(|clashes| {
            for c in clashes {
                errors.push(error(&c.second, c.to_string()));
            }
            HostTable::default()
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ServiceResolver {
            by_spiffe,
            patterns,
            gateways: spec.gateways.iter().cloned().collect(),
            by_host,
        })
    }

    /// The hop: `context_extensions["hop"]` if set, else `gateway` at a gateway
    /// identity, else `mesh`.
    pub fn hop(&self, req: &AuthzRequest) -> Result<Hop, RequestError> {
        match req.hop.as_deref() {
            None | Some("") if self.is_gateway(req) => Ok(Hop::Gateway),
            _ => req.hop(),
        }
    }

    /// The service name and where it came from; `hop` is [`Self::hop`]'s answer.
    pub fn resolve<'a>(
        &'a self,
        req: &'a AuthzRequest,
        hop: Hop,
    ) -> Result<(Cow<'a, str>, Source), Unresolved> {
        if let Some(s) = req.service.as_deref().filter(|s| !s.is_empty()) {
            return Ok((s.into(), Source::ContextExtensions));
        }
        match req.destination_principal.as_deref() {
            Some(dest) if !self.gateways.contains(dest) => {
                if let Some(s) = self.by_spiffe.get(dest) {
                    return Ok((s.into(), Source::BySpiffe));
                }
                match self.by_pattern(dest)? {
                    Some(s) => return Ok((s.into(), Source::Pattern)),
                    // A gateway the operator declared (`context_extensions["hop"]`,
                    // a hand-written Envoy config) routes by host; a named workload
                    // in the mesh never does.
                    None if hop == Hop::Gateway => {}
                    None => return Err(Unresolved::UnmappedDestination),
                }
            }
            _ => {}
        }
        match self.by_host.service(&req.host) {
            Ok(s) => Ok((s.into(), Source::Host)),
            Err(HostMiss::Unknown) => Err(Unresolved::UnknownHost),
            Err(HostMiss::Ambiguous) => Err(Unresolved::AmbiguousHost),
        }
    }

    fn is_gateway(&self, req: &AuthzRequest) -> bool {
        req.destination_principal
            .as_deref()
            .is_some_and(|d| self.gateways.contains(d))
    }

    /// The service the patterns give `dest`; patterns that disagree deny.
    /// Borrowed from `dest`: this runs on every check that names a destination.
    fn by_pattern<'a>(&self, dest: &'a str) -> Result<Option<&'a str>, Unresolved> {
        if self.patterns.is_empty() {
            return Ok(None);
        }
        let Ok((trust_domain, path)) = SpiffeId::split(dest) else {
            return Ok(None);
        };
        let mut found: Option<&str> = None;
        for p in &self.patterns {
            match (found, p.service(trust_domain, path)) {
                (Some(a), Some(b)) if a != b => return Err(Unresolved::AmbiguousDestination),
                (None, Some(b)) => found = Some(b),
                _ => {}
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests;
