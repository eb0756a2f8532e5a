//! Bearer JWT parsing (src/authn/jwt.rs): the compact form, the header and the claims,
//! read before and after the signature check.
//!
//! Input: a mode byte, then text. Even mode: the text is the token, unsigned by any
//! key we hold. Odd mode: the text is `header JSON \n claims JSON`; the target signs
//! it with the HMAC secret of the fuzz issuer, so the claim checks after the signature
//! are reached with any header and claims.
//!
//! Properties: no panic. A token the target did not sign is never accepted. A signed
//! one is accepted only with `alg: HS256`, no `crit`, an accepted `typ`, `iss` the fuzz
//! issuer, a non-empty principal claim without control characters and a live `exp`;
//! the accepted token says what its claims say; the same token with its signature
//! changed is refused.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hopwarden::authn::jwt::unix_now;
use hopwarden_fuzz::{harness, SECRET_ISSUER};
use jsonwebtoken::{crypto, Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let h = harness();
    let now = unix_now();
    if mode % 2 == 0 {
        let verdict = h.runtime.block_on(h.verifier.verify(text, now));
        assert!(verdict.is_err(), "an unsigned token was accepted: {text:?}");
        return;
    }
    let (header, claims) = text.split_once('\n').unwrap_or((text, ""));
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(&h.secret),
        Algorithm::HS256,
    )
    .expect("sign");
    let token = format!("{message}.{sig}");
    let verdict = h.runtime.block_on(h.verifier.verify(&token, now));
    let Ok(verified) = verdict else {
        return;
    };
    let header: Map<String, Value> = serde_json::from_str(header).expect("accepted header is JSON");
    let claims: Map<String, Value> =
        serde_json::from_str(claims).expect("accepted claims are JSON");
    assert_eq!(header.get("alg").and_then(Value::as_str), Some("HS256"));
    assert!(!header.contains_key("crit"));
    if let Some(typ) = header.get("typ") {
        let typ = typ.as_str().expect("typ is a string").to_ascii_lowercase();
        assert!(
            ["jwt", "at+jwt", "application/at+jwt"].contains(&typ.as_str()),
            "{typ}"
        );
    }
    assert_eq!(
        claims.get("iss").and_then(Value::as_str),
        Some(SECRET_ISSUER)
    );
    assert_eq!(verified.issuer, SECRET_ISSUER);
    let sub = claims.get("sub").and_then(Value::as_str).expect("sub");
    assert_eq!(verified.subject, sub);
    assert!(
        !sub.is_empty() && !sub.chars().any(char::is_control),
        "{sub:?}"
    );
    assert!(
        claims.get("exp").is_some_and(Value::is_number),
        "exp is required"
    );
    assert!(verified.exp.is_some() && verified.is_live(now));

    // Any other signature is refused: change one character of it.
    let mut forged = token.into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ASCII");
    let verdict = h.runtime.block_on(h.verifier.verify(&forged, now));
    assert!(
        verdict.is_err(),
        "a token with a changed signature was accepted"
    );
});
