//! OIDC discovery (`discovery: true`): an issuer's keys found through its
//! `<issuer>/.well-known/openid-configuration` document.
//!
//! OpenID Connect Discovery 1.0, section 4: the document is at the issuer with any
//! terminating `/` removed, then `/.well-known/openid-configuration`; section 4.3:
//! "The issuer value returned MUST be identical to the Issuer URL that was used as
//! the prefix to /.well-known/openid-configuration". A document naming another
//! issuer is refused, so a server cannot lend its keys to an issuer it is not.
//!
//! The document is fetched again on every key refresh (a moved `jwks_uri` is picked
//! up); a failure keeps the last good keys as a `jwks_uri` failure does. Both URLs
//! must be https, except on loopback (local development and tests). URLs appear in
//! errors and logs without userinfo or query ([`redacted`]).

use std::net::IpAddr;
use std::time::Duration;

use reqwest::Url;

use super::jwks::{JwksError, KeySet};

/// The discovery document's path under the issuer.
pub const WELL_KNOWN: &str = "/.well-known/openid-configuration";
/// Discovery documents and JWKS larger than this are refused; real ones are a few KiB.
const MAX_BYTES: usize = 1 << 20;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the discovery document of `issuer` is.
pub fn document_url(issuer: &str) -> String {
    format!("{}{WELL_KNOWN}", issuer.trim_end_matches('/'))
}

/// Checks a URL hopwarden fetches keys through: https, or http on loopback
/// (127.0.0.0/8, ::1, `localhost`); no query, fragment, user or password (credentials
/// do not belong in a URL that logs may show). Errors name the URL redacted.
pub fn check_url(what: &str, raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("{what} {:?}: {e}", redacted_str(raw)))?;
    let shown = redacted(&url);
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{what} {shown:?}: must have no query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{what} {shown:?}: must have no user or password"));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(format!(
            "{what} {shown:?}: plain http is only allowed on loopback; use https"
        )),
        other => Err(format!("{what} {shown:?}: unsupported scheme {other:?}")),
    }
}

fn is_loopback(url: &Url) -> bool {
    // The URL parser has already normalised IP literals (`127.1` is 127.0.0.1).
    url.host_str().is_some_and(|host| {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        bare.eq_ignore_ascii_case("localhost")
            || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    })
}

/// A URL as logs may show it: scheme, host, port and path; never userinfo, query or
/// fragment (they can carry credentials).
pub fn redacted(url: &Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    shown
}

fn redacted_str(raw: &str) -> String {
    Url::parse(raw).map_or_else(|_| "<unparsable URL>".to_string(), |u| redacted(&u))
}

/// The issuer's current keys: its discovery document, then the JWKS it names.
pub async fn fetch_keys(http: &reqwest::Client, issuer: &str) -> Result<KeySet, JwksError> {
    let doc_url =
        check_url("issuer", &document_url(issuer)).map_err(|message| JwksError::Fetch {
            url: redacted_str(issuer),
            message,
        })?;
    // Every later error is about what this document said.
    let refused = |message: String| JwksError::Fetch {
        url: redacted(&doc_url),
        message,
    };
    #[derive(serde::Deserialize)]
    struct Document {
        issuer: String,
        jwks_uri: String,
    }
    let body = get(http, &doc_url).await?;
    let doc: Document = serde_json::from_slice(&body)
        .map_err(|e| refused(format!("invalid discovery document: {e}")))?;
    if doc.issuer != issuer {
        return Err(refused(format!(
            "discovery document names issuer {:?}, not the configured {issuer:?}; refused",
            redacted_str(&doc.issuer)
        )));
    }
    let jwks_url = check_url("its jwks_uri", &doc.jwks_uri).map_err(refused)?;
    KeySet::from_jwks(&get(http, &jwks_url).await?)
}

/// A bounded GET: success status, at most [`MAX_BYTES`], no redirects (the client's
/// policy). Errors name the URL redacted, never reqwest's own (full) URL.
async fn get(http: &reqwest::Client, url: &Url) -> Result<Vec<u8>, JwksError> {
    let fail = |message: String| JwksError::Fetch {
        url: redacted(url),
        message,
    };
    let mut resp = http
        .get(url.clone())
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| fail(e.without_url().to_string()))?;
    if !resp.status().is_success() {
        return Err(fail(format!("status {}", resp.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| fail(e.without_url().to_string()))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BYTES {
            return Err(fail("document larger than 1 MiB".into()));
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_urls() {
        let cases = [
            (
                "https://sts.example",
                "https://sts.example/.well-known/openid-configuration",
            ),
            (
                "https://sts.example/",
                "https://sts.example/.well-known/openid-configuration",
            ),
            (
                "https://login.example/tenant/v2.0",
                "https://login.example/tenant/v2.0/.well-known/openid-configuration",
            ),
        ];
        for (issuer, want) in cases {
            assert_eq!(document_url(issuer), want);
        }
    }

    #[test]
    fn urls_allowed_and_refused() {
        let cases: &[(&str, Option<&str>)] = &[
            ("https://sts.example/x", None),
            ("http://127.0.0.1:8080/x", None),
            ("http://127.9.9.9/x", None),
            ("http://[::1]:8080/x", None),
            ("http://LOCALHOST:1/x", None),
            ("http://sts.example/x", Some("only allowed on loopback")),
            ("http://128.0.0.1/x", Some("only allowed on loopback")),
            (
                "http://localhost.evil.example/x",
                Some("only allowed on loopback"),
            ),
            ("ftp://127.0.0.1/x", Some("unsupported scheme")),
            ("https://sts.example/x?token=s3cret", Some("no query")),
            (
                "https://user:s3cret@sts.example/x",
                Some("no user or password"),
            ),
            ("not a url", Some("issuer")),
        ];
        for (url, want) in cases {
            match (check_url("issuer", url), want) {
                (Ok(_), None) => {}
                (Err(e), Some(want)) => {
                    assert!(e.contains(want), "{url}: {e}");
                    assert!(!e.contains("s3cret"), "{e}");
                }
                (got, _) => panic!("{url}: {got:?}"),
            }
        }
    }

    #[test]
    fn redaction_drops_userinfo_and_query() {
        let url = Url::parse("https://user:pw@sts.example:8443/keys?sig=abc#f").unwrap();
        assert_eq!(redacted(&url), "https://sts.example:8443/keys");
    }

    #[test]
    fn a_user_alone_or_a_password_alone_is_refused_and_errors_show_the_url_redacted() {
        for url in [
            "https://user@sts.example/x",
            "https://:s3cret@sts.example/x",
        ] {
            let e = check_url("issuer", url).unwrap_err();
            assert!(e.contains("no user or password"), "{url}: {e}");
            assert!(e.contains("\"https://sts.example/x\""), "{url}: {e}");
        }
        assert_eq!(
            redacted_str("https://u:s3cret@sts.example/x?k=v"),
            "https://sts.example/x"
        );
        assert_eq!(redacted_str("not a url"), "<unparsable URL>");
    }
    use crate::authn::test_issuer::{ec_jwk, jwks, Issuer};
    use jsonwebtoken::Algorithm;
    use serde_json::json;

    /// An issuer on 127.0.0.1 whose discovery document names itself and `/keys`.
    async fn issuer_with_keys(keys: Vec<u8>) -> Issuer {
        let issuer = Issuer::start().await;
        let doc = json!({"issuer": issuer.url, "jwks_uri": format!("{}/keys", issuer.url)});
        issuer.serve(WELL_KNOWN, 200, doc.to_string());
        issuer.serve("/keys", 200, keys);
        issuer
    }

    fn fetch_error(result: Result<KeySet, JwksError>) -> (String, String) {
        match result {
            Err(JwksError::Fetch { url, message }) => (url, message),
            Err(e) => panic!("not a fetch error: {e}"),
            Ok(set) => panic!("fetched {} keys", set.len()),
        }
    }

    #[tokio::test]
    async fn keys_come_from_the_jwks_the_discovery_document_names() {
        let issuer = issuer_with_keys(jwks(&[ec_jwk("P-256", "k1")])).await;
        let http = reqwest::Client::new();
        let set = fetch_keys(&http, &issuer.url).await.unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.find(Some("k1"), Algorithm::ES256).is_some());
        // A configured issuer ending in `/` finds the same document, but the document
        // must then name the issuer exactly as configured.
        let (url, message) = fetch_error(fetch_keys(&http, &format!("{}/", issuer.url)).await);
        assert_eq!(url, format!("{}{WELL_KNOWN}", issuer.url));
        assert!(message.contains("names issuer"), "{message}");
    }

    #[tokio::test]
    async fn a_document_naming_another_issuer_is_refused() {
        let issuer = issuer_with_keys(jwks(&[ec_jwk("P-256", "k1")])).await;
        let doc = json!({"issuer": "https://u:s3cret@other.example/?q=1",
                         "jwks_uri": format!("{}/keys", issuer.url)});
        issuer.serve(WELL_KNOWN, 200, doc.to_string());
        let (_, message) = fetch_error(fetch_keys(&reqwest::Client::new(), &issuer.url).await);
        assert!(
            message.contains("names issuer \"https://other.example/\""),
            "{message}"
        );
        assert!(!message.contains("s3cret"), "{message}");
    }

    #[tokio::test]
    async fn a_failed_fetch_of_either_document_is_an_error_naming_its_url_and_status() {
        let http = reqwest::Client::new();
        let issuer = issuer_with_keys(jwks(&[ec_jwk("P-256", "k1")])).await;
        issuer.serve("/keys", 500, jwks(&[ec_jwk("P-256", "k1")]));
        let (url, message) = fetch_error(fetch_keys(&http, &issuer.url).await);
        assert_eq!(url, format!("{}/keys", issuer.url));
        assert!(message.contains("status 500"), "{message}");

        issuer.serve(WELL_KNOWN, 404, "{}");
        let (url, message) = fetch_error(fetch_keys(&http, &issuer.url).await);
        assert_eq!(url, format!("{}{WELL_KNOWN}", issuer.url));
        assert!(message.contains("status 404"), "{message}");

        // Nothing listening at all (a port just bound and let go).
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let nobody = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let (url, _) = fetch_error(fetch_keys(&http, &nobody).await);
        assert_eq!(url, format!("{nobody}{WELL_KNOWN}"));
    }

    #[tokio::test]
    async fn a_bad_document_or_jwks_uri_is_refused() {
        let http = reqwest::Client::new();
        let issuer = issuer_with_keys(jwks(&[ec_jwk("P-256", "k1")])).await;
        issuer.serve(WELL_KNOWN, 200, "not json");
        let (_, message) = fetch_error(fetch_keys(&http, &issuer.url).await);
        assert!(message.contains("invalid discovery document"), "{message}");

        let doc = json!({"issuer": issuer.url, "jwks_uri": "http://keys.example/jwks"});
        issuer.serve(WELL_KNOWN, 200, doc.to_string());
        let (url, message) = fetch_error(fetch_keys(&http, &issuer.url).await);
        assert_eq!(url, format!("{}{WELL_KNOWN}", issuer.url));
        assert!(message.contains("only allowed on loopback"), "{message}");
    }

    /// A JWKS of exactly `len` bytes (one key, then spaces).
    fn jwks_of_len(len: usize) -> Vec<u8> {
        let mut doc = jwks(&[ec_jwk("P-256", "k1")]);
        doc.resize(len, b' ');
        doc
    }

    #[tokio::test]
    async fn documents_up_to_1_mib_are_read_and_larger_ones_refused() {
        let http = reqwest::Client::new();
        let issuer = issuer_with_keys(jwks_of_len(MAX_BYTES)).await;
        assert_eq!(fetch_keys(&http, &issuer.url).await.unwrap().len(), 1);

        for len in [MAX_BYTES + 1, 3 * MAX_BYTES + 7] {
            issuer.serve("/keys", 200, jwks_of_len(len));
            let (url, message) = fetch_error(fetch_keys(&http, &issuer.url).await);
            assert_eq!(url, format!("{}/keys", issuer.url));
            assert_eq!(message, "document larger than 1 MiB");
        }
        // The discovery document is bounded the same way.
        let mut doc = json!({"issuer": issuer.url, "jwks_uri": format!("{}/keys", issuer.url)})
            .to_string()
            .into_bytes();
        doc.resize(MAX_BYTES + 1, b' ');
        issuer.serve(WELL_KNOWN, 200, doc);
        let (url, message) = fetch_error(fetch_keys(&http, &issuer.url).await);
        assert_eq!(url, format!("{}{WELL_KNOWN}", issuer.url));
        assert_eq!(message, "document larger than 1 MiB");
    }
}
