//! docker-compose.yml on podman, for machines with no Docker engine (like CI's):
//! scripts/images.sh builds the images from the package registries, `podman system
//! service` serves Docker's API on a socket of this test's own, and Debian's
//! docker-compose runs the unchanged compose file against it under a project name of
//! its own. Dropping the guard brings down that project and stops that service, and
//! nothing else, also when the test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running compose project. Dropping it brings it down.
pub struct Compose {
    repo: PathBuf,
    project: String,
    dir: tempfile::TempDir,
    service: Child,
}

/// One container of the project, as podman sees it.
#[derive(Debug)]
pub struct Container {
    /// podman's container id.
    pub id: String,
    /// The compose service.
    pub service: String,
    /// podman's state: `running`, `exited`, …
    pub state: String,
    /// The exit code, once exited.
    pub exit_code: i64,
}

fn containers_conf(repo: &Path) -> PathBuf {
    repo.join("deploy/compose/containers.conf")
}

/// Runs `cmd` for at most `limit` (killed past it): stdout on success, else an error with
/// its output.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<String, String> {
    let out = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    let err = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    let what = format!(
        "{:?} {:?}",
        cmd.get_program(),
        cmd.get_args().collect::<Vec<_>>()
    );
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.reopen().map_err(|e| e.to_string())?)
        .stderr(err.reopen().map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what}: still running after {limit:?}, killed"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(out.path()).unwrap_or_default();
    if status.success() {
        return Ok(stdout);
    }
    let stderr = std::fs::read_to_string(err.path()).unwrap_or_default();
    Err(format!("{what}: {status}\n{stdout}\n{stderr}"))
}

/// Builds (or finds cached) every image docker-compose.yml runs, hopwarden's from the
/// binaries in `bin_dir`; installs podman, debootstrap and docker-compose if missing.
pub fn build_images(repo: &Path, bin_dir: &Path) -> Result<(), String> {
    run_bounded(
        Command::new("bash")
            .arg(repo.join("scripts/images.sh"))
            .arg(bin_dir),
        Duration::from_secs(900),
    )
    .map(drop)
}

impl Compose {
    /// Starts a podman API service of its own and `docker-compose up -d` on it.
    pub fn up(repo: &Path, project: &str) -> Result<Compose, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let sock = dir.path().join("podman.sock");
        let log =
            std::fs::File::create(dir.path().join("service.log")).map_err(|e| e.to_string())?;
        let service = Command::new("podman")
            .env("CONTAINERS_CONF", containers_conf(repo))
            // No idle timeout: the guard stops it.
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", sock.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("podman system service: {e}"))?;
        let compose = Compose {
            repo: repo.to_path_buf(),
            project: project.to_string(),
            dir,
            service,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            if Instant::now() > deadline {
                return Err(format!(
                    "podman system service made no socket: {}",
                    compose.service_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        compose
            .compose(&["up", "-d", "--no-build"], Duration::from_secs(240))
            .map_err(|e| format!("{e}\n{}", compose.logs()))?;
        Ok(compose)
    }

    /// `docker-compose ARGS` on this project, bounded by `limit`.
    pub fn compose(&self, args: &[&str], limit: Duration) -> Result<String, String> {
        let sock = self.dir.path().join("podman.sock");
        run_bounded(
            Command::new("docker-compose")
                .current_dir(&self.repo)
                .env("DOCKER_HOST", format!("unix://{}", sock.display()))
                .args([
                    "--project-name",
                    &self.project,
                    "--file",
                    "docker-compose.yml",
                ])
                .args(args),
            limit,
        )
    }

    /// Every container of the project.
    pub fn containers(&self) -> Result<Vec<Container>, String> {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let out = run_bounded(
            Command::new("podman")
                .env("CONTAINERS_CONF", containers_conf(&self.repo))
                .args(["ps", "--all", "--format", "json", "--filter", &label]),
            Duration::from_secs(30),
        )?;
        let list: Vec<serde_json::Value> =
            serde_json::from_str(&out).map_err(|e| format!("podman ps: {e}: {out}"))?;
        Ok(list
            .iter()
            .map(|c| Container {
                id: c["Id"].as_str().unwrap_or("?").to_string(),
                service: c["Labels"]["com.docker.compose.service"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string(),
                state: c["State"].as_str().unwrap_or("?").to_string(),
                exit_code: c["ExitCode"].as_i64().unwrap_or(-1),
            })
            .collect())
    }

    /// Runs a container's compose healthcheck once (podman runs them only when asked:
    /// its timers need systemd).
    pub fn healthcheck(&self, container: &Container) -> Result<(), String> {
        run_bounded(
            Command::new("podman")
                .env("CONTAINERS_CONF", containers_conf(&self.repo))
                .args(["healthcheck", "run", &container.id]),
            Duration::from_secs(30),
        )
        .map(drop)
        .map_err(|e| format!("{}: healthcheck failed: {e}", container.service))
    }

    /// The last log lines of every service.
    pub fn logs(&self) -> String {
        self.compose(
            &["logs", "--no-color", "--tail", "20"],
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| e)
    }

    /// One service's whole log.
    pub fn log(&self, service: &str) -> String {
        self.compose(&["logs", "--no-color", service], Duration::from_secs(30))
            .unwrap_or_else(|e| e)
    }

    fn service_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("compose logs:\n{}", self.logs());
        }
        // podman 4.3 can refuse to remove a container while those sharing its network
        // (network_mode: service:…) are being removed; a second `down` finishes the job.
        let down = || {
            self.compose(
                &["down", "--volumes", "--remove-orphans", "--timeout", "2"],
                Duration::from_secs(120),
            )
        };
        if let Err(e) = down().or_else(|_| down()) {
            eprintln!("docker-compose down: {e}");
        }
        // Whatever `down` left of this project (and only of it).
        let label = format!("label=com.docker.compose.project={}", self.project);
        let _ = run_bounded(
            Command::new("podman")
                .env("CONTAINERS_CONF", containers_conf(&self.repo))
                .args(["ps", "--all", "--quiet", "--filter", &label]),
            Duration::from_secs(30),
        )
        .map(|ids| {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = run_bounded(
                    Command::new("podman")
                        .env("CONTAINERS_CONF", containers_conf(&self.repo))
                        .args(["rm", "--force", "--time", "2"])
                        .args(&ids),
                    Duration::from_secs(60),
                );
            }
        });
        let _ = self.service.kill();
        let _ = self.service.wait();
    }
}
