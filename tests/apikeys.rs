//! API keys through the real server on 127.0.0.1:0, called with envoy-types'
//! AuthorizationClient: keys minted at test time, key files written as an operator
//! would, and every log the server writes searched for the secrets.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hopwarden::apikey::NewKey;

const PARTNER: &str = "transcription-partner";

const MEDIA_POLICY: &str = r#"
service: media
rules:
  - id: partner-writes-transcripts
    from: { principals: [transcription-partner], credentials: [api_key] }
    to: [{ methods: [PUT, GET], paths: ["/transcripts/{id}"] }]
    scopes: [media.transcripts.write]
  - id: partner-admin-with-jwt-only
    from: { principals: [transcription-partner], credentials: [jwt] }
    to: [{ paths: ["/admin/**"] }]
"#;

/// One key file entry, as `apikey new` prints it, with optional validity times.
fn entry(key: &NewKey, principal: &str, extra: &str) -> String {
    format!(
        "  - id: {}\n    digest: {}\n    principal: {principal}\n    scopes: [media.transcripts.write]\n{extra}",
        key.id,
        key.digest()
    )
}

fn write_keys(d: &Deployment, entries: &[String]) {
    let tmp = d.path().join(".keys.yaml.tmp");
    std::fs::write(&tmp, format!("keys:\n{}", entries.concat())).unwrap();
    std::fs::rename(&tmp, d.path().join("keys.yaml")).unwrap();
}

fn rfc3339(offset_secs: i64) -> String {
    let t = (now() as i64 + offset_secs) as u64;
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(t)).to_string()
}

fn keys_config(d: &Deployment) -> hopwarden::config::Config {
    d.config(
        "",
        "policy_poll_interval: 1s\napi_keys:\n  - file: keys.yaml\n    header: x-api-key\n",
    )
}

fn put() -> Check {
    Check::new("media", "PUT", "/transcripts/t-1")
}

fn tamper(key: &str) -> String {
    // A character in the middle of the secret (the last one carries one bit only).
    let i = key.len() - 10;
    let c = if &key[i..=i] == "b" { "c" } else { "b" };
    format!("{}{c}{}", &key[..i], &key[i + 1..])
}

/// Every decision log line, as text: what the log-secrecy checks search.
fn log_text(d: &Deployment) -> String {
    std::fs::read_to_string(d.path().join("decisions.log")).unwrap_or_default()
}

fn secret_of(key: &NewKey) -> String {
    key.reveal().rsplit('_').next().unwrap().to_string()
}

#[tokio::test]
async fn keys_are_credentials_like_any_other() {
    let d = Deployment::new(&[("media.yaml", MEDIA_POLICY)]);
    let good = NewKey::generate().unwrap();
    let other = NewKey::generate().unwrap();
    let expired = NewKey::generate().unwrap();
    let early = NewKey::generate().unwrap();
    let never_written = NewKey::generate().unwrap();
    write_keys(
        &d,
        &[
            entry(&good, PARTNER, ""),
            entry(&other, "someone-else", ""),
            entry(
                &expired,
                PARTNER,
                &format!("    expires: {}\n", rfc3339(-60)),
            ),
            entry(
                &early,
                PARTNER,
                &format!("    not_before: {}\n", rfc3339(3600)),
            ),
        ],
    );
    let s = TestServer::start(keys_config(&d)).await;
    let key = good.reveal();
    let scheme = |k: &str| format!("ApiKey {k}");

    // A valid key, in `authorization: ApiKey` and in the configured header.
    for check in [
        put().header("authorization", &scheme(&key)),
        put().header("x-api-key", &key),
    ] {
        let a = s.check(check).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.header("x-hopwarden-principal"), Some(PARTNER));
        assert_eq!(a.header("x-hopwarden-api-key"), Some(good.id.as_str()));
        assert_eq!(
            a.header("x-hopwarden-rule"),
            Some("partner-writes-transcripts")
        );
        assert_eq!(a.metadata.get("api_key"), Some(&good.id));
    }
    // A client's forged copy of the key id header is overwritten.
    let a = s
        .check(
            put()
                .header("x-api-key", &key)
                .header("x-hopwarden-api-key", "forged"),
        )
        .await;
    assert_eq!(a.header("x-hopwarden-api-key"), Some(good.id.as_str()));

    let jwt = token(PARTNER, "media", "");
    let cases: Vec<(&str, Check, u16)> = vec![
        (
            "another principal's key",
            put().header("x-api-key", &other.reveal()),
            403,
        ),
        // After the good key's allow is cached: same id, other secret.
        (
            "tampered secret",
            put().header("x-api-key", &tamper(&key)),
            401,
        ),
        (
            "tampered, ApiKey scheme",
            put().header("authorization", &scheme(&tamper(&key))),
            401,
        ),
        (
            "unknown id",
            put().header("x-api-key", &never_written.reveal()),
            401,
        ),
        ("expired", put().header("x-api-key", &expired.reveal()), 401),
        (
            "not yet valid",
            put().header("x-api-key", &early.reveal()),
            401,
        ),
        ("wrong header", put().header("x-other-key", &key), 401),
        ("as a bearer token", put().bearer(&key), 401),
        ("malformed", put().header("x-api-key", "hwk_nope"), 401),
        (
            "in the query string",
            Check::new("media", "PUT", &format!("/transcripts/t-1?api_key={key}")),
            401,
        ),
        (
            "key and bearer token",
            put().header("x-api-key", &key).bearer(&jwt),
            401,
        ),
        (
            "key twice",
            put()
                .header("x-api-key", &key)
                .header("authorization", &scheme(&key)),
            401,
        ),
        (
            "JWT-only endpoint, key",
            Check::new("media", "GET", "/admin/x").header("x-api-key", &key),
            403,
        ),
        (
            "JWT-only endpoint, JWT",
            Check::new("media", "GET", "/admin/x").bearer(&jwt),
            200,
        ),
        (
            "key rule, JWT",
            put().bearer(&token(PARTNER, "media", "media.transcripts.write")),
            403,
        ),
    ];
    for (what, check, want) in cases {
        let a = s.check(check).await;
        assert_eq!(a.status, want, "{what}: {a:?}");
        if want == 401 {
            assert!(a.header("x-hopwarden-api-key").is_none(), "{what}");
        }
    }

    // The decision log names the key id (also of refused keys), never a secret.
    let log = eventually(Duration::from_secs(5), || async {
        d.decisions()
            .iter()
            .filter(|r| r["api_key"].is_string())
            .count()
            >= 10
    })
    .await;
    assert!(log, "{}", log_text(&d));
    let decisions = d.decisions();
    let allowed = decisions
        .iter()
        .find(|r| r["decision"] == "allow" && r["api_key"] == good.id.as_str())
        .expect("an allow naming the key id");
    assert_eq!(allowed["principal"], PARTNER);
    // The key's scopes, as the key file grants them.
    assert_eq!(
        allowed["scopes"],
        serde_json::json!(["media.transcripts.write"])
    );
    let details: Vec<&str> = decisions
        .iter()
        .filter_map(|r| r["detail"].as_str())
        .collect();
    for want in [
        "api_key_bad_secret",
        "api_key_unknown",
        "api_key_expired",
        "api_key_not_yet_valid",
        "two_credentials",
    ] {
        assert!(details.contains(&want), "{want} in {details:?}");
    }
    let text = log_text(&d);
    for k in [&good, &other, &expired, &early, &never_written] {
        assert!(
            !text.contains(&secret_of(k)),
            "a secret in the decision log"
        );
    }
    assert!(!text.contains(&secret_of_str(&tamper(&key))));
    // Metrics name valid keys by id only.
    let metrics = s.handle.engine.metrics().encode();
    assert!(
        metrics.contains(&format!("key_id=\"{}\",result=\"ok\"", good.id)),
        "{metrics}"
    );
    assert!(!metrics.contains(&never_written.id));
    assert!(!metrics.contains(&secret_of(&good)));
}

fn secret_of_str(key: &str) -> String {
    key.rsplit('_').next().unwrap().to_string()
}

/// A key that expires while its allow is cached is refused from that moment.
#[tokio::test]
async fn a_cached_allow_ends_when_the_key_expires() {
    let d = Deployment::new(&[("media.yaml", MEDIA_POLICY)]);
    let key = NewKey::generate().unwrap();
    write_keys(
        &d,
        &[entry(
            &key,
            PARTNER,
            &format!("    expires: {}\n", rfc3339(2)),
        )],
    );
    let s = TestServer::start(keys_config(&d)).await;
    let check = || put().header("x-api-key", &key.reveal());
    assert_eq!(s.check(check()).await.status, 200);
    assert_eq!(s.check(check()).await.status, 200);
    let expired = eventually(Duration::from_secs(5), || async {
        s.check(check()).await.status == 401
    })
    .await;
    assert!(expired, "the key never stopped working");
}

/// Removing a key's entry from the file revokes it while checks keep coming; an invalid
/// file keeps the last good keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_by_editing_the_key_file_under_load() {
    let d = Deployment::new(&[("media.yaml", MEDIA_POLICY)]);
    let (revoked, kept) = (NewKey::generate().unwrap(), NewKey::generate().unwrap());
    write_keys(
        &d,
        &[entry(&revoked, PARTNER, ""), entry(&kept, PARTNER, "")],
    );
    let s = Arc::new(TestServer::start(keys_config(&d)).await);

    // A broken edit first: the last good keys keep serving.
    std::fs::write(
        d.path().join("keys.yaml"),
        "keys:\n  - id: x\n    digets: nope\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let a = s.check(put().header("x-api-key", &revoked.reveal())).await;
    assert_eq!(
        a.status, 200,
        "an invalid file must keep the last good keys: {a:?}"
    );
    let metrics = s.handle.engine.metrics().encode();
    assert!(
        metrics.contains("hopwarden_api_key_reloads_total{result=\"error\"}"),
        "the broken file was never read: {metrics}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let revoked_seen = Arc::new(AtomicBool::new(false));
    let allowed_after_revoked = Arc::new(AtomicU32::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (s, stop, seen, late) = (
            s.clone(),
            stop.clone(),
            revoked_seen.clone(),
            allowed_after_revoked.clone(),
        );
        let key = revoked.reveal();
        load.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let status = s.check(put().header("x-api-key", &key)).await.status;
                match status {
                    401 => seen.store(true, Ordering::SeqCst),
                    200 if seen.load(Ordering::SeqCst) => {
                        late.fetch_add(1, Ordering::SeqCst);
                    }
                    200 => {}
                    other => panic!("unexpected status {other}"),
                }
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    write_keys(&d, &[entry(&kept, PARTNER, "")]);
    let done = eventually(Duration::from_secs(5), || async {
        revoked_seen.load(Ordering::SeqCst)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut checks = 0;
    for t in load {
        checks += t.await.unwrap();
    }
    assert!(done, "the removed key was never refused");
    assert!(checks > 50, "too little load: {checks} checks");
    // Revocation is one atomic swap: once any check saw it, none is allowed again.
    // (A check already past the key lookup when the swap landed may still finish
    // with the old keys; it started before the revocation.)
    assert!(
        allowed_after_revoked.load(Ordering::SeqCst) <= 4,
        "allowed after revocation"
    );
    assert_eq!(
        s.check(put().header("x-api-key", &revoked.reveal()))
            .await
            .status,
        401
    );
    assert_eq!(
        s.check(put().header("x-api-key", &kept.reveal()))
            .await
            .status,
        200
    );
}

/// The binary as a user runs it, at debug level: no log line on stdout or stderr, and
/// no decision log line, contains a key's secret.
#[test]
fn no_log_of_the_served_binary_contains_a_secret() {
    let d = Deployment::new(&[("media.yaml", MEDIA_POLICY)]);
    let key = NewKey::generate().unwrap();
    write_keys(&d, &[entry(&key, PARTNER, "")]);
    let port = free_port_for_test();
    let config = d
        .config_text(
            "",
            "api_keys:\n  - file: keys.yaml\n    header: x-api-key\n",
        )
        .replace(
            "listen: 127.0.0.1:0\n",
            &format!("listen: 127.0.0.1:{port}\n"),
        )
        .replace("level: warn", "level: debug");
    let config_path = d.path().join("hopwarden.yaml");
    std::fs::write(&config_path, config).unwrap();
    let out = std::fs::File::create(d.path().join("stdout.log")).unwrap();
    let err = std::fs::File::create(d.path().join("stderr.log")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hopwarden"))
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "debug")
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let statuses = rt.block_on(async {
        let url = format!("http://127.0.0.1:{port}");
        let mut channel = None;
        for _ in 0..100 {
            if let Ok(c) = tonic::transport::Channel::from_shared(url.clone()).unwrap().connect().await {
                channel = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(
            channel.expect("the server listens"),
        );
        let k = key.reveal();
        let mut statuses = Vec::new();
        for check in [
            put().header("x-api-key", &k),
            put().header("authorization", &format!("ApiKey {k}")),
            put().header("x-api-key", &tamper(&k)),
            put().bearer(&k),
            Check::new("media", "PUT", &format!("/transcripts/t-1?key={k}")),
        ] {
            let resp = client.clone().check(check.build()).await.unwrap().into_inner();
            statuses.push(Answer::from(resp).status);
        }
        statuses
    });
    assert_eq!(statuses, [200, 200, 401, 401, 401]);
    std::thread::sleep(Duration::from_millis(300));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let secrets = [secret_of(&key), secret_of_str(&tamper(&key.reveal()))];
    let mut read = 0;
    for log in ["stdout.log", "stderr.log", "decisions.log"] {
        let text = std::fs::read_to_string(d.path().join(log)).unwrap_or_default();
        read += text.len();
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{log} contains a secret:\n{text}"
            );
        }
    }
    let stdout = std::fs::read_to_string(d.path().join("stdout.log")).unwrap();
    assert!(stdout.contains("api keys loaded"), "{stdout}");
    assert!(stdout.contains("DEBUG"), "debug logging was on: {stdout}");
    let decisions = std::fs::read_to_string(d.path().join("decisions.log")).unwrap();
    assert_eq!(decisions.lines().count(), 5, "{decisions}");
    assert!(decisions.contains(&key.id));
    assert!(read > 0);
}

fn free_port_for_test() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The ext_authz HTTP service (`http_listen`) takes keys the same way.
#[tokio::test]
async fn the_http_service_takes_keys_too() {
    let d = Deployment::new(&[("media.yaml", MEDIA_POLICY)]);
    let key = NewKey::generate().unwrap();
    write_keys(&d, &[entry(&key, PARTNER, "")]);
    let s = TestServer::start(d.config(
        "",
        "http_listen: 127.0.0.1:0\napi_keys:\n  - file: keys.yaml\n    header: x-api-key\n",
    ))
    .await;
    let addr = s.handle.http_addr.expect("http_listen is bound");
    let http = reqwest::Client::new();
    let k = key.reveal();
    let url = format!("http://{addr}/gateway/media/transcripts/t-1");
    let scheme = format!("ApiKey {k}");
    for (name, value) in [
        ("x-api-key", k.as_str()),
        ("authorization", scheme.as_str()),
    ] {
        let r = http.put(&url).header(name, value).send().await.unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let id = r
            .headers()
            .get("x-hopwarden-api-key")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(id.as_deref(), Some(key.id.as_str()));
    }
    let tampered = tamper(&k);
    let r = http
        .put(&url)
        .header("x-api-key", &tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http.put(format!("{url}?api_key={k}")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}
