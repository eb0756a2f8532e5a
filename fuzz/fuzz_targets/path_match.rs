//! Path canonicalisation (src/request.rs) and the compiled patterns that match its
//! output (src/policy/matcher.rs).
//!
//! Input: text; the first line is a path pattern, the rest a request path.
//!
//! Properties: no panic. A canonical path starts with `/`, has no empty, `.` or `..`
//! segment, no trailing `/` (but the root), no `\`, `;` or control character, and is
//! its own canonical form. A pattern that compiles names paths a canonical path can
//! be: its example path (each `*` or `{param}` one segment) is canonical and matched;
//! a pattern without wildcards matches only its own text; `ignoring_case` matches
//! whatever the exact pattern does; a pattern is its own `Display` and covers itself.
#![no_main]

use hopwarden::policy::PathPattern;
use hopwarden::request::canonical_path;
use libfuzzer_sys::fuzz_target;

/// The path a pattern names with every wildcard segment filled in (`**` as one segment).
fn example(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|s| {
            if s == "*" || s == "**" || (s.starts_with('{') && s.ends_with('}')) {
                "x"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, path) = text.split_once('\n').unwrap_or((text, ""));

    if let Ok(c) = canonical_path(path) {
        assert!(c.starts_with('/'), "{path:?} -> {c:?}");
        assert!(c == "/" || !c.ends_with('/'), "{path:?} -> {c:?}");
        assert!(
            !c.chars()
                .any(|ch| ch == '\\' || ch == ';' || ch.is_control()),
            "{path:?} -> {c:?}"
        );
        if c != "/" {
            assert!(
                !c[1..]
                    .split('/')
                    .any(|s| s.is_empty() || s == "." || s == ".."),
                "{path:?} -> {c:?}"
            );
        }
        // The canonical path is decoded, not a URL: `%3F`/`%23` stand for an ordinary
        // `?`/`#` inside a segment, which a second canonicalisation would read as a
        // query or fragment. Idempotence holds for every other path.
        if !c.contains(['?', '#']) {
            assert_eq!(canonical_path(&c).as_deref(), Ok(c.as_str()), "{path:?}");
        }
    }

    let Ok(p) = PathPattern::parse(pattern) else {
        return;
    };
    assert_eq!(p.to_string(), pattern);
    assert!(p.covers(&p) && p.overlaps(&p), "{pattern:?}");
    let folded = p.clone().ignoring_case();
    let named = example(pattern);
    assert_eq!(
        canonical_path(&named).as_deref(),
        Ok(named.as_str()),
        "pattern {pattern:?} names a path that is never canonical"
    );
    assert!(
        p.matches(&named) && folded.matches(&named),
        "{pattern:?} {named:?}"
    );
    let exact = p.matches(path);
    assert!(!exact || folded.matches(path), "{pattern:?} {path:?}");
    if !p.has_wildcard() && !pattern.contains('{') {
        assert_eq!(exact, path == pattern, "{pattern:?} {path:?}");
    }
    if let Ok(c) = canonical_path(path) {
        let matched = p.matches(&c);
        if !p.has_wildcard() && !pattern.contains('{') {
            assert_eq!(matched, c == pattern, "{pattern:?} {c:?}");
        }
        if matched {
            assert!(folded.matches(&c));
        }
    }
});
