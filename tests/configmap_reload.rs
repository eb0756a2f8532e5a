//! Policies mounted from a Kubernetes ConfigMap: the kubelet never edits the files in
//! place. Each key is a symlink `ledger.yaml -> ..data/ledger.yaml`, `..data` is a
//! symlink to a timestamped directory, and an update writes a new timestamped
//! directory, points a `..data_tmp` symlink at it, renames that over `..data` (the one
//! atomic step), adds or removes the keys' symlinks and deletes the old directory
//! (kubernetes pkg/volume/util/atomic_writer.go). This test does exactly that while a
//! real gRPC client checks without pause against the real server.

mod common;

use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// A policy directory as the kubelet lays out a ConfigMap volume.
struct KubeletVolume {
    dir: PathBuf,
    current: Option<(String, Vec<String>)>,
    updates: u32,
    /// A pause between the `..data` swap and the key symlinks' update: a slow kubelet,
    /// so that a reload lands where a removed key's symlink dangles.
    pause_after_swap: Duration,
}

impl KubeletVolume {
    fn new(dir: PathBuf) -> KubeletVolume {
        KubeletVolume {
            dir,
            current: None,
            updates: 0,
            pause_after_swap: Duration::ZERO,
        }
    }

    /// Publishes `files` as the ConfigMap's whole content, in the kubelet's order.
    fn publish(&mut self, files: &[(&str, &str)]) {
        self.updates += 1;
        let stamp = format!("..2026_12_05_10_00_{:02}.123456789", self.updates);
        let data = self.dir.join(&stamp);
        std::fs::create_dir(&data).unwrap();
        for (name, text) in files {
            std::fs::write(data.join(name), text).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        symlink(&stamp, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        std::thread::sleep(self.pause_after_swap);
        let keys: Vec<String> = files.iter().map(|(n, _)| n.to_string()).collect();
        for key in &keys {
            let link = self.dir.join(key);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{key}"), &link).unwrap();
            }
        }
        if let Some((old, old_keys)) = self.current.take() {
            for key in old_keys.iter().filter(|k| !keys.contains(k)) {
                std::fs::remove_file(self.dir.join(key)).unwrap();
            }
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
        self.current = Some((stamp, keys));
    }
}

const LEDGER_V1: &str = r#"
service: ledger
rules:
  - id: payments-read-transactions
    from: { principals: ["spiffe://hopwarden.local/ns/payments/sa/payments"] }
    to: [{ methods: [GET], paths: ["/transactions/{id}"] }]
    scopes: [ledger.read]
"#;

/// V1 plus statements: the probe check turns from 403 to 200.
const LEDGER_V2: &str = r#"
service: ledger
rules:
  - id: payments-read-transactions
    from: { principals: ["spiffe://hopwarden.local/ns/payments/sa/payments"] }
    to: [{ methods: [GET], paths: ["/transactions/{id}"] }]
    scopes: [ledger.read]
  - id: payments-read-statements
    from: { principals: ["spiffe://hopwarden.local/ns/payments/sa/payments"] }
    to: [{ methods: [GET], paths: ["/statements/{id}"] }]
    scopes: [ledger.read]
"#;

/// An unknown key: the whole update is refused.
const LEDGER_INVALID: &str = r#"
service: ledger
rules:
  - id: payments-read-everything
    from: { principals: ["spiffe://hopwarden.local/ns/payments/sa/payments"] }
    to: [{ paths: ["/**"] }]
    bogus: true
"#;

const EMAIL: &str = r#"
service: email
rules:
  - id: payments-send-receipts
    from: { principals: ["spiffe://hopwarden.local/ns/payments/sa/payments"] }
    to: [{ methods: [POST], paths: ["/send"] }]
    scopes: [email.send]
"#;

async fn metric(admin: std::net::SocketAddr, series: &str) -> f64 {
    let page = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    page.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swaps_reload_without_failing_a_check() {
    let d = Deployment::new(&[]);
    let mut volume = KubeletVolume::new(d.policy_dir());
    volume.publish(&[("ledger.yaml", LEDGER_V1)]);
    let s = TestServer::start(d.config("", "")).await;
    let admin = s.handle.admin_addr.expect("admin enabled");

    let ledger_token = token(PAYMENTS, "ledger", "ledger.read");
    let email_token = token(PAYMENTS, "email", "email.send");
    let stable = Check::new("ledger", "GET", "/transactions/42").bearer(&ledger_token);
    let probe = Check::new("ledger", "GET", "/statements/7").bearer(&ledger_token);
    let email = Check::new("email", "POST", "/send").bearer(&email_token);
    assert_eq!(s.check(stable.clone()).await.status, 200);
    assert_eq!(s.check(probe.clone()).await.status, 403);

    // Checks without pause, one after another on one connection, for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let checker = {
        let (stop, client) = (stop.clone(), s.client.clone());
        let (stable, probe) = (stable.build(), probe.build());
        tokio::spawn(async move {
            let mut stable_answers = Vec::new();
            let mut probe_answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for (req, answers) in [(&stable, &mut stable_answers), (&probe, &mut probe_answers)]
                {
                    let answer = client.clone().check(req.clone()).await;
                    answers.push(answer.map(|r| Answer::from(r.into_inner()).status));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (stable_answers, probe_answers)
        })
    };
    let status = |c: &Check| {
        let (s, c) = (&s, c.clone());
        async move { s.check(c).await.status }
    };

    // A new key's content and a new key: both take effect.
    volume.publish(&[("ledger.yaml", LEDGER_V2), ("email.yaml", EMAIL)]);
    assert!(
        eventually(Duration::from_secs(10), || async {
            status(&probe).await == 200 && status(&email).await == 200
        })
        .await,
        "the swapped-in policies never took effect"
    );

    // An invalid update is refused as a whole: the last good set keeps answering.
    let generation = metric(admin, "hopwarden_policy_generation").await;
    let errors = r#"hopwarden_policy_reloads_total{result="error"}"#;
    let errors_before = metric(admin, errors).await;
    volume.publish(&[("ledger.yaml", LEDGER_INVALID), ("email.yaml", EMAIL)]);
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(admin, errors).await > errors_before
        })
        .await,
        "the invalid update was never tried"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        metric(admin, "hopwarden_policy_generation").await,
        generation
    );
    assert_eq!(status(&probe).await, 200, "last good ledger policy lost");
    assert_eq!(status(&email).await, 200, "last good email policy lost");
    let everything = Check::new("ledger", "DELETE", "/accounts/1").bearer(&ledger_token);
    assert_eq!(
        status(&everything).await,
        403,
        "the invalid policy was used"
    );

    // A good update after the bad one, revoking statements and dropping a key.
    volume.publish(&[("ledger.yaml", LEDGER_V1)]);
    assert!(
        eventually(Duration::from_secs(10), || async {
            status(&probe).await == 403 && status(&email).await == 403
        })
        .await,
        "the update after an invalid one never took effect"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;

    stop.store(true, Ordering::Relaxed);
    let (stable_answers, probe_answers) = checker.await.unwrap();
    let failed: Vec<_> = stable_answers.iter().filter(|a| a.is_err()).collect();
    let probe_failed: Vec<_> = probe_answers.iter().filter(|a| a.is_err()).collect();
    assert!(
        failed.is_empty() && probe_failed.is_empty(),
        "checks failed during the swaps: {failed:?} {probe_failed:?}"
    );
    assert!(
        stable_answers.iter().all(|a| matches!(a, Ok(200))),
        "a check every version allows was refused during a swap"
    );
    // Each swap is seen once and for good: 403 (v1), 200 (v2, kept through the
    // invalid update), 403 (v1 again); never a flip back. Seeing all three also shows
    // the checks ran through every phase.
    let mut seen: Vec<u16> = probe_answers.iter().map(|a| *a.as_ref().unwrap()).collect();
    seen.dedup();
    assert_eq!(seen, [403, 200, 403], "probe answers over time");
    eprintln!(
        "{} checks during 3 swaps, none failed",
        stable_answers.len() + probe_answers.len()
    );
}

/// Between the `..data` swap and the removal of a dropped key's symlink, that symlink
/// dangles. A reload that lands there must not publish anything half-made: it is
/// refused, the last good set keeps answering, and the symlink's removal brings the
/// new set in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_in_the_middle_of_a_swap_publishes_no_partial_set() {
    let d = Deployment::new(&[]);
    let mut volume = KubeletVolume::new(d.policy_dir());
    volume.publish(&[("ledger.yaml", LEDGER_V2), ("email.yaml", EMAIL)]);
    let s = TestServer::start(d.config("", "")).await;
    let admin = s.handle.admin_addr.expect("admin enabled");
    let ledger_token = token(PAYMENTS, "ledger", "ledger.read");
    let probe = Check::new("ledger", "GET", "/statements/7").bearer(&ledger_token);
    let email =
        Check::new("email", "POST", "/send").bearer(&token(PAYMENTS, "email", "email.send"));
    assert_eq!(s.check(probe.clone()).await.status, 200);
    assert_eq!(s.check(email.clone()).await.status, 200);

    let errors = r#"hopwarden_policy_reloads_total{result="error"}"#;
    let errors_before = metric(admin, errors).await;
    volume.pause_after_swap = Duration::from_secs(3);
    let writer = std::thread::spawn(move || {
        volume.publish(&[("ledger.yaml", LEDGER_V1)]);
        volume
    });
    // Inside the pause, the swap's events are debounced into a reload that finds
    // email.yaml dangling.
    assert!(
        eventually(Duration::from_millis(2500), || async {
            metric(admin, errors).await > errors_before
        })
        .await,
        "no reload mid-swap"
    );
    assert_eq!(
        s.check(probe.clone()).await.status,
        200,
        "half a new set published"
    );
    assert_eq!(
        s.check(email.clone()).await.status,
        200,
        "half a new set published"
    );
    assert!(!writer.is_finished(), "the kubelet's pause ended too early");

    writer.join().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            s.check(probe.clone()).await.status == 403 && s.check(email.clone()).await.status == 403
        })
        .await,
        "the completed swap never took effect"
    );
}
