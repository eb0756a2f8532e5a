//! The `hopwarden` binary as a user runs it: validate, serve with the example config,
//! SIGHUP reload, SIGTERM drain.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{dev_token, repo, run_bin as run, Check, PAYMENTS};

const BIN: &str = env!("CARGO_BIN_EXE_hopwarden");

#[test]
fn token_refuses_a_key_other_than_the_dev_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("other.pem");
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&key)
        .output()
        .expect("openssl");
    assert!(out.status.success());
    let key = key.to_str().unwrap();
    let (code, _, err) = run(
        &["token", "--sub", "x", "--aud", "y", "--key", key],
        dir.path(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("refusing to sign"), "{err}");
    let (code, out, err) = run(
        &[
            "token",
            "--sub",
            "x",
            "--aud",
            "y",
            "--key",
            key,
            "--allow-non-dev-key",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim().split('.').count(), 3);
    // --jwks prints the public key set matching the committed dev JWKS.
    let (code, out, _) = run(&["token", "--jwks"], dir.path());
    assert_eq!(code, 0);
    let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("dev/jwks.json")).unwrap())
            .unwrap();
    assert_eq!(printed["keys"][0]["n"], committed["keys"][0]["n"]);
    assert!(printed["keys"][0].get("d").is_none(), "no private part");
}

#[test]
fn validate_accepts_the_example_config() {
    let (code, out, err) = run(&["validate"], &repo());
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("ok: 1 issuer(s), 5 service policy(ies)"),
        "{out}"
    );
}

/// A directory with `hopwarden.yaml` (`policies: policies`) and these policy files.
fn policy_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join("policies").join(name), text).unwrap();
    }
    std::fs::write(dir.path().join("hopwarden.yaml"), "policies: policies\n").unwrap();
    dir
}

/// The `allowed_headers` line `validate` prints for `policies` in `dir`.
fn printed_allowed_headers(dir: &Path) -> String {
    let (code, out, err) = run(&["validate"], dir);
    assert_eq!(code, 0, "{out}{err}");
    let line = out.lines().nth(1).unwrap_or_default();
    let at = line
        .find("allowed_headers: ")
        .unwrap_or_else(|| panic!("{out}"));
    line[at..].to_string()
}

#[test]
fn validate_prints_the_headers_envoy_must_send_including_every_when_header() {
    let dir = policy_dir(&[
        (
            "a.yaml",
            "service: a\nrules:\n  - id: tenant-only\n    effect: deny\n    when: {headers: {X-Tenant: [evil]}}\n",
        ),
        (
            "b.yaml",
            "service: b\nrules:\n  - id: debug\n    when: {headers: {x-debug: [\"1\"], x-tenant: [acme]}}\n",
        ),
    ]);
    assert_eq!(
        printed_allowed_headers(dir.path()),
        "allowed_headers: { patterns: [{ exact: authorization }, { exact: content-type }, \
         { exact: x-debug }, { exact: x-request-id }, { exact: x-tenant }, { prefix: x-hopwarden- }] }"
    );
}

/// The benchmark's ext_authz setups send only what hopwarden reads: exactly what
/// `validate` prints for the benchmark's policies, so a rule reading a new header
/// cannot be starved of it there.
#[test]
fn the_benchmark_envoy_configs_send_what_validate_prints() {
    let dir = tempfile::tempdir().unwrap();
    let policies = repo().join("bench/policies");
    std::fs::write(
        dir.path().join("hopwarden.yaml"),
        format!("policies: {}\n", policies.display()),
    )
    .unwrap();
    let printed = printed_allowed_headers(dir.path());
    for config in ["d-hopwarden", "e-noop", "f-hopwarden-http"] {
        let text =
            std::fs::read_to_string(repo().join(format!("bench/envoy/{config}.yaml"))).unwrap();
        assert!(text.contains(&printed), "{config}.yaml lacks {printed}");
    }
}

/// The HTTP service gets only the headers `allowed_headers` names, so the gateway on
/// it must send what `validate` prints for the example policies, or a rule reading a
/// header would never see it (and forged `x-hopwarden-*` copies would not be removed).
#[test]
fn the_http_gateway_sends_what_validate_prints() {
    let printed = printed_allowed_headers(&repo());
    let text = std::fs::read_to_string(repo().join("envoy/gateway-http.yaml")).unwrap();
    assert!(text.contains(&printed), "gateway-http.yaml lacks {printed}");
}

#[test]
fn validate_reports_every_error_with_location() {
    let dir = policy_dir(&[
        ("a.yaml", "service: a\nrules:\n  - id: r1\n    form: {}\n"),
        (
            "b.yaml",
            "service: b\nrules:\n  - id: r2\n    to: [{paths: [\"/x/**/y\"]}]\n",
        ),
    ]);
    let (code, out, err) = run(&["validate"], dir.path());
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("a.yaml:4:5: "), "{err}");
    assert!(err.contains("unknown field `form`"), "{err}");
    assert!(err.contains("b.yaml:4:"), "{err}");
    assert!(err.contains("/x/**/y"), "{err}");

    std::fs::write(dir.path().join("bad.yaml"), "listen: nowhere\n").unwrap();
    let (code, _, err) = run(&["validate", "--config", "bad.yaml"], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("bad.yaml:1:"), "{err}");

    let (code, _, err) = run(&["validate", "--config", "missing.yaml"], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("missing.yaml"), "{err}");
}

/// A running `hopwarden serve` process whose stdout lines arrive on a channel.
struct Serve {
    child: Child,
    lines: mpsc::Receiver<String>,
    addr: String,
}

impl Serve {
    fn start(config: &Path, cwd: &Path) -> Serve {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .current_dir(cwd)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut serve = Serve {
            child,
            lines,
            addr: String::new(),
        };
        // Both lines come, in either order: listening, and keys loaded (SERVING).
        let mut ready = false;
        while serve.addr.is_empty() || !ready {
            let line = serve.wait_for("\"message\"");
            if line.contains("hopwarden listening") {
                let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
                serve.addr = v["addr"].as_str().unwrap().to_string();
            }
            ready |= line.contains("all issuer keys loaded");
        }
        serve
    }

    fn wait_for(&mut self, needle: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("no log line containing {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example config with only the listen addresses changed.
fn example_config(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("hopwarden.yaml")).unwrap();
    let text = text
        .replace("http_listen: 127.0.0.1:9193", "http_listen: 127.0.0.1:0")
        .replace("listen: 127.0.0.1:9191", "listen: 127.0.0.1:0")
        .replace("listen: 127.0.0.1:9192", "listen: 127.0.0.1:0")
        .replace("./policies", &repo().join("policies").display().to_string())
        .replace("./dev/", &format!("{}/", repo().join("dev").display()));
    assert!(
        !text.contains(":919"),
        "a listen address was not substituted"
    );
    let path = dir.join("hopwarden.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn check(addr: &str, req: Check) -> common::Answer {
    let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        format!("http://{addr}"),
    )
    .await
    .unwrap();
    common::Answer::from(client.check(req.build()).await.unwrap().into_inner())
}

// Multi-threaded: the blocking log reads below must not starve the client's
// connection task, which has to see the server's GOAWAY for the drain to finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_config_serves_dev_tokens_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = example_config(dir.path());
    let mut serve = Serve::start(&config, dir.path());
    // The token a user would mint: `hopwarden token` with the built-in dev key.
    let (code, out, err) = run(
        &[
            "token",
            "--sub",
            PAYMENTS,
            "--aud",
            "ledger",
            "--scope",
            "ledger.read",
            "--ttl",
            "2m",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let t = out.trim().to_string();
    let a = check(
        &serve.addr,
        Check::new("ledger", "GET", "/transactions/42").bearer(&t),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = check(
        &serve.addr,
        Check::new("ledger", "POST", "/refunds").bearer(&t),
    )
    .await;
    assert_eq!(a.status, 403);
    // In-process minting with the committed PEM gives a token the server accepts too,
    // so dev/dev-key.pem, the built-in key and dev/jwks.json agree.
    let t_pem = dev_token(PAYMENTS, "ledger", "ledger.read");
    let req = Check::new("ledger", "GET", "/transactions/42")
        .bearer(&t_pem)
        .header("cookie", "session=s3cr3t");
    assert_eq!(check(&serve.addr, req).await.status, 200);

    // One JSON decision line per check, with no token in it.
    let line = serve.wait_for("\"decision\"");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["service"], "ledger");
    assert!(
        !line.contains(&t[..40]),
        "token leaked into the log: {line}"
    );
    assert!(!line.to_lowercase().contains("bearer"), "{line}");
    // The other two checks' lines (the cookie was on the last), then nothing more.
    let is_decision = |l: &String| l.contains("\"decision\"");
    let mut rest: Vec<String> = Vec::new();
    while rest.iter().filter(|l| is_decision(l)).count() < 2 {
        let l = serve
            .lines
            .recv_timeout(Duration::from_secs(20))
            .expect("a decision line for each check");
        rest.push(l);
    }
    rest.extend(std::iter::from_fn(|| {
        serve.lines.recv_timeout(Duration::from_millis(500)).ok()
    }));
    for l in &rest {
        assert!(
            !l.contains("s3cr3t") && !l.contains(&t_pem[..40]),
            "secret in the log: {l}"
        );
    }
    assert_eq!(
        rest.iter().filter(|l| is_decision(l)).count(),
        2,
        "one line per decision: {rest:?}"
    );

    serve.signal("TERM");
    let status = serve.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM must exit 0");
}

#[tokio::test]
async fn sighup_reloads_policies() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::copy(
        repo().join("policies/ledger.yaml"),
        dir.path().join("policies/ledger.yaml"),
    )
    .unwrap();
    let text = std::fs::read_to_string(example_config(dir.path())).unwrap();
    let text = text.replace(&repo().join("policies").display().to_string(), "policies");
    std::fs::write(dir.path().join("hopwarden.yaml"), text).unwrap();
    let mut serve = Serve::start(&dir.path().join("hopwarden.yaml"), dir.path());
    serve.signal("HUP");
    let line = serve.wait_for("policies reloaded");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["generation"], 2);
    assert_eq!(v["services"], 1);
}

// `worker_threads: 1` runs on tokio's current-thread scheduler (main.rs): the same
// server must answer, reload on SIGHUP (a blocking-pool task) and drain on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_thread_serves_reloads_and_drains() {
    let dir = tempfile::tempdir().unwrap();
    let config = example_config(dir.path());
    let text = std::fs::read_to_string(&config).unwrap() + "worker_threads: 1\n";
    std::fs::write(&config, text).unwrap();
    let mut serve = Serve::start(&config, dir.path());
    let t = dev_token(PAYMENTS, "ledger", "ledger.read");
    let allowed = Check::new("ledger", "GET", "/transactions/42").bearer(&t);
    assert_eq!(check(&serve.addr, allowed.clone()).await.status, 200);
    let refused = Check::new("ledger", "POST", "/refunds").bearer(&t);
    assert_eq!(check(&serve.addr, refused).await.status, 403);
    serve.signal("HUP");
    serve.wait_for("policies reloaded");
    assert_eq!(check(&serve.addr, allowed).await.status, 200);
    serve.signal("TERM");
    let status = serve.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM must exit 0");
}
