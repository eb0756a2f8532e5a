//! The HTTP service's edge: what Envoy's `http_service` sends -> the domain request
//! (the `/<hop>/<service>` path prefix, the headers) -> the engine -> the answer.
//!
//! Input: text. The first line is `METHOD URI`; each further line `name: value`. Lines
//! hyper would not accept as a request are skipped (hyper refuses them on the wire).
//!
//! Properties: no panic; a request converts only when its path has the two-segment
//! prefix, whose segments become the hop and the service (`-`: none, and never in the
//! mesh); the rest of the path is kept byte for byte; Envoy's `host` and
//! `content-length` never reach a rule, and the pseudo-headers say what the request
//! said; nothing is ever allowed (this protocol carries no mTLS peer, and every other
//! allow needs a token signed with a key no input has); answers are 401 or 403.
#![no_main]

use hopwarden::decision::Decision;
use hopwarden::http_authz::convert::{to_authz_request, to_response, ConvertError};
use hopwarden_fuzz::harness;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let Some((method, uri)) = lines.next().and_then(|l| l.split_once(' ')) else {
        return;
    };
    let mut builder = http::Request::builder().method(method).uri(uri);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            builder = builder.header(name.trim(), value.trim_start());
        }
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (parts, ()) = request.into_parts();
    let raw = parts.uri.path_and_query().map_or("", |p| p.as_str());

    let req = match to_authz_request(&parts) {
        Ok(req) => req,
        Err(ConvertError::MeshWithoutService) => {
            assert!(raw.starts_with("/mesh/-/"), "{raw:?}");
            return;
        }
        Err(ConvertError::NoPrefix) => {
            let segments: Vec<&str> = raw.splitn(4, '/').collect();
            assert!(
                segments.len() < 4
                    || !segments[0].is_empty()
                    || segments[1].is_empty()
                    || segments[2].is_empty(),
                "a two-segment prefix was refused: {raw:?}"
            );
            return;
        }
    };
    let hop = req.hop.clone().expect("the prefix names the hop");
    let service = req.service.clone().unwrap_or_else(|| "-".to_string());
    assert!(!hop.is_empty() && !service.is_empty());
    assert!(!hop.contains('/') && !service.contains('/'));
    assert!(
        !(hop == "mesh" && req.service.is_none()),
        "mesh without a service"
    );
    assert_eq!(req.service.as_deref() == Some("-"), false);
    assert!(req.path.starts_with('/'));
    assert_eq!(
        format!("/{hop}/{service}{}", req.path),
        raw,
        "the path was changed"
    );
    assert_eq!(req.header(":path"), Some(req.path.as_str()));
    assert_eq!(req.header(":method"), Some(parts.method.as_str()));
    assert_eq!(req.header(":authority"), Some(req.host.as_str()));
    assert!(req.header("host").is_none() && req.header("content-length").is_none());
    assert!(req.source_principal.is_none(), "a peer from an HTTP check");

    let h = harness();
    let outcome = h
        .runtime
        .block_on(h.engine.check(&req))
        .expect("the fuzz engine has its keys");
    if let Decision::Allow(allowed) = &*outcome.decision {
        panic!("allowed by {} without a credential: {req:?}", allowed.rule);
    }
    let answer = to_response(&outcome, &req);
    assert!(
        matches!(answer.status().as_u16(), 400 | 401 | 403),
        "deny answered {}",
        answer.status()
    );
});
