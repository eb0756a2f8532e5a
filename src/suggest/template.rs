//! Observed paths into path templates: a segment that is an id (a number, a UUID, a
//! hash) becomes a `{id}` parameter, which matches exactly one segment; every other
//! segment stays literal. Nothing becomes `*` or `**`.

use crate::policy::PathPattern;

/// Whether `segment` names one resource rather than a collection: a decimal number,
/// a UUID, or a hex digest (16 or more hex digits, at least one a digit).
pub(super) fn is_id(segment: &str) -> bool {
    let b = segment.as_bytes();
    let number = !b.is_empty() && b.len() <= 20 && b.iter().all(u8::is_ascii_digit);
    let uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    let hash = b.len() >= 16
        && b.len() <= 128
        && b.iter().all(u8::is_ascii_hexdigit)
        && b.iter().any(u8::is_ascii_digit);
    number || uuid || hash
}

/// The template for a canonical path: `/transactions/42/items/7` ->
/// `/transactions/{id}/items/{id2}`. `None` when the result is not a pattern the
/// policy language accepts (a segment with `*` or braces, say): such a path is
/// reported, never widened.
pub(super) fn template(path: &str) -> Option<String> {
    let body = path.strip_prefix('/')?;
    let mut out = String::with_capacity(path.len());
    let mut params = 0;
    if body.is_empty() {
        out.push('/');
    }
    for segment in body.split('/').filter(|_| !body.is_empty()) {
        out.push('/');
        if is_id(segment) {
            params += 1;
            if params == 1 {
                out.push_str("{id}");
            } else {
                out.push_str(&format!("{{id{params}}}"));
            }
        } else if segment.contains(['{', '}', '*']) {
            // Written into a pattern, these would be a parameter or a wildcard: a
            // path that merely contains them must not become one.
            return None;
        } else {
            out.push_str(segment);
        }
    }
    PathPattern::parse(&out).ok().map(|_| out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_templates() {
        #[rustfmt::skip]
        let cases: &[(&str, Option<&str>)] = &[
            ("/transactions/42", Some("/transactions/{id}")),
            ("/transactions/42/status", Some("/transactions/{id}/status")),
            ("/orders/7/items/9", Some("/orders/{id}/items/{id2}")),
            ("/users/6f1c2b9e-3a4d-4e5f-8a9b-0c1d2e3f4a5b", Some("/users/{id}")),
            ("/blobs/9f86d081884c7d659a2feaa0c55ad015", Some("/blobs/{id}")),
            ("/commits/5e8f1a2b3c4d5e6f7a8b", Some("/commits/{id}")),
            // Words, versions and short hex-looking words stay literal.
            ("/v1/products", Some("/v1/products")),
            ("/users/alice", Some("/users/alice")),
            ("/colors/deadbeef", Some("/colors/deadbeef")),
            ("/files/abcdefabcdefabcdef", Some("/files/abcdefabcdefabcdef")),
            ("/2024/06", Some("/{id}/{id2}")),
            ("/", Some("/")),
            ("/pkg.v1.Svc/Get", Some("/pkg.v1.Svc/Get")),
            // Not patterns the policy language accepts: reported, not widened.
            ("/a/b*c", None),
            ("/a/{x}", None),
            ("/a//b", None),
            ("relative", None),
        ];
        for (path, want) in cases {
            assert_eq!(template(path).as_deref(), *want, "{path}");
        }
    }
}
