//! What an API key costs on a decision cache miss, in process: finding the key in a
//! request and verifying it (parse, SHA-256, map lookup, constant-time compare) over
//! N distinct keys in one key file. `bench/apikeys.sh` measures the whole check.
//!
//! ```text
//! cargo run --release --example apikey_cost -- [N]
//! ```

use std::time::{Duration, Instant};

use hopwarden::apikey::NewKey;
use hopwarden::authn::apikey::{ApiKeySourceSpec, ApiKeys};
use hopwarden::request::AuthzRequest;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let dir = std::env::temp_dir().join(format!("apikey-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut file = String::from("keys:\n");
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        let k = NewKey::generate().unwrap();
        file.push_str(&format!(
            "  - {{id: {}, digest: \"{}\", principal: p, scopes: [s]}}\n",
            k.id,
            k.digest()
        ));
        keys.push(k.reveal());
    }
    let path = dir.join("keys.yaml");
    std::fs::write(&path, file).unwrap();
    let api_keys = ApiKeys::load(&[ApiKeySourceSpec {
        file: path,
        header: Some("x-api-key".into()),
    }])
    .unwrap();
    let requests: Vec<AuthzRequest> = keys
        .iter()
        .map(|k| {
            let mut r = AuthzRequest::default();
            r.headers.insert("x-api-key".into(), k.clone());
            r
        })
        .collect();
    let now = Duration::from_secs(1);
    for round in 0..3 {
        let started = Instant::now();
        let mut ok = 0;
        for r in &requests {
            let found = api_keys.find(r).unwrap().unwrap();
            ok += usize::from(api_keys.verify(found, now).is_ok());
        }
        let per = started.elapsed().as_secs_f64() * 1e6 / n as f64;
        assert_eq!(ok, n);
        println!("round {round}: {n} distinct keys, find + verify {per:.2} us per key");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
