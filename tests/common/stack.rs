//! The local stack as processes on 127.0.0.1: hopwarden, the Envoy gateway, the
//! Envoy sidecars and the demo services, all from the repository's own files.
//!
//! The Envoy configs in `envoy/` are used exactly as docker-compose.yml uses them;
//! only socket addresses are substituted (compose host names and ports become
//! 127.0.0.1 and free ports), and `render` checks that nothing else changed.
//! Shared by the end-to-end tests and by `examples/local_stack.rs`
//! (`scripts/local-stack.sh`), so the documented local stack is the tested one.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The demo services and whether each has a sidecar (east-west) in the stack.
pub const APPS: [(&str, bool); 4] = [
    ("payments", true),
    ("ledger", true),
    ("email", true),
    ("media", false),
];

/// Fixed ports of the local stack (app, sidecar inbound, outbound, admin), chosen to
/// match what docker-compose.yml publishes where it publishes anything.
const FIXED: [(&str, [u16; 4]); 4] = [
    ("payments", [8081, 15441, 15011, 15101]),
    ("ledger", [8082, 15443, 15012, 15102]),
    ("email", [8083, 15445, 15013, 15103]),
    ("media", [8084, 0, 0, 0]),
];

/// The services the gateway routes to (payments is only a caller here).
pub const GATEWAY_ROUTES: [&str; 3] = ["ledger", "email", "media"];

/// Where things came from and where to put them.
pub struct StackSpec {
    /// The repository root (envoy/, policies/, hopwarden.yaml, dev/).
    pub repo: PathBuf,
    /// A work directory: rendered configs and logs.
    pub dir: PathBuf,
    /// Where the certificates go; must be named `certs`, because the Envoy configs
    /// name them `certs/…` relative to Envoy's working directory (its parent).
    pub certs: PathBuf,
    /// The `hopwarden` binary.
    pub hopwarden: PathBuf,
    /// The `demo-service` example binary.
    pub demo: PathBuf,
    /// The `envoy` binary.
    pub envoy: PathBuf,
    /// Fixed, documented ports (the local-stack script) instead of free ones (tests).
    pub fixed_ports: bool,
}

/// Ports of every listener in the stack.
#[derive(Debug, Clone, Default)]
pub struct Ports {
    pub hopwarden: u16,
    pub hopwarden_admin: u16,
    pub hopwarden_http: u16,
    pub gateway: u16,
    pub gateway_admin: u16,
    pub gateway_http: u16,
    pub gateway_http_admin: u16,
    /// Demo app ports by service.
    pub app: BTreeMap<String, u16>,
    /// Sidecar mTLS inbound ports by service.
    pub inbound: BTreeMap<String, u16>,
    /// Sidecar plain-HTTP outbound ports by service.
    pub outbound: BTreeMap<String, u16>,
    /// Sidecar admin ports by service.
    pub sidecar_admin: BTreeMap<String, u16>,
}

impl Ports {
    /// Every port with the process that listens on it.
    pub fn all(&self) -> Vec<(String, u16)> {
        let mut all: Vec<(String, u16)> = [
            ("hopwarden", self.hopwarden),
            ("hopwarden admin", self.hopwarden_admin),
            ("hopwarden http_listen", self.hopwarden_http),
            ("gateway", self.gateway),
            ("gateway admin", self.gateway_admin),
            ("gateway-http", self.gateway_http),
            ("gateway-http admin", self.gateway_http_admin),
        ]
        .into_iter()
        .map(|(name, port)| (name.to_string(), port))
        .collect();
        for (what, map) in [
            ("", &self.app),
            (" sidecar inbound", &self.inbound),
            (" sidecar outbound", &self.outbound),
            (" sidecar admin", &self.sidecar_admin),
        ] {
            all.extend(
                map.iter()
                    .map(|(app, port)| (format!("{app}{what}"), *port)),
            );
        }
        all
    }

    /// Fails, naming the port and its role, if any port cannot be bound on 127.0.0.1.
    pub fn check_free(&self) -> Result<(), String> {
        for (name, port) in self.all() {
            if let Err(e) = TcpListener::bind(("127.0.0.1", port)) {
                return Err(format!(
                    "port {port} ({name}) is not free ({e}): is a local stack or docker compose already running?"
                ));
            }
        }
        Ok(())
    }

    fn plan(fixed: bool) -> Ports {
        let port = |fixed_port: u16| -> u16 {
            if fixed {
                fixed_port
            } else {
                free_port()
            }
        };
        let mut p = Ports {
            hopwarden: port(9191),
            hopwarden_admin: port(9192),
            hopwarden_http: port(9193),
            gateway: port(10000),
            gateway_admin: port(9901),
            gateway_http: port(10001),
            gateway_http_admin: port(9902),
            ..Ports::default()
        };
        for ((app, sidecar), (_, [a, i, o, m])) in APPS.iter().zip(FIXED) {
            p.app.insert(app.to_string(), port(a));
            if *sidecar {
                p.inbound.insert(app.to_string(), port(i));
                p.outbound.insert(app.to_string(), port(o));
                p.sidecar_admin.insert(app.to_string(), port(m));
            }
        }
        p
    }
}

/// A free TCP port on 127.0.0.1 for a process that binds it later.
///
/// Not a port-0 bind: a port the kernel chose and we released is in its ephemeral
/// range, where the next outgoing connection can take it before Envoy binds it (seen
/// as "Address already in use" with three stacks starting at once). Ports below
/// Linux's ephemeral range (32768+) and above the local stack's fixed ones are only
/// ever taken by an explicit bind; the counter keeps this process from handing one
/// out twice, and the process id spreads concurrent test processes apart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = (std::process::id() % 60) * 200;
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (offset + n) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT)
}

/// A child process killed on drop, with its output in a log file.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Result<Proc, String> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{name}: cannot start {:?}: {e}", cmd.get_program()))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// The last lines of the process's log, for failure messages.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running stack. Dropping it stops every process.
pub struct Stack {
    pub ports: Ports,
    pub dir: PathBuf,
    pub certs: PathBuf,
    procs: Vec<Proc>,
}

impl Stack {
    /// Generates certificates, renders configs and starts everything; returns once
    /// every Envoy is ready and hopwarden is healthy as Envoy's health check sees it.
    pub fn start(spec: &StackSpec) -> Result<Stack, String> {
        let mut ports = Ports::plan(spec.fixed_ports);
        // Chosen ports were free a moment ago, but another process (a test binary's
        // stack still shutting down) may have bound one since: choose again, a few
        // times, rather than fail. Fixed ports are the user's: never changed.
        for _ in 0..3 {
            if spec.fixed_ports || ports.check_free().is_ok() {
                break;
            }
            ports = Ports::plan(false);
        }
        // Before anything is written or started: a stale Envoy on a documented port
        // would answer the readiness checks and pass for the new stack.
        ports.check_free()?;
        let certs = spec.certs.clone();
        if certs.file_name().is_none_or(|n| n != "certs") {
            return Err(format!(
                "{}: the certificate directory must be named certs",
                certs.display()
            ));
        }
        let status = Command::new(&spec.hopwarden)
            .args(["dev", "certs"])
            .arg(&certs)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("hopwarden dev certs: {e}"))?;
        if !status.success() {
            return Err("hopwarden dev certs failed".into());
        }
        let mut stack = Stack {
            ports: ports.clone(),
            dir: spec.dir.clone(),
            certs,
            procs: Vec::new(),
        };
        stack.start_hopwarden(spec)?;
        for (app, _) in APPS {
            let mut cmd = Command::new(&spec.demo);
            cmd.args([
                "--name",
                app,
                "--listen",
                &format!("127.0.0.1:{}", ports.app[app]),
            ]);
            if let Some(out) = ports.outbound.get(app) {
                cmd.args(["--outbound", &format!("http://127.0.0.1:{out}")]);
            }
            stack.procs.push(Proc::spawn(app, cmd, &spec.dir)?);
        }
        let mut admins = vec![("gateway".to_string(), ports.gateway_admin)];
        let gateway = render(&spec.repo.join("envoy/gateway.yaml"), &gateway_subs(&ports))?;
        stack.start_envoy(spec, "gateway", &gateway)?;
        let gateway_http = render(
            &spec.repo.join("envoy/gateway-http.yaml"),
            &gateway_http_subs(&ports),
        )?;
        stack.start_envoy(spec, "gateway-http", &gateway_http)?;
        for (app, sidecar) in APPS {
            if sidecar {
                let file = spec.repo.join(format!("envoy/{app}-sidecar.yaml"));
                let config = render(&file, &sidecar_subs(&ports, app))?;
                stack.start_envoy(spec, &format!("{app}-sidecar"), &config)?;
                admins.push((format!("{app}-sidecar"), ports.sidecar_admin[app]));
            }
        }
        let ready = |admin: u16| http_get(admin, "/ready").is_some_and(|(code, _)| code == 200);
        for (name, admin) in &admins {
            stack.wait(name, Duration::from_secs(30), || ready(*admin))?;
        }
        // No health check on the HTTP service's cluster: ready is all there is.
        stack.wait("gateway-http", Duration::from_secs(30), || {
            ready(ports.gateway_http_admin)
        })?;
        // Envoy's own gRPC health check must see hopwarden healthy before traffic.
        for (name, admin) in &admins {
            stack.wait(name, Duration::from_secs(30), || hopwarden_healthy(*admin))?;
        }
        Ok(stack)
    }

    fn start_hopwarden(&mut self, spec: &StackSpec) -> Result<(), String> {
        let text = std::fs::read_to_string(spec.repo.join("hopwarden.yaml"))
            .map_err(|e| format!("hopwarden.yaml: {e}"))?;
        let from = "listen: 127.0.0.1:9191";
        if !text.contains(from) {
            return Err(format!("hopwarden.yaml no longer has {from:?}"));
        }
        let admin = "listen: 127.0.0.1:9192";
        if !text.contains(admin) {
            return Err(format!("hopwarden.yaml no longer has {admin:?}"));
        }
        let http = "http_listen: 127.0.0.1:9193";
        if !text.contains(http) {
            return Err(format!("hopwarden.yaml no longer has {http:?}"));
        }
        let config = text
            .replace(
                http,
                &format!("http_listen: 127.0.0.1:{}", self.ports.hopwarden_http),
            )
            .replace(from, &format!("listen: 127.0.0.1:{}", self.ports.hopwarden))
            .replace(
                admin,
                &format!("listen: 127.0.0.1:{}", self.ports.hopwarden_admin),
            );
        // The config's relative paths (./policies, ./dev/jwks.json) resolve against
        // its directory, so the rendered copy lives beside the original's targets.
        let path = self.dir.join("hopwarden.yaml");
        let config = config
            .replace(
                "./policies",
                &spec.repo.join("policies").display().to_string(),
            )
            .replace("./dev/", &format!("{}/", spec.repo.join("dev").display()));
        std::fs::write(&path, config).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&spec.hopwarden);
        cmd.args(["serve", "--config"]).arg(&path);
        self.procs.push(Proc::spawn("hopwarden", cmd, &spec.dir)?);
        let port = self.ports.hopwarden;
        self.wait("hopwarden", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
    }

    fn start_envoy(&mut self, spec: &StackSpec, name: &str, config: &str) -> Result<(), String> {
        let path = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&path, config).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&spec.envoy);
        cmd.arg("-c")
            .arg(&path)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "-l",
                "warning",
            ])
            // Access logs reach the file quickly, so tests can read them.
            .args(["--file-flush-interval-msec", "200"])
            // Certificate paths in the configs are relative to the working directory.
            .current_dir(self.certs.parent().unwrap_or(&self.dir));
        self.procs.push(Proc::spawn(name, cmd, &self.dir)?);
        Ok(())
    }

    /// Polls `ready` until true; on timeout, the error carries the process's log.
    fn wait(
        &self,
        name: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if ready() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = self
            .procs
            .iter()
            .find(|p| p.name == name)
            .map(Proc::tail)
            .unwrap_or_default();
        Err(format!("{name} not ready after {timeout:?}; log:\n{log}"))
    }

    /// Stops hopwarden (for fail-closed tests).
    pub fn stop_hopwarden(&mut self) {
        self.procs.retain(|p| p.name != "hopwarden");
    }

    /// The log of one process.
    pub fn log(&self, name: &str) -> String {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| std::fs::read_to_string(&p.log).unwrap_or_default())
            .unwrap_or_default()
    }

    /// The first process found to have exited, with its status and log tail.
    pub fn exited(&mut self) -> Option<String> {
        self.procs
            .iter_mut()
            .find_map(|p| match p.child.try_wait() {
                Ok(Some(status)) => Some(format!("{} exited: {status}\n{}", p.name, p.tail())),
                _ => None,
            })
    }
}

type Subs = Vec<((&'static str, u16), u16)>;

pub fn gateway_subs(p: &Ports) -> Subs {
    let mut subs: Subs = vec![
        (("0.0.0.0", 9901), p.gateway_admin),
        (("0.0.0.0", 10000), p.gateway),
        (("hopwarden", 9191), p.hopwarden),
    ];
    for app in GATEWAY_ROUTES {
        subs.push(((app, 8080), p.app[app]));
    }
    subs
}

pub fn gateway_http_subs(p: &Ports) -> Subs {
    vec![
        (("0.0.0.0", 9902), p.gateway_http_admin),
        (("0.0.0.0", 10001), p.gateway_http),
        (("hopwarden", 9193), p.hopwarden_http),
        (("ledger", 8080), p.app["ledger"]),
        (("email", 8080), p.app["email"]),
    ]
}

fn sidecar_subs(p: &Ports, me: &str) -> Subs {
    let mut subs: Subs = vec![
        (("127.0.0.1", 15000), p.sidecar_admin[me]),
        (("0.0.0.0", 15443), p.inbound[me]),
        (("127.0.0.1", 15001), p.outbound[me]),
        (("hopwarden", 9191), p.hopwarden),
        (("127.0.0.1", 8080), p.app[me]),
    ];
    for (app, sidecar) in APPS {
        if sidecar && app != me {
            subs.push(((app, 15443), p.inbound[app]));
        }
    }
    subs
}

/// Renders an Envoy config for loopback: each `{ address: A, port_value: P }` named in
/// `subs` becomes `{ address: 127.0.0.1, port_value: NEW }`. Fails if a substitution
/// matches nothing or if any socket address is left unsubstituted, so the rendered
/// file differs from the committed one in addresses and ports only.
pub fn render(file: &Path, subs: &[((&str, u16), u16)]) -> Result<String, String> {
    let mut text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let total = text.matches("socket_address: {").count();
    for ((addr, port), new) in subs {
        let from = format!("socket_address: {{ address: {addr}, port_value: {port} }}");
        if !text.contains(&from) {
            return Err(format!("{}: no {from:?}", file.display()));
        }
        let to = format!("socket_address: {{ address: 127.0.0.1, port_value: {new} ## }}");
        text = text.replace(&from, &to);
    }
    let done = text.matches(" ## }").count();
    if done != total {
        return Err(format!(
            "{}: {done} of {total} socket addresses substituted; every one must be",
            file.display()
        ));
    }
    Ok(text.replace(" ## }", " }"))
}

/// Uncomments the `# transport_socket:` block of a rendered Envoy config (the mTLS
/// to hopwarden that envoy/*.yaml carry commented out). Fails if there is none, so a
/// config that loses its block fails the test that enables it.
pub fn enable_hopwarden_tls(text: &str) -> Result<String, String> {
    let mut out = Vec::new();
    let mut indent: Option<String> = None;
    let mut found = 0;
    for line in text.lines() {
        if line.trim_start() == "# transport_socket:" {
            let pad = line[..line.len() - line.trim_start().len()].to_string();
            out.push(format!("{pad}transport_socket:"));
            indent = Some(pad);
            found += 1;
            continue;
        }
        match &indent {
            Some(pad) if line.starts_with(&format!("{pad}#   ")) => {
                out.push(format!("{pad}{}", &line[pad.len() + 2..]));
            }
            _ => {
                indent = None;
                out.push(line.to_string());
            }
        }
    }
    if found != 1 {
        return Err(format!("{found} commented transport_socket blocks; want 1"));
    }
    Ok(out.join("\n") + "\n")
}

/// A plain HTTP/1.1 GET on 127.0.0.1 (for Envoy's admin API): status and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Some((code, body))
}

/// Whether Envoy's active gRPC health check marks the hopwarden host healthy.
pub fn hopwarden_healthy(admin: u16) -> bool {
    http_get(admin, "/clusters").is_some_and(|(_, body)| {
        body.lines()
            .any(|l| l.starts_with("hopwarden::") && l.ends_with("::health_flags::healthy"))
    })
}

/// The `demo-service` example beside this test binary's `deps/`. scripts/test.sh builds
/// the examples first (`cargo test` alone builds them as test harnesses, not programs).
pub fn demo_service_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let demo = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/demo-service");
    assert!(
        demo.exists(),
        "{} is missing: run scripts/test.sh, or cargo build --examples first",
        demo.display()
    );
    demo
}

/// The repository as a stack reads it, in `dir/repo`: links to the real envoy/, dev/,
/// scripts/ and hopwarden.yaml, and a copy of policies/ in which `rule` (YAML list
/// items, indented as under `rules:`) is added to `policy`'s rules. The end-to-end tests
/// use it for a rule none of the examples has; the committed files stay untouched.
pub fn repo_with_rule(dir: &Path, policy: &str, rule: &str) -> PathBuf {
    let real = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let copy = dir.join("repo");
    std::fs::create_dir_all(copy.join("policies")).unwrap();
    for name in ["envoy", "dev", "scripts", "hopwarden.yaml"] {
        std::os::unix::fs::symlink(real.join(name), copy.join(name)).unwrap();
    }
    let mut found = false;
    for entry in std::fs::read_dir(real.join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let mut text = std::fs::read_to_string(&path).unwrap();
        if path.file_name().unwrap() == policy {
            assert!(text.contains("\nrules:\n"), "{policy} has no rules list");
            text = text.replacen("\nrules:\n", &format!("\nrules:{rule}"), 1);
            found = true;
        }
        std::fs::write(copy.join("policies").join(path.file_name().unwrap()), text).unwrap();
    }
    assert!(found, "policies/{policy} is missing");
    copy
}

/// The Envoy binary: `$HOPWARDEN_ENVOY`, else the one scripts/install-envoy.sh put
/// in `.venv`. There is no skipping: without Envoy the end-to-end tests fail.
pub fn envoy_binary(repo: &Path) -> Result<PathBuf, String> {
    if let Ok(path) = std::env::var("HOPWARDEN_ENVOY") {
        return Ok(PathBuf::from(path));
    }
    let lib = repo.join(".venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
            .find(|p| p.exists())
    });
    found.ok_or_else(|| {
        "Envoy is not installed: run scripts/install-envoy.sh (scripts/test.sh does) \
         or set HOPWARDEN_ENVOY"
            .to_string()
    })
}

/// Starts one Envoy on a rendered config (written to `dir/<name>.yaml`, logging to
/// `dir/<name>.log`), in `cwd` (certificate paths are relative to it), and waits until
/// its admin API on `admin` says ready.
pub fn start_envoy_at(
    envoy: &Path,
    name: &str,
    config: &str,
    dir: &Path,
    cwd: &Path,
    admin: u16,
) -> Result<Proc, String> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, config).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(envoy);
    cmd.arg("-c")
        .arg(&path)
        .args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "-l",
            "warning",
        ])
        .args(["--file-flush-interval-msec", "200"])
        .current_dir(cwd);
    let mut proc = Proc::spawn(name, cmd, dir)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if http_get(admin, "/ready").is_some_and(|(code, _)| code == 200) {
            return Ok(proc);
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            return Err(format!("{name} exited: {status}\n{}", proc.tail()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{name} not ready after 30s; log:\n{}", proc.tail()))
}
