//! A third party through the real Envoy edge gateway with an API key: the repository's
//! own envoy/ configs, policies and example config, with the partner's key file
//! replaced by one whose key is minted by this test. Fails, never skips, when Envoy is
//! missing.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::repo;
use common::stack::{envoy_binary, Stack, StackSpec};
use hopwarden::apikey::NewKey;
use serde_json::Value;

/// The repository as the stack reads it (links to the real files) but for
/// dev/partner-keys.yaml, which holds the entries given.
fn repo_with_keys(dir: &Path, entries: &str) -> PathBuf {
    let real = repo();
    let copy = dir.join("repo");
    std::fs::create_dir_all(copy.join("dev")).unwrap();
    for name in ["envoy", "scripts", "policies", "hopwarden.yaml"] {
        std::os::unix::fs::symlink(real.join(name), copy.join(name)).unwrap();
    }
    for entry in std::fs::read_dir(real.join("dev")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "partner-keys.yaml" {
            std::os::unix::fs::symlink(&path, copy.join("dev").join(path.file_name().unwrap()))
                .unwrap();
        }
    }
    write_keys(&copy, entries);
    copy
}

fn write_keys(repo: &Path, entries: &str) {
    let tmp = repo.join("dev/.partner-keys.yaml.tmp");
    std::fs::write(&tmp, format!("keys:\n{entries}")).unwrap();
    std::fs::rename(&tmp, repo.join("dev/partner-keys.yaml")).unwrap();
}

fn entry(key: &NewKey) -> String {
    format!(
        "  - id: {}\n    digest: {}\n    principal: \"partner:transcribe-co\"\n    scopes: [media.transcribe]\n",
        key.id,
        key.digest()
    )
}

async fn post(http: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = http.post(url).header("host", "media.localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_calls_the_gateway_with_an_api_key() {
    let dir = tempfile::tempdir().unwrap();
    let (key, other) = (NewKey::generate().unwrap(), NewKey::generate().unwrap());
    let copy = repo_with_keys(dir.path(), &format!("{}{}", entry(&key), entry(&other)));
    let spec = StackSpec {
        repo: copy.clone(),
        dir: dir.path().to_path_buf(),
        certs: dir.path().join("certs"),
        hopwarden: PathBuf::from(env!("CARGO_BIN_EXE_hopwarden")),
        demo: common::stack::demo_service_binary(),
        envoy: envoy_binary(&repo()).unwrap_or_else(|e| panic!("{e}")),
        fixed_ports: false,
    };
    let stack = Stack::start(&spec).unwrap_or_else(|e| panic!("stack did not start: {e}"));
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", stack.ports.gateway);
    let submit = format!("{base}/partners/transcribe-co/jobs/9/transcript");
    let k = key.reveal();

    // The key in x-api-key and in `authorization: ApiKey`: the upstream sees the
    // partner's principal and the key id, never a forged copy.
    let scheme = format!("ApiKey {k}");
    for (name, value) in [
        ("x-api-key", k.as_str()),
        ("authorization", scheme.as_str()),
    ] {
        let (status, body) = post(
            &http,
            &submit,
            &[(name, value), ("x-hopwarden-api-key", "forged")],
        )
        .await;
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body["service"], "media", "{body}");
        assert_eq!(body["principal"], "partner:transcribe-co", "{body}");
        assert_eq!(body["rule"], "partner-key-submit-transcript", "{body}");
        assert_eq!(
            body["hopwarden_headers"]["x-hopwarden-api-key"],
            key.id.as_str(),
            "{body}"
        );
    }

    // Tampered, in the query string, and reaching past its one rule.
    let i = k.len() - 10;
    let tampered = format!(
        "{}{}{}",
        &k[..i],
        if &k[i..=i] == "b" { "c" } else { "b" },
        &k[i + 1..]
    );
    let (status, _) = post(&http, &submit, &[("x-api-key", &tampered)]).await;
    assert_eq!(status, 401);
    let (status, _) = post(&http, &format!("{submit}?api_key={k}"), &[]).await;
    assert_eq!(status, 401);
    let audio = format!("{base}/partners/transcribe-co/jobs/9/audio");
    let resp = http
        .get(&audio)
        .header("host", "media.localhost")
        .header("x-api-key", &k)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        403,
        "job reads take the partner's tokens only"
    );

    // Revocation: the entry leaves the file; the next requests are refused.
    write_keys(&copy, &entry(&other));
    let revoked = common::eventually(Duration::from_secs(10), || async {
        post(&http, &submit, &[("x-api-key", &k)]).await.0 == 401
    })
    .await;
    assert!(
        revoked,
        "the removed key still works:\n{}",
        stack.log("hopwarden")
    );
    let (status, _) = post(&http, &submit, &[("x-api-key", &other.reveal())]).await;
    assert_eq!(status, 200, "the other key stays");

    // hopwarden's logs (its own and the decision log, on stdout) name the key id and
    // never a secret.
    let log = stack.log("hopwarden");
    assert!(log.contains(&key.id), "{log}");
    for secret in [&k, &tampered, &other.reveal()] {
        let secret = secret.rsplit('_').next().unwrap();
        assert!(!log.contains(secret), "a secret in hopwarden's log");
    }
}
