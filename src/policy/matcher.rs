//! Precompiled patterns: request paths, gRPC methods and principal / SPIFFE globs.
//!
//! Everything is parsed and validated at load time; `matches` only compares
//! slices, so the request path never parses a pattern and never allocates.

use std::fmt;
use std::sync::Arc;

use crate::principal::SpiffeId;

/// A pattern that cannot be compiled, naming the pattern and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// `path`, `grpc`, `principal` or `peer`.
    pub kind: &'static str,
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
}

fn error(kind: &'static str, pattern: &str, reason: impl Into<String>) -> PatternError {
    PatternError {
        kind,
        pattern: pattern.to_string(),
        reason: reason.into(),
    }
}

/// One segment of a [`PathPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Matches exactly this text (case-sensitive, like most upstream routers).
    Literal(Box<str>),
    /// `*` or `{name}`: exactly one non-empty segment.
    One,
    /// `**` (last only): zero or more remaining segments.
    Rest,
}

/// A path pattern such as `/transactions/{id}/status` or `/refunds/**`.
///
/// Matched against the canonical path (see [`crate::request::canonical_path`]),
/// so the pattern refuses anything a canonical path cannot contain: it would
/// never match, and a deny rule that never matches is a silent hole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    raw: Box<str>,
    segments: Box<[Segment]>,
    ignore_case: bool,
}

impl PathPattern {
    /// Compiles `raw`.
    pub fn parse(raw: &str) -> Result<Self, PatternError> {
        let fail = |reason: &str| Err(error("path", raw, reason));
        if raw.is_empty() {
            return fail("is empty");
        }
        if !raw.starts_with('/') {
            return fail("must start with '/'");
        }
        if let Some(c) = raw.chars().find(|c| {
            matches!(c, '?' | '#' | '%' | '\\' | ';') || c.is_whitespace() || c.is_control()
        }) {
            // `?`/`#` start a query or fragment, `%` escapes are decoded, and `\` and
            // `;` are refused before matching: the canonical path never contains them.
            return fail(&format!("must not contain {c:?}"));
        }
        let mut segments = Vec::new();
        let mut params: Vec<&str> = Vec::new();
        let body = &raw[1..];
        let parts: Vec<&str> = if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').collect()
        };
        for (i, part) in parts.iter().enumerate() {
            let segment = match *part {
                "" => return fail("has an empty segment"),
                "." | ".." => return fail("has a dot segment"),
                "**" if i + 1 == parts.len() => Segment::Rest,
                "**" => return fail("\"**\" must be the last segment"),
                "*" => Segment::One,
                p if p.starts_with('{') && p.ends_with('}') => {
                    let name = &p[1..p.len() - 1];
                    if !is_identifier(name) {
                        return fail(&format!("parameter {p:?} must be {{identifier}}"));
                    }
                    if params.contains(&name) {
                        return fail(&format!("parameter {name:?} appears twice"));
                    }
                    params.push(name);
                    Segment::One
                }
                p if p.contains('*') => return fail("\"*\" must be a whole segment"),
                p if p.contains(['{', '}']) => {
                    return fail("'{' and '}' must enclose a whole segment")
                }
                p => Segment::Literal(p.into()),
            };
            segments.push(segment);
        }
        Ok(PathPattern {
            raw: raw.into(),
            segments: segments.into(),
            ignore_case: false,
        })
    }

    /// What the pattern requires of a path's first segment: `Some(None)`, no
    /// segment (the pattern is `/`); `Some(Some(literal))`, that literal (compared
    /// ignoring ASCII case when [`PathPattern::ignores_case`]); `None`, nothing
    /// certain (a `*`, `**` or `{param}`).
    pub fn first_literal(&self) -> Option<Option<&str>> {
        match self.segments.first() {
            None => Some(None),
            Some(Segment::Literal(literal)) => Some(Some(literal)),
            Some(_) => None,
        }
    }

    /// Whether literal segments are compared ignoring ASCII case (deny rules).
    pub fn ignores_case(&self) -> bool {
        self.ignore_case
    }

    /// The same pattern, with literal segments compared ignoring ASCII case.
    ///
    /// Deny rules use this: some upstream routers (Express by default, ASP.NET) treat
    /// `/ADMIN` as `/admin`, and a deny rule must cover every spelling the upstream
    /// might serve. Allow rules stay exact, so both directions fail closed.
    pub fn ignoring_case(mut self) -> Self {
        self.ignore_case = true;
        self
    }

    /// Whether the canonical `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        let Some(body) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = (!body.is_empty())
            .then(|| body.split('/'))
            .into_iter()
            .flatten();
        for segment in self.segments.iter() {
            let part = match segment {
                Segment::Rest => return true,
                _ => match parts.next() {
                    Some(part) => part,
                    None => return false,
                },
            };
            let ok = match segment {
                Segment::Literal(lit) if self.ignore_case => lit.eq_ignore_ascii_case(part),
                Segment::Literal(lit) => **lit == *part,
                Segment::One => !part.is_empty(),
                Segment::Rest => true,
            };
            if !ok {
                return false;
            }
        }
        parts.next().is_none()
    }
}

impl PathPattern {
    /// Whether the pattern uses `*` or `**` (a `{param}` is one named segment and
    /// is not counted: it is how one resource is addressed).
    pub fn has_wildcard(&self) -> bool {
        self.raw.contains('*')
    }

    /// Whether every path `other` matches, `self` matches too.
    pub fn covers(&self, other: &PathPattern) -> bool {
        let (mut a, mut b) = (self.segments.iter(), other.segments.iter());
        loop {
            match (a.next(), b.next()) {
                (Some(Segment::Rest), _) => return true,
                (None, None) => return true,
                (None, Some(_)) | (Some(_), None) => return false,
                (Some(_), Some(Segment::Rest)) => return false,
                (Some(Segment::One), Some(_)) => {}
                (Some(Segment::Literal(x)), Some(Segment::Literal(y))) => {
                    let same = if self.ignore_case {
                        x.eq_ignore_ascii_case(y)
                    } else {
                        x == y && !other.ignore_case
                    };
                    if !same {
                        return false;
                    }
                }
                (Some(Segment::Literal(_)), Some(Segment::One)) => return false,
            }
        }
    }

    /// Whether some path matches both patterns.
    pub fn overlaps(&self, other: &PathPattern) -> bool {
        let fold = self.ignore_case || other.ignore_case;
        let (mut a, mut b) = (self.segments.iter(), other.segments.iter());
        loop {
            match (a.next(), b.next()) {
                (Some(Segment::Rest), _) | (_, Some(Segment::Rest)) => return true,
                (None, None) => return true,
                (None, Some(_)) | (Some(_), None) => return false,
                (Some(Segment::Literal(x)), Some(Segment::Literal(y))) => {
                    let same = if fold {
                        x.eq_ignore_ascii_case(y)
                    } else {
                        x == y
                    };
                    if !same {
                        return false;
                    }
                }
                _ => {}
            }
        }
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// A gRPC method pattern: `pkg.Service/Method` or `pkg.Service/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcPattern {
    service: Box<str>,
    /// `None` for `*`: any method of the service.
    method: Option<Box<str>>,
}

impl GrpcPattern {
    /// Compiles `raw`.
    pub fn parse(raw: &str) -> Result<Self, PatternError> {
        let fail = |reason: &str| Err(error("grpc", raw, reason));
        let Some((service, method)) = raw.split_once('/') else {
            return fail("must be Service/Method or Service/*");
        };
        let service_ok = !service.is_empty()
            && !service.starts_with('.')
            && !service.ends_with('.')
            && !service.contains("..")
            && service
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
        if !service_ok {
            return fail("service must be a dotted name like pkg.v1.Service");
        }
        let method = match method {
            "*" => None,
            m if is_identifier(m) => Some(m.into()),
            _ => return fail("method must be an identifier or *"),
        };
        Ok(GrpcPattern {
            service: service.into(),
            method,
        })
    }

    /// Whether `grpc` (`pkg.Service/Method`, as in [`crate::request::Action::grpc`]) matches.
    pub fn matches(&self, grpc: &str) -> bool {
        let Some((service, method)) = grpc.split_once('/') else {
            return false;
        };
        *self.service == *service
            && match &self.method {
                Some(m) => **m == *method,
                None => !method.is_empty() && !method.contains('/'),
            }
    }
}

impl GrpcPattern {
    /// Whether every method `other` matches, `self` matches too.
    pub fn covers(&self, other: &GrpcPattern) -> bool {
        self.service == other.service
            && match (&self.method, &other.method) {
                (None, _) => true,
                (Some(a), Some(b)) => a == b,
                (Some(_), None) => false,
            }
    }

    /// Whether some method matches both patterns.
    pub fn overlaps(&self, other: &GrpcPattern) -> bool {
        self.service == other.service
            && match (&self.method, &other.method) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// Whether the pattern is `Service/*`.
    pub fn has_wildcard(&self) -> bool {
        self.method.is_none()
    }
}

impl fmt::Display for GrpcPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let method = self.method.as_deref().unwrap_or("*");
        write!(f, "{}/{method}", self.service)
    }
}

/// A principal id or mTLS peer pattern, matched segment by segment (`/`-separated):
/// exact; a glob where each `*` is one whole non-empty segment and a final `**` is
/// zero or more further segments; or `**` alone for any id.
///
/// A lone `*` is refused: it reads as "anyone" but, being one segment, would match
/// no SPIFFE ID, so a deny rule written with it would silently deny less than meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPattern {
    /// Shared with the index and the rate limiter's named callers (see
    /// [`IdPattern::exact_shared`]).
    raw: Arc<str>,
    kind: IdKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdKind {
    Exact,
    Glob,
}

impl IdPattern {
    /// A `from.principals` entry: any principal id (a token subject such as
    /// `partner:acme`, or a SPIFFE ID, which is then checked as one).
    pub fn principal(raw: &str) -> Result<Self, PatternError> {
        Self::parse("principal", raw, false)
    }

    /// A `from.peers` entry: an mTLS peer is always a SPIFFE ID.
    pub fn peer(raw: &str) -> Result<Self, PatternError> {
        Self::parse("peer", raw, true)
    }

    fn parse(kind: &'static str, raw: &str, spiffe_only: bool) -> Result<Self, PatternError> {
        let fail = |reason: &str| Err(error(kind, raw, reason));
        if raw == "**" {
            return Ok(IdPattern {
                raw: raw.into(),
                kind: IdKind::Glob,
            });
        }
        if raw == "*" {
            return fail(
                "a lone \"*\" is one segment and matches no SPIFFE ID; write \"**\" for any id",
            );
        }
        if raw.is_empty() {
            return fail("is empty");
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return fail("must not contain whitespace");
        }
        let segments: Vec<&str> = raw.split('/').collect();
        if segments
            .iter()
            .any(|s| *s != "*" && *s != "**" && s.contains('*'))
        {
            return fail("\"*\" must be a whole segment");
        }
        if segments[..segments.len() - 1].contains(&"**") {
            return fail("\"**\" must be the last segment");
        }
        if let Some(rest) = raw.strip_prefix("spiffe://") {
            // The trust domain is the root of trust (SPIFFE spec 2.1): a wildcard
            // there would accept identities minted by any other domain.
            if rest.split('/').next().is_some_and(|td| td.starts_with('*')) {
                return fail("the trust domain cannot be a wildcard");
            }
            let concrete = raw.replace('*', "x");
            if let Err(err) = concrete.parse::<SpiffeId>() {
                return fail(&format!("is not a valid SPIFFE ID ({err})"));
            }
        } else if spiffe_only {
            return fail("must be a spiffe:// ID (mTLS peers are identified by their SPIFFE ID)");
        }
        let kind = if raw.contains('*') {
            IdKind::Glob
        } else {
            IdKind::Exact
        };
        Ok(IdPattern {
            raw: raw.into(),
            kind,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether the pattern has a `*` or `**` segment.
    pub fn has_wildcard(&self) -> bool {
        self.kind != IdKind::Exact
    }

    fn segments(&self) -> Vec<&str> {
        self.raw.split('/').collect()
    }

    /// Whether every id `other` matches, `self` matches too.
    pub fn covers(&self, other: &IdPattern) -> bool {
        segments_cover(&self.segments(), &other.segments())
    }

    /// Whether some id matches both patterns.
    pub fn overlaps(&self, other: &IdPattern) -> bool {
        segments_overlap(&self.segments(), &other.segments())
    }

    /// The id itself, when the pattern has no wildcard.
    pub fn exact(&self) -> Option<&str> {
        matches!(self.kind, IdKind::Exact).then_some(&*self.raw)
    }

    /// [`IdPattern::exact`], as the pattern's own shared string.
    pub fn exact_shared(&self) -> Option<Arc<str>> {
        matches!(self.kind, IdKind::Exact).then(|| self.raw.clone())
    }

    /// Whether `id` matches.
    pub fn matches(&self, id: &str) -> bool {
        match self.kind {
            IdKind::Exact => *self.raw == *id,
            IdKind::Glob => {
                let mut want = self.raw.split('/');
                let mut have = id.split('/');
                loop {
                    match (want.next(), have.next()) {
                        (None, None) => return true,
                        // The rest of the id: zero or more further segments.
                        (Some("**"), _) => return true,
                        (Some("*"), Some(h)) if !h.is_empty() => {}
                        (Some(w), Some(h)) if w != "*" && w == h => {}
                        _ => return false,
                    }
                }
            }
        }
    }
}

/// Pattern segments `a` match every id that segments `b` match.
fn segments_cover(a: &[&str], b: &[&str]) -> bool {
    match (a.first(), b.first()) {
        (Some(&"**"), _) => true,
        (_, Some(&"**")) => false,
        (None, None) => true,
        (Some(x), Some(y)) if (*x == "*" && !y.is_empty()) || x == y => {
            segments_cover(&a[1..], &b[1..])
        }
        _ => false,
    }
}

/// Some id matches both pattern segments `a` and `b`.
fn segments_overlap(a: &[&str], b: &[&str]) -> bool {
    match (a.first(), b.first()) {
        (Some(&"**"), _) | (_, Some(&"**")) => true,
        (None, None) => true,
        // A `*` is one non-empty segment: it shares no id with an empty one.
        (Some(x), Some(y))
            if x == y || (*x == "*" && !y.is_empty()) || (*y == "*" && !x.is_empty()) =>
        {
            segments_overlap(&a[1..], &b[1..])
        }
        _ => false,
    }
}

impl fmt::Display for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

fn is_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_matching() {
        let cases: &[(&str, &str, bool)] = &[
            ("/", "/", true),
            ("/", "/a", false),
            ("/**", "/", true),
            ("/**", "/a/b/c", true),
            ("/*", "/", false),
            ("/*", "/a", true),
            ("/*", "/a/b", false),
            ("/a", "/a", true),
            ("/a", "/A", false),
            ("/a", "/ab", false),
            ("/a", "/a/b", false),
            ("/a", "/", false),
            ("/refunds/**", "/refunds", true),
            ("/refunds/**", "/refunds/1", true),
            ("/refunds/**", "/refunds/1/x", true),
            ("/refunds/**", "/refundsx", false),
            ("/refunds/**", "/other/refunds", false),
            ("/transactions/{id}", "/transactions/42", true),
            ("/transactions/{id}", "/transactions", false),
            ("/transactions/{id}", "/transactions/42/status", false),
            ("/transactions/{id}/status", "/transactions/42/status", true),
            ("/transactions/{id}/status", "/transactions/42/other", false),
            ("/a/*/c", "/a/b/c", true),
            ("/a/*/c", "/a//c", false),
            ("/a/*/**", "/a/b", true),
            ("/a/*/**", "/a", false),
            ("/a", "a", false),
            ("/a", "", false),
            ("/caf\u{e9}", "/caf\u{e9}", true),
        ];
        for (pattern, path, want) in cases {
            let p = PathPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(path), *want, "{pattern} vs {path}");
        }
    }

    #[test]
    fn path_errors() {
        let cases: &[(&str, &str)] = &[
            ("", "path pattern \"\": is empty"),
            ("a/b", "path pattern \"a/b\": must start with '/'"),
            (
                "/a/**/b",
                "path pattern \"/a/**/b\": \"**\" must be the last segment",
            ),
            (
                "/a*b",
                "path pattern \"/a*b\": \"*\" must be a whole segment",
            ),
            (
                "/a/***",
                "path pattern \"/a/***\": \"*\" must be a whole segment",
            ),
            (
                "/{x",
                "path pattern \"/{x\": '{' and '}' must enclose a whole segment",
            ),
            (
                "/{1x}",
                "path pattern \"/{1x}\": parameter \"{1x}\" must be {identifier}",
            ),
            (
                "/{}",
                "path pattern \"/{}\": parameter \"{}\" must be {identifier}",
            ),
            (
                "/{x}/{x}",
                "path pattern \"/{x}/{x}\": parameter \"x\" appears twice",
            ),
            ("//", "path pattern \"//\": has an empty segment"),
            ("/a//b", "path pattern \"/a//b\": has an empty segment"),
            ("/a/", "path pattern \"/a/\": has an empty segment"),
            ("/a/./b", "path pattern \"/a/./b\": has a dot segment"),
            ("/..", "path pattern \"/..\": has a dot segment"),
            ("/a?b", "path pattern \"/a?b\": must not contain '?'"),
            ("/a#b", "path pattern \"/a#b\": must not contain '#'"),
            ("/%61", "path pattern \"/%61\": must not contain '%'"),
            (
                "/admin;x",
                "path pattern \"/admin;x\": must not contain ';'",
            ),
            ("/a\\b", "path pattern \"/a\\\\b\": must not contain '\\\\'"),
            ("/a b", "path pattern \"/a b\": must not contain ' '"),
            ("/a\tb", "path pattern \"/a\\tb\": must not contain '\\t'"),
        ];
        for (pattern, want) in cases {
            let err = PathPattern::parse(pattern).unwrap_err();
            assert_eq!(err.to_string(), *want, "{pattern:?}");
        }
    }

    #[test]
    fn grpc_matching() {
        let cases: &[(&str, &str, bool)] = &[
            ("ledger.v1.Ledger/Get", "ledger.v1.Ledger/Get", true),
            ("ledger.v1.Ledger/Get", "ledger.v1.Ledger/GetAll", false),
            ("ledger.v1.Ledger/Get", "ledger.v1.Ledger/get", false),
            ("ledger.v1.Ledger/Get", "ledger.v2.Ledger/Get", false),
            ("ledger.v1.Ledger/*", "ledger.v1.Ledger/Put", true),
            ("ledger.v1.Ledger/*", "ledger.v1.Ledger/", false),
            ("ledger.v1.Ledger/*", "ledger.v1.LedgerAdmin/Put", false),
            ("ledger.v1.Ledger/*", "ledger.v1.Ledger", false),
            ("Health/Check", "Health/Check", true),
        ];
        for (pattern, method, want) in cases {
            let p = GrpcPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(method), *want, "{pattern} vs {method}");
        }
    }

    #[test]
    fn grpc_errors() {
        let bad = [
            "",
            "Ledger",
            "/Get",
            "Ledger/",
            ".a.B/Get",
            "a.B./Get",
            "a..B/Get",
            "a-b.B/Get",
            "a.B/Get/x",
            "a.B/G-t",
            "a.B/1x",
            "a.B/G*",
            "*/Get",
        ];
        for pattern in bad {
            let err = GrpcPattern::parse(pattern).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("grpc pattern {pattern:?}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn principal_globs() {
        let td = "spiffe://hopwarden.local";
        let cases: &[(&str, &str, bool)] = &[
            ("**", "anything", true),
            ("**", "spiffe://a/b", true),
            ("team/**", "team", true),
            ("team/**", "team/a/b", true),
            ("team/**", "teams/a", false),
            (
                "spiffe://hopwarden.local/ns/payments/**",
                "spiffe://hopwarden.local/ns/payments/sa/payments",
                true,
            ),
            ("partner:transcribe-co", "partner:transcribe-co", true),
            ("partner:transcribe-co", "partner:transcribe-co2", false),
            (
                "spiffe://hopwarden.local/ns/payments/sa/payments",
                "spiffe://hopwarden.local/ns/payments/sa/payments",
                true,
            ),
            (
                "spiffe://hopwarden.local/ns/payments/sa/payments",
                "spiffe://hopwarden.local/ns/payments/sa/payments/x",
                false,
            ),
            (
                "spiffe://hopwarden.local/ns/*/sa/payments",
                "spiffe://hopwarden.local/ns/a/sa/payments",
                true,
            ),
            (
                "spiffe://hopwarden.local/ns/*/sa/payments",
                "spiffe://hopwarden.local/ns//sa/payments",
                false,
            ),
            (
                "spiffe://hopwarden.local/ns/*/sa/payments",
                "spiffe://hopwarden.local/ns/a/b/sa/payments",
                false,
            ),
            (
                "spiffe://hopwarden.local/ns/*/sa/payments",
                "spiffe://other.local/ns/a/sa/payments",
                false,
            ),
            (
                "spiffe://hopwarden.local/ns/*/sa/*",
                "spiffe://hopwarden.local/ns/a/sa/b",
                true,
            ),
            (
                "spiffe://hopwarden.local/ns/*/sa/*",
                "spiffe://hopwarden.local/ns/a/sa",
                false,
            ),
            (
                "spiffe://hopwarden.local/ns/*",
                "spiffe://hopwarden.local/ns/*",
                true,
            ),
            ("team/*", "team/a", true),
            ("team/*", "team", false),
        ];
        for (pattern, id, want) in cases {
            let p = IdPattern::principal(pattern).unwrap();
            assert_eq!(p.matches(id), *want, "{pattern} vs {id}");
        }
        assert!(IdPattern::peer(&format!("{td}/ns/*/sa/x")).is_ok());
    }

    #[test]
    fn id_errors() {
        let cases: &[(&str, bool, &str)] = &[
            ("", false, "principal pattern \"\": is empty"),
            ("a b", false, "principal pattern \"a b\": must not contain whitespace"),
            ("spiffe://td/ns/pay*", false, "principal pattern \"spiffe://td/ns/pay*\": \"*\" must be a whole segment"),
            ("spiffe://*/ns/a", false, "principal pattern \"spiffe://*/ns/a\": the trust domain cannot be a wildcard"),
            ("spiffe://**", false, "principal pattern \"spiffe://**\": the trust domain cannot be a wildcard"),
            ("*", false, "principal pattern \"*\": a lone \"*\" is one segment and matches no SPIFFE ID; write \"**\" for any id"),
            ("*", true, "peer pattern \"*\": a lone \"*\" is one segment and matches no SPIFFE ID; write \"**\" for any id"),
            ("a/**/b", false, "principal pattern \"a/**/b\": \"**\" must be the last segment"),
            ("a/b**", false, "principal pattern \"a/b**\": \"*\" must be a whole segment"),
            ("spiffe://td//a", false, "principal pattern \"spiffe://td//a\": is not a valid SPIFFE ID (SPIFFE ID \"spiffe://td//a\" has an invalid path)"),
            ("ns/payments", true, "peer pattern \"ns/payments\": must be a spiffe:// ID (mTLS peers are identified by their SPIFFE ID)"),
            ("spiffe://TD/a", true, "peer pattern \"spiffe://TD/a\": is not a valid SPIFFE ID (SPIFFE ID \"spiffe://TD/a\" has an invalid trust domain)"),
        ];
        for (pattern, peer, want) in cases {
            let err = if *peer {
                IdPattern::peer(pattern)
            } else {
                IdPattern::principal(pattern)
            };
            assert_eq!(err.unwrap_err().to_string(), *want, "{pattern:?}");
        }
        assert!(IdPattern::peer("**").is_ok());
        assert!(IdPattern::peer("**").unwrap().has_wildcard());
    }

    #[test]
    fn pattern_relations() {
        let p = |raw: &str| PathPattern::parse(raw).unwrap();
        // (a, b, a covers b, a overlaps b)
        let cases: &[(&str, &str, bool, bool)] = &[
            ("/**", "/a/{id}", true, true),
            ("/a/**", "/a", true, true),
            ("/a/**", "/b/**", false, false),
            ("/a/*", "/a/{id}", true, true),
            ("/a/{id}", "/a/**", false, true),
            ("/a/x", "/a/{id}", false, true),
            ("/a/x", "/a/y", false, false),
            ("/a", "/a/b", false, false),
            ("/", "/**", false, true),
        ];
        for (a, b, covers, overlaps) in cases {
            assert_eq!(p(a).covers(&p(b)), *covers, "{a} covers {b}");
            assert_eq!(p(a).overlaps(&p(b)), *overlaps, "{a} overlaps {b}");
        }
        assert!(p("/admin/**").ignoring_case().covers(&p("/ADMIN/x")));
        assert!(!p("/admin/**").covers(&p("/ADMIN/x")));
        let id = |raw: &str| IdPattern::principal(raw).unwrap();
        let cases: &[(&str, &str, bool, bool)] = &[
            ("**", "a", true, true),
            ("a", "**", false, true),
            ("**", "spiffe://td/ns/*/sa/x", true, true),
            ("spiffe://td/ns/**", "spiffe://td/ns/*/sa/x", true, true),
            ("spiffe://td/ns/*/sa/x", "spiffe://td/ns/**", false, true),
            ("spiffe://td/ns/a/**", "spiffe://td/ns/b/**", false, false),
            ("team/*", "team/**", false, true),
            // `*` is one non-empty segment: `team/` is not among its ids.
            ("team/*", "team/", false, false),
            ("team/", "team/*", false, false),
            ("team/*", "team/*", true, true),
            ("spiffe://td/ns/*/sa/x", "spiffe://td/ns/n/sa/x", true, true),
            (
                "spiffe://td/ns/*/sa/x",
                "spiffe://td/ns/*/sa/*",
                false,
                true,
            ),
            ("spiffe://td/ns/*/sa/*", "spiffe://td/ns/*/sa/x", true, true),
            (
                "spiffe://td/ns/a/sa/*",
                "spiffe://td/ns/b/sa/*",
                false,
                false,
            ),
        ];
        for (a, b, covers, overlaps) in cases {
            assert_eq!(id(a).covers(&id(b)), *covers, "{a} covers {b}");
            assert_eq!(id(a).overlaps(&id(b)), *overlaps, "{a} overlaps {b}");
        }
        let g = |raw: &str| GrpcPattern::parse(raw).unwrap();
        assert!(g("p.S/*").covers(&g("p.S/M")) && !g("p.S/M").covers(&g("p.S/*")));
        assert!(g("p.S/M").overlaps(&g("p.S/*")) && !g("p.S/M").overlaps(&g("p.T/M")));
        assert_eq!(g("p.S/*").to_string(), "p.S/*");
    }

    #[test]
    fn case_folding_reaches_matches_and_overlaps() {
        let p = |raw: &str| PathPattern::parse(raw).unwrap();
        let deny = p("/admin/**").ignoring_case();
        assert!(deny.matches("/ADMIN/users") && deny.matches("/Admin"));
        assert!(!p("/admin/**").matches("/ADMIN/users"));
        // One folding side is enough: "/ADMIN/x" matches both.
        assert!(deny.overlaps(&p("/ADMIN/x")) && p("/ADMIN/x").overlaps(&deny));
        assert!(!p("/admin/x").overlaps(&p("/ADMIN/x")));
    }

    #[test]
    fn grpc_relations() {
        let g = |raw: &str| GrpcPattern::parse(raw).unwrap();
        // (a, b, a covers b, a overlaps b)
        let cases: &[(&str, &str, bool, bool)] = &[
            ("p.S/M", "p.S/M", true, true),
            ("p.S/M", "p.S/N", false, false),
            ("p.S/*", "p.S/M", true, true),
            ("p.S/M", "p.S/*", false, true),
            ("p.S/*", "p.S/*", true, true),
            ("p.S/*", "p.T/*", false, false),
            ("p.S/M", "p.T/M", false, false),
        ];
        for (a, b, covers, overlaps) in cases {
            assert_eq!(g(a).covers(&g(b)), *covers, "{a} covers {b}");
            assert_eq!(g(a).overlaps(&g(b)), *overlaps, "{a} overlaps {b}");
        }
        assert!(g("p.S/*").has_wildcard() && !g("p.S/M").has_wildcard());
        assert_eq!(g("p.S/M").to_string(), "p.S/M");
    }

    #[test]
    fn patterns_show_as_written() {
        let exact = IdPattern::principal("spiffe://td/ns/a/sa/x").unwrap();
        assert_eq!(exact.as_str(), "spiffe://td/ns/a/sa/x");
        assert_eq!(exact.to_string(), "spiffe://td/ns/a/sa/x");
        assert_eq!(exact.exact(), Some("spiffe://td/ns/a/sa/x"));
        assert!(!exact.has_wildcard());
        let glob = IdPattern::principal("spiffe://td/ns/*/sa/x").unwrap();
        assert_eq!(glob.to_string(), "spiffe://td/ns/*/sa/x");
        assert_eq!(glob.exact(), None);
        assert!(glob.has_wildcard());
        let path = PathPattern::parse("/a/{id}/**").unwrap();
        assert_eq!(path.to_string(), "/a/{id}/**");
        assert!(path.has_wildcard());
        // A `{param}` names one resource: not a wildcard.
        assert!(!PathPattern::parse("/a/{id}").unwrap().has_wildcard());
    }
}
