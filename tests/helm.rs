//! The Helm chart (deploy/helm/hopwarden), rendered offline for each values profile
//! in its ci/ folder, every manifest validated strictly against Kubernetes' schemas
//! (and Istio's and the Prometheus Operator's CRD schemas), `helm lint --strict`, and
//! the config and policies it renders checked by the real `hopwarden validate`.
//!
//! The tools come from package registries through scripts/install-k8s-tools.sh
//! (Helm's Go SDK inside PyPI's helm-python-sdk, PyPI's kubernetes-validate, CRD
//! schemas from npm); scripts/k8s_check.py drives them. A missing tool is installed,
//! and a failed install fails the tests: nothing here is skipped.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const CHART: &str = "deploy/helm/hopwarden";

/// Runs scripts/k8s_check.py: success, stdout + stderr.
fn k8s_check(args: &[&str]) -> (bool, String) {
    let out = Command::new(common::installed("install-k8s-tools.sh"))
        .arg(common::repo().join("scripts/k8s_check.py"))
        .args(args)
        .current_dir(common::repo())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// One rendered profile: its manifests and NOTES.txt.
struct Rendered {
    dir: tempfile::TempDir,
    manifests: Vec<Value>,
    notes: String,
}

impl Rendered {
    fn kind(&self, kind: &str) -> Vec<&Value> {
        self.manifests
            .iter()
            .filter(|m| m["kind"] == kind)
            .collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let found = self.kind(kind);
        assert_eq!(found.len(), 1, "want one {kind}, got {found:?}");
        found[0]
    }

    fn config_map(&self, name: &str) -> Option<&Value> {
        self.kind("ConfigMap")
            .into_iter()
            .find(|m| m["metadata"]["name"] == name)
    }

    fn config_text(&self) -> String {
        let cm = self.config_map("hopwarden").expect("config ConfigMap");
        cm["data"]["hopwarden.yaml"].as_str().unwrap().to_string()
    }

    fn container(&self) -> &Value {
        &self.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    }

    fn annotations(&self) -> &Value {
        &self.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    }

    fn service_ports(&self) -> Vec<(String, u64, String)> {
        self.one("Service")["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_string(),
                    p["port"].as_u64().unwrap(),
                    p["appProtocol"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

/// Renders the chart with `values` files (relative to the chart, or absolute), then validates every
/// manifest strictly and lints the chart with the same values.
fn render(values: &[&str]) -> Rendered {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap().to_string();
    let mut args = vec!["render", CHART, &out];
    let files: Vec<String> = values
        .iter()
        .map(|v| match v.starts_with('/') {
            true => v.to_string(),
            false => format!("{CHART}/{v}"),
        })
        .collect();
    for f in &files {
        args.extend(["--values", f]);
    }
    let (ok, text) = k8s_check(&args);
    assert!(ok, "render {values:?}:\n{text}");

    let (ok, text) = k8s_check(&["validate", &out]);
    assert!(ok, "strict validation {values:?}:\n{text}");
    assert!(text.contains(" 0 failed"), "{text}");

    let mut lint = vec!["lint", CHART];
    for f in &files {
        lint.extend(["--values", f]);
    }
    let (ok, text) = k8s_check(&lint);
    assert!(ok, "helm lint --strict {values:?}:\n{text}");

    let manifests: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("manifests.json")).unwrap())
            .unwrap();
    let manifests = manifests
        .into_iter()
        .map(|d| d["manifest"].clone())
        .collect();
    let notes = std::fs::read_to_string(dir.path().join("NOTES.txt")).unwrap();
    Rendered {
        dir,
        manifests,
        notes,
    }
}

/// Lays the pod's files out under a temporary root as the Deployment mounts them (the
/// rendered ConfigMaps; for a ConfigMap the chart does not render, the repository's
/// example policies; for a Secret, the dev JWKS) and runs `hopwarden validate` on the
/// config path the container is started with.
fn hopwarden_validate(r: &Rendered) -> (i32, String) {
    let root = r.dir.path().join("pod");
    let pod = &r.one("Deployment")["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_array().unwrap();
    for mount in r.container()["volumeMounts"].as_array().unwrap() {
        let target = root.join(mount["mountPath"].as_str().unwrap().trim_start_matches('/'));
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume for {mount}"));
        if let Some(cm) = volume["configMap"]["name"].as_str() {
            match (r.config_map(cm), mount["subPath"].as_str()) {
                (Some(cm), Some(key)) => {
                    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
                    std::fs::write(&target, cm["data"][key].as_str().unwrap()).unwrap();
                }
                (Some(cm), None) => {
                    std::fs::create_dir_all(&target).unwrap();
                    for (key, text) in cm["data"].as_object().unwrap() {
                        std::fs::write(target.join(key), text.as_str().unwrap()).unwrap();
                    }
                }
                (None, _) => {
                    std::fs::create_dir_all(&target).unwrap();
                    for name in ["ledger.yaml", "email.yaml", "catalog.yaml"] {
                        std::fs::copy(
                            common::repo().join("policies").join(name),
                            target.join(name),
                        )
                        .unwrap();
                    }
                }
            }
        } else if volume["name"] == "tls" && volume.get("secret").is_some() {
            tls_secret_files(&target);
        } else if volume.get("secret").is_some() {
            std::fs::create_dir_all(&target).unwrap();
            std::fs::copy(
                common::repo().join("dev/jwks.json"),
                target.join("jwks.json"),
            )
            .unwrap();
        } else {
            std::fs::create_dir_all(&target).unwrap();
        }
    }
    let args: Vec<&str> = r.container()["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[..2], ["serve", "--config"], "{args:?}");
    let config = root.join(args[2].trim_start_matches('/'));
    let (code, out, err) =
        common::run_bin(&["validate", "--config", config.to_str().unwrap()], &root);
    (code, format!("{out}{err}"))
}

/// The chart's TLS Secret as cert-manager writes it (tls.crt, tls.key, ca.crt), from
/// a CA and a server certificate `hopwarden dev certs` makes.
fn tls_secret_files(target: &Path) {
    let made = target.with_file_name("tls-made");
    let (code, out, err) = common::run_bin(
        &[
            "dev",
            "certs",
            made.to_str().unwrap(),
            "hopwarden:hopwarden",
        ],
        target.parent().unwrap(),
    );
    assert_eq!(code, 0, "hopwarden dev certs:\n{out}{err}");
    std::fs::create_dir_all(target).unwrap();
    for (from, to) in [
        ("hopwarden.pem", "tls.crt"),
        ("hopwarden-key.pem", "tls.key"),
        ("ca.pem", "ca.crt"),
    ] {
        std::fs::copy(made.join(from), target.join(to)).unwrap();
    }
}

fn assert_validates(r: &Rendered) -> String {
    let (code, out) = hopwarden_validate(r);
    assert_eq!(code, 0, "hopwarden validate on the rendered config:\n{out}");
    out
}

#[test]
fn app_version_is_the_crate_version() {
    let chart = std::fs::read_to_string(common::repo().join(CHART).join("Chart.yaml")).unwrap();
    let want = format!("appVersion: \"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(chart.lines().any(|l| l == want), "Chart.yaml lacks {want}");
}

#[test]
fn default_profile() {
    let r = render(&["ci/default-values.yaml"]);
    let deploy = r.one("Deployment");
    let spec = &deploy["spec"]["template"]["spec"];
    assert_eq!(deploy["spec"]["replicas"], 2);
    let c = r.container();
    assert_eq!(
        c["image"],
        format!("hopwarden:{}", env!("CARGO_PKG_VERSION"))
    );
    // Locked down: non-root as the Dockerfile's user, nothing writable but /tmp.
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 10001);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    // Probes on the admin port; the grace period outlasts preStop + drain_timeout (5 + 10).
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(spec["terminationGracePeriodSeconds"], 20);
    let spread = &spec["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    // The policy directory is a directory mount: a subPath would never see updates.
    let mounts = c["volumeMounts"].as_array().unwrap();
    let policies = mounts.iter().find(|m| m["name"] == "policies").unwrap();
    assert_eq!(policies["mountPath"], "/etc/hopwarden/policies");
    assert!(policies.get("subPath").is_none(), "{policies}");
    assert!(r.annotations()["checksum/config"].is_string());
    assert!(r.annotations()["checksum/policies"].is_string());
    assert_eq!(
        r.service_ports(),
        [
            ("grpc".into(), 9191, "grpc".into()),
            ("http".into(), 9193, "http".into()),
            ("admin".into(), 9192, "http".into())
        ]
    );
    // Nobody named, nobody admitted: an ingress rule without `from` would admit all.
    let np = r.one("NetworkPolicy");
    assert_eq!(np["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    assert_eq!(np["spec"]["ingress"], serde_json::json!([]));
    assert!(r
        .notes
        .contains("ANYONE WHO CAN REACH HOPWARDEN DIRECTLY CAN ASK IT ANYTHING"));
    assert!(r.notes.contains("networkPolicy.checkClients is EMPTY"));
    assert_eq!(r.one("PodDisruptionBudget")["spec"]["maxUnavailable"], 1);
    assert!(r.kind("AuthorizationPolicy").is_empty());
    assert!(r.kind("HorizontalPodAutoscaler").is_empty());
    assert!(r.kind("ServiceMonitor").is_empty());
    let config = r.config_text();
    assert!(config.contains("listen: 0.0.0.0:9191"), "{config}");
    assert!(config.contains("http_listen: 0.0.0.0:9193"), "{config}");
    // mTLS is opt-in: plain listeners, no Secret to mount, no Envoy TLS text.
    assert!(!config.contains("tls"), "{config}");
    assert!(!spec["volumes"].to_string().contains("\"tls\""), "{spec}");
    assert!(!r.notes.contains("mTLS is ON"));
    let out = assert_validates(&r);
    assert!(out.contains("0 service policy"), "{out}");
}

/// A config change rolls the pods: the config checksum follows the config, and the
/// policies checksum the policies alone.
#[test]
fn config_change_changes_only_the_config_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let debug = dir.path().join("debug.yaml");
    std::fs::write(&debug, "config:\n  log:\n    level: debug\n").unwrap();
    let a = render(&["ci/no-http-values.yaml"]);
    let b = render(&["ci/no-http-values.yaml", debug.to_str().unwrap()]);
    assert!(
        b.config_text().contains("level: debug"),
        "{}",
        b.config_text()
    );
    assert_ne!(
        a.annotations()["checksum/config"],
        b.annotations()["checksum/config"]
    );
    assert_eq!(
        a.annotations()["checksum/policies"],
        b.annotations()["checksum/policies"]
    );
    let c = render(&["ci/default-values.yaml"]);
    assert_ne!(
        a.annotations()["checksum/policies"],
        c.annotations()["checksum/policies"]
    );
}

#[test]
fn existing_configmap_profile() {
    let r = render(&["ci/existing-configmap-values.yaml"]);
    assert!(
        r.config_map("hopwarden-policies").is_none(),
        "rendered its own policies"
    );
    let volumes = r.one("Deployment")["spec"]["template"]["spec"]["volumes"].clone();
    let policies = volumes
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "policies")
        .unwrap()
        .clone();
    assert_eq!(policies["configMap"]["name"], "hopwarden-policies-gitops");
    // Hot-reloaded in place: no checksum, so an edit does not restart the pods.
    assert!(r.annotations().get("checksum/policies").is_none());
    // config.extra is merged into the file.
    assert!(
        r.config_text().contains("worker_threads: 2"),
        "{}",
        r.config_text()
    );
    let out = assert_validates(&r);
    assert!(out.contains("3 service policy"), "{out}");
}

#[test]
fn no_http_profile() {
    let r = render(&["ci/no-http-values.yaml"]);
    let names: Vec<String> = r.service_ports().into_iter().map(|p| p.0).collect();
    assert_eq!(names, ["grpc", "admin"]);
    assert!(
        !r.config_text().contains("http_listen"),
        "{}",
        r.config_text()
    );
    let np = r.one("NetworkPolicy");
    assert_eq!(
        np["spec"]["ingress"][0]["ports"],
        serde_json::json!([{"port": "grpc", "protocol": "TCP"}])
    );
    // preStop 0 + drain_timeout 30 + 5.
    let spec = &r.one("Deployment")["spec"]["template"]["spec"];
    assert_eq!(spec["terminationGracePeriodSeconds"], 35);
    assert!(r.kind("PodDisruptionBudget").is_empty());
    assert!(!r.notes.contains("envoyExtAuthzHttp"));
    let out = assert_validates(&r);
    assert!(out.contains("1 service policy"), "{out}");
}

#[test]
fn istio_profile() {
    let r = render(&["ci/istio-values.yaml"]);
    let policies = r.kind("AuthorizationPolicy");
    let names: Vec<(&str, &str)> = policies
        .iter()
        .map(|p| {
            (
                p["metadata"]["namespace"].as_str().unwrap(),
                p["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("ledger", "ledger-hopwarden"),
            ("email", "email-hopwarden"),
            ("istio-ingress", "gateway-hopwarden")
        ]
    );
    for p in &policies {
        assert_eq!(p["apiVersion"], "security.istio.io/v1");
        assert_eq!(p["spec"]["action"], "CUSTOM");
        assert_eq!(p["spec"]["provider"]["name"], "hopwarden");
    }
    assert_eq!(
        policies[0]["spec"]["selector"]["matchLabels"]["app"],
        "ledger"
    );
    assert_eq!(policies[0]["spec"]["rules"], serde_json::json!([{}]));
    assert_eq!(
        policies[2]["spec"]["rules"][0]["to"][0]["operation"]["paths"],
        serde_json::json!(["/api/*", "/transactions/*"])
    );
    // Autoscaled: the Deployment leaves replicas to the HPA.
    assert!(r.one("Deployment")["spec"].get("replicas").is_none());
    assert_eq!(r.one("HorizontalPodAutoscaler")["spec"]["maxReplicas"], 6);
    assert_eq!(
        r.one("ServiceMonitor")["spec"]["endpoints"][0]["port"],
        "admin"
    );
    let ingress = r.one("NetworkPolicy")["spec"]["ingress"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(ingress.len(), 2);
    assert_eq!(ingress[0]["from"].as_array().unwrap().len(), 3);
    assert_eq!(
        ingress[1]["ports"],
        serde_json::json!([{"port": "admin", "protocol": "TCP"}])
    );
    // The mesh config entries the user pastes.
    for want in [
        "envoyExtAuthzGrpc:",
        "service: hopwarden.hopwarden.svc.cluster.local",
        "port: 9191",
        "envoyExtAuthzHttp:",
        "pathPrefix: /gateway/-",
        "- name: hopwarden-http-gateway",
        "includeRequestHeadersInCheck: [\"authorization\",\"content-type\",\"x-request-id\",\"x-hopwarden-*\"]",
        "headersToUpstreamOnAllow: [\"x-hopwarden-*\"]",
        // A 429's fields reach the client (a set list passes only what it names).
        "headersToDownstreamOnDeny: [\"content-type\", \"www-authenticate\", \"retry-after\", \"ratelimit-policy\", \"ratelimit\"]",
        "headersToDownstreamOnAllow: [\"ratelimit-policy\", \"ratelimit\"]",
        "failOpen: false",
        "statusOnError: \"503\"",
    ] {
        assert!(r.notes.contains(want), "NOTES.txt lacks {want:?}:\n{}", r.notes);
    }
    let config = r.config_text();
    assert!(
        config.contains("by_spiffe_pattern: spiffe://cluster.local/ns/{namespace}/sa/{service}"),
        "{config}"
    );
    // Last: needs the Istio resolution keys (services.by_spiffe_pattern, services.gateways).
    let out = assert_validates(&r);
    assert!(out.contains("2 service policy"), "{out}");
}

/// `tls.enabled`: listeners.tls in the config, its paths on a read-only directory mount
/// of the Secret, the admin port plain for the probes, and the Envoy side in NOTES.txt.
#[test]
fn tls_profile() {
    let r = render(&["ci/tls-values.yaml"]);
    let config = r.config_text();
    for want in [
        "cert: tls/tls.crt",
        "key: tls/tls.key",
        "client_ca: tls/ca.crt",
        "- spiffe://hopwarden.local/ns/gateway/sa/gateway",
        "- ledger-envoy.ledger.svc",
        "reload_interval: 30s",
        // config.extra's listener bounds merge with the chart's tls block.
        "max_connections: 256",
    ] {
        assert!(config.contains(want), "config lacks {want:?}:\n{config}");
    }
    assert!(
        config.contains("admin:\n  listen: 0.0.0.0:9192\n  tls: false"),
        "{config}"
    );

    let pod = &r.one("Deployment")["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "tls")
        .expect("tls volume");
    assert_eq!(volume["secret"]["secretName"], "hopwarden-tls");
    let mount = r.container()["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "tls")
        .expect("tls mount");
    assert_eq!(mount["mountPath"], "/etc/hopwarden/tls");
    assert_eq!(mount["readOnly"], true);
    // A subPath mount would never see a renewed certificate.
    assert!(mount.get("subPath").is_none(), "{mount}");
    // Plain admin: the probes still ask /readyz, Prometheus still scrapes.
    assert_eq!(
        r.container()["readinessProbe"]["httpGet"]["path"],
        "/readyz"
    );
    assert_eq!(
        r.one("ServiceMonitor")["spec"]["endpoints"][0]["port"],
        "admin"
    );

    for want in [
        "mTLS is ON",
        "URI SAN spiffe://hopwarden.local/ns/gateway/sa/gateway",
        "DNS SAN ledger-envoy.ledger.svc",
        "stays plain HTTP",
        "UpstreamTlsContext",
        "certificate_chain:",
        "sni: hopwarden.hopwarden.svc.cluster.local",
        "matcher: { exact: hopwarden.hopwarden.svc.cluster.local }",
        "ports 9191, 9193 accept only",
        "goes through the mesh",
        "leave tls off",
    ] {
        assert!(
            r.notes.contains(want),
            "NOTES.txt lacks {want:?}:\n{}",
            r.notes
        );
    }

    let out = assert_validates(&r);
    assert!(out.contains("1 service policy"), "{out}");
    // The config's paths name the Secret's files as the pod sees them.
    let etc = r.dir.path().join("pod/etc/hopwarden");
    for file in ["tls/tls.crt", "tls/tls.key", "tls/ca.crt"] {
        let text = std::fs::read_to_string(etc.join(file)).unwrap();
        assert!(text.starts_with("-----BEGIN "), "{file} is not PEM");
    }
}

/// The rendered TLS config really serves: hopwarden started on it (loopback ports in
/// place of the chart's 0.0.0.0 ones) from the laid-out Secret gets ready on its plain
/// admin port and hands an allowed client the Secret's tls.crt over mTLS.
#[tokio::test]
async fn tls_profile_serves_the_secrets_certificate() {
    use common::stack::{free_port, http_get, Proc};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let r = render(&["ci/tls-values.yaml"]);
    assert_validates(&r);
    let root = r.dir.path().join("pod");
    let etc = root.join("etc/hopwarden");
    let config_path = etc.join("hopwarden.yaml");
    let (grpc, http, admin) = (free_port(), free_port(), free_port());
    let mut config = std::fs::read_to_string(&config_path).unwrap();
    for (from, to) in [(9191, grpc), (9193, http), (9192, admin)] {
        let from = format!("0.0.0.0:{from}");
        assert!(config.contains(&from), "{config}");
        config = config.replace(&from, &format!("127.0.0.1:{to}"));
    }
    std::fs::write(&config_path, config).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hopwarden"));
    cmd.args(["serve", "--config", config_path.to_str().unwrap()])
        .current_dir(&root);
    let mut server = Proc::spawn("hopwarden", cmd, r.dir.path()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while http_get(admin, "/readyz").map(|(code, _)| code) != Some(200) {
        let log = std::fs::read_to_string(&server.log).unwrap_or_default();
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "hopwarden exited:\n{log}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "not ready on plain admin:\n{log}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // A client certificate for the allowed SPIFFE ID, from the Secret's CA.
    let made = etc.join("tls-made");
    let (code, out, err) = common::run_bin(
        &["dev", "certs", made.to_str().unwrap(), "gateway:gateway"],
        &root,
    );
    assert_eq!(code, 0, "{out}{err}");
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(etc.join("tls/ca.crt")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(made.join("gateway.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(made.join("gateway-key.pem")).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", grpc))
        .await
        .unwrap();
    let stream = connector
        .connect(ServerName::try_from("hopwarden").unwrap(), tcp)
        .await
        .expect("mTLS handshake with the allowed client certificate");
    let served = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let want = CertificateDer::pem_file_iter(etc.join("tls/tls.crt"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        served,
        want.to_vec(),
        "hopwarden serves another certificate"
    );
    drop(stream);
    let _ = server.child.kill();
}

/// `tls.admin`: the admin port speaks mTLS too, so the probes can only be TCP checks.
#[test]
fn tls_admin_profile() {
    let dir = tempfile::tempdir().unwrap();
    let admin = dir.path().join("admin.yaml");
    std::fs::write(
        &admin,
        "tls:\n  admin: true\nserviceMonitor:\n  enabled: false\n",
    )
    .unwrap();
    let r = render(&["ci/tls-values.yaml", admin.to_str().unwrap()]);
    let config = r.config_text();
    assert!(
        config.contains("admin:\n  listen: 0.0.0.0:9192\n  tls: true"),
        "{config}"
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        let p = &r.container()[probe];
        assert_eq!(p["tcpSocket"]["port"], "admin", "{probe}: {p}");
        assert!(p.get("httpGet").is_none(), "{probe}: {p}");
    }
    assert!(r.kind("ServiceMonitor").is_empty());
    assert!(!r.notes.contains("stays plain HTTP"), "{}", r.notes);
    assert_validates(&r);
}

/// values.schema.json refuses what the chart cannot use, before anything renders.
#[test]
fn schema_rejects_bad_values() {
    let cases = [
        ("replicaCount: two\n", "/replicaCount"),
        ("replicas: 2\n", "replicas"),
        ("config:\n  drain_timeout: 1m\n", "drain_timeout"),
        ("config:\n  listen: 0.0.0.0:1\n", "listen"),
        ("policies:\n  inline:\n    ../x.yaml: \"service: x\"\n", "../x.yaml"),
        ("networkPolicy:\n  checkClients: [{namespace: x}]\n", "namespace"),
        (
            "istio:\n  authorizationPolicies: [{name: a, namespace: b, paths: [/x], rules: [{}]}]\n",
            "authorizationPolicies",
        ),
        ("tls:\n  enabled: true\n  allowedDnsNames: [gw]\n", "secretName"),
        (
            "tls:\n  enabled: true\n  secretName: \"\"\n  allowedDnsNames: [gw]\n",
            "secretName",
        ),
        // Any certificate the CA signed would do: refused.
        ("tls:\n  enabled: true\n  secretName: s\n", "/tls"),
        (
            "tls:\n  enabled: true\n  secretName: s\n  allowedSpiffeIds: [gw]\n",
            "allowedSpiffeIds",
        ),
        ("tls:\n  reloadInterval: 500ms\n", "reloadInterval"),
        ("tls:\n  secret: s\n", "secret"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (values, want)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&file, values).unwrap();
        let (ok, text) = k8s_check(&["schema", CHART, "--values", file.to_str().unwrap()]);
        assert!(!ok, "accepted {values:?}:\n{text}");
        assert!(text.contains(want), "{values:?}: {text}");
    }
    // The chart-owned keys cannot come in through config.extra either.
    let file = dir.path().join("extra.yaml");
    std::fs::write(&file, "config:\n  extra:\n    listen: 0.0.0.0:1\n").unwrap();
    let out = dir.path().join("out");
    let (ok, text) = k8s_check(&[
        "render",
        CHART,
        out.to_str().unwrap(),
        "--values",
        file.to_str().unwrap(),
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("config.extra.listen is set by the chart"),
        "{text}"
    );
    // Nor can a TLS block that would bypass the chart's Secret mount, nor a
    // ServiceMonitor that would scrape a TLS-only admin port in plain HTTP.
    for (values, want) in [
        (
            "config:\n  extra:\n    listeners:\n      tls: {cert: c}\n",
            "config.extra.listeners.tls is set by the chart",
        ),
        (
            "tls:\n  enabled: true\n  secretName: s\n  allowedDnsNames: [gw]\n  admin: true\nserviceMonitor:\n  enabled: true\n",
            "tls.admin with serviceMonitor.enabled",
        ),
    ] {
        std::fs::write(&file, values).unwrap();
        let (ok, text) = k8s_check(&[
            "render",
            CHART,
            out.to_str().unwrap(),
            "--values",
            file.to_str().unwrap(),
        ]);
        assert!(!ok, "{values:?}: {text}");
        assert!(text.contains(want), "{values:?}: {text}");
    }
}

/// The validation is strict: an unknown field anywhere fails, in Kubernetes kinds and
/// in the CRD kinds alike.
#[test]
fn validation_rejects_unknown_fields() {
    let r = render(&["ci/istio-values.yaml"]);
    let mut docs = Vec::new();
    for (kind, pointer) in [
        (
            "Deployment",
            "/spec/template/spec/containers/0/securityContext",
        ),
        ("AuthorizationPolicy", "/spec/provider"),
        ("ServiceMonitor", "/spec/endpoints/0"),
        ("NetworkPolicy", "/spec"),
    ] {
        let mut m = r.kind(kind)[0].clone();
        m.pointer_mut(pointer)
            .unwrap_or_else(|| panic!("{kind} {pointer}"))
            .as_object_mut()
            .unwrap()
            .insert("bogusField".into(), Value::Bool(true));
        docs.push(serde_json::json!({"template": kind, "manifest": m}));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("manifests.json"),
        serde_json::to_string(&docs).unwrap(),
    )
    .unwrap();
    let (ok, text) = k8s_check(&["validate", dir.path().to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(text.contains("0 passed, 4 failed"), "{text}");
    assert!(text.matches("bogusField").count() >= 4, "{text}");
}
