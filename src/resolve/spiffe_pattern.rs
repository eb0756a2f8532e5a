//! `services.by_spiffe_pattern`: a destination SPIFFE ID -> a service name, without
//! listing every workload.
//!
//! A pattern is a SPIFFE ID whose path segments may each be one placeholder:
//! `spiffe://cluster.local/ns/{namespace}/sa/{service}`. `{service}` is required and
//! names the service; `{namespace}` is optional and matches any one segment. The
//! trust domain is always literal. Whole segments only, so a pattern is matched by
//! comparing segments (no regex, nothing compiled per check) and a match can never
//! depend on how a placeholder's value is split.

use std::fmt;

use crate::principal::SpiffeId;

/// A compiled `by_spiffe_pattern` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffePattern {
    raw: String,
    trust_domain: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Service,
    Namespace,
}

/// Why a `by_spiffe_pattern` entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// With the placeholders taken as plain words, it is not a SPIFFE ID.
    #[error("pattern {0:?} is not a SPIFFE ID with placeholders")]
    NotSpiffe(String),
    /// A `{...}` other than `{service}` and `{namespace}`.
    #[error("pattern {pattern:?}: unknown placeholder {placeholder:?} (use {{service}} or {{namespace}})")]
    UnknownPlaceholder {
        /// The pattern.
        pattern: String,
        /// The placeholder as written.
        placeholder: String,
    },
    /// A placeholder sharing a segment with other text, or a brace in the trust domain.
    #[error("pattern {0:?}: a placeholder must be a whole path segment")]
    PartialSegment(String),
    /// No `{service}`.
    #[error("pattern {0:?} has no {{service}} placeholder")]
    NoService(String),
    /// The same placeholder twice.
    #[error("pattern {pattern:?} repeats {placeholder}")]
    Repeated {
        /// The pattern.
        pattern: String,
        /// The repeated placeholder.
        placeholder: &'static str,
    },
}

impl SpiffePattern {
    /// Compiles a pattern; every mistake is an error naming the pattern.
    pub fn parse(raw: &str) -> Result<SpiffePattern, PatternError> {
        let not_spiffe = || PatternError::NotSpiffe(raw.to_string());
        let rest = raw.strip_prefix("spiffe://").ok_or_else(not_spiffe)?;
        let (trust_domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if trust_domain.contains(['{', '}']) {
            return Err(PatternError::PartialSegment(raw.to_string()));
        }
        let mut segments = Vec::new();
        // Placeholders stand in for a plain segment in `probe`, which must be a valid
        // SPIFFE ID: so the pattern only ever accepts IDs that are valid themselves.
        let mut probe = format!("spiffe://{trust_domain}");
        for segment in path.split('/').skip(1) {
            let parsed = match segment {
                "{service}" => Segment::Service,
                "{namespace}" => Segment::Namespace,
                s if s.contains(['{', '}']) => return Err(placeholder_error(raw, s)),
                s => Segment::Literal(s.to_string()),
            };
            for (one, name) in [
                (Segment::Service, "{service}"),
                (Segment::Namespace, "{namespace}"),
            ] {
                if parsed == one && segments.contains(&one) {
                    return Err(PatternError::Repeated {
                        pattern: raw.to_string(),
                        placeholder: name,
                    });
                }
            }
            probe.push('/');
            probe.push_str(match &parsed {
                Segment::Literal(l) => l,
                Segment::Service | Segment::Namespace => "x",
            });
            segments.push(parsed);
        }
        probe.parse::<SpiffeId>().map_err(|_| not_spiffe())?;
        if !segments.contains(&Segment::Service) {
            return Err(PatternError::NoService(raw.to_string()));
        }
        Ok(SpiffePattern {
            raw: raw.to_string(),
            trust_domain: trust_domain.to_string(),
            segments,
        })
    }

    /// The service named by a SPIFFE ID's `trust_domain` and `path` (as
    /// [`SpiffeId::split`] gives them, borrowed from the path), if it matches: same
    /// trust domain, same number of segments, equal literals. The ID was checked by
    /// `split`, so the service is a non-empty segment of allowed characters.
    pub fn service<'a>(&self, trust_domain: &str, path: &'a str) -> Option<&'a str> {
        if trust_domain != self.trust_domain {
            return None;
        }
        let mut parts = path.strip_prefix('/')?.split('/');
        let mut service = None;
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(l) if l != part => return None,
                Segment::Service => service = Some(part),
                _ => {}
            }
        }
        if parts.next().is_some() {
            return None;
        }
        service
    }
}

impl fmt::Display for SpiffePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// The error for a segment holding a brace: an unknown `{name}`, or a placeholder
/// with other text around it.
fn placeholder_error(raw: &str, segment: &str) -> PatternError {
    let whole = segment.starts_with('{') && segment.ends_with('}');
    let inner = &segment[usize::from(whole)..segment.len() - usize::from(whole)];
    if whole && !inner.contains(['{', '}']) {
        PatternError::UnknownPlaceholder {
            pattern: raw.to_string(),
            placeholder: segment.to_string(),
        }
    } else {
        PatternError::PartialSegment(raw.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISTIO: &str = "spiffe://cluster.local/ns/{namespace}/sa/{service}";

    #[test]
    fn matches() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            (
                ISTIO,
                "spiffe://cluster.local/ns/ledger/sa/ledger",
                Some("ledger"),
            ),
            (
                ISTIO,
                "spiffe://cluster.local/ns/pay/sa/payments",
                Some("payments"),
            ),
            (ISTIO, "spiffe://other.local/ns/pay/sa/payments", None),
            (ISTIO, "spiffe://cluster.local/ns/pay/sa/payments/x", None),
            (ISTIO, "spiffe://cluster.local/ns/pay/sa", None),
            (ISTIO, "spiffe://cluster.local/ns/pay/sx/payments", None),
            (ISTIO, "spiffe://cluster.local", None),
            (
                "spiffe://td/ns/ledger/sa/{service}",
                "spiffe://td/ns/ledger/sa/api",
                Some("api"),
            ),
            (
                "spiffe://td/ns/ledger/sa/{service}",
                "spiffe://td/ns/other/sa/api",
                None,
            ),
            (
                "spiffe://td/{service}",
                "spiffe://td/billing",
                Some("billing"),
            ),
            (
                "spiffe://td/{service}/{namespace}",
                "spiffe://td/billing/prod",
                Some("billing"),
            ),
        ];
        for (pattern, id, want) in cases {
            let p = SpiffePattern::parse(pattern).unwrap();
            let id: SpiffeId = id.parse().unwrap();
            assert_eq!(
                p.service(id.trust_domain(), id.path()),
                *want,
                "{pattern} ~ {id}"
            );
        }
    }

    #[test]
    fn refused() {
        let cases: &[(&str, &str)] = &[
            ("spiffe://cluster.local/ns/{namespace}/sa/x", "no {service}"),
            (
                "spiffe://cluster.local/ns/{ns}/sa/{service}",
                "unknown placeholder \"{ns}\"",
            ),
            ("spiffe://cluster.local/sa/{Service}", "unknown placeholder"),
            (
                "spiffe://cluster.local/sa/{service}-sa",
                "whole path segment",
            ),
            ("spiffe://cluster.local/sa/x{service}", "whole path segment"),
            // An opening brace alone is not a placeholder of another name.
            ("spiffe://cluster.local/sa/{service", "whole path segment"),
            ("spiffe://cluster.local/sa/service}", "whole path segment"),
            (
                "spiffe://cluster.local/sa/{{service}}",
                "whole path segment",
            ),
            ("spiffe://{service}/sa/x", "whole path segment"),
            (
                "spiffe://cluster.local/{service}/{service}",
                "repeats {service}",
            ),
            (
                "spiffe://td/{namespace}/{namespace}/{service}",
                "repeats {namespace}",
            ),
            ("http://cluster.local/{service}", "not a SPIFFE ID"),
            ("spiffe://cluster.local//{service}", "not a SPIFFE ID"),
            ("spiffe://cluster.local/../{service}", "not a SPIFFE ID"),
            ("", "not a SPIFFE ID"),
        ];
        // Errors and explanations show a pattern as written.
        assert_eq!(SpiffePattern::parse(ISTIO).unwrap().to_string(), ISTIO);
        for (pattern, want) in cases {
            let err = SpiffePattern::parse(pattern)
                .expect_err(pattern)
                .to_string();
            assert!(err.contains(want), "{pattern}: {err}");
        }
    }
}
