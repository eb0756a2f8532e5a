//! docker-compose.yml cannot run here (no Docker engine), so it is checked the way
//! the project promises: Debian's `docker-compose config` accepts it, and it runs the
//! very envoy/ files and Envoy version that the end-to-end tests run.

mod common;

use std::process::Command;

use common::repo;

#[test]
fn docker_compose_config_is_valid() {
    let out = Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(repo())
        .output()
        .expect("docker-compose is not installed: scripts/test.sh installs it (apt-get install docker-compose)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn compose_runs_the_tested_envoy_files_and_version() {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let compose: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let services = compose["services"].as_mapping().unwrap();

    // Every Envoy config in envoy/ is mounted, and every mounted one exists.
    let mut mounted = Vec::new();
    for (_, svc) in services {
        for volume in svc["volumes"].as_sequence().into_iter().flatten() {
            let v = volume.as_str().unwrap();
            if let Some(rest) = v.strip_prefix("./envoy/") {
                mounted.push(rest.split(':').next().unwrap().to_string());
            }
        }
    }
    mounted.sort();
    let mut files: Vec<String> = std::fs::read_dir(repo().join("envoy"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    assert_eq!(mounted, files);

    // The image tag is the Envoy version the tests install and run.
    let script = std::fs::read_to_string(repo().join("scripts/install-envoy.sh")).unwrap();
    let version = script
        .lines()
        .find_map(|l| l.strip_prefix("ENVOY_VERSION="))
        .and_then(|l| l.split_whitespace().next())
        .unwrap();
    assert!(
        text.contains(&format!("envoyproxy/envoy:v{version}")),
        "compose must use envoyproxy/envoy:v{version}"
    );
    let envoy = common::stack::envoy_binary(&repo()).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(envoy).arg("--version").output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(&format!("/{version}/")),
        "tested Envoy is {printed}"
    );
}

#[test]
fn envoy_configs_validate_with_the_real_envoy() {
    let envoy = common::stack::envoy_binary(&repo()).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_hopwarden"))
        .args(["dev", "certs"])
        .arg(dir.path().join("certs"))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    for entry in std::fs::read_dir(repo().join("envoy")).unwrap() {
        let path = entry.unwrap().path();
        let out = Command::new(&envoy)
            .args(["--mode", "validate", "-c"])
            .arg(&path)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
