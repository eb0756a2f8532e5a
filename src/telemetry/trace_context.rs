//! The caller's trace context, read from the check's request headers: W3C Trace
//! Context (`traceparent`, `tracestate`), else B3 single header (`b3`), else B3 multi
//! headers (`x-b3-*`), the order OpenTelemetry's composite propagators use. Envoy and
//! Istio send one of these on every traced request.
//!
//! Parsing is strict (the specs' lengths, lowercase hex, no all-zero ids): a malformed
//! header is ignored, as the W3C spec says a receiver must, and the check then has no
//! parent. Nothing here allocates.

use crate::request::AuthzRequest;

/// The headers read here, for Envoy's `allowed_headers` (`hopwarden validate`).
pub const HEADERS: [&str; 7] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// A remote parent span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent<'a> {
    /// 128-bit trace id (a 64-bit B3 id is zero-extended on the left).
    pub trace_id: u128,
    /// The parent's span id.
    pub span_id: u64,
    /// The caller's sampling decision; `None` when B3 defers it to us.
    pub sampled: Option<bool>,
    /// W3C `tracestate`, passed on unread (only with `traceparent`).
    pub trace_state: Option<&'a str>,
}

/// The parent named by the request's headers, if any is well formed.
pub fn extract(req: &AuthzRequest) -> Option<Parent<'_>> {
    if let Some(tp) = req.header("traceparent") {
        // A present but malformed traceparent means "no parent" (W3C 4.3), not "try B3".
        return traceparent(tp).map(|mut p| {
            p.trace_state = req.header("tracestate").filter(|s| !s.is_empty());
            p
        });
    }
    if let Some(b3) = req.header("b3") {
        return b3_single(b3);
    }
    b3_multi(
        req.header("x-b3-traceid")?,
        req.header("x-b3-spanid")?,
        req.header("x-b3-sampled"),
        req.header("x-b3-flags"),
    )
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>` (W3C Trace Context 3.2).
/// Later versions may append fields after the flags; version `ff` is invalid.
fn traceparent(value: &str) -> Option<Parent<'_>> {
    let value = value.trim_matches([' ', '\t']);
    let b = value.as_bytes();
    // ASCII only, so that every slice below falls on a character boundary.
    if !value.is_ascii() || b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let version = hex_u128(&value[0..2])?;
    if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
        return None;
    }
    let trace_id = hex_u128(&value[3..35]).filter(|&t| t != 0)?;
    let span_id = hex_u64(&value[36..52]).filter(|&s| s != 0)?;
    let flags = hex_u128(&value[53..55])?;
    Some(Parent {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
        trace_state: None,
    })
}

/// `b3: {trace id}-{span id}[-{sampling state}[-{parent span id}]]`, where the
/// sampling state is `1`, `0` or `d` (debug, which implies sampled). A lone `0`, `1`
/// or `d` carries only a decision and no parent (openzipkin/b3-propagation).
fn b3_single(value: &str) -> Option<Parent<'_>> {
    let mut parts = value.trim().split('-');
    let trace = parts.next()?;
    let span = parts.next()?;
    let sampled = match parts.next() {
        None => None,
        Some(state) => Some(b3_sampled(state)?),
    };
    if let Some(parent) = parts.next() {
        hex_u64(parent).filter(|_| parent.len() == 16)?;
    }
    if parts.next().is_some() {
        return None;
    }
    parent(trace, span, sampled)
}

/// `x-b3-traceid`, `x-b3-spanid`, and the decision in `x-b3-sampled` (`1`/`0`, or the
/// legacy `true`/`false`) or `x-b3-flags: 1` (debug).
fn b3_multi<'a>(
    trace: &'a str,
    span: &'a str,
    sampled: Option<&str>,
    flags: Option<&str>,
) -> Option<Parent<'a>> {
    let sampled = if flags.map(str::trim) == Some("1") {
        Some(true)
    } else {
        match sampled.map(str::trim) {
            None => None,
            Some("1" | "true") => Some(true),
            Some("0" | "false") => Some(false),
            Some(_) => return None,
        }
    };
    parent(trace.trim(), span.trim(), sampled)
}

fn b3_sampled(state: &str) -> Option<bool> {
    match state {
        "1" | "d" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// A B3 trace id (16 or 32 hex digits) and span id (16).
fn parent<'a>(trace: &str, span: &str, sampled: Option<bool>) -> Option<Parent<'a>> {
    if !(trace.len() == 16 || trace.len() == 32) || span.len() != 16 {
        return None;
    }
    Some(Parent {
        trace_id: hex_u128(trace).filter(|&t| t != 0)?,
        span_id: hex_u64(span).filter(|&s| s != 0)?,
        sampled,
        trace_state: None,
    })
}

/// Lowercase hex only (both specs say lowercase; `from_str_radix` alone would also take
/// uppercase and a leading `+`).
fn hex_u128(s: &str) -> Option<u128> {
    if s.is_empty() || s.len() > 32 || !s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

fn hex_u64(s: &str) -> Option<u64> {
    if s.len() > 16 {
        return None;
    }
    hex_u128(s).map(|v| v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> AuthzRequest {
        AuthzRequest {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    const T: u128 = 0x4bf92f3577b34da6a3ce929d0e0e4736;
    const S: u64 = 0x00f067aa0ba902b7;

    #[test]
    fn traceparent_and_tracestate() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let r = req(&[("traceparent", tp), ("tracestate", "congo=t61rcWkgMzE")]);
        assert_eq!(
            extract(&r),
            Some(Parent {
                trace_id: T,
                span_id: S,
                sampled: Some(true),
                trace_state: Some("congo=t61rcWkgMzE")
            })
        );
        let r = req(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )]);
        assert_eq!(extract(&r).unwrap().sampled, Some(false));
        // A later version may add fields after the flags.
        let r = req(&[(
            "traceparent",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-xyz",
        )]);
        assert_eq!(extract(&r).unwrap().sampled, Some(true));
    }

    #[test]
    fn malformed_traceparents_mean_no_parent_even_with_b3() {
        let b3 = ("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1");
        for tp in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
        ] {
            assert_eq!(extract(&req(&[("traceparent", tp), b3])), None, "{tp:?}");
        }
    }

    #[test]
    fn b3_single_header() {
        type Want = Option<(u128, Option<bool>)>;
        let cases: [(&str, Want); 9] = [
            (
                "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
                Some((T, Some(true))),
            ),
            (
                "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
                Some((T, Some(false))),
            ),
            (
                "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-d",
                Some((T, Some(true))),
            ),
            (
                "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                Some((T, None)),
            ),
            (
                "a3ce929d0e0e4736-00f067aa0ba902b7-1-05e3ac9a4f6e3b90",
                Some((0xa3ce929d0e0e4736, Some(true))),
            ),
            ("0", None),
            ("4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-x", None),
            ("4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902-1", None),
            (
                "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-05e3ac9a4f6e3b90-1",
                None,
            ),
        ];
        for (value, want) in cases {
            let got = extract(&req(&[("b3", value)])).map(|p| (p.trace_id, p.sampled));
            assert_eq!(got, want, "{value:?}");
            if let Some(p) = extract(&req(&[("b3", value)])) {
                assert_eq!(p.span_id, S, "{value:?}");
            }
        }
    }

    #[test]
    fn b3_multi_headers() {
        let ids = [
            ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut h = ids.to_vec();
            h.extend_from_slice(extra);
            extract(&req(&h)).map(|p| (p.trace_id, p.span_id, p.sampled))
        };
        assert_eq!(with(&[("x-b3-sampled", "1")]), Some((T, S, Some(true))));
        assert_eq!(with(&[("x-b3-sampled", "0")]), Some((T, S, Some(false))));
        assert_eq!(with(&[("x-b3-sampled", "true")]), Some((T, S, Some(true))));
        assert_eq!(
            with(&[("x-b3-sampled", "0"), ("x-b3-flags", "1")]),
            Some((T, S, Some(true)))
        );
        assert_eq!(with(&[]), Some((T, S, None)));
        assert_eq!(with(&[("x-b3-sampled", "yes")]), None);
        assert_eq!(extract(&req(&ids[..1])), None);
        assert_eq!(extract(&req(&[])), None);
    }
}
